"""Rolling a rollout back: every target it changed gets exactly what it held before, provenance included."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from gitops.cluster import get_cluster
from gitops.cluster.live import live_configmaps, live_index
from gitops.models import ApplyIntent, Rollout
from gitops.record.events import rollout_event
from gitops.rollout.step import intents_execute
from gitops.vocabulary import ChangeAction, RolloutEventKind


def rollout_rollback(rollout: Rollout, *, actor: str, reason: str, phase: str) -> list[str]:
    """Restores every target this rollout changed, then ends it in ``phase`` (Failed if a restore failed)."""
    first_intents: dict[tuple[str, str], ApplyIntent] = {}
    for intent in rollout.intents.filter(status=ApplyIntent.Status.DONE).exclude(
        action=ChangeAction.ROLLBACK
    ):
        first_intents.setdefault((intent.namespace, intent.name), intent)
    failures: list[str] = []
    if first_intents:
        index = live_index(live_configmaps(get_cluster(), {namespace for namespace, _ in first_intents}))
        restores = [
            restore
            for key, first in sorted(first_intents.items())
            if (restore := ApplyIntent.restoring(rollout, first, index.get(key), actor=actor)) is not None
        ]
        with transaction.atomic():
            created = ApplyIntent.objects.bulk_create(restores)
        failures = intents_execute(created)
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
