"""Workloads on the embedded stack, through the official kubernetes client.

The default cluster has a real kube-scheduler and kube-controller-manager, and kwok
simulates its nodes: a Deployment here rolls out as on a real cluster, its pods
scheduled, "running" and Ready, or Pending when no node can take them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubernetes import client

from tests.workers import poll

# kwok never pulls an image; the name only has to be valid.
IMAGE = "registry.example.com/sluice/consumer:1"


def consumer_deployment(
    name: str,
    configmap: str,
    *,
    replicas: int = 2,
    progress_deadline_seconds: int | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Deployment whose container reads every key of ``configmap`` through ``envFrom``."""
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {
                "containers": [
                    {"name": "app", "image": IMAGE, "envFrom": [{"configMapRef": {"name": configmap}}]}
                ],
                # Pods of a deleted ReplicaSet go at once instead of after 30 s.
                "terminationGracePeriodSeconds": 0,
            },
        },
    }
    if progress_deadline_seconds is not None:
        spec["progressDeadlineSeconds"] = progress_deadline_seconds
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": spec,
    }


@dataclass(frozen=True)
class RolloutState:
    """A Deployment's rollout as its controller reports it."""

    complete: bool
    failure: str | None  # the Progressing condition's reason when it is False, e.g. ProgressDeadlineExceeded
    summary: str


def rollout_state(deployment: client.V1Deployment) -> RolloutState:
    status = deployment.status
    wanted = deployment.spec.replicas
    updated, available = status.updated_replicas or 0, status.available_replicas or 0
    complete = (
        (status.observed_generation or 0) >= deployment.metadata.generation
        and updated == available == wanted
        and (status.replicas or 0) == wanted
    )
    progressing = next((c for c in status.conditions or [] if c.type == "Progressing"), None)
    failure = progressing.reason if progressing is not None and progressing.status == "False" else None
    return RolloutState(complete, failure, f"{available}/{wanted} available, {updated} updated")


def wait_for_rollout(
    apps: client.AppsV1Api,
    namespace: str,
    name: str,
    *,
    timeout: float = 60,
    after_a_missed_deadline: bool = False,
) -> client.V1Deployment:
    """Polls until the Deployment's rollout is complete; fails at once if its controller gave up.

    ``after_a_missed_deadline``: the Deployment missed its progress deadline and its template was
    then changed back (a rollback). Its controller keeps saying ProgressDeadlineExceeded, for the new
    generation too, until the rollout completes or makes progress (``DeploymentTimedOut`` in
    kube-controller-manager), so only completion ends the wait."""

    def complete() -> client.V1Deployment | None:
        deployment = apps.read_namespaced_deployment(name, namespace)
        state = rollout_state(deployment)
        if not after_a_missed_deadline:
            assert state.failure is None, f"deployment {namespace}/{name} failed: {state.failure}"
        return deployment if state.complete else None

    return poll(complete, timeout=timeout, interval=0.2, what=f"deployment {namespace}/{name} to roll out")


def wait_for_failure(
    apps: client.AppsV1Api, namespace: str, name: str, *, timeout: float = 60
) -> RolloutState:
    def failed() -> RolloutState | None:
        state = rollout_state(apps.read_namespaced_deployment(name, namespace))
        return state if state.failure else None

    return poll(failed, timeout=timeout, interval=0.2, what=f"deployment {namespace}/{name} to fail")


def simulated_nodes(core: client.CoreV1Api) -> list[client.V1Node]:
    return list(core.list_node(label_selector="type=kwok").items)


def set_unschedulable(
    core: client.CoreV1Api, unschedulable: bool, *, at_session_start: bool = False
) -> list[str]:
    """Cordons (or uncordons) every simulated node, as `kubectl cordon` does; returns their names.

    Every session on the stack sees the nodes: under ``pytest -n 2`` only an exclusive test may,
    or a session's start, which happens inside a test holding the stack shared (so while no
    exclusive test of the other session runs)."""
    from tests.parallel import require_alone

    if not at_session_start:
        require_alone("cordoning the nodes")
    names = [node.metadata.name for node in simulated_nodes(core)]
    for name in names:
        core.patch_node(name, {"spec": {"unschedulable": unschedulable}})
    return names
