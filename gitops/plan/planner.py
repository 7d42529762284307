"""Desired state + live objects -> a plan of key-level changes. Pure: no I/O.

Every desired object and every object this source manages gets one
``PlanItem``. Items whose action changes the cluster are *actionable*; the
others (unchanged, drift left alone, conflicts, orphans) are reported only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property
from operator import attrgetter
from typing import Any

from gitops.desired.content import COMMIT_ANNOTATION, CONTENT_HASH_ANNOTATION, Content
from gitops.desired.revision import DesiredObject, DesiredState, ObjectKey
from gitops.plan.diff import DiffItem, DiffOp, diff_content
from gitops.plan.provenance import live_content, live_provenance, other_holders, read_as_held
from gitops.plan.stamps import LiveStamp, applied_hashes_of, settles

UNAPPLIED = "carries this source's labels, but Sluice never applied it"
# Applied by this source, its Sluice labels removed since: the documented way to take an object over.
LABELS_REMOVED = "applied by this source; its Sluice labels were removed since, so it is someone else's now"
RELEASED = f"{LABELS_REMOVED}, and Git no longer has it: never pruned, and forgotten"


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
    RELEASED = "released"  # applied by this source, taken over (labels removed), gone from Git: forgotten
    HELD = "held"  # a rollout target a later step reaches
    UNREACHABLE = "unreachable"  # its cluster did not answer (or refused): neither read nor written

    @property
    def changes_cluster(self) -> bool:
        return self in ACTIONABLE


ACTIONABLE = frozenset({Action.CREATE, Action.UPDATE, Action.DELETE, Action.SELF_HEAL, Action.REPLACE})
# Plan items that leave a source out of sync with Git after a pass.
OUT_OF_SYNC = (Action.DRIFT, Action.CONFLICT, Action.ORPHAN, Action.HELD, Action.UNREACHABLE)


def drift_count(summary: Mapping[str, int]) -> int:
    """Objects edited in the cluster, from a plan's summary: reported drift and drift being healed."""
    return summary.get(Action.DRIFT, 0) + summary.get(Action.SELF_HEAL, 0)


def out_of_sync(summary: Mapping[str, int]) -> bool:
    return any(summary.get(action) for action in OUT_OF_SYNC)


@dataclass(frozen=True)
class PlanItem:
    cluster: str
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
    # For a delete (a prune, a replace): the uid and resourceVersion of the live object read as this
    # source's. The delete goes out on the condition that it is still that object at that version, with no
    # read of its own; any change since (a takeover included) fails the condition and is read and checked.
    live_uid: str = ""
    live_version: str = ""

    @property
    def key(self) -> ObjectKey:
        return (self.cluster, self.namespace, self.name)

    @property
    def before_hash(self) -> str:
        return self.before.hash if self.before is not None else ""

    @property
    def after_hash(self) -> str:
        return self.after.hash if self.after is not None else ""

    def as_dict(self) -> dict[str, Any]:
        return {**self.head(), "diff": [item.as_dict() for item in self.diff]}

    def head(self) -> dict[str, Any]:
        """The item without its diff: what a page lists when the diff is too large to carry."""
        return {
            "cluster": self.cluster,
            "namespace": self.namespace,
            "name": self.name,
            "kind": "ConfigMap",
            "action": self.action.value,
            "reason": self.reason,
            "origin": self.desired.origin if self.desired else None,
        }


_action_of = attrgetter("action")


@dataclass(frozen=True)
class Plan:
    source: str
    commit: str
    items: tuple[PlanItem, ...]

    @cached_property
    def actionable(self) -> tuple[PlanItem, ...]:
        # A frozen plan: counted once, however often a pass (or a reused plan, next pass) asks.
        return tuple(item for item in self.items if item.action in ACTIONABLE)

    def count(self, action: Action) -> int:
        return self._counts.get(action, 0)

    def summary(self) -> dict[str, int]:
        return {action.value: count for action, count in self._counts.items()}

    @cached_property
    def _counts(self) -> Counter[Action]:
        # Counted by the enum (a str: hashed in C), named by value once per action, not once per item.
        return Counter(map(_action_of, self.items))

    @property
    def released(self) -> set[ObjectKey]:
        """Objects taken over and gone from Git, which the inventory forgets (counted first: nearly
        every plan has none, and is not walked for them)."""
        if not self.count(Action.RELEASED):
            return set()
        return {item.key for item in self.items if item.action is Action.RELEASED}

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
        self._verdicts: dict[ObjectKey, tuple[str, str, PlanItem]] = {}
        # Items the live cache settled: the same stamp and the same desired object give the same item.
        self._settled: dict[ObjectKey, tuple[LiveStamp, DesiredObject, PlanItem]] = {}
        # The last plan the live cache settled whole, with its inputs: the same inputs, the same plan.
        self._whole: tuple[_SettledInputs, Plan] | None = None
        # The set of keys the memo was last kept to (an immutable one only): no key outside it is held.
        self._kept_to: frozenset[ObjectKey] | None = None

    def whole(self, inputs: _SettledInputs) -> Plan | None:
        if self._whole is not None and self._whole[0].same_as(inputs):
            return self._whole[1]
        return None

    def put_whole(self, inputs: _SettledInputs, result: Plan) -> None:
        self._whole = (inputs, result)

    def get(self, key: ObjectKey, resource_version: str, content_hash: str) -> PlanItem | None:
        entry = self._verdicts.get(key)
        if entry is not None and entry[:2] == (resource_version, content_hash):
            return entry[2]
        return None

    def put(self, key: ObjectKey, resource_version: str, content_hash: str, item: PlanItem) -> None:
        self._verdicts[key] = (resource_version, content_hash, item)

    def settled(self, key: ObjectKey, stamp: LiveStamp, obj: DesiredObject) -> PlanItem | None:
        entry = self._settled.get(key)
        if entry is not None and entry[1] is obj and entry[0] == stamp:
            return entry[2]
        return None

    def put_settled(self, key: ObjectKey, stamp: LiveStamp, obj: DesiredObject, item: PlanItem) -> None:
        self._settled[key] = (stamp, obj, item)

    @property
    def settled_items(self) -> Mapping[ObjectKey, tuple[LiveStamp, DesiredObject, PlanItem]]:
        """What ``settled`` answers from, for a loop over every object to look up inline."""
        return self._settled

    def keep_only(self, keys: Collection[ObjectKey]) -> None:
        """Forgets objects the last plan did not have: the memo never outgrows the revision. The very
        set the last plan kept to (``DesiredState.key_set``, shared by a state made in place) drops nothing,
        and is not walked again: hashing every key twice cost a third of a one-file change's plan."""
        if keys is self._kept_to:
            return
        kept = keys if isinstance(keys, Set) else set(keys)
        for key in self._verdicts.keys() - kept:
            del self._verdicts[key]
        for key in self._settled.keys() - kept:
            del self._settled[key]
        self._kept_to = keys if isinstance(keys, frozenset) else None

    def __len__(self) -> int:
        return len(self._verdicts)


LiveObjects = Mapping[tuple[str, str], Iterable[Mapping[str, Any]]]  # (cluster, namespace) -> one LIST


@dataclass(frozen=True, eq=False)
class _SettledInputs:
    """Everything a plan depends on when the live cache settled every object and nothing was read."""

    desired: DesiredState
    source: str
    commit: str
    managed: Collection[ObjectKey]
    held: frozenset[ObjectKey]
    prune_allowed: bool
    settled: Mapping[ObjectKey, LiveStamp]

    def same_as(self, other: _SettledInputs) -> bool:
        # The very same desired state (a cached revision), and equal everything else: the stamps are the
        # same objects when the settle memo answered, so comparing them is a lookup each.
        return (
            self.desired is other.desired
            and (self.source, self.commit, self.prune_allowed)
            == (other.source, other.commit, other.prune_allowed)
            and self.held == other.held
            # The worker keeps the inventory it read while its version holds: the same set, by identity.
            and (self.managed is other.managed or self.managed == other.managed)
            and self.settled == other.settled
        )


def plan(
    desired: DesiredState,
    live_by_target: LiveObjects,
    *,
    source: str,
    commit: str,
    managed: Collection[ObjectKey],
    held: frozenset[ObjectKey] = frozenset(),
    prune_allowed: bool = True,
    memo: PlanMemo | None = None,
    unreachable: Mapping[str, str] | None = None,
    settled: Mapping[ObjectKey, LiveStamp] | None = None,
) -> Plan:
    """Compares Git with the clusters. ``live_by_target`` holds the objects read, per (cluster, namespace).

    ``managed`` is the source's inventory: what Sluice itself applied for it.
    Labels alone never make an object the source's to prune, since anyone who
    may label a ConfigMap could write them. ``held`` objects keep what they have
    (a rollout reaches them later); ``prune_allowed`` is False until a rollout
    reaches 100%. ``unreachable`` clusters (name -> why) were not read: their
    objects are reported, never planned, so nothing is created or pruned blind.
    ``settled`` objects were not read either: the live cache's stamp of each proves
    it unchanged (``stamps.settles``). The source's other objects must be read.
    """
    down = unreachable or {}
    inputs = None
    if memo is not None and not live_by_target and not down and settled:
        # Nothing read, every object settled by the live cache: a plan is a pure function of these.
        inputs = _SettledInputs(desired, source, commit, managed, held, prune_allowed, settled)
        if (remembered := memo.whole(inputs)) is not None:
            return remembered
    result = _plan(
        desired,
        live_by_target,
        source=source,
        commit=commit,
        managed=managed,
        held=held,
        prune_allowed=prune_allowed,
        memo=memo,
        down=down,
        settled=settled,
    )
    if memo is not None and inputs is not None:
        memo.put_whole(inputs, result)
    return result


def _plan(
    desired: DesiredState,
    live_by_target: LiveObjects,
    *,
    source: str,
    commit: str,
    managed: Collection[ObjectKey],
    held: frozenset[ObjectKey],
    prune_allowed: bool,
    memo: PlanMemo | None,
    down: Mapping[str, str],
    settled: Mapping[ObjectKey, LiveStamp] | None,
) -> Plan:
    live_index: dict[ObjectKey, Mapping[str, Any]] = {}
    for (cluster, namespace), objects in live_by_target.items():
        for obj in objects:
            live_index[(cluster, namespace, obj["metadata"]["name"])] = obj

    items: list[PlanItem] = []
    wanted = desired.keyed
    if memo is not None:
        memo.keep_only(desired.key_set)
    remembered = memo.settled_items if memo is not None else {}
    stamps = settled or {}
    context = _Context(desired, source, commit, managed, held, memo, down)
    for wanted_object in desired.objects:
        key = wanted_object.key
        # Inlined, since it is nearly every object of a large pass: one the live cache settled as it did
        # last pass, with the very same desired object, gets last pass's item (``_memoized_settled``).
        if not down and key not in live_index:
            stamp, entry = stamps.get(key), remembered.get(key)
            if (
                stamp is not None
                and entry is not None
                and entry[1] is wanted_object
                and (entry[0] is stamp or entry[0] == stamp)
            ):
                items.append(entry[2])
                continue
        items.append(_plan_one(wanted_object, live_index.get(key), stamps, context))

    for key, live in sorted(live_index.items()):
        if key in wanted:
            continue
        owner, _, _ = live_provenance(live)
        if owner == source:
            prune = desired.policy.prune
            items.append(_gone(key, live, managed=key in managed, prune=prune, prune_allowed=prune_allowed))
        elif key in managed:
            items.append(_item(key, Action.RELEASED, reason=RELEASED))
    return Plan(source=source, commit=commit, items=tuple(items))


@dataclass(frozen=True)
class _Context:
    """What planning one object depends on besides the object, its live copy and its stamp."""

    desired: DesiredState
    source: str
    commit: str
    managed: Collection[ObjectKey]
    held: frozenset[ObjectKey]
    memo: PlanMemo | None
    down: Mapping[str, str]


def _plan_one(
    obj: DesiredObject,
    live: Mapping[str, Any] | None,
    stamps: Mapping[ObjectKey, LiveStamp],
    context: _Context,
) -> PlanItem:
    """One desired object's item: ``live`` is its live copy if it was read, else ``stamps`` may settle it."""
    source, down = context.source, context.down
    if obj.cluster in down:
        reason = f"cluster {obj.cluster} is unreachable: {down[obj.cluster]}"
        return _item(obj.key, Action.UNREACHABLE, desired=obj, reason=reason)
    stamp = stamps.get(obj.key) if live is None else None
    if stamp is not None:
        return _memoized_settled(obj, stamp, source=source, managed=context.managed, memo=context.memo)
    if live is not None and obj.key not in context.managed and live_provenance(live)[0] == source:
        # Labels anyone may write do not make an object this source's: only what Sluice applied does.
        return replace(_foreign(obj.key, live, UNAPPLIED), desired=obj)
    item = _memoized_plan_object(
        obj, live, context.desired, source=source, commit=context.commit, memo=context.memo
    )
    if live is not None and _taken_over(item, live, context.managed):
        item = replace(_foreign(obj.key, live, LABELS_REMOVED), desired=obj)
    if obj.key in context.held and item.action in (Action.CREATE, Action.UPDATE, Action.REPLACE):
        item = replace(item, action=Action.HELD, reason="a later rollout step reaches this target")
    return item


def _taken_over(item: PlanItem, live: Mapping[str, Any], managed: Collection[ObjectKey]) -> bool:
    """A conflict over an object this source applied whose Sluice labels someone removed since: not one
    "created outside Sluice". Asked of conflicts only (a plan's every object passes here)."""
    return item.action is Action.CONFLICT and item.key in managed and not live_provenance(live)[0]


def _with_desired(item: PlanItem, obj: DesiredObject) -> PlanItem:
    """``replace(item, desired=obj)`` for a remembered item: a copy of its fields, without running
    ``__init__`` again, since on a large no-op that was most of the plan's time."""
    copied = object.__new__(PlanItem)
    copied.__dict__.update(item.__dict__, desired=obj)
    return copied


def _item(key: ObjectKey, action: Action, **fields: Any) -> PlanItem:
    cluster, namespace, name = key
    return PlanItem(cluster, namespace, name, action, **fields)


def _memoized_settled(
    obj: DesiredObject,
    stamp: LiveStamp,
    *,
    source: str,
    managed: Collection[ObjectKey],
    memo: PlanMemo | None,
) -> PlanItem:
    remembered = memo.settled(obj.key, stamp, obj) if memo is not None else None
    if remembered is not None:
        return remembered
    item = _settled(obj, stamp, source=source, managed=managed)
    if memo is not None:
        memo.put_settled(obj.key, stamp, obj, item)
    return item


def _settled(
    obj: DesiredObject, stamp: LiveStamp, *, source: str, managed: Collection[ObjectKey]
) -> PlanItem:
    """An object the live cache vouches for: as Sluice applied it, and what Sluice applied is Git's now."""
    if obj.key not in managed or not settles(stamp, obj, source=source):
        where = f"{obj.cluster}/{obj.namespace}/{obj.name}"
        raise ValueError(f"{where}: the live cache's stamp does not settle it; read it")
    return _item(
        obj.key,
        Action.UNCHANGED,
        desired=obj,
        before=obj.content,
        after=obj.content,
        live_commit=stamp.commit or None,
        live_content_hash=stamp.applied_hash,
    )


def _gone(
    key: ObjectKey, live: Mapping[str, Any], *, managed: bool, prune: bool, prune_allowed: bool
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
    return _item(
        key,
        action,
        diff=diff,
        before=before,
        live_commit=live_commit,
        live_content_hash=live_hash,
        reason=reason,
        **(read_as_held(live) if action is Action.DELETE else {}),
    )


def _foreign(key: ObjectKey, live: Mapping[str, Any], why: str) -> PlanItem:
    """An object that is not this source's: say that it exists and who writes it, never what it holds.

    Its content may be anybody's configuration, and plans are shown to every viewer.
    """
    managers = sorted(
        {entry.get("manager", "?") for entry in live.get("metadata", {}).get("managedFields") or ()}
    )
    written_by = f" (written by {', '.join(managers)})" if managers else ""
    return _item(key, Action.CONFLICT, reason=f"{why}{written_by}; not taken over")


# Stands for "edited in the cluster" when the old content is known only by its hash.
DRIFTED = DiffItem(DiffOp.CHANGE, "content", "*", "edited in the cluster", None)


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
        return remembered if remembered.desired is obj else _with_desired(remembered, obj)
    item = _plan_object(obj, live, desired, source=source, commit=commit)
    if item.action is Action.UNCHANGED:
        memo.put(obj.key, version, obj.content.hash, item)
    return item


# Sluice's annotations that every update rewrites.
PROVENANCE_FIELDS = (("annotations", COMMIT_ANNOTATION), ("annotations", CONTENT_HASH_ANNOTATION))
# What an immutable ConfigMap cannot change without being deleted and created again.
IMMUTABLE_FIELDS = frozenset({"data", "binaryData", "immutable"})


@dataclass(frozen=True)
class Verdict:
    """What to do with an object that exists and is this source's: one row of the decision table."""

    action: Action
    reason: str = ""
    force: bool = False
    # Whether the object ends with Git's new content, or with what Sluice applied before.
    to_git: bool = True


DRIFT_REPORTED = Verdict(
    Action.DRIFT, "edited in the cluster; left alone because selfHeal is off", to_git=False
)


def decide(*, git_changed: bool, drifted: bool, immutable: bool, self_heal: bool) -> Verdict:
    """The decision table. ``immutable``: the live object is immutable and its data would change."""
    if not git_changed and not drifted:
        return Verdict(Action.UNCHANGED, to_git=False)
    if not git_changed and not self_heal:
        # Reported only, immutable or not: a label edited by hand on an immutable ConfigMap had it deleted
        # and created again, the person's edit and the pods starting meanwhile lost.
        return DRIFT_REPORTED
    if immutable:
        return Verdict(Action.REPLACE, "immutable in the cluster: deleted and created again")
    if git_changed:
        also = "; also edited in the cluster" if drifted else ""
        return Verdict(Action.UPDATE, "changed in Git" + also, force=drifted and self_heal)
    return Verdict(Action.SELF_HEAL, "edited in the cluster; selfHeal restores Git's content", True, False)


def _contested(
    verdict: Verdict, live: Mapping[str, Any], changes: Sequence[DiffItem], *, self_heal: bool
) -> Verdict:
    """An update of keys another field manager holds too, with the values Sluice applied (a `kubectl
    apply --server-side` of the same values, an edit reverted by hand): no drift, yet the cluster
    refuses the apply as a conflict, at every commit touching them. With selfHeal it is forced, as an
    update over drift is; without, its reason names who holds them."""
    if verdict.action is not Action.UPDATE or verdict.force:
        return verdict
    # The provenance annotations change at every update, whatever else does (a copy of the object applied
    # by hand under another manager holds them). A key only dropped conflicts with nobody, but the apply
    # leaves it to its holder: with selfHeal the forced update removes it, as its diff says.
    dropped = {(item.field, item.key) for item in changes if item.op is DiffOp.REMOVE}
    written = [(item.field, item.key) for item in changes if (item.field, item.key) not in dropped]
    changed = other_holders(live, [*written, *PROVENANCE_FIELDS])
    kept = other_holders(live, dropped)
    if self_heal and (changed or kept):
        names = ", ".join(sorted(changed | kept))
        return replace(
            verdict, force=True, reason=f"{verdict.reason}; {names} held keys of it too: taken back"
        )
    if changed:
        names = ", ".join(sorted(changed))
        reason = f"{verdict.reason}; {names} holds keys it changes: refused unless selfHeal takes them"
        return replace(verdict, reason=reason)
    if kept:
        reason = (
            f"{verdict.reason}; {', '.join(sorted(kept))} holds keys it drops: they stay without selfHeal"
        )
        return replace(verdict, reason=reason)
    return verdict


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
        return _item(
            obj.key, Action.CREATE, diff=diff, desired=obj, after=wanted, reason="not in the cluster"
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
        hashes = applied_hashes_of(obj.name, flag_set=obj.flag_set is not None, current=current)
        drift: tuple[DiffItem, ...] = () if applied_hash in hashes else (DRIFTED,)
    else:
        drift = tuple(diff_content(expected_now, current))
    changes = (
        tuple(diff_content(current, wanted if git_changed else expected_now)) if git_changed or drift else ()
    )
    self_heal = desired.policy.self_heal
    # Metadata changes in place on an immutable ConfigMap; its data and immutability do not.
    immutable = bool(live.get("immutable")) and any(item.field in IMMUTABLE_FIELDS for item in changes)
    verdict = decide(git_changed=git_changed, drifted=bool(drift), immutable=immutable, self_heal=self_heal)
    verdict = _contested(verdict, live, changes, self_heal=self_heal)
    after = current if verdict.action is Action.UNCHANGED else (wanted if verdict.to_git else expected_now)
    if applied_hash is None and verdict.action is Action.UPDATE:
        # Without the hash Sluice wrote, Git's content is applied, whether or not Git moved.
        verdict = replace(
            verdict, reason="Sluice's content hash on it is missing or altered; Git's content is applied"
        )
    return _item(
        obj.key,
        verdict.action,
        diff=changes,
        desired=obj,
        before=current,
        after=after,
        live_commit=live_commit,
        live_content_hash=applied_hash,
        reason=verdict.reason,
        force=verdict.force,
        **(read_as_held(live) if verdict.action is Action.REPLACE else {}),
    )
