"""Readiness: can this process reach what it needs? Each check says ok or why not, never a secret.

Every check gives up within a few seconds (CHECK_TIMEOUT_SECONDS; the database's
connect timeout is DATABASE_CONNECT_TIMEOUT), and the checks run side by side, so
a dead dependency makes /readyz answer 503 quickly instead of hanging a web worker.

Each registered cluster is listed too (``cluster:NAME``), but only the default
cluster's kube-apiserver decides readiness: a member cluster that is down fails
its own targets, not Sluice.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import redis
from django.conf import settings
from django.db import DatabaseError, connection, transaction

from gitops.cluster import clients, get_cluster
from gitops.redaction import redact

CHECK_TIMEOUT_SECONDS = 3
CLUSTER_CHECK_PREFIX = "cluster:"
MAX_CHECK_THREADS = 16


def _database() -> None:
    # The connection itself is bounded by the connect_timeout in settings.DATABASES.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL statement_timeout = {int(CHECK_TIMEOUT_SECONDS * 1000)}")
        cursor.execute("SELECT 1")


def _broker() -> None:
    client = redis.Redis.from_url(
        settings.CELERY_BROKER_URL,
        socket_timeout=CHECK_TIMEOUT_SECONDS,
        socket_connect_timeout=CHECK_TIMEOUT_SECONDS,
    )
    try:
        client.ping()
    finally:
        client.close()


def _apiserver(name: str | None = None) -> None:
    if not get_cluster(name).healthy(timeout=CHECK_TIMEOUT_SECONDS):
        raise ConnectionError("kube-apiserver /readyz did not answer 200")


def _registered_clusters() -> dict[str, Callable[[], None]]:
    """A check per registered cluster; none when the registry cannot be read (the database check says why)."""
    try:
        clients.refresh()
        names = clients.names()[1:]
    except DatabaseError:  # a database that is down is reported by its own check
        return {}
    return {f"{CLUSTER_CHECK_PREFIX}{name}": functools.partial(_apiserver, name) for name in names}


def ready(results: dict[str, str]) -> bool:
    """Ready when every check but the member clusters' is ok."""
    return all(
        result == "ok" for name, result in results.items() if not name.startswith(CLUSTER_CHECK_PREFIX)
    )


# The database check runs on the caller's thread: Django's connections belong to a thread.
DATABASE_CHECK = ("database", _database)
CHECKS: dict[str, Callable[[], None]] = {
    "broker": _broker,
    "kube-apiserver": _apiserver,
}


def _outcome(check: Callable[[], None]) -> str:
    try:
        check()
    except Exception as exc:  # any failure means "not ready", and says which
        # Redacted whole, then cut: cut first, a password split at the cut was not one to hide.
        first_line = _without_credentials((str(exc).splitlines() or [""])[0])[:200]
        return f"{type(exc).__name__}: {first_line}"
    return "ok"


# Shorter parts of a password are left: "pw" would garble every message, and says little.
SHORTEST_PART_HIDDEN = 4


def _without_credentials(text: str) -> str:
    """``text`` with URL credentials and tokens (``redact``) and every part of a configured password
    hidden. A client that cannot parse its URL quotes a piece of it: redis-py read the password of
    ``redis://:s3cret/pw@host`` as the host's port, and said "... as 's3cret'"."""
    text = redact(text)
    for password in _configured_passwords():
        for part in sorted({password, *re.split(r"[:/?#@\s]+", password)}, key=len, reverse=True):
            if len(part) >= SHORTEST_PART_HIDDEN:
                text = text.replace(part, "***")
    return text


def _configured_passwords() -> list[str]:
    """The passwords of the database and of the URLs of the broker and Redis, as configured."""
    passwords = [str(settings.DATABASES["default"].get("PASSWORD") or "")]
    for url in (settings.CELERY_BROKER_URL, settings.CELERY_RESULT_BACKEND, settings.REDIS_URL):
        _, found, rest = str(url or "").partition("://")
        userinfo = rest.rpartition("@")[0] if found else ""
        passwords.append(userinfo.partition(":")[2])
    return [password for password in passwords if password]


def _within(future: Future[str], deadline: float) -> str:
    """The check's answer, or a timeout at ``deadline`` (monotonic), which every check of the page shares:
    each waited its own 7 s in turn, so hung checks added up (six hung ones held the page 42 s)."""
    try:
        return future.result(timeout=max(0.0, deadline - time.monotonic()))
    except FutureTimeout:
        return "TimeoutError: no answer in time"


class _SharedReadiness:
    """The last anonymous answer, shared by the web process's threads for ``SLUICE_READYZ_CACHE_SECONDS``:
    each anonymous request ran every check afresh (a connection to Redis, a call to the apiserver, a
    transaction, a pool of threads), holding a web thread for up to seconds while a dependency was slow,
    so anyone could pile them up. One check runs at a time; a request that comes while one runs gets
    the answer before it, if that is recent (``STALE_SECONDS`` past its time), else waits for the check:
    the first requests after a quiet spell, or after the process started."""

    STALE_SECONDS = 10.0

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answer: dict[str, str] | None = None
        self.at = 0.0

    def get(self, ttl: float) -> dict[str, str]:
        if self.answer is not None and time.monotonic() - self.at < ttl:
            return dict(self.answer)
        recent = self.answer is not None and time.monotonic() - self.at < ttl + self.STALE_SECONDS
        if not self.lock.acquire(blocking=not recent):
            return dict(self.answer or {})  # a check runs: the answer before it, recent enough
        try:
            if self.answer is None or time.monotonic() - self.at >= ttl:  # not answered while we waited
                self.answer, self.at = readiness(members=False), time.monotonic()
            return dict(self.answer)
        finally:
            self.lock.release()


_SHARED = _SharedReadiness()


def readiness_shared() -> dict[str, str]:
    """``readiness`` without the member clusters, answered at most once every
    ``SLUICE_READYZ_CACHE_SECONDS`` in this process (0: every time): for anonymous callers."""
    ttl = float(getattr(settings, "SLUICE_READYZ_CACHE_SECONDS", 2.0))
    return readiness(members=False) if ttl <= 0 else _SHARED.get(ttl)


def readiness(*, members: bool = True) -> dict[str, str]:
    """Each dependency: "ok", or the kind of failure (the exception's type and first line). ``members``:
    each registered cluster too (they do not decide readiness)."""
    # Not a with-block: leaving one waits for every thread, and a hung check would hang the page.
    pool = ThreadPoolExecutor(max_workers=MAX_CHECK_THREADS)
    bound = CHECK_TIMEOUT_SECONDS + 2
    try:
        deadline = time.monotonic() + bound
        pending = {name: pool.submit(_outcome, check) for name, check in CHECKS.items()}
        name, check = DATABASE_CHECK
        results = {name: _outcome(check)}  # bounded by its own timeout
        # The member clusters are asked only now: a slow database must not use up their time.
        members_by = time.monotonic() + bound
        asked = {}
        if members and results[name] == "ok":  # the registry lives in the database
            asked = {name: pool.submit(_outcome, check) for name, check in _registered_clusters().items()}
        # Each check bounds itself; this bounds the page even if one of them does not.
        results.update({name: _within(future, deadline) for name, future in pending.items()})
        results.update({name: _within(future, members_by) for name, future in asked.items()})
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return results
