"""Reconciling one source, on one page: lock, coalesce, fetch → validate → choose → drive → finish.

    fetch      gitops.fetch.revisions    the branch tip, into the source's bare mirror
    validate   gitops.desired            the whole revision, or every error with file and line
    choose     gitops.rollout.lifecycle  which rollout this pass moves (start, supersede, queue)
    drive      gitops.rollout            plan each step's weight, write intents, apply, record
    hold       gitops.freezes            a freeze or a closed sync window: plan only; people's decisions go on
    finish     here                      the source's bookkeeping: errors, back-off, next poll

A PostgreSQL advisory lock per source, held for the whole pass, means two
workers never reconcile the same source at once; a crash drops the connection
and with it the lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import OperationalError
from django.db.models import BooleanField, Exists, ExpressionWrapper, Q, QuerySet
from django.utils import timezone

from gitops import caches, logs, metrics, schedule, selectors
from gitops.cluster import clients
from gitops.desired.errors import ValidationError
from gitops.desired.revision import DesiredState
from gitops.errors import GitopsError, PermanentError, TemporaryError
from gitops.fetch.mirror import FetchInterrupted
from gitops.fetch.revisions import (
    commit_identities,
    revision_desired_state,
    revision_fetch,
    revision_reject,
)
from gitops.locks import ReconcileLockLost, SourceBusy, TakeoverPending, lock_waited, source_lock
from gitops.models import Revision, Rollout, Source, SourceRemoval, automatic_sync_filter, known_clusters
from gitops.prepared import PreparedSelect, PreparedUpdate
from gitops.record.changelog import intents_pending_query
from gitops.rollout.flag_canary import CanaryRefused
from gitops.rollout.lifecycle import (
    FlagKeysTaken,
    rollback_asked,
    rollout_choose,
    rollout_drive,
    rollout_holds_head,
    rollout_note_head,
)
from gitops.rollout.rollback import rollbacks_owed_finish, rollbacks_owing, rollout_rollback
from gitops.rollout.state import StepOutcome, owed_rollbacks_memo, owed_rollbacks_none, pending_writes_known
from gitops.rollout.step import Resumed, intents_finish_pending, plan_held
from gitops.vocabulary import SYSTEM_ACTOR, Outcome, Waiting
from gitops.windows import Gate, GateKind

log = logging.getLogger("gitops.reconcile")

# Advisory locks are keyed by two integers: a constant for Sluice, then the source id.
MAX_COALESCED_RUNS = 5
MAX_BACKOFF = timedelta(hours=1)


@dataclass
class SyncResult:
    source: str
    outcome: Outcome
    commit: str = ""
    revision_id: int | None = None
    summary: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    forced_push: bool = False
    rollout: dict[str, Any] | None = None
    held: str = ""  # why a freeze or a sync window holds the changes back

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "outcome": self.outcome,
            "commit": self.commit,
            "revision": self.revision_id,
            "summary": self.summary,
            "errors": self.errors,
            "forced_push": self.forced_push,
            "rollout": self.rollout,
            "held": self.held,
        }


# -- one pass -------------------------------------------------------------------------------


def _reconcile(
    source: Source,
    *,
    actor: str,
    retry_failed: bool,
    manual: bool = False,
    report_rollout: bool = True,
    decisions_only: bool = False,
) -> SyncResult:
    """One pass; ``decisions_only`` (as ``_locked_pass`` decided): without asking Git."""
    registered = clients.refresh()  # clusters registered, removed or re-pointed since the last pass
    owed = _owed(source)  # one query; most passes owe nothing
    # What a crashed run (or an unreachable cluster) left behind.
    resumed = intents_finish_pending(source) if owed.intents else Resumed()
    if owed.rollbacks:  # clusters that did not answer an earlier rollback: a freeze holds none
        rollbacks_owed_finish(source)
    aborted = _abort_if_requested(source) if owed.aborts else None  # before Git: no commit holds it up
    gate = GateWatch(source, manual=manual)  # its ``held``: a freeze, or outside the sync windows
    decided = _Decided(actor, retry_failed, gate, resumed)
    if decisions_only:
        return _decisions_only(source, decided, aborted=aborted)
    try:
        head, forced = revision_fetch(source, interrupted=_aborts_requested(source).exists)
    except FetchInterrupted:
        return _abort_while_fetching(source, decided)
    except (TemporaryError, PermanentError) as exc:
        Source.objects.filter(pk=source.pk).update(last_error=str(exc))
        # Git is out of reach, but decisions already stored (an abort, a pause that
        # ran out, an analysis retry) are carried out from the database and the mirror.
        _drive_active(source, actor=actor, retry_failed=retry_failed, held=gate)
        raise
    logs.add_context(commit=head.commit)
    result = SyncResult(source.name, Outcome.UNCHANGED, head.commit, head.pk, forced_push=forced)
    # A restore, or a pending write, refused: the source says why.
    result.errors.extend([*resumed.failures, *(aborted.failures if aborted else [])])
    head_desired = revision_desired_state(source, head, known_clusters=known_clusters(registered))
    if head_desired is None:
        return _head_rejected(source, head, result, decided)
    # Read again when the fetch and the validation took more than a second: a freeze set meanwhile keeps
    # the new commit from superseding (a rollback written) or queueing, and its rollout from starting.
    if (held := gate()) is not None:
        return _hold(source, head, head_desired, held, result)
    chosen = _chosen(source, head, head_desired, result)
    if chosen is None:
        return _head_rejected(source, head, result, decided)
    rollout, queued, desired = chosen
    logs.add_context(rollout=rollout.pk)
    outcome = _drive(rollout, desired, actor, retry_failed, gate, fresh=True)  # rollout_choose read it now
    _outcome_into(result, outcome, queued, gate)
    if report_rollout:  # one wide query: a push's or a poll's result is read by nobody
        result.rollout = selectors.rollout_status(selectors.rollout_for_status(rollout.pk))
    if resumed.count:
        result.summary["resumed"] = resumed.count
    if head.summary != result.summary:  # a no-op poll writes nothing here
        Revision.objects.filter(pk=head.pk).update(summary=result.summary)
    held_until = gate.held.until if gate.held is not None and result.outcome is Outcome.HELD else None
    _finish(source, result.errors, held_until=held_until)
    return result


def _head_rejected(source: Source, head: Revision, result: SyncResult, decided: _Decided) -> SyncResult:
    """The pass's result for a head rejected (recorded on its row): a bad new commit stops nothing already
    under way with an earlier, valid one."""
    moved = _drive_active(source, actor=decided.actor, retry_failed=decided.retry_failed, held=decided.gate)
    head.refresh_from_db()
    result.outcome = Outcome.REJECTED
    # After the head's errors, what the pass had already met: a refused write, restore or rollback.
    result.errors = (
        [_error_text(error) for error in head.errors] + result.errors + (moved.failures if moved else [])
    )
    # A rollout held behind a rejected head waits for its hold's end too, not a whole interval.
    held = decided.gate.held
    _finish(source, [], held_until=held.until if held is not None else None)
    return result


def _chosen(
    source: Source, head: Revision, head_desired: DesiredState, result: SyncResult
) -> tuple[Rollout, Outcome | None, DesiredState | None] | None:
    """The rollout this pass moves (``rollout_choose``), whether the head waits behind it, and the state it
    is driven with when the head's is its (None: its own is loaded); a superseded rollout's refused
    restores go into the pass's errors. The commits' authors are read only when a rollout starts. None:
    the head's flag keys were taken, by another source's rollout that started since the head was
    validated (recorded on the head, as validation records it)."""
    identities = lambda: commit_identities(source, head)  # noqa: E731
    try:
        rollout, queued = rollout_choose(
            source, head, head_desired, commit_identities=identities, refusals=result.errors
        )
    except FlagKeysTaken as taken:
        revision_reject(source, head, taken)
        return None
    # A rollout of an earlier commit that stands for the head holds the head's content: not loaded again.
    holds_head = queued is None and rollout_holds_head(source, rollout, head, head_desired)
    return rollout, queued, head_desired if holds_head else None


def _outcome_into(result: SyncResult, outcome: StepOutcome, queued: Outcome | None, gate: GateWatch) -> None:
    result.outcome = queued or outcome.outcome
    if gate.held is not None and result.outcome in (Outcome.HELD, Outcome.UNCHANGED):
        # Open when the pass began: a freeze set, or a window closed, while it ran stopped the rest.
        result.outcome, result.held = Outcome.HELD, gate.held.reason
    # A cluster that did not answer fails only its own targets: the pass reports it and goes on.
    unreachable = [f"cluster {name} unreachable: {why}" for name, why in sorted(outcome.unreachable.items())]
    # Kept: what the pass reported before the rollout moved (a refused restore or pending write).
    # The same refusal met twice in a pass (a pending write, then the step's own) is said once.
    errors = [*result.errors, *outcome.failures, *unreachable]
    result.summary, result.errors = outcome.summary, list(dict.fromkeys(errors))


def _abort_while_fetching(source: Source, decided: _Decided) -> SyncResult:
    """Someone aborted a rollout while Git was slow to answer (a host that hangs holds a fetch for its
    whole timeout, and this pass the source's lock): the fetch stopped, and the abort is carried out
    now, from stored state, as a pass without Git carries out decisions. The fetch is asked for again,
    after this pass: the request that started it was taken when it began."""
    Source.objects.filter(pk=source.pk).update(sync_requested_at=timezone.now())
    return _decisions_only(source, decided, aborted=None)


@dataclass(frozen=True)
class _Decided:
    """What a pass that carries out decisions only needs of the pass it is: who runs it and how, its
    gate, and what it resumed before Git was asked (the refusals among it are reported first)."""

    actor: str
    retry_failed: bool
    gate: GateWatch
    resumed: Resumed


def _decisions_only(source: Source, decided: _Decided, *, aborted: StepOutcome | None) -> SyncResult:
    """A pass that carries out decisions on rollouts (a promote, an abort, a retry; beat's sweep of an
    abort or an owed rollback) on a source that is suspended or backing off from its Git host. What
    people decided goes on, with the active rollout's own revision; Git is not asked, so a commit
    pushed while suspended waits for resume or for someone's sync instead of starting a rollout."""
    held: GateWatch | Gate = decided.gate
    if not source.automatic_sync_allowed and decided.actor == SYSTEM_ACTOR:
        # Beat's sweep of a suspended source (an owed rollback, an abort): that is carried out, and as
        # during a freeze nothing moves by itself (a timer that ran out, an analysis's next try).
        held = SUSPENDED
    moved = _drive_active(source, actor=decided.actor, retry_failed=decided.retry_failed, held=held)
    idle = Outcome.SUSPENDED if not source.automatic_sync_allowed else Outcome.UNCHANGED
    result = SyncResult(source.name, aborted.outcome if aborted else idle, source.last_commit)
    result.errors.extend([*decided.resumed.failures, *(aborted.failures if aborted else [])])
    if moved is not None:
        result.outcome, result.summary = moved.outcome, moved.summary
        result.errors.extend(moved.failures)
    # Git was not asked: its failures in a row, last error and next try stay as they were.
    if result.errors:
        Source.objects.filter(pk=source.pk).update(last_error="; ".join(result.errors[:5]))
    return result


# What holds a suspended source's rollouts in a pass no person asked for.
SUSPENDED = Gate(kind=GateKind.FROZEN, manual=True, reason="automatic sync is suspended")


def _without_git(source: Source) -> bool:
    """Whether a decision's pass leaves Git alone: the source is suspended, or backing off. Asked once
    a pass, by ``_locked_pass``, which keeps what was requested for the full pass after such a one."""
    return not source.automatic_sync_allowed or _backing_off(source)


def _backing_off(source: Source) -> bool:
    """Failing passes in a row and the next try still ahead: a decision's pass leaves Git alone too, so
    that an abort or an owed rollback swept every few seconds does not ask a host that is down."""
    return source.consecutive_failures > 0 and source.next_poll_at > timezone.now()


def _hold(source: Source, head: Revision, desired: Any, gate: Gate, result: SyncResult) -> SyncResult:
    """A freeze or a closed sync window: nothing starts, no step goes on by itself, the head is planned.

    The active rollout still carries out what people decided (an abort, an
    administrator's override); the plan of the head shows what waits.
    """
    moved = _drive_active(source, actor=SYSTEM_ACTOR, retry_failed=False, held=gate)
    rollout_note_head(source, head, desired)
    plan_held(source, desired, head.commit, held=gate.reason)
    result.outcome = Outcome.HELD
    if moved is not None and moved.outcome in (Outcome.ABORTED, Outcome.FAILED, Outcome.SUPERSEDED):
        result.outcome = moved.outcome
    if moved is not None:
        result.summary = moved.summary
        result.errors.extend(moved.failures)
    result.held = gate.reason
    _finish(source, result.errors, held_until=gate.until)
    return result


GATE_FRESH_SECONDS = 1.0


class GateWatch:
    """The source's gate (a freeze, the sync windows) as this pass read it, read again before a step
    when it is older than GATE_FRESH_SECONDS: a freeze set while a pass runs (a consumer gate's wait, a
    long fetch or apply, steps back to back) stops the steps after it within a second."""

    def __init__(self, source: Source, *, manual: bool) -> None:
        self._source = source
        self._manual = manual
        self.held = self._read()

    def __call__(self) -> Gate | None:
        if time.monotonic() - self._read_at > GATE_FRESH_SECONDS:
            self.held = self._read()
        return self.held

    def _read(self) -> Gate | None:
        self._read_at = time.monotonic()
        gate = selectors.source_gate(self._source)
        return None if gate.allows(manual=self._manual) else gate


def _drive(
    rollout: Rollout,
    desired: Any,
    actor: str,
    retry_failed: bool,
    held: Gate | GateWatch | None = None,
    *,
    fresh: bool = False,
) -> StepOutcome:
    """Drives a rollout with its own revision (a queued head waits); undoes one that is no longer valid.
    ``held``: the gate, or a watch of it that each step asks again. ``fresh``: the rollout was read a
    moment ago (``rollout_drive``)."""
    desired = desired or revision_desired_state(rollout.source, rollout.revision)
    if desired is None:
        return _undo_invalid(rollout)
    watch, gate = (held, held.held) if isinstance(held, GateWatch) else (None, held)
    return rollout_drive(
        rollout, desired, actor=actor, retry_failed=retry_failed, held=gate, gate_now=watch, fresh=fresh
    )


def _drive_active(
    source: Source, *, actor: str, retry_failed: bool, held: Gate | GateWatch | None = None
) -> StepOutcome | None:
    """Moves the active rollout with its own, already validated revision; Git is not asked."""
    rollout = (
        Rollout.objects.filter(source=source, phase__in=Rollout.ACTIVE_PHASES)
        .select_related("revision", "source")
        .defer("flag_claims")
        .order_by("-id")
        .first()
    )
    if rollout is None:
        return None
    logs.add_context(rollout=rollout.pk)
    if rollout.abort_requested_by:
        # A rollback needs nothing from Git: the intents hold what every target had before.
        return rollback_asked(rollout)
    try:
        desired = revision_desired_state(rollout.source, rollout.revision)
    except (TemporaryError, PermanentError) as exc:
        log.warning("rollout %s waits: its revision cannot be read from the mirror: %s", rollout.pk, exc)
        return None
    if desired is None:
        return _undo_invalid(rollout)
    try:
        return _drive(rollout, desired, actor, retry_failed, held)
    except CanaryRefused as refused:  # the step cannot go on whatever Git does: the source says why
        return StepOutcome(Outcome.FAILED, {}, [str(refused)])
    except (TemporaryError, PermanentError) as exc:
        # The clusters the step needs refuse or do not answer: the source says so in their own words
        # (a decisions-only pass of a suspended source has no other way to show it).
        log.warning("rollout %s waits: %s", rollout.pk, exc)
        return StepOutcome(Outcome.FAILED, {}, [f"rollout {rollout.pk} waits: {exc}"])


@dataclass(frozen=True)
class _Owed:
    """What earlier passes and people left for this pass to do before it asks Git anything."""

    intents: bool  # intents a crashed run left pending
    rollbacks: bool  # clusters an ended rollout still owes a rollback, due now
    aborts: bool  # an abort someone asked for
    any_rollback: bool = True  # clusters an ended rollout still owes a rollback, due or not
    stamp_drops: bool = False  # the live cache's stamps its writes outdated, held until dropped


def _owed_query(source_id: int, now: datetime) -> QuerySet[Any]:
    return (
        Source.objects.filter(pk=source_id)
        .annotate(
            owes_intents=Exists(intents_pending_query(source_id)),
            owes_rollbacks=Exists(rollbacks_owing(source_id, now)),
            owes_aborts=Exists(_aborts_requested(source_id)),
            owes_any_rollback=Exists(
                Rollout.objects.filter(source_id=source_id).exclude(rollback_pending_clusters=[])
            ),
            owes_stamp_drops=ExpressionWrapper(~Q(stamps_to_drop={}), output_field=BooleanField()),
        )
        .values_list(
            "owes_intents", "owes_rollbacks", "owes_aborts", "owes_any_rollback", "owes_stamp_drops"
        )[:1]
    )


# Every pass asks it: compiled once.
_OWED: PreparedSelect[tuple[bool, bool, bool, bool, bool]] = PreparedSelect(_owed_query, int, datetime)


def _owed(source: Source) -> _Owed:
    """The five questions in one statement: a pass that owes nothing (nearly every poll) pays one. When
    no rollback is owed at all, the pass's steps are told so, and do not ask again."""
    row = _OWED.first(source.pk, timezone.now())
    if row is None:  # deleted meanwhile: ask each question on its own, as before
        return _Owed(intents=True, rollbacks=True, aborts=True)
    owed = _Owed(*row)
    if not owed.any_rollback:
        owed_rollbacks_none(source.pk)
    if not owed.intents:  # nothing pending: a step's plan need not ask where writes are pending
        pending_writes_known(source.pk, {})
    if owed.stamp_drops:  # held by another worker, maybe after this pass read the source: read them now
        held = Source.all_objects.filter(pk=source.pk).values_list("stamps_to_drop", flat=True).first()
        caches.for_source(source.pk).stamps_to_drop = held or {}
    return owed


def _aborts_requested(source: Source | int) -> QuerySet[Rollout]:
    active = Rollout.objects.filter(source=source, phase__in=Rollout.ACTIVE_PHASES)
    return active.exclude(abort_requested_by="")


def _abort_if_requested(source: Source) -> StepOutcome | None:
    """Carries out a requested abort (or a rollback Sluice decided and a crash cut short): how the last
    one ended and every refusal, None without one. A rollback needs nothing from Git: the intents hold
    what was there."""
    last, failures = None, []
    for rollout in _aborts_requested(source).select_related("revision", "source"):
        last = rollback_asked(rollout)
        failures.extend(last.failures)
    return None if last is None else StepOutcome(last.outcome, failures=failures)


def _undo_invalid(rollout: Rollout) -> StepOutcome:
    _roll_back_invalid(rollout)
    return StepOutcome(Outcome.FAILED, {}, [rollout.message])


def _roll_back_invalid(rollout: Rollout) -> None:
    """A rollout whose revision the source's scope no longer allows (an admin narrowed it) is undone."""
    rollout.revision.refresh_from_db()
    errors = "; ".join(_error_text(error) for error in rollout.revision.errors[:3])
    reason = f"revision {rollout.revision.short_commit} is no longer valid for this source: {errors}"
    rollout_rollback(rollout, actor=SYSTEM_ACTOR, reason=reason, phase=Rollout.Phase.FAILED)


_FINISHED: PreparedUpdate = PreparedUpdate(
    lambda source_id, now, error, next_poll_at: (
        Source.objects.filter(pk=source_id),
        {"last_synced_at": now, "last_error": error, "consecutive_failures": 0, "next_poll_at": next_poll_at},
    ),
    int,
    datetime,
    str,
    datetime,
)


# Past the moment a hold ends: the pass then finds the freeze over or the window open.
HOLD_END_MARGIN = timedelta(seconds=1)


def _finish(source: Source, failures: list[str], *, held_until: datetime | None = None) -> None:
    """Ends the pass: its time, its errors, and the next poll. A pass that was held polls again when the
    hold ends, if that comes before the next poll: a freeze that runs out (not lifted) wakes nothing,
    and a window of 30 minutes opening between hourly polls was missed every day, forever."""
    now = timezone.now()
    next_poll_at = now + source.poll_interval
    if held_until is not None:  # a hold that ended while the pass ran: the next poll at once
        next_poll_at = min(next_poll_at, max(now, held_until) + HOLD_END_MARGIN)
    _FINISHED(source.pk, now, "; ".join(failures[:5]), next_poll_at)


def _error_text(error: Mapping[str, Any]) -> str:
    return str(ValidationError.from_dict(dict(error)))


# -- one source, one worker, no request lost ---------------------------------------------------
# Requests never get lost between two workers: a holder looks for new requests only after it released
# the lock, and a caller that finds the source busy records its request and then tries the lock once
# more. Whichever comes last sees the other, so one of them runs the request.


_SOURCE_BY_ID: PreparedSelect[Source] = PreparedSelect(lambda pk: Source.objects.filter(pk=pk)[:1], int)


def _source_to_sync(source_id: int, *, automatic: bool, rollouts_only: bool = False) -> Source | SyncResult:
    """The source, or the result of a sync that does not run: the source is gone, suspended and the
    sync automatic, or being deleted and the sync more than a decision on a rollout."""
    source = _SOURCE_BY_ID.first(source_id)
    if source is None:
        gone = Source.all_objects.filter(pk=source_id).values_list("name", flat=True).first()
        return SyncResult(gone or "", Outcome.GONE)
    return _refusal(source, automatic=automatic, rollouts_only=rollouts_only) or source


def _refusal(source: Source, *, automatic: bool, rollouts_only: bool) -> SyncResult | None:
    """The result of a sync of ``source`` that does not run (``_source_to_sync``), or None."""
    if automatic and not source.automatic_sync_allowed:
        # A push marked it queued: let the next one through once the source is resumed.
        Source.objects.filter(pk=source.pk).update(sync_queued=False)
        return SyncResult(source.name, Outcome.SUSPENDED)
    # A deletion suspends the source at once, "so nothing syncs it meanwhile": a person's sync did,
    # putting out the newest commit (kept, with objects=keep) or starting a rollout that failed the
    # removal. Asked only of a suspended source: every other pass pays nothing for it.
    if source.suspended and not rollouts_only and _being_removed(source):
        log.info("sync of source %s refused: it is being deleted", source.name)
        return SyncResult(source.name, Outcome.SUSPENDED)
    return None


def _being_removed(source: Source) -> bool:
    return SourceRemoval.objects.filter(source=source, status__in=SourceRemoval.ACTIVE_STATUSES).exists()


def source_sync(
    source_id: int,
    *,
    actor: str = SYSTEM_ACTOR,
    retry_failed: bool = False,
    manual: bool = False,
    automatic: bool = False,
    report_rollout: bool = True,
    rollouts_only: bool = False,
    after_failures: int | None = None,
    retry_due: float | None = None,
) -> SyncResult:
    """Fetch, validate, plan, roll out and record one source. Raises SourceBusy when another run holds it.

    ``report_rollout=False``: the result leaves out the rollout's status (``SyncResult.rollout``), one
    query fewer, for a task whose result nobody reads (a push's or a poll's).

    An ``automatic`` sync (a poll, a push, a timer) of a source that does not allow one
    (``Source.automatic_sync_allowed``: suspended) does nothing; one someone asked for always runs.
    ``rollouts_only``: the sync carries out a decision on a rollout (a promote, an abort, a retry, an
    owed rollback); on a suspended source it does only that, without asking Git (``_decisions_only``).
    What came while a pass ran runs next without the person's ``manual`` and ``retry_failed`` (a
    window holds it), not once the source is suspended, and as Sluice after a sync that was not
    automatic (see ``coalesced_actor``).

    ``after_failures``, ``retry_due``: a failed pass's wake (``schedule.source_retry_wake``), which does
    nothing once another pass ran or was claimed since (``_wake_stale``), and leaves no request when a
    pass holds the source: that pass records its own outcome.
    """
    source = _source_to_sync(source_id, automatic=automatic, rollouts_only=rollouts_only)
    if isinstance(source, SyncResult):
        return source
    if after_failures is not None and _wake_stale(source, after_failures, retry_due):
        return SyncResult(source.name, Outcome.COALESCED)
    asked = _Asked(actor, retry_failed, manual, rollouts_only, report_rollout, automatic)
    with logs.log_context(source=source.name):
        runs: list[SyncResult] = []
        requested = False
        while len(runs) < MAX_COALESCED_RUNS:
            if (ran := _next_pass(source, runs, asked)) is None:
                break
            acquired, current = ran
            if current is None:
                break  # removed meanwhile: nothing of it runs any more
            source = current
            if not acquired:
                if runs:
                    break  # another worker took the lock after us; it runs what was requested
                if requested or after_failures is not None:
                    raise SourceBusy(f"source {source.name} is being reconciled by another worker")
                Source.objects.filter(pk=source.pk).update(sync_requested_at=timezone.now())
                requested = True
                continue
            if not _requested_again(source):
                break
        else:
            _carry_on(source, asked.coalesced_actor)
        if not runs:  # removed while the lock waited for a lost pass's claim: nothing of it ran
            return SyncResult(source.name, Outcome.GONE)
        return _combined(runs, manual=manual)


class LaterPassFailed(Exception):
    """A pass run for what came while the asked-for one ran failed. A retry runs it as what it was,
    automatic and as ``actor``, never with the first request's manual sync, retry or person."""

    def __init__(self, error: GitopsError, actor: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.actor = actor


@dataclass(frozen=True)
class _Asked:
    """What a sync was asked for. ``coalesced_actor``: whom the passes after the first run as; nobody
    knows who pushed while a pass ran, so the change log must not name whoever's sync ran first."""

    actor: str
    retry_failed: bool
    manual: bool
    rollouts_only: bool
    report_rollout: bool
    automatic: bool

    @property
    def coalesced_actor(self) -> str:
        return self.actor if self.automatic else SYSTEM_ACTOR


def _next_pass(source: Source, runs: list[SyncResult], asked: _Asked) -> tuple[bool, Source | None] | None:
    """``_locked_pass``, with what a lost pass leaves: None when a later pass is left to a task of its own
    (another worker's pass took the lock between ours and lost its session: the task runs once that
    pass's writes are over, and the passes that ran are reported)."""
    later = bool(runs)
    try:
        return _locked_pass(source, runs, asked)
    except ReconcileLockLost as exc:  # in the pass or as it ended: retried as the pass it was
        if not later:
            raise
        raise LaterPassFailed(TemporaryError(str(exc)), asked.coalesced_actor) from exc
    except TakeoverPending:
        if not later:
            raise
        _carry_on(source, asked.coalesced_actor)
        return None


# The pass about to run takes every request made so far (see ``_requested_again``).
_REQUESTS_TAKEN: PreparedUpdate = PreparedUpdate(
    lambda source_id: (
        Source.objects.filter(pk=source_id),
        {"sync_requested_at": None, "sync_queued": False},
    ),
    int,
)
_QUEUED_TAKEN: PreparedUpdate = PreparedUpdate(
    lambda source_id: (Source.objects.filter(pk=source_id), {"sync_queued": False}), int
)


def _locked_pass(source: Source, runs: list[SyncResult], asked: _Asked) -> tuple[bool, Source | None]:
    """One pass (appended to ``runs``) if the lock is free: whether it was, and the source as the pass
    read it (None: removed meanwhile). A later pass runs with the source as it is now: a scope narrowed
    meanwhile holds."""
    with source_lock(source) as acquired:
        # The first pass reads it again too when the lock waited for a lost pass's claim (seconds): a
        # scope narrowed, a suspend or a deletion asked meanwhile holds, as for a later pass.
        if acquired and (runs or lock_waited()):
            current = Source.objects.filter(pk=source.pk).first()
            if current is None:
                return True, None
            source = current
            if not runs and (
                refused := _refusal(source, automatic=asked.automatic, rollouts_only=asked.rollouts_only)
            ):
                runs.append(refused)
                return True, source
        if acquired:
            # A pass that carries out decisions only (a suspended or backing-off source) does not fetch:
            # what was requested stays for the full pass after it (``_requested_again``).
            decisions_only = asked.rollouts_only and not runs and _without_git(source)
            (_QUEUED_TAKEN if decisions_only else _REQUESTS_TAKEN)(source.pk)
            runs.append(_pass(source, runs, asked, decisions_only=decisions_only))
    return acquired, source


def _pass(source: Source, runs: list[SyncResult], asked: _Asked, *, decisions_only: bool) -> SyncResult:
    """One pass under the lock. Only the first is what was asked for: later ones run what came meanwhile,
    and a later one's failure is retried as what it ran (``LaterPassFailed``), a database's blip too."""
    first = not runs
    try:
        return _measured(
            source,
            asked.actor if first else asked.coalesced_actor,
            retry_failed=asked.retry_failed and first,
            manual=asked.manual and first,
            report_rollout=asked.report_rollout,
            decisions_only=decisions_only,
        )
    except GitopsError as exc:
        if first:
            raise
        raise LaterPassFailed(exc, asked.coalesced_actor) from exc
    except OperationalError as exc:
        if first:
            raise
        blip = TemporaryError(f"the database: {exc}")
        raise LaterPassFailed(blip, asked.coalesced_actor) from exc


def _carry_on(source: Source, actor: str) -> None:
    """Still wanted after the last allowed run: a fresh automatic task carries on (a suspension stops
    it), so a stream of pushes neither starves other sources nor gets dropped. If the broker refuses
    it, beat's sweep carries on instead: the passes that ran did not fail."""
    try:
        schedule.source_sync(source.pk, actor=actor, wait_if_busy=False, automatic=True)
    except Exception:  # the broker away: whatever its transport raises
        log.warning("the broker refused the task carrying on source %s; its poll is due now", source.name)
        schedule.source_poll_due_now(source.pk)


_REQUESTED_AGAIN: PreparedSelect[bool] = PreparedSelect(
    lambda source_id: (
        Source.objects.filter(pk=source_id, sync_requested_at__isnull=False)
        .annotate(allowed=ExpressionWrapper(automatic_sync_filter(), output_field=BooleanField()))
        .values_list("allowed", flat=True)[:1]
    ),
    int,
)


def _requested_again(source: Source) -> bool:
    """Whether a request came while the pass ran, to be run now in another pass. Any request stored
    now came after the pass began, which cleared it: no clock is compared, so a worker whose clock
    lags another's cannot have its request taken for an older one.

    What came meanwhile runs only while the source allows automatic syncs: suspending is a brake.
    Nothing it holds back is lost: a person's sync retries on its own (``wait_if_busy``), a push
    waits for the resume, and beat's sweep finds a due abort again once ``sync_queued`` is clear.
    """
    allowed = _REQUESTED_AGAIN.first(source.pk)
    if allowed is False:  # a push marked it queued: the sweep claims only sources not queued
        Source.objects.filter(pk=source.pk).update(sync_queued=False)
    return allowed is True


def _measured(
    source: Source,
    actor: str,
    *,
    retry_failed: bool,
    manual: bool,
    report_rollout: bool,
    decisions_only: bool,
) -> SyncResult:
    started = time.monotonic()
    try:
        with owed_rollbacks_memo():
            result = _reconcile(
                source,
                actor=actor,
                retry_failed=retry_failed,
                manual=manual,
                report_rollout=report_rollout,
                decisions_only=decisions_only,
            )
    except (TemporaryError, PermanentError):
        metrics.RECONCILES.labels(source.name, "error").inc()
        raise
    elapsed = time.monotonic() - started
    metrics.RECONCILES.labels(source.name, result.outcome).inc()
    metrics.RECONCILE_SECONDS.labels(source.name).observe(elapsed)
    log.info(
        "reconciled source=%s commit=%s outcome=%s in %.2fs",
        source.name,
        result.commit,
        result.outcome,
        elapsed,
    )
    return result


def _combined(runs: list[SyncResult], *, manual: bool = False) -> SyncResult:
    """One result for coalesced runs: the last run's state, with what earlier runs applied. A person's
    sync answers with its own pass (the first), and why the pushes run after it wait, if they do."""
    result = runs[0] if manual else runs[-1]
    if len(runs) == 1:
        return result
    if manual:
        result.held = result.held or runs[-1].held
    elif result.outcome is Outcome.UNCHANGED and any(run.outcome is Outcome.APPLIED for run in runs[:-1]):
        result.outcome = Outcome.APPLIED
    resumed = sum(run.summary.get("resumed", 0) for run in runs)
    if resumed:
        result.summary["resumed"] = resumed
    result.forced_push = any(run.forced_push for run in runs)
    return result


# -- failures ---------------------------------------------------------------------------------


def _retry_after_a_push(failures: int, delay: timedelta, source: Source) -> timedelta:
    """When a source that failed polls again, if a push came during the failed pass: at once after a
    first failure, within its poll interval after later ones (a busy repository pushes during nearly
    every pass, and a source that keeps failing must not be asked every sweep)."""
    return timedelta(0) if failures == 1 else min(delay, source.poll_interval)


def sync_failure_record(source_id: int, error: BaseException) -> SyncResult:
    """Records a failed reconcile on the source, where pages and `gitops status` show it, and backs off.

    A failing Git host or cluster is asked again after the poll interval,
    doubled for every failure in a row (at most an hour), not every sweep.
    """
    source = Source.objects.get(pk=source_id)
    failures = source.consecutive_failures + 1
    delay = retry_delay(source.poll_interval, failures)
    message = str(error) or type(error).__name__
    # A push that came while the failed pass ran may bring the fix: its poll comes sooner than the
    # back-off (no broker needed here, and no race with this update). sync_queued goes too: a push
    # must queue the next try.
    pushed_meanwhile = source.sync_requested_at is not None
    next_try = timezone.now() + (_retry_after_a_push(failures, delay, source) if pushed_meanwhile else delay)
    Source.objects.filter(pk=source_id).update(
        last_error=message[:2000], consecutive_failures=failures, next_poll_at=next_try, sync_queued=False
    )
    _wave_tried_again_at(source_id, next_try, failures)
    log.error(
        "sync failed source=%s failures_in_a_row=%d next_try_in=%ds: %s",
        source.name,
        failures,
        delay.total_seconds(),
        message,
    )
    return SyncResult(source.name, Outcome.FAILED, errors=[message])


def _wake_stale(source: Source, failures: int, due: float | None) -> bool:
    """Whether a failed pass's wake has nothing left to do: a pass ran since (the count of failures in a
    row moved, or the next try did: a poll claimed moves it), or a poll is queued. One that came before
    the next try (sent beyond MAX_WAKE_AHEAD) is sent again for it."""
    next_try = source.next_poll_at
    if source.consecutive_failures != failures or source.sync_queued or next_try is None:
        return True
    if due is not None and abs(next_try.timestamp() - due) > 0.001:
        return True
    if next_try > timezone.now():
        schedule.source_retry_wake(source.pk, next_try, failures=failures)
        return True
    return False


def _wave_tried_again_at(source_id: int, when: datetime, failures: int) -> None:
    """A rollout the failed pass left mid-wave (moving, or waiting on its consumers, a cluster, a timer or
    an analysis; not at an approval gate) is taken up again at the source's next try. Beat's poll does
    that; this wake, just after it and only if nothing ran the source since (``source_retry_wake``),
    makes it independent of beat, as the wakes of a pause and of a cluster wait are (a sweep lost, or none
    at all: the integration tests run no beat, and such a rollout stayed where the failed pass left it
    for good)."""
    mid_wave = Rollout.objects.filter(source_id=source_id, phase__in=Rollout.ACTIVE_PHASES).exclude(
        phase=Rollout.Phase.PAUSED, waiting_for=Waiting.APPROVAL
    )
    if mid_wave.exists():
        schedule.source_retry_wake(source_id, when, failures=failures)


def retry_delay(poll_interval: timedelta, failures: int) -> timedelta:
    """How long a failing source waits for its next try: the poll interval, doubled per failure in a row."""
    if failures <= 0:
        return poll_interval
    doubled: timedelta = poll_interval * 2 ** min(failures - 1, 16)
    return min(doubled, max(MAX_BACKOFF, poll_interval))
