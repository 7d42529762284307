"""Cluster: the only package that talks to the ``kubernetes`` package. Clients, reads and applies."""

from gitops.cluster.client import Cluster, FieldConflictError, NotFoundError, ServerVersion
from gitops.cluster.clients import get_cluster

__all__ = ["Cluster", "FieldConflictError", "NotFoundError", "ServerVersion", "get_cluster"]
