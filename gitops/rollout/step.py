"""One weight of a rollout: plan what it covers, write intents, apply them, record the changes.

This is the pipeline's middle, read in order: the live objects and the
revision make a plan at the step's weight (held targets and canary-wrapped flag
sets included), intents are written before anything is applied, the cluster
applies them, and the change log records how each went.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from django.utils import timezone

from gitops import caches
from gitops.cluster import get_cluster
from gitops.cluster.apply import intents_apply
from gitops.cluster.live import live_configmaps, live_index
from gitops.desired.revision import DesiredState, flag_set_key, unstamped
from gitops.models import ApplyIntent, Rollout, Source
from gitops.plan import Action, Plan, plan
from gitops.record.changelog import changes_record, intents_pending, intents_write
from gitops.record.inventory import managed_keys, managed_namespaces
from gitops.rollout.engine import desired_at_weight, held_keys
from gitops.rollout.state import StepOutcome
from gitops.vocabulary import ChangeAction, Outcome


def weight_apply(
    rollout: Rollout,
    desired: DesiredState,
    weight: int,
    step_index: int,
    actor: str,
    *,
    retry_failed: bool = False,
) -> StepOutcome:
    """Brings every target to what ``weight`` asks for; returns what it did and what the cluster refused."""
    source = rollout.source
    live = live_configmaps(
        get_cluster(), {*desired.namespaces, *in_scope(source, managed_namespaces(source))}
    )
    weighted = desired_at_weight(desired, weight, flag_baselines(rollout, desired, live))
    current = plan(
        weighted,
        live,
        source=source.name,
        commit=rollout.revision.commit,
        managed=managed_keys(source),
        held=held_keys(desired, weight),
        prune_allowed=weight >= 100,
        memo=caches.for_source(source.pk).plan_memo,
    )
    intents = intents_write(
        rollout, current, actor=actor, step_index=step_index, weight=weight, retry_failed=retry_failed
    )
    failures = intents_execute(intents)
    applied = {(i.namespace, i.name) for i in intents if i.status == ApplyIntent.Status.DONE}
    Source.objects.filter(pk=source.pk).update(
        last_plan=plan_snapshot(current, weight=weight, applied=applied)
    )
    return StepOutcome(Outcome.APPLIED if intents else Outcome.UNCHANGED, current.summary(), failures)


def in_scope(source: Source, namespaces: set[str]) -> set[str]:
    """The namespaces the administrator still allows: one taken out of scope is neither written nor pruned."""
    return {namespace for namespace in namespaces if source.scope.namespace_problem(namespace) is None}


def intents_execute(intents: Sequence[ApplyIntent]) -> list[str]:
    """Applies written intents, then logs each exactly once. Returns the cluster's refusals."""
    if not intents:
        return []
    return changes_record(intents, intents_apply(get_cluster(), intents))


def intents_finish_pending(source: Source) -> int:
    """Completes what a crashed run left pending (applying again is harmless). Returns how many."""
    pending = intents_pending(source)
    intents_execute(pending)
    return len(pending)


def plan_snapshot(current: Plan, *, weight: int, applied: set[Any]) -> dict[str, Any]:
    """What pages show as the current plan: what still differs from Git after this step, key by key."""
    pending = [
        item for item in current.items if item.action is not Action.UNCHANGED and item.key not in applied
    ]
    summary: dict[str, int] = {}
    for item in pending:
        summary[item.action.value] = summary.get(item.action.value, 0) + 1
    if applied:
        summary["applied"] = len(applied)
    return {
        "commit": current.commit,
        "weight": weight,
        "computed_at": timezone.now().isoformat(),
        "summary": summary,
        "items": [item.as_dict() for item in pending],
    }


def flag_baselines(
    rollout: Rollout, desired: DesiredState, live: dict[str, list[dict[str, Any]]]
) -> dict[tuple[str, str], dict[str, Any] | None]:
    """Each flag set as published before this rollout touched it: the old side of its canary."""
    flag_objects = [obj for obj in desired.objects if obj.flag_set is not None]
    if not flag_objects:
        return {}
    first_intents: dict[tuple[str, str], ApplyIntent] = {}
    for intent in rollout.intents.exclude(action=ChangeAction.ROLLBACK).order_by("id"):
        first_intents.setdefault((intent.namespace, intent.name), intent)
    index = live_index(live)
    baselines: dict[tuple[str, str], dict[str, Any] | None] = {}
    for obj in flag_objects:
        data: dict[str, str] | None
        if obj.key in first_intents:
            before = first_intents[obj.key].before
            data = (before or {}).get("data") if before is not None else None
        else:
            live_object = index.get(obj.key)
            data = live_object.get("data") if live_object is not None else None
        document = (data or {}).get(flag_set_key(obj.name))
        try:
            baselines[obj.key] = unstamped(json.loads(document)) if document else None
        except ValueError:
            baselines[obj.key] = None
    return baselines
