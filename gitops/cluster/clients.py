"""Connections to clusters, made once per process and shared by its threads."""

from __future__ import annotations

import threading

from gitops.cluster.client import Cluster


class ClusterClients:
    """One client per process for the cluster ``KUBECONFIG`` names (or the in-cluster account)."""

    def __init__(self) -> None:
        self._default: Cluster | None = None
        self._lock = threading.Lock()

    def default(self) -> Cluster:
        with self._lock:
            if self._default is None:
                self._default = Cluster.from_settings()
            return self._default

    def forget(self) -> None:
        """Drops the clients; the next use connects again (tests point settings at a new stack)."""
        with self._lock:
            if self._default is not None:
                self._default.close()
            self._default = None


clients = ClusterClients()


def get_cluster() -> Cluster:
    return clients.default()
