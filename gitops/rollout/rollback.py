"""Rolling a rollout back: every target it changed gets exactly what it held before, provenance included.

ConfigMaps are restored first, then the workloads the rollout restarted get
their previous stamp back, so their new pods start with the old content.
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from gitops.cluster import get_cluster
from gitops.cluster.client import WORKLOAD_KINDS
from gitops.cluster.live import live_configmaps, live_index
from gitops.consumers.wave import restoring_intent
from gitops.models import ApplyIntent, Rollout
from gitops.record.events import rollout_event
from gitops.rollout.step import intents_execute
from gitops.vocabulary import ChangeAction, RolloutEventKind

ObjectKey = tuple[str, str, str]  # (kind, namespace, name)


def rollout_rollback(rollout: Rollout, *, actor: str, reason: str, phase: Rollout.Phase) -> list[str]:
    """Restores every target this rollout changed, then ends it in ``phase`` (Failed if a restore failed)."""
    first_intents: dict[ObjectKey, ApplyIntent] = {}
    for intent in rollout.intents.filter(status=ApplyIntent.Status.DONE).exclude(
        action=ChangeAction.ROLLBACK
    ):
        first_intents.setdefault((intent.kind, intent.namespace, intent.name), intent)
    configmaps = {key: intent for key, intent in first_intents.items() if key[0] not in WORKLOAD_KINDS}
    workloads = {key: intent for key, intent in first_intents.items() if key[0] in WORKLOAD_KINDS}
    failures = _restore_configmaps(rollout, configmaps, actor) + _restore_workloads(rollout, workloads, actor)
    now = timezone.now()
    message = reason + (
        f"; rollback failed for {len(failures)}: " + "; ".join(failures[:3]) if failures else ""
    )
    Rollout.objects.filter(pk=rollout.pk).update(
        phase=Rollout.Phase.FAILED if failures else phase,
        waiting_for="",
        pause_until=None,
        finished_at=now,
        updated_at=now,
        message=message,
    )
    rollout.refresh_from_db()
    kind = RolloutEventKind.ROLLBACK_FAILED if failures else RolloutEventKind.ROLLED_BACK
    rollout_event(rollout, kind, actor=actor, message=message)
    return failures


def _restore_configmaps(
    rollout: Rollout, first_intents: dict[ObjectKey, ApplyIntent], actor: str
) -> list[str]:
    if not first_intents:
        return []
    index = live_index(live_configmaps(get_cluster(), {namespace for _, namespace, _ in first_intents}))
    restores = [
        restore
        for (_, namespace, name), first in sorted(first_intents.items())
        if (restore := ApplyIntent.restoring(rollout, first, index.get((namespace, name)), actor=actor))
        is not None
    ]
    return _execute(restores)


def _restore_workloads(
    rollout: Rollout, first_intents: dict[ObjectKey, ApplyIntent], actor: str
) -> list[str]:
    cluster = get_cluster()
    restores = [
        restore
        for (kind, namespace, name), first in sorted(first_intents.items())
        if (
            restore := restoring_intent(
                rollout, first, cluster.get_workload(kind, namespace, name), actor=actor
            )
        )
        is not None
    ]
    return _execute(restores)


def _execute(restores: list[ApplyIntent]) -> list[str]:
    if not restores:
        return []
    with transaction.atomic():
        created = ApplyIntent.objects.bulk_create(restores)
    return intents_execute(created)
