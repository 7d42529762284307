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
RELIST = "RELIST"


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
    wave = _WaveWatch(cluster, workloads, deadline=time.monotonic() + seconds)
    changed(dict(wave.states))
    while (verdict := _verdict(wave.states)) is None:
        if wave.remaining() <= 0 or stop():
            return Verdict(GateResult.WAITING, wave.states)
        if wave.next_event():
            changed(dict(wave.states))
    return Verdict(verdict, wave.states)


class _WaveWatch:
    """The wave's workloads, listed once per (kind, namespace) and watched from there."""

    def __init__(self, cluster: Cluster, workloads: Iterable[WorkloadKey], *, deadline: float) -> None:
        self.cluster, self.deadline = cluster, deadline
        self.wanted = set(workloads)
        self.groups: dict[tuple[str, str], set[str]] = {}
        for kind, namespace, name in self.wanted:
            self.groups.setdefault((kind, namespace), set()).add(name)
        self.states: dict[WorkloadKey, WorkloadHealth] = {}
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        for group in self.groups:
            self._list_and_watch(group)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def next_event(self) -> bool:
        """Takes in the next change (waiting a second at most); True when a state may have changed."""
        try:
            event_type, payload = self.events.get(timeout=min(1.0, max(0.0, self.remaining())))
        except queue.Empty:
            return False
        if event_type == RELIST:  # a watch broke off: list that group again and watch on
            self._list_and_watch(payload)
            return True
        key = (payload.get("kind", ""), payload["metadata"]["namespace"], payload["metadata"]["name"])
        if key not in self.wanted:
            return False
        self.states[key] = _judge(None if event_type == "DELETED" else payload)
        return True

    def _list_and_watch(self, group: tuple[str, str]) -> None:
        kind, namespace = group
        items, version = self.cluster.list_workloads(kind, namespace)
        present = {item["metadata"]["name"]: item for item in items}
        for name in self.groups[group]:
            self.states[(kind, namespace, name)] = _judge(present.get(name))
        if (remaining := self.remaining()) > 0:
            _watch_in_background(self.cluster, group, version, remaining, self.events)


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
    events: queue.Queue[tuple[str, Any]],
) -> None:
    """Feeds the changes of one (kind, namespace) into ``events`` until the watch times out.

    A watch that breaks off early (the connection drops, ``410 Gone``) asks for a
    relist, so no change is missed. The thread outlives an early return by at most
    ``seconds``: a watch ends when the server closes it.
    """
    kind, namespace = group
    started = time.monotonic()

    def run() -> None:
        try:
            for event_type, obj in cluster.watch_workloads(
                kind, namespace, resource_version=version, timeout_seconds=max(1, int(seconds) + 1)
            ):
                if event_type in ("ADDED", "MODIFIED", "DELETED"):
                    events.put((event_type, obj))
        except TemporaryError:
            events.put((RELIST, group))
            return
        if time.monotonic() - started < seconds:
            events.put((RELIST, group))  # the server ended it before its time

    threading.Thread(target=run, name=f"watch-{kind}-{namespace}", daemon=True).start()
