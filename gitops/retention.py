"""Retention: what Sluice deletes once it is old, and the change log's explicit archival.

Each kind of record has a setting (days) and a documented default:

- webhook deliveries (``SLUICE_RETAIN_WEBHOOK_DELIVERIES_DAYS``, 30): deleted;
- notifications that were delivered or given up (``SLUICE_RETAIN_NOTIFICATIONS_DAYS``,
  30): deleted; pending ones are kept until they are delivered or given up;
- apply intents of finished rollouts and source removals (``SLUICE_RETAIN_INTENTS_DAYS``, 14);
- rollout events of finished rollouts (``SLUICE_RETAIN_ROLLOUT_EVENTS_DAYS``, 180): deleted.

Intents are bookkeeping: an active rollout reads its intents' ``before`` content to
roll back, so nothing of an active rollout is ever touched. Once a rollout has
finished, an intent's change-log row (``Change``, append-only, ``intent`` protected)
holds its own copy of the content, hashes and diff, so the intent's bulky columns
(manifest, before, after, diff) are cleared and the small row stays for the
change log to point at. Intents without a change-log row (never executed) are
deleted. The change log itself is never purged: ``archive_changes`` moves old
entries to a JSON-lines file, on an administrator's explicit request.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Max, Q, QuerySet
from django.utils import timezone

from gitops import selectors
from gitops.errors import PermanentError
from gitops.models import ApplyIntent, Change, Notification, Rollout, RolloutEvent, WebhookDelivery
from gitops.record.inventory import CONFIGMAP
from gitops.vocabulary import SYSTEM_ACTOR, RolloutEventKind

BATCH = 5000
# The advisory lock one purge holds (one bigint key: apart from the sources' locks, which take two).
PURGE_LOCK = 0x51C3_0001


@dataclass
class PurgeCounts:
    webhook_deliveries: int = 0
    notifications: int = 0
    intents_cleared: int = 0
    intents_deleted: int = 0
    rollout_events: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _cutoff(now: datetime, setting: str) -> datetime:
    return now - timedelta(days=float(getattr(settings, setting)))


def _finished_before(cutoff: datetime) -> Q:
    # A rollout that still owes a cluster its rollback needs its intents' content to restore it.
    return (
        Q(rollout__finished_at__lt=cutoff)
        & ~Q(rollout__phase__in=Rollout.ACTIVE_PHASES)
        & Q(rollout__rollback_pending_clusters=[])
    )


def _intents_finished_before(cutoff: datetime) -> Q:
    # A source's removal keeps or prunes objects through intents too; once it ended they are history.
    return _finished_before(cutoff) | Q(rollout__isnull=True, removal__finished_at__lt=cutoff)


def expired(now: datetime | None = None) -> dict[str, QuerySet[Any]]:
    """What each retention rule would remove or clear now."""
    now = now or timezone.now()
    intents = ApplyIntent.objects.filter(
        _intents_finished_before(_cutoff(now, "SLUICE_RETAIN_INTENTS_DAYS")),
        created_at__lt=_cutoff(now, "SLUICE_RETAIN_INTENTS_DAYS"),
    ).exclude(status=ApplyIntent.Status.PENDING)
    return {
        "webhook_deliveries": WebhookDelivery.objects.filter(
            received_at__lt=_cutoff(now, "SLUICE_RETAIN_WEBHOOK_DELIVERIES_DAYS")
        ),
        "notifications": Notification.objects.filter(
            created_at__lt=_cutoff(now, "SLUICE_RETAIN_NOTIFICATIONS_DAYS"),
            status__in=[Notification.Status.DELIVERED, Notification.Status.GAVE_UP],
        ),
        # One that reached the change log is kept, emptied: done or refused, whether its log row is still
        # here or was archived since (deleted as if it never had, it was lost to the history an owed
        # rollback walks). Only those settled unapplied, never logged, are deleted.
        "intents_cleared": intents.exclude(status=ApplyIntent.Status.DROPPED).filter(
            Q(manifest__isnull=False) | Q(before__isnull=False) | Q(after__isnull=False) | ~Q(diff=[])
        ),
        "intents_deleted": intents.filter(status=ApplyIntent.Status.DROPPED),
        "rollout_events": RolloutEvent.objects.filter(
            _finished_before(_cutoff(now, "SLUICE_RETAIN_ROLLOUT_EVENTS_DAYS")),
            at__lt=_cutoff(now, "SLUICE_RETAIN_ROLLOUT_EVENTS_DAYS"),
        )
        .exclude(kind__in=PEOPLES_DECISIONS)
        # A rollout a person started (a retry) says who ran the revision again; Sluice's own starts go.
        .exclude(Q(kind=RolloutEventKind.STARTED) & ~Q(actor=SYSTEM_ACTOR)),
    }


# A rollout's timeline lines that record what a person decided (who approved, promoted, overrode a
# freeze, aborted, let a cluster off its rollback, and why): a few a rollout, kept with the change log
# they explain. A waiver leaves a cluster on content the log alone would call rolled back.
PEOPLES_DECISIONS = (
    RolloutEventKind.APPROVED,
    RolloutEventKind.PROMOTED,
    RolloutEventKind.OVERRIDE,
    RolloutEventKind.ABORT_REQUESTED,
    RolloutEventKind.ROLLBACK_WAIVED,
)


def _in_batches(queryset: QuerySet[Any], act: Callable[[QuerySet[Any]], object]) -> int:
    """Applies ``act`` to the rows of ``queryset`` a batch at a time, so no lock is held for long."""
    done = 0
    while ids := list(queryset.values_list("pk", flat=True)[:BATCH]):
        with transaction.atomic():
            act(queryset.model.objects.filter(pk__in=ids))
        done += len(ids)
    return done


@contextmanager
def purge_alone() -> Iterator[bool]:
    """Yields whether this is the only purge running: beat sends one an hour, and a purge of a large
    backlog may take longer; piled up, they scanned the same tables side by side and held the worker
    slots reconciles need. The lock is the session's: released on the way out, or with the session."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [PURGE_LOCK])
        alone = bool(cursor.fetchone()[0])
    try:
        yield alone
    finally:
        if alone:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [PURGE_LOCK])


def purge(now: datetime | None = None, *, dry_run: bool = False) -> PurgeCounts:
    """Deletes (or, for intents with a change-log row, empties) what is past its retention."""
    rules = expired(now)
    if dry_run:
        return PurgeCounts(**{name: queryset.count() for name, queryset in rules.items()})
    return PurgeCounts(
        webhook_deliveries=_in_batches(rules["webhook_deliveries"], lambda rows: rows.delete()),
        notifications=_in_batches(rules["notifications"], lambda rows: rows.delete()),
        intents_cleared=_in_batches(
            rules["intents_cleared"],
            lambda rows: rows.update(manifest=None, before=None, after=None, diff=[]),
        ),
        intents_deleted=_in_batches(rules["intents_deleted"], lambda rows: rows.delete()),
        rollout_events=_in_batches(rules["rollout_events"], lambda rows: rows.delete()),
    )


# -- the change log's archival ------------------------------------------------------------


def _archived_entry(change: Change) -> dict[str, Any]:
    entry = selectors.change_as_dict(change)
    entry.update(
        rollout=change.rollout_id,
        intent=change.intent_id,
        before=change.before,
        after=change.after,
    )
    return entry


def archive_changes(before: datetime, output: Path) -> int:
    """Moves change-log entries older than ``before`` into ``output`` (JSON lines); returns how many.

    One transaction: the file is written and flushed to disk first, then the same
    rows are deleted, which the table's trigger allows only inside a transaction
    that set ``sluice.archive_changes``. If anything fails, nothing is deleted. An
    existing file is never overwritten.
    """
    # Entries of a rollout still under way, or owing a cluster its rollback, stay: the flag catalog and
    # the rollout's page read them (its flags showed as never published, and were written again each pass).
    # Read once: a rollout that ends during a long archive must not change what the delete matches.
    kept = list(_live_rollouts().values_list("pk", flat=True))
    created = deleting = False
    written = last_id = 0
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL sluice.archive_changes = 'on'")
            # Only entries there now: one written meanwhile (a ``before`` to come) is newer than the last
            # of its object found here, and must not go while that one stays.
            ceiling = Change.objects.aggregate(ceiling=Max("id"))["ceiling"] or 0
            _keep_last_of_each_object(before, kept, ceiling)
            rows = (
                Change.objects.filter(at__lt=before, pk__lte=ceiling)
                .exclude(rollout_id__in=kept)
                .extra(where=[_NOT_KEPT])  # noqa: S610 - a constant: no input
                .select_related("source")
                .order_by("id")
            )
            written, last_id = _write_archive(rows, output)
            created = True
            _fsync_directory(output.parent)  # the file's name on disk before the rows go
            deleting = bool(written)
            deleted = _delete_archived(before, last_id, kept) if written else 0
            if deleted != written:
                raise PermanentError(
                    f"archived {written} change-log entries but {deleted} matched for deletion; "
                    "nothing was deleted"
                )
    except BaseException as exc:
        if created and deleting and _archived_rows_may_be_gone(last_id):
            # The commit's answer was lost (a dropped connection, Ctrl-C while it ran): it may have gone
            # through, and the file is then the only copy of those entries. It was unlinked here.
            if isinstance(exc, Exception):
                raise PermanentError(_kept_message(output, last_id, exc)) from exc
            raise
        if created:  # the rows are still in the log: a half-made archive would only mislead
            output.unlink(missing_ok=True)
        raise
    if not written:
        output.unlink()
    return written


def _archived_rows_may_be_gone(last_id: int) -> bool:
    """Whether the delete may have been committed: True unless the last archived entry is found still in
    the log (the transaction rolled back), or when the database cannot be asked."""
    try:
        connection.close_if_unusable_or_obsolete()
        return not Change.objects.filter(pk=last_id).exists()
    except DatabaseError:
        return True


def _kept_message(output: Path, last_id: int, error: Exception) -> str:
    return (
        f"the archive's deletion may have been committed ({error}); {output} is kept, with every entry it "
        f"archived. If the entry with id {last_id} is gone from the change log, keep the file; if it is "
        "still there, remove the file and run again"
    )


def _fsync_directory(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _delete_archived(before: datetime, last_id: int, kept: list[int]) -> int:
    # The model refuses deletes; this is the one sanctioned path around it, and the
    # trigger lets it through only because this transaction set sluice.archive_changes.
    # The rows of the ``kept`` rollouts, and each object's last, stay, as the archive's query left them out.
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM gitops_change WHERE at < %s AND id <= %s"
            " AND (rollout_id IS NULL OR NOT rollout_id = ANY(%s))"
            " AND NOT EXISTS (SELECT 1 FROM archive_last_of_each kept WHERE kept.id = gitops_change.id)",
            [before, last_id, kept],
        )
        return int(cursor.rowcount)


# The archive's own table of the entries it keeps (archive_last_of_each): in the session, dropped with its
# transaction. Asked with NOT EXISTS, an anti-join: NOT IN hashed the table only while it fit in work_mem
# (a few hundred thousand ids), and past that read it again for every entry of the log (hours).
_NOT_KEPT = "NOT EXISTS (SELECT 1 FROM archive_last_of_each kept WHERE kept.id = gitops_change.id)"
_KEEP_LAST_OF_EACH = """
CREATE TEMPORARY TABLE archive_last_of_each ON COMMIT DROP AS
SELECT id FROM (
    SELECT DISTINCT ON (change.source_id, change.cluster, change.namespace, change.name) change.id, change.at
    FROM gitops_change change JOIN gitops_source source ON source.id = change.source_id
    WHERE source.deleted_at IS NULL AND change.kind = %s AND change.result = %s AND change.id <= %s
      AND (change.rollout_id IS NULL OR NOT change.rollout_id = ANY(%s))
    ORDER BY change.source_id, change.cluster, change.namespace, change.name, change.id DESC
) newest
WHERE newest.at < %s
"""


def _keep_last_of_each_object(before: datetime, kept: list[int], ceiling: int) -> None:
    """Each ConfigMap's newest entry that went through, outside the ``kept`` rollouts, of a source not
    deleted, when it is older than ``before``, into ``archive_last_of_each``: the flag catalog reads a
    flag set's last publication (a rollback restores it, a flag held until 100 names it), an older
    rollout's entry. Archived, its flags said "not published yet", with no time to tell them stale by
    (before 2026-12-07). One row per ConfigMap a live source ever wrote, found in one sorted pass over
    the log's ConfigMap entries, in the database (nothing of it comes to Python)."""
    with connection.cursor() as cursor:
        cursor.execute(_KEEP_LAST_OF_EACH, [CONFIGMAP, Change.Result.OK.value, ceiling, kept, before])
        cursor.execute("ALTER TABLE archive_last_of_each ADD PRIMARY KEY (id)")
        cursor.execute("ANALYZE archive_last_of_each")


def _live_rollouts() -> QuerySet[Rollout]:
    return Rollout.objects.filter(Q(phase__in=Rollout.ACTIVE_PHASES) | ~Q(rollback_pending_clusters=[]))


def _write_archive(rows: QuerySet[Change], output: Path) -> tuple[int, int]:
    written, last_id = 0, 0
    try:
        # Readable by its owner only: it holds every entry's before and after.
        created = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        archive = os.fdopen(created, "w", encoding="utf-8")
    except FileExistsError as exc:
        raise PermanentError(f"{output} exists; archive-changes never overwrites a file") from exc
    try:
        with archive:
            # 50: an entry's before and after may be 1 MiB each (the dashboard's export reads as many).
            for change in rows.iterator(chunk_size=50):
                archive.write(json.dumps(_archived_entry(change), sort_keys=True) + "\n")
                written, last_id = written + 1, change.pk
            archive.flush()
            os.fsync(archive.fileno())
    except BaseException:
        # Cut short (a full disk, Ctrl-C, a database error): nothing was deleted, and a half-made file
        # left behind made the next run refuse "exists" (before 2026-12-07).
        output.unlink(missing_ok=True)
        raise
    return written, last_id
