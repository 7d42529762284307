"""The source's reconcile lock: a PostgreSQL advisory lock held for a whole pass (see ``reconcile``).

People's decisions that must not interleave with a pass (waiving an owed rollback, forgetting a
cluster) take it too, waiting a little for a pass under way to end.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from django.db import OperationalError, connection, transaction

from gitops.errors import TemporaryError
from gitops.models import Source

LOCK_CLASS = 0x51C3
WAIT_SECONDS = 30.0  # how long a person's decision waits for a pass under way
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE when lock_timeout ends a wait


class SourceBusy(TemporaryError):
    """Another worker is reconciling this source right now."""


@contextmanager
def source_lock(source: Source) -> Iterator[bool]:
    """Yields whether this process now holds the source's reconcile lock."""
    acquired = False
    try:
        acquired = _try_lock(source)
        yield acquired
    finally:
        if acquired:
            _unlock(source)


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
            if not _lock_within(source, deadline - time.monotonic()):
                raise SourceBusy(f"source {source.name} is being reconciled; try again in a moment")
            held.callback(_unlock, source)
        yield


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
