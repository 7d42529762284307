"""Readiness: can this process reach what it needs? Each check says ok or why not, never a secret."""

from __future__ import annotations

from collections.abc import Callable

import redis
from django.conf import settings
from django.db import connection

from gitops.apply import get_cluster

CHECK_TIMEOUT_SECONDS = 2


def _database() -> None:
    with connection.cursor() as cursor:
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


def _apiserver() -> None:
    if not get_cluster().healthy():
        raise ConnectionError("kube-apiserver /readyz did not answer 200")


CHECKS: dict[str, Callable[[], None]] = {
    "database": _database,
    "broker": _broker,
    "kube-apiserver": _apiserver,
}


def readiness() -> dict[str, str]:
    """Each dependency: "ok", or the kind of failure (the exception's type and first line)."""
    results: dict[str, str] = {}
    for name, check in CHECKS.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # any failure means "not ready", and says which
            first_line = (str(exc).splitlines() or [""])[0][:200]
            results[name] = f"{type(exc).__name__}: {first_line}"
    return results
