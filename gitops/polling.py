"""What beat's sweep wakes: sources due for a poll, rollouts whose timer ran out or that wait for abort.

Each is claimed with a compare-and-swap, so two beats (or a sweep racing a
webhook) never enqueue the same source twice.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta
from typing import Any

from django.db.models import DateTimeField, ExpressionWrapper, F, Value
from django.db.models.functions import Now
from django.utils import timezone

from gitops import schedule, selectors
from gitops.claims import each_claimed
from gitops.locks import source_lock_held
from gitops.models import Rollout, Source, SourceRemoval, automatic_sync_filter

# An active removal that no task has taken up for this long lost its task, and is sent again. A task
# that is still retrying (a busy source, a cluster that does not answer) takes it up well within it.
REMOVAL_RESEND_AFTER = timedelta(minutes=10)
# A request a pass holding the source leaves for itself is run within seconds of that pass's end; one
# left this long, with nothing holding the source, lost its holder (``sources_claim_orphaned_requests``).
ORPHANED_REQUEST_AFTER = timedelta(seconds=30)


def sources_with_due_rollouts(now: Any = None, *, polled: Collection[int] = ()) -> list[int]:
    """Sources whose paused rollout's timer (analysis back-off, cluster retry) has run out, whose abort
    waits, or that owe a cluster a rollback and may try it again.

    A source that is backing off after failures waits for its next try (unless it owes an abort or a
    rollback, which need no Git), and one with a sync already queued is not queued again, so a
    failing Git host or cluster is not asked every sweep.
    """
    now = now or timezone.now()
    # Timers and consumer waits are automatic steps: a suspended source's wait. Aborts never do.
    timers = Rollout.objects.filter(
        automatic_sync_filter("source__"),
        phase=Rollout.Phase.PAUSED,
        waiting_for__in=(Rollout.Waiting.TIMER, Rollout.Waiting.ANALYSIS, Rollout.Waiting.CLUSTER),
        pause_until__lte=now,
    )
    owed = Rollout.objects.filter(phase__in=Rollout.ENDED_PHASES, pause_until__lte=now).exclude(
        rollback_pending_clusters=[]
    )
    # A step waiting for its consumers is watched a slice per pass; a pass lost to a crash is redone.
    consumers = Rollout.objects.filter(
        automatic_sync_filter("source__"), phase=Rollout.Phase.PAUSED, waiting_for=Rollout.Waiting.CONSUMERS
    )
    aborts = Rollout.objects.filter(phase__in=Rollout.ACTIVE_PHASES).exclude(abort_requested_by="")
    # A held source's timers wait; what it owes a cluster in rollbacks does not: rollback always works.
    candidates = _not_held(set(timers.values_list("source_id", flat=True)), now)
    candidates |= set(consumers.values_list("source_id", flat=True))
    # An abort, and a rollback owed (which keeps its own retry time), need nothing from Git: a source
    # backing off because its Git host is down still carries them out now, not at its next poll.
    rollbacks = set(owed.values_list("source_id", flat=True)) | set(
        aborts.values_list("source_id", flat=True)
    )
    backing_off = set(
        Source.objects.filter(
            pk__in=candidates - rollbacks, consecutive_failures__gt=0, next_poll_at__gt=now
        ).values_list("pk", flat=True)
    )
    # A source whose poll this sweep claimed is synced by it: claiming it again would leave a claim
    # that no send gives back if the broker refuses the poll's.
    wanted = sorted((candidates | rollbacks) - backing_off - set(polled))
    return each_claimed(wanted, schedule.sync_queued_claim, "due rollouts")


def sources_claim_orphaned_requests(*, claimed: Collection[int] = ()) -> list[int]:
    """Claims the sources whose stored request outlived the pass that was to run it.

    A push or a poll that finds the source's lock held leaves a request (``sync_requested_at``) for
    the holder to run when its pass ends. A holder that dies (its worker killed mid-statement, its
    host gone: PostgreSQL ends the session, and the lock with it, only later) runs nothing, and every
    push meanwhile found the source busy too: all of them waited for the next poll. One older than
    ORPHANED_REQUEST_AFTER with nothing holding the lock is queued, and marked queued; a source
    backing off keeps its back-off (its poll takes the request), a suspended one its suspension.
    ``claimed``: sources this sweep queues already, whose pass takes the request."""
    # The database's clock, which wrote the requests (beat's may differ from the workers').
    old_enough = ExpressionWrapper(Now() - Value(ORPHANED_REQUEST_AFTER), output_field=DateTimeField())
    stale = Source.objects.filter(automatic_sync_filter(), sync_requested_at__lte=old_enough).exclude(
        consecutive_failures__gt=0, next_poll_at__gt=Now()
    )

    def claim(found: tuple[int, Any]) -> bool:
        source_id, requested_at = found
        if source_id in claimed or source_lock_held(source_id):
            return False
        # A compare-and-swap on the request: two beats queue it once, and it is tried again only after
        # ORPHANED_REQUEST_AFTER more (the pass it queues takes the request as it starts).
        request = Source.objects.filter(pk=source_id, sync_requested_at=requested_at)
        # Marked queued with its time, as every claim is: a mark without one is never taken over, and a
        # lost task then left pushes and wakes "already queued" until the next poll.
        return bool(request.update(sync_requested_at=Now(), sync_queued=True, sync_queued_at=Now()))

    found = each_claimed(stale.values_list("pk", "sync_requested_at"), claim, "orphaned requests")
    return [source_id for source_id, _ in found]


def _not_held(source_ids: set[int], now: Any) -> set[int]:
    """The sources among ``source_ids`` no freeze or sync window holds: a held timer waits, unswept.

    Without this, a timer that ran out during a freeze would wake its source every sweep.
    """
    if not source_ids:
        return source_ids
    rules = selectors.rules_now(now)
    if not rules.freezes and not rules.windows:
        return source_ids
    names = Source.objects.filter(pk__in=source_ids).values_list("pk", "name")
    return {source_id for source_id, name in names if rules.gate(name).automatic}


def sources_claim_due(now: Any = None) -> list[int]:
    """Claims every source whose poll is due, with a compare-and-swap per source.

    Two beat processes (or a sweep racing a webhook) can both see a source as
    due; only the one whose update matches the old ``next_poll_at`` enqueues it.
    """
    now = now or timezone.now()
    due = Source.objects.filter(automatic_sync_filter(), next_poll_at__lte=now)

    def claim(found: tuple[int, Any, Any]) -> bool:
        source_id, due_at, interval = found
        # A due poll queues a sync whatever sync_queued says, so a lost task never silences pushes for long.
        poll = Source.objects.filter(pk=source_id, next_poll_at=due_at)
        return bool(poll.update(next_poll_at=now + interval, sync_queued=False))

    claimed = each_claimed(due.values_list("pk", "next_poll_at", "poll_interval"), claim, "due polls")
    return [source_id for source_id, _, _ in claimed]


def removals_claim_stale(now: Any = None) -> list[int]:
    """Claims the active removals whose task was lost: none took them up for ``REMOVAL_RESEND_AFTER``
    (a broker that refused the task after the request committed, or lost it in a failover). Without
    this, the source stays suspended and "being deleted" for good: resuming it and deleting it again
    are both refused. Skipped while anything holds the source's lock (a removal under way, its own
    task included); each claim is a compare-and-swap, so two beats send one task. Running a removal
    again is harmless: a second task finds it ended, or finishes what the first left."""
    now = now or timezone.now()
    stale = SourceRemoval.objects.filter(
        status__in=SourceRemoval.ACTIVE_STATUSES, attempted_at__lte=now - REMOVAL_RESEND_AFTER
    )

    def claim(found: tuple[int, int, Any]) -> bool:
        removal_id, source_id, attempted_at = found
        if source_lock_held(source_id):
            return False
        removal = SourceRemoval.objects.filter(pk=removal_id, attempted_at=attempted_at)
        return bool(removal.update(attempted_at=now))

    claimed = each_claimed(stale.values_list("pk", "source_id", "attempted_at"), claim, "lost removals")
    return [removal_id for removal_id, _, _ in claimed]


def source_poll_due_again(source_id: int, claimed_at: Any) -> None:
    """Gives back a due poll whose sync the broker refused: the next sweep, seconds away, claims it
    again rather than the next interval. Only the time the claim wrote is given back: a pass that
    has moved the poll since (its next interval, a back-off) keeps its time."""
    claim_wrote = ExpressionWrapper(Value(claimed_at) + F("poll_interval"), output_field=DateTimeField())
    Source.objects.filter(pk=source_id, next_poll_at=claim_wrote).update(next_poll_at=claimed_at)
