"""Clusters for the tests: a member cluster registered through a kubeconfig a test can silence."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import yaml


def closed_port() -> int:
    """A loopback port nothing listens on: connections to it are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class FlakyKubeconfig:
    """A kubeconfig file for one member cluster that a test points at its real server or at a closed port."""

    def __init__(self, path: Path, stack_kubeconfig: str, context: str) -> None:
        self.path = path
        config = yaml.safe_load(Path(stack_kubeconfig).read_text())
        named = next(entry["context"] for entry in config["contexts"] if entry["name"] == context)
        self.cluster = next(
            entry["cluster"] for entry in config["clusters"] if entry["name"] == named["cluster"]
        )
        self.user = next(entry for entry in config["users"] if entry["name"] == named["user"])
        self.real_server = self.cluster["server"]
        self.answer()

    def _write(self, server: str, user: dict | None = None) -> None:
        user = user or self.user
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "flaky", "cluster": {**self.cluster, "server": server}}],
            "users": [user],
            "contexts": [{"name": "flaky", "context": {"cluster": "flaky", "user": user["name"]}}],
            "current-context": "flaky",
        }
        self.path.write_text(yaml.safe_dump(config))
        # A new change time tells every process's client registry to connect again.
        stamp = time.time_ns()
        os.utime(self.path, ns=(stamp, stamp))

    def answer(self) -> None:
        self._write(self.real_server)

    def with_token(self, token: str) -> None:
        """The real server, reached with a bearer token in place of the stack's credentials."""
        self._write(self.real_server, {"name": "token", "user": {"token": token}})

    def point_at(self, server: str) -> None:
        self._write(server)

    def silence(self) -> None:
        self._write(f"https://127.0.0.1:{closed_port()}")

    def hang(self, server: HungServer) -> None:
        """Points at a server that takes connections and never answers: every call waits for its timeout."""
        self._write(f"https://127.0.0.1:{server.port}")


class HungServer:
    """A listening socket nobody serves: connections complete, requests are never answered."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.port = int(self.socket.getsockname()[1])

    def close(self) -> None:
        self.socket.close()
