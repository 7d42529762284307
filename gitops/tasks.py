"""Celery tasks. Each is thin: it takes ids, calls a service and returns plain data.

Only temporary errors are retried; a busy source is retried quickly, since the
run holding it finishes soon and also picks up the request. A task whose worker
process died SLUICE_MAX_TASK_DELIVERIES times while running it is not started
again (``gitops.celery.redelivered_too_often``), and its failure is recorded.
"""

import logging
import os
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, OperationalError, connection
from django.utils import timezone

from gitops import polling, preview, schedule
from gitops.celery import app, redelivered_too_often
from gitops.errors import PermanentError, TemporaryError
from gitops.locks import ReconcileLockLost, SourceBusy, TakeoverPending
from gitops.reconcile import LaterPassFailed, source_sync, sync_failure_record
from gitops.record import notifications
from gitops.source_removal import source_removal_fail, source_removal_run
from gitops.vocabulary import SYSTEM_ACTOR, Outcome, PreviewOutcome

log = logging.getLogger(__name__)

BUSY_RETRY_SECONDS = 1
BUSY_MAX_RETRIES = 600
# A failed pass's wake that finds the source held asks again this often, this many times (two minutes).
WAKE_BUSY_RETRY_SECONDS = 5
WAKE_BUSY_RETRIES = 24
TEMPORARY_MAX_RETRIES = 2


class WorkerDied(PermanentError):
    """The worker process running a task died (killed, out of memory, crashed) each time it ran it."""

    def __init__(self, deaths: int) -> None:
        super().__init__(
            f"the sync was stopped: the worker process running it died {deaths} times "
            "(killed, out of memory or crashed), so it was not started again; "
            "the next sync (a push, a poll or `gitops sync`) tries anew"
        )


def backoff(retries: int, delay: float | None = None) -> float:
    return delay if delay is not None else float(min(2**retries, 300))


@app.task(name="gitops.ping")
def ping(payload: str) -> dict[str, str | int]:
    """Round-trips through a worker; used by health checks and the smoke tests."""
    return {"payload": payload, "hostname": socket.gethostname(), "pid": os.getpid()}


@app.task(name="gitops.sync_source", bind=True, max_retries=None)
def sync_source(
    self: Task[Any, Any],
    source_id: int,
    *,
    actor: str = SYSTEM_ACTOR,
    retry_failed: bool = False,
    wait_if_busy: bool = True,
    manual: bool = False,
    automatic: bool = False,
    rollouts_only: bool = False,
    temporary_tries: int = 0,
    after_failures: int | None = None,
    retry_due: float | None = None,
) -> dict[str, Any]:
    """``temporary_tries``: retries after a temporary error so far, counted apart from the retries of a
    busy source (Celery's own count has both: a person's sync that waited for a pass would otherwise
    give up at its first blip)."""
    if died := redelivered_too_often(self):
        return sync_failure_record(source_id, WorkerDied(died)).as_dict()
    if (manual or retry_failed) and _asked_long_ago(self):
        log.warning("a person's sync of source %s, asked long ago, runs as an automatic one", source_id)
        actor, manual, retry_failed, automatic = SYSTEM_ACTOR, False, False, True
    try:
        return source_sync(
            source_id,
            actor=actor,
            retry_failed=retry_failed,
            manual=manual,
            automatic=automatic,
            rollouts_only=rollouts_only,
            after_failures=after_failures,
            retry_due=retry_due,
            # Sent with ignore_result (a push, a poll): the result is stored nowhere and read by nobody.
            report_rollout=not self.request.ignore_result,
        ).as_dict()
    except TakeoverPending as exc:
        # No pass is running to take the request over: this one runs once the lost pass's writes are over.
        raise self.retry(exc=exc, countdown=exc.delay or BUSY_RETRY_SECONDS) from exc
    except ReconcileLockLost as exc:
        # The pass stopped writing; a retry (this task again) waits for its writes, then finishes them.
        # Counted as a blip: a loss that comes back every time is recorded, not retried for ever.
        return _sync_failed(self, source_id, TemporaryError(str(exc)), temporary_tries, {})
    except SourceBusy as exc:
        return _source_busy(self, exc, source_id, wait_if_busy=wait_if_busy, after_failures=after_failures)
    except LaterPassFailed as failed:
        # What came meanwhile failed: retried as what it ran, never as the request that ran first
        # (a person's sync through a manual-only window would release the pushes behind it).
        as_it_ran = {**COALESCED_PASS, "actor": failed.actor}
        return _sync_failed(self, source_id, failed.error, temporary_tries, as_it_ran)
    except (TemporaryError, PermanentError) as exc:
        return _sync_failed(self, source_id, exc, temporary_tries, {})
    except OperationalError as exc:
        # PostgreSQL ended a transaction in a deadlock or a serialization failure, or went away a moment:
        # a blip, retried soon, rather than a failure that backs the source off for a poll interval.
        return _sync_failed(self, source_id, TemporaryError(f"the database: {exc}"), temporary_tries, {})
    except Exception as exc:
        # Anything unforeseen (a database error on odd input, a bug) is shown on the
        # source instead of failing silently on every poll.
        log.exception("sync of source %s failed unexpectedly", source_id)
        return sync_failure_record(source_id, exc).as_dict()


def _asked_long_ago(task: Task[Any, Any]) -> bool:
    """Whether a person's sync was asked for longer ago than SLUICE_PERSONS_SYNC_STALE_SECONDS: a message
    the broker delivered again an hour later (its worker killed mid-task) carried the person's manual
    sync through a manual-only window, and their retry of a failed step, to whatever the head was then."""
    asked_at = (getattr(task.request, "headers", None) or {}).get(schedule.ASKED_AT_HEADER)
    if not isinstance(asked_at, int | float):
        return False
    return time.time() - asked_at > settings.SLUICE_PERSONS_SYNC_STALE_SECONDS


def _source_busy(
    task: Task[Any, Any], exc: SourceBusy, source_id: int, *, wait_if_busy: bool, after_failures: int | None
) -> dict[str, Any]:
    """A sync that found its source held by another: coalesced, or asked again (raises ``Retry``)."""
    # The running reconcile takes the request over (coalesced); only a caller awaiting this task retries.
    if not wait_if_busy:
        if after_failures is not None and task.request.retries < WAKE_BUSY_RETRIES:
            # A failed pass's wake leaves no request; a preview or a person's decision holding the
            # source takes up none, so the wake asks again (a pass that held it moved the count).
            raise task.retry(exc=exc, countdown=WAKE_BUSY_RETRY_SECONDS) from exc
        return {"source_id": source_id, "outcome": Outcome.COALESCED}
    if task.request.retries >= BUSY_MAX_RETRIES:
        raise exc
    raise task.retry(exc=exc, countdown=BUSY_RETRY_SECONDS) from exc


# How a later pass of a sync ran (gitops.reconcile.source_sync): automatic, without the first request's
# manual sync, retry or decisions-only, and coalesced into a running pass when the source is busy.
COALESCED_PASS = {
    "manual": False,
    "retry_failed": False,
    "rollouts_only": False,
    "automatic": True,
    "wait_if_busy": False,
    # A failed pass's wake that ran a pass: what came meanwhile is no wake of it.
    "after_failures": None,
    "retry_due": None,
}


def _sync_failed(
    task: Task[Any, Any], source_id: int, error: Exception, tries: int, retry_with: dict[str, Any]
) -> dict[str, Any]:
    """A blip is retried a few times (with ``retry_with`` over the task's own arguments); past that, or
    for a permanent error, the failure is recorded and the source backs off (``sync_failure_record``),
    so a host that stays down is not asked every sweep."""
    if isinstance(error, TemporaryError) and tries < TEMPORARY_MAX_RETRIES:
        log.warning("sync of source %s failed temporarily, retrying: %s", source_id, error)
        kwargs = {**(task.request.kwargs or {}), **retry_with, "temporary_tries": tries + 1}
        raise task.retry(exc=error, countdown=backoff(tries, error.delay), kwargs=kwargs) from error
    return sync_failure_record(source_id, error).as_dict()


@app.task(name="gitops.poll_sources", bind=True)
def poll_sources(self: Task[Any, Any]) -> list[int]:
    """Beat runs this every few seconds; it enqueues the sources whose poll is due."""
    if redelivered_too_often(self):
        return []  # the next sweep comes within seconds
    claimed_at = timezone.now()
    due_polls = set(polling.sources_claim_due(claimed_at))
    # Due rollouts are filtered there already: a suspended source's timers wait, its aborts do not.
    try:
        due_rollouts = set(polling.sources_with_due_rollouts(polled=due_polls))
    except DatabaseError:  # raised, the due polls claimed above were lost: each moved on an interval
        log.exception("the sweep could not look for due rollouts")
        due_rollouts = set()
    # Every claim (a poll's next_poll_at, a due rollout's sync_queued) is sent or given back.
    sends: list[Callable[[], object]] = [
        partial(
            schedule.claimed_source_sync,
            i,
            actor=SYSTEM_ACTOR,
            automatic=True,
            release=partial(polling.source_poll_due_again, i, claimed_at),
        )
        for i in sorted(due_polls)
    ]
    sends += [
        partial(schedule.claimed_source_sync, i, actor=SYSTEM_ACTOR, automatic=False, rollouts_only=True)
        for i in sorted(due_rollouts)
    ]
    try:
        orphaned = polling.sources_claim_orphaned_requests(claimed=due_polls | due_rollouts)
    except DatabaseError:  # the claims above are sent (or given back) all the same; the next sweep tries
        log.exception("the sweep could not look for requests left by a pass that died")
        orphaned = []
    sends += [partial(schedule.claimed_source_sync, i, actor=SYSTEM_ACTOR, automatic=True) for i in orphaned]
    # A removal whose task was lost is sent again; refused, it is claimed again once the sweep's wait is
    # over (``polling.REMOVAL_RESEND_AFTER``).
    try:
        stale_removals = polling.removals_claim_stale(claimed_at)
    except DatabaseError:  # as above: the claims made are sent all the same
        log.exception("the sweep could not look for removals whose task was lost")
        stale_removals = []
    sends += [partial(schedule.source_removal, i) for i in stale_removals]
    refused: Exception | None = None
    for send in sends:
        try:
            send()
        # The broker is away: the rest are still tried (each gives back its own claim), then the
        # sweep fails; the next one, seconds later, claims them again.
        except Exception as exc:
            refused = exc
    if refused is not None:
        raise refused
    return sorted(due_polls | due_rollouts | set(orphaned))


@app.task(name="gitops.remove_source", bind=True, max_retries=None)
def remove_source(self: Task[Any, Any], removal_id: int, temporary_tries: int = 0) -> dict[str, Any]:
    """Keeps or prunes every object of a source being deleted, then deletes it (gitops.source_removal).
    ``temporary_tries``: retries after a cluster that did not answer, apart from those of a busy source."""
    if died := redelivered_too_often(self):
        return _removal_state(source_removal_fail(removal_id, str(WorkerDied(died))))
    try:
        return _removal_state(source_removal_run(removal_id))
    except ReconcileLockLost as exc:
        if temporary_tries >= TEMPORARY_MAX_RETRIES:
            return _removal_state(source_removal_fail(removal_id, str(exc)))
        kwargs = {**(self.request.kwargs or {}), "temporary_tries": temporary_tries + 1}
        raise self.retry(exc=exc, countdown=BUSY_RETRY_SECONDS, kwargs=kwargs) from exc
    except SourceBusy as exc:
        if self.request.retries >= BUSY_MAX_RETRIES:
            return _removal_state(source_removal_fail(removal_id, str(exc)))
        raise self.retry(exc=exc, countdown=exc.delay or BUSY_RETRY_SECONDS) from exc
    except (TemporaryError, OperationalError) as exc:
        # A cluster that did not answer; or PostgreSQL ended a transaction in a deadlock or a serialization
        # failure, or went away a moment: retried, as a sync's are, not a removal failed for good.
        if temporary_tries >= TEMPORARY_MAX_RETRIES:
            why = "the cluster did not answer" if isinstance(exc, TemporaryError) else "the database"
            return _removal_state(source_removal_fail(removal_id, f"{why}: {exc}"))
        kwargs = {**(self.request.kwargs or {}), "temporary_tries": temporary_tries + 1}
        delay = exc.delay if isinstance(exc, TemporaryError) else None
        raise self.retry(exc=exc, countdown=backoff(temporary_tries, delay), kwargs=kwargs) from exc
    except Exception as exc:
        log.exception("removal %s failed unexpectedly", removal_id)
        return _removal_state(source_removal_fail(removal_id, f"{type(exc).__name__}: {exc}"))


def _removal_state(removal: Any) -> dict[str, Any]:
    return {"removal": removal.pk, "source": removal.source_name, "status": removal.status}


# A preview holds its slot for as long as it may wait in the queue and then run
# (schedule.preview_slot_seconds): its worker ends it once it has run that long (the hard limit, which ends
# the pool process too), so it never runs past its slot. PREVIEW_STOP_SECONDS before that, the soft limit
# stops it where it is, so that it answers, gives its slot back and leaves the process alive: the hard
# limit is only the backstop for a preview that does not unwind in that time. Nobody retries a preview,
# and a read of a cluster that hangs past its own timeouts, or a plan that never ends, held a worker
# process with no bound.
PREVIEW_STOP_SECONDS = 10
PREVIEW_TIME_LIMIT = schedule.preview_run_seconds()
PREVIEW_SOFT_TIME_LIMIT = PREVIEW_TIME_LIMIT - PREVIEW_STOP_SECONDS


class PreviewTask(Task[Any, Any]):
    def on_failure(
        self, exc: Exception, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], einfo: Any
    ) -> None:
        # Past the hard limit the pool ended the process mid-preview, before its `finally`: the worker's
        # main process calls this, and the slot is free now rather than at the slot's own deadline.
        actor = kwargs.get("actor")
        if isinstance(exc, TimeLimitExceeded) and isinstance(actor, str):
            schedule.preview_slot_release(actor, task_id)


@app.task(
    name="gitops.preview_revision",
    bind=True,
    base=PreviewTask,
    soft_time_limit=PREVIEW_SOFT_TIME_LIMIT,
    time_limit=PREVIEW_TIME_LIMIT,
    # The page tells a preview a worker runs, which may answer until its time limit, from one no worker
    # took up, which answers nothing once its task expires (dashboard.previews).
    track_started=True,
)
def preview_revision(self: PreviewTask, source_id: int, revision: str, actor: str) -> dict[str, Any]:
    """Plans any revision of a source for the web (dashboard, API); applies and records nothing.
    Never retried: whoever asked is waiting, and asks again."""
    try:
        if redelivered_too_often(self):
            return {"outcome": PreviewOutcome.FAILED.value, "detail": "the worker running it died"}
        return preview.revision_preview_answer(source_id, revision, actor=actor)
    except SoftTimeLimitExceeded:
        log.warning("preview of source %s stopped at its time limit", source_id)
        # The limit may have struck mid-query: the process's next task starts on a session of its own.
        connection.close()
        return preview.revision_timed_out(PREVIEW_SOFT_TIME_LIMIT)
    except Exception:
        log.exception("preview of source %s failed unexpectedly", source_id)
        return {"outcome": PreviewOutcome.FAILED.value, "detail": "the preview failed; see the worker's log"}
    finally:
        if self.request.id is not None:
            schedule.preview_slot_release(actor, self.request.id)


# Tries at 0, 1, 3, 7 ... 255 s, then every 5 minutes: about an hour in all. With 8, a receiver redeployed
# for 5 minutes lost every event of that time for good (an approver never told a rollout paused).
NOTIFY_MAX_RETRIES = 20


@app.task(name="gitops.deliver_notification", bind=True, max_retries=NOTIFY_MAX_RETRIES)
def deliver_notification(self: Task[Any, Any], notification_id: int) -> bool:
    """Delivers one CloudEvent, retrying with exponential backoff; never blocks a rollout."""
    if redelivered_too_often(self):
        notifications.give_up(notification_id)
        return False
    if notifications.deliver(notification_id, retry_in=backoff(self.request.retries)):
        return True
    if self.request.retries >= NOTIFY_MAX_RETRIES:
        notifications.give_up(notification_id)
        return False
    raise self.retry(countdown=backoff(self.request.retries))


# -- housekeeping (beat) ------------------------------------------------------------------


@app.task(name="gitops.sweep_notifications")
def sweep_notifications() -> list[int]:
    """Re-enqueues pending notifications whose delivery task never ran (the broker failed)."""
    claimed = notifications.claim_overdue()
    for notification_id in claimed:
        schedule.notification_delivery(notification_id)
    return claimed


@app.task(name="gitops.purge_old_records")
def purge_old_records() -> dict[str, int]:
    """Deletes what is past its retention (see gitops.retention); the change log is never touched."""
    from gitops import retention  # noqa: PLC0415 - keeps this housekeeping block self-contained

    with retention.purge_alone() as alone:
        if not alone:
            log.info("a purge is running already; this one is skipped")
            return {}
        return retention.purge().as_dict()
