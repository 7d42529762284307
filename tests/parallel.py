"""Two integration sessions on one stack (``pytest -n 2``, pytest-xdist; ``scripts/test.sh``).

Each session has its own test database (pytest-django's ``_gw<N>`` suffix), its own Redis
database (so its own Celery queues, results, live-cache store and throttles), its own worker and
its own metrics directory. They share the clusters, the PostgreSQL and Redis servers and the two
cores. A test that changes something both sessions see (it cordons every simulated node, or
starts a second stack that would starve the other session's deadlines) is marked
``exclusive``: it runs while no test of the other session does. Every other test holds a shared
lock while it runs, its fixtures included.

The lock is two ``flock`` files. Linux does not favour a waiting exclusive lock over new shared
ones, so a session asking for it first takes a turnstile that new shared holders must pass:
otherwise the other session, taking and releasing its shared lock test after test, could keep
an exclusive test waiting for the rest of the run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Redis databases 1 and up are the sessions'; 0 is the stack's own (``make demo``, a plain run).
FIRST_SESSION_REDIS_DB = 1


def worker_id() -> str | None:
    """``gw0``, ``gw1`` ... in a pytest-xdist worker; None in a plain run."""
    return os.environ.get("PYTEST_XDIST_WORKER")


def worker_number() -> int:
    worker = worker_id()
    return int(worker.removeprefix("gw")) if worker else 0


def session_redis_url(url: str) -> str:
    """The stack's Redis URL with this session's own database: ``redis://host:port/0`` → ``/1``, ``/2``."""
    if worker_id() is None:
        return url
    base, _, _database = url.rpartition("/")
    return f"{base}/{FIRST_SESSION_REDIS_DB + worker_number()}"


def _lock_directory() -> Path:
    # One per checkout: the sessions of one run share it, another checkout's run does not.
    digest = hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]
    directory = Path(tempfile.gettempdir()) / f"sluice-test-locks-{digest}"
    directory.mkdir(exist_ok=True)
    return directory


@contextlib.contextmanager
def _flock(path: Path, operation: int) -> Iterator[None]:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, operation)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


_alone = False


def require_alone(what: str) -> None:
    """Fails a test that changes what both sessions see without being marked ``exclusive``."""
    if worker_id() is not None and not _alone:
        raise AssertionError(f"{what} changes what every session on the stack sees: mark the test exclusive")


@contextlib.contextmanager
def stack_access(*, exclusive: bool) -> Iterator[None]:
    """Held around one test: shared by default, alone for an ``exclusive`` test. A no-op outside xdist."""
    if worker_id() is None:
        yield
        return
    global _alone  # noqa: PLW0603 - a session runs one test at a time
    directory = _lock_directory()
    turnstile, room = directory / "turnstile", directory / "room"
    if exclusive:
        with _flock(turnstile, fcntl.LOCK_EX), _flock(room, fcntl.LOCK_EX):
            _alone = True
            try:
                yield
            finally:
                _alone = False
        return
    with _flock(turnstile, fcntl.LOCK_SH):
        pass  # waits while an exclusive test waits or runs
    with _flock(room, fcntl.LOCK_SH):
        yield


@contextlib.contextmanager
def stack_start() -> Iterator[None]:
    """Held while a session finds the stack up or starts it, so two sessions never start it both."""
    if worker_id() is None:
        yield
        return
    with _flock(_lock_directory() / "stack", fcntl.LOCK_EX):
        yield
