"""What the cluster holds now: one LIST per namespace, several namespaces at a time."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gitops.cluster.client import Cluster

LIST_CONCURRENCY = 8


def live_configmaps(cluster: Cluster, namespaces: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Every ConfigMap of each namespace, keyed by namespace."""
    ordered = sorted(set(namespaces))
    if not ordered:
        return {}
    with ThreadPoolExecutor(max_workers=min(LIST_CONCURRENCY, len(ordered))) as pool:
        return dict(zip(ordered, pool.map(cluster.list_configmaps, ordered), strict=True))


def live_index(live: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(namespace, name) -> object."""
    return {
        (namespace, obj["metadata"]["name"]): obj for namespace, objects in live.items() for obj in objects
    }
