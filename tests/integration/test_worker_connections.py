"""A worker keeps its PostgreSQL connection between tasks, and never a source's lock with it.

Celery's Django fixup closes every connection before and after each task unless
CELERY_DB_REUSE_MAX is set; a new PostgreSQL backend per task cost a no-op poll more
than the poll itself. The reconcile lock is a session-level advisory lock, so a
kept connection must not keep a lock after its task, whichever way the task ended.
"""

from __future__ import annotations

import shutil

import pytest
from django.db import connection

from gitops.locks import LOCK_CLASS
from tests.gitrepo import configmap, policy

pytestmark = pytest.mark.django_db(transaction=True)

KEPT_LONG = {"DATABASE_CONN_MAX_AGE": "600"}


def _last_check_backends(source) -> set[tuple[int, str]]:
    """PostgreSQL backends whose last statement was this source's after-the-pass check, with their start."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, backend_start::text FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND query LIKE %s AND query LIKE %s",
            ['%"sync_requested_at" IS NOT NULL%', f'%"gitops_source"."id" = {source.pk} %'],
        )
        return {(pid, started) for pid, started in cursor.fetchall()}


def _lock_is_free(source) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [LOCK_CLASS, source.pk])
        taken = bool(cursor.fetchone()[0])
        if taken:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [LOCK_CLASS, source.pk])
    return taken


@pytest.fixture
def alone(repo, make_namespaces, make_source, start_worker):
    """A source of one ConfigMap, applied by a worker of its own, and a sync through that worker.

    Only that worker runs these tasks; its connection outlives them on a slow machine too."""
    from gitops.tasks import sync_source

    (namespace,) = make_namespaces("w")
    repo.write("sluice.yaml", policy([namespace]))
    repo.write("configmaps/w.yaml", configmap("w", {"k": "v"}))
    repo.commit("one ConfigMap")
    source = make_source()
    queue = f"connections-{source.pk}"
    start_worker(concurrency=1, queues=queue, env_overrides=KEPT_LONG)

    def sync() -> dict:
        return sync_source.apply_async((source.pk,), queue=queue).get(timeout=120)

    assert sync()["outcome"] == "applied"
    return source, sync


def test_a_worker_runs_its_tasks_on_one_kept_connection(alone):
    source, sync = alone
    first = _last_check_backends(source)
    assert len(first) == 1, f"the worker's connection was closed after its task: {first}"
    for _ in range(5):
        assert sync()["outcome"] == "unchanged"
    assert _last_check_backends(source) == first, "a task opened a connection of its own"
    assert _lock_is_free(source)


def test_a_failed_pass_leaves_no_lock_on_the_kept_connection(alone, repo):
    source, sync = alone
    shutil.rmtree(repo.remote)  # Git is gone: the pass fails holding the lock, is retried, then recorded
    result = sync()
    assert result["outcome"] == "failed", result
    assert _lock_is_free(source), "the failed pass's lock outlived its task on the kept connection"


def test_a_kept_connection_postgresql_dropped_is_replaced_before_the_next_task(alone):
    source, sync = alone
    ((kept, _),) = _last_check_backends(source)
    with connection.cursor() as cursor:  # what a PostgreSQL restart does to the worker's connection
        cursor.execute("SELECT pg_terminate_backend(%s)", [kept])
    result = sync()
    assert result["outcome"] == "unchanged", result
    ((replaced, _),) = _last_check_backends(source)
    assert replaced != kept


def test_postgresql_probes_every_connection_so_a_vanished_host_frees_its_locks_in_about_a_minute():
    # Linux's default keepalive would keep a dead worker host's session, and its advisory locks, 2 h.
    with connection.cursor() as cursor:
        shown = {}
        for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count"):
            cursor.execute(f"SHOW {name}")
            shown[name] = cursor.fetchone()[0]
    assert shown == {
        "tcp_keepalives_idle": "30",
        "tcp_keepalives_interval": "10",
        "tcp_keepalives_count": "3",
    }
