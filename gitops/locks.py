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
import sys
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
WAIT_SECONDS = 30.0  # how long a person's decision waits for a pass under way
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE when lock_timeout ends a wait


FENCE_CHECK_SECONDS = 1.0  # how long a pass writes on after last showing that its session is alive
TAKEOVER_ATTEMPTS = 2  # a wait for a lost pass's claim, then one more try

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
    holder = uuid.uuid4().hex
    for attempt in range(TAKEOVER_ATTEMPTS):
        asked_at = time.monotonic()  # the claim's time is later: the fence's second counts from here
        locked, claimed = _lock_and_claim(source, holder)
        if not locked:
            yield False
            return
        if claimed:
            break
        try:
            delay = max(1.0, _lost_claim_wait(source))
        finally:
            _unlock(source)
        if attempt == TAKEOVER_ATTEMPTS - 1:
            raise TakeoverPending(source, delay)
        log.warning(
            "source %s: the pass before lost its database session; waiting %.1f s", source.name, delay
        )
        time.sleep(delay)
    fence = PassFence(source, holder, asked_at)
    token = _current_fence.set(fence)
    try:
        yield True
    finally:
        _current_fence.reset(token)
        # A failed release raises only when nothing else does: it never hides the pass's own error.
        _release(source, fence, raising=sys.exc_info()[1] is None)


def pass_fence() -> Callable[[], None]:
    """The fence of the pass this thread runs, to be called before each cluster write (also from the
    pass's other threads: it is thread-safe); a no-op outside a pass (a command, a test)."""
    fence = _current_fence.get()
    return fence if fence is not None else _unfenced


def _unfenced() -> None:
    return None


class PassFence:
    """Calls raise ``ReconcileLockLost`` once the session that holds the lock is gone. A call more
    than FENCE_CHECK_SECONDS after the last proof asks the session again (and renews the claim), on
    the pass's own connection, whichever thread calls; the writes wait for that answer, so a session
    that hangs stops them too."""

    def __init__(self, source: Source, holder: str, proved_at: float) -> None:
        self._source = source
        self.holder = holder
        self._wrapper: Any = connections[DEFAULT_DB_ALIAS]  # this thread's: the one holding the lock
        self.session = self._wrapper.connection
        self._guard = threading.Lock()
        self._proved_at = proved_at
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
        """Renews the claim if the lock's session still holds the lock: True; None once it does not.
        Straight on the driver's connection, since Django's wrapper belongs to the pass's first thread.
        Inside a transaction (never, for a pass's writes) a renewal would show only at its commit, too
        late to hold a pass taking over: the session is asked, and the next write asks again (False)."""
        if self.session is None or self._wrapper.connection is not self.session:
            return None  # reconnected: a session of its own, without the lock
        try:
            with self.session.cursor() as cursor:
                if self._wrapper.in_atomic_block:
                    cursor.execute(_HOLDS, [LOCK_CLASS, self._source.pk])
                    return False if cursor.fetchone()[0] else None
                cursor.execute(_RENEW, [self._source.pk, self.holder, LOCK_CLASS, self._source.pk])
                return True if cursor.rowcount == 1 else None
        except Exception:  # whatever the driver raises for a session that is gone
            return None


_current_fence: ContextVar[PassFence | None] = ContextVar("sluice_pass_fence", default=None)

# Whether this session holds the source's lock (a two-key advisory lock has objsubid 2).
_HOLDS = """
SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
    AND classid = %s AND objid = %s AND objsubid = 2 AND granted)
"""
_RENEW = f"""
UPDATE {PassClaim._meta.db_table} SET alive_at = clock_timestamp() WHERE source_id = %s AND holder = %s
AND ({_HOLDS.strip()})
"""  # noqa: S608
# The lock, and with it the claim unless the last pass's is still held and recent: one round trip, as the
# lock alone took. The claim is written only once the lock is taken (it reads ``locked``).
_LOCK_AND_CLAIM = f"""
WITH locked AS MATERIALIZED (SELECT pg_try_advisory_lock(%s, %s) AS ok),
claimed AS (
    INSERT INTO {PassClaim._meta.db_table} AS claim (source_id, holder, alive_at)
    SELECT %s, %s, clock_timestamp() FROM locked WHERE ok
    ON CONFLICT (source_id) DO UPDATE SET holder = EXCLUDED.holder, alive_at = EXCLUDED.alive_at
    WHERE claim.holder = '' OR claim.alive_at < clock_timestamp() - make_interval(secs => %s)
    RETURNING 1
)
SELECT ok, EXISTS (SELECT 1 FROM claimed) FROM locked
"""  # noqa: S608
# How long a lost pass's claim still holds the source (0: none does).
_LOST_CLAIM_WAIT = f"""
SELECT greatest(0.0, extract(epoch FROM alive_at + make_interval(secs => %s) - clock_timestamp()))::float
FROM {PassClaim._meta.db_table} WHERE source_id = %s AND holder <> ''
"""  # noqa: S608
# The claim ended, then the lock, in one round trip: the unlock reads the UPDATE's count, so it comes
# after it, and a pass taking the lock at once waits on the claim's row until this statement commits.
_RELEASE = f"""
WITH cleared AS (
    UPDATE {PassClaim._meta.db_table} SET holder = '' WHERE source_id = %s AND holder = %s RETURNING 1
)
SELECT pg_advisory_unlock(%s, %s) FROM (SELECT count(*) FROM cleared) AS done
"""  # noqa: S608


def _lock_and_claim(source: Source, holder: str) -> tuple[bool, bool]:
    grace = float(settings.SLUICE_PASS_TAKEOVER_SECONDS)
    try:
        with connection.cursor() as cursor:
            cursor.execute(_LOCK_AND_CLAIM, [LOCK_CLASS, source.pk, source.pk, holder, grace])
            locked, claimed = cursor.fetchone()
    except BaseException:
        connection.close()  # it may have taken the lock before it failed: the lock goes with the session
        raise
    return bool(locked), bool(claimed)


def _lost_claim_wait(source: Source) -> float:
    with connection.cursor() as cursor:
        cursor.execute(_LOST_CLAIM_WAIT, [float(settings.SLUICE_PASS_TAKEOVER_SECONDS), source.pk])
        row = cursor.fetchone()
    return float(row[0]) if row else 0.0


def _release(source: Source, fence: PassFence, *, raising: bool) -> None:
    """Ends the claim and the lock: the next pass need not wait. A pass whose session is gone leaves its
    claim, and the next pass waits for this one's writes. When the release fails in any way the
    connection is closed, and the lock goes with it; ``raising``: the failure is raised then, as the
    lock lost (the pass's end is not known to be recorded), so that the task runs again."""
    if fence.lost is not None or connection.connection is not fence.session:
        connection.close()  # whatever is left of it: never another pass's lock
        if fence.lost is not None and raising:
            raise fence.lost
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute(_RELEASE, [source.pk, fence.holder, LOCK_CLASS, source.pk])
            (unlocked,) = cursor.fetchone()
    except DatabaseError as exc:
        connection.close()
        if raising:
            raise ReconcileLockLost(f"the reconcile lock of source {source.name} was lost: {exc}") from exc
        return
    except BaseException:
        connection.close()
        raise
    if not unlocked:
        log.warning("source %s: its reconcile lock was not held at the end of the pass", source.name)


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
            if not _lock_settled_within(source, deadline):
                raise SourceBusy(f"source {source.name} is being reconciled; try again in a moment")
            held.callback(_unlock, source)
        yield


def _lock_settled_within(source: Source, deadline: float) -> bool:
    """The source's lock, once no pass that lost its session may still be writing (its claim is old),
    by ``deadline``: a decision taken beside such a pass's writes would be undone by them."""
    while _lock_within(source, deadline - time.monotonic()):
        try:
            lost_for = _lost_claim_wait(source)
        except BaseException:
            _unlock(source)
            raise
        if lost_for <= 0:
            return True
        _unlock(source)
        if time.monotonic() + lost_for > deadline:
            return False
        time.sleep(lost_for)
    return False


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
