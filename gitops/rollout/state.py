"""A rollout's stored state moves only by compare-and-swap, so a promote racing a reconcile is never lost."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from gitops.errors import GitopsError, TemporaryError
from gitops.models import Rollout
from gitops.record.changelog import intents_pending_query
from gitops.vocabulary import Outcome

DEFAULT_CLUSTER_RETRY_SECONDS = 10


def cluster_retry_delay() -> timedelta:
    """How long an unreachable cluster is left alone before a rollout or a rollback tries it again."""
    seconds = float(getattr(settings, "SLUICE_CLUSTER_RETRY_SECONDS", DEFAULT_CLUSTER_RETRY_SECONDS))
    return timedelta(seconds=seconds)


def unreachable_text(unreachable: dict[str, str]) -> str:
    """``member-2 (kube-apiserver unreachable: ...); ...``, by cluster name."""
    return "; ".join(f"{name} ({why})" for name, why in sorted(unreachable.items()))


# The source whose pass found, in its first statement, no ended rollout owing a cluster a rollback (nearly
# every pass): its steps do not ask again. Scoped to one pass by ``owed_rollbacks_memo``.
_NONE_OWED: ContextVar[int | None] = ContextVar("sluice_no_rollback_owed", default=None)
# The source whose pass knows which clusters still hold its pending writes (its first statement found
# none, or ``intents_finish_pending`` tried them), and those clusters, each with why it did not take them.
# Scoped like ``_NONE_OWED``.
_PENDING_LEFT: ContextVar[tuple[int, dict[str, GitopsError]] | None] = ContextVar(
    "sluice_pending_left", default=None
)


@contextmanager
def owed_rollbacks_memo() -> Iterator[None]:
    """Scopes what one pass learns of owed rollbacks (``owed_rollbacks_none``) and of its pending writes
    (``pending_writes_known``) to that pass."""
    token = _NONE_OWED.set(None)
    pending_token = _PENDING_LEFT.set(None)
    try:
        yield
    finally:
        _PENDING_LEFT.reset(pending_token)
        _NONE_OWED.reset(token)


def pending_writes_known(source_id: int, clusters: Mapping[str, GitopsError]) -> None:
    """The pass of ``source_id`` tried its pending writes (or found none): ``clusters`` (cluster -> why
    they did not take them) still hold some."""
    _PENDING_LEFT.set((source_id, dict(clusters)))


def pending_writes_added(source_id: int, clusters: Mapping[str, GitopsError]) -> None:
    """A step of the pass left writes pending in ``clusters`` (cluster -> why: they did not answer)."""
    known = _PENDING_LEFT.get()
    if known is not None and known[0] == source_id and clusters:
        _PENDING_LEFT.set((source_id, {**known[1], **clusters}))


def clusters_with_pending_writes(source_id: int) -> dict[str, GitopsError]:
    """Cluster -> why, for each cluster where intents of the source are still pending: a step treats it
    as unreachable until they are finished. Planned again there, each try of a step whose cluster
    answered reads but refused writes wrote one more intent for the same object, and when the cluster
    took writes again they all went out side by side: one change logged once per try, and of two
    contents (a canary's, then a promote's) either could land last. Finished first, the pending one is
    applied and logged once, and the step then plans from what it left."""
    known = _PENDING_LEFT.get()
    if known is not None and known[0] == source_id:
        return dict(known[1])
    # Outside a pass that asked (none does today): the database says.
    clusters = set(intents_pending_query(source_id).values_list("cluster", flat=True).distinct())
    return {
        cluster: TemporaryError(f"writes left pending in {cluster} are not finished") for cluster in clusters
    }


def owed_rollbacks_none(source_id: int) -> None:
    """The pass of ``source_id`` found no rollback owed: ``clusters_owed_rollback`` answers at once."""
    _NONE_OWED.set(source_id)


def owed_rollback_added(source_id: int) -> None:
    """A rollback of ``source_id`` was just left owed: what its pass learnt at the start no longer holds."""
    if _NONE_OWED.get() == source_id:
        _NONE_OWED.set(None)


def clusters_owed_rollback(source_id: int) -> dict[str, str]:
    """Cluster -> why, for each cluster an ended rollout of the source still owes a rollback, due or not.

    A newer rollout's step leaves such a cluster alone, as it would an unreachable one, until the rollback
    is done there: otherwise the rollback, when it came, would take back what the newer rollout found
    already right there and so never wrote (no intent, no history to tell it apart).
    """
    if _NONE_OWED.get() == source_id:
        return {}
    owing = (
        Rollout.objects.filter(source_id=source_id)
        .exclude(rollback_pending_clusters=[])
        .order_by("pk")
        .values_list("pk", "rollback_pending_clusters")
    )
    owed: dict[str, str] = {}
    for pk, clusters in owing:
        for cluster in clusters:
            owed.setdefault(cluster, f"rollout {pk} still owes it a rollback, which comes first")
    return owed


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
    """Compare-and-swap on (phase, step, version, abort): False when someone moved the rollout meanwhile,
    rewrote its steps (a promote to 100% while this step ran: the worker must not step past it), or
    asked for an abort since it was read (a completion must not swallow it)."""
    changes.setdefault("updated_at", timezone.now())
    moved = Rollout.objects.filter(
        pk=rollout.pk,
        phase=rollout.phase,
        step_index=rollout.step_index,
        version=rollout.version,
        abort_requested_by=rollout.abort_requested_by,
    ).update(**changes)
    if moved:
        for name, value in changes.items():
            setattr(rollout, name, value)
    return bool(moved)
