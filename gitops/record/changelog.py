"""Intents before applies, then one append-only change-log entry per applied intent.

An ``ApplyIntent`` is written before an object is touched. Applying is
idempotent (server-side apply of the same content changes nothing), and a
``Change`` row is tied one-to-one to its intent, so a run that dies between
applying and logging is finished by the next one without logging twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from gitops import metrics
from gitops.failpoints import failpoint
from gitops.models import ApplyIntent, Change, ManagedObject, Rollout, Source
from gitops.plan import Action, Plan, PlanItem
from gitops.record.bulk import rows_insert
from gitops.record.inventory import CONFIGMAP, inventory_update


def intents_write(
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
    if not retry_failed and items and rollout.phase == Rollout.Phase.COMPLETED:
        # A change the cluster refused for good is not retried on every poll of a finished rollout; a
        # new commit, or an explicit retry, tries again. An active rollout's step tries it (any refusal
        # fails the step): a refusal of a write a crash left pending must not let the step pass without it.
        refused = set(
            ApplyIntent.objects.filter(
                rollout=rollout, status=ApplyIntent.Status.FAILED, change__error__contains="conflict"
            ).values_list("cluster", "namespace", "name", "after_hash")
        )
        items = [item for item in items if (*item.key, item.after_hash) not in refused]
    healed = _inventory_commits(
        rollout.source_id, [item for item in items if item.action is Action.SELF_HEAL]
    )
    intents = [
        ApplyIntent.for_item(
            rollout,
            item,
            commit=current_plan.commit,
            actor=actor,
            step_index=step_index,
            weight=weight,
            healed_commit=healed.get(item.key, ""),
        )
        for item in items
    ]
    return rows_insert(intents, encoded=_encoded_manifest)


def _inventory_commits(source_id: int, items: list[PlanItem]) -> dict[tuple[str, str, str], str]:
    """The commit the source's inventory recorded for each object of ``items`` (self-heals: rare, so
    the query is asked only when there is one)."""
    if not items:
        return {}
    keys = {item.key for item in items}
    rows = ManagedObject.objects.filter(source_id=source_id, name__in={key[2] for key in keys}).values_list(
        "cluster", "namespace", "name", "commit"
    )
    return {
        (cluster, namespace, name): commit
        for cluster, namespace, name, commit in rows
        if (cluster, namespace, name) in keys
    }


def _encoded_manifest(intent: ApplyIntent) -> dict[str, str | None]:
    return {"manifest": intent.manifest_json}


def intents_pending(source: Source) -> list[ApplyIntent]:
    """Intents a crashed run left behind: written, maybe applied, not yet logged. A removal's intents
    (no rollout) are its own to finish: a sync never deletes or releases what a removal meant to.

    Nor are those of a rollout that ended owing their cluster its rollback: that rollback restores
    their targets from what the cluster holds, and applying them first would put out, for a moment,
    content the rollout was stopped from bringing (see ``rollback._restore``). Nor those of an active
    rollout whose rollback was asked for or decided: that rollback settles them the same way (a forward
    change or a restore found in effect is logged, not applied again; the rest are dropped).
    """
    pending = list(intents_pending_query(source))
    if not pending:
        return pending
    owing: dict[int | None, list[str]] = {}
    rolling_back: set[int | None] = set()
    rows = Rollout.objects.filter(pk__in={intent.rollout_id for intent in pending}).values_list(
        "pk", "rollback_pending_clusters", "phase", "abort_requested_by"
    )
    for pk, owed, phase, abort_requested_by in rows:
        owing[pk] = owed
        # Being rolled back (an abort asked, or Sluice's own decision a crash cut short): its rollback
        # settles every one of its intents from what the clusters hold, logging what took effect.
        if abort_requested_by and phase in Rollout.ACTIVE_PHASES:
            rolling_back.add(pk)
    return [
        intent
        for intent in pending
        if intent.cluster not in owing.get(intent.rollout_id, ()) and intent.rollout_id not in rolling_back
    ]


def intents_pending_query(source: Source | int) -> QuerySet[ApplyIntent]:
    """``intents_pending`` as a query, for a caller that first asks whether there are any."""
    return ApplyIntent.objects.filter(source=source, status=ApplyIntent.Status.PENDING, rollout__isnull=False)


def intent_where(intent: ApplyIntent) -> str:
    """The intent's object (and the file it comes from), as its refusal's text starts."""
    origin = f" ({intent.origin})" if intent.origin else ""
    return f"{intent.cluster}/{intent.namespace}/{intent.name}{origin}"


def changes_record(intents: Sequence[ApplyIntent], errors: Sequence[str | None]) -> list[str]:
    """Logs each applied intent exactly once and marks it done or failed. Returns the failure texts.

    ``errors`` holds, for each intent in order, why the cluster refused it, or None.
    """
    now = timezone.now()
    refused = {intent.pk: error for intent, error in zip(intents, errors, strict=True) if error}
    failed = set(refused)
    # The file the object comes from, where one does: an admission policy's denial then says what to edit.
    failures = [
        f"{intent_where(intent)}: {error}" for intent, error in zip(intents, errors, strict=True) if error
    ]
    if failed:
        names = dict(Source.objects.filter(pk__in={i.source_id for i in intents}).values_list("pk", "name"))
        for intent in intents:
            if intent.pk in failed:
                metrics.APPLY_ERRORS.labels(names.get(intent.source_id, "?"), intent.cluster).inc()
    # The log and the inventory commit together. Apart, a pass that died between them left its
    # intents done and logged but its objects out of the inventory: nothing finishes a done intent,
    # so every later plan called them another's (labelled as the source's, never applied by it) and
    # left them alone for good, and a prune's stale entry kept its cluster from being removed.
    # Together, a death leaves the intents pending, and the next pass applies and logs them once.
    with transaction.atomic():
        # The one-to-one on intent makes a second log of the same intent impossible. The entries are
        # copied from the intents' rows, written moments ago: their content is not encoded twice.
        Change.log_intents([i.pk for i in intents], refused, at=now)
        failpoint("after-change-log")
        # Once per batch, never per intent: inside a loop, 2,000 intents cost millions of upserts.
        # The inventory is of ConfigMaps (what prune may delete); a restarted workload is not Sluice's.
        inventory_update([i for i in intents if i.pk not in failed and i.kind == CONFIGMAP])
    # Callers read the outcome from the intents themselves.
    for intent in intents:
        intent.status = ApplyIntent.Status.FAILED if intent.pk in failed else ApplyIntent.Status.DONE
    return failures
