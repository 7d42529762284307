"""A rollout's object count (RolloutObjectCount), kept by the database while the log is written.

Migration 0013 counts every existing rollout while workers may still be logging changes (an
upgrade does not stop them); the count it leaves must be exact whichever commits first.
"""

from __future__ import annotations

import importlib
import threading

import psycopg
import pytest
from django.db import connection, connections

from gitops.models import Change, Rollout, RolloutObjectCount
from tests import history
from tests.workers import poll

pytestmark = pytest.mark.django_db(transaction=True)

migration = importlib.import_module("gitops.migrations.0013_rollout_object_count")

# What Change.log_intents does, for intents not yet logged: one statement, copied from the intents.
LOG_INTENTS = """
INSERT INTO gitops_change (intent_id, source_id, rollout_id, commit, cluster, namespace, kind, name,
    action, before_hash, after_hash, before, after, diff, actor, step_index, weight, at, result, error)
SELECT i.id, i.source_id, i.rollout_id, i.commit, i.cluster, i.namespace, i.kind, i.name, i.action,
    i.before_hash, i.after_hash, i.before, i.after, i.diff, i.actor, 1, 100, now(), 'ok', ''
FROM gitops_applyintent i WHERE i.rollout_id = %s AND NOT EXISTS (
    SELECT 1 FROM gitops_change c WHERE c.intent_id = i.id)
"""


def objects_named(rollout: Rollout) -> int:
    entries = Change.objects.filter(rollout=rollout)
    return entries.values("cluster", "namespace", "kind", "name").distinct().count()


def totals() -> dict[int, int]:
    return dict(RolloutObjectCount.objects.values_list("rollout_id", "total"))


def count_in_a_thread() -> threading.Thread:
    def run() -> None:
        try:
            migration.rollouts_count(connections["default"])
        finally:
            connections.close_all()

    counting = threading.Thread(target=run)
    counting.start()
    return counting


def waiting_on_a_lock(query_part: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND query LIKE %s AND datname = current_database()",
            [f"%{query_part}%"],
        )
        return bool(cursor.fetchone()[0])


def test_counting_every_rollout_while_a_worker_logs_new_objects_misses_none(make_source, test_database_url):
    source = make_source()
    rollout = history.rollout(source, phase=Rollout.Phase.PAUSED)
    history.changes(rollout, 5)
    history.changes(rollout, 3, first=5, logged=False)  # a worker is about to log three new objects
    RolloutObjectCount.objects.all().delete()  # as before the migration, for a log already written

    with psycopg.connect(test_database_url) as worker:
        # The worker logs them and has not committed: its trigger holds the rollout's count row.
        worker.execute(LOG_INTENTS, [rollout.pk])
        counting = count_in_a_thread()
        poll(
            lambda: waiting_on_a_lock("gitops_rolloutobjectcount"),
            timeout=30,
            what="the migration's count waiting for the worker's transaction",
        )
        worker.commit()
    counting.join(timeout=60)
    assert not counting.is_alive()

    assert objects_named(rollout) == 8
    assert totals() == {rollout.pk: 8}, "counted after the worker's commit, so with its objects"

    # And a worker that logs after the count adds only what is new to the rollout.
    history.changes(rollout, 2, first=7, logged=False)  # cm-7 again, and cm-8
    with connection.cursor() as cursor:
        cursor.execute(LOG_INTENTS, [rollout.pk])
    assert (objects_named(rollout), totals()) == (9, {rollout.pk: 9})
