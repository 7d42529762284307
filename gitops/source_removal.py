"""Deleting a source, on a worker: keep or prune each object it manages, log each, then delete the source.

``gitops.source_admin.source_remove`` records the request (and suspends the
source); this runs it under the source's reconcile lock, so no sync runs at the
same time:

1. refuse if a rollout became active since the request (abort it first);
2. finish what a crashed run of this removal left pending;
3. for each object of the inventory that still carries this source's labels,
   write an intent, then ``delete`` it (prune) or ``release`` it (keep: its
   content stays, Sluice's labels, annotations and field ownership go); objects
   already gone, or taken over since, are left alone and leave the inventory;
4. log each object in the change log (actor: who asked), exactly once;
5. when nothing failed, delete the source: its row stays for the change log and
   the audit trail, and ``Source.objects`` no longer sees it. When something
   failed, the removal is ``failed``, the source stays (suspended) with what is
   left in its inventory, and deleting it again tries the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from django.db import transaction
from django.utils import timezone

from gitops import caches, logs
from gitops.cluster import clients
from gitops.cluster.live import LiveState, live_configmaps, objects_read_one_by_one
from gitops.desired.revision import ObjectKey
from gitops.errors import TemporaryError
from gitops.fetch.mirror_sweep import mirror_remove
from gitops.locks import SourceBusy, source_lock
from gitops.models import (
    ApplyIntent,
    ManagedObject,
    PublishedFlag,
    Rollout,
    Source,
    SourceRemoval,
    admin_settings,
)
from gitops.plan import diff_content
from gitops.plan.provenance import live_content, live_provenance, read_as_held
from gitops.record.audit import Actor, audit_record
from gitops.record.changelog import changes_record
from gitops.rollout.step import Executed, failures_without, in_scope, intents_execute, refused_as_taken_over
from gitops.vocabulary import AuditVia, ChangeAction, ObjectsOnRemoval, RemovalStatus, SourceAuditAction

log = logging.getLogger("gitops.removal")
FAILURES_SHOWN = 5


def source_removal_run(removal_id: int) -> SourceRemoval:
    """Runs a requested removal to its end. Raises SourceBusy while a sync holds the source (retry soon),
    and TemporaryError when the cluster is out of reach (intents stay pending; the next run finishes)."""
    removal = SourceRemoval.objects.select_related("source").get(pk=removal_id)
    if not removal.is_active:
        return removal  # a task delivered again after the removal ended
    source = removal.source
    # A task is at it: beat's sweep sends no other meanwhile (``polling.removals_claim_stale``), nor
    # within a while of this try ending, which a retry (a busy source, a cluster's blip) comes well within.
    _attempted(removal.pk)
    try:
        return _run_locked(removal, source)
    finally:
        _attempted(removal.pk)


def _attempted(removal_id: int) -> None:
    SourceRemoval.objects.filter(pk=removal_id, status__in=SourceRemoval.ACTIVE_STATUSES).update(
        attempted_at=timezone.now()
    )


def _run_locked(removal: SourceRemoval, source: Source) -> SourceRemoval:
    with logs.log_context(source=source.name), source_lock(source) as acquired:
        if not acquired:
            raise SourceBusy(f"source {source.name} is being reconciled; its removal waits")
        # The registry as it is now, read under the lock as a pass reads it: this process's last read may
        # be old (no pass ran here since), and a cluster removed and registered again since, at another
        # server, was read and pruned through the old one, the objects at the new one left behind.
        clients.refresh()
        started = SourceRemoval.objects.filter(
            pk=removal.pk, status__in=SourceRemoval.ACTIVE_STATUSES
        ).update(status=RemovalStatus.RUNNING, started_at=removal.started_at or timezone.now())
        if not started:  # a task delivered again, which got the lock after the removal ended
            removal.refresh_from_db()
            return removal
        if (refusal := _rollouts_in_the_way(source)) is not None:
            return source_removal_fail(removal.pk, refusal)
        _settle_pending(removal, source)
        failures = _remove_objects(removal, source)
        if failures:
            return source_removal_fail(removal.pk, _failure_message(removal, failures))
        return _delete_source(removal, source)


def _settle_pending(removal: SourceRemoval, source: Source) -> None:
    """Intents a crash left pending, read against what the cluster holds now. One whose object still
    carries this source's labels is this removal's to finish (deleting or releasing again is harmless),
    and an earlier, failed removal's is dropped: this removal decides that object. One the cluster shows
    carried out (a deleted object gone; a released one without any source's labels) is logged, not run.
    Any other is dropped, never logged: its object is gone or taken over since (another source's, or a
    person's), and releasing or deleting it now would undo their work. One outside the source's scope
    as an administrator left it (``step.in_scope``) is never run: it is logged where a read shows it
    done, and dropped otherwise (a read refused there tells nothing)."""
    pending = list(
        ApplyIntent.objects.filter(source=source, rollout__isnull=True, status=ApplyIntent.Status.PENDING)
    )
    if not pending:
        return
    allowed = in_scope(source, {(intent.cluster, intent.namespace) for intent in pending})
    live = _reachable(live_configmaps(allowed)).index()
    outside = [intent for intent in pending if (intent.cluster, intent.namespace) not in allowed]
    read = objects_read_one_by_one((i.cluster, i.kind, i.namespace, i.name) for i in outside)
    if read.waiting:
        raise TemporaryError(f"cluster(s) out of reach, the removal waits: {', '.join(sorted(read.waiting))}")
    live.update(
        {(cluster, namespace, name): obj for (cluster, _, namespace, name), obj in read.found.items()}
    )
    to_run, to_log = [], []
    for intent in pending:
        current = live.get((intent.cluster, intent.namespace, intent.name))
        owner = live_provenance(current)[0] if current is not None else None
        if (intent.cluster, intent.namespace) not in allowed:
            # Outside the scope: nothing is written there, but what a crash left done is logged.
            known = read.known((intent.cluster, intent.kind, intent.namespace, intent.name))
            if known and _done(intent, current, owner):
                to_log.append(intent)
        elif current is not None and owner == source.name:
            if intent.removal_id == removal.pk:
                to_run.append(intent)
        elif _done(intent, current, owner):
            to_log.append(intent)
    kept = {intent.pk for intent in (*to_run, *to_log)}
    ApplyIntent.drop_pending(ApplyIntent.objects.filter(pk__in=[i.pk for i in pending if i.pk not in kept]))
    if to_log:  # carried out before the crash: logged (and the inventory lets go), nothing sent again
        changes_record(to_log, [None] * len(to_log))
    _executed(intents_execute(to_run))


def _done(intent: ApplyIntent, current: dict[str, Any] | None, owner: str | None) -> bool:
    """Whether the cluster shows a removal's intent carried out: a deleted object gone, a released one
    without any source's labels."""
    if intent.action == ChangeAction.DELETE:
        return current is None
    return intent.action == ChangeAction.RELEASE and current is not None and owner is None


def _rollouts_in_the_way(source: Source) -> str | None:
    """Why the removal cannot go on, checked again under the source's lock: a pass already running when
    it was asked for (or someone's sync) may have started a rollout, or ended one owing a cluster its
    rollback, whose restore the removal would keep or prune away, and which nothing would then do."""
    active = Rollout.objects.filter(source=source, phase__in=Rollout.ACTIVE_PHASES).first()
    if active is not None:
        return f"rollout {active.pk} started after the removal was asked for; abort it first"
    owing = Rollout.objects.filter(source=source).exclude(rollback_pending_clusters=[]).first()
    if owing is not None:
        clusters = ", ".join(owing.rollback_pending_clusters)
        return (
            f"rollout {owing.pk} still owes {clusters} a rollback: once the cluster answers, sync the source "
            "(gitops sync NAME: a suspended source's rollbacks wait for it), then delete it again"
        )
    if ApplyIntent.objects.filter(
        source=source, rollout__isnull=False, status=ApplyIntent.Status.PENDING
    ).exists():
        return (
            "changes of a rollout are still pending in a cluster that did not answer: once it answers, sync "
            "the source (gitops sync NAME), then delete it again"
        )
    return None


def _reachable(live: LiveState) -> LiveState:
    """The lists of every cluster the removal needs; one that does not answer makes the removal wait."""
    if live.unreachable:
        raise TemporaryError(f"cluster(s) out of reach, the removal waits: {live.reasons()}")
    return live


def _executed(executed: Executed) -> list[str]:
    """What the clusters refused; an unreachable cluster leaves its intents pending for the next run."""
    if executed.unreachable:
        raise TemporaryError(f"cluster(s) out of reach, the removal waits: {executed.unreachable}")
    return executed.failures


def _remove_objects(removal: SourceRemoval, source: Source) -> list[str]:
    """Keeps or prunes each managed object still this source's; returns what the cluster refused."""
    managed = list(ManagedObject.objects.filter(source=source))
    # A target an administrator took out of the source's scope is neither written nor pruned: its
    # objects are left as they are, and the inventory lets go of them.
    allowed = in_scope(source, {(obj.cluster, obj.namespace) for obj in managed})
    live = _reachable(live_configmaps(allowed)).index()
    intents: list[ApplyIntent] = []
    outside: list[ManagedObject] = []
    gone: list[ManagedObject] = []
    for obj in managed:
        current = live.get((obj.cluster, obj.namespace, obj.name))
        if (obj.cluster, obj.namespace) not in allowed:
            outside.append(obj)
        elif current is None or live_provenance(current)[0] != source.name:
            gone.append(obj)
        else:
            intents.append(_intent(removal, obj, current))
    # Said before anything is written, and kept by a run of the removal tried again (which no longer
    # finds these in the inventory): the objects left outside the scope still carry the source's labels.
    if left := _left_alone(source, outside, gone):
        SourceRemoval.objects.filter(pk=removal.pk).update(message=left)
    ManagedObject.objects.filter(pk__in=[obj.pk for obj in [*outside, *gone]]).delete()
    if not removal.objects_total:  # the first run's count: a retry's inventory lacks what was let go
        SourceRemoval.objects.filter(pk=removal.pk).update(objects_total=len(managed))
    with transaction.atomic():
        written = ApplyIntent.objects.bulk_create(intents, batch_size=1000)
    refused = _executed(intents_execute(written))
    # Taken over (or deleted) between the listing and the write: left alone, as the listing would have
    # left them. Before, the removal failed, and only deleting the source again finished it.
    taken = refused_as_taken_over(source.name, written) if refused else []
    if taken:
        _let_go(removal, source, {(intent.cluster, intent.namespace, intent.name) for intent in taken})
    failures = failures_without(refused, taken)
    # Counted as done: only what was kept or pruned (it said "10 of 10 pruned" with some left).
    SourceRemoval.objects.filter(pk=removal.pk).update(
        objects_done=len(intents) - len(refused), objects_failed=len(failures)
    )
    return failures


def _let_go(removal: SourceRemoval, source: Source, taken: set[ObjectKey]) -> None:
    """The inventory lets go of objects taken over while the removal ran, and the removal says so."""
    held = ManagedObject.objects.filter(source=source).values_list("pk", "cluster", "namespace", "name")
    ManagedObject.objects.filter(pk__in=[pk for pk, *key in held if tuple(key) in taken]).delete()
    said = SourceRemoval.objects.filter(pk=removal.pk).values_list("message", flat=True).first() or ""
    also = f"{len(taken)} taken over or deleted by someone else while the removal ran, left alone"
    SourceRemoval.objects.filter(pk=removal.pk).update(message="; ".join(filter(None, [said, also])))
    log.info("removal of %s left %d objects taken over while it ran", source.name, len(taken))


def _left_alone(source: Source, outside: list[ManagedObject], gone: list[ManagedObject]) -> str:
    """What the removal left as it is, and why: "" when nothing."""
    said = []
    if outside:
        where = ", ".join(f"{o.cluster}/{o.namespace}/{o.name}" for o in outside[:5])
        more = f" and {len(outside) - 5} more" if len(outside) > 5 else ""
        said.append(
            f"{len(outside)} left as they are outside the source's scope, with its labels: {where}{more}"
        )
        log.warning("removal of %s left %d objects outside its scope as they are", source.name, len(outside))
    if gone:
        said.append(f"{len(gone)} already gone, or no longer the source's")
    return "; ".join(said)


def _intent(removal: SourceRemoval, obj: ManagedObject, live: dict[str, Any]) -> ApplyIntent:
    """What keeping (release) or pruning (delete) one object will do, written before it is done."""
    content = live_content(live)
    prune = removal.mode == ObjectsOnRemoval.PRUNE
    after = None if prune else content
    # The inventory's commit, which Sluice applied: whoever may edit the object may write any
    # well-formed hash into its sluice.dev/commit. The object's own is read for one the inventory lacks.
    _, commit, _ = live_provenance(live)
    return ApplyIntent(
        removal=removal,
        rollout=None,
        source_id=obj.source_id,
        step_index=0,
        weight=0,
        cluster=obj.cluster,
        namespace=obj.namespace,
        name=obj.name,
        kind=obj.kind,
        action=ChangeAction.DELETE if prune else ChangeAction.RELEASE,
        commit=obj.commit or commit or "",
        manifest=None,  # nothing is applied: the inventory lets go of it either way
        before=content.as_dict(),
        after=after.as_dict() if after is not None else None,
        before_hash=content.hash,
        after_hash=after.hash if after is not None else "",
        diff=[change.as_dict() for change in diff_content(content, after)],
        # Read as this source's just now (``_remove_objects``): the prune's condition.
        **(read_as_held(live) if prune else {}),
        actor=removal.requested_by,
    )


def _failure_message(removal: SourceRemoval, failures: Sequence[str]) -> str:
    shown = "; ".join(failures[:FAILURES_SHOWN])
    more = f" (and {len(failures) - FAILURES_SHOWN} more)" if len(failures) > FAILURES_SHOWN else ""
    # What the run left alone (said before it wrote) stays said after the refusals.
    left = SourceRemoval.objects.filter(pk=removal.pk).values_list("message", flat=True).first() or ""
    return (
        f"{len(failures)} objects could not be {'pruned' if removal.mode == 'prune' else 'released'}: "
        f"{shown}{more}. The source stays, suspended; delete it again to try the rest"
        + (f". Also: {left}" if left else "")
    )


def _delete_source(removal: SourceRemoval, source: Source) -> SourceRemoval:
    now = timezone.now()
    with transaction.atomic():
        Source.all_objects.filter(pk=source.pk).update(
            deleted_at=now, webhook_secret_encrypted="", sync_queued=False
        )
        SourceRemoval.objects.filter(pk=removal.pk).update(status=RemovalStatus.DONE, finished_at=now)
        # The Flags page and /api/flags read this catalog: a deleted source's flags stayed on them, at
        # "100%", served by no cluster after a prune (and mixed into a new source of the same name's).
        PublishedFlag.objects.filter(source=source).delete()
        audit_record(
            source,
            SourceAuditAction.DELETED,
            Actor(removal.requested_by, AuditVia(removal.via)),
            before=admin_settings(source),
            after=None,
            message=f"removal {removal.pk}: objects {removal.mode}",
        )
    caches.drop(source.pk)
    mirror_remove(source)  # its repository's files; other hosts' copies go at their next sweep
    log.info("source %s deleted (objects %s)", source.name, removal.mode)
    removal.refresh_from_db()
    return removal


def source_removal_fail(removal_id: int, message: str) -> SourceRemoval:
    """Ends a removal as failed: the source stays, suspended, and can be deleted again."""
    SourceRemoval.objects.filter(pk=removal_id, status__in=SourceRemoval.ACTIVE_STATUSES).update(
        status=RemovalStatus.FAILED, finished_at=timezone.now(), message=message[:4000]
    )
    log.warning("removal %s failed: %s", removal_id, message)
    return SourceRemoval.objects.get(pk=removal_id)
