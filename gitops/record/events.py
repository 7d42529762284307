"""A rollout's timeline: each event is stored, logged, and sent to the source's notification URLs."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from gitops.models import Rollout, RolloutEvent
from gitops.record import notifications
from gitops.redaction import redact
from gitops.vocabulary import SYSTEM_ACTOR, RolloutEventKind

log = logging.getLogger("gitops.rollout")


def rollout_event(
    rollout: Rollout,
    kind: RolloutEventKind,
    *,
    actor: str = SYSTEM_ACTOR,
    step: int | None = None,
    weight: int | None = None,
    message: str = "",
    data: dict[str, Any] | None = None,
) -> None:
    step = rollout.step_index if step is None else step
    weight = rollout.weight if weight is None else weight
    # The line with its notifications, or neither; within a caller's transaction, as part of it.
    with transaction.atomic(savepoint=False):
        RolloutEvent.objects.create(
            rollout=rollout,
            kind=kind,
            step_index=step,
            weight=weight,
            actor=actor,
            message=message,
            data=data or {},
        )
        notifications.emit(
            kind,
            source=rollout.source,
            subject=f"rollouts/{rollout.pk}",
            data={
                "rollout": rollout.pk,
                "revision": rollout.revision.commit,
                "phase": rollout.phase,
                "step": step,
                "weight": weight,
                "actor": actor,
                # It may quote what the repository holds (an analysis URL's query): pages redact it, and
                # so does what leaves Sluice.
                "message": redact(message),
            },
        )
    log.info(
        "rollout %s source=%s commit=%s %s step=%s: %s",
        rollout.pk,
        rollout.source.name,
        rollout.revision.commit,
        kind,
        step,
        message,
    )
