"""Rollouts, intents and change-log rows written straight to the database, for volume tests.

Real reconciles make these rows one object at a time; tests of retention and
exports need thousands, and old ones, so they are inserted here the way
``gitops.record.changelog`` inserts them (bulk, intents first).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from django.utils import timezone

from gitops.models import ApplyIntent, Change, Revision, Rollout, RolloutEvent, Source


def rollout(
    source: Source, *, phase: str = Rollout.Phase.COMPLETED, finished_at: datetime | None = None
) -> Rollout:
    revision = Revision.objects.create(
        source=source, commit=uuid.uuid4().hex + uuid.uuid4().hex[:8], outcome=Revision.Outcome.APPLIED
    )
    ended = phase not in Rollout.ACTIVE_PHASES
    return Rollout.objects.create(
        source=source,
        revision=revision,
        phase=phase,
        weight=100 if ended else 50,
        finished_at=(finished_at or timezone.now()) if ended else None,
    )


def changes(
    of: Rollout,
    count: int,
    *,
    at: datetime | None = None,
    body_bytes: int = 100,
    logged: bool = True,
    intent_bodies: bool = True,
    first: int = 0,
    status: str = ApplyIntent.Status.DONE,
    action: str = Change.Action.UPDATE,
    commit: str | None = None,
) -> list[ApplyIntent]:
    """``count`` intents of ``of`` in ``status`` (ConfigMaps ``cm-<first>`` onwards), each with a
    change-log row unless ``logged`` is False (a done one without it: its row was archived)."""
    at = at or timezone.now()
    before = {"data": {"blob": "b" * body_bytes}}
    after = {"data": {"blob": "a" * body_bytes}}
    diff = [{"op": "change", "key": "blob"}]
    intents = ApplyIntent.objects.bulk_create(
        [
            ApplyIntent(
                rollout=of,
                source=of.source,
                namespace="team-a",
                name=f"cm-{index}",
                action="update",
                commit=of.revision.commit,
                manifest={"kind": "ConfigMap", **after} if intent_bodies else None,
                before=before if intent_bodies else None,
                after=after if intent_bodies else None,
                diff=diff if intent_bodies else [],
                status=status,
                created_at=at,
            )
            for index in range(first, first + count)
        ],
        batch_size=500,
    )
    if logged:
        Change.objects.bulk_create(
            [
                Change(
                    intent=intent,
                    source=of.source,
                    rollout=of,
                    commit=commit or of.revision.commit,
                    namespace=intent.namespace,
                    name=intent.name,
                    action=action,
                    before=before,
                    after=after,
                    diff=diff,
                    actor="sluice",
                    weight=100,
                    at=at,
                    result=Change.Result.OK,
                )
                for intent in intents
            ],
            batch_size=500,
        )
    return intents


def events(of: Rollout, count: int, *, at: datetime) -> None:
    RolloutEvent.objects.bulk_create(
        [RolloutEvent(rollout=of, at=at, kind="step", message=f"event {index}") for index in range(count)]
    )
