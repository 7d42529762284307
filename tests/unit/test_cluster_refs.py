"""A cluster's client is built again when anything it read changes: its kubeconfig, and the files the
kubeconfig names (a token file rotated beside an untouched kubeconfig once left a worker on 401s)."""

from __future__ import annotations

import os
import stat
from types import SimpleNamespace

from gitops.cluster.clients import ClusterRef

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:6443", certificate-authority: ca.crt}
users:
- name: u
  user: {tokenFile: token}
- name: v
  user: {client-certificate: /absolute/client.crt, client-key: keys/client.key}
contexts:
- name: x
  context: {cluster: c, user: u}
current-context: x
"""


def test_a_rotated_token_file_changes_the_fingerprint(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    token = tmp_path / "token"
    token.write_text("first")
    ref = ClusterRef("edge", str(kubeconfig), "x")
    before = ref.fingerprint()

    token.write_text("second token")
    os.utime(token, ns=(1, 1))

    assert ref.fingerprint() != before
    assert ref.fingerprint() == ref.fingerprint()


def test_the_files_a_kubeconfig_names_are_read_once_per_version_of_it(tmp_path):
    from gitops.cluster.clients import _named_files

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    stat = kubeconfig.stat()

    named = _named_files(str(kubeconfig), stat.st_mtime_ns, stat.st_size)

    assert named == tuple(
        sorted(
            [
                str(tmp_path / "ca.crt"),
                str(tmp_path / "token"),
                "/absolute/client.crt",
                str(tmp_path / "keys/client.key"),
            ]
        )
    )
    assert _named_files(str(tmp_path / "missing"), 0, 0) == ()
    (tmp_path / "broken").write_text("users: [unclosed")
    assert _named_files(str(tmp_path / "broken"), 1, 1) == ()


def test_a_slow_client_build_holds_up_no_other_cluster(monkeypatch, tmp_path):
    """A kubeconfig's exec plugin (a cloud CLI fetching a token) can take seconds. Built under the
    process-wide lock, it held up every other cluster's clients, informers and passes."""
    import threading

    from gitops.cluster.clients import ClusterClients

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    release, started = threading.Event(), threading.Event()
    built: dict[str, object] = {}

    def connect(self, *, pool_size: int):
        if self.name == "slow":
            started.set()
            assert release.wait(10), "never released"
        built[self.name] = SimpleNamespace(has_credentials=True, unverified=False)
        return built[self.name]

    monkeypatch.setattr(ClusterRef, "connect", connect)
    registry = ClusterClients()
    registry._refs = {name: ClusterRef(name, str(kubeconfig), "x") for name in ("slow", "quick")}
    slow: list[object] = []
    thread = threading.Thread(target=lambda: slow.append(registry.get("slow")), daemon=True)
    thread.start()
    try:
        assert started.wait(10), "the slow build began"
        quick: list[object] = []
        asker = threading.Thread(target=lambda: quick.append(registry.get("quick")), daemon=True)
        asker.start()
        asker.join(timeout=2)
        assert quick == [built.get("quick")] and quick[0] is not None, "the quick cluster waited"
    finally:
        release.set()
        thread.join(timeout=10)
    assert slow == [built["slow"]]
    assert registry.get("slow") is built["slow"], "built once"


EXEC_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}
users:
- name: u
  user:
    exec: {apiVersion: client.authentication.k8s.io/v1, command: PLUGIN, interactiveMode: Never}
contexts:
- name: x
  context: {cluster: c, user: u}
current-context: x
"""


def test_a_client_whose_exec_plugin_failed_once_is_not_kept_without_credentials(tmp_path):
    """A cloud CLI's token call failed once (a throttled STS): the client loaded with no credentials, and
    kept, sent every request of that process anonymously until the kubeconfig changed. Now that build
    is refused as a temporary error and not kept; the next one has the token."""
    import pytest

    from gitops.cluster.clients import ClusterClients
    from gitops.errors import TemporaryError

    plugin = tmp_path / "plugin"
    plugin.write_text(
        "#!/bin/sh\n"
        f"if [ ! -e {tmp_path}/ran ]; then touch {tmp_path}/ran; echo throttled >&2; exit 1; fi\n"
        'echo \'{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",'
        ' "status": {"token": "t0ken"}}\'\n'
    )
    plugin.chmod(plugin.stat().st_mode | stat.S_IXUSR)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(EXEC_KUBECONFIG.replace("PLUGIN", str(plugin)))
    registry = ClusterClients()
    # Its server's certificate is not checked (insecure-skip-tls-verify): registered with the allowance.
    registry._refs = {"edge": ClusterRef("edge", str(kubeconfig), "x", allow_unverified_tls=True)}

    with pytest.raises(TemporaryError, match="credentials could not be loaded"):
        registry.get("edge")
    client = registry.get("edge")
    try:
        assert client.has_credentials
    finally:
        registry.forget(["edge"])


def test_a_token_copied_with_its_modification_time_kept_changes_the_fingerprint(tmp_path):
    """rsync -a, cp -p: the same length, the same mtime; only the change time (and, replaced, the inode)
    tells the new token from the old."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    token = tmp_path / "token"
    token.write_text("first-token")
    kept = token.stat()
    ref = ClusterRef("edge", str(kubeconfig), "x")
    before = ref.fingerprint()

    replacement = tmp_path / "token.new"
    replacement.write_text("other-token")
    os.utime(replacement, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    os.replace(replacement, token)

    assert (token.stat().st_mtime_ns, token.stat().st_size) == (kept.st_mtime_ns, kept.st_size)
    assert ref.fingerprint() != before
