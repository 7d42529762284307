"""A second kube-apiserver of the stack's default cluster: same etcd, same prefix, same certificates.

That is what a highly available control plane runs. A replica started now builds
its watch cache from etcd as it is now, so a watch from any resourceVersion
written before it started is answered ``410 Gone``, as after an apiserver
restart or a rollover to another replica on a real cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from devstack.controlplane import Api, write_kubeconfig
from devstack.pki import KeyPair
from devstack.stack import free_port
from tests.workers import ARTIFACTS, poll


@contextlib.contextmanager
def apiserver_replica(stack_env: dict[str, str]) -> Iterator[Path]:
    """Runs a replica of the default cluster's kube-apiserver; yields a kubeconfig that points at it."""
    directory = Path(stack_env["SLUICE_STACK_DIR"])
    state = json.loads((directory / "state.json").read_text())
    running = state["processes"]["kube-apiserver"]["pid"]
    argv = Path(f"/proc/{running}/cmdline").read_bytes().decode().rstrip("\0").split("\0")
    port = free_port()
    argv = [f"--secure-port={port}" if arg.startswith("--secure-port=") else arg for arg in argv]
    log_path = ARTIFACTS / "kube-apiserver-replica.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pki = directory / "pki"
    admin = KeyPair(pki / "admin.crt", pki / "admin.key")
    kubeconfig = directory / "kubeconfig-replica"
    server = f"https://127.0.0.1:{port}"
    servers = {"local": server}
    write_kubeconfig(kubeconfig, ca_cert=pki / "ca.crt", user=admin, servers=servers, current="local")
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    try:
        api = Api(server, ca_cert=pki / "ca.crt", client=admin)

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the replica kube-apiserver exited; see {log_path}")
            with contextlib.suppress(OSError):
                return api.status("/readyz") == 200
            return False

        poll(ready, timeout=120, interval=0.5, what="the replica kube-apiserver to be ready")
        yield kubeconfig
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
