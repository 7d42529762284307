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

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from gitops import schedule
from gitops.cluster import get_cluster
from gitops.consumers.gate import GateResult, WorkloadKey, gate_wait
from gitops.consumers.wave import consumer_map, restart_intents, wave_consumers
from gitops.consumers.workloads import Health, WorkloadHealth
from gitops.desired.policy import ConsumerMode
from gitops.models import ApplyIntent, ManagedObject, Rollout, Source
from gitops.record.events import rollout_event
from gitops.rollout.rollback import rollout_rollback
from gitops.rollout.state import SYSTEM_ACTOR, transition
from gitops.rollout.step import intents_execute
from gitops.vocabulary import ChangeAction, RolloutEventKind, Waiting

DEFAULT_SLICE_SECONDS = 30


def wave_restart(
    rollout: Rollout, *, step_index: int, weight: int, actor: str
) -> tuple[list[dict[str, object]], list[str]]:
    """Finds the consumers of what this step changed and, with ``restart``, restarts them.

    Returns the consumers to gate on (as stored on the rollout) and the cluster's
    refusals. What the step changed is read from its recorded intents, so a pass
    resumed after a crash restarts exactly what the crashed one did not.
    """
    changed = set(
        ApplyIntent.objects.filter(
            rollout=rollout, step_index=step_index, kind="ConfigMap", status=ApplyIntent.Status.DONE
        )
        .exclude(action=ChangeAction.ROLLBACK)
        .values_list("namespace", "name")
    )
    if rollout.consumers == ConsumerMode.IGNORE or not changed:
        return [], []
    workloads = wave_consumers(get_cluster(), changed)
    failures: list[str] = []
    restarted: set[WorkloadKey] = set()
    if rollout.consumers == ConsumerMode.RESTART:
        rows = ManagedObject.objects.filter(source_id=rollout.source_id).values_list(
            "namespace", "name", "content_hash"
        )
        hashes = {(namespace, name): content_hash for namespace, name, content_hash in rows}
        intents = restart_intents(
            rollout, workloads, hashes, step_index=step_index, weight=weight, actor=actor
        )
        with transaction.atomic():
            created = ApplyIntent.objects.bulk_create(intents)
        failures = intents_execute(created)
        restarted = {(i.kind, i.namespace, i.name) for i in created if i.status == ApplyIntent.Status.DONE}
    states = [
        {
            "kind": w.kind,
            "namespace": w.namespace,
            "name": w.name,
            "restarted": w.key in restarted,
            "restartable": w.restartable,
            "health": Health.PROGRESSING,
            "detail": "",
        }
        for w in workloads
    ]
    return states, failures


def consumer_map_refresh(rollout: Rollout) -> None:
    """Records which workloads read which of the source's ConfigMaps, for the source page."""
    if rollout.consumers == ConsumerMode.IGNORE:
        return
    managed = list(ManagedObject.objects.filter(source_id=rollout.source_id).values_list("namespace", "name"))
    mapping = consumer_map(get_cluster(), {namespace for namespace, _ in managed}, managed)
    Source.objects.filter(pk=rollout.source_id).update(consumer_map=mapping, consumer_map_at=timezone.now())


def wave_gate_close(rollout: Rollout, states: list[dict[str, object]], *, weight: int, actor: str) -> None:
    """Holds the step at its consumers: the rollout waits for them, until its health deadline."""
    until = timezone.now() + timedelta(seconds=rollout.health_timeout_seconds)
    transition(
        rollout,
        phase=Rollout.Phase.PAUSED,
        waiting_for=Waiting.CONSUMERS,
        pause_until=until,
        weight=weight,
        consumer_states=states,
        promoted_by="",
        message="",
    )
    restarted = sum(1 for state in states if state["restarted"])
    message = f"waiting for {len(states)} consumer{'s' if len(states) != 1 else ''} to be healthy"
    if restarted:
        message += f" ({restarted} restarted)"
    rollout_event(
        rollout, RolloutEventKind.CONSUMERS, actor=actor, message=message, data={"consumers": states}
    )


def wave_gate_pass(rollout: Rollout) -> bool:
    """Waits for the wave's consumers (one slice); True when the gate opened and the rollout goes on."""
    keys = [(s["kind"], s["namespace"], s["name"]) for s in rollout.consumer_states]
    remaining = (rollout.pause_until - timezone.now()).total_seconds() if rollout.pause_until else 0.0
    slice_seconds = float(getattr(settings, "SLUICE_CONSUMER_GATE_SLICE_SECONDS", DEFAULT_SLICE_SECONDS))
    verdict = gate_wait(
        get_cluster(),
        keys,
        seconds=max(0.0, min(slice_seconds, remaining)),
        stop=lambda: Rollout.objects.filter(pk=rollout.pk).exclude(abort_requested_by="").exists(),
        changed=lambda found: _store_states(rollout, found),
    )
    if verdict.result is GateResult.OPEN:
        details = ", ".join(
            f"{kind.lower()}/{name} {state.detail}"
            for (kind, _, name), state in sorted(verdict.states.items())
        )
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
        rollout_rollback(
            rollout, actor=SYSTEM_ACTOR, reason=f"consumers not healthy: {reason}", phase=Rollout.Phase.FAILED
        )
        return False
    schedule.source_sync_at(rollout.source_id, timezone.now())  # wait on in the next pass
    return False


def _timed_out(rollout: Rollout, states: dict[WorkloadKey, WorkloadHealth]) -> str:
    waiting = [
        f"{kind.lower()}/{name} in {namespace} {state.detail}"
        for (kind, namespace, name), state in sorted(states.items())
        if state.health is not Health.HEALTHY
    ]
    return f"healthTimeout ({rollout.health_timeout_seconds}s) passed: " + "; ".join(waiting[:5])


def _store_states(rollout: Rollout, found: dict[WorkloadKey, WorkloadHealth]) -> None:
    states = [
        {**state, "health": found[key].health, "detail": found[key].detail}
        if (key := (state["kind"], state["namespace"], state["name"])) in found
        else state
        for state in rollout.consumer_states
    ]
    if states != rollout.consumer_states:
        rollout.consumer_states = states
        Rollout.objects.filter(pk=rollout.pk).update(consumer_states=states)
