"""Cluster: the only package that talks to the ``kubernetes`` package. Clients, reads and applies."""

from gitops.cluster import lazy_kubernetes

# Before the first import of ``kubernetes``: its 700-odd models load only when used (30 MiB a process).
lazy_kubernetes.install()

from gitops.cluster.client import (  # noqa: E402 - after the lazy import is installed
    UNAVAILABLE,
    Cluster,
    ClusterRefused,
    FieldConflictError,
    NotFoundError,
    ReadForbidden,
    ServerVersion,
)
from gitops.cluster.clients import (  # noqa: E402 - as above
    UnknownClusterError,
    clients,
    default_cluster_name,
    get_cluster,
)

__all__ = [
    "UNAVAILABLE",
    "Cluster",
    "ClusterRefused",
    "FieldConflictError",
    "NotFoundError",
    "ReadForbidden",
    "ServerVersion",
    "UnknownClusterError",
    "clients",
    "default_cluster_name",
    "get_cluster",
]
