"""One weight of a rollout: plan what it covers, write intents, apply them, record the changes.

This is the pipeline's middle, read in order: the live objects and the
revision make a plan at the step's weight (held targets and canary-wrapped flag
sets included), intents are written before anything is applied, the cluster
applies them, and the change log records how each went.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.utils import timezone

from gitops import caches
from gitops.cluster.apply import intents_apply_everywhere, stamps_drop_held
from gitops.cluster.client import WORKLOAD_KINDS
from gitops.cluster.live import LiveState, live_configmaps, live_view, objects_read_one_by_one
from gitops.consumers.workloads import restart_holds
from gitops.desired.content import KIND_LABEL
from gitops.desired.limits import Limits
from gitops.desired.revision import (
    DesiredObject,
    DesiredState,
    ObjectKey,
    flag_set_key,
    live_document,
    published_baseline,
)
from gitops.errors import GitopsError, TemporaryError
from gitops.failpoints import failpoint
from gitops.models import ApplyIntent, Rollout, Source
from gitops.plan import Action, Plan, plan
from gitops.plan.provenance import live_provenance, write_holds
from gitops.plan.shown import items_shown
from gitops.plan.stamps import FLAG_SET_KIND
from gitops.record.changelog import changes_record, intent_where, intents_pending, intents_write
from gitops.record.inventory import CONFIGMAP, inventory_forget_gone, inventory_targets, managed_keys
from gitops.rollout.engine import desired_at_weight, held_keys
from gitops.rollout.flag_canary import CanaryRefused, MoveOrder, move_order
from gitops.rollout.flag_catalog import flag_catalog_record
from gitops.rollout.state import (
    StepOutcome,
    clusters_owed_rollback,
    clusters_with_pending_writes,
    pending_writes_added,
    pending_writes_known,
)
from gitops.vocabulary import ChangeAction, Outcome

log = logging.getLogger("gitops.rollout")


def weight_apply(
    rollout: Rollout,
    desired: DesiredState,
    weight: int,
    step_index: int,
    actor: str,
    *,
    retry_failed: bool = False,
) -> StepOutcome:
    """Brings every target to what ``weight`` asks for; returns what it did, what the clusters refused,
    and the clusters it needed and could not reach (their targets are left as they are)."""
    source = rollout.source
    managed = managed_keys(source)
    live = live_state(
        source,
        desired,
        managed=managed,
        deferred=clusters_owed_rollback(source.pk),
        refusing=clusters_with_pending_writes(source.pk),
    )
    # At 100 the flag sets are Git's own: no canary, so no baseline to read (nearly every poll).
    baselines = flag_baselines(rollout, desired, live.index(), managed) if weight < 100 else {}
    weighted = desired_at_weight(desired, weight, baselines, rollout.flag_population)
    held = held_keys(desired, weight)
    current = plan(
        weighted,
        live.objects,
        source=source.name,
        commit=rollout.revision.commit,
        managed=managed,
        held=held,
        prune_allowed=weight >= 100,
        memo=caches.for_source(source.pk).plan_memo,
        unreachable=live.reasons(),
        settled=live.settled,
    )
    inventory_forget_gone(source, gone_for_good(live, managed, desired))
    inventory_forget_gone(source, current.released, why="taken over, and gone from Git")
    intents = intents_write(
        rollout, current, actor=actor, step_index=step_index, weight=weight, retry_failed=retry_failed
    )
    executed = intents_execute(intents)
    pending_writes_added(source.pk, executed.unreachable_errors)
    applied = {i.key for i in intents if i.status == ApplyIntent.Status.DONE}
    snapshot = plan_snapshot(current, weight=weight, applied=applied)
    snapshot["reads"] = live.reads
    Source.objects.filter(pk=source.pk).update(last_plan=snapshot)
    conflicting = {item.key for item in current.items if item.action is Action.CONFLICT}
    flag_catalog_record(rollout, desired, weight, baselines, weighted, conflicting=conflicting)  # its page
    unreachable = {**needed(weighted, held, live.reasons(), weight), **executed.unreachable}
    outcome = Outcome.APPLIED if intents else Outcome.UNCHANGED
    return StepOutcome(outcome, current.summary(), executed.failures, unreachable)


def live_state(
    source: Source,
    desired: DesiredState,
    *,
    managed: frozenset[ObjectKey] | None = None,
    cached: bool = True,
    deferred: Mapping[str, str] | None = None,
    refusing: Mapping[str, GitopsError] | None = None,
) -> LiveState:
    """Every target's live objects, or (``cached``) what a plan needs of them: the live cache settles
    what it vouches for in every cluster (``live_view``), and the rest is read. When no cluster the
    source needs answers, the pass fails as a whole (and backs off) as it always did; otherwise the
    ones that answer go on without the others. ``managed`` is the source's inventory, if read already.
    A ``deferred`` cluster (cluster -> why) is neither read nor written: it is reported as unreachable.
    So is a ``refusing`` one (cluster -> its error: it left the source's writes pending this pass),
    which also counts as a cluster that does not answer."""
    inventory = managed_keys(source) if managed is None else managed
    targets = {*desired.targets, *in_scope(source, inventory_targets(source.pk, inventory))}
    needed_clusters = {cluster for cluster, _ in targets}
    waiting = {cluster: why for cluster, why in (deferred or {}).items() if cluster in needed_clusters}
    failing = {cluster: why for cluster, why in (refusing or {}).items() if cluster in needed_clusters}
    targets = {target for target in targets if target[0] not in waiting and target[0] not in failing}
    if cached and stamps_drop_held(source):
        memo = caches.for_source(source.pk).settle_memo
        live = live_view(targets, source=source.name, desired=desired, managed=inventory, memo=memo)
    else:
        live = live_configmaps(targets)
    live.unreachable.update(failing)
    clusters = {cluster for cluster, _ in targets} | set(failing)
    # A cluster left alone for its owed rollback may well answer: the step waits for all of them then.
    if clusters and not waiting and clusters <= set(live.unreachable):
        raise next(iter(live.unreachable.values()))
    live.unreachable.update({cluster: TemporaryError(why) for cluster, why in waiting.items()})
    return live


def gone_for_good(live: LiveState, managed: frozenset[ObjectKey], desired: DesiredState) -> set[ObjectKey]:
    """The inventory's objects a read found gone that Git no longer has: nothing is left to prune, and
    each would be read on every pass. Read one by one and not found, or missing from a namespace read
    whole (a LIST holds every object of it)."""
    gone = {key for key in live.absent if key in managed and key not in desired.keyed}
    if live.listed:
        found = live.index()
        gone.update(
            key
            for key in managed
            if (key[0], key[1]) in live.listed and key not in found and key not in desired.keyed
        )
    return gone


def needed(
    weighted: DesiredState, held: frozenset[ObjectKey], unreachable: dict[str, str], weight: int
) -> dict[str, str]:
    """The unreachable clusters this weight needs: one with a target it covers (at 100%, any).
    ``weighted`` is the state at ``weight`` (``desired_at_weight``): a flag set goes out at every weight
    only where it has a canary, and one published as Git has it needs no cluster. Every cluster with
    any flag set held up every wave, a ConfigMap's commit too."""
    if weight >= 100:
        return dict(unreachable)
    covered = {
        obj.cluster
        for obj in weighted.objects
        if obj.key not in held and (obj.flag_set is None or obj.canary_document is not None)
    }
    return {cluster: why for cluster, why in unreachable.items() if cluster in covered}


def in_scope(source: Source, targets: Collection[tuple[str, str]]) -> set[tuple[str, str]]:
    """The targets the administrator still allows: one taken out of scope is neither written nor pruned."""
    scope = source.scope
    return {(cluster, ns) for cluster, ns in targets if scope.namespace_problem(ns, cluster) is None}


@dataclass
class Executed:
    """The clusters' refusals of applied intents, and the clusters that could not be reached (why)."""

    failures: list[str] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)
    # The same clusters' errors as raised: a 401 stays permanent, a 429 keeps its delay.
    unreachable_errors: dict[str, GitopsError] = field(default_factory=dict)

    def add(self, other: Executed) -> None:
        self.failures.extend(other.failures)
        self.unreachable.update(other.unreachable)
        self.unreachable_errors.update(other.unreachable_errors)


def intents_execute(intents: Sequence[ApplyIntent]) -> Executed:
    """Applies written intents, then logs each exactly once. An unreachable cluster's intents stay pending.
    A flag set's write that takes away a flag another set's write adds goes out only once that one is
    stored and logged (``flag_move_order``); every other write goes out in one batch, as it always did."""
    if not intents:
        return Executed()
    failpoint("before-apply")  # written, nothing sent: a crash here leaves every intent pending
    order = flag_move_order(intents)
    if not order.rounds:  # nearly every batch: no flag moves between two of its flag sets
        return _execute_together(intents)
    return _execute_in_rounds(intents, order)


def _execute_together(intents: Sequence[ApplyIntent]) -> Executed:
    """The intents in one batch, their clusters side by side, then logged."""
    applied = intents_apply_everywhere(intents)
    failures = changes_record(applied.intents, applied.errors) if applied.intents else []
    unreachable = {name: str(error) for name, error in applied.unreachable.items()}
    return Executed(failures, unreachable, dict(applied.unreachable))


def _execute_in_rounds(intents: Sequence[ApplyIntent], order: MoveOrder[int]) -> Executed:
    """The batch in ``order``'s rounds, each applied and logged before the next is sent. If a write that
    adds flags was refused, the write that takes them away is not sent, and is logged as refused (the
    step fails, as for any refusal). If its cluster did not answer, both stay pending for a later pass,
    which orders them again (or finds the first in effect and sends the second alone)."""
    executed = Executed()
    for number in range(max(order.rounds.values()) + 1):
        if number:
            failpoint("between-flag-moves")  # the flags' new sets stored and logged, their old ones not sent
        sent: list[ApplyIntent] = []
        refused: list[ApplyIntent] = []
        reasons: list[str | None] = []
        for index, intent in enumerate(intents):
            if order.rounds.get(index, 0) != number:
                continue
            first = [intents[other] for other in order.waits.get(index, ())]
            failed = [other for other in first if other.status == ApplyIntent.Status.FAILED]
            if failed:
                refused.append(intent)
                reasons.append(_waited_for_refused(failed))
            elif all(other.status == ApplyIntent.Status.DONE for other in first):
                sent.append(intent)
        if sent:
            executed.add(_execute_together(sent))
        if refused:
            executed.failures.extend(changes_record(refused, reasons))
    return executed


def refused_as_taken_over(source_name: str, intents: Sequence[ApplyIntent]) -> list[ApplyIntent]:
    """The refused ConfigMap intents among ``intents`` whose object a new LIST shows no longer
    ``source_name``'s, or (for a delete or a release) gone: taken over (or deleted) between the caller's
    read and its write, so Sluice refused its own delete or release (``NotHeldError``), or the cluster
    refused a write that is no longer the source's to make. A removal and a rollback leave those alone,
    as they leave one their read found so: they are no failure. One LIST per namespace of a refusal (an
    RBAC refusal may be one per object); a cluster that does not answer now leaves its refusals standing."""
    refused = [
        intent
        for intent in intents
        if intent.status == ApplyIntent.Status.FAILED and intent.kind not in WORKLOAD_KINDS
    ]
    if not refused:
        return []
    live = live_configmaps({(intent.cluster, intent.namespace) for intent in refused})
    found = live.index()
    taken = []
    for intent in refused:
        if intent.cluster in live.unreachable:
            continue
        current = found.get((intent.cluster, intent.namespace, intent.name))
        if current is None:
            # Gone is left alone only where the write would have taken the object away: a refused
            # restore of a pruned object (an apply) is still owed to the cluster, and a failure.
            if intent.manifest is None:
                taken.append(intent)
        elif live_provenance(current)[0] != source_name:
            taken.append(intent)
    return taken


def failures_without(failures: Sequence[str], intents: Sequence[ApplyIntent]) -> list[str]:
    """``failures`` (``changes_record``'s texts) but those of ``intents``."""
    addresses = tuple(f"{intent_where(intent)}: " for intent in intents)
    return [text for text in failures if not (addresses and text.startswith(addresses))]


def _waited_for_refused(failed: Sequence[ApplyIntent]) -> str:
    """Why a flag set's write was not sent: ``failed``, writes adding flags it takes away, were refused."""
    names = ", ".join(f"{intent.namespace}/{intent.name}" for intent in failed)
    return (
        f"not sent: the write of flag set {names}, which adds flags this one takes away, was refused; sent "
        "alone, this write would leave flagd serving them from neither (the code's default)"
    )


def flag_move_order(intents: Sequence[ApplyIntent]) -> MoveOrder[int]:
    """Which of a batch's writes (by their place in it) wait for others: in each namespace of a cluster,
    a flag set's write that takes away a flag another flag set's write adds (``move_order``). Only a
    namespace where two flag sets are written, one of them published already, is read further: a first
    apply, or a step that writes one flag set per namespace, parses nothing."""
    places: dict[tuple[str, str], list[int]] = {}
    published: set[tuple[str, str]] = set()  # where a written flag set held flags before: one may lose some
    for index, intent in enumerate(intents):
        if intent.kind in WORKLOAD_KINDS:
            continue
        before, after = _flag_set_text(intent.before, intent.name), _flag_set_text(intent.after, intent.name)
        if before is None and after is None:
            continue
        place = (intent.cluster, intent.namespace)
        places.setdefault(place, []).append(index)
        if before is not None:
            published.add(place)
    rounds: dict[int, int] = {}
    waits: dict[int, frozenset[int]] = {}
    for place, indices in places.items():
        if len(indices) < 2 or place not in published:
            continue
        order = move_order({index: _flag_keys_of(intents[index]) for index in indices})
        rounds.update(order.rounds)
        waits.update(order.waits)
    return MoveOrder(rounds, waits)


def _flag_set_text(content: Mapping[str, Any] | None, name: str) -> str | None:
    """A flag set's published text in an intent's content, or None (not a flag set, or no object)."""
    if content is None:
        return None
    text = (content.get("data") or {}).get(flag_set_key(name))
    return text if isinstance(text, str) else None


def _flag_keys_of(intent: ApplyIntent) -> tuple[frozenset[str], frozenset[str]]:
    """The flag keys the intent's flag set serves before and after it (none once deleted)."""

    def keys(content: Mapping[str, Any] | None) -> frozenset[str]:
        flags = (live_document(_flag_set_text(content, intent.name)) or {}).get("flags")
        return frozenset(flags) if isinstance(flags, Mapping) else frozenset()

    return keys(intent.before), keys(intent.after)


@dataclass
class Resumed:
    """What a pass finished of the writes earlier passes left pending: how many, and the refusals."""

    count: int = 0
    failures: list[str] = field(default_factory=list)


def intents_finish_pending(source: Source) -> Resumed:
    """Completes what a crashed run left pending (applying again is harmless).

    Intents of a cluster that still does not answer stay pending for a later pass. Those of a target
    an administrator has taken out of the source's scope since they were written are not applied: what
    was allowed when a step wrote them is not what is allowed now (``_settle_outside_scope``).
    """
    pending, found_in_effect = _still_ours(source, _within_scope(source, intents_pending(source)))
    executed = intents_execute(pending)
    left = {intent.cluster for intent in pending if intent.status == ApplyIntent.Status.PENDING}
    pending_writes_known(
        source.pk,
        {
            cluster: executed.unreachable_errors.get(cluster) or TemporaryError("its writes are pending")
            for cluster in left
        },
    )
    finished = sum(1 for intent in pending if intent.status != ApplyIntent.Status.PENDING)
    return Resumed(finished + found_in_effect, executed.failures)


def _still_ours(source: Source, pending: list[ApplyIntent]) -> tuple[list[ApplyIntent], int]:
    """A pending write of a ConfigMap (a create, an update, a heal, a delete, a replace) is sent again
    only to an object that is still this source's, or to none: it may have waited days for its
    cluster. One the cluster shows carried out (the object gone; holding its content) is logged, not
    sent again (a second replace took the object away from its pods for a moment); one whose object
    someone took over since (Sluice's labels removed, the way to keep it; another source's now;
    made by someone else where a create was pending) is dropped, never logged. Before, only deletes and
    replaces were checked: a pending heal, forced, put Sluice's labels back on an object an operator
    had taken over and deleted the key they added. A source removal settles its own the same way
    (``source_removal._settle_pending``); a rollout's restores are checked when planned (``rollback``).
    Returns those to send, and how many were found in effect (finished, as sent ones are)."""
    checked = [intent for intent in pending if _checked_before_sent_again(intent)]
    if not checked:
        return pending, 0
    # One list per namespace (a crash mid-step leaves thousands), as a source removal reads them; a
    # cluster that does not answer keeps its intents, sent as before and met the same.
    read = live_configmaps({(intent.cluster, intent.namespace) for intent in checked})
    held = read.index()
    took_effect: list[ApplyIntent] = []
    dropped: list[ApplyIntent] = []
    for intent in checked:
        if intent.cluster in read.unreachable:
            continue
        live = held.get((intent.cluster, intent.namespace, intent.name))
        if write_holds(live, manifest=intent.manifest, after=intent.after, before=intent.before):
            took_effect.append(intent)
        elif live is not None and live_provenance(live)[0] != source.name:
            dropped.append(intent)
    ApplyIntent.drop_pending(ApplyIntent.objects.filter(pk__in=[intent.pk for intent in dropped]))
    if took_effect:
        changes_record(took_effect, [None] * len(took_effect))
    if dropped:
        log.warning(
            "source %s: %d pending write(s) not sent: their objects are no longer the source's (%s)",
            source.name,
            len(dropped),
            ", ".join(f"{i.cluster}/{i.namespace}/{i.name}" for i in dropped[:5]),
        )
    settled = {intent.pk for intent in (*took_effect, *dropped)}
    return [intent for intent in pending if intent.pk not in settled], len(took_effect)


def _checked_before_sent_again(intent: ApplyIntent) -> bool:
    """A ConfigMap's write of the source's own content; not a workload's restart stamp (a consumer
    carries no provenance), nor a rollout's restore or a removal's release, settled where they are made."""
    return intent.kind not in WORKLOAD_KINDS and intent.action not in (
        ChangeAction.ROLLBACK,
        ChangeAction.RELEASE,
    )


def _within_scope(source: Source, pending: list[ApplyIntent]) -> list[ApplyIntent]:
    """The pending intents the source's scope still allows; the others are settled without a write
    (``_settle_outside_scope``)."""
    allowed = in_scope(source, {(intent.cluster, intent.namespace) for intent in pending})
    outside = [intent for intent in pending if (intent.cluster, intent.namespace) not in allowed]
    if outside:
        _settle_outside_scope(source, outside)
    return [intent for intent in pending if (intent.cluster, intent.namespace) in allowed]


def _settle_outside_scope(source: Source, outside: list[ApplyIntent]) -> None:
    """Pending intents to targets an administrator took out of the source's scope since they were
    written are not applied. One the cluster shows already took effect (a crash, or a cut-short batch,
    came before it was logged) is logged, so its rollout's rollback knows it; the others are dropped. A
    cluster that does not answer keeps them pending; one that refuses the read (the administrator may
    have taken Sluice's access there too) cannot tell, and they are dropped. The reads do not mark the
    cluster as down: its targets in scope are written as usual."""
    read = objects_read_one_by_one(
        (intent.cluster, intent.kind, intent.namespace, intent.name) for intent in outside
    )
    took_effect: list[ApplyIntent] = []
    dropped: list[ApplyIntent] = []
    for intent in outside:
        address = (intent.cluster, intent.kind, intent.namespace, intent.name)
        if intent.cluster in read.waiting:
            continue
        live = read.found.get(address)
        if not read.known(address):
            holds = False
        elif intent.kind in WORKLOAD_KINDS:
            holds = restart_holds(live, intent.cluster, intent.after)
        else:
            holds = write_holds(live, manifest=intent.manifest, after=intent.after, before=intent.before)
        (took_effect if holds else dropped).append(intent)
    ApplyIntent.drop_pending(ApplyIntent.objects.filter(pk__in=[intent.pk for intent in dropped]))
    if took_effect:
        changes_record(took_effect, [None] * len(took_effect))
    targets = sorted({f"{intent.cluster}/{intent.namespace}" for intent in outside})
    log.warning(
        "source %s: %d pending change(s) to %s, no longer in its scope, not applied "
        "(%d found in effect, logged)",
        source.name,
        len(took_effect) + len(dropped),
        ", ".join(targets[:5]) + (f" and {len(targets) - 5} more" if len(targets) > 5 else ""),
        len(took_effect),
    )


def plan_snapshot(current: Plan, *, weight: int, applied: set[Any]) -> dict[str, Any]:
    """What pages show as the current plan: what still differs from Git after this step, key by key."""
    pending = [
        item for item in current.items if item.action is not Action.UNCHANGED and item.key not in applied
    ]
    summary: dict[str, int] = {}
    drifted: dict[str, int] = {}  # by cluster, counted before the items are cut (sluice_drift_objects)
    for item in pending:
        summary[item.action.value] = summary.get(item.action.value, 0) + 1
        if item.action in (Action.DRIFT, Action.SELF_HEAL):
            drifted[item.cluster] = drifted.get(item.cluster, 0) + 1
    if applied:
        summary["applied"] = len(applied)
    return {
        "commit": current.commit,
        "weight": weight,
        "computed_at": timezone.now().isoformat(),
        "summary": summary,
        "drift_by_cluster": drifted,
        "items_total": len(pending),
        "items": items_shown(pending),
    }


def plan_held(source: Source, desired: DesiredState, commit: str, *, held: str) -> None:
    """Plans a revision a freeze or a sync window holds back, applying nothing: pages show what waits."""
    managed = managed_keys(source)
    live = live_state(source, desired, managed=managed)
    current = plan(
        desired,
        live.objects,
        source=source.name,
        commit=commit,
        managed=managed,
        unreachable=live.reasons(),
        settled=live.settled,
    )
    snapshot = plan_snapshot(current, weight=100, applied=set())
    Source.objects.filter(pk=source.pk).update(last_plan={**snapshot, "reads": live.reads, "held": held})


def flag_baselines(
    rollout: Rollout,
    desired: DesiredState,
    index: dict[ObjectKey, dict[str, Any]],
    managed: Collection[ObjectKey] = (),
) -> dict[ObjectKey, dict[str, Any] | None]:
    """Each flag set as published before this rollout touched it: the old side of its canary
    (``baselines_of`` says which). With ``managed``, the source's flag sets Git dropped beside them too
    (``_dropped_flag_sets``)."""
    flag_objects = [obj for obj in desired.objects if obj.flag_set is not None]
    if not flag_objects:
        return {}
    # What each flag set held before the rollout's first change to it: only the flag sets' intents, and
    # only their key and that content (a rollout's ConfigMaps may be thousands of intents). A self-heal
    # is no change of the rollout's: it puts back what Sluice published, and what it replaced is a hand
    # edit (taken as the old side, the next step served the edit again to the users outside the canary).
    replaced: dict[ObjectKey, dict[str, Any] | None] = {}
    rows = (
        rollout.intents.exclude(action__in=(ChangeAction.ROLLBACK, ChangeAction.SELF_HEAL))
        .filter(kind=CONFIGMAP, name__in={obj.name for obj in flag_objects})
        .order_by("id")
        .values_list("cluster", "namespace", "name", "before")
    )
    for cluster, namespace, name, before in rows:
        replaced.setdefault((cluster, namespace, name), before)
    limits = Limits.from_settings(settings)
    baselines = baselines_of(flag_objects, replaced, index, source=rollout.source.name, limits=limits)
    baselines.update(_dropped_flag_sets(flag_objects, index, managed, limits))
    return baselines


def baselines_of(
    flag_objects: Sequence[DesiredObject],
    replaced: Mapping[ObjectKey, dict[str, Any] | None],
    index: Mapping[ObjectKey, dict[str, Any]],
    *,
    source: str,
    limits: Limits,
) -> dict[ObjectKey, dict[str, Any] | None]:
    """Each flag set's old side (``flag_baselines``), given what the rollout's first write of each
    replaced (``replaced``) and the live objects (``index``): what that write replaced; else, for a set
    the cluster holds as Sluice applied it from Git (the commit leaves it as it is), Git's own; else
    what the cluster publishes now, the rollout's first read of it."""
    baselines: dict[ObjectKey, dict[str, Any] | None] = {}
    for obj in flag_objects:
        live_object = index.get(obj.key)
        content: Mapping[str, Any] | None
        if obj.key in replaced:
            content = replaced[obj.key]
        elif live_object is None:
            content = None
        else:
            owner, _, applied_hash = live_provenance(live_object)
            if owner != source:
                # Another source's, or made by hand: a conflict the plan reports and never writes, so
                # it is no side of this canary (read as one, a set Sluice cannot read failed every
                # weighted rollout of the source, asking its people to restore what is not theirs).
                content = None
            elif applied_hash == obj.content.hash and obj.flag_set is not None:
                # Its stamp says Sluice applied Git's very set there (the commit leaves it as it is): that
                # is its old side, whatever the cluster holds now. An edit since is drift, reported or
                # healed as at any pass; read as the old side, an edit between two steps became a canary
                # of the edit (written over it, selfHeal or not) and, pinned by that write, what a
                # rollback restored.
                baselines[obj.key] = obj.flag_set.document
                continue
            else:
                content = live_object
        text = ((content or {}).get("data") or {}).get(flag_set_key(obj.name))
        baselines[obj.key] = published_baseline(text, limits)
        if text and baselines[obj.key] is None:
            # Started from no flags, the canary would serve everyone outside it no flag of the set at
            # all (the code's defaults), not the flags they have now.
            raise PublishedFlagSetUnreadable(obj.key)
    return baselines


def _dropped_flag_sets(
    flag_objects: Sequence[DesiredObject],
    index: Mapping[ObjectKey, dict[str, Any]],
    managed: Collection[ObjectKey],
    limits: Limits,
) -> dict[ObjectKey, dict[str, Any] | None]:
    """The source's flag sets Git dropped from a namespace where it keeps others, as published: they are
    served until the prune at 100, so a flag one held that a kept set gains has moved (``moved_flags``)."""
    places = {(obj.cluster, obj.namespace) for obj in flag_objects}
    kept = {obj.key for obj in flag_objects}
    dropped: dict[ObjectKey, dict[str, Any] | None] = {}
    for key in managed:
        if key in kept or (key[0], key[1]) not in places:
            continue
        live_object = index.get(key)
        labels = ((live_object or {}).get("metadata") or {}).get("labels") or {}
        if live_object is not None and labels.get(KIND_LABEL) == FLAG_SET_KIND:
            text = (live_object.get("data") or {}).get(flag_set_key(key[2]))
            dropped[key] = published_baseline(text, limits)
    return dropped


class PublishedFlagSetUnreadable(CanaryRefused):
    """The flag set a canary would start from, as the cluster publishes it, is not one Sluice reads."""

    def __init__(self, key: ObjectKey) -> None:
        cluster, namespace, name = key
        super().__init__(
            f"the flag set published as {namespace}/{name} in cluster {cluster} is not a flag set Sluice "
            "can read (edited by hand, or published under other rules or limits), so a canary cannot "
            "keep its users on what they have now; the rollout fails and rolls back: restore the flag set "
            "(a sync with selfHeal, or a rollout with a single setWeight 100 step), then retry"
        )
