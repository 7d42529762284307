"""Desired state + live objects -> a plan of key-level changes. Pure: no I/O.

Every desired object and every object this source manages gets one
``PlanItem``. Items whose action changes the cluster are *actionable*; the
others (unchanged, drift left alone, conflicts, orphans) are reported only.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from gitops.desired.content import Content
from gitops.desired.flags import COMMIT_METADATA_KEY, SOURCE_METADATA_KEY
from gitops.desired.revision import DesiredObject, DesiredState, flag_set_json, flag_set_key
from gitops.plan.diff import DiffItem, DiffOp, diff_content
from gitops.plan.provenance import live_content, live_provenance

ORIGIN_STAMPS = (COMMIT_METADATA_KEY, SOURCE_METADATA_KEY)
UNAPPLIED = "carries this source's labels, but Sluice never applied it"


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    SELF_HEAL = "self-heal"
    REPLACE = "replace"  # an immutable object whose content changes: delete, then create
    UNCHANGED = "unchanged"
    DRIFT = "drift"  # edited in the cluster; reported, left alone (selfHeal is off)
    CONFLICT = "conflict"  # exists but is not ours; never taken over silently
    ORPHAN = "orphan"  # ours, gone from Git, kept because prune is off
    HELD = "held"  # a rollout target a later step reaches

    @property
    def changes_cluster(self) -> bool:
        return self in ACTIONABLE


ACTIONABLE = frozenset({Action.CREATE, Action.UPDATE, Action.DELETE, Action.SELF_HEAL, Action.REPLACE})
# Plan items that leave a source out of sync with Git after a pass.
OUT_OF_SYNC = (Action.DRIFT, Action.CONFLICT, Action.ORPHAN, Action.HELD)


def drift_count(summary: Mapping[str, int]) -> int:
    """Objects edited in the cluster, from a plan's summary: reported drift and drift being healed."""
    return summary.get(Action.DRIFT, 0) + summary.get(Action.SELF_HEAL, 0)


def out_of_sync(summary: Mapping[str, int]) -> bool:
    return any(summary.get(action) for action in OUT_OF_SYNC)


@dataclass(frozen=True)
class PlanItem:
    namespace: str
    name: str
    action: Action
    diff: tuple[DiffItem, ...] = ()
    desired: DesiredObject | None = field(default=None, compare=False)
    before: Content | None = None  # live content now, None when absent
    after: Content | None = None  # content once applied, None for a delete
    live_commit: str | None = None
    live_content_hash: str | None = None
    reason: str = ""
    # Set when Sluice must take fields back from another field manager.
    force: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def before_hash(self) -> str:
        return self.before.hash if self.before is not None else ""

    @property
    def after_hash(self) -> str:
        return self.after.hash if self.after is not None else ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "kind": "ConfigMap",
            "action": self.action.value,
            "reason": self.reason,
            "origin": self.desired.origin if self.desired else None,
            "diff": [item.as_dict() for item in self.diff],
        }


@dataclass(frozen=True)
class Plan:
    source: str
    commit: str
    items: tuple[PlanItem, ...]

    @property
    def actionable(self) -> tuple[PlanItem, ...]:
        return tuple(item for item in self.items if item.action.changes_cluster)

    def count(self, action: Action) -> int:
        return sum(1 for item in self.items if item.action is action)

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.items:
            counts[item.action.value] = counts.get(item.action.value, 0) + 1
        return counts

    @property
    def drifted(self) -> tuple[PlanItem, ...]:
        return tuple(i for i in self.items if i.action in (Action.DRIFT, Action.SELF_HEAL))


class PlanMemo:
    """Verdicts of the last plan, keyed by object, kept while neither side changes.

    A live object whose resourceVersion is the one seen last time has not been
    written since; if Git's content for it is also the same, so is the verdict.
    That turns a no-op plan of thousands of objects into dictionary lookups.
    """

    def __init__(self) -> None:
        self._verdicts: dict[tuple[str, str], tuple[str, str, PlanItem]] = {}

    def get(self, key: tuple[str, str], resource_version: str, content_hash: str) -> PlanItem | None:
        entry = self._verdicts.get(key)
        if entry is not None and entry[:2] == (resource_version, content_hash):
            return entry[2]
        return None

    def put(self, key: tuple[str, str], resource_version: str, content_hash: str, item: PlanItem) -> None:
        self._verdicts[key] = (resource_version, content_hash, item)

    def keep_only(self, keys: Collection[tuple[str, str]]) -> None:
        """Forgets objects the last plan did not have: the memo never outgrows the revision."""
        for key in self._verdicts.keys() - set(keys):
            del self._verdicts[key]

    def __len__(self) -> int:
        return len(self._verdicts)


def plan(
    desired: DesiredState,
    live_by_namespace: Mapping[str, Iterable[Mapping[str, Any]]],
    *,
    source: str,
    commit: str,
    managed: Collection[tuple[str, str]],
    held: frozenset[tuple[str, str]] = frozenset(),
    prune_allowed: bool = True,
    memo: PlanMemo | None = None,
) -> Plan:
    """Compares Git with the cluster. ``live_by_namespace`` holds one LIST per namespace.

    ``managed`` is the source's inventory: what Sluice itself applied for it.
    Labels alone never make an object the source's to prune, since anyone who
    may label a ConfigMap could write them. ``held`` objects keep what they have
    (a rollout reaches them later); ``prune_allowed`` is False until a rollout
    reaches 100%.
    """
    live_index: dict[tuple[str, str], Mapping[str, Any]] = {}
    for namespace, objects in live_by_namespace.items():
        for obj in objects:
            live_index[(namespace, obj["metadata"]["name"])] = obj

    items: list[PlanItem] = []
    wanted = desired.by_key()
    if memo is not None:
        memo.keep_only(wanted)
    for wanted_object in desired.objects:
        live = live_index.get(wanted_object.key)
        if live is not None and wanted_object.key not in managed and live_provenance(live)[0] == source:
            # Labels anyone may write do not make an object this source's: only what Sluice applied does.
            forged = _foreign(wanted_object.key, live, UNAPPLIED)
            items.append(replace(forged, desired=wanted_object))
            continue
        item = _memoized_plan_object(wanted_object, live, desired, source=source, commit=commit, memo=memo)
        if wanted_object.key in held and item.action in (Action.CREATE, Action.UPDATE, Action.REPLACE):
            item = replace(item, action=Action.HELD, reason="a later rollout step reaches this target")
        items.append(item)

    for key, live in sorted(live_index.items()):
        owner, _, _ = live_provenance(live)
        if owner == source and key not in wanted:
            prune = desired.policy.prune
            items.append(_gone(key, live, managed=key in managed, prune=prune, prune_allowed=prune_allowed))
    return Plan(source=source, commit=commit, items=tuple(items))


def _gone(
    key: tuple[str, str], live: Mapping[str, Any], *, managed: bool, prune: bool, prune_allowed: bool
) -> PlanItem:
    """An object this source applied that Git no longer has: pruned, held until 100%, or an orphan."""
    if not managed:
        return _foreign(key, live, UNAPPLIED)
    _, live_commit, live_hash = live_provenance(live)
    before = live_content(live)
    diff: tuple[DiffItem, ...] = ()
    if prune and not prune_allowed:
        action, reason = Action.HELD, "gone from Git; pruned when the rollout reaches 100%"
    elif prune:
        action, reason = Action.DELETE, "no longer in Git; prune is on"
        diff = tuple(diff_content(before, None))
    else:
        action, reason = Action.ORPHAN, "no longer in Git; kept because prune is off"
    return PlanItem(
        key[0],
        key[1],
        action,
        diff,
        before=before,
        live_commit=live_commit,
        live_content_hash=live_hash,
        reason=reason,
    )


def _foreign(key: tuple[str, str], live: Mapping[str, Any], why: str) -> PlanItem:
    """An object that is not this source's: say that it exists and who writes it, never what it holds.

    Its content may be anybody's configuration, and plans are shown to every viewer.
    """
    managers = sorted(
        {entry.get("manager", "?") for entry in live.get("metadata", {}).get("managedFields") or ()}
    )
    written_by = f" (written by {', '.join(managers)})" if managers else ""
    return PlanItem(key[0], key[1], Action.CONFLICT, reason=f"{why}{written_by}; not taken over")


# Stands for "edited in the cluster" when the old content is known only by its hash.
DRIFTED = DiffItem(DiffOp.CHANGE, "content", "*", "edited in the cluster", None)


def _applied_hash_of(obj: DesiredObject, current: Content) -> str:
    """The content hash Sluice would have recorded for ``current``: flag sets without their origin stamps."""
    if obj.flag_set is None:
        return current.hash
    key = flag_set_key(obj.name)
    try:
        document = json.loads(current.data.get(key, ""))
    except ValueError:
        return current.hash
    metadata = {k: v for k, v in document.get("metadata", {}).items() if k not in ORIGIN_STAMPS}
    if metadata:
        document["metadata"] = metadata
    else:
        document.pop("metadata", None)
    return replace(current, data={**current.data, key: flag_set_json(document)}).hash


def _memoized_plan_object(
    obj: DesiredObject,
    live: Mapping[str, Any] | None,
    desired: DesiredState,
    *,
    source: str,
    commit: str,
    memo: PlanMemo | None,
) -> PlanItem:
    version = (live or {}).get("metadata", {}).get("resourceVersion")
    if memo is None or not version:
        return _plan_object(obj, live, desired, source=source, commit=commit)
    # Only "nothing to do" is remembered: it depends on the live object and on
    # Git's content for it, not on the commit or the policy. Anything else is recomputed.
    remembered = memo.get(obj.key, version, obj.content.hash)
    if remembered is not None:
        return replace(remembered, desired=obj)
    item = _plan_object(obj, live, desired, source=source, commit=commit)
    if item.action is Action.UNCHANGED:
        memo.put(obj.key, version, obj.content.hash, item)
    return item


@dataclass(frozen=True)
class Verdict:
    """What to do with an object that exists and is this source's: one row of the decision table."""

    action: Action
    reason: str = ""
    force: bool = False
    # Whether the object ends with Git's new content, or with what Sluice applied before.
    to_git: bool = True


def decide(*, git_changed: bool, drifted: bool, immutable: bool, self_heal: bool) -> Verdict:
    """The decision table. ``immutable``: the live object is immutable and its content would change."""
    if not git_changed and not drifted:
        return Verdict(Action.UNCHANGED, to_git=False)
    if immutable:
        return Verdict(Action.REPLACE, "immutable in the cluster: deleted and created again")
    if git_changed:
        also = "; also edited in the cluster" if drifted else ""
        return Verdict(Action.UPDATE, "changed in Git" + also, force=drifted and self_heal)
    if self_heal:
        return Verdict(
            Action.SELF_HEAL, "edited in the cluster; selfHeal restores Git's content", True, False
        )
    return Verdict(Action.DRIFT, "edited in the cluster; left alone because selfHeal is off", to_git=False)


def _plan_object(
    obj: DesiredObject,
    live: Mapping[str, Any] | None,
    desired: DesiredState,
    *,
    source: str,
    commit: str,
) -> PlanItem:
    wanted = obj.rendered(commit=commit, source=source)
    if live is None:
        diff = tuple(diff_content(None, wanted))
        return PlanItem(
            obj.namespace, obj.name, Action.CREATE, diff, obj, None, wanted, reason="not in the cluster"
        )
    owner, live_commit, applied_hash = live_provenance(live)
    if owner != source:
        holder = f"source {owner!r}" if owner else "nobody in Sluice (created outside it)"
        return replace(_foreign(obj.key, live, f"exists and is managed by {holder}"), desired=obj)
    current = live_content(
        live, desired_labels=obj.content.labels, desired_annotations=obj.content.annotations
    )
    git_changed = applied_hash != obj.content.hash
    # Compare with what Sluice applied last time: for flag sets that includes
    # the commit stamped at that time, which is not a change in itself.
    expected_now = obj.rendered(commit=live_commit or commit, source=source)
    if git_changed:
        # Git moved on, so Git's content says nothing about edits in the cluster:
        # the live object is drifted when it no longer hashes to what was applied.
        drift: tuple[DiffItem, ...] = () if _applied_hash_of(obj, current) == applied_hash else (DRIFTED,)
    else:
        drift = tuple(diff_content(expected_now, current))
    changes = (
        tuple(diff_content(current, wanted if git_changed else expected_now)) if git_changed or drift else ()
    )
    verdict = decide(
        git_changed=git_changed,
        drifted=bool(drift),
        immutable=bool(live.get("immutable")) and bool(changes),
        self_heal=desired.policy.self_heal,
    )
    after = current if verdict.action is Action.UNCHANGED else (wanted if verdict.to_git else expected_now)
    return PlanItem(
        obj.namespace,
        obj.name,
        verdict.action,
        changes,
        obj,
        current,
        after,
        live_commit=live_commit,
        live_content_hash=applied_hash,
        reason=verdict.reason,
        force=verdict.force,
    )
