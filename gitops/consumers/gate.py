"""A step's health gate: wait, through watches, until the workloads of a wave report their rollout done.

The gate opens within a second of the last workload becoming healthy: each
(kind, namespace) is listed once and then watched, and every event is judged
as it arrives. It waits at most one slice per pass (the source's lock is held
meanwhile); a wave that needs longer is waited for again by the next pass,
until the rollout's deadline. An abort stops the wait at once.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gitops.cluster import Cluster
from gitops.consumers.workloads import Health, WorkloadHealth, health_of
from gitops.errors import TemporaryError

WorkloadKey = tuple[str, str, str]  # (kind, namespace, name)


class GateResult(StrEnum):
    OPEN = "open"  # every workload is healthy
    FAILED = "failed"  # one reported failure (ProgressDeadlineExceeded) or disappeared
    WAITING = "waiting"  # not yet: the slice ended, or someone asked to stop


@dataclass(frozen=True)
class Verdict:
    result: GateResult
    states: dict[WorkloadKey, WorkloadHealth]

    @property
    def failures(self) -> list[str]:
        return [
            f"{kind.lower()}/{name} in {namespace} failed: {state.detail}"
            for (kind, namespace, name), state in sorted(self.states.items())
            if state.health is Health.FAILED
        ]


def gate_wait(
    cluster: Cluster,
    workloads: Iterable[WorkloadKey],
    *,
    seconds: float,
    stop: Callable[[], bool] = lambda: False,
    changed: Callable[[dict[WorkloadKey, WorkloadHealth]], None] = lambda states: None,
) -> Verdict:
    """Waits up to ``seconds`` for every workload to be healthy; ``changed`` hears each new state."""
    wanted = set(workloads)
    groups: dict[tuple[str, str], set[str]] = {}
    for kind, namespace, name in wanted:
        groups.setdefault((kind, namespace), set()).add(name)
    states: dict[WorkloadKey, WorkloadHealth] = {}
    versions: dict[tuple[str, str], str] = {}
    for (kind, namespace), names in groups.items():
        items, versions[(kind, namespace)] = cluster.list_workloads(kind, namespace)
        present = {item["metadata"]["name"]: item for item in items}
        for name in names:
            states[(kind, namespace, name)] = _judge(present.get(name))
    changed(dict(states))
    deadline = time.monotonic() + seconds
    events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    for group, version in versions.items():
        _watch_in_background(cluster, group, version, seconds, events)
    while (verdict := _verdict(states)) is None:
        if time.monotonic() >= deadline or stop():
            return Verdict(GateResult.WAITING, states)
        try:
            kind_and_type, obj = events.get(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
        except queue.Empty:
            continue
        key = (obj.get("kind", ""), obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key in wanted:
            states[key] = _judge(None if kind_and_type == "DELETED" else obj)
            changed(dict(states))
    return Verdict(verdict, states)


def _judge(obj: dict[str, Any] | None) -> WorkloadHealth:
    return WorkloadHealth(Health.FAILED, "deleted") if obj is None else health_of(obj)


def _verdict(states: dict[WorkloadKey, WorkloadHealth]) -> GateResult | None:
    if any(state.health is Health.FAILED for state in states.values()):
        return GateResult.FAILED
    if all(state.health is Health.HEALTHY for state in states.values()):
        return GateResult.OPEN
    return None


def _watch_in_background(
    cluster: Cluster,
    group: tuple[str, str],
    version: str,
    seconds: float,
    events: queue.Queue[tuple[str, dict[str, Any]]],
) -> None:
    """Feeds the changes of one (kind, namespace) into ``events`` until the watch times out.

    The thread outlives an early return by at most ``seconds``: a watch ends when the server closes it.
    """
    kind, namespace = group

    def run() -> None:
        try:
            for event_type, obj in cluster.watch_workloads(
                kind, namespace, resource_version=version, timeout_seconds=max(1, int(seconds) + 1)
            ):
                if event_type in ("ADDED", "MODIFIED", "DELETED"):
                    events.put((event_type, obj))
        except TemporaryError:
            return  # the next pass lists again

    threading.Thread(target=run, name=f"watch-{kind}-{namespace}", daemon=True).start()
