"""A step's health gate: wait, through watches, until the workloads of a wave report their rollout done.

The gate opens within a second of the last workload becoming healthy: each
(cluster, kind, namespace) is listed once and then watched, and every event is
judged as it arrives. It waits at most one slice per pass (the source's lock is
held meanwhile); a wave that needs longer is waited for again by the next pass,
until the rollout's deadline. An abort stops the wait at once. A cluster that
does not answer leaves its workloads progressing ("cluster unreachable") and is
listed again a little later, until the deadline.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gitops.cluster import Cluster
from gitops.consumers.workloads import (
    Health,
    WorkloadHealth,
    health_of,
    referred_deployment,
    restart_holds,
)
from gitops.errors import GitopsError

WorkloadKey = tuple[str, str, str, str]  # (cluster, kind, namespace, name)
Group = tuple[str, str, str]  # (cluster, kind, namespace)
RELIST = "RELIST"
UNREACHABLE_RELIST_SECONDS = 2.0


class GateResult(StrEnum):
    OPEN = "open"  # every workload is healthy
    FAILED = "failed"  # one reported failure (ProgressDeadlineExceeded)
    WAITING = "waiting"  # not yet: the slice ended, or someone asked to stop


@dataclass(frozen=True)
class Verdict:
    result: GateResult
    states: dict[WorkloadKey, WorkloadHealth]
    default_cluster: str = ""

    @property
    def failures(self) -> list[str]:
        home = self.default_cluster
        return [
            f"{kind.lower()}/{name} in {place(cluster, namespace, home)} failed: {state.detail}"
            for (cluster, kind, namespace, name), state in sorted(self.states.items())
            if state.health is Health.FAILED
        ]


def place(cluster: str, namespace: str, default_cluster: str) -> str:
    """``namespace`` in the default cluster, ``cluster/namespace`` in another."""
    return namespace if cluster == default_cluster else f"{cluster}/{namespace}"


def gate_wait(
    connect: Callable[[str], Cluster],
    workloads: Iterable[WorkloadKey],
    *,
    seconds: float,
    stop: Callable[[], bool] = lambda: False,
    changed: Callable[[dict[WorkloadKey, WorkloadHealth]], None] = lambda states: None,
    default_cluster: str = "",
    undone_if: Mapping[WorkloadKey, Mapping[str, Any]] | None = None,
) -> Verdict:
    """Waits up to ``seconds`` for every workload to be healthy; ``changed`` hears each new state.

    ``connect`` gives the client of a cluster by name. ``undone_if``: the workloads the step restarted,
    each with the stamp it carried before (``{"configHash", "commit"}``): carrying that stamp again, it
    is not healthy, its restart undone.
    """
    wave = _WaveWatch(connect, workloads, deadline=time.monotonic() + seconds, undone_if=undone_if)
    changed(dict(wave.states))
    while (verdict := _verdict(wave.states)) is None:
        if stop():
            return Verdict(GateResult.WAITING, wave.states, default_cluster)
        if wave.remaining() <= 0:
            if seconds > 0:  # listed once more: a change a broken watch missed, its relist waiting, counts
                wave.list_all()
                changed(dict(wave.states))
            return Verdict(_verdict(wave.states) or GateResult.WAITING, wave.states, default_cluster)
        if wave.next_event():
            changed(dict(wave.states))
    return Verdict(verdict, wave.states, default_cluster)


class _WaveWatch:
    """The wave's workloads, listed once per (cluster, kind, namespace) and watched from there."""

    def __init__(
        self,
        connect: Callable[[str], Cluster],
        workloads: Iterable[WorkloadKey],
        *,
        deadline: float,
        undone_if: Mapping[WorkloadKey, Mapping[str, Any]] | None = None,
    ) -> None:
        self.connect, self.deadline = connect, deadline
        self.undone_if = dict(undone_if or {})
        self.wanted = set(workloads)
        self.groups: dict[Group, set[str]] = {}
        for cluster, kind, namespace, name in self.wanted:
            self.groups.setdefault((cluster, kind, namespace), set()).add(name)
        self.states: dict[WorkloadKey, WorkloadHealth] = {}
        # A Rollout that refers to a Deployment is judged against the Deployment's generation: each
        # Deployment's as last seen, and each such Rollout as last seen, judged again when it changes.
        self.generations: dict[WorkloadKey, int] = {}
        self.referring: dict[WorkloadKey, dict[str, Any]] = {}
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.list_all()

    def list_all(self) -> None:
        """Lists every group, and watches it from there while time is left."""
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
        if event_type == RELIST:  # a watch broke off, or the cluster did not answer: list again
            self._list_and_watch(payload)
            return True
        cluster, obj = payload
        key = (cluster, obj.get("kind", ""), obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key not in self.wanted:
            return False
        self._take_in(key, None if event_type == "DELETED" else obj)
        return True

    def _take_in(self, key: WorkloadKey, obj: dict[str, Any] | None) -> None:
        """Judges a workload as it is now (None: gone), and the Rollouts that refer to it with it."""
        cluster, kind, namespace, name = key
        if obj is not None and kind == "Deployment":
            self.generations[key] = int((obj.get("metadata") or {}).get("generation") or 0)
        if obj is not None and referred_deployment(obj):
            self.referring[key] = obj
        else:
            self.referring.pop(key, None)  # gone: its "deleted" must not be judged over again
        self.states[key] = self._judge(key, obj)
        if kind != "Deployment":
            return
        for referring_key, referring in self.referring.items():
            referring_cluster, _, referring_namespace, _ = referring_key
            if (referring_cluster, referring_namespace, referred_deployment(referring)) == (
                cluster,
                namespace,
                name,
            ):
                self.states[referring_key] = self._judge(referring_key, referring)

    def _judge(self, key: WorkloadKey, obj: dict[str, Any] | None) -> WorkloadHealth:
        if obj is None:
            # Waited for, not failed at once: an Argo CD Replace or `helm --force` sync, or a StatefulSet
            # deleted with --cascade=orphan to change its claims, creates it again a moment later, and it
            # is judged then (a deletion failed the wave and rolled it back before 2026-12-07). One that
            # stays gone fails at the rollout's health deadline, saying so.
            return WorkloadHealth(Health.PROGRESSING, "deleted; waiting for it to be created again")
        cluster, _, namespace, _ = key
        if self._undone(key, obj):
            # Until 2026-12-07 such pods were judged healthy. Another source's newer stamp is not this.
            detail = "its restart was undone: it carries the stamp it had before the restart again"
            return WorkloadHealth(Health.PROGRESSING, detail)
        referred = self.generations.get((cluster, "Deployment", namespace, referred_deployment(obj)))
        return health_of(obj, referred)

    def _undone(self, key: WorkloadKey, obj: dict[str, Any]) -> bool:
        """Whether the workload carries again the stamp it had before the step restarted it: its template
        put back (an operator that owns it), or it created again from a manifest without the step's
        stamp (a StatefulSet deleted with --cascade=orphan adopts its old pods): either way its pods may
        be from before the change, which nothing on the object tells apart."""
        before = self.undone_if.get(key)
        return before is not None and restart_holds(obj, key[0], {"configHash": "", "commit": "", **before})

    def _list_and_watch(self, group: Group) -> None:
        cluster, kind, namespace = group
        try:
            client = self.connect(cluster)
            items, version = client.list_workloads(kind, namespace)
        except GitopsError as exc:
            detail = f"cluster {cluster} unreachable: {exc}"
            for name in self.groups[group]:
                self.states[(cluster, kind, namespace, name)] = WorkloadHealth(Health.PROGRESSING, detail)
                # Its last object is stale now: a change of its Deployment must not judge it healthy again.
                self.referring.pop((cluster, kind, namespace, name), None)
            if self.remaining() > UNREACHABLE_RELIST_SECONDS:
                timer = threading.Timer(UNREACHABLE_RELIST_SECONDS, self.events.put, [(RELIST, group)])
                timer.daemon = True
                timer.start()
            return
        present = {item["metadata"]["name"]: item for item in items}
        for name in self.groups[group]:
            self._take_in((cluster, kind, namespace, name), present.get(name))
        if (remaining := self.remaining()) > 0:
            _watch_in_background(client, group, version, remaining, self.events)


def _verdict(states: dict[WorkloadKey, WorkloadHealth]) -> GateResult | None:
    if any(state.health is Health.FAILED for state in states.values()):
        return GateResult.FAILED
    if all(state.health is Health.HEALTHY for state in states.values()):
        return GateResult.OPEN
    return None


def _watch_in_background(
    client: Cluster,
    group: Group,
    version: str,
    seconds: float,
    events: queue.Queue[tuple[str, Any]],
) -> None:
    """Feeds the changes of one (kind, namespace) into ``events`` until the watch times out.

    A watch that breaks off early (the connection drops, ``410 Gone``) asks for a
    relist, so no change is missed. The thread outlives an early return by at most
    ``seconds``: a watch ends when the server closes it.
    """
    cluster, kind, namespace = group
    started = time.monotonic()

    def relist() -> None:
        # A watch refused or cut short at once (RBAC that grants list but not watch, a proxy that closes
        # streams) was listed again at once, in a loop, for the whole healthTimeout: thousands of LISTs
        # a second. One that ended that soon waits as an unreachable cluster's does (the gate lists once
        # more at its deadline: what the broken watch missed is not missed by the verdict).
        if time.monotonic() - started >= UNREACHABLE_RELIST_SECONDS:
            events.put((RELIST, group))
            return
        timer = threading.Timer(UNREACHABLE_RELIST_SECONDS, events.put, [(RELIST, group)])
        timer.daemon = True
        timer.start()

    def run() -> None:
        try:
            for event_type, obj in client.watch_workloads(
                kind, namespace, resource_version=version, timeout_seconds=max(1, int(seconds) + 1)
            ):
                if event_type in ("ADDED", "MODIFIED", "DELETED"):
                    events.put((event_type, (cluster, obj)))
        except GitopsError:
            relist()
            return
        if time.monotonic() - started < seconds:
            relist()  # the server ended it before its time

    threading.Thread(target=run, name=f"watch-{cluster}-{kind}-{namespace}", daemon=True).start()
