"""A rollout's stored state moves only by compare-and-swap, so a promote racing a reconcile is never lost."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from gitops.models import Rollout
from gitops.vocabulary import Outcome

DEFAULT_CLUSTER_RETRY_SECONDS = 10


def cluster_retry_delay() -> timedelta:
    """How long an unreachable cluster is left alone before a rollout or a rollback tries it again."""
    seconds = float(getattr(settings, "SLUICE_CLUSTER_RETRY_SECONDS", DEFAULT_CLUSTER_RETRY_SECONDS))
    return timedelta(seconds=seconds)


def unreachable_text(unreachable: dict[str, str]) -> str:
    """``member-2 (kube-apiserver unreachable: ...); ...``, by cluster name."""
    return "; ".join(f"{name} ({why})" for name, why in sorted(unreachable.items()))


@dataclass
class StepOutcome:
    """What one pass of a rollout did: how it ended, per-action counts, the clusters' refusals, and the
    clusters it could not reach."""

    outcome: Outcome = Outcome.UNCHANGED
    summary: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    # Clusters whose targets this pass needed and could not reach, and why: the step waits for them.
    unreachable: dict[str, str] = field(default_factory=dict)

    def merge(self, other: StepOutcome) -> None:
        for action, count in other.summary.items():
            self.summary[action] = self.summary.get(action, 0) + count
        self.failures.extend(other.failures)
        self.unreachable.update(other.unreachable)
        if other.outcome is Outcome.APPLIED:
            self.outcome = Outcome.APPLIED
        if other.failures:
            self.outcome = Outcome.FAILED


def transition(rollout: Rollout, **changes: Any) -> bool:
    """Compare-and-swap on (phase, step, version): False when someone moved the rollout meanwhile, or
    rewrote its steps (a promote to 100% while this step ran: the worker must not step past it)."""
    changes.setdefault("updated_at", timezone.now())
    moved = Rollout.objects.filter(
        pk=rollout.pk, phase=rollout.phase, step_index=rollout.step_index, version=rollout.version
    ).update(**changes)
    if moved:
        for name, value in changes.items():
            setattr(rollout, name, value)
    return bool(moved)
