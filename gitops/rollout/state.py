"""A rollout's stored state moves only by compare-and-swap, so a promote racing a reconcile is never lost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from gitops.models import Rollout
from gitops.vocabulary import Outcome

SYSTEM_ACTOR = "sluice"


@dataclass
class StepOutcome:
    """What one pass of a rollout did: how it ended, per-action counts, and the cluster's refusals."""

    outcome: Outcome = Outcome.UNCHANGED
    summary: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def merge(self, other: StepOutcome) -> None:
        for action, count in other.summary.items():
            self.summary[action] = self.summary.get(action, 0) + count
        self.failures.extend(other.failures)
        if other.outcome is Outcome.APPLIED:
            self.outcome = Outcome.APPLIED
        if other.failures:
            self.outcome = Outcome.FAILED


def transition(rollout: Rollout, **changes: Any) -> bool:
    """Compare-and-swap on (phase, step): False when someone moved the rollout meanwhile."""
    changes.setdefault("updated_at", timezone.now())
    moved = Rollout.objects.filter(pk=rollout.pk, phase=rollout.phase, step_index=rollout.step_index).update(
        **changes
    )
    if moved:
        for name, value in changes.items():
            setattr(rollout, name, value)
    return bool(moved)
