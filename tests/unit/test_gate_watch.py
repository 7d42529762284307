"""The consumer gate's watches: one refused or cut short at once does not become a loop of LISTs."""

from __future__ import annotations

from gitops.cluster.client import ReadForbidden
from gitops.consumers.gate import GateResult, gate_wait

PROGRESSING = {
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "a", "generation": 2},
    "spec": {"replicas": 1},
    "status": {"observedGeneration": 1},
}


class ListsButMayNotWatch:
    """A cluster whose RBAC grants list and not watch (or a proxy that closes every stream at once)."""

    def __init__(self) -> None:
        self.lists = 0

    def list_workloads(self, kind: str, namespace: str):
        self.lists += 1
        return [dict(PROGRESSING)], "1"

    def watch_workloads(self, kind: str, namespace: str, *, resource_version: str, timeout_seconds: int):
        raise ReadForbidden("deployments.apps is forbidden: cannot watch")
        yield  # a generator, as the real one is


def test_a_watch_refused_at_once_is_listed_again_after_a_wait_not_in_a_loop():
    """Before, each refusal asked for a relist at once: 3,181 LISTs in 2 s, each with a new thread."""
    cluster = ListsButMayNotWatch()

    verdict = gate_wait(lambda name: cluster, [("default", "Deployment", "a", "web")], seconds=2.5)

    assert verdict.result is GateResult.WAITING
    assert 1 <= cluster.lists <= 3, cluster.lists
