"""The one place that puts work on the queue. Everything is sent after the surrounding transaction commits.

Domain code decides *that* something should run; this module decides *how*:
tasks are sent by name, so nothing here (or anywhere in the domain) imports
``gitops.tasks``, and a task never sees a row its sender had not committed.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Least
from django.utils import timezone

from gitops.celery import app, redis_client
from gitops.errors import TemporaryError
from gitops.models import Source
from gitops.prepared import PreparedUpdate
from gitops.vocabulary import SYSTEM_ACTOR

log = logging.getLogger(__name__)

SYNC_TASK = "gitops.sync_source"
DELIVER_TASK = "gitops.deliver_notification"
REMOVE_TASK = "gitops.remove_source"
PREVIEW_TASK = "gitops.preview_revision"
# Beyond the fetch's own bound: the worker still loads, validates and plans the revision.
PREVIEW_MARGIN_SECONDS = 30
# Takes a preview slot, atomically: drops the slots past their deadline, then either adds this one to
# the person's set and to everyone's, or answers which cap is reached and when its earliest slot runs out.
# KEYS: the person's set, everyone's. ARGV: now, the person's cap, deadline, task id, ttl, everyone's cap
# (a cap of 0 is none).
_TAKE_PREVIEW_SLOT = """
for index, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
end
local caps = {tonumber(ARGV[2]), tonumber(ARGV[6])}
for index, key in ipairs(KEYS) do
  if caps[index] > 0 and redis.call('ZCARD', key) >= caps[index] then
    return {index, redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]}
  end
end
for index, key in ipairs(KEYS) do
  redis.call('ZADD', key, ARGV[3], ARGV[4])
  redis.call('EXPIRE', key, ARGV[5])
end
return false
"""
# Everyone's previews on the workers, by task id: SLUICE_PREVIEWS_TOTAL caps them together.
_ALL_PREVIEWS_KEY = "sluice:previews-all"


class PreviewsBusy(TemporaryError):
    """The person already has as many previews on the workers as ``SLUICE_PREVIEWS_PER_USER`` allows, or
    everyone together as many as ``SLUICE_PREVIEWS_TOTAL`` does."""


# A message header, not an argument: a worker of the release before ignores it (an unknown keyword
# argument would fail the task there during a rolling upgrade).
ASKED_AT_HEADER = "sluice_asked_at"


def _send(
    name: str,
    *,
    kwargs: dict[str, Any],
    eta: datetime | None = None,
    ignore_result: bool = False,
    headers: dict[str, Any] | None = None,
) -> str:
    """``ignore_result``: nobody will ask for the outcome, so the sender does not subscribe to it and
    the worker does not store and publish it (a push or a poll; their outcome is in the database)."""
    # Only where there are some: an automatic send (a push, a poll) is the call it always was.
    if headers:
        return str(
            app.send_task(name, kwargs=kwargs, eta=eta, ignore_result=ignore_result, headers=headers).id
        )
    return str(app.send_task(name, kwargs=kwargs, eta=eta, ignore_result=ignore_result).id)


def source_sync(
    source_id: int,
    *,
    actor: str,
    retry_failed: bool = False,
    wait_if_busy: bool = True,
    manual: bool = False,
    automatic: bool = False,
    result_wanted: bool = False,
    rollouts_only: bool = False,
) -> list[str]:
    """Queues a sync once the transaction commits; the returned list receives the task's id then.

    ``manual``: a person asked for it, so a sync window's ``manualSync`` may let it through.
    ``automatic`` (a poll, a push, a timer) runs only while the source allows it (not suspended);
    a sync someone asked for always runs.
    ``rollouts_only``: it carries out a decision on a rollout (a promote, an abort, a retry); on a
    suspended source that is all it does (Git is not asked).
    ``result_wanted``: the caller hands the task's id to someone who reads its result
    (``gitops sync --wait``, the API). Any other result would be stored in Redis for nobody, and
    the pass would read the rollout's status for it.
    ``rollouts_only`` sends are a decision's (a promote, an abort, a retry): stored by then, so a broker
    that refuses the task does not undo it, nor fail the person's request after the fact. The source's
    poll is made due instead (``source_poll_due_now``), and beat's first sweep the broker takes runs it;
    but for a suspended source, which is not polled, the refusal is raised (``SyncNotQueued``).
    """
    task_ids: list[str] = []
    kwargs = {
        "source_id": source_id,
        "actor": actor,
        "retry_failed": retry_failed,
        "wait_if_busy": wait_if_busy,
        "manual": manual,
        "automatic": automatic,
    }
    if rollouts_only:  # only then: a task in the queue across an upgrade names no unknown option
        kwargs["rollouts_only"] = True
    ignored = not result_wanted
    # A person's sync says when it was asked: delivered again long after (a worker killed mid-task, its
    # message back after the broker's visibility timeout), it runs as an automatic one.
    headers = {ASKED_AT_HEADER: time.time()} if manual or retry_failed else None

    def send() -> None:
        try:
            task_ids.append(_send(SYNC_TASK, kwargs=kwargs, ignore_result=ignored, headers=headers))
        except Exception as exc:
            refused = SyncNotQueued(f"the broker refused the sync of source {source_id}: {exc}")
            # A suspended source's poll never comes, nor does beat's sweep carry a promote on: said.
            if not rollouts_only or not Source.objects.filter(pk=source_id, suspended=False).exists():
                raise refused from exc
            log.exception("the broker refused the sync of source %s; its poll is due now instead", source_id)
            source_poll_due_now(source_id, requested=True)

    transaction.on_commit(send)
    return task_ids


# A sync marked queued this long ago and never started was lost (a broker that failed over, a queue
# purged): the mark is taken over, or pushes would be "already queued" and beat's sweep would skip the
# source's aborts until its next poll, which a suspended source never has.
SYNC_QUEUED_STALE = timedelta(minutes=10)


# Every push asks it (in the web, and in the worker for a push that came during a pass).
_CLAIM_QUEUED_SYNC = PreparedUpdate(
    lambda source_id, now, stale_before: (
        Source.objects.filter(Q(sync_queued=False) | Q(sync_queued_at__lt=stale_before), pk=source_id),
        {"sync_queued": True, "sync_queued_at": now},
    ),
    int,
    datetime,
    datetime,
)


def sync_queued_claim(source_id: int) -> bool:
    """Marks a sync of the source queued unless one is (a compare-and-swap); True when this caller
    claimed it and must queue it. A mark older than SYNC_QUEUED_STALE counts as none."""
    now = timezone.now()
    return bool(_CLAIM_QUEUED_SYNC(source_id, now, now - SYNC_QUEUED_STALE))


def source_sync_once(source_id: int, *, actor: str, backing_off: bool | None = None) -> bool:
    """Queues a sync unless one is queued: a burst of pushes makes one reconcile of the newest commit.

    What asks (a push, a lifted freeze or removed window, a change the live cache saw) may never ask
    again, and GitHub does not redeliver a refused push: a sync the broker refuses is given back as
    a request (see ``source_poll_due_now``), not dropped.

    A source backing off from failures may have a pass queued that carries out decisions only and
    does not fetch (beat's sweep of an owed rollback): there, what asks is stored as a request first,
    which that pass leaves for the full pass after it (stored before the claim, a pass that took the
    queue meanwhile cannot have cleared it). ``backing_off``: whether the caller read the source as
    backing off (False: it is not, nothing more is asked); None: the database is asked in one update."""
    if backing_off is None:
        Source.objects.filter(pk=source_id, consecutive_failures__gt=0).update(
            sync_requested_at=timezone.now()
        )
    elif backing_off:
        Source.objects.filter(pk=source_id).update(sync_requested_at=timezone.now())
    if not sync_queued_claim(source_id):
        return False
    claimed_source_sync(
        source_id,
        actor=actor,
        automatic=True,
        release=partial(source_poll_due_now, source_id, requested=True),
    )
    return True


# A push body sent again asks for a sync at most this often per source (``duplicate_push_sync_slot``).
DUPLICATE_PUSH_SYNC_SECONDS = 10


def duplicate_push_sync_slot(source_id: int, purpose: str = "sync") -> bool:
    """Whether a push body received before may ask for a sync of the source now (``purpose`` "sync"), or
    leave a request for the pass running now ("request"): each once in DUPLICATE_PUSH_SYNC_SECONDS. A
    signature covers the body alone, so whoever saw one (a proxy's log, the host's delivery page) could
    send it again as each pass began, one fetch after another for as long as they liked (before
    2026-12-07). Redis out of reach lets it through: the queue is Redis too."""
    import redis  # noqa: PLC0415 - a dependency of Celery's Redis transport

    try:
        key = f"sluice:duplicate-push-{purpose}:{source_id}"
        return bool(redis_client().set(key, 1, nx=True, ex=DUPLICATE_PUSH_SYNC_SECONDS))
    except redis.RedisError as exc:
        log.warning("cannot count source %s's replayed pushes (%s); letting this one through", source_id, exc)
        return True


def source_poll_due_by(source_id: int, at: datetime) -> None:
    """The source's next poll at ``at`` at the latest: what asked is not lost, only not asked at once."""
    Source.objects.filter(pk=source_id).update(next_poll_at=Least(F("next_poll_at"), Value(at)))


def source_poll_due_now(source_id: int, *, requested: bool = False) -> None:
    """The way around a broker that refused a sync: the source's poll is due now (unless sooner
    already), so beat's first sweep the broker accepts queues it, and its ``sync_queued`` claim is
    given back. ``requested``: stored as a request too, which a pass running now runs next itself,
    with no broker; its end would otherwise put the poll a whole interval away again."""
    now = timezone.now()
    request = {"sync_requested_at": now} if requested else {}
    Source.objects.filter(pk=source_id).update(
        next_poll_at=Least(F("next_poll_at"), Value(now)), sync_queued=False, **request
    )


class TaskNotQueued(Exception):
    """The broker refused a task (its error is the cause); what the caller decided before it is stored."""


class SyncNotQueued(TaskNotQueued):
    """The broker refused a claimed sync, and the claim was given back (the broker's error is its cause)."""


def claimed_source_sync(
    source_id: int,
    *,
    actor: str,
    automatic: bool,
    release: Callable[[], object] | None = None,
    rollouts_only: bool = False,
) -> None:
    """Queues the sync a caller claimed: ``sync_queued`` (a push, beat's sweep of due rollouts) or,
    with its own ``release``, a due poll's ``next_poll_at``. When the broker refuses it, the claim
    goes too: a flag with no task behind it would refuse every later push as "already queued" and
    keep the sweep away, and a poll moved on would wait a whole interval."""
    kwargs = {"source_id": source_id, "actor": actor, "wait_if_busy": False, "automatic": automatic}
    if rollouts_only:  # only then: a task in the queue across an upgrade names no unknown option
        kwargs["rollouts_only"] = True

    def send() -> None:
        try:
            _send(SYNC_TASK, kwargs=kwargs, ignore_result=True)
        except Exception as exc:
            if release is None:
                Source.objects.filter(pk=source_id).update(sync_queued=False)
            else:
                release()
            raise SyncNotQueued(f"the broker refused the sync of source {source_id}: {exc}") from exc

    # In a transaction (a freeze lifted, waking several sources), a refused send must not drop the
    # others' sends, which Django skips after one that raises: each is logged and gives back its own
    # claim. Outside one, it raises to the caller (a webhook answers 503, beat's sweep fails).
    transaction.on_commit(send, robust=transaction.get_connection().in_atomic_block)


# A task held for a later time stays unacknowledged in Redis, which hands it out again after an hour
# (its visibility timeout): wakes further away are made in steps, and beat's sweep covers them anyway.
MAX_WAKE_AHEAD = timedelta(minutes=30)
# How long after a failed source's next try its wake comes (``source_retry_wake``): two of beat's poll
# sweeps, so that where beat runs, its poll has taken the source up by then.
RETRY_WAKE_AFTER_POLL = timedelta(seconds=2 * float(settings.SLUICE_POLL_SWEEP_SECONDS))


def source_retry_wake(source_id: int, when: datetime, *, failures: int) -> None:
    """Wakes a source whose pass failed and left a rollout mid-wave, a little after its next try (``when``)
    and only if nothing has run it since: beat's poll takes it up at ``when`` (when beat runs), and then
    the wake finds ``failures`` or the source's next try changed and does nothing. A wake that collided
    with that poll would run a second pass against a host that is down, or leave a request that cuts the
    back-off short. One due beyond MAX_WAKE_AHEAD comes early, and is sent again for its time. Robust, as
    ``source_sync_at``: beat's poll loses nothing a lost wake would have done."""
    kwargs = {
        "source_id": source_id,
        "wait_if_busy": False,
        "automatic": True,
        "rollouts_only": True,
        "after_failures": failures,
        "retry_due": when.timestamp(),
    }
    eta = min(when + RETRY_WAKE_AFTER_POLL, timezone.now() + MAX_WAKE_AHEAD)
    transaction.on_commit(lambda: _send(SYNC_TASK, kwargs=kwargs, eta=eta, ignore_result=True), robust=True)


def source_sync_at(source_id: int, when: datetime) -> None:
    """Wakes a source at ``when`` (a pause ends, a consumer gate's next slice). Beat's sweep does it
    too: a lost wake loses nothing, so a broker that refuses it is logged and nothing else
    (``robust``). Called during a pass, outside a transaction, with the rollout's state already saved:
    raising would end the pass there, report an unforeseen failure and back the source off."""
    # A rollout's own business: a source backing off from its Git host moves the rollout on from stored
    # state without fetching (a wave waiting on its consumers wakes its source every slice, and each
    # wake fetched, three times with its retries, however far away the back-off's next try was).
    kwargs = {"source_id": source_id, "wait_if_busy": False, "automatic": True, "rollouts_only": True}
    eta = min(when, timezone.now() + MAX_WAKE_AHEAD)
    transaction.on_commit(lambda: _send(SYNC_TASK, kwargs=kwargs, eta=eta, ignore_result=True), robust=True)


def source_removal(removal_id: int) -> None:
    """Runs a source's removal (keep or prune each object, then delete the source) on a worker."""
    kwargs = {"removal_id": removal_id}
    transaction.on_commit(lambda: _send(REMOVE_TASK, kwargs=kwargs))


def notification_delivery(notification_id: int) -> None:
    """Delivers an outbox entry. ``robust``: a broker that is down must not fail what already committed;
    the entry stays pending and the sweeper sends it once the broker is back."""
    kwargs = {"notification_id": notification_id}
    transaction.on_commit(lambda: _send(DELIVER_TASK, kwargs=kwargs), robust=True)


def revision_preview(source_id: int, revision: str, *, actor: str) -> str:
    """Asks a worker to plan any revision of a source (the web has no mirror and no cluster access);
    the task id is returned at once. Nothing is written, so there is no transaction to wait for.

    Raises ``PreviewsBusy`` when ``actor`` already has ``SLUICE_PREVIEWS_PER_USER`` previews waiting
    or running, or everyone together ``SLUICE_PREVIEWS_TOTAL``: each costs the workers that reconcile a
    fetch and a whole plan; ``TaskNotQueued`` when the broker refuses it.
    """
    task_id = str(uuid.uuid4())
    _preview_slot_take(actor, task_id)
    kwargs = {"source_id": source_id, "revision": revision, "actor": actor}
    try:
        # Not run at all once nobody waits for it any more (its slot ran out too): a backlog of
        # reconciles does not turn into previews run later for nobody.
        app.send_task(PREVIEW_TASK, kwargs=kwargs, task_id=task_id, expires=preview_deadline_seconds())
    except Exception as exc:  # the broker away: whatever its transport raises
        preview_slot_release(actor, task_id)
        raise TaskNotQueued(f"the broker refused the preview of source {source_id}: {exc}") from exc
    except BaseException:
        preview_slot_release(actor, task_id)
        raise
    return task_id


def syncs_requested_meanwhile(source_ids: list[int]) -> None:
    """A person's decision held these sources' reconcile locks (``decisions.decision_locks``). A push
    or a poll that came meanwhile found a source busy and left only its request, which a worker
    holding the lock runs after its pass, and a person's decision does not: queue those now, or,
    with the broker away, make their polls due."""
    requested = Source.objects.filter(pk__in=source_ids, sync_requested_at__isnull=False)
    for source_id in requested.values_list("pk", flat=True):
        try:
            source_sync(source_id, actor=SYSTEM_ACTOR, wait_if_busy=False, automatic=True)
        except Exception:  # the broker away: whatever its transport raises
            log.warning("the broker refused a sync requested while source %s was held", source_id)
            source_poll_due_now(source_id, requested=True)


def preview_deadline_seconds() -> int:
    """How long the web waits for a preview's answer, and a preview for a worker (its task's expiry)."""
    return int(settings.SLUICE_PREVIEW_TIMEOUT_SECONDS) + PREVIEW_MARGIN_SECONDS


def preview_run_seconds() -> int:
    """How long a worker may spend on a preview once it starts it: its fetch (SLUICE_PREVIEW_TIMEOUT_SECONDS),
    then its plan: the clusters' reads, bounded by SLUICE_CLUSTER_LIST_DEADLINE, one more connect and read
    timeout for the reads of the consumers, and PREVIEW_MARGIN_SECONDS to load, validate and plan the files.
    The preview task's time limit (``gitops.tasks.PREVIEW_TIME_LIMIT``): it covers a plan whose reads of
    the clusters all run to their deadlines, and stops one that runs past them."""
    reads = float(settings.SLUICE_CLUSTER_CONNECT_TIMEOUT) + float(settings.SLUICE_CLUSTER_READ_TIMEOUT)
    plan = float(settings.SLUICE_CLUSTER_LIST_DEADLINE) + reads + PREVIEW_MARGIN_SECONDS
    return math.ceil(int(settings.SLUICE_PREVIEW_TIMEOUT_SECONDS) + plan)


def preview_slot_seconds() -> int:
    """How long a preview holds its slot unless its worker gives it back: a preview may wait in the
    queue until its task expires (``preview_deadline_seconds``) and then run (``preview_run_seconds``).
    A slot that ran out sooner would let another preview in while it still ran, past the caps."""
    return preview_deadline_seconds() + preview_run_seconds()


def _preview_slots_key(actor: str) -> str:
    return f"sluice:previews:{actor}"


def _preview_slot_take(actor: str, task_id: str) -> None:
    """Holds one of the actor's preview slots, and one of everyone's, until the worker is done with
    ``task_id`` (it gives them back) or no worker can still be running it (``preview_slot_seconds``: a
    worker that died). Redis out of reach lets it through: the queue is Redis too, so that shows at once."""
    import redis  # noqa: PLC0415 - a dependency of Celery's Redis transport

    caps = (int(settings.SLUICE_PREVIEWS_PER_USER), int(settings.SLUICE_PREVIEWS_TOTAL))
    if max(caps) <= 0:
        return
    now, deadline = time.time(), preview_slot_seconds()
    keys = (_preview_slots_key(actor), _ALL_PREVIEWS_KEY)
    try:
        busy = redis_client().eval(
            _TAKE_PREVIEW_SLOT,
            2,
            *keys,
            now,
            max(caps[0], 0),
            now + deadline,
            task_id,
            deadline,
            max(caps[1], 0),
        )
    except redis.RedisError as exc:
        log.warning("cannot count %s's previews (%s); letting this one through", actor, exc)
        return
    if not busy:
        return
    which, busy_until = int(busy[0]), float(busy[1])
    wait = max(1, int(busy_until - now) + 1)
    held = f"{actor} already has {caps[0]}" if which == 1 else f"everyone together already has {caps[1]}"
    raise PreviewsBusy(
        f"{held} preview(s) on the workers; wait for one to finish (at most {wait}s)", delay=wait
    )


def preview_slot_release(actor: str, task_id: str) -> None:
    """A worker is done with a preview: its slot is free at once, not only at its deadline."""
    import redis  # noqa: PLC0415 - a dependency of Celery's Redis transport

    try:
        redis_client().pipeline(transaction=False).zrem(_preview_slots_key(actor), task_id).zrem(
            _ALL_PREVIEWS_KEY, task_id
        ).execute()
    except redis.RedisError as exc:
        log.warning("cannot free %s's preview slot (%s); it frees itself at its deadline", actor, exc)


def revision_preview_answer(task_id: str, *, wait: float = 0) -> dict[str, Any] | None:
    """A preview's answer (``gitops.preview.RevisionPreview.as_dict``); None while no worker gave one
    (within ``wait`` seconds), or once the result backend forgot it (CELERY_RESULT_EXPIRES)."""
    result: AsyncResult[Any] = AsyncResult(task_id, app=app)
    if wait:
        try:
            result.get(timeout=wait, propagate=False)
        except CeleryTimeoutError:
            return None
    if not result.ready() or not isinstance(result.result, dict):
        return None
    return result.result
