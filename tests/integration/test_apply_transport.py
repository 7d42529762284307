"""Server-side applies through libcurl answer as they did through urllib3, on the real apiserver.

Each test runs once per transport (``SLUICE_APPLY_TRANSPORT``): the same object stored, the same
errors for a field conflict, an invalid object and a missing namespace, and the same short reason
when the apiserver cannot be reached or does not answer.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from gitops.cluster import Cluster
from gitops.cluster.client import Applied, ClusterRefused, FieldConflictError, NotFoundError
from gitops.errors import PermanentError, TemporaryError
from tests.workers import poll

TRANSPORTS = ["curl", "urllib3"]


def configmap(namespace: str, name: str, **data: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "transport"}},
        "data": data,
    }


def labelled(manifest: dict, source: str) -> dict:
    """``manifest`` with the labels that make it ``source``'s, as Sluice's applies write them."""
    labels = manifest["metadata"]["labels"]
    labels.update({"app.kubernetes.io/managed-by": "sluice", "sluice.dev/source": source})
    return manifest


@pytest.fixture(params=TRANSPORTS)
def connect(request, settings, stack) -> Iterator:
    """``connect(kubeconfig=None)``: a Cluster whose applies go through the transport under test."""
    settings.SLUICE_APPLY_TRANSPORT = request.param
    opened: list[Cluster] = []

    def open_cluster(kubeconfig: str | None = None) -> Cluster:
        opened.append(Cluster(kubeconfig or stack["KUBECONFIG"]))
        return opened[-1]

    yield open_cluster
    for cluster in opened:
        cluster.close()


def uses(cluster: Cluster, transport: str) -> bool:
    return (cluster._curl is not None) == (transport == "curl")


def test_applies_from_many_threads_store_the_object_and_return_it(connect, settings, namespace, cluster):
    ours = connect()
    assert uses(ours, settings.SLUICE_APPLY_TRANSPORT)
    names = [f"cm-{index}" for index in range(40)]
    with ThreadPoolExecutor(8) as pool:
        stored = list(
            pool.map(
                lambda name: ours.apply_configmap(
                    configmap(namespace, name, KEY=name), field_manager="sluice-transport"
                ),
                names,
            )
        )
    assert [obj["metadata"]["name"] for obj in stored] == names
    assert all(obj["metadata"]["managedFields"][0]["manager"] == "sluice-transport" for obj in stored)
    again = ours.apply_configmap(
        configmap(namespace, "cm-3", KEY="changed"), field_manager="sluice-transport"
    )
    assert again["data"] == {"KEY": "changed"}
    assert cluster.get_configmap(namespace, "cm-3")["data"] == {"KEY": "changed"}


def test_a_field_owned_by_another_manager_is_a_conflict_and_force_takes_it(connect, namespace):
    ours = connect()
    ours.apply_configmap(configmap(namespace, "shared", KEY="theirs"), field_manager="someone-else")
    with pytest.raises(FieldConflictError, match="conflict"):
        ours.apply_configmap(configmap(namespace, "shared", KEY="ours"), field_manager="sluice-transport")
    taken = ours.apply_configmap(
        configmap(namespace, "shared", KEY="ours"), field_manager="sluice-transport", force=True
    )
    assert taken["data"] == {"KEY": "ours"}


def test_an_invalid_object_is_refused_for_good_with_the_apiservers_message(connect, namespace):
    with pytest.raises(PermanentError, match="422") as refused:
        connect().apply_configmap(
            configmap(namespace, "bad", **{"not a key!": "x"}), field_manager="sluice-t"
        )
    assert not isinstance(refused.value, TemporaryError)
    assert "not a key!" in str(refused.value)


# Values the apiserver's YAML parser reads only if Sluice escapes them as it can read them: characters
# beyond U+FFFF (Python's JSON writes a surrogate pair escape, which the parser refuses), next to
# a literal backslash-u text, Hangul (escapes starting \ud, not pairs), line and paragraph
# separators, a byte order mark, C1 controls and NUL.
AWKWARD_VALUES = {
    "emoji": "deploy 🚀 done ✅ 😀",
    "flag": "🇩🇪",
    "literal": "\\ud83d\\ude00 and \\\\ then 😀",
    "hangul": "한국어",
    "separators": "a\u2028b\u2029c\u0085d",
    "controls": "\ufeffx\x7f\x9b\x00",
}


def test_characters_beyond_the_basic_plane_are_applied_and_stored_as_given(connect, namespace, cluster):
    ours = connect()
    stored = ours.apply_configmap(configmap(namespace, "awkward", **AWKWARD_VALUES), field_manager="sluice-t")
    assert stored["data"] == AWKWARD_VALUES
    assert cluster.get_configmap(namespace, "awkward")["data"] == AWKWARD_VALUES


def test_a_workload_stamp_with_any_commit_text_is_applied_and_stored_as_given(
    connect, namespace, deploy_consumer
):
    """A rollback stamps back the commit annotation a workload held before Sluice, whoever wrote it."""
    from gitops.consumers.workloads import COMMIT_ANNOTATION, stamp, workload_from

    deploy_consumer(namespace, "web", wait=False)
    ours = connect()
    live = ours.get_workload("Deployment", namespace, "web")
    written = "🚀 " + AWKWARD_VALUES["literal"]
    stamped = ours.apply_workload(
        stamp(workload_from(live), config_hash_value="f" * 32, commit=written), field_manager="sluice-t"
    )
    assert stamped["spec"]["template"]["metadata"]["annotations"][COMMIT_ANNOTATION] == written
    stored = ours.get_workload("Deployment", namespace, "web")
    assert stored["spec"]["template"]["metadata"]["annotations"][COMMIT_ANNOTATION] == written


def test_an_unknown_field_is_refused_and_nothing_is_stored(connect, namespace, cluster):
    """Applies ask for fieldValidation=Ignore (the apiserver then decodes a body once, not twice): an
    unknown field must still be refused, as server-side apply checks the body against the schema."""
    unknown = {**configmap(namespace, "unknown-field", KEY="x"), "dataa": {"KEY": "y"}}
    # A 500 today (a typed-patch failure), so "temporary": the message is what is asserted.
    with pytest.raises((TemporaryError, PermanentError), match=r"\.dataa: field not declared in schema"):
        connect().apply_configmap(unknown, field_manager="sluice-transport")
    assert cluster.get_configmap(namespace, "unknown-field") is None


def test_a_missing_namespace_is_not_found(connect):
    with pytest.raises(NotFoundError):
        connect().apply_configmap(configmap(f"gone-{uuid.uuid4().hex[:8]}", "x", A="b"), field_manager="s")


def kubeconfig_pointing_at(stack, tmp_path: Path, server: str) -> str:
    document = yaml.safe_load(Path(stack["KUBECONFIG"]).read_text())
    current = next(c for c in document["contexts"] if c["name"] == document["current-context"])
    for entry in document["clusters"]:
        if entry["name"] == current["context"]["cluster"]:
            entry["cluster"]["server"] = server
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(document))
    return str(path)


class FakeApiserver:
    """A TLS server with the stack apiserver's certificate (so the kubeconfig's CA trusts it) that
    answers each request with ``answer`` (raw HTTP bytes), or never answers when it is None.
    ``handshake=False``: it accepts connections and never starts TLS."""

    def __init__(self, stack, answer: bytes | None, *, handshake: bool = True) -> None:
        pki = Path(stack["KUBECONFIG"]).parent / "pki"
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pki / "apiserver-local.crt", pki / "apiserver-local.key")
        self.answer, self.handshake = answer, handshake
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.connections: list[socket.socket] = []
        self.streams: list[ssl.SSLSocket] = []  # wrapping detaches the socket: closed on their own
        self.served: list[int] = []  # for each request, the index of the connection it came on
        self.request_lines: list[str] = []  # each request's first line: method, path and query
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.listener.getsockname()[1]}"

    def _accept(self) -> None:
        while not self.done.is_set():
            try:
                connection = self.listener.accept()[0]
            except OSError:
                continue
            self.connections.append(connection)
            if self.handshake:
                index = len(self.connections) - 1
                threading.Thread(target=self._serve, args=(connection, index), daemon=True).start()

    @property
    def requests(self) -> int:
        return len(self.served)

    def _serve(self, connection: socket.socket, index: int) -> None:
        try:
            stream = self.context.wrap_socket(connection, server_side=True)
            self.streams.append(stream)
            pending = b""
            while not self.done.is_set():
                while b"\r\n\r\n" not in pending:
                    chunk = stream.recv(65536)
                    if not chunk:
                        return
                    pending += chunk
                head, _, pending = pending.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                while len(pending) < length:
                    pending += stream.recv(65536)
                pending = pending[length:]
                self.request_lines.append(head.split(b"\r\n", 1)[0].decode())
                self.served.append(index)
                if self.answer is None:
                    self.done.wait(30)
                    return
                stream.sendall(self.answer)
        except OSError:
            return

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)
        for stream in [*self.streams, *self.connections]:
            stream.close()
        self.listener.close()


@pytest.fixture
def fake_apiserver(stack) -> Iterator:
    started: list[FakeApiserver] = []

    def start(answer: bytes | None, *, handshake: bool = True) -> FakeApiserver:
        started.append(FakeApiserver(stack, answer, handshake=handshake))
        return started[-1]

    yield start
    for server in started:
        server.close()


def answer(status: str, body: dict, *headers: str) -> bytes:
    encoded = json.dumps(body).encode()
    head = [
        f"HTTP/1.1 {status}",
        "Content-Type: application/json",
        f"Content-Length: {len(encoded)}",
        *headers,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + encoded


def test_a_closed_port_is_a_temporary_connection_refused(connect, stack, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again at once: nothing listens there
    closed = connect(kubeconfig_pointing_at(stack, tmp_path, f"https://127.0.0.1:{port}"))
    with pytest.raises(TemporaryError) as unreachable:
        closed.apply_configmap(configmap("default", "x", A="b"), field_manager="s")
    assert str(unreachable.value) == "kube-apiserver unreachable: connection refused"


# Alone under pytest -n 2: it bounds a wait by the wall clock, which the other session slows.
@pytest.mark.exclusive
def test_a_server_silent_after_the_request_is_a_read_timeout(
    connect, settings, stack, tmp_path, fake_apiserver
):
    settings.SLUICE_CLUSTER_CONNECT_TIMEOUT, settings.SLUICE_CLUSTER_READ_TIMEOUT = 1.0, 1.0
    server = fake_apiserver(None)
    silent = connect(kubeconfig_pointing_at(stack, tmp_path, server.url))
    started = time.monotonic()
    with pytest.raises(TemporaryError) as unreachable:
        silent.apply_configmap(configmap("default", "x", A="b"), field_manager="s")
    elapsed = time.monotonic() - started
    assert str(unreachable.value) == "kube-apiserver unreachable: read timed out"
    assert server.requests == 1  # a request that may have been applied is not sent again
    # urllib3 waits out the read timeout; libcurl gives an apply connect + read in all.
    shortest = {"curl": 1.9, "urllib3": 0.9}[settings.SLUICE_APPLY_TRANSPORT]
    assert shortest < elapsed < 4.0


# Alone under pytest -n 2: it bounds a wait by the wall clock, which the other session slows.
@pytest.mark.exclusive
def test_a_server_that_never_starts_tls_is_given_up_on_within_the_timeouts(
    connect, settings, stack, tmp_path, fake_apiserver
):
    settings.SLUICE_CLUSTER_CONNECT_TIMEOUT, settings.SLUICE_CLUSTER_READ_TIMEOUT = 1.0, 1.0
    server = fake_apiserver(None, handshake=False)
    silent = connect(kubeconfig_pointing_at(stack, tmp_path, server.url))
    started = time.monotonic()
    with pytest.raises(TemporaryError) as unreachable:
        silent.apply_configmap(configmap("default", "x", A="b"), field_manager="s")
    elapsed = time.monotonic() - started
    # urllib3 counts the handshake in its read timeout and sends nothing again. libcurl counts it
    # in its connect timeout, and tries once more, as nothing was sent.
    phase, attempts, shortest = {"curl": ("connect", 2, 1.9), "urllib3": ("read", 1, 0.9)}[
        settings.SLUICE_APPLY_TRANSPORT
    ]
    assert str(unreachable.value) == f"kube-apiserver unreachable: {phase} timed out"
    assert len(server.connections) == attempts
    assert shortest < elapsed < 4.0


def test_throttling_is_temporary_and_keeps_the_servers_retry_after(connect, stack, tmp_path, fake_apiserver):
    server = fake_apiserver(answer("429 Too Many Requests", {"message": "slow down"}, "Retry-After: 7"))
    throttled = connect(kubeconfig_pointing_at(stack, tmp_path, server.url))
    with pytest.raises(TemporaryError, match="slow down") as refused:
        throttled.apply_configmap(configmap("default", "x", A="b"), field_manager="s")
    assert refused.value.delay == 7.0


def test_rejected_credentials_refuse_the_cluster(connect, stack, tmp_path, fake_apiserver):
    server = fake_apiserver(answer("401 Unauthorized", {"message": "Unauthorized"}))
    refusing = connect(kubeconfig_pointing_at(stack, tmp_path, server.url))
    with pytest.raises(ClusterRefused, match="401"):
        refusing.apply_configmap(configmap("default", "x", A="b"), field_manager="s")


def test_an_apply_asks_for_its_field_manager_and_no_second_strict_decode(
    connect, stack, tmp_path, fake_apiserver
):
    stored = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"A": "b"}}
    server = fake_apiserver(answer("200 OK", stored))
    ours = connect(kubeconfig_pointing_at(stack, tmp_path, server.url))
    ours.apply_configmap(configmap("default", "x", A="b"), field_manager="sluice-t")
    ours.apply_configmap(configmap("default", "x", A="b"), field_manager="sluice-t", force=True)
    assert server.request_lines == [
        "PATCH /api/v1/namespaces/default/configmaps/x?fieldManager=sluice-t&fieldValidation=Ignore HTTP/1.1",
        "PATCH /api/v1/namespaces/default/configmaps/x"
        "?fieldManager=sluice-t&fieldValidation=Ignore&force=true HTTP/1.1",
    ]


def test_one_thread_after_another_reuses_one_kept_connection(connect, stack, tmp_path, fake_apiserver):
    stored = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"A": "b"}}
    server = fake_apiserver(answer("200 OK", stored))
    kept = connect(kubeconfig_pointing_at(stack, tmp_path, server.url))
    for _ in range(5):  # each apply on a thread of its own, as a fan-out across clusters does
        with ThreadPoolExecutor(1) as pool:
            applied = pool.submit(kept.apply_configmap, configmap("default", "x", A="b"), field_manager="s")
            assert applied.result()["data"] == {"A": "b"}
    assert server.requests == 5
    assert len(server.connections) == 1


def test_a_tls_server_name_in_the_kubeconfig_keeps_the_clients_own_pool(settings, stack, tmp_path, namespace):
    """libcurl is not given a TLS server name other than the host's: such a cluster uses urllib3."""
    settings.SLUICE_APPLY_TRANSPORT = "curl"
    document = yaml.safe_load(Path(stack["KUBECONFIG"]).read_text())
    for entry in document["clusters"]:
        entry["cluster"]["tls-server-name"] = "kubernetes.default"  # in the apiserver's certificate
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(document))
    with Cluster(str(path)) as named, Cluster(stack["KUBECONFIG"]) as direct:
        assert named._curl is None
        assert direct._curl is not None
        stored = named.apply_configmap(configmap(namespace, "named", A="b"), field_manager="sluice-transport")
        assert stored["data"] == {"A": "b"}


def test_a_forked_child_makes_its_own_connection_and_leaves_the_parents_open(
    settings, stack, tmp_path, fake_apiserver
):
    """A Celery pool process is a fork: closing the handles it inherited would end the parent's TLS
    session on their shared socket, so the parent's next apply would need a new connection."""
    settings.SLUICE_APPLY_TRANSPORT = "curl"
    stored = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"A": "b"}}
    server = fake_apiserver(answer("200 OK", stored))
    settings.SLUICE_CLUSTER_CONNECT_TIMEOUT, settings.SLUICE_CLUSTER_READ_TIMEOUT = 2.0, 2.0
    with Cluster(kubeconfig_pointing_at(stack, tmp_path, server.url)) as parent:
        parent.apply_configmap(configmap("default", "x", A="b"), field_manager="s")
        child = os.fork()
        if child == 0:  # the child: one apply, then out without running the parent's clean-up
            try:
                parent.apply_configmap(configmap("default", "x", A="b"), field_manager="s")
                os._exit(0)
            except BaseException:
                os._exit(1)
        assert exit_code_within(child, seconds=30) == 0
        parent.apply_configmap(configmap("default", "x", A="b"), field_manager="s")
    # The parent's first and last applies on its kept connection, the child's on one of its own.
    assert server.served == [0, 1, 0]


def exit_code_within(pid: int, *, seconds: float) -> int:
    """The child's exit code; a child still running at the deadline is killed and fails the test."""

    def exited() -> tuple[int, int] | None:
        done, status = os.waitpid(pid, os.WNOHANG)
        return (done, status) if done else None

    try:
        _, status = poll(exited, timeout=seconds, what="the forked child to exit")
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    return os.waitstatus_to_exitcode(status)


# Batches: many applies at once on the calling thread, through libcurl only (``apply_configmaps``).


@pytest.fixture
def batching(settings, stack) -> Iterator:
    """``batching(kubeconfig=None)``: a Cluster on the libcurl transport, which batches applies."""
    settings.SLUICE_APPLY_TRANSPORT = "curl"
    opened: list[Cluster] = []

    def open_cluster(kubeconfig: str | None = None) -> Cluster:
        opened.append(Cluster(kubeconfig or stack["KUBECONFIG"]))
        assert opened[-1].applies_in_batches
        return opened[-1]

    yield open_cluster
    for cluster in opened:
        cluster.close()


def _all_applied(outcomes: list, count: int) -> bool:
    return len(outcomes) == count and all(isinstance(outcome, Applied) for outcome in outcomes)


def test_a_batch_keeps_the_head_of_each_success_and_the_whole_of_each_refusal(batching, namespace, cluster):
    """Every answer of a batch is held until it ends, and a success's is the whole object stored: 5,000
    ConfigMaps of 100 KiB held 500 MB of answers that nothing reads past their status, or an apply's
    resourceVersion, which comes within the head kept, even after a name of 253 characters."""
    from gitops.cluster.client import APPLIED_ANSWER_KEPT

    ours = batching()
    held: list = []
    send_all = ours._curl.send_all

    def spied(*args, **kwargs):
        results = send_all(*args, **kwargs)
        held.extend(results)
        return results

    ours._curl.send_all = spied
    large = "x" * 300_000
    names = ["n" * 253, "big-1", "big-2"]
    manifests = [(configmap(namespace, name, DATA=large), False) for name in names]
    invalid = {f"not a key {index}!": "x" for index in range(60)}  # each named in the refusal's text
    manifests.append((configmap(namespace, "bad", **invalid), False))

    outcomes = ours.apply_configmaps(manifests, field_manager="sluice-transport", width=2)

    listed = {obj["metadata"]["name"]: obj for obj in cluster.list_configmaps(namespace)}
    assert outcomes[:3] == [Applied(listed[name]["metadata"]["resourceVersion"]) for name in names]
    assert "422" in str(outcomes[3]) and "not a key" in str(outcomes[3])
    assert [len(answer.body) <= APPLIED_ANSWER_KEPT for answer in held] == [True, True, True, False]
    assert json.loads(held[3].body)["code"] == 422, "a refusal's answer is kept whole"
    held.clear()
    seen = [
        (name, (listed[name]["metadata"]["uid"], listed[name]["metadata"]["resourceVersion"]))
        for name in names
    ]
    deleted = ours.delete_configmaps([(namespace, name, condition) for name, condition in seen], width=2)
    assert [outcome.name for outcome in deleted] == ["DONE"] * 3
    assert [answer.body for answer in held] == [b""] * 3, "a delete's answer is read for its status alone"


def test_a_batch_stores_each_object_and_answers_each_refusal_in_its_place(batching, namespace, cluster):
    ours = batching()
    ours.apply_configmap(configmap(namespace, "shared", KEY="theirs"), field_manager="someone-else")
    manifests = [(configmap(namespace, f"cm-{index}", KEY=str(index)), False) for index in range(30)]
    manifests[5] = (configmap(namespace, "bad", **{"not a key!": "x"}), False)
    manifests[11] = (configmap(namespace, "shared", KEY="ours"), False)
    manifests[17] = (configmap(f"gone-{uuid.uuid4().hex[:8]}", "x", A="b"), False)
    outcomes = ours.apply_configmaps(manifests, field_manager="sluice-transport", width=4)
    assert [index for index, outcome in enumerate(outcomes) if not isinstance(outcome, Applied)] == [
        5,
        11,
        17,
    ]
    assert "422" in str(outcomes[5]) and "not a key!" in str(outcomes[5])
    assert isinstance(outcomes[11], FieldConflictError)
    assert isinstance(outcomes[17], NotFoundError)
    listed = {obj["metadata"]["name"]: obj for obj in cluster.list_configmaps(namespace)}
    stored = {name: obj["data"] for name, obj in listed.items()}
    assert all(
        stored[f"cm-{index}"] == {"KEY": str(index)} for index in range(30) if index not in (5, 11, 17)
    )
    # Each apply's answer gives the version it stored: a live-cache floor is set from it.
    assert all(
        outcomes[index] == Applied(listed[f"cm-{index}"]["metadata"]["resourceVersion"])
        for index in range(30)
        if index not in (5, 11, 17)
    )
    assert stored["shared"] == {"KEY": "theirs"}
    forced = ours.apply_configmaps(
        [(configmap(namespace, "shared", KEY="ours"), True)], field_manager="sluice-transport", width=4
    )
    assert forced == [Applied(cluster.get_configmap(namespace, "shared")["metadata"]["resourceVersion"])]
    assert cluster.get_configmap(namespace, "shared")["data"] == {"KEY": "ours"}


def test_a_body_given_encoded_is_sent_as_it_is_and_a_missing_one_is_encoded(batching, namespace, cluster):
    """``bodies``: the intent's own encoding of its manifest is the request's body, not encoded again."""
    ours = batching()
    given = configmap(namespace, "given", KEY="from the body")
    manifests = [
        (configmap(namespace, "given", KEY="from the manifest"), False),
        (configmap(namespace, "own", KEY="x"), False),
    ]
    bodies = [json.dumps(given, separators=(",", ":")), None]
    outcomes = ours.apply_configmaps(manifests, field_manager="sluice-transport", width=2, bodies=bodies)
    assert all(isinstance(outcome, Applied) for outcome in outcomes) and len(outcomes) == 2
    assert cluster.get_configmap(namespace, "given")["data"] == {"KEY": "from the body"}
    assert cluster.get_configmap(namespace, "own")["data"] == {"KEY": "x"}


def test_a_batch_applies_characters_beyond_the_basic_plane_from_bodies_given_encoded(
    batching, namespace, cluster
):
    """The intents' own encoding (``manifest_json``, Python's JSON) is what a batch sends."""
    manifests = [
        (configmap(namespace, f"awkward-{key}", V=value), False) for key, value in AWKWARD_VALUES.items()
    ]
    bodies = [json.dumps(manifest, separators=(",", ":")) for manifest, _ in manifests]
    outcomes = batching().apply_configmaps(
        manifests, field_manager="sluice-transport", width=4, bodies=bodies
    )
    assert len(outcomes) == len(manifests) and all(isinstance(outcome, Applied) for outcome in outcomes)
    for key, value in AWKWARD_VALUES.items():
        assert cluster.get_configmap(namespace, f"awkward-{key}")["data"] == {"V": value}


# Alone under pytest -n 2: it bounds a wait by the wall clock, which the other session slows.
@pytest.mark.exclusive
def test_a_silent_server_stops_the_batch_after_the_applies_under_way(
    batching, settings, stack, tmp_path, fake_apiserver
):
    """A cluster that does not answer costs the requests in flight one timeout together; the rest
    of the batch is never sent."""
    settings.SLUICE_CLUSTER_CONNECT_TIMEOUT, settings.SLUICE_CLUSTER_READ_TIMEOUT = 1.0, 1.0
    server = fake_apiserver(None)
    silent = batching(kubeconfig_pointing_at(stack, tmp_path, server.url))
    started = time.monotonic()
    with pytest.raises(TemporaryError) as unreachable:
        silent.apply_configmaps(
            [(configmap("default", f"x{index}", A="b"), False) for index in range(20)],
            field_manager="s",
            width=3,
        )
    elapsed = time.monotonic() - started
    assert str(unreachable.value) == "kube-apiserver unreachable: read timed out"
    assert server.requests == 3
    assert 1.9 < elapsed < 4.0


def test_throttling_stops_a_batch_and_keeps_the_servers_retry_after(
    batching, stack, tmp_path, fake_apiserver
):
    server = fake_apiserver(answer("429 Too Many Requests", {"message": "slow down"}, "Retry-After: 7"))
    throttled = batching(kubeconfig_pointing_at(stack, tmp_path, server.url))
    with pytest.raises(TemporaryError, match="slow down") as refused:
        throttled.apply_configmaps(
            [(configmap("default", f"x{index}", A="b"), False) for index in range(10)],
            field_manager="s",
            width=1,
        )
    assert refused.value.delay == 7.0
    assert server.requests == 1


def test_rejected_credentials_refuse_the_cluster_in_a_batch(batching, stack, tmp_path, fake_apiserver):
    server = fake_apiserver(answer("401 Unauthorized", {"message": "Unauthorized"}))
    refusing = batching(kubeconfig_pointing_at(stack, tmp_path, server.url))
    with pytest.raises(ClusterRefused, match="401"):
        refusing.apply_configmaps([(configmap("default", "x", A="b"), False)] * 4, field_manager="s", width=2)


@pytest.mark.parametrize(
    ("status", "raised", "match"),
    [
        ("429 Too Many Requests", TemporaryError, "slow down"),
        ("401 Unauthorized", ClusterRefused, "401"),
        ("403 Forbidden", None, "403"),
    ],
    ids=["throttled", "credentials-refused", "forbidden"],
)
def test_a_batch_of_deletes_stops_at_what_stops_a_cluster_and_answers_a_refusal_in_place(
    batching, stack, tmp_path, fake_apiserver, status, raised, match
):
    """Throttling and refused credentials stop a prune's batch after the first answer and raise (its
    intents stay pending); a refusal for good (RBAC's 403) is that delete's answer, and the rest go on."""
    server = fake_apiserver(
        answer(status, {"message": "slow down" if "429" in status else "no"}, "Retry-After: 7")
    )
    refused = batching(kubeconfig_pointing_at(stack, tmp_path, server.url))
    objects = [("default", f"x{index}", ("uid", "1")) for index in range(6)]
    if raised is None:
        outcomes = refused.delete_configmaps(objects, width=1)
        assert [type(outcome).__name__ for outcome in outcomes] == ["PermanentError"] * 6
        assert all(match in str(outcome) for outcome in outcomes)
        assert server.requests == 6
        assert all(
            line.startswith("DELETE /api/v1/namespaces/default/configmaps/x") for line in server.request_lines
        )
        return
    with pytest.raises(raised, match=match):
        refused.delete_configmaps(objects, width=1)
    assert server.requests == 1


def test_a_batch_asks_for_no_second_strict_decode_either(batching, stack, tmp_path, fake_apiserver):
    stored = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"A": "b"}}
    server = fake_apiserver(answer("200 OK", stored))
    ours = batching(kubeconfig_pointing_at(stack, tmp_path, server.url))
    manifests = [(configmap("default", f"cm-{index}", A="b"), index == 2) for index in range(3)]
    # The fake's answer has no resourceVersion: none is made up.
    assert ours.apply_configmaps(manifests, field_manager="sluice-t", width=3) == [Applied("")] * 3
    path = "PATCH /api/v1/namespaces/default/configmaps"
    query = "fieldManager=sluice-t&fieldValidation=Ignore"
    assert sorted(server.request_lines) == [
        f"{path}/cm-0?{query} HTTP/1.1",
        f"{path}/cm-1?{query} HTTP/1.1",
        f"{path}/cm-2?{query}&force=true HTTP/1.1",
    ]


def test_batches_keep_their_connections_between_them(batching, stack, tmp_path, fake_apiserver):
    stored = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"A": "b"}}
    server = fake_apiserver(answer("200 OK", stored))
    kept = batching(kubeconfig_pointing_at(stack, tmp_path, server.url))
    for _ in range(4):
        manifests = [(configmap("default", f"x{index}", A="b"), False) for index in range(6)]
        assert _all_applied(kept.apply_configmaps(manifests, field_manager="s", width=3), 6)
    assert server.requests == 24
    assert len(server.connections) <= 3


def test_a_closed_port_fails_a_batch_as_connection_refused(batching, stack, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    closed = batching(kubeconfig_pointing_at(stack, tmp_path, f"https://127.0.0.1:{port}"))
    with pytest.raises(TemporaryError) as unreachable:
        closed.apply_configmaps([(configmap("default", "x", A="b"), False)] * 5, field_manager="s", width=2)
    assert str(unreachable.value) == "kube-apiserver unreachable: connection refused"


def test_a_forked_child_batches_on_connections_of_its_own(settings, stack, tmp_path, fake_apiserver):
    """The multi handle a batch keeps its connections in is the parent's: a forked child makes its own."""
    settings.SLUICE_APPLY_TRANSPORT = "curl"
    stored = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"A": "b"}}
    server = fake_apiserver(answer("200 OK", stored))
    settings.SLUICE_CLUSTER_CONNECT_TIMEOUT, settings.SLUICE_CLUSTER_READ_TIMEOUT = 2.0, 2.0
    batch = [(configmap("default", "x", A="b"), False)] * 2
    with Cluster(kubeconfig_pointing_at(stack, tmp_path, server.url)) as parent:
        assert _all_applied(parent.apply_configmaps(batch, field_manager="s", width=1), 2)
        child = os.fork()
        if child == 0:
            try:
                ok = _all_applied(parent.apply_configmaps(batch, field_manager="s", width=1), 2)
                os._exit(0 if ok else 1)
            except BaseException:
                os._exit(1)
        assert exit_code_within(child, seconds=30) == 0
        assert _all_applied(parent.apply_configmaps(batch, field_manager="s", width=1), 2)
    assert server.served == [0, 0, 1, 1, 0, 0]


# Alone under pytest -n 2: it bounds a wait by the wall clock, which the other session slows.
@pytest.mark.exclusive
def test_a_batch_on_descriptors_past_1024_runs_at_its_usual_pace(batching, namespace, cluster):
    """select() and libcurl's fdset cannot see a socket numbered 1,024 or more; a batch waits on epoll,
    which can. Every connection of this batch is made past that number."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= 2048, "the test needs room for 1,100 descriptors"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    placeholders = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        assert max(placeholders) >= 1024
        ours = batching()  # its connections are made now, past the placeholders
        manifests = [(configmap(namespace, f"high-{index}", KEY=str(index)), False) for index in range(40)]
        started = time.monotonic()
        assert _all_applied(ours.apply_configmaps(manifests, field_manager="sluice-transport", width=8), 40)
        assert time.monotonic() - started < 5.0
    finally:
        for descriptor in placeholders:
            os.close(descriptor)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    stored = {obj["metadata"]["name"] for obj in cluster.list_configmaps(namespace)}
    assert {f"high-{index}" for index in range(40)} <= stored


# Alone under pytest -n 2: it bounds a wait by the wall clock, which the other session slows.
@pytest.mark.exclusive
def test_closing_a_transport_does_not_wait_for_a_batch_under_way(settings, stack, tmp_path, fake_apiserver):
    settings.SLUICE_APPLY_TRANSPORT = "curl"
    settings.SLUICE_CLUSTER_CONNECT_TIMEOUT, settings.SLUICE_CLUSTER_READ_TIMEOUT = 2.0, 2.0
    server = fake_apiserver(None)  # never answers: the batch lasts its timeout
    silent = Cluster(kubeconfig_pointing_at(stack, tmp_path, server.url))
    errors: list[BaseException] = []

    def batch() -> None:
        try:
            silent.apply_configmaps([(configmap("default", "x", A="b"), False)], field_manager="s", width=1)
        except TemporaryError as exc:
            errors.append(exc)

    running = threading.Thread(target=batch)
    running.start()
    poll(lambda: server.requests == 1, timeout=10, what="the batch's request to reach the server")
    started = time.monotonic()
    silent.close()
    assert time.monotonic() - started < 0.5
    running.join(timeout=30)
    assert len(errors) == 1
    transport = silent._curl
    assert transport._multi is None and transport._multi_idle == []  # closed as the batch ended


def test_a_step_batches_its_plain_applies_and_answers_every_intent_in_its_place(
    batching, settings, namespace, cluster
):
    """Creates and updates go out together; a delete and a self-heal take their own paths; each intent
    gets its answer where it stands."""
    from gitops.cluster.apply import intents_apply
    from gitops.models import ApplyIntent, Source
    from gitops.vocabulary import ChangeAction

    ours = batching()
    manager = settings.SLUICE_FIELD_MANAGER
    ours.apply_configmap(labelled(configmap(namespace, "doomed", A="b"), "apps"), field_manager=manager)
    ours.apply_configmap(configmap(namespace, "drifted", A="b"), field_manager=manager)
    ours.apply_configmap(configmap(namespace, "drifted", EXTRA="theirs"), field_manager="someone-else")
    ours.apply_configmap(configmap(namespace, "taken", KEY="theirs"), field_manager="someone-else")

    def intent(name: str, action: ChangeAction, **data: str) -> ApplyIntent:
        manifest = configmap(namespace, name, **data) if action != ChangeAction.DELETE else None
        after = {"data": data} if action == ChangeAction.SELF_HEAL else None
        return ApplyIntent(
            source=Source(name="apps"),
            cluster="default",
            namespace=namespace,
            name=name,
            action=action,
            manifest=manifest,
            after=after,
        )

    intents = [
        intent("new-0", ChangeAction.CREATE, K="0"),
        intent("doomed", ChangeAction.DELETE),
        intent("taken", ChangeAction.UPDATE, KEY="ours"),
        intent("drifted", ChangeAction.SELF_HEAL, A="b"),
        intent("new-1", ChangeAction.CREATE, K="1"),
    ]
    batches: list[list[str]] = []
    batch = ours.apply_configmaps

    def spied(manifests, **kwargs):
        batches.append([manifest["metadata"]["name"] for manifest, _ in manifests])
        return batch(manifests, **kwargs)

    ours.apply_configmaps = spied
    answers = intents_apply(ours, intents)
    assert batches == [["new-0", "taken", "new-1"]]
    refusals = [answer.refusal for answer in answers]
    assert refusals[0] is None and refusals[1] is None and refusals[3] is None and refusals[4] is None
    assert refusals[2].startswith("conflict with another field manager")
    listed = {obj["metadata"]["name"]: obj for obj in cluster.list_configmaps(namespace)}
    versions = {name: obj["metadata"]["resourceVersion"] for name, obj in listed.items()}
    assert (
        answers[0].resource_version == versions["new-0"] and answers[4].resource_version == versions["new-1"]
    )
    assert answers[1].resource_version == "" and answers[2].resource_version == ""  # deleted; refused
    # A self-heal's version is its apply's: the removal of another manager's key came after it.
    assert 0 < int(answers[3].resource_version) < int(versions["drifted"])
    stored = {obj["metadata"]["name"]: obj["data"] for obj in cluster.list_configmaps(namespace)}
    assert "doomed" not in stored
    assert stored["new-0"] == {"K": "0"} and stored["new-1"] == {"K": "1"}
    assert stored["drifted"] == {"A": "b"}  # the self-heal dropped the key another manager added
    assert stored["taken"] == {"KEY": "theirs"}


def test_a_batch_of_deletes_answers_each_on_the_condition_of_the_object_read(batching, namespace):
    """A prune's DELETEs go out together, each on the condition of the uid and resourceVersion read:
    deleted, already gone, or changed since (not deleted: read it and check it), each in its place; the
    fence is asked before each."""
    from gitops.cluster.client import WriteOutcome

    ours = batching()
    manager = "sluice-test"
    read = {
        name: ours.apply_configmap(labelled(configmap(namespace, name), "apps"), field_manager=manager)
        for name in ("one", "gone", "edited", "recreated", "two")
    }
    ours.delete_configmap(namespace, "gone")
    ours.apply_configmap(labelled(configmap(namespace, "edited", NEW="1"), "apps"), field_manager=manager)
    ours.delete_configmap(namespace, "recreated")
    ours.apply_configmap(labelled(configmap(namespace, "recreated"), "other"), field_manager=manager)
    fences = []
    seen = {name: (obj["metadata"]["uid"], obj["metadata"]["resourceVersion"]) for name, obj in read.items()}

    outcomes = ours.delete_configmaps(
        [(namespace, name, seen[name]) for name in read], width=3, before_each=lambda: fences.append(1)
    )

    assert outcomes == [
        WriteOutcome.DONE,
        WriteOutcome.GONE,
        WriteOutcome.CHANGED,
        WriteOutcome.CHANGED,
        WriteOutcome.DONE,
    ]
    assert len(fences) == 5
    assert sorted(obj["metadata"]["name"] for obj in ours.list_configmaps(namespace)) == [
        "edited",
        "recreated",
    ]
    # The batch's handles serve the next apply batch as applies again (each request sets its method).
    applied = ours.apply_configmaps(
        [(configmap(namespace, f"after-{i}", A="b"), False) for i in range(4)], field_manager=manager, width=3
    )
    assert all(outcome.resource_version for outcome in applied)
    assert len(ours.list_configmaps(namespace)) == 6


@pytest.mark.parametrize("action", ["delete", "rollback"])
def test_a_step_prunes_in_one_batch_and_checks_what_changed_since_its_plan_one_by_one(
    batching, settings, namespace, action
):
    """Prunes whose plan read the object go out as one batch, with no read; one changed since (here taken
    over by another source) fails its condition, is read, and is kept, refused by name. So do a
    rollback's deletes of what its rollout created, on the condition of the rollback's read."""
    from gitops.cluster.apply import intents_apply
    from gitops.models import ApplyIntent, Source
    from gitops.vocabulary import ChangeAction

    ours = batching()
    manager = settings.SLUICE_FIELD_MANAGER
    names = ["p-0", "p-1", "taken", "p-2"]
    read = {
        name: ours.apply_configmap(labelled(configmap(namespace, name), "apps"), field_manager=manager)
        for name in names
    }
    ours.apply_configmap(labelled(configmap(namespace, "taken"), "other"), field_manager=manager)
    intents = [
        ApplyIntent(
            source=Source(name="apps"),
            cluster="default",
            namespace=namespace,
            name=name,
            action=ChangeAction(action),
            live_uid=read[name]["metadata"]["uid"],
            live_version=read[name]["metadata"]["resourceVersion"],
        )
        for name in names
    ]
    batches, reads, deletes = [], [], []
    batch, get, delete = ours.delete_configmaps, ours.get_configmap, ours._delete_configmap

    def spied(objects, **kwargs):
        batches.append([name for _, name, _ in objects])
        return batch(objects, **kwargs)

    ours.delete_configmaps = spied
    ours.get_configmap = lambda *args, **kwargs: reads.append(args[1]) or get(*args, **kwargs)
    ours._delete_configmap = lambda *args: deletes.append(args[1]) or delete(*args)

    answers = intents_apply(ours, intents)

    assert batches == [names]
    assert reads == ["taken"]  # only the one whose condition failed
    assert deletes == []  # read, and refused before any DELETE of its own: the batch's was its one try
    refusals = [answer.refusal for answer in answers]
    assert refusals[:2] == [None, None] and refusals[3] is None
    assert "it is now source other's" in refusals[2]
    del ours.get_configmap, ours._delete_configmap
    assert [obj["metadata"]["name"] for obj in ours.list_configmaps(namespace)] == ["taken"]


def test_a_batch_of_releases_patches_each_object_listed_on_the_condition_of_its_version(batching, namespace):
    """A removal that keeps its objects: each one's JSON patch is made from the object listed and tested
    against its resourceVersion, all in one batch. One changed since is not written (read it and check
    it); one gone is done; the fence is asked before each."""
    from gitops.cluster.client import WriteOutcome

    ours = batching()
    manager = "sluice-test"
    for name in ("one", "edited", "gone", "two"):
        ours.apply_configmap(labelled(configmap(namespace, name, A="b"), "apps"), field_manager=manager)
    listed = ours.list_configmaps(namespace, label_selector="sluice.dev/source=apps")
    ours.apply_configmap(labelled(configmap(namespace, "edited", A="c"), "apps"), field_manager=manager)
    ours.delete_configmap(namespace, "gone")
    fences = []

    outcomes = ours.release_configmaps(
        sorted(listed, key=lambda obj: obj["metadata"]["name"]),
        field_manager=manager,
        width=2,
        before_each=lambda: fences.append(1),
    )

    # Sorted: edited, gone, one, two.
    assert outcomes == [WriteOutcome.CHANGED, WriteOutcome.GONE, WriteOutcome.DONE, WriteOutcome.DONE]
    assert len(fences) == 4
    for name in ("one", "two"):
        released = ours.get_configmap(namespace, name)
        assert "sluice.dev/source" not in released["metadata"]["labels"] and released["data"] == {"A": "b"}
        assert manager not in {entry["manager"] for entry in released["metadata"].get("managedFields") or ()}
    assert ours.get_configmap(namespace, "edited")["metadata"]["labels"]["sluice.dev/source"] == "apps"


def test_a_removals_releases_list_each_namespace_once_and_read_only_what_changed(
    batching, settings, namespace
):
    """Releases go out as one batch from one LIST of the source's objects per namespace, without a read
    each; one another source took over is not in that LIST, is read, and is refused by name; one edited
    since (still the source's) fails its test, is read, and is released."""
    from gitops.cluster.apply import RELEASES_LISTED, intents_apply
    from gitops.models import ApplyIntent, Source
    from gitops.vocabulary import ChangeAction

    ours = batching()
    manager = settings.SLUICE_FIELD_MANAGER
    # As many as are listed together (``RELEASES_LISTED``): fewer are read one by one.
    names = ["r-0", "taken", "edited", *(f"r-{index}" for index in range(1, RELEASES_LISTED - 2))]
    for name in names:
        ours.apply_configmap(labelled(configmap(namespace, name, A="b"), "apps"), field_manager=manager)
    ours.apply_configmap(labelled(configmap(namespace, "taken"), "other"), field_manager=manager)

    def releases(names: list[str]) -> list[ApplyIntent]:
        return [
            ApplyIntent(
                source=Source(name="apps"),
                cluster="default",
                namespace=namespace,
                name=name,
                action=ChangeAction.RELEASE,
            )
            for name in names
        ]

    intents = releases(names)
    lists, reads = [], []
    list_them, get = ours.list_configmaps, ours.get_configmap

    def listing(*args, **kwargs):
        lists.append(args[0])
        found = list_them(*args, **kwargs)
        # Edited after the LIST, before its patch: the patch's test of the version listed fails.
        ours.apply_configmap(labelled(configmap(namespace, "edited", A="c"), "apps"), field_manager=manager)
        return found

    ours.list_configmaps = listing
    ours.get_configmap = lambda *args, **kwargs: reads.append(args[1]) or get(*args, **kwargs)

    answers = intents_apply(ours, intents)

    del ours.list_configmaps, ours.get_configmap
    assert lists == [namespace]
    assert sorted(reads) == ["edited", "taken"]
    refusals = [answer.refusal for answer in answers]
    assert "it is now source other's" in refusals[1]
    assert refusals[:1] + refusals[2:] == [None] * (len(names) - 1)
    labels = {obj["metadata"]["name"]: obj["metadata"]["labels"] for obj in ours.list_configmaps(namespace)}
    assert labels["taken"]["sluice.dev/source"] == "other"
    assert all("sluice.dev/source" not in labels[name] for name in names if name != "taken")

    # Fewer in a namespace than are listed together: each read on its own, no LIST.
    few = ["f-0", "f-1"]
    for name in few:
        ours.apply_configmap(labelled(configmap(namespace, name, A="b"), "apps"), field_manager=manager)
    lists.clear()
    ours.list_configmaps = lambda *args, **kwargs: lists.append(args[0]) or list_them(*args, **kwargs)
    assert [answer.refusal for answer in intents_apply(ours, releases(few))] == [None, None]
    del ours.list_configmaps
    assert lists == []


def test_a_delete_goes_out_only_while_the_object_is_still_the_sources(cluster, namespace):
    """A prune (or a replace) planned seconds or minutes ago deletes nothing another source or a person
    took over since: the object is read, its labels checked, and the delete made on the condition that
    it is still the object read."""
    from gitops.cluster.client import NotHeldError

    manager = "sluice-test"
    cluster.apply_configmap(labelled(configmap(namespace, "theirs"), "other"), field_manager=manager)
    cluster.apply_configmap(configmap(namespace, "unlabelled"), field_manager=manager)
    with pytest.raises(NotHeldError, match="it is now source other's"):
        cluster.delete_configmap(namespace, "theirs", held_by="apps")
    with pytest.raises(NotHeldError, match="no source's"):
        cluster.delete_configmap(namespace, "unlabelled", held_by="apps")
    assert cluster.get_configmap(namespace, "theirs") and cluster.get_configmap(namespace, "unlabelled")
    assert cluster.delete_configmap(namespace, "gone", held_by="apps") is False

    cluster.apply_configmap(labelled(configmap(namespace, "ours"), "apps"), field_manager=manager)
    assert cluster.delete_configmap(namespace, "ours", held_by="apps") is True
    assert cluster.get_configmap(namespace, "ours") is None


def test_a_release_the_cluster_refuses_as_it_is_is_refused_after_one_read_again(
    cluster, namespace, kube_client
):
    """An admission policy's denial of a release's JSON patch is a 422, as a failed resourceVersion test
    is: the object read again at the version tested tells them apart. Before, each object was read and
    patched three times (and 10,000 kept objects cost 70,000 requests) before its refusal."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from gitops.errors import PermanentError
    from tests.admission import updates_denied

    manager = "sluice-test"
    cluster.apply_configmap(labelled(configmap(namespace, "ours", A="b"), "apps"), field_manager=manager)
    core = client.CoreV1Api(kube_client())

    def update_denied() -> bool:
        try:
            core.patch_namespaced_config_map("ours", namespace, {"data": {"probe": "1"}}, dry_run="All")
        except ApiException:
            return True
        return False

    reads, writes, get = [], [], cluster.get_configmap
    patch = cluster._core.patch_namespaced_config_map
    cluster.get_configmap = lambda *args, **kwargs: reads.append(args[1]) or get(*args, **kwargs)
    cluster._core.patch_namespaced_config_map = lambda *args, **kwargs: (
        writes.append(1) or patch(*args, **kwargs)
    )
    try:
        with (
            updates_denied(
                kube_client(), namespace, expression="false", message="frozen here", denied=update_denied
            ),
            pytest.raises(PermanentError, match="frozen here"),
        ):
            cluster.release_configmap(namespace, "ours", field_manager=manager, held_by="apps")
    finally:
        del cluster.get_configmap, cluster._core.patch_namespaced_config_map

    assert (len(reads), len(writes)) == (2, 1), "read, refused, read again at the same version: refused"
    assert cluster.get_configmap(namespace, "ours")["metadata"]["labels"]["sluice.dev/source"] == "apps"


def test_a_release_leaves_an_object_another_source_took_over_as_it_is(cluster, namespace):
    """A removal that keeps its objects releases them: Sluice's labels, annotations and its entry in
    managedFields go. One another source took over since the listing kept nothing of its new owner's
    (the field manager is one for every source). It is now refused; the source's own is released."""
    from gitops.cluster.client import NotHeldError

    manager = "sluice-test"
    cluster.apply_configmap(labelled(configmap(namespace, "theirs"), "other"), field_manager=manager)
    with pytest.raises(NotHeldError, match="was not released: it is now source other's"):
        cluster.release_configmap(namespace, "theirs", field_manager=manager, held_by="apps")
    assert cluster.get_configmap(namespace, "theirs")["metadata"]["labels"]["sluice.dev/source"] == "other"

    cluster.apply_configmap(labelled(configmap(namespace, "ours"), "apps"), field_manager=manager)
    assert cluster.release_configmap(namespace, "ours", field_manager=manager, held_by="apps")
    assert "sluice.dev/source" not in cluster.get_configmap(namespace, "ours")["metadata"]["labels"]


@pytest.mark.parametrize("taken_over_by", ["relabelled", "recreated"])
def test_a_take_over_between_the_deletes_read_and_its_request_keeps_the_object(
    cluster, namespace, taken_over_by
):
    """The delete's preconditions (uid and resourceVersion): an object relabelled, or deleted and made
    again by someone else, between the read and the DELETE fails them, is read again, and is kept."""
    from gitops.cluster.client import NotHeldError

    manager = "sluice-test"
    cluster.apply_configmap(labelled(configmap(namespace, "app"), "apps"), field_manager=manager)
    fences = []

    def take_over() -> None:
        fences.append(1)
        if len(fences) > 1:
            return
        if taken_over_by == "recreated":
            cluster.delete_configmap(namespace, "app")
        cluster.apply_configmap(
            labelled(configmap(namespace, "app"), "other"), field_manager="someone-else", force=True
        )

    with pytest.raises(NotHeldError, match="source other's"):
        cluster.delete_configmap(namespace, "app", held_by="apps", fence=take_over)
    assert len(fences) == 1  # read again after the failed precondition, and refused before any delete
    kept = cluster.get_configmap(namespace, "app")
    assert kept is not None and kept["metadata"]["labels"]["sluice.dev/source"] == "other"


def test_a_delete_at_the_version_its_plan_read_sends_no_read_of_its_own(cluster, namespace):
    """A prune's plan (or a removal's listing) read the object as the source's at a resourceVersion: the
    DELETE goes out on the condition that it is still that version, with no GET before it (a prune of
    10,000 objects made 10,000 more requests)."""
    manager = "sluice-test"
    applied = cluster.apply_configmap(labelled(configmap(namespace, "ours"), "apps"), field_manager=manager)
    reads = []
    get = cluster.get_configmap
    cluster.get_configmap = lambda *args, **kwargs: reads.append(args) or get(*args, **kwargs)
    try:
        seen = (applied["metadata"]["uid"], applied["metadata"]["resourceVersion"])
        assert cluster.delete_configmap(namespace, "ours", held_by="apps", seen=seen) is True
        assert reads == []
        assert cluster.delete_configmap(namespace, "ours", held_by="apps", seen=seen) is False
    finally:
        del cluster.get_configmap
    assert cluster.get_configmap(namespace, "ours") is None


@pytest.mark.parametrize("since", ["taken over", "recreated by another", "edited, still the source's"])
def test_a_delete_of_an_object_changed_since_its_read_reads_it_and_checks_its_labels(
    cluster, namespace, since
):
    """A write since the plan read it (another source took it over; someone deleted it and made it again;
    a person edited a key) fails the condition of the uid and version read: the object is read and its
    labels decide, as without them."""
    from gitops.cluster.client import NotHeldError

    manager = "sluice-test"
    read = cluster.apply_configmap(labelled(configmap(namespace, "app"), "apps"), field_manager=manager)
    if since == "recreated by another":
        cluster.delete_configmap(namespace, "app")
    holder = "apps" if since == "edited, still the source's" else "other"
    edited = labelled(configmap(namespace, "app", EDITED="yes"), holder)
    cluster.apply_configmap(edited, field_manager="someone-else", force=True)
    seen = (read["metadata"]["uid"], read["metadata"]["resourceVersion"])
    if holder == "other":
        with pytest.raises(NotHeldError, match="source other's"):
            cluster.delete_configmap(namespace, "app", held_by="apps", seen=seen)
        assert cluster.get_configmap(namespace, "app")["metadata"]["labels"]["sluice.dev/source"] == "other"
    else:
        assert cluster.delete_configmap(namespace, "app", held_by="apps", seen=seen) is True
        assert cluster.get_configmap(namespace, "app") is None


@pytest.mark.parametrize(
    ("operation", "sent"),
    [
        # A deletion that may have been carried out is not sent again: a resend could land after the
        # reconcile lock's fence let the next pass write (SLUICE_PASS_TAKEOVER_SECONDS).
        (lambda cluster: cluster.delete_configmap("default", "x"), ["DELETE"]),
        # A read is: one more try of a dropped connection, as before.
        (lambda cluster: cluster.get_configmap("default", "x"), ["GET", "GET"]),
    ],
    ids=["delete", "read"],
)
def test_a_write_the_server_does_not_answer_is_not_sent_again_and_a_read_is(
    settings, stack, tmp_path, fake_apiserver, operation, sent
):
    settings.SLUICE_CLUSTER_CONNECT_TIMEOUT, settings.SLUICE_CLUSTER_READ_TIMEOUT = 1.0, 1.0
    server = fake_apiserver(None)
    silent = Cluster(kubeconfig_pointing_at(stack, tmp_path, server.url))
    try:
        with pytest.raises(TemporaryError, match="read timed out"):
            operation(silent)
    finally:
        silent.close()
    assert [line.split()[0] for line in server.request_lines] == sent
