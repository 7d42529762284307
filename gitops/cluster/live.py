"""What the clusters hold now: one LIST per (cluster, namespace), several at a time, each cluster on its own.

A cluster that does not answer, answers with errors or refuses Sluice's
credentials is reported as unreachable, with why, and its namespaces are left
out; the other clusters' lists are not held up by it. Every list has its
connect and read timeouts, and the whole listing a deadline
(``SLUICE_CLUSTER_LIST_DEADLINE``): a cluster whose lists are not all back by
then is unreachable for this pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from gitops.cluster.client import Cluster
from gitops.cluster.clients import clients, get_cluster
from gitops.errors import GitopsError, TemporaryError

LIST_CONCURRENCY = 8
DEFAULT_LIST_DEADLINE_SECONDS = 60.0
Target = tuple[str, str]  # (cluster, namespace)


@dataclass
class LiveState:
    """The lists that came back, keyed by (cluster, namespace), and each cluster that could not be read."""

    objects: dict[Target, list[dict[str, Any]]] = field(default_factory=dict)
    unreachable: dict[str, GitopsError] = field(default_factory=dict)

    def reasons(self) -> dict[str, str]:
        return {cluster: str(error) for cluster, error in self.unreachable.items()}

    def index(self) -> dict[tuple[str, str, str], dict[str, Any]]:
        """(cluster, namespace, name) -> object."""
        return {
            (cluster, namespace, obj["metadata"]["name"]): obj
            for (cluster, namespace), objects in self.objects.items()
            for obj in objects
        }


def live_configmaps(
    targets: Iterable[Target], *, connect: Callable[[str], Cluster] = get_cluster
) -> LiveState:
    """Every ConfigMap of each target namespace; clusters that cannot be read are reported, not raised."""
    by_cluster: dict[str, list[str]] = {}
    for cluster, namespace in sorted(set(targets)):
        by_cluster.setdefault(cluster, []).append(namespace)
    state = LiveState()
    remembered: set[str] = set()
    deadline = float(getattr(settings, "SLUICE_CLUSTER_LIST_DEADLINE", DEFAULT_LIST_DEADLINE_SECONDS))
    started = time.monotonic()
    pools: list[ThreadPoolExecutor] = []
    futures: dict[Target, Future[list[dict[str, Any]]]] = {}
    finished: set[Future[list[dict[str, Any]]]] = set()
    try:
        for cluster, namespaces in by_cluster.items():
            try:
                client = connect(cluster)
            except GitopsError as exc:  # not registered any more, or its kubeconfig cannot be read
                state.unreachable[cluster] = exc
                continue
            if (recent := clients.recently_unreachable(cluster)) is not None:
                state.unreachable[cluster] = recent
                remembered.add(cluster)
                continue
            # A pool per cluster: a silent cluster's lists never queue up in front of another's.
            pool = ThreadPoolExecutor(max_workers=min(LIST_CONCURRENCY, len(namespaces)))
            pools.append(pool)
            for namespace in namespaces:
                futures[(cluster, namespace)] = pool.submit(client.list_configmaps, namespace)
        if futures:
            remaining = max(0.0, deadline - (time.monotonic() - started))
            finished = wait_for(futures.values(), timeout=remaining).done
    finally:
        # Never wait for a list past the deadline: its thread ends with its own read timeout.
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)
    for target, future in futures.items():
        _collect(state, target, future if future in finished else None, deadline)
    for target in [target for target in state.objects if target[0] in state.unreachable]:
        del state.objects[target]
    for cluster, error in state.unreachable.items():
        if cluster not in remembered:
            clients.mark_unreachable(cluster, error)
    return state


def _collect(
    state: LiveState, target: Target, future: Future[list[dict[str, Any]]] | None, deadline: float
) -> None:
    """One list's result into ``state``; ``future`` is None when it did not finish in time."""
    cluster, _ = target
    if cluster in state.unreachable:
        return
    if future is None:
        message = f"cluster {cluster} did not list its namespaces within {deadline:.0f}s"
        state.unreachable[cluster] = TemporaryError(message)
    elif (error := future.exception()) is not None:
        if not isinstance(error, GitopsError):
            raise error
        state.unreachable[cluster] = error
    else:
        state.objects[target] = future.result()
