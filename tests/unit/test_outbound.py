"""Calls to URLs Sluice was given: no redirect followed, no body kept, and a deadline for the whole call."""

from __future__ import annotations

import importlib
import socket
import threading
import time

from gitops import outbound


def serve(answer) -> str:
    """A loopback server that hands each connection to ``answer(connection)``; returns its URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def run() -> None:
        while True:
            connection, _ = listener.accept()
            threading.Thread(target=answer, args=(connection,), daemon=True).start()

    threading.Thread(target=run, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/check"


def trickle(connection: socket.socket, shut: threading.Event | None = None) -> None:
    """Answers a byte each 0.2 s (8 s in all); ``shut`` is set when the client shut the connection."""
    connection.recv(65536)
    try:
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 40:
            connection.sendall(bytes([byte]))
            time.sleep(0.2)  # the server under test trickles; nothing here waits for it
    except OSError:
        if shut is not None:
            shut.set()


def calls_ended(before: set[threading.Thread], seconds: float = 3) -> bool:
    """Whether every outbound call thread started since ``before`` ended within ``seconds``."""
    calls = [thread for thread in set(threading.enumerate()) - before if thread.name == "outbound"]
    deadline = time.monotonic() + seconds
    while any(thread.is_alive() for thread in calls) and time.monotonic() < deadline:
        for thread in calls:
            thread.join(timeout=0.1)
    return not any(thread.is_alive() for thread in calls)


def test_a_trickling_server_is_given_up_on_within_the_timeout():
    url = serve(trickle)
    started = time.monotonic()
    answer = outbound.post(url, b"{}", content_type="application/json", timeout=1)
    assert time.monotonic() - started < 2.5
    assert answer.status == 0
    assert "no answer within 1s" in answer.describe(url)


def test_a_trickling_servers_connection_is_shut_at_the_deadline_so_its_thread_ends():
    """Each read waits up to the timeout, so a server sending a byte each time kept the call's thread,
    socket and file descriptor well past the deadline: one more per analysis retry or notification."""
    url = serve(trickle)  # 40 bytes, one each 0.2 s: 8 s
    before = set(threading.enumerate())
    outbound.post(url, b"{}", content_type="application/json", timeout=1)
    assert calls_ended(before), "the call's thread still reads the trickle"


def unanswered_address() -> tuple[str, int]:
    """A loopback address whose connects hang: its listener's backlog is full, so the kernel drops SYNs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    held = [listener]
    while True:  # on loopback a queued connect completes at once: one that waits means the backlog is full
        client = socket.socket()
        client.settimeout(0.3)
        held.append(client)
        try:
            client.connect(address)
        except TimeoutError:
            break
    unanswered_address.held = held  # kept open for the test's life
    return address


def test_a_host_whose_first_address_does_not_answer_gets_no_request_after_the_deadline(monkeypatch):
    """socket.create_connection gave each address the whole timeout: a first address that never answered
    used it all, and the call went on to the next, sending the request after Sluice had called it
    unanswered (a notification then sent twice, an analysis counted as failed that ran); a server that
    then trickled its answer held the thread for good (before 2026-12-07)."""
    received: list[bytes] = []

    def record_then_trickle(connection: socket.socket) -> None:
        received.append(connection.recv(65536))
        trickle(connection)

    url = serve(record_then_trickle)
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    dead = unanswered_address()
    real = socket.getaddrinfo

    def two_addresses(host, *args, **kwargs):  # a name with two addresses, the first one dead
        if host != "two.test":
            return real(host, *args, **kwargs)
        stream = (socket.AF_INET, socket.SOCK_STREAM, 6, "")
        return [(*stream, dead), (*stream, ("127.0.0.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", two_addresses)
    before = set(threading.enumerate())
    answer = outbound.post("http://two.test/check", b"{}", content_type="application/json", timeout=1)
    assert "no answer within 1s" in answer.describe("x"), answer
    assert calls_ended(before), "the call's thread still runs"
    assert received == [], "no request goes out after the deadline"


def test_a_call_interrupted_by_the_tasks_time_limit_shuts_its_connection():
    """Celery's soft time limit raises in the task's thread while it waits for the call: the deadline's
    shut never ran, and a trickling server kept the call's thread and socket (before 2026-12-07). Seen
    from the server: Thread.is_alive() says False after a join a signal interrupted, whatever runs."""
    import signal

    class TimeLimit(Exception):
        pass

    def interrupt(*_):
        raise TimeLimit

    shut = threading.Event()
    url = serve(lambda connection: trickle(connection, shut))
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        try:
            outbound.post(url, b"{}", content_type="application/json", timeout=5)
        except TimeLimit:
            pass
        else:
            raise AssertionError("the time limit did not interrupt the call")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert shut.wait(timeout=3), "the call's connection still reads the trickle"


def test_a_url_python_cannot_even_send_is_an_answer_not_a_crash():
    answer = outbound.post("http://127.0.0.1:9/a b", b"{}", content_type="application/json", timeout=1)
    assert answer.status == 0
    assert answer.problem.startswith("cannot reach the server")


def fail(connection: socket.socket) -> None:
    connection.recv(65536)
    connection.sendall(
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    connection.close()


def test_a_failed_notification_names_its_url_masked_for_a_chat_webhooks_path_is_its_token():
    """The error is stored on the notification's row and logged: neither may carry the token."""
    from gitops.record.notifications import DeliveryFailed, post_cloud_event

    url = serve(fail).removesuffix("/check") + "/services/T000/B000/PATHTOKEN0123456789"
    try:
        post_cloud_event(url, {"type": "dev.sluice.rollout.started"}, timeout=2)
    except DeliveryFailed as failed:
        text = str(failed)
    else:
        raise AssertionError("a 500 was taken as delivered")
    assert "HTTP 500" in text and "127.0.0.1" in text
    assert "PATHTOKEN0123456789" not in text, text


def test_an_analysis_that_fails_names_its_url_with_the_querys_secrets_redacted():
    """Its detail becomes a rollback's reason, which leaves Sluice in a CloudEvent."""
    from gitops.desired.policy import Analysis
    from gitops.desired.scope import AdminScope
    from gitops.rollout.analysis import http_check

    check = serve(fail)
    # A secret's name is not always one redaction knows: Azure Functions call theirs "code".
    for query in ["token=REPO-SECRET-42&region=eu", "code=REPO-SECRET-42", "key=REPO-SECRET-42"]:
        result = http_check(
            Analysis(f"{check}?{query}", timeout_seconds=2), {}, AdminScope.of(["*"], [check])
        )
        assert not result.passed and "HTTP 500" in result.detail, result.detail
        assert "REPO-SECRET-42" not in result.detail, result.detail
        assert f"from {check}?…" in result.detail, result.detail


def test_what_is_sent_stops_at_the_first_hash_where_the_prefix_check_stops():
    """url_allowed checks up to the first "#"; urllib sent up to the last: "/check#/../../admin#" was
    checked as "/check" and sent as "/check#/../../admin"."""
    lines: list[bytes] = []

    def record(connection: socket.socket) -> None:
        lines.append(connection.recv(65536).split(b"\r\n", 1)[0])
        connection.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        connection.close()

    url = serve(record)
    answer = outbound.post(url + "#/../../admin#", b"{}", content_type="application/json", timeout=2)
    assert answer.status == 204
    assert lines == [b"POST /check HTTP/1.1"]


def test_the_redirect_probe_sends_a_sources_credentials_through_no_proxy(monkeypatch):
    """It asks with the source's own token; urllib took HTTP_PROXY from the environment, which curl (git)
    ignores, and handed an http:// source's token to that proxy (before 2026-12-07)."""
    proxied: list[bytes] = []

    def proxy(connection: socket.socket) -> None:
        proxied.append(connection.recv(65536))
        connection.sendall(
            b"HTTP/1.1 302 Found\r\nLocation: http://proxy.example/\r\nContent-Length: 0\r\n\r\n"
        )
        connection.close()

    def git_server(connection: socket.socket) -> None:
        connection.recv(65536)
        connection.sendall(
            b"HTTP/1.1 301 Moved\r\nLocation: https://git.example/r.git/\r\nContent-Length: 0\r\n\r\n"
        )
        connection.close()

    proxy_url = serve(proxy).removesuffix("/check")
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, proxy_url)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    url = serve(git_server).replace("/check", "/r/info/refs?service=git-upload-pack")
    importlib.reload(outbound)  # urllib reads the proxies when an opener is built: as a worker starts
    try:
        found = outbound.redirect_of(url, headers={"Authorization": "Basic c2VjcmV0"}, timeout=2)
    finally:
        monkeypatch.undo()
        importlib.reload(outbound)

    assert found == "https://git.example/r.git/"
    assert proxied == [], "the token went to the proxy"
