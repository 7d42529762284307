"""A step that changes running software: restart the wave's consumers, then gate the step on their health.

After a ``setWeight`` step applied its ConfigMaps, the workloads that read a
changed one are found in the wave's namespaces. With ``consumers: restart``
each gets a new pod-template stamp when what it consumes changed (an intent,
like any change); with ``watch`` none is touched. Either way the step then
waits, through watches, until every one reports its rollout done. A workload
that fails (``ProgressDeadlineExceeded``) or a ``healthTimeout`` that passes
fails the step, and the rollout rolls back: ConfigMaps first, then stamps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import BooleanField
from django.db.models.expressions import RawSQL
from django.utils import timezone

from gitops import schedule
from gitops.cluster import ReadForbidden, get_cluster
from gitops.consumers.gate import GateResult, WorkloadKey, gate_wait, place
from gitops.consumers.wave import consumer_map, consumers_forbidden, restart_intents, wave_consumers
from gitops.consumers.workloads import Health, Workload, WorkloadHealth
from gitops.desired.policy import ConsumerMode
from gitops.errors import GitopsError
from gitops.failpoints import failpoint
from gitops.models import ApplyIntent, ManagedObject, Rollout, Source
from gitops.record.events import rollout_event
from gitops.rollout.rollback import rollout_rollback
from gitops.rollout.state import pending_writes_added, transition
from gitops.rollout.step import intents_execute
from gitops.vocabulary import SYSTEM_ACTOR, ChangeAction, RolloutEventKind, Waiting

DEFAULT_SLICE_SECONDS = 30


def _pods_read_the_change() -> RawSQL:
    """Whether an intent changed what pods read of its ConfigMap (env, envFrom and volumes): its data or
    binaryData, or the ConfigMap came or went. Labels, annotations or ``immutable`` alone restart and
    gate nobody, as Reloader's hash covers only these two too. Compared in PostgreSQL, so a step's
    contents are not loaded into the worker."""
    table = ApplyIntent._meta.db_table
    before, after = f'"{table}"."before"', f'"{table}"."after"'
    differs = " OR ".join(
        f"COALESCE({before} -> '{section}', '{{}}') IS DISTINCT FROM COALESCE({after} -> '{section}', '{{}}')"
        for section in ("data", "binaryData")
    )
    sql = f"({before} IS NULL OR {after} IS NULL OR {differs})"
    return RawSQL(sql, (), output_field=BooleanField())  # noqa: S611 - only constants: a table, two keys


@dataclass
class WaveRestart:
    """The consumers to gate on (as stored on the rollout), the clusters' refusals, and the clusters
    that could not be reached (the step waits for them)."""

    states: list[dict[str, object]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)


def wave_restart(rollout: Rollout, *, step_index: int, weight: int, actor: str) -> WaveRestart:
    """Finds the consumers of what this step changed and, with ``restart``, restarts them.

    What the step changed is read from its recorded intents, so a pass resumed
    after a crash restarts exactly what the crashed one did not.
    """
    if rollout.consumers == ConsumerMode.IGNORE:  # nothing to find: not even what the step changed
        return WaveRestart()
    changed = set(
        ApplyIntent.objects.filter(
            rollout=rollout, step_index=step_index, kind="ConfigMap", status=ApplyIntent.Status.DONE
        )
        .exclude(action=ChangeAction.ROLLBACK)
        .annotate(read_by_pods=_pods_read_the_change())
        .filter(read_by_pods=True)
        .values_list("cluster", "namespace", "name")
    )
    if not changed:
        return WaveRestart()
    result = WaveRestart()
    workloads = _consumers(changed, result)
    if result.unreachable or result.failures:
        return result
    restarted = _restart(rollout, workloads, result, step=(step_index, weight, actor))
    result.states = [
        {
            "cluster": w.cluster,
            "kind": w.kind,
            "namespace": w.namespace,
            "name": w.name,
            "restarted": w.cluster_key in restarted,
            "restartable": w.restartable,
            "refers_to": w.refers_to,
            "health": Health.PROGRESSING,
            "detail": "",
        }
        for w in workloads
    ]
    return result


def _restart(
    rollout: Rollout, workloads: list[Workload], result: WaveRestart, *, step: tuple[int, int, str]
) -> set[WorkloadKey]:
    """With ``consumers: restart``, restarts the workloads whose stamp is not what they read now; the
    step's restarted workloads (refusals and unreachable clusters into ``result``)."""
    if rollout.consumers != ConsumerMode.RESTART:
        return set()
    step_index, weight, actor = step
    rows = ManagedObject.objects.filter(source_id=rollout.source_id).values_list(
        "cluster", "namespace", "name", "content_hash"
    )
    hashes = {(cluster, namespace, name): content_hash for cluster, namespace, name, content_hash in rows}
    intents = restart_intents(rollout, workloads, hashes, step_index=step_index, weight=weight, actor=actor)
    with transaction.atomic():
        created = ApplyIntent.objects.bulk_create(intents)
    executed = intents_execute(created)
    failpoint("after-restart")
    # Restarts left pending there are finished before anything else of the source is written there.
    pending_writes_added(rollout.source_id, executed.unreachable_errors)
    result.failures, result.unreachable = executed.failures, executed.unreachable
    # Those an earlier pass of this step made count too: a pass resumed after a crash finds those
    # workloads stamped already, makes no intent for them, and said "0 restarted" before.
    return set(
        ApplyIntent.objects.filter(
            rollout=rollout,
            step_index=step_index,
            action=ChangeAction.RESTART,
            status=ApplyIntent.Status.DONE,
        ).values_list("cluster", "kind", "namespace", "name")
    )


def _consumers(changed: set[tuple[str, str, str]], result: WaveRestart) -> list[Workload]:
    """The consumers of the changed ConfigMaps, cluster by cluster; unreachable clusters into ``result``.

    A cluster whose RBAC does not let Sluice list workloads fails the step: its ConfigMaps changed,
    and neither a restart nor a health gate can follow. Waiting for the cluster, as for one that does
    not answer, held the new content there unchecked, with no ``healthTimeout``, until RBAC changed.
    """
    by_cluster: dict[str, set[tuple[str, str]]] = {}
    for cluster, namespace, name in changed:
        by_cluster.setdefault(cluster, set()).add((namespace, name))
    workloads: list[Workload] = []
    for cluster, keys in sorted(by_cluster.items()):
        try:
            workloads.extend(wave_consumers(get_cluster(cluster), keys))
        except ReadForbidden as exc:
            result.failures.append(consumers_forbidden(cluster, exc))
        except GitopsError as exc:
            result.unreachable[cluster] = str(exc)
    return workloads


def consumer_map_refresh(rollout: Rollout) -> None:
    """Records which workloads read which of the source's ConfigMaps, for the source page.

    A cluster that does not answer is left out of this look.
    """
    if rollout.consumers == ConsumerMode.IGNORE:
        return
    managed: dict[str, list[tuple[str, str]]] = {}
    rows = ManagedObject.objects.filter(source_id=rollout.source_id).values_list(
        "cluster", "namespace", "name"
    )
    for cluster, namespace, name in rows:
        managed.setdefault(cluster, []).append((namespace, name))
    mapping: dict[str, list[str]] = {}
    for cluster, keys in sorted(managed.items()):
        try:
            mapping.update(
                consumer_map(get_cluster(cluster), keys, default_cluster=settings.SLUICE_CLUSTER_NAME)
            )
        except GitopsError:
            continue
    Source.objects.filter(pk=rollout.source_id).update(consumer_map=mapping, consumer_map_at=timezone.now())


def wave_gate_close(rollout: Rollout, states: list[dict[str, object]], *, weight: int, actor: str) -> bool:
    """Holds the step at its consumers: the rollout waits for them, until its health deadline. False when
    someone moved the rollout meanwhile (an abort, a promote): nothing was held."""
    until = timezone.now() + timedelta(seconds=rollout.health_timeout_seconds)
    restarted = sum(1 for state in states if state["restarted"])
    message = f"waiting for {len(states)} consumer{'s' if len(states) != 1 else ''} to be healthy"
    if restarted:
        message += f" ({restarted} restarted)"
    with transaction.atomic():  # the gate with its timeline's line, or neither (``gates.pause``)
        if not transition(
            rollout,
            phase=Rollout.Phase.PAUSED,
            waiting_for=Waiting.CONSUMERS,
            pause_until=until,
            weight=weight,
            consumer_states=states,
            promoted_by="",
            message="",
        ):
            return False  # moved meanwhile (an abort, a promote): the next read goes on from there
        rollout_event(
            rollout, RolloutEventKind.CONSUMERS, actor=actor, message=message, data={"consumers": states}
        )
    return True


def wave_gate_pass(rollout: Rollout, refusals: list[str]) -> bool:
    """Waits for the wave's consumers (one slice); True when the gate opened and the rollout goes on.
    The restores its rollback (the consumers failed, or timed out) was refused go into ``refusals``."""
    keys = [_state_key(state) for state in rollout.consumer_states]
    remaining = (rollout.pause_until - timezone.now()).total_seconds() if rollout.pause_until else 0.0
    slice_seconds = float(getattr(settings, "SLUICE_CONSUMER_GATE_SLICE_SECONDS", DEFAULT_SLICE_SECONDS))
    verdict = gate_wait(
        get_cluster,
        keys,
        undone_if=_gate_expectations(rollout),
        seconds=max(0.0, min(slice_seconds, remaining)),
        stop=lambda: Rollout.objects.filter(pk=rollout.pk).exclude(abort_requested_by="").exists(),
        changed=lambda found: _store_states(rollout, found),
        default_cluster=settings.SLUICE_CLUSTER_NAME,
    )
    if verdict.result is GateResult.OPEN:
        details = ", ".join(
            f"{kind.lower()}/{name} {state.detail}"
            for (_, kind, _, name), state in sorted(verdict.states.items())
        )
        with transaction.atomic():
            moved = transition(
                rollout,
                phase=Rollout.Phase.PROGRESSING,
                waiting_for=Waiting.NOTHING,
                pause_until=None,
                step_index=rollout.step_index + 1,
            )
            if moved:
                rollout_event(rollout, RolloutEventKind.CONSUMERS, message=f"healthy: {details}")
        return moved
    if verdict.result is GateResult.FAILED or (rollout.pause_until and rollout.pause_until <= timezone.now()):
        reason = "; ".join(verdict.failures) or _timed_out(rollout, verdict.states)
        reason = f"consumers not healthy: {reason}"
        refusals.extend(
            rollout_rollback(rollout, actor=SYSTEM_ACTOR, reason=reason, phase=Rollout.Phase.FAILED)
        )
        return False
    schedule.source_sync_at(rollout.source_id, timezone.now())  # wait on in the next pass
    return False


def _gate_expectations(rollout: Rollout) -> dict[WorkloadKey, dict[str, Any]]:
    """Each workload the step restarted, with the stamp it carried before: found carrying that one
    again, its restart was undone (``gate_wait``'s ``undone_if``)."""
    stamped = ApplyIntent.objects.filter(
        rollout=rollout,
        step_index=rollout.step_index,
        action=ChangeAction.RESTART,
        status=ApplyIntent.Status.DONE,
    ).values_list("cluster", "kind", "namespace", "name", "before")
    return {
        (cluster, kind, namespace, name): before or {} for cluster, kind, namespace, name, before in stamped
    }


def _timed_out(rollout: Rollout, states: dict[WorkloadKey, WorkloadHealth]) -> str:
    home = settings.SLUICE_CLUSTER_NAME
    waiting = [
        f"{kind.lower()}/{name} in {place(cluster, namespace, home)} {state.detail}"
        for (cluster, kind, namespace, name), state in sorted(states.items())
        if state.health is not Health.HEALTHY
    ]
    return f"healthTimeout ({rollout.health_timeout_seconds}s) passed: " + "; ".join(waiting[:5])


def _store_states(rollout: Rollout, found: dict[WorkloadKey, WorkloadHealth]) -> None:
    states = [
        {**state, "health": found[key].health, "detail": found[key].detail}
        if (key := _state_key(state)) in found
        else state
        for state in rollout.consumer_states
    ]
    if states != rollout.consumer_states:
        rollout.consumer_states = states
        Rollout.objects.filter(pk=rollout.pk).update(consumer_states=states)


def _state_key(state: dict[str, object]) -> WorkloadKey:
    """A stored consumer state's workload; states stored before clusters are the default cluster's."""
    cluster = str(state.get("cluster") or settings.SLUICE_CLUSTER_NAME)
    return (cluster, str(state["kind"]), str(state["namespace"]), str(state["name"]))
