"""Cluster: the only package that talks to the ``kubernetes`` package. Clients, reads and applies."""

from gitops.cluster.client import (
    UNAVAILABLE,
    Cluster,
    ClusterRefused,
    FieldConflictError,
    NotFoundError,
    ServerVersion,
)
from gitops.cluster.clients import UnknownClusterError, clients, default_cluster_name, get_cluster

__all__ = [
    "UNAVAILABLE",
    "Cluster",
    "ClusterRefused",
    "FieldConflictError",
    "NotFoundError",
    "ServerVersion",
    "UnknownClusterError",
    "clients",
    "default_cluster_name",
    "get_cluster",
]
