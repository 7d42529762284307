"""Live stamps, on hand-made live objects: when a stamp settles a plan item, and whom a change wakes.

The safety property is checked for many edits (hypothesis): whenever a stamp
settles an object, the planner, given the object itself, finds it unchanged;
and whenever the planner finds drift, the stamp is not as applied, so the
change wakes the source.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import replace
from unittest.mock import ANY

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitops.desired.content import Content
from gitops.desired.flags import FlagSet
from gitops.desired.policy import Policy, Target
from gitops.desired.revision import DesiredObject, DesiredState, flag_set_json, flag_set_key
from gitops.plan import Action, PlanMemo, plan
from gitops.plan.provenance import Provenance, manifest
from gitops.plan.stamps import LiveStamp, SettleMemo, settle_namespace, settles, sources_to_wake, stamp_of

SOURCE = "shop"
COMMIT = "c" * 40
CLUSTER = "default"


def desired(
    data: dict[str, str] | None = None, labels: dict[str, str] | None = None, *, cluster: str = CLUSTER
) -> DesiredObject:
    return DesiredObject(
        cluster=cluster,
        namespace="team-a",
        name="app",
        content=Content(data=data or {"LOG_LEVEL": "info", "MODE": "safe"}, labels=labels or {"team": "a"}),
        origin="configmaps/app.yaml",
        line=1,
        kind="configmap",
        group="configmaps/app.yaml#0",
        rank=0,
    )


def as_applied(obj: DesiredObject, *, source: str = SOURCE, resource_version: str = "7") -> dict:
    """The object as Sluice's server-side apply leaves it, managedFields included."""
    body = manifest(
        obj.namespace, obj.name, obj.content, Provenance(source, COMMIT, obj.content.hash, obj.origin)
    )
    metadata = body["metadata"]
    metadata["resourceVersion"] = resource_version
    metadata["managedFields"] = [
        {
            "manager": "sluice",
            "operation": "Apply",
            "fieldsV1": {
                "f:data": {f"f:{key}": {} for key in body.get("data", {})},
                "f:metadata": {
                    "f:labels": {f"f:{key}": {} for key in metadata["labels"]},
                    "f:annotations": {f"f:{key}": {} for key in metadata["annotations"]},
                },
            },
        }
    ]
    return body


def edited_by_hand(live: dict, *, section: str, key: str, value: str | None) -> dict:
    """What `kubectl edit` (an Update by another manager) leaves: the value, and its ownership moved."""
    edited = copy.deepcopy(live)
    where = edited if section in ("data", "binaryData") else edited["metadata"]
    values = where.setdefault(section, {})
    if value is None:
        values.pop(key, None)
    else:
        values[key] = value
    sluice = edited["metadata"]["managedFields"][0]["fieldsV1"]
    owned = (
        sluice.get(f"f:{section}")
        if section in ("data", "binaryData")
        else sluice["f:metadata"].get(f"f:{section}")
    )
    if owned is not None:
        owned.pop(f"f:{key}", None)
    edited["metadata"]["managedFields"].append(
        {"manager": "kubectl-edit", "operation": "Update", "fieldsV1": {}}
    )
    edited["metadata"]["resourceVersion"] = str(int(live["metadata"]["resourceVersion"]) + 1)
    return edited


def state_of(*objects: DesiredObject, self_heal: bool = False) -> DesiredState:
    clusters = tuple(dict.fromkeys(obj.cluster for obj in objects))
    targets = tuple(Target(cluster, ("team-a",)) for cluster in clusters)
    return DesiredState(Policy(targets, ("team-a",), False, self_heal, "team-a"), objects)


def planned(obj: DesiredObject, live: dict, *, self_heal: bool = False):
    state = state_of(obj, self_heal=self_heal)
    result = plan(state, {(obj.cluster, "team-a"): [live]}, source=SOURCE, commit=COMMIT, managed={obj.key})
    return result.items[0]


def test_an_object_as_sluice_applied_it_is_settled_by_its_stamp():
    obj = desired()
    stamp = stamp_of(as_applied(obj))
    assert stamp == LiveStamp("7", SOURCE, COMMIT, obj.content.hash, as_applied=True)
    assert settles(stamp, obj, source=SOURCE)


@pytest.mark.parametrize("cluster", [CLUSTER, "member-1"])
def test_the_settled_plan_item_is_the_one_a_read_would_give(cluster):
    obj = desired(cluster=cluster)
    live = as_applied(obj)
    state = state_of(obj)
    from_cache = plan(
        state, {}, source=SOURCE, commit=COMMIT, managed={obj.key}, settled={obj.key: stamp_of(live)}
    )
    from_read = plan(state, {(cluster, "team-a"): [live]}, source=SOURCE, commit=COMMIT, managed={obj.key})
    assert from_cache.items == from_read.items
    assert from_cache.items[0].action is Action.UNCHANGED
    assert from_cache.items[0].key == (cluster, "team-a", "app")


def test_a_stamp_settles_only_its_own_cluster_and_never_an_unreachable_one():
    here, there = desired(), desired(cluster="member-1")
    stamp = stamp_of(as_applied(here))
    state = state_of(here, there)
    managed = {here.key, there.key}
    # The same namespace and name in another cluster is another object: a stamp of one settles nothing there.
    result = plan(state, {}, source=SOURCE, commit=COMMIT, managed=managed, settled={here.key: stamp})
    assert [(item.cluster, item.action) for item in result.items] == [
        (CLUSTER, Action.UNCHANGED),
        ("member-1", Action.CREATE),
    ]
    down = plan(
        state,
        {},
        source=SOURCE,
        commit=COMMIT,
        managed=managed,
        settled={here.key: stamp},
        unreachable={CLUSTER: "connection refused"},
    )
    assert down.items[0].action is Action.UNREACHABLE


def test_a_stamp_that_does_not_settle_is_refused_by_the_planner():
    obj = desired()
    stamp = stamp_of(as_applied(obj))._replace(as_applied=False)
    with pytest.raises(ValueError, match="default/team-a/app"):
        plan(state_of(obj), {}, source=SOURCE, commit=COMMIT, managed={obj.key}, settled={obj.key: stamp})


def test_the_memo_keeps_a_settled_item_per_cluster():
    here, there = desired(), desired(cluster="member-1")
    stamps = {obj.key: stamp_of(as_applied(obj)) for obj in (here, there)}
    memo = PlanMemo()
    state = state_of(here, there)
    managed = set(stamps)
    first = plan(state, {}, source=SOURCE, commit=COMMIT, managed=managed, memo=memo, settled=stamps)
    again = plan(state, {}, source=SOURCE, commit=COMMIT, managed=managed, memo=memo, settled=stamps)
    assert [item.key for item in first.items] == [here.key, there.key]
    assert all(a is b for a, b in zip(first.items, again.items, strict=True))


def test_a_plan_the_live_cache_settled_whole_is_reused_only_for_the_same_inputs():
    here, there = desired(), desired(cluster="member-1")
    stamps = {obj.key: stamp_of(as_applied(obj)) for obj in (here, there)}
    state = state_of(here, there)
    memo = PlanMemo()
    inputs = {"source": SOURCE, "commit": COMMIT, "managed": frozenset(stamps), "settled": stamps}
    first = plan(state, {}, memo=memo, **inputs)
    assert plan(state, {}, memo=memo, **{**inputs, "managed": set(stamps), "settled": dict(stamps)}) is first
    changed_inputs = [
        {"commit": "d" * 40},
        {"prune_allowed": False},
        {"held": frozenset({there.key})},
        {"settled": {here.key: stamps[here.key]}},  # the other one is neither settled nor read: created
        {"settled": {**stamps, here.key: stamps[here.key]._replace(resource_version="8")}},
        {"unreachable": {"member-1": "down"}},
    ]
    for changed in changed_inputs:
        again = plan(state, {}, memo=memo, **{**inputs, **changed})
        assert again is not first, changed
        assert again == plan(state, {}, **{**inputs, **changed}), changed
    equal_but_new = state_of(here, there)  # a revision loaded again: planned again, not assumed the same
    assert plan(equal_but_new, {}, memo=memo, **inputs) is not first
    read = {(CLUSTER, "team-a"): [as_applied(here)]}  # anything read is planned from what was read
    assert plan(state, read, memo=memo, **inputs) is not plan(state, read, memo=memo, **inputs)


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("data", "LOG_LEVEL", "debug"),  # a value changed
        ("data", "EXTRA", "1"),  # a key added
        ("data", "MODE", None),  # a key removed
        ("labels", "team", "b"),  # a label Git sets, changed
        ("labels", "team", None),  # ... removed
        ("annotations", "sluice.dev/content-hash", "0" * 32),  # provenance tampered with
    ],
)
def test_an_edit_by_someone_else_breaks_the_stamp_and_wakes_the_source(section, key, value):
    obj = desired()
    before = as_applied(obj)
    after = edited_by_hand(before, section=section, key=key, value=value)
    stamp = stamp_of(after)
    assert not stamp.as_applied
    assert not settles(stamp, obj, source=SOURCE)
    assert sources_to_wake(stamp_of(before), stamp) == {SOURCE}


def test_labels_and_annotations_other_controllers_add_are_not_drift():
    obj = desired()
    live = as_applied(obj)
    live["metadata"]["labels"]["pod-template-hash"] = "abc"
    live["metadata"]["annotations"]["other.example.com/seen"] = "yes"
    live["metadata"]["resourceVersion"] = "8"
    stamp = stamp_of(live)
    assert stamp.as_applied and settles(stamp, obj, source=SOURCE)
    assert planned(obj, live).action is Action.UNCHANGED
    assert sources_to_wake(stamp_of(as_applied(obj)), stamp) == set()


def test_a_stamp_does_not_settle_a_change_in_git_another_source_or_a_flag_set():
    obj = desired()
    stamp = stamp_of(as_applied(obj))
    assert not settles(stamp, desired(data={"LOG_LEVEL": "debug", "MODE": "safe"}), source=SOURCE)
    assert not settles(stamp, obj, source="other")
    flag_set = FlagSet("flags/app.json", {}, {}, {}, {"flags": {}})
    assert not settles(stamp, replace(obj, flag_set=flag_set), source=SOURCE)


def test_a_published_flag_set_is_as_applied_only_with_its_own_origin_stamps():
    document = {"flags": {}, "metadata": {"sluiceCommit": COMMIT, "sluiceSource": SOURCE}}
    git = {"flags": {}}
    content = Content(data={flag_set_key("checkout"): flag_set_json(git)})
    published = Content(data={flag_set_key("checkout"): flag_set_json(document)})
    body = manifest(
        "flags",
        "checkout",
        published,
        Provenance(SOURCE, COMMIT, content.hash, "flags/checkout.json", "flagset"),
    )
    body["metadata"]["managedFields"] = [
        {
            "manager": "sluice",
            "operation": "Apply",
            "fieldsV1": {"f:data": {f"f:{flag_set_key('checkout')}": {}}},
        }
    ]
    assert stamp_of(body).as_applied
    document["metadata"]["sluiceCommit"] = "d" * 40  # someone changed the stamp inside the document
    body["data"] = {flag_set_key("checkout"): flag_set_json(document)}
    assert not stamp_of(body).as_applied


def test_stamps_survive_their_stored_form_and_garbage_is_not_a_stamp():
    stamp = LiveStamp("12", SOURCE, "com\x1fmit", "h" * 32, as_applied=True)
    assert LiveStamp.decode(stamp.encode()) == LiveStamp("12", SOURCE, "commit", "h" * 32, as_applied=True)
    assert LiveStamp.decode("nonsense") is None
    assert LiveStamp.decode("a\x1fb\x1fc\x1fd\x1fmaybe") is None


def test_who_wakes():
    ours = LiveStamp("1", SOURCE, COMMIT, "h", as_applied=True)
    theirs = LiveStamp("2", "other", COMMIT, "h", as_applied=True)
    edited = LiveStamp("2", SOURCE, COMMIT, "h", as_applied=False)
    assert (
        sources_to_wake(ours, LiveStamp("2", SOURCE, COMMIT, "h", as_applied=True)) == set()
    )  # Sluice's write
    assert sources_to_wake(None, ours) == set()  # Sluice created it
    assert sources_to_wake(ours, edited) == {SOURCE}
    assert sources_to_wake(ours, None) == {SOURCE}  # deleted, or no longer labelled as Sluice's
    assert sources_to_wake(ours, theirs) == {SOURCE, "other"}
    assert sources_to_wake(None, LiveStamp("1", "", "", "", as_applied=False)) == set()


# -- the safety property, over many edits --------------------------------------------------

KEYS = st.sampled_from(["LOG_LEVEL", "MODE", "EXTRA", "team", "tier", "note", "sluice.dev/commit"])
VALUES = st.one_of(st.none(), st.sampled_from(["info", "safe", "a", "b", "debug", ""]))
EDITS = st.lists(
    st.tuples(st.sampled_from(["data", "labels", "annotations"]), KEYS, VALUES, st.booleans()), max_size=4
)


def apply_edits(live: dict, edits) -> dict:
    for section, key, value, takes_ownership in edits:
        if takes_ownership:
            live = edited_by_hand(live, section=section, key=key, value=value)
            continue
        # A change another controller makes with its own apply: ownership of the key is shared.
        live = copy.deepcopy(live)
        where = live if section == "data" else live["metadata"]
        if value is None:
            where.setdefault(section, {}).pop(key, None)
        else:
            where.setdefault(section, {})[key] = value
    return live


@settings(max_examples=400, deadline=None)
@given(edits=EDITS, self_heal=st.booleans())
def test_a_settled_object_is_always_one_the_planner_finds_unchanged(edits, self_heal):
    obj = desired()
    live = apply_edits(as_applied(obj), edits)
    stamp = stamp_of(live)
    item = planned(obj, live, self_heal=self_heal)
    if settles(stamp, obj, source=SOURCE):
        assert item.action is Action.UNCHANGED, edits
        assert item.before == obj.content
    if item.action in (Action.DRIFT, Action.SELF_HEAL):
        assert not stamp.as_applied, edits
        assert sources_to_wake(stamp_of(as_applied(obj)), stamp) == {SOURCE}


# -- the settle memo: the last pass's answer, only for the very same inputs ---------------------------


def stamps_of(*objects: DesiredObject, resource_version: str = "7") -> dict[str, str]:
    return {
        obj.name: stamp_of(as_applied(obj, resource_version=resource_version)).encode() for obj in objects
    }


def test_the_settle_memo_answers_as_settling_does_and_only_for_the_same_inputs():
    app = desired()
    managed = frozenset({app.key})
    texts = stamps_of(app)
    memo = SettleMemo()
    fresh = settle_namespace(texts, [app], source=SOURCE, managed=managed)
    assert fresh == ({app.key: LiveStamp.decode(texts["app"])}, [])

    first = memo.begin(SOURCE, managed)
    assert first.settle(CLUSTER, "team-a", texts, [app]) == fresh
    first.finish()
    again = memo.begin(SOURCE, frozenset(managed)).settle(CLUSTER, "team-a", dict(texts), [app])
    assert again == fresh, "equal stamps, the same object, an equal inventory: the last answer"
    again[0].clear()
    assert memo.begin(SOURCE, managed).settle(CLUSTER, "team-a", texts, [app]) == fresh, "answers are copies"

    edited = stamps_of(app, resource_version="8")
    edited["app"] = edited["app"][:-1] + "0"  # someone else's edit: no longer as applied
    assert memo.begin(SOURCE, managed).settle(CLUSTER, "team-a", edited, [app]) == ({}, ["app"])
    changed_in_git = desired({"LOG_LEVEL": "debug"})
    assert memo.begin(SOURCE, managed).settle(CLUSTER, "team-a", texts, [changed_in_git]) == ({}, ["app"])
    assert memo.begin(SOURCE, frozenset()).settle(CLUSTER, "team-a", texts, [app]) == ({}, ["app"])
    assert memo.begin("other", managed).settle(CLUSTER, "team-a", texts, [app]) == ({}, ["app"])


def test_the_settle_memo_never_reuses_an_answer_for_an_equal_but_new_object():
    """Objects are compared by identity: one that compares equal but is another object is settled again
    (a canary copy of an object compares equal to it, and must never be settled by a stamp)."""
    app = desired()
    managed = frozenset({app.key})
    memo = SettleMemo()
    first = memo.begin(SOURCE, managed)
    assert first.settle(CLUSTER, "team-a", stamps_of(app), [app]) == ({app.key: ANY}, [])
    first.finish()
    canary = replace(app, canary_document={"flags": {}})
    assert canary == app and canary is not app

    assert memo.begin(SOURCE, managed).settle(CLUSTER, "team-a", stamps_of(app), [canary]) == ({}, ["app"])


def test_overlapping_passes_never_mix_their_inventories():
    """A pass answers from the snapshot the last finished pass left, and replaces it whole."""
    app = desired()
    texts = stamps_of(app)
    memo = SettleMemo()
    with_app = memo.begin(SOURCE, frozenset({app.key}))
    without = memo.begin(SOURCE, frozenset())  # the inventory lost the object meanwhile
    assert with_app.settle(CLUSTER, "team-a", texts, [app])[1] == []
    assert without.settle(CLUSTER, "team-a", texts, [app]) == ({}, ["app"])
    without.finish()
    with_app.finish()  # the later finish wins, with what it computed under its own inventory

    assert memo.begin(SOURCE, frozenset()).settle(CLUSTER, "team-a", texts, [app]) == ({}, ["app"])
    assert memo.begin(SOURCE, frozenset({app.key})).settle(CLUSTER, "team-a", texts, [app])[1] == []


def test_an_inventory_object_git_no_longer_has_and_without_a_stamp_is_read():
    """A revert pushed right after a create: the created object is in the inventory, and has no stamp
    yet (its ADDED event not stored, or the worker's own write dropped it). Taken as absent, it was
    never pruned; it is read, so the plan can prune it."""
    app, created = desired(), replace(desired({"V": "new"}), name="created")
    managed = frozenset({app.key, created.key})
    texts = stamps_of(app)  # no stamp for "created"
    assert settle_namespace(
        texts, [app], source=SOURCE, managed=managed, managed_here={"app", "created"}
    ) == (
        {app.key: LiveStamp.decode(texts["app"])},
        ["created"],
    )
    memo = SettleMemo()
    first = memo.begin(SOURCE, managed)
    assert first.settle(CLUSTER, "team-a", texts, [app])[1] == ["created"], "through the memo, whole"
    first.finish()
    # Last pass wanted it, with a stamp: this pass settles only the names that changed.
    with_stamp = stamps_of(app, created)
    memo = SettleMemo()
    first = memo.begin(SOURCE, managed)
    assert first.settle(CLUSTER, "team-a", with_stamp, [app, created]) == (
        {app.key: ANY, created.key: ANY},
        [],
    )
    first.finish()
    assert memo.begin(SOURCE, managed).settle(CLUSTER, "team-a", texts, [app])[1] == ["created"]
    # Not in the inventory: another's object, or one already pruned; nothing to read.
    assert memo.begin(SOURCE, frozenset({app.key})).settle(CLUSTER, "team-a", texts, [app])[1] == []


# -- settling again: only the names that changed since the last pass -------------------------------

NAMES = [f"app-{index}" for index in range(6)]
STAMP_CHOICES = ("absent", "applied-0", "applied-1", "edited-0", "other-source", "garbage")
FIRST_STATE = st.tuples(
    st.lists(st.sampled_from((None, 0, 1)), min_size=len(NAMES), max_size=len(NAMES)),
    st.lists(st.sampled_from(STAMP_CHOICES), min_size=len(NAMES), max_size=len(NAMES)),
)
# A pass's changes since the last one: a few names, each with a new wanted object or a new stamp.
EDIT = st.tuples(
    st.integers(0, len(NAMES) - 1),
    st.one_of(st.sampled_from((None, 0, 1)), st.sampled_from((*STAMP_CHOICES, "toggle-managed"))),
)
PASSES = st.lists(st.lists(EDIT, max_size=2), min_size=1, max_size=10)


def _stamp_text(choice: str, variants: tuple[DesiredObject, DesiredObject], pass_number: int) -> str | None:
    if choice == "absent":
        return None
    if choice == "garbage":
        return "not a stamp"
    obj = variants[1] if choice == "applied-1" else variants[0]
    source = "other" if choice == "other-source" else SOURCE
    return LiveStamp(str(pass_number), source, COMMIT, obj.content.hash, choice != "edited-0").encode()


@settings(max_examples=400, deadline=None)
@given(first=FIRST_STATE, passes=PASSES, managed_names=st.sets(st.sampled_from(NAMES)))
def test_settling_again_answers_exactly_as_settling_whole(first, passes, managed_names):
    """Pass after pass, each changing a few names, the memo (settling again only what changed) agrees
    with ``settle_namespace`` over the whole namespace."""
    variants = {
        name: tuple(replace(desired({"V": f"{name}-{v}"}), name=name) for v in range(2)) for name in NAMES
    }
    memo = SettleMemo()
    chosen, stamps = list(first[0]), list(first[1])
    wanted: tuple[DesiredObject, ...] = ()
    for pass_number, edits in enumerate([[], *passes]):
        for index, value in edits:
            if value == "toggle-managed":  # the object created or pruned since: the inventory changed
                managed_names = managed_names ^ {NAMES[index]}
            elif isinstance(value, str):
                stamps[index] = value
            else:
                chosen[index] = value
        managed = frozenset((CLUSTER, "team-a", name) for name in managed_names)
        now = tuple(variants[name][v] for name, v in zip(NAMES, chosen, strict=True) if v is not None)
        if not edits or not all(map(operator.is_, now, wanted)) or len(now) != len(wanted):
            wanted = now  # else the same revision hands over the very same tuple
        texts = {
            name: text
            for name, choice in zip(NAMES, stamps, strict=True)
            # A stamp edit is a new write: a new resourceVersion; the others keep theirs.
            if (text := _stamp_text(choice, variants[name], 0)) is not None
        }
        expected_settled, expected_unread = settle_namespace(
            texts, wanted, source=SOURCE, managed=managed, managed_here=managed_names
        )
        settling = memo.begin(SOURCE, managed)
        settled, unread = settling.settle(CLUSTER, "team-a", texts, wanted)
        settling.finish()
        assert settled == expected_settled, pass_number
        assert sorted(unread) == sorted(expected_unread), pass_number


def test_a_one_file_change_settles_only_the_changed_object_again(monkeypatch):
    """The point of settling again: 1 decode for one changed object, not one per object of the namespace."""
    from gitops.plan import stamps as stamps_module

    objects = [replace(desired({"V": str(index)}), name=f"app-{index}") for index in range(40)]
    managed = frozenset(obj.key for obj in objects)
    texts = stamps_of(*objects)
    memo = SettleMemo()
    first = memo.begin(SOURCE, managed)
    first.settle(CLUSTER, "team-a", texts, tuple(objects))
    first.finish()

    decoded: list[str] = []
    original = stamps_module.LiveStamp.decode.__func__
    monkeypatch.setattr(
        stamps_module.LiveStamp,
        "decode",
        classmethod(lambda cls, text: decoded.append(text) or original(cls, text)),
    )
    changed = replace(objects[7], content=Content(data={"V": "new"}, labels={"team": "a"}))
    settled, unread = memo.begin(SOURCE, managed).settle(
        CLUSTER, "team-a", texts, (*objects[:7], changed, *objects[8:])
    )
    assert unread == ["app-7"]
    assert len(settled) == 39
    assert decoded == [texts["app-7"]]


def test_an_inventory_change_in_one_namespace_leaves_the_others_answers_standing(monkeypatch):
    from gitops.plan import stamps as stamps_module

    here = [replace(desired({"V": str(index)}), name=f"app-{index}") for index in range(5)]
    there = [replace(obj, namespace="team-b") for obj in here]
    managed = frozenset(obj.key for obj in [*here, *there])
    texts = stamps_of(*here)
    memo = SettleMemo()
    first = memo.begin(SOURCE, managed)
    first.settle(CLUSTER, "team-a", texts, tuple(here))
    first.settle(CLUSTER, "team-b", texts, tuple(there))
    first.finish()

    decoded: list[str] = []
    original = stamps_module.LiveStamp.decode.__func__

    def counted(cls, text):
        decoded.append(text)
        return original(cls, text)

    monkeypatch.setattr(stamps_module.LiveStamp, "decode", classmethod(counted))
    pruned_in_b = managed - {there[0].key}
    settling = memo.begin(SOURCE, pruned_in_b)
    assert settling.settle(CLUSTER, "team-a", texts, tuple(here)) == ({obj.key: ANY for obj in here}, [])
    assert decoded == [], "team-a's inventory did not change: last pass's answer"
    settled, unread = settling.settle(CLUSTER, "team-b", texts, tuple(there))
    assert unread == ["app-0"] and len(settled) == 4, "team-b's did: settled again under the new inventory"


def test_stamps_kept_at_a_version_are_settled_from_the_memo_and_only_at_that_version():
    """The live cache sends a namespace's stamps only when they were written since the version the last
    pass kept: ``settle`` then answers from the kept stamps, as it would from the same stamps sent."""
    objects = [replace(desired({"V": str(index)}), name=f"app-{index}") for index in range(6)]
    managed = frozenset(obj.key for obj in objects)
    texts = stamps_of(*objects)
    memo = SettleMemo()
    first = memo.begin(SOURCE, managed)
    answer = first.settle(CLUSTER, "team-a", texts, tuple(objects), version="e1.1")
    first.finish()
    assert len(answer[0]) == 6

    again = memo.begin(SOURCE, managed)
    assert again.kept_versions(CLUSTER) == {"team-a": "e1.1"}
    assert again.kept_versions("member-1") == {}
    assert again.settle(CLUSTER, "team-a", None, tuple(objects), version="e1.1") == answer
    with pytest.raises(ValueError, match="no stamps"):
        again.settle(CLUSTER, "team-a", None, tuple(objects), version="e1.2")
    # The same stamps, stored again under a new version: the next pass keeps that version, so it is
    # not sent the stamps again and again.
    assert again.settle(CLUSTER, "team-a", dict(texts), tuple(objects), version="e1.2") == answer
    again.finish()
    assert memo.begin(SOURCE, managed).kept_versions(CLUSTER) == {"team-a": "e1.2"}

    unversioned = memo.begin(SOURCE, managed)
    unversioned.settle(CLUSTER, "team-a", texts, tuple(objects))  # a hash with no version to trust
    unversioned.finish()
    assert memo.begin(SOURCE, managed).kept_versions(CLUSTER) == {}
    assert memo.begin("another-source", managed).kept_versions(CLUSTER) == {}


def test_a_plan_from_a_state_made_in_place_is_the_plan_made_afresh():
    """A one-file commit's state is mended from the last one (``with_replaced``), and the planner's memo
    keeps to its very key set without walking it: pass after pass, the plan is the plan without a memo."""
    objects = tuple(replace(desired({"V": str(index)}), name=f"app-{index}") for index in range(30))
    state = state_of(*objects)
    _ = state.keyed, state.key_set, state.by_target, state.content_hash
    managed = frozenset(obj.key for obj in objects)
    memo = PlanMemo()
    applied_now = {obj.key: obj for obj in objects}
    for commit_number, changed_index in enumerate((7, 7, 19, 3)):
        stamps = {key: stamp_of(as_applied(obj)) for key, obj in applied_now.items()}
        changed = replace(state.objects[changed_index], content=Content(data={"V": f"new-{commit_number}"}))
        made = state.with_replaced(
            (*state.objects[:changed_index], changed, *state.objects[changed_index + 1 :]),
            {changed.key: changed},
        )
        assert made.key_set is state.key_set, "the same keys: the very same set"
        read = {(CLUSTER, "team-a"): [as_applied(applied_now[changed.key])]}
        settled = {key: stamp for key, stamp in stamps.items() if key != changed.key}
        inputs = {"source": SOURCE, "commit": COMMIT, "managed": managed, "settled": settled}
        remembered = plan(made, read, memo=memo, **inputs)
        assert remembered == plan(made, read, **inputs)
        assert remembered.summary() == {"update": 1, "unchanged": 29}
        assert [item.desired for item in remembered.items] == list(made.objects)
        assert made.content_hash == state_of(*made.objects).content_hash
        state, applied_now[changed.key] = made, changed
    # A commit that moves an object down its file: the same content, so its stamp still settles it, but
    # a new object, whose line the plan shows. The item is made for it, not taken from the memo.
    stamps = {key: stamp_of(as_applied(obj)) for key, obj in applied_now.items()}
    moved = replace(state.objects[11], line=40)
    made = state.with_replaced((*state.objects[:11], moved, *state.objects[12:]), {moved.key: moved})
    inputs = {"source": SOURCE, "commit": COMMIT, "managed": managed, "settled": stamps}
    remembered = plan(made, {}, memo=memo, **inputs)
    assert remembered == plan(made, {}, **inputs)
    assert all(item.desired is obj for item, obj in zip(remembered.items, made.objects, strict=True))
    assert memo.settled_items.keys() <= state.key_set, "the memo never outgrows the revision"
