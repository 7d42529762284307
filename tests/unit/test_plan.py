"""The planner, on hand-made live objects: every classification and key-level diff."""

from __future__ import annotations

import difflib
import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gitops.desired.content import Content
from gitops.desired.policy import Policy, Target
from gitops.desired.revision import DesiredObject, DesiredState
from gitops.plan import Action, DiffItem, decide, diff_content, plan
from gitops.plan import diff as diff_module
from gitops.plan.provenance import Provenance, manifest

SOURCE = "shop"
CLUSTER = "default"
OLD, NEW = "a" * 40, "b" * 40


def desired_object(name: str = "app", namespace: str = "team-a", **data: str) -> DesiredObject:
    return DesiredObject(
        namespace=namespace,
        name=name,
        content=Content(data=data or {"LOG_LEVEL": "info"}),
        origin=f"configmaps/{name}.yaml",
        line=1,
        kind="configmap",
        group=f"configmaps/{name}.yaml#0",
        rank=0,
        cluster=CLUSTER,
    )


def state(*objects: DesiredObject, prune: bool = False, self_heal: bool = False) -> DesiredState:
    policy = Policy((Target(CLUSTER, ("team-a",)),), ("team-a",), prune, self_heal, "team-a")
    return DesiredState(policy, tuple(objects))


def applied(obj: DesiredObject, *, commit: str = OLD, data: dict | None = None, source: str = SOURCE) -> dict:
    """A live object as Sluice left it, optionally edited afterwards."""
    body = manifest(
        obj.namespace, obj.name, obj.content, Provenance(source, commit, obj.content.hash, obj.origin)
    )
    if data is not None:
        body["data"] = data
    body["metadata"]["managedFields"] = [
        {
            "manager": "sluice",
            "operation": "Apply",
            "fieldsV1": {"f:data": {f"f:{k}": {} for k in obj.content.data}, "f:metadata": {"f:labels": {}}},
        }
    ]
    return body


def inventory(live: list[dict]) -> frozenset[tuple[str, str]]:
    """What Sluice applied: here, every live object labelled as this source's."""
    return frozenset(
        (CLUSTER, "team-a", obj["metadata"]["name"])
        for obj in live
        if (obj["metadata"].get("labels") or {}).get("sluice.dev/source") == SOURCE
    )


def only_item(desired: DesiredState, live: list[dict]):
    result = plan(desired, {(CLUSTER, "team-a"): live}, source=SOURCE, commit=NEW, managed=inventory(live))
    assert len(result.items) == 1
    return result.items[0]


def test_an_object_missing_from_the_cluster_is_created():
    item = only_item(state(desired_object()), [])
    assert item.action is Action.CREATE
    assert item.diff == (DiffItem("add", "data", "LOG_LEVEL", None, "info"),)


def test_an_object_as_applied_is_unchanged():
    obj = desired_object()
    item = only_item(state(obj), [applied(obj)])
    assert item.action is Action.UNCHANGED
    assert item.diff == ()


def test_a_change_in_git_is_an_update_with_key_level_diff():
    before = desired_object(LOG_LEVEL="info", MODE="safe")
    after = desired_object(LOG_LEVEL="debug", NEW_KEY="1")
    item = only_item(state(after), [applied(before)])
    assert item.action is Action.UPDATE
    assert [(d.op, d.key, d.old, d.new) for d in item.diff] == [
        ("change", "LOG_LEVEL", "info", "debug"),
        ("remove", "MODE", "safe", None),
        ("add", "NEW_KEY", None, "1"),
    ]
    assert item.force is False


def test_an_edit_in_the_cluster_is_drift_left_alone_without_self_heal():
    obj = desired_object()
    item = only_item(state(obj), [applied(obj, data={"LOG_LEVEL": "debug"})])
    assert item.action is Action.DRIFT
    assert not item.action.changes_cluster
    assert item.diff == (DiffItem("change", "data", "LOG_LEVEL", "debug", "info"),)


def test_an_edit_in_the_cluster_is_healed_with_self_heal_keeping_the_original_commit():
    obj = desired_object()
    item = only_item(state(obj, self_heal=True), [applied(obj, data={"LOG_LEVEL": "debug", "EXTRA": "x"})])
    assert item.action is Action.SELF_HEAL
    assert item.force is True
    assert item.live_commit == OLD
    assert {(d.op, d.key) for d in item.diff} == {("change", "LOG_LEVEL"), ("remove", "EXTRA")}


def test_an_object_of_another_source_or_of_nobody_is_a_conflict():
    obj = desired_object()
    theirs = only_item(state(obj), [applied(obj, source="other")])
    assert theirs.action is Action.CONFLICT
    assert "source 'other'" in theirs.reason
    foreign = {"metadata": {"name": "app", "namespace": "team-a"}, "data": {"LOG_LEVEL": "info"}}
    unmanaged = only_item(state(obj), [foreign])
    assert unmanaged.action is Action.CONFLICT
    assert "created outside it" in unmanaged.reason


@pytest.mark.parametrize("prune, action", [(True, Action.DELETE), (False, Action.ORPHAN)])
def test_an_object_gone_from_git_is_pruned_or_reported(prune, action):
    gone = desired_object("gone")
    live = applied(gone)
    live["metadata"].update(resourceVersion="42", uid="u-1")
    item = only_item(state(prune=prune), [live])
    assert item.action is action
    assert item.key == (CLUSTER, "team-a", "gone")
    # The object read as this source's: the prune's DELETE is sent on that condition, without a read.
    assert (item.live_uid, item.live_version) == (("u-1", "42") if prune else ("", ""))


def test_objects_of_other_sources_are_never_pruned():
    other = desired_object("theirs")
    live = [applied(other, source="other")]
    result = plan(
        state(prune=True), {(CLUSTER, "team-a"): live}, source=SOURCE, commit=NEW, managed=inventory(live)
    )
    assert result.items == ()


@pytest.mark.parametrize("owner", [None, "other"], ids=["labels-removed", "another-source"])
def test_an_object_this_source_applied_then_someone_took_over_is_released_once_git_drops_it(owner):
    """Taken over (its labels removed, or another source's now) and gone from Git: never pruned, and
    reported so the inventory forgets it; kept in Git, it is a conflict."""
    gone = desired_object("gone")
    live = applied(gone)
    if owner is None:
        del live["metadata"]["labels"]["sluice.dev/source"]
    else:
        live["metadata"]["labels"]["sluice.dev/source"] = owner
    managed = frozenset({(CLUSTER, "team-a", "gone")})

    result = plan(
        state(prune=True), {(CLUSTER, "team-a"): [live]}, source=SOURCE, commit=NEW, managed=managed
    )

    assert [(item.action, item.key) for item in result.items] == [
        (Action.RELEASED, (CLUSTER, "team-a", "gone"))
    ]
    assert result.released == {(CLUSTER, "team-a", "gone")}
    assert "someone else's" in result.items[0].reason
    unmanaged = plan(
        state(prune=True), {(CLUSTER, "team-a"): [live]}, source=SOURCE, commit=NEW, managed=frozenset()
    )
    assert unmanaged.items == () and unmanaged.released == set()


def test_an_immutable_object_whose_content_changes_is_replaced():
    before = desired_object(v="1")
    live = applied(before)
    live["immutable"] = True
    live["metadata"].update(resourceVersion="43", uid="u-2")
    item = only_item(state(desired_object(v="2")), [live])
    assert item.action is Action.REPLACE
    assert (item.live_uid, item.live_version) == ("u-2", "43")  # its delete's condition
    assert only_item(state(desired_object(v="1")), [live]).live_version == ""  # nothing deleted


def test_an_immutable_objects_metadata_changes_in_place_and_a_hand_edit_of_it_is_drift_only():
    """A label edited by hand on an immutable ConfigMap (metadata may change on one) had it deleted and
    created again with selfHeal off; a label changed in Git did the same, where an update does."""
    import dataclasses

    labelled = dataclasses.replace(
        desired_object(), content=Content(data={"V": "1"}, labels={"tier": "web"}, immutable=True)
    )
    live = applied(labelled)
    assert live["immutable"] is True
    live["metadata"]["labels"]["tier"] = "db"
    edited = only_item(state(labelled), [live])
    assert (edited.action, edited.diff) == (
        Action.DRIFT,
        (DiffItem("change", "labels", "tier", "db", "web"),),
    )
    assert only_item(state(labelled, self_heal=True), [live]).action is Action.SELF_HEAL

    moved = dataclasses.replace(
        labelled, content=Content(data={"V": "1"}, labels={"tier": "api"}, immutable=True)
    )
    live["metadata"]["labels"]["tier"] = "web"
    assert only_item(state(moved), [live]).action is Action.UPDATE
    changed = dataclasses.replace(
        labelled, content=Content(data={"V": "2"}, labels={"tier": "web"}, immutable=True)
    )
    assert only_item(state(changed), [live]).action is Action.REPLACE


def test_an_update_of_keys_another_manager_holds_too_is_forced_with_self_heal_and_named_without():
    """Another manager holding a key with Sluice's value is no drift, yet the cluster refuses an apply
    that changes it (a conflict), at every commit: selfHeal forces it; without, the reason says why."""
    before = desired_object(LOG_LEVEL="info", MODE="safe")
    live = applied(before)
    live["metadata"]["managedFields"].append(
        {"manager": "ops", "operation": "Apply", "fieldsV1": {"f:data": {"f:LOG_LEVEL": {}}}}
    )
    changed = desired_object(LOG_LEVEL="warn", MODE="safe")
    healed = only_item(state(changed, self_heal=True), [live])
    assert (healed.action, healed.force) == (Action.UPDATE, True)
    assert healed.reason == "changed in Git; ops held keys of it too: taken back"
    named = only_item(state(changed), [live])
    assert (named.action, named.force) == (Action.UPDATE, False)
    assert named.reason == "changed in Git; ops holds keys it changes: refused unless selfHeal takes them"
    # A key it holds that this change leaves alone is no conflict, nor one the change drops.
    untouched = desired_object(LOG_LEVEL="info", MODE="fast")
    assert only_item(state(untouched, self_heal=True), [live]).force is False
    dropped = desired_object(MODE="safe")
    # A key it holds that Git drops stays (the apply leaves it): said so without selfHeal, forced with it.
    assert only_item(state(dropped), [live]).reason == (
        "changed in Git; ops holds keys it drops: they stay without selfHeal"
    )
    assert only_item(state(dropped, self_heal=True), [live]).force is True
    # Sluice's provenance annotations change at every update: a manager holding them conflicts too.
    live["metadata"]["managedFields"][-1] = {
        "manager": "ops",
        "operation": "Apply",
        "fieldsV1": {"f:metadata": {"f:annotations": {"f:sluice.dev/content-hash": {}}}},
    }
    assert only_item(state(untouched, self_heal=True), [live]).force is True


def test_an_object_whose_sluice_labels_were_removed_is_said_to_be_taken_over_not_created_outside():
    """It was "managed by nobody in Sluice (created outside it) (written by sluice)": contradictory."""
    obj = desired_object()
    live = applied(obj)
    managed = inventory([live])
    for label in ("sluice.dev/source", "app.kubernetes.io/managed-by"):
        del live["metadata"]["labels"][label]
    result = plan(state(obj), {(CLUSTER, "team-a"): [live]}, source=SOURCE, commit=NEW, managed=managed)
    (item,) = result.items
    assert item.action is Action.CONFLICT
    assert item.reason == (
        "applied by this source; its Sluice labels were removed since, so it is someone else's now "
        "(written by sluice); not taken over"
    )


def test_labels_sluice_never_set_do_not_count_as_drift():
    obj = desired_object()
    live = applied(obj)
    live["metadata"]["labels"]["added-by-a-controller"] = "yes"
    assert only_item(state(obj), [live]).action is Action.UNCHANGED


def test_multi_line_values_get_a_unified_diff_and_json_is_pretty_printed():
    text = DiffItem("change", "data", "nginx.conf", "a\nb\n", "a\nc\n").as_dict()
    assert "-b\n" in text["unified"]
    assert "+c\n" in text["unified"]
    as_json = DiffItem("change", "data", "f.json", '{"a": 1,\n"b": 2}', '{"a": 1,\n"b": 3}').unified()
    assert '-  "b": 2\n' in as_json


@settings(max_examples=200, deadline=None)
@given(
    old=st.none() | st.text(alphabet='ab\n{}":1 ', max_size=30) | st.booleans(),
    new=st.none() | st.text(alphabet='ab\n{}":1 ', max_size=30) | st.booleans(),
    field=st.sampled_from(["data", "labels", "annotations", "immutable", "binaryData"]),
    op=st.sampled_from(list(diff_module.DiffOp)),
)
def test_a_stored_diff_reads_back_as_the_plan_shows_it(old, new, field, op):
    """The change log leaves out an added or removed key's text; ``readable_diff`` (after a round trip
    through JSON, as the database gives it back) gives ``as_dict()``'s very entry."""
    if field == "binaryData":
        old, new = (None if v is None else "AAEC" for v in (old, new))
    item = DiffItem(op, field, "k", old, new)
    stored = json.loads(json.dumps(item.as_dict(stored=True)))
    if op is not diff_module.DiffOp.CHANGE:
        assert "unified" not in stored
    assert diff_module.readable_diff([stored]) == [item.as_dict()]


def test_readable_diff_leaves_what_is_not_a_stored_entry_as_it_is():
    logged_before = {
        "op": "change",
        "field": "data",
        "key": "k",
        "old": "a\nb",
        "new": "a\nc",
        "unified": "x",
    }
    odd = [logged_before, {"op": "rename", "field": "data"}, "text", 3]
    assert diff_module.readable_diff(odd) == odd
    assert diff_module.readable_diff(None) is None
    assert diff_module.readable_diff({"not": "a list"}) == {"not": "a list"}


@settings(max_examples=300, deadline=None)
@example(text="[\n]", added=True)  # JSON pretty-printed to one line: a hunk of one line
@example(text="a\nb", added=False)
@given(
    text=st.text(alphabet='ab\n{}[]":1 ', max_size=40),
    added=st.booleans(),
)
def test_an_added_or_removed_key_diffs_as_difflib_would(text, added):
    """The one-sided shortcut (no matcher for a key added or removed) gives difflib's very text."""
    old, new = (None, text) if added else (text, None)
    item = DiffItem("add" if added else "remove", "data", "k", old, new)
    readable = diff_module._readable(text).splitlines(keepends=True) if text else []
    sides = ([], readable) if added else (readable, [])
    expected = "".join(
        line if line.endswith("\n") else line + diff_module.NO_NEWLINE
        for line in difflib.unified_diff(*sides, fromfile="data/k (live)", tofile="data/k (git)")
    )
    assert item.unified() == (expected if "\n" in text.rstrip("\n") else None)


def test_a_change_of_a_last_newline_or_of_json_spacing_alone_shows_in_the_diff():
    """Both sides once read the same: "-y" and "+y" for a newline added at the end, nothing at all for
    JSON that differs in its spacing or key order only (pretty-printed alike)."""
    newline = DiffItem("change", "data", "k", "x\ny", "x\ny\n").unified()
    assert newline.endswith(" x\n-y\n\\ No newline at end of file\n+y\n")
    spacing = DiffItem("change", "data", "f.json", '{"b": 1,\n"a": 2}', '{"a": 2,\n"b": 1}').unified()
    assert '-{"b": 1,\n-"a": 2}\n\\ No newline at end of file\n+{"a": 2,\n+"b": 1}' in spacing


def test_binary_data_is_summarised_never_shown():
    item = diff_content(Content(), Content(binary_data={"k": "AAEC"}))[0].as_dict()
    assert item["new"].startswith("<3 bytes, sha256:")


def test_a_change_in_git_alone_is_not_drift():
    before = desired_object(LOG_LEVEL="info")
    after = desired_object(LOG_LEVEL="debug")
    item = only_item(state(after, self_heal=True), [applied(before)])
    assert item.action is Action.UPDATE
    assert item.reason == "changed in Git"
    assert item.force is False, "nothing to take back from other managers"


def test_a_change_in_git_on_top_of_an_edit_in_the_cluster_is_flagged_and_forced_with_self_heal():
    before = desired_object(LOG_LEVEL="info")
    after = desired_object(LOG_LEVEL="debug")
    edited = applied(before, data={"LOG_LEVEL": "trace"})
    assert only_item(state(after, self_heal=True), [edited]).force is True
    plain = only_item(state(after), [edited])
    assert plain.reason == "changed in Git; also edited in the cluster"
    assert plain.force is False


@pytest.mark.parametrize("forged", ["", "not-a-hash", "0" * 33, "x" * 100])
def test_an_altered_content_hash_applies_git_and_says_why(forged):
    obj = desired_object(LOG_LEVEL="info")
    live = applied(obj)
    live["metadata"]["annotations"]["sluice.dev/content-hash"] = forged
    item = only_item(state(obj, self_heal=True), [live])
    assert item.action is Action.UPDATE
    assert item.reason == "Sluice's content hash on it is missing or altered; Git's content is applied"
    assert item.live_content_hash is None


@pytest.mark.parametrize("prune, allowed", [(True, True), (True, False), (False, True)])
def test_objects_gone_from_git_keep_their_provenance_for_a_rollback(prune, allowed):
    gone = desired_object("gone")
    live = [applied(gone)]
    result = plan(
        state(prune=prune),
        {(CLUSTER, "team-a"): live},
        source=SOURCE,
        commit=NEW,
        managed=inventory(live),
        prune_allowed=allowed,
    )
    (item,) = result.items
    assert (item.live_commit, item.live_content_hash) == (OLD, gone.content.hash)


def test_an_object_labelled_as_ours_but_never_applied_by_sluice_is_not_pruned():
    forged = applied(desired_object("coredns"))
    result = plan(
        state(prune=True), {(CLUSTER, "team-a"): [forged]}, source=SOURCE, commit=NEW, managed=frozenset()
    )
    (item,) = result.items
    assert item.action is Action.CONFLICT
    assert "never applied it" in item.reason
    assert not item.action.changes_cluster


def test_a_conflict_shows_who_writes_the_object_never_its_data():
    theirs = applied(desired_object("app", v="secret-value"), source="other")
    theirs["metadata"]["managedFields"].append({"manager": "kubectl-edit", "operation": "Update"})
    item = only_item(state(desired_object("app", v="ours")), [theirs])
    assert item.action is Action.CONFLICT
    assert (
        item.reason
        == "exists and is managed by source 'other' (written by kubectl-edit, sluice); not taken over"
    )
    assert item.diff == ()
    assert item.before is None
    assert "secret-value" not in repr(item.as_dict())


@pytest.mark.parametrize(
    "git_changed, drifted, immutable, self_heal, action, force, to_git",
    [
        (False, False, False, False, Action.UNCHANGED, False, False),
        (False, False, False, True, Action.UNCHANGED, False, False),
        (True, False, False, False, Action.UPDATE, False, True),
        (True, True, False, False, Action.UPDATE, False, True),
        (True, True, False, True, Action.UPDATE, True, True),
        (False, True, False, False, Action.DRIFT, False, False),
        (False, True, False, True, Action.SELF_HEAL, True, False),
        (True, False, True, False, Action.REPLACE, False, True),
        (False, True, True, True, Action.REPLACE, False, True),
        (False, True, True, False, Action.DRIFT, False, False),  # reported only, immutable or not
    ],
)
def test_the_decision_table(git_changed, drifted, immutable, self_heal, action, force, to_git):
    verdict = decide(git_changed=git_changed, drifted=drifted, immutable=immutable, self_heal=self_heal)
    assert (verdict.action, verdict.force, verdict.to_git) == (action, force, to_git)
    assert bool(verdict.reason) is (action is not Action.UNCHANGED)


def test_the_plan_memo_keeps_only_the_objects_of_the_last_plan():
    from gitops.plan import PlanMemo

    memo = PlanMemo()
    for generation in range(5):
        objects = [desired_object(f"g{generation}-{index}") for index in range(100)]
        live = [
            {
                **applied(obj, commit=NEW),
                "metadata": {**applied(obj, commit=NEW)["metadata"], "resourceVersion": "7"},
            }
            for obj in objects
        ]
        plan(
            state(*objects),
            {(CLUSTER, "team-a"): live},
            source=SOURCE,
            commit=NEW,
            managed=inventory(live),
            memo=memo,
        )
    assert len(memo) == 100


def test_an_object_labelled_as_ours_but_never_applied_is_not_taken_over_nor_shown():
    forged = applied(desired_object("app", v="hunter2"))
    result = plan(
        state(desired_object("app", v="ours")),
        {(CLUSTER, "team-a"): [forged]},
        source=SOURCE,
        commit=NEW,
        managed=frozenset(),
    )
    (item,) = result.items
    assert item.action is Action.CONFLICT
    assert "hunter2" not in repr(item.as_dict())
