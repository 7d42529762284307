"""Use cases. The CLI, the dashboard, the API and Celery tasks all call these.

The reconcile of a source runs under a PostgreSQL advisory lock held for its
whole duration, so two workers never reconcile the same source at once; a crash
drops the connection and with it the lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from gitops import content as content_module
from gitops.cluster import Cluster, FieldConflictError
from gitops.content import Content, Provenance
from gitops.desired.errors import RevisionRejected, ValidationError
from gitops.desired.revision import DesiredState, ParseCache, load_revision
from gitops.errors import PermanentError, TemporaryError
from gitops.models import ApplyIntent, Change, ManagedObject, Revision, Rollout, Source
from gitops.plan import Action, Plan, PlanItem, plan
from gitops.sources import GitMirror, redact_url, resolve_credentials

log = logging.getLogger(__name__)

# Advisory locks are keyed by two integers: a constant for Sluice, then the source id.
LOCK_CLASS = 0x51C3
MAX_COALESCED_RUNS = 5
SYSTEM_ACTOR = "sluice"


class SourceBusy(TemporaryError):
    """Another worker is reconciling this source right now."""


@dataclass
class SyncResult:
    source: str
    outcome: str  # applied, unchanged, rejected, failed
    commit: str = ""
    revision_id: int | None = None
    summary: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    forced_push: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "outcome": self.outcome,
            "commit": self.commit,
            "revision": self.revision_id,
            "summary": self.summary,
            "errors": self.errors,
            "forced_push": self.forced_push,
        }


# -- process-wide resources ------------------------------------------------------

_cluster: Cluster | None = None
_cluster_lock = threading.Lock()
_parse_caches: dict[int, ParseCache] = {}
_desired_cache: dict[int, tuple[str, tuple[str, ...], DesiredState]] = {}


def get_cluster() -> Cluster:
    global _cluster  # noqa: PLW0603 - one client per process, created on first use
    with _cluster_lock:
        if _cluster is None:
            _cluster = Cluster.from_settings()
        return _cluster


def mirror_for(source: Source) -> GitMirror:
    root = Path(settings.SLUICE_DATA_DIR) / "mirrors"
    root.mkdir(parents=True, exist_ok=True)
    return GitMirror(root / f"{source.pk}.git")


@contextmanager
def source_lock(source: Source) -> Iterator[bool]:
    """Yields whether this process now holds the source's reconcile lock."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [LOCK_CLASS, source.pk])
        acquired = bool(cursor.fetchone()[0])
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [LOCK_CLASS, source.pk])


# -- sources -------------------------------------------------------------------


def add_source(
    *,
    name: str,
    url: str,
    branch: str = "main",
    path: str = "",
    poll_interval: timedelta = timedelta(seconds=60),
    credentials_ref: str = "",
    allowed_namespaces: Sequence[str] = (),
) -> Source:
    if redact_url(url) != url:
        raise PermanentError("the URL must not contain credentials; use --credentials env:VAR or file:/path")
    source = Source(
        name=name,
        url=url,
        branch=branch,
        path=path.strip("/"),
        poll_interval=poll_interval,
        credentials_ref=credentials_ref,
        allowed_namespaces=list(allowed_namespaces),
    )
    source.full_clean()
    source.save()
    return source


def request_sync(source: Source) -> None:
    """Marks a sync as wanted; a running reconcile of the source picks it up before it stops."""
    Source.objects.filter(pk=source.pk).update(sync_requested_at=timezone.now())


# -- reconcile -----------------------------------------------------------------


def sync_source(source_id: int, *, actor: str = SYSTEM_ACTOR, retry_failed: bool = False) -> SyncResult:
    """Fetch, validate, plan, apply and record one source. Raises SourceBusy when another run holds it."""
    source = Source.objects.get(pk=source_id)
    with source_lock(source) as acquired:
        if not acquired:
            request_sync(source)
            raise SourceBusy(f"source {source.name} is being reconciled by another worker")
        runs: list[SyncResult] = []
        for _ in range(MAX_COALESCED_RUNS):
            started = timezone.now()
            Source.objects.filter(pk=source.pk).update(sync_requested_at=None)
            runs.append(_reconcile(source, actor=actor, retry_failed=retry_failed))
            requested_again = Source.objects.filter(pk=source.pk, sync_requested_at__gt=started).exists()
            if not requested_again:
                break
        return _combine(runs)


def _combine(runs: Sequence[SyncResult]) -> SyncResult:
    """One result for coalesced runs: the last run's state, with what earlier runs applied."""
    last = runs[-1]
    if len(runs) == 1:
        return last
    applied_before = any(run.outcome == "applied" for run in runs[:-1])
    if last.outcome == "unchanged" and applied_before:
        last.outcome = "applied"
    resumed = sum(run.summary.get("resumed", 0) for run in runs)
    if resumed:
        last.summary["resumed"] = resumed
    last.forced_push = any(run.forced_push for run in runs)
    return last


def _reconcile(source: Source, *, actor: str, retry_failed: bool) -> SyncResult:
    started = time.monotonic()
    resumed = finish_pending_intents(source)
    try:
        revision, forced = _fetch(source)
    except (TemporaryError, PermanentError) as exc:
        Source.objects.filter(pk=source.pk).update(last_error=str(exc))
        raise
    result = SyncResult(source.name, "unchanged", revision.commit, revision.pk, forced_push=forced)
    if revision.outcome == Revision.Outcome.REJECTED:
        result.outcome = "rejected"
        result.errors = [_format_error(e) for e in revision.errors]
        return result

    desired = _desired_state(source, revision)
    if desired is None:
        revision.refresh_from_db()
        result.outcome = "rejected"
        result.errors = [_format_error(e) for e in revision.errors]
        return result

    current_plan = _plan(source, revision, desired)
    result.summary = current_plan.summary()
    rollout = _rollout_for(source, revision)
    intents = _write_intents(source, rollout, current_plan, actor=actor, retry_failed=retry_failed)
    failures = execute_intents(intents)
    if resumed:
        result.summary["resumed"] = resumed

    now = timezone.now()
    with transaction.atomic():
        outcome = Revision.Outcome.FAILED if failures else Revision.Outcome.APPLIED
        Revision.objects.filter(pk=revision.pk).update(outcome=outcome, summary=result.summary)
        if rollout.phase in Rollout.ACTIVE_PHASES:
            Rollout.objects.filter(pk=rollout.pk).update(
                phase=Rollout.Phase.FAILED if failures else Rollout.Phase.COMPLETED,
                weight=100,
                updated_at=now,
                finished_at=now,
                message="; ".join(failures[:5]),
            )
        Source.objects.filter(pk=source.pk).update(
            last_synced_at=now, last_error="; ".join(failures[:5]), next_poll_at=now + source.poll_interval
        )
    result.outcome = "failed" if failures else ("applied" if intents else "unchanged")
    result.errors = failures
    log.info(
        "reconciled source=%s commit=%s outcome=%s applied=%d in %.2fs",
        source.name,
        revision.commit,
        result.outcome,
        len(intents),
        time.monotonic() - started,
    )
    return result


def _format_error(error: Mapping[str, Any]) -> str:
    return str(ValidationError.from_dict(dict(error)))


def _fetch(source: Source) -> tuple[Revision, bool]:
    credentials = resolve_credentials(source.credentials_ref)
    with mirror_for(source) as mirror:
        fetched = mirror.fetch(source.url, source.branch, credentials)
        revision = Revision.objects.filter(source=source, commit=fetched.commit).first()
        if revision is None:
            info = mirror.commit_info(fetched.commit)
            revision, _ = Revision.objects.get_or_create(
                source=source,
                commit=fetched.commit,
                defaults={
                    "author_name": info.author_name,
                    "author_email": info.author_email,
                    "message": info.message,
                    "committed_at": info.committed_at,
                    "force_pushed_over": (fetched.previous or "") if fetched.forced else "",
                },
            )
        if fetched.forced:
            log.warning(
                "force push detected source=%s from=%s to=%s", source.name, fetched.previous, fetched.commit
            )
    Source.objects.filter(pk=source.pk).update(last_fetched_at=timezone.now(), last_commit=fetched.commit)
    return revision, fetched.forced


def _desired_state(source: Source, revision: Revision) -> DesiredState | None:
    """Loads and validates a revision, or records it as rejected and returns None."""
    namespaces = tuple(source.allowed_namespaces or ())
    cached = _desired_cache.get(source.pk)
    if cached and cached[0] == revision.commit and cached[1] == namespaces:
        return cached[2]
    cache = _parse_caches.setdefault(source.pk, ParseCache())
    with mirror_for(source) as mirror:
        files = mirror.list_files(revision.commit, source.path)
        try:
            desired = load_revision(files, mirror.read_blobs, cache=cache, operator_namespaces=namespaces)
        except RevisionRejected as rejected:
            Revision.objects.filter(pk=revision.pk).update(
                outcome=Revision.Outcome.REJECTED, errors=[e.as_dict() for e in rejected.errors]
            )
            log.warning(
                "revision rejected source=%s commit=%s errors=%d",
                source.name,
                revision.commit,
                len(rejected.errors),
            )
            return None
    if revision.outcome == Revision.Outcome.PENDING:
        Revision.objects.filter(pk=revision.pk).update(outcome=Revision.Outcome.VALID)
    _desired_cache[source.pk] = (revision.commit, namespaces, desired)
    return desired


def live_objects(source: Source, desired: DesiredState) -> dict[str, list[dict[str, Any]]]:
    """One LIST per namespace Git targets or the source applied to before."""
    inventory = ManagedObject.objects.filter(source=source).values_list("namespace", flat=True).distinct()
    namespaces = sorted(set(desired.namespaces) | set(inventory))
    cluster = get_cluster()
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(namespaces)))) as pool:
        listed = pool.map(cluster.list_configmaps, namespaces)
        return dict(zip(namespaces, listed, strict=True))


def _plan(source: Source, revision: Revision, desired: DesiredState) -> Plan:
    return plan(desired, live_objects(source, desired), source=source.name, commit=revision.commit)


def preview(source: Source) -> tuple[Revision, Plan | None]:
    """Fetch, validate and plan without applying: what ``gitops diff`` shows."""
    revision, _ = _fetch(source)
    if revision.outcome == Revision.Outcome.REJECTED:
        return revision, None
    desired = _desired_state(source, revision)
    if desired is None:
        revision.refresh_from_db()
        return revision, None
    return revision, _plan(source, revision, desired)


def _rollout_for(source: Source, revision: Revision) -> Rollout:
    rollout = Rollout.objects.filter(source=source, revision=revision).order_by("-id").first()
    if rollout is not None:
        return rollout
    return Rollout.objects.create(
        source=source, revision=revision, phase=Rollout.Phase.PROGRESSING, steps=[{"setWeight": 100}]
    )


def _write_intents(
    source: Source, rollout: Rollout, current_plan: Plan, *, actor: str, retry_failed: bool
) -> list[ApplyIntent]:
    items = list(current_plan.actionable)
    if not retry_failed and items:
        # A change the cluster refused for good is not retried on every poll;
        # a new commit, or an explicit sync, tries again.
        refused = set(
            ApplyIntent.objects.filter(
                rollout=rollout, status=ApplyIntent.Status.FAILED, change__error__contains="conflict"
            ).values_list("namespace", "name", "after_hash")
        )
        items = [item for item in items if (item.namespace, item.name, item.after_hash) not in refused]
    intents = [_intent_for(source, rollout, item, current_plan.commit, actor) for item in items]
    with transaction.atomic():
        return ApplyIntent.objects.bulk_create(intents, batch_size=1000)


def _intent_for(source: Source, rollout: Rollout, item: PlanItem, commit: str, actor: str) -> ApplyIntent:
    applied_commit = item.live_commit if item.action is Action.SELF_HEAL and item.live_commit else commit
    manifest = None
    if item.after is not None and item.desired is not None:
        manifest = content_module.manifest(
            item.namespace,
            item.name,
            item.after,
            Provenance(
                source=source.name,
                commit=applied_commit,
                content_hash=item.desired.content.hash,
                origin=item.desired.origin,
                kind=item.desired.kind,
            ),
        )
    return ApplyIntent(
        rollout=rollout,
        source=source,
        step_index=rollout.step_index,
        weight=100,
        namespace=item.namespace,
        name=item.name,
        action=item.action.value,
        commit=applied_commit,
        manifest=manifest,
        before=item.before.as_dict() if item.before is not None else None,
        after=item.after.as_dict() if item.after is not None else None,
        before_hash=item.before_hash,
        after_hash=item.after_hash,
        diff=[d.as_dict() for d in item.diff],
        force=item.force,
        origin=item.desired.origin if item.desired else "",
        actor=actor,
    )


def finish_pending_intents(source: Source) -> int:
    """Completes intents a crashed run left behind. Returns how many it finished."""
    pending = list(ApplyIntent.objects.filter(source=source, status=ApplyIntent.Status.PENDING))
    if pending:
        log.warning("resuming %d pending changes of source=%s", len(pending), source.name)
        execute_intents(pending)
    return len(pending)


def execute_intents(intents: Sequence[ApplyIntent]) -> list[str]:
    """Applies intents with bounded parallelism, then logs each exactly once. Returns failure texts."""
    if not intents:
        return []
    cluster = get_cluster()
    concurrency = int(getattr(settings, "SLUICE_APPLY_CONCURRENCY", 16))
    with ThreadPoolExecutor(max_workers=min(concurrency, len(intents))) as pool:
        outcomes = list(pool.map(lambda intent: _apply_one(cluster, intent), intents))
    failures: list[str] = []
    changes: list[Change] = []
    done: list[int] = []
    failed: list[int] = []
    now = timezone.now()
    for intent, error in zip(intents, outcomes, strict=True):
        if error:
            failures.append(f"{intent.namespace}/{intent.name}: {error}")
            failed.append(intent.pk)
        else:
            done.append(intent.pk)
        changes.append(
            Change(
                intent=intent,
                source_id=intent.source_id,
                rollout_id=intent.rollout_id,
                commit=intent.commit,
                cluster=settings.SLUICE_CLUSTER_NAME,
                namespace=intent.namespace,
                kind=intent.kind,
                name=intent.name,
                action=intent.action,
                before_hash=intent.before_hash,
                after_hash=intent.after_hash,
                before=intent.before,
                after=intent.after,
                diff=intent.diff,
                actor=intent.actor,
                step_index=intent.step_index,
                weight=intent.weight,
                at=now,
                result=Change.Result.ERROR if error else Change.Result.OK,
                error=error or "",
            )
        )
    with transaction.atomic():
        # The one-to-one on intent makes a second log of the same intent impossible.
        Change.objects.bulk_create(changes, batch_size=1000, ignore_conflicts=True)
        ApplyIntent.objects.filter(pk__in=done).update(status=ApplyIntent.Status.DONE)
        ApplyIntent.objects.filter(pk__in=failed).update(status=ApplyIntent.Status.FAILED)
        _update_inventory([i for i in intents if i.pk in set(done)])
    return failures


def _apply_one(cluster: Cluster, intent: ApplyIntent) -> str | None:
    manager = settings.SLUICE_FIELD_MANAGER
    try:
        if intent.action in (Action.DELETE, Action.REPLACE):
            cluster.delete_configmap(intent.namespace, intent.name)
        if intent.manifest is not None:
            applied = cluster.apply_configmap(intent.manifest, field_manager=manager, force=intent.force)
            _drop_foreign_keys(cluster, intent, applied)
    except FieldConflictError as exc:
        return f"conflict with another field manager: {exc}"
    except PermanentError as exc:
        return str(exc)
    return None


def _drop_foreign_keys(cluster: Cluster, intent: ApplyIntent, applied: Mapping[str, Any]) -> None:
    """Self-heal also removes data keys another manager added, which apply alone leaves in place."""
    if intent.action != Action.SELF_HEAL or intent.after is None:
        return
    wanted = Content.from_dict(intent.after)
    extra_data = sorted(set(applied.get("data") or {}) - set(wanted.data))
    extra_binary = sorted(set(applied.get("binaryData") or {}) - set(wanted.binary_data))
    if extra_data or extra_binary:
        cluster.remove_configmap_keys(
            intent.namespace, intent.name, data=extra_data, binary_data=extra_binary
        )


def _update_inventory(intents: Sequence[ApplyIntent]) -> None:
    now = timezone.now()
    deleted = [i for i in intents if i.action == Action.DELETE]
    present = [i for i in intents if i.action != Action.DELETE]
    if deleted:
        condition = Q()
        for intent in deleted:
            condition |= Q(namespace=intent.namespace, name=intent.name, kind=intent.kind)
        ManagedObject.objects.filter(condition).delete()
    if present:
        ManagedObject.objects.bulk_create(
            [
                ManagedObject(
                    source_id=i.source_id,
                    namespace=i.namespace,
                    name=i.name,
                    kind=i.kind,
                    commit=i.commit,
                    content_hash=i.after_hash,
                    updated_at=now,
                )
                for i in present
            ],
            update_conflicts=True,
            unique_fields=["kind", "namespace", "name"],
            update_fields=["source", "commit", "content_hash", "updated_at"],
            batch_size=1000,
        )


def record_sync_failure(source_id: int, error: Exception) -> SyncResult:
    source = Source.objects.get(pk=source_id)
    Source.objects.filter(pk=source_id).update(
        last_error=str(error), next_poll_at=timezone.now() + source.poll_interval
    )
    log.error("sync failed source=%s: %s", source.name, error)
    return SyncResult(source.name, "failed", errors=[str(error)])


def claim_due_sources(now: Any = None) -> list[int]:
    """Claims every source whose poll is due, with a compare-and-swap per source.

    Two beat processes (or a sweep racing a webhook) can both see a source as
    due; only the one whose update matches the old ``next_poll_at`` enqueues it.
    """
    now = now or timezone.now()
    claimed: list[int] = []
    for source_id, due_at, interval in Source.objects.filter(next_poll_at__lte=now).values_list(
        "pk", "next_poll_at", "poll_interval"
    ):
        if Source.objects.filter(pk=source_id, next_poll_at=due_at).update(next_poll_at=now + interval):
            claimed.append(source_id)
    return claimed


def enqueue_sync(source: Source, *, actor: str = SYSTEM_ACTOR, retry_failed: bool = False) -> list[str]:
    """Queues a sync once the surrounding transaction commits; the list receives the task id."""
    # tasks imports this module; importing it at call time avoids the cycle.
    from gitops.tasks import sync_source as sync_task  # noqa: PLC0415

    task_ids: list[str] = []

    def send() -> None:
        result = sync_task.delay(source.pk, actor=actor, retry_failed=retry_failed)
        task_ids.append(result.id)

    transaction.on_commit(send)
    return task_ids
