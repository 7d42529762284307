"""The source's reconcile lock: a PostgreSQL advisory lock held for a whole pass (see ``reconcile``).

People's decisions that must not interleave with a pass (waiving an owed rollback, forgetting a
cluster) take it too, waiting a little for a pass under way to end.

The lock is the database session's: a session that ends mid-pass (PostgreSQL restarted, a connection
dropped, ``pg_terminate_backend``) frees it while the pass's cluster writes may still be going out on
other threads. So a pass's writes are fenced (``PassFence``): at most a second after the pass last
showed its session alive, a write waits for it to show that again, and stops the pass when it cannot;
and a pass that takes over a source whose last pass ended that way waits until that pass's last sign
of life is ``SLUICE_PASS_TAKEOVER_SECONDS`` old (``PassClaim``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, OperationalError, connection, connections, transaction

from gitops.errors import TemporaryError
from gitops.models import PassClaim, Source

LOCK_CLASS = 0x51C3
# Every source's rollout starts that publish flag keys, one at a time (``flag_keys_lock``).
FLAG_KEYS_LOCK = 0x51C4
WAIT_SECONDS = 30.0  # how long a person's decision waits for a pass under way
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE when lock_timeout ends a wait


FENCE_CHECK_SECONDS = 1.0  # how long a pass writes on after last showing that its session is alive
TAKEOVER_ATTEMPTS = 2  # a wait for a lost pass's claim, then one more try
TAKEOVER_MARGIN = 0.5  # seconds slept past a lost claim's grace

log = logging.getLogger(__name__)


class SourceBusy(TemporaryError):
    """Another worker is reconciling this source right now."""


class TakeoverPending(SourceBusy):
    """The lock is free, but a pass that held it lost its session moments ago and may still be
    writing, even after waiting for the one before: ``delay`` seconds more. Nobody else will run what
    was asked."""

    def __init__(self, source: Source, delay: float) -> None:
        super().__init__(
            f"source {source.name}: the pass before lost its database session and may still be writing; "
            f"this pass waits {delay:.0f} s more (SLUICE_PASS_TAKEOVER_SECONDS)",
            delay=delay,
        )


class ReconcileLockLost(Exception):
    """This pass's database session, and with it the source's lock, ended mid-pass: another worker may
    hold the lock now, so the pass writes nothing more, and what it left pending waits for the pass that
    takes over. Not a ``GitopsError``: no stage takes it for a cluster's or Git's failure and goes on;
    the tasks retry it."""


@contextmanager
def source_lock(source: Source) -> Iterator[bool]:
    """Yields whether this process now holds the source's reconcile lock; while it does, the cluster
    writes of the pass are fenced (``pass_fence``).

    When the pass before lost its session and may still be writing, this waits here until that pass's
    claim is old enough (at most SLUICE_PASS_TAKEOVER_SECONDS): a task retried instead would count as
    finished, and a task that kills its worker would escape ``redelivered_too_often``. Raises
    ``TakeoverPending`` (nothing held) if another lost pass is found after that wait."""
    for attempt in range(TAKEOVER_ATTEMPTS):
        locked, lost_for = _lock_and_look(source)
        if not locked:
            yield False
            return
        if lost_for <= 0:
            break
        _unlock(source)
        delay = max(1.0, lost_for)
        if attempt == TAKEOVER_ATTEMPTS - 1:
            raise TakeoverPending(source, delay)
        log.warning(
            "source %s: the pass before lost its database session; waiting %.1f s", source.name, delay
        )
        time.sleep(delay + TAKEOVER_MARGIN)  # the database's clock may run a little behind this one
    fence = PassFence(source)
    fence.waited = attempt > 0
    token = _current_fence.set(fence)
    try:
        yield True
    except BaseException as failed:
        _current_fence.reset(token)
        lost = _release(source, fence)
        if lost is not None and isinstance(failed, DatabaseError):
            # The pass's own statements met the lost session before its fence did.
            raise ReconcileLockLost(str(lost)) from failed
        raise
    else:
        _current_fence.reset(token)
        if (lost := _release(source, fence)) is not None:
            if fence.lost is not None:  # its writes stopped: the pass did not finish
                raise lost
            # The pass ended, its statements committed; only the release met the lost session.
            log.warning("source %s: %s, after the pass ended", source.name, lost)


def lock_waited() -> bool:
    """Whether the pass this thread runs waited for a lost pass's claim before it took the source's
    lock (up to SLUICE_PASS_TAKEOVER_SECONDS): what it read of the source before is that old."""
    fence = _current_fence.get()
    return fence is not None and fence.waited


def pass_fence() -> Callable[[], None]:
    """The fence of the pass this thread runs, to be called before each cluster write (also from the
    pass's other threads: it is thread-safe); a no-op outside a pass (a command, a test)."""
    fence = _current_fence.get()
    return fence if fence is not None else _unfenced


def _unfenced() -> None:
    return None


class PassFence:
    """Calls raise ``ReconcileLockLost`` once the session that holds the lock is gone.

    The first call claims the source (``PassClaim``), so a pass that writes nothing writes nothing to
    the database either; a call more than FENCE_CHECK_SECONDS after the last proof renews the claim.
    Both hold only while the lock's session holds the lock, and run on that session, whichever thread
    calls; the writes wait for the answer, so a session that hangs stops them too."""

    def __init__(self, source: Source) -> None:
        self._source = source
        self.holder = uuid.uuid4().hex
        self.waited = False  # for a lost pass's claim before the lock was taken (``lock_waited``)
        self._wrapper: Any = connections[DEFAULT_DB_ALIAS]  # this thread's: the one holding the lock
        self.session = self._wrapper.connection
        self._guard = threading.Lock()
        self.claimed = False
        self._proved_at = -math.inf
        self.lost: ReconcileLockLost | None = None

    def __call__(self) -> None:
        if self.lost is None and time.monotonic() - self._proved_at <= FENCE_CHECK_SECONDS:
            return
        with self._guard:
            if self.lost is None and time.monotonic() - self._proved_at > FENCE_CHECK_SECONDS:
                asked_at = time.monotonic()
                renewed = self._renewed()
                if renewed is None:
                    self.lost = ReconcileLockLost(
                        f"the database session holding source {self._source.name}'s reconcile lock "
                        "ended mid-pass; this pass stops writing, the next one finishes its work"
                    )
                elif renewed:
                    self._proved_at = asked_at  # the writes after it went out after it was asked
            if self.lost is not None:
                raise self.lost

    def _renewed(self) -> bool | None:
        """Claims the source, or renews the claim, if the lock's session still holds the lock: True;
        None once it does not. Straight on the driver's connection, since Django's wrapper belongs to
        the pass's first thread. Inside a transaction (never, for a pass's writes) a claim would show
        only at its commit, too late to hold a pass taking over: the session is asked, and the next
        write asks again (False)."""
        if self.session is None or self._wrapper.connection is not self.session:
            return None  # reconnected: a session of its own, without the lock
        try:
            with self.session.cursor() as cursor:
                if self._wrapper.in_atomic_block:
                    cursor.execute(_HOLDS, [LOCK_CLASS, self._source.pk])
                    return False if cursor.fetchone()[0] else None
                if not self.claimed:
                    return self._claimed(cursor)
                cursor.execute(_RENEW, [self._source.pk, self.holder, LOCK_CLASS, self._source.pk])
                return True if cursor.rowcount == 1 else None
        except Exception as exc:  # whatever the driver raises for a session that is gone
            log.warning("source %s: its reconcile lock is lost: %s", self._source.name, exc)
            return None

    def _claimed(self, cursor: Any) -> bool | None:
        """The claim, before the pass's first write. The lock's statement read the claims as they were
        just before it took the lock: a lost pass's claim committed in between is found here, and this
        write waits for it as the lock would have (once: a second one cannot come, the lock is held)."""
        grace = float(settings.SLUICE_PASS_TAKEOVER_SECONDS)
        for attempt in range(TAKEOVER_ATTEMPTS):
            cursor.execute(_CLAIM, [self._source.pk, self.holder, LOCK_CLASS, self._source.pk, grace])
            if cursor.rowcount == 1:
                self.claimed = True
                return True
            cursor.execute(_HOLDS_AND_LOST_FOR, [LOCK_CLASS, self._source.pk, grace, self._source.pk])
            holds, lost_for = cursor.fetchone()
            if not holds or attempt == TAKEOVER_ATTEMPTS - 1:
                return None
            log.warning("source %s: a lost pass's claim came as the lock did; waiting", self._source.name)
            time.sleep(float(lost_for or 0.0) + TAKEOVER_MARGIN)
        return None


_current_fence: ContextVar[PassFence | None] = ContextVar("sluice_pass_fence", default=None)

_CLAIMS = PassClaim._meta.db_table
# Whether this session holds the source's lock (a two-key advisory lock has objsubid 2).
_HOLDS = """
SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
    AND classid = %s AND objid = %s AND objsubid = 2 AND granted)
"""
_CLAIM = f"""
INSERT INTO {_CLAIMS} AS claim (source_id, holder, alive_at) SELECT %s, %s, clock_timestamp()
WHERE ({_HOLDS.strip()})
ON CONFLICT (source_id) DO UPDATE SET holder = EXCLUDED.holder, alive_at = EXCLUDED.alive_at
WHERE claim.holder = '' OR claim.alive_at < clock_timestamp() - make_interval(secs => %s)
"""
# A claim's end is committed without waiting for the disk (``_QUICKLY``): lost in a PostgreSQL crash, it
# only makes the next pass wait. The claim and its renewals are not: the grace counts from the last sign
# of life the next pass can read, and renewals come only with writes, so one lost could be tens of seconds
# after the one before (a consumer gate's wait, an analysis), and the next pass would take over while
# this one's writes were still landing. (They were quick until 2026-12-06; a renewal comes at most once
# a second, so waiting for the disk costs a pass a few milliseconds a second of writes.)
_QUICKLY = "WITH quickly AS (SELECT set_config('synchronous_commit', 'off', true))"
_RENEW = f"""
UPDATE {_CLAIMS} SET alive_at = clock_timestamp()
WHERE source_id = %s AND holder = %s AND ({_HOLDS.strip()})
"""  # noqa: S608
_END = f"{_QUICKLY} UPDATE {_CLAIMS} SET holder = '' FROM quickly WHERE source_id = %s AND holder = %s"  # noqa: S608
# How long a lost pass's claim still holds the source (0: none does); a claim ended cleanly is "".
_LOST_FOR = f"""
SELECT greatest(0.0, extract(epoch FROM alive_at + make_interval(secs => %s) - clock_timestamp()))::float
FROM {_CLAIMS} WHERE source_id = %s AND holder <> ''
"""  # noqa: S608
# The lock and, once taken, how long a lost pass's claim still holds the source: one round trip, as the
# lock alone took, and nothing written. The claims are read as they were when the statement began, just
# before the lock was taken: a claim seen is read again (``_lock_and_look``), and one committed in
# between is found by the pass's own claim (``PassFence._claimed``).
_LOCK_AND_LOOK = f"""
WITH locked AS MATERIALIZED (SELECT pg_try_advisory_lock(%s, %s) AS ok)
SELECT ok, CASE WHEN ok THEN ({_LOST_FOR.strip()}) END FROM locked
"""  # noqa: S608
_HOLDS_AND_LOST_FOR = f"SELECT ({_HOLDS.strip()}), ({_LOST_FOR.strip()})"


def _lock_and_look(source: Source) -> tuple[bool, float]:
    grace = float(settings.SLUICE_PASS_TAKEOVER_SECONDS)
    try:
        with connection.cursor() as cursor:
            cursor.execute(_LOCK_AND_LOOK, [LOCK_CLASS, source.pk, grace, source.pk])
            locked, lost_for = cursor.fetchone()
        if locked and lost_for:  # perhaps a claim ended just before the lock came free: read it now
            lost_for = _lost_claim_wait(source)
    except BaseException:
        connection.close()  # it may have taken the lock before it failed: the lock goes with the session
        raise
    return bool(locked), float(lost_for or 0.0)


def _lost_claim_wait(source: Source) -> float:
    with connection.cursor() as cursor:
        cursor.execute(_LOST_FOR, [float(settings.SLUICE_PASS_TAKEOVER_SECONDS), source.pk])
        row = cursor.fetchone()
    return float(row[0]) if row else 0.0


def _release(source: Source, fence: PassFence) -> ReconcileLockLost | None:
    """Ends the claim (committed first: see ``_LOCK_AND_LOOK``), then the lock: the next pass need not
    wait. A pass whose session is gone leaves its claim, and the next pass waits for its writes. When
    the release fails in any way the connection is closed, and the lock goes with it; a lost lock is
    returned then (the pass's end is not known to be recorded: its task runs again)."""
    if fence.lost is not None or connection.connection is not fence.session:
        connection.close()  # whatever is left of it: never another pass's lock
        return fence.lost or ReconcileLockLost(f"the session of source {source.name}'s lock was replaced")
    try:
        with connection.cursor() as cursor:
            if fence.claimed:
                cursor.execute(_END, [source.pk, fence.holder])
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [LOCK_CLASS, source.pk])
            (unlocked,) = cursor.fetchone()
    except DatabaseError as exc:
        connection.close()
        return ReconcileLockLost(f"the reconcile lock of source {source.name} was lost: {exc}")
    except BaseException:
        connection.close()
        raise
    if not unlocked:
        log.warning("source %s: its reconcile lock was not held at the end of the pass", source.name)
    return None


@contextmanager
def sources_locked(sources: list[Source], *, wait: float = WAIT_SECONDS) -> Iterator[None]:
    """Holds every source's reconcile lock (in id order), waiting up to ``wait`` seconds in all for
    passes under way; raises ``SourceBusy`` (nothing held) when one does not end in time.

    It waits in PostgreSQL's queue for each lock rather than trying again and again: a pass that ends
    hands the lock to the longest waiter, and a worker's try fails while anyone waits, so a stream of
    pushes, whose passes follow one another with no gap to speak of, cannot keep a person's decision out.
    """
    deadline = time.monotonic() + wait
    with ExitStack() as held:
        for source in sorted(sources, key=lambda each: each.pk):
            if (busy := _lock_settled_within(source, deadline)) is not None:
                raise SourceBusy(f"source {source.name} {busy}; try again in a moment")
            held.callback(_unlock, source)
        yield


def _lock_settled_within(source: Source, deadline: float) -> str | None:
    """Takes the source's lock once no pass that lost its session may still be writing (its claim is
    old), by ``deadline``: a decision taken beside such a pass's writes would be undone by them. None
    once held; otherwise why not."""
    while _lock_within(source, deadline - time.monotonic()):
        try:
            lost_for = _lost_claim_wait(source)
        except BaseException:
            _unlock(source)
            raise
        if lost_for <= 0:
            return None
        _unlock(source)
        if time.monotonic() + lost_for > deadline:
            return f"waits {lost_for:.0f} s more for a pass that lost its database session to stop writing"
        time.sleep(lost_for + TAKEOVER_MARGIN)
    return "is being reconciled"


def _lock_within(source: Source, seconds: float) -> bool:
    """Takes the source's lock, waiting at most ``seconds`` in the lock's queue."""
    if seconds <= 0:
        return _try_lock(source)
    try:
        # A savepoint inside a caller's transaction: the timeout's error leaves that transaction usable.
        # The lock is the session's, so it outlives this transaction (or savepoint) either way. A setting
        # made local survives a released savepoint: the caller's own timeout is put back once locked.
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('lock_timeout')")
            before = cursor.fetchone()[0]
            cursor.execute(
                "SELECT set_config('lock_timeout', %s, true)", [f"{max(1, int(seconds * 1000))}ms"]
            )
            cursor.execute("SELECT pg_advisory_lock(%s, %s)", [LOCK_CLASS, source.pk])
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [before])
    except OperationalError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == LOCK_NOT_AVAILABLE:
            return False
        raise
    return True


@contextmanager
def source_lock_if_free(source: Source) -> Iterator[bool]:
    """Holds the source's lock for the block when nobody holds it now (no waiting), yielding whether: no
    pass starts meanwhile. Not taken inside a caller's transaction, whose commit would come after the
    release (a pass starting in between would not see what the block wrote)."""
    if connection.in_atomic_block or not _try_lock(source):
        yield False
        return
    try:
        yield True
    finally:
        _unlock(source)


def source_lock_held(source_id: int) -> bool:
    """Whether any session holds the source's lock now (a pass, a removal, a person's decision)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid = %s AND objid = %s AND objsubid = 2)",
            [LOCK_CLASS, source_id],
        )
        return bool(cursor.fetchone()[0])


def _try_lock(source: Source) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [LOCK_CLASS, source.pk])
        return bool(cursor.fetchone()[0])


def _unlock(source: Source) -> None:
    """Releases the source's lock. The lock belongs to the connection, which workers keep between
    tasks: when the release fails in any way, the connection is closed, and the lock goes with it."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [LOCK_CLASS, source.pk])
    except BaseException:
        connection.close()
        raise


def flag_keys_lock() -> None:
    """Waits for, and holds until the transaction ends, the lock every rollout start that claims flag keys
    takes (``rollout.lifecycle``): held for a check and an insert, so never long."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, 0)", [FLAG_KEYS_LOCK])
