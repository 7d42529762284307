"""Applying planned changes: intents first, then server-side apply, then the change log.

An ``ApplyIntent`` is written before an object is touched. Applying is
idempotent (server-side apply of the same content changes nothing), and a
``Change`` row is tied one-to-one to its intent, so a run that dies between
applying and logging is finished by the next one without logging twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from gitops import content as content_module
from gitops import metrics
from gitops.cluster import Cluster, FieldConflictError
from gitops.content import Content, Provenance
from gitops.desired.revision import DesiredState
from gitops.errors import PermanentError
from gitops.models import ApplyIntent, Change, ManagedObject, Rollout, Source
from gitops.plan import Action, Plan, PlanItem

log = logging.getLogger(__name__)

_cluster: Cluster | None = None
_cluster_lock = threading.Lock()


def get_cluster() -> Cluster:
    global _cluster  # noqa: PLW0603 - one client per process, created on first use
    with _cluster_lock:
        if _cluster is None:
            _cluster = Cluster.from_settings()
        return _cluster


def live_objects(source: Source, desired: DesiredState) -> dict[str, list[dict[str, Any]]]:
    """One LIST per namespace Git targets or the source applied to before."""
    inventory = ManagedObject.objects.filter(source=source).values_list("namespace", flat=True).distinct()
    namespaces = sorted(set(desired.namespaces) | set(inventory))
    cluster = get_cluster()
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(namespaces)))) as pool:
        listed = pool.map(cluster.list_configmaps, namespaces)
        return dict(zip(namespaces, listed, strict=True))


def managed_keys(source: Source) -> frozenset[tuple[str, str]]:
    """The source's inventory: (namespace, name) of every object Sluice applied for it."""
    return frozenset(ManagedObject.objects.filter(source=source).values_list("namespace", "name"))


def write_intents(
    source: Source,
    rollout: Rollout,
    current_plan: Plan,
    *,
    actor: str,
    step_index: int,
    weight: int,
    retry_failed: bool = False,
) -> list[ApplyIntent]:
    """Writes what this step is about to do, before anything is done."""
    items = list(current_plan.actionable)
    if not retry_failed and items:
        # A change the cluster refused for good is not retried on every poll;
        # a new commit, or an explicit retry, tries again.
        refused = set(
            ApplyIntent.objects.filter(
                rollout=rollout, status=ApplyIntent.Status.FAILED, change__error__contains="conflict"
            ).values_list("namespace", "name", "after_hash")
        )
        items = [item for item in items if (item.namespace, item.name, item.after_hash) not in refused]
    intents = [
        intent_for(source, rollout, item, current_plan.commit, actor, step_index=step_index, weight=weight)
        for item in items
    ]
    with transaction.atomic():
        return ApplyIntent.objects.bulk_create(intents, batch_size=1000)


def intent_for(
    source: Source,
    rollout: Rollout,
    item: PlanItem,
    commit: str,
    actor: str,
    *,
    step_index: int,
    weight: int,
) -> ApplyIntent:
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
        step_index=step_index,
        weight=weight,
        namespace=item.namespace,
        name=item.name,
        action=item.action.value,
        commit=applied_commit,
        manifest=manifest,
        before=item.before.as_dict() if item.before is not None else None,
        after=item.after.as_dict() if item.after is not None else None,
        before_hash=item.before_hash,
        after_hash=item.after_hash,
        before_commit=item.live_commit or "",
        before_content_hash=item.live_content_hash or "",
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
    failed_ids = set(failed)
    if failures:
        names = dict(Source.objects.filter(pk__in={i.source_id for i in intents}).values_list("pk", "name"))
        for intent in intents:
            if intent.pk in failed_ids:
                metrics.APPLY_ERRORS.labels(names.get(intent.source_id, "?")).inc()
    with transaction.atomic():
        # The one-to-one on intent makes a second log of the same intent impossible.
        Change.objects.bulk_create(changes, batch_size=1000, ignore_conflicts=True)
        ApplyIntent.objects.filter(pk__in=done).update(status=ApplyIntent.Status.DONE)
        ApplyIntent.objects.filter(pk__in=failed).update(status=ApplyIntent.Status.FAILED)
    # Callers read the outcome from the intents themselves.
    for intent in intents:
        intent.status = ApplyIntent.Status.FAILED if intent.pk in failed_ids else ApplyIntent.Status.DONE
    # Once per batch, outside the loop: inside it, 2,000 intents cost millions of upserts.
    _update_inventory([intent for intent in intents if intent.pk not in failed_ids])
    return failures


def _apply_one(cluster: Cluster, intent: ApplyIntent) -> str | None:
    manager = settings.SLUICE_FIELD_MANAGER
    try:
        if (
            intent.action in (Action.DELETE, Action.REPLACE)
            or intent.recreate
            or (intent.action == Change.Action.ROLLBACK and intent.manifest is None)
        ):
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
    deleted = [i for i in intents if i.manifest is None]
    present = [i for i in intents if i.manifest is not None]
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
