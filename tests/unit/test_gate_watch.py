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


def referring_rollout(*, seen: int, reported: int, phase: str = "Healthy") -> dict:
    """A Rollout that runs Deployment web's template, as Argo reports it after reading generation ``seen``
    of web, its phase for generation ``reported``."""
    return {
        "kind": "Rollout",
        "metadata": {
            "name": "canary",
            "namespace": "a",
            "generation": 1,
            "annotations": {"rollout.argoproj.io/workload-generation": str(seen)},
        },
        "spec": {
            "replicas": 2,
            "workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        },
        "status": {
            "observedGeneration": "1",
            "workloadObservedGeneration": str(reported),
            "phase": phase,
            "availableReplicas": 2,
        },
    }


class WithAReferringRollout:
    """Deployment web at generation 3 (just stamped; Argo scaled it to 0, so it is available at once), and
    a Rollout that refers to it, listed in the order given; the watches bring ``events``, one by one."""

    def __init__(self, rollout: dict, events: list[dict] | None = None) -> None:
        self.rollout, self.events = rollout, events or []

    def list_workloads(self, kind: str, namespace: str):
        if kind == "Rollout":
            return [self.rollout], "1"
        deployment = {
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "a", "generation": 3},
            "spec": {"replicas": 0},
            "status": {"observedGeneration": 3},
        }
        return [deployment], "1"

    def watch_workloads(self, kind: str, namespace: str, *, resource_version: str, timeout_seconds: int):
        if kind == "Rollout":
            yield from (("MODIFIED", event) for event in self.events)


WAVE = [("default", "Deployment", "a", "web"), ("default", "Rollout", "a", "canary")]


def test_a_rollout_that_refers_to_a_just_stamped_deployment_waits_until_argo_has_taken_in_its_generation():
    """Right after the stamp Argo still reports Healthy for the Deployment's older template: before, the
    gate would open on it while Argo's canary had not even started."""
    stale = WithAReferringRollout(referring_rollout(seen=2, reported=2))
    verdict = gate_wait(lambda name: stale, WAVE, seconds=1.5)
    assert verdict.result is GateResult.WAITING
    state = verdict.states[("default", "Rollout", "a", "canary")]
    assert state.detail == "waiting for Argo Rollouts to take in its Deployment's generation 3"

    taken_in = WithAReferringRollout(
        referring_rollout(seen=2, reported=2),
        events=[referring_rollout(seen=3, reported=2), referring_rollout(seen=3, reported=3)],
    )
    assert gate_wait(lambda name: taken_in, WAVE, seconds=10).result is GateResult.OPEN

    paused = WithAReferringRollout(referring_rollout(seen=3, reported=3, phase="Paused"))
    assert gate_wait(lambda name: paused, WAVE, seconds=1.5).result is GateResult.WAITING


HEALTHY = {
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "a", "generation": 1},
    "spec": {"replicas": 1},
    "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
}


class DeletedThenCreatedAgain:
    """Deployment web is gone when the gate lists it (an Argo CD Replace or `helm --force` sync, a
    StatefulSet deleted with --cascade=orphan to change its claims), and comes back, healthy."""

    def list_workloads(self, kind: str, namespace: str):
        return [], "1"

    def watch_workloads(self, kind: str, namespace: str, *, resource_version: str, timeout_seconds: int):
        yield "ADDED", dict(HEALTHY)


def test_a_consumer_deleted_and_created_again_is_waited_for_not_failed_at_once():
    """A deletion failed the wave at once and rolled every ConfigMap back, though the workload came back
    healthy a moment later (before 2026-12-07). Gone, it is progressing until the rollout's deadline."""
    gone = DeletedThenCreatedAgain()

    verdict = gate_wait(lambda name: gone, [("default", "Deployment", "a", "web")], seconds=5)

    assert verdict.result is GateResult.OPEN, verdict.states


def test_a_consumer_that_stays_deleted_is_left_waiting_with_why():
    class StaysDeleted(DeletedThenCreatedAgain):
        def watch_workloads(self, kind: str, namespace: str, *, resource_version: str, timeout_seconds: int):
            return iter(())

    verdict = gate_wait(lambda name: StaysDeleted(), [("default", "Deployment", "a", "web")], seconds=1.2)

    assert verdict.result is GateResult.WAITING
    assert verdict.states[("default", "Deployment", "a", "web")].detail.startswith("deleted")


def stamped(config_hash: str, uid: str = "uid-1") -> dict:
    deployment = {**HEALTHY, "spec": {**HEALTHY["spec"], "template": {"metadata": {"annotations": {}}}}}
    deployment["metadata"] = {**HEALTHY["metadata"], "uid": uid}
    if config_hash:
        annotations = {"sluice.dev/config-hash": config_hash, "sluice.dev/commit": "c" * 40}
        deployment["spec"]["template"]["metadata"]["annotations"] = annotations
    return deployment


class Listed:
    def __init__(self, obj: dict) -> None:
        self.obj = obj

    def list_workloads(self, kind: str, namespace: str):
        return [self.obj], "1"

    def watch_workloads(self, kind: str, namespace: str, *, resource_version: str, timeout_seconds: int):
        return iter(())


def test_a_restart_someone_undid_is_not_healthy_but_another_sources_newer_stamp_is():
    """An operator put the template back as it was before the restart (no stamp): the Deployment rolled
    back to pods started before the change, and the gate judged them healthy (before 2026-12-07). Created
    again without the stamp (a StatefulSet re-created with --cascade=orphan adopts its old pods), it is
    not told apart. Another source's newer stamp is judged by its status."""
    web = ("default", "Deployment", "a", "web")
    before = {"configHash": "", "commit": ""}  # never stamped before this step's restart

    def verdict(obj: dict, seconds: float = 1.2):
        return gate_wait(lambda name: Listed(obj), [web], seconds=seconds, undone_if={web: before})

    for undone in (verdict(stamped("")), verdict(stamped("", uid="uid-2"))):
        assert undone.result is GateResult.WAITING
        assert (
            undone.states[web].detail
            == "its restart was undone: it carries the stamp it had before the restart again"
        )
    assert verdict(stamped("h2"), seconds=5).result is GateResult.OPEN, "the step's own stamp"
    assert verdict(stamped("hB"), seconds=5).result is GateResult.OPEN, "another source's, newer"
