"""Desired state + live objects -> a plan of key-level changes. Pure: no I/O.

Every desired object and every object this source manages gets one
``PlanItem``. Items whose action changes the cluster are *actionable*; the
others (unchanged, drift left alone, conflicts, orphans) are reported only.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from gitops.content import Content, live_content, live_provenance
from gitops.desired.flags import COMMIT_METADATA_KEY, SOURCE_METADATA_KEY
from gitops.desired.revision import DesiredObject, DesiredState, flag_set_json, flag_set_key

ORIGIN_STAMPS = (COMMIT_METADATA_KEY, SOURCE_METADATA_KEY)


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


@dataclass(frozen=True)
class DiffItem:
    """One key-level difference, after kopf's diff items."""

    op: str  # "add", "remove" or "change"
    field: str  # "data", "binaryData", "labels", "annotations" or "immutable"
    key: str
    old: Any = None
    new: Any = None

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"op": self.op, "field": self.field, "key": self.key}
        if self.field == "binaryData":
            result["old"] = summarize_binary(self.old)
            result["new"] = summarize_binary(self.new)
        else:
            result["old"] = self.old
            result["new"] = self.new
            unified = self.unified()
            if unified:
                result["unified"] = unified
        return result

    def unified(self) -> str | None:
        """A unified text diff when either side spans lines; JSON is pretty-printed first."""
        if not isinstance(self.old, str | None) or not isinstance(self.new, str | None):
            return None
        old, new = self.old or "", self.new or ""
        if "\n" not in old.rstrip("\n") and "\n" not in new.rstrip("\n"):
            return None
        lines = difflib.unified_diff(
            _readable(old).splitlines(keepends=True),
            _readable(new).splitlines(keepends=True),
            fromfile=f"{self.field}/{self.key} (live)",
            tofile=f"{self.field}/{self.key} (git)",
        )
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def _readable(text: str) -> str:
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            return json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        except ValueError:
            return text
    return text


def summarize_binary(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        raw = base64.b64decode(value)
    except ValueError:
        return "<invalid base64>"
    return f"<{len(raw)} bytes, sha256:{hashlib.sha256(raw).hexdigest()[:12]}>"


def diff_content(old: Content | None, new: Content | None) -> list[DiffItem]:
    old = old or Content()
    new = new or Content()
    items: list[DiffItem] = []
    for field_name, before, after in (
        ("data", old.data, new.data),
        ("binaryData", old.binary_data, new.binary_data),
        ("labels", old.labels, new.labels),
        ("annotations", old.annotations, new.annotations),
    ):
        for key in sorted(before.keys() | after.keys()):
            if key not in before:
                items.append(DiffItem("add", field_name, key, None, after[key]))
            elif key not in after:
                items.append(DiffItem("remove", field_name, key, before[key], None))
            elif before[key] != after[key]:
                items.append(DiffItem("change", field_name, key, before[key], after[key]))
    if bool(old.immutable) != bool(new.immutable):
        items.append(DiffItem("change", "immutable", "immutable", old.immutable, new.immutable))
    return items


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
    for wanted_object in desired.objects:
        live = live_index.get(wanted_object.key)
        item = _memoized_plan_object(wanted_object, live, desired, source=source, commit=commit, memo=memo)
        if wanted_object.key in held and item.action in (Action.CREATE, Action.UPDATE, Action.REPLACE):
            item = replace(item, action=Action.HELD, reason="a later rollout step reaches this target")
        items.append(item)

    for key, live in sorted(live_index.items()):
        owner, live_commit, live_hash = live_provenance(live)
        if owner != source or key in wanted:
            continue
        if key not in managed:
            items.append(_foreign(key, live, "carries this source's labels, but Sluice never applied it"))
            continue
        before = live_content(live)
        diff: tuple[DiffItem, ...]
        if desired.policy.prune and not prune_allowed:
            action, diff, reason = Action.HELD, (), "gone from Git; pruned when the rollout reaches 100%"
        elif desired.policy.prune:
            action, diff, reason = (
                Action.DELETE,
                tuple(diff_content(before, None)),
                "no longer in Git; prune is on",
            )
        else:
            action, diff, reason = Action.ORPHAN, (), "no longer in Git; kept because prune is off"
        items.append(
            PlanItem(
                key[0],
                key[1],
                action,
                diff,
                before=before,
                live_commit=live_commit,
                live_content_hash=live_hash,
                reason=reason,
            )
        )
    return Plan(source=source, commit=commit, items=tuple(items))


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
DRIFTED = DiffItem("change", "content", "*", "edited in the cluster", None)


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
