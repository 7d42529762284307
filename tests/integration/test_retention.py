"""Retention (`gitops purge`, a beat task) and the change log's explicit archival (issue 10, section 5)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from gitops import retention
from gitops.errors import PermanentError
from gitops.models import ApplyIntent, Change, Notification, Rollout, RolloutEvent, WebhookDelivery
from tests import history

pytestmark = pytest.mark.django_db(transaction=True)
LONG_AGO = timedelta(days=400)


@pytest.fixture
def aged(make_source):
    """Old and recent records of every kind, for a finished and an active rollout."""
    source = make_source()
    old = timezone.now() - LONG_AGO
    finished = history.rollout(source, finished_at=old)
    active = history.rollout(source, phase=Rollout.Phase.PAUSED)
    records = {
        "source": source,
        "finished": finished,
        "active": active,
        "old_logged": history.changes(finished, 3, at=old),
        # Settled unapplied: they never reached the change log.
        "old_unlogged": history.changes(finished, 2, at=old, logged=False, status=ApplyIntent.Status.DROPPED),
        # Done, their change-log rows archived since: they did reach it.
        "old_archived": history.changes(finished, 2, at=old, logged=False, first=10),
        "active_intents": history.changes(active, 2, at=old),
        "recent": history.changes(history.rollout(source), 2),
    }
    history.events(finished, 4, at=old)
    history.events(active, 3, at=old)
    history.events(finished, 1, at=timezone.now())
    for received_at in (old, timezone.now()):
        WebhookDelivery.objects.create(
            source=source, delivery_id="-", provider="github", outcome="rejected", received_at=received_at
        )
    for status in (Notification.Status.DELIVERED, Notification.Status.GAVE_UP, Notification.Status.PENDING):
        Notification.objects.create(
            source=source, url="http://127.0.0.1:9/", event={}, status=status, created_at=old
        )
    Notification.objects.create(source=source, url="http://127.0.0.1:9/", event={}, status="delivered")
    return records


EXPECTED = {
    "webhook_deliveries": 1,
    "notifications": 2,
    "intents_cleared": 5,
    "intents_deleted": 2,
    "rollout_events": 4,
}


def test_a_dry_run_counts_and_changes_nothing(aged):
    assert retention.purge(dry_run=True).as_dict() == EXPECTED
    assert retention.purge(dry_run=True).as_dict() == EXPECTED


def test_purge_removes_what_is_past_retention_and_keeps_the_rest(aged):
    changes_before = Change.objects.count()

    assert retention.purge().as_dict() == EXPECTED
    assert retention.purge().as_dict() == dict.fromkeys(EXPECTED, 0), "a second purge finds nothing"

    assert WebhookDelivery.objects.count() == 1
    assert list(Notification.objects.values_list("status", flat=True).order_by("id")) == [
        "pending",
        "delivered",
    ]
    # Intents of the finished rollout: logged ones keep their row, emptied; unlogged ones are gone.
    for intent in ApplyIntent.objects.filter(pk__in=[i.pk for i in aged["old_logged"]]):
        assert (intent.manifest, intent.before, intent.after, intent.diff) == (None, None, None, [])
        assert intent.change.after == {"data": {"blob": "a" * 100}}, "the change log keeps its own copy"
    assert not ApplyIntent.objects.filter(pk__in=[i.pk for i in aged["old_unlogged"]]).exists()
    # Those whose rows were archived reached the log: emptied and kept, as the README says (they were
    # deleted, as if they never had, and an owed rollback's history walk lost them).
    archived = ApplyIntent.objects.filter(pk__in=[i.pk for i in aged["old_archived"]])
    assert [(i.status, i.before, i.diff) for i in archived] == [("done", None, [])] * 2
    # An active rollout needs its intents' content to roll back, however old they are.
    for intent in ApplyIntent.objects.filter(
        pk__in=[i.pk for i in [*aged["active_intents"], *aged["recent"]]]
    ):
        assert intent.before == {"data": {"blob": "b" * 100}}
    assert RolloutEvent.objects.filter(rollout=aged["finished"]).count() == 1
    assert RolloutEvent.objects.filter(rollout=aged["active"]).count() == 3
    assert Change.objects.count() == changes_before, "the change log is never purged"


def test_each_retention_is_a_setting(aged, settings):
    settings.SLUICE_RETAIN_WEBHOOK_DELIVERIES_DAYS = 1000
    settings.SLUICE_RETAIN_ROLLOUT_EVENTS_DAYS = 1000
    counts = retention.purge(dry_run=True).as_dict()
    assert counts["webhook_deliveries"] == 0
    assert counts["rollout_events"] == 0
    assert counts["notifications"] == 2


def test_the_cli_purges_and_a_beat_task_does_too(aged, manage, worker_env, celery_worker):
    from gitops.tasks import purge_old_records

    dry = manage("gitops", "purge", "--dry-run", env=worker_env, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "would remove: 1 webhook deliveries, 2 notifications, 5 intents cleared" in dry.stdout
    assert WebhookDelivery.objects.count() == 2

    # A purge still running (a large backlog takes longer than beat's hour): the next one skips.
    import psycopg

    from gitops.retention import PURGE_LOCK

    with psycopg.connect(**{**connection.get_connection_params(), "autocommit": True}) as running:
        running.execute("SELECT pg_advisory_lock(%s)", [PURGE_LOCK])
        assert purge_old_records.delay().get(timeout=60) == {}
        # Let go before closing: a closed connection's backend gives its locks up as it exits,
        # which a busy server does a moment later, after the next purge has looked.
        running.execute("SELECT pg_advisory_unlock(%s)", [PURGE_LOCK])
    assert WebhookDelivery.objects.count() == 2

    assert purge_old_records.delay().get(timeout=60) == EXPECTED
    assert WebhookDelivery.objects.count() == 1


# -- the change log stays append-only; archival is explicit -------------------------------


def in_one_transaction(*statements: str) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


def test_ordinary_updates_and_deletes_of_the_change_log_are_still_refused(aged):
    change = Change.objects.first()
    with pytest.raises(TypeError):
        change.delete()
    with pytest.raises(TypeError):
        Change.objects.all().delete()
    for statement in ("DELETE FROM gitops_change", "UPDATE gitops_change SET actor = 'mallory'"):
        with pytest.raises(DatabaseError, match="append-only"):
            in_one_transaction(statement)
    # The archive command's setting lets deletes through, never updates.
    with pytest.raises(DatabaseError, match="append-only"):
        in_one_transaction("SET LOCAL sluice.archive_changes = 'on'", "UPDATE gitops_change SET actor = 'x'")
    # The setting is transaction-local: the next transaction is refused again.
    in_one_transaction("SET LOCAL sluice.archive_changes = 'on'", "SELECT 1")
    with pytest.raises(DatabaseError, match="append-only"):
        in_one_transaction("DELETE FROM gitops_change")
    assert Change.objects.count() == 7


def object_totals() -> dict[int, int]:
    from gitops.models import RolloutObjectCount

    return dict(RolloutObjectCount.objects.values_list("rollout_id", "total"))


def test_archive_changes_moves_old_entries_to_a_file_in_one_transaction(aged, tmp_path, manage, worker_env):
    archive = tmp_path / "changes-2025.jsonl"
    cutoff = (timezone.now() - timedelta(days=30)).date().isoformat()
    finished, active, recent = aged["finished"].pk, aged["active"].pk, aged["recent"][0].rollout_id
    old = Change.objects.filter(at__lt=timezone.now() - timedelta(days=30))
    assert old.count() == 5
    # An active rollout's entries stay: its page and the flag catalog read them (they were archived too).
    old_ids = sorted(old.exclude(rollout_id=active).values_list("pk", flat=True))
    assert len(old_ids) == 3
    # cm-2's row is the last of its object (the others have recent ones): the flag catalog reads a flag
    # set's last publication, so it stays (it was archived too).
    (last_of_cm_2,) = old.filter(name="cm-2").values_list("pk", flat=True)
    old_ids.remove(last_of_cm_2)
    assert object_totals() == {finished: 3, active: 2, recent: 2}

    moved = manage(
        "gitops", "archive-changes", "--before", cutoff, "--output", str(archive), env=worker_env, timeout=120
    )

    assert moved.returncode == 0, moved.stderr
    assert f"archived 2 change-log entries before {cutoff}" in moved.stdout
    lines = [json.loads(line) for line in archive.read_text().splitlines()]
    assert [line["id"] for line in lines] == old_ids
    assert lines[0]["after"] == {"data": {"blob": "a" * 100}}
    assert {"commit", "namespace", "name", "action", "actor", "at", "rollout", "intent"} <= set(lines[0])
    assert not Change.objects.filter(pk__in=old_ids).exists()
    assert Change.objects.filter(pk=last_of_cm_2).exists()
    assert Change.objects.count() == 5
    # A rollout's page reports the objects its remaining entries name.
    assert object_totals() == {finished: 1, active: 2, recent: 2}

    # An existing file is never overwritten, and then nothing is deleted.
    again = manage(
        "gitops",
        "archive-changes",
        "--before",
        "2999-01-01",
        "--output",
        str(archive),
        env=worker_env,
        timeout=120,
    )
    assert again.returncode != 0
    assert "never overwrites" in again.stderr
    assert Change.objects.count() == 5
    assert len(archive.read_text().splitlines()) == 2


def test_an_entry_written_while_the_archive_runs_stays_with_the_entry_before_it(aged, tmp_path, monkeypatch):
    """Each object's last entry stays; one written after the archive looked for them is newer than the
    one it keeps, and would have gone while its older one stayed: the flag catalog would read a stale
    publication. The archive takes only the entries that were there when it began."""
    finished = aged["finished"]
    real = retention._keep_last_of_each_object
    written: list[int] = []

    def then_a_new_entry(*args, **kwargs):
        real(*args, **kwargs)
        (late,) = history.changes(finished, 1, at=timezone.now() - timedelta(days=400), first=2)
        written.append(late.change.pk)

    monkeypatch.setattr(retention, "_keep_last_of_each_object", then_a_new_entry)

    retention.archive_changes(timezone.now() + timedelta(days=1), tmp_path / "archive.jsonl")

    archived = {json.loads(line)["id"] for line in (tmp_path / "archive.jsonl").read_text().splitlines()}
    assert written and written[0] not in archived
    assert Change.objects.filter(pk=written[0]).exists()
    (kept_of_cm_2,) = Change.objects.filter(rollout=finished, name="cm-2").exclude(pk=written[0])
    assert kept_of_cm_2.pk not in archived, "the last entry of cm-2 when the archive began"


def test_an_archive_cut_short_while_writing_leaves_no_file_and_deletes_nothing(aged, tmp_path, monkeypatch):
    """A full disk, Ctrl-C or a database error half-way through the file: the half-made archive stayed,
    and the next run refused it as "exists; never overwrites" (before 2026-12-07)."""
    real = retention._archived_entry
    seen: list[int] = []

    def fails_on_the_second(change):
        seen.append(change.pk)
        if len(seen) == 2:
            raise OSError(28, "No space left on device")
        return real(change)

    monkeypatch.setattr(retention, "_archived_entry", fails_on_the_second)
    before = Change.objects.count()
    output = tmp_path / "archive.jsonl"

    with pytest.raises(OSError, match="No space left"):
        retention.archive_changes(timezone.now() + timedelta(days=1), output)

    assert not output.exists()
    assert Change.objects.count() == before
    monkeypatch.undo()
    assert retention.archive_changes(timezone.now() + timedelta(days=1), output) > 0


def test_an_archive_whose_commit_answer_is_lost_keeps_its_file(aged, tmp_path, monkeypatch):
    """The commit went through but its answer was lost (a dropped connection, Ctrl-C as it ran): the
    archive unlinked its file as if nothing had been deleted, and the entries were gone for good. The
    file now stays, and the error says how to tell which happened; the file is its owner's alone."""
    import stat

    from django.db import OperationalError

    real = retention._delete_archived

    def committed_then_the_answer_is_lost(*args, **kwargs):
        deleted = real(*args, **kwargs)

        def lost() -> None:
            raise OperationalError("server closed the connection unexpectedly")

        transaction.on_commit(lost)  # raises out of the commit, after it went through
        return deleted

    monkeypatch.setattr(retention, "_delete_archived", committed_then_the_answer_is_lost)
    before = Change.objects.count()
    output = tmp_path / "archive.jsonl"

    with pytest.raises(PermanentError, match="may have been committed") as refused:
        retention.archive_changes(timezone.now() + timedelta(days=1), output)

    archived = output.read_text().splitlines()
    assert archived and Change.objects.count() == before - len(archived), "the file holds what went"
    assert "is kept" in str(refused.value)
    assert stat.S_IMODE(output.stat().st_mode) == 0o600


def test_an_archive_whose_delete_is_rolled_back_leaves_no_file(aged, tmp_path, monkeypatch):
    """The other side of it: a failure after the delete that rolls the transaction back leaves the entries
    in the log, and no file that would mislead."""
    from django.db import OperationalError

    real = retention._delete_archived

    def deleted_then_failed(*args, **kwargs):
        real(*args, **kwargs)
        raise OperationalError("deadlock detected")

    monkeypatch.setattr(retention, "_delete_archived", deleted_then_failed)
    before = Change.objects.count()
    output = tmp_path / "archive.jsonl"

    with pytest.raises(OperationalError):
        retention.archive_changes(timezone.now() + timedelta(days=1), output)

    assert not output.exists() and Change.objects.count() == before


def test_a_truncate_of_the_change_log_or_an_audit_trail_is_refused(aged):
    """The triggers refused UPDATE and DELETE row by row, and a TRUNCATE fires no row trigger: `manage.py
    flush`, or a TRUNCATE of the sources with CASCADE, emptied the log and every trail without a word.
    Only a session that set sluice.allow_truncate (the test suite's reset) may."""
    tables = ["gitops_change", "gitops_sourceaudit", "gitops_clusteraudit", "gitops_accessaudit"]
    for table in [*tables, "gitops_source"]:
        with pytest.raises(DatabaseError, match="append-only: TRUNCATE refused"):
            in_one_transaction("SET LOCAL sluice.allow_truncate = 'off'", f"TRUNCATE {table} CASCADE")
    assert Change.objects.count() == 7


def test_a_purge_keeps_what_people_decided_on_a_finished_rollouts_timeline(aged):
    """Who waived a cluster's owed rollback and why, who overrode a freeze, who approved, promoted and
    aborted: their only record is the rollout's timeline, which the purge emptied after 180 days."""
    old = timezone.now() - LONG_AGO
    decided = ["approved", "promoted", "override", "abort-requested", "rollback-waived", "started"]
    RolloutEvent.objects.bulk_create(
        [RolloutEvent(rollout=aged["finished"], at=old, kind=kind, actor="ines") for kind in decided]
    )
    # Sluice's own start of a rollout is no one's decision: it goes with the steps' lines.
    RolloutEvent.objects.create(rollout=aged["finished"], at=old, kind="started", actor="sluice")

    purged = retention.purge().as_dict()["rollout_events"]
    assert purged == EXPECTED["rollout_events"] + 1, "the steps' lines and Sluice's own start"

    kept = RolloutEvent.objects.filter(rollout=aged["finished"], at=old).values_list("kind", flat=True)
    assert sorted(kept) == sorted(decided)
