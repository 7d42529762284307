"""The source's reconcile lock: a PostgreSQL advisory lock held for a whole pass (see ``reconcile``).

People's decisions that must not interleave with a pass (waiving an owed rollback, forgetting a
cluster) take it too, waiting a little for a pass under way to end.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from django.db import connection

from gitops.errors import TemporaryError
from gitops.models import Source

LOCK_CLASS = 0x51C3
WAIT_SECONDS = 30.0  # how long a person's decision waits for a pass under way
WAIT_STEP_SECONDS = 0.1


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
    """Holds every source's reconcile lock (in id order), waiting up to ``wait`` seconds for passes
    under way; raises ``SourceBusy`` (nothing held) when one does not end in time."""
    deadline = time.monotonic() + wait
    with ExitStack() as held:
        for source in sorted(sources, key=lambda each: each.pk):
            while not _try_lock(source):
                if time.monotonic() >= deadline:
                    raise SourceBusy(f"source {source.name} is being reconciled; try again in a moment")
                time.sleep(WAIT_STEP_SECONDS)  # a pass holds it: polled until the deadline
            held.callback(_unlock, source)
        yield


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
