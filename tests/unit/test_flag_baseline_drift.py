"""A flag set's old side (``step.baselines_of``) when someone edits the cluster's copy by hand mid-rollout.

A rollout leaves a flag set its commit does not change unwritten at every step, so each step read its
old side from the cluster again: a hand edit between two steps became that set's old side at the next,
was split against Git's flags there (the users outside the canary got the edit) and written over the edit,
selfHeal or not (without it the apiserver refused the write to a key kubectl held, failing the rollout),
and that write's ``before`` pinned the edit as what a rollback restored. Now the old side of a set Sluice
applied as Git has it is Git's set: the edit is drift, reported or healed as at any pass. A set the commit
changes still takes its old side from the cluster until the rollout's first write of it, and from that
write's ``before`` after.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gitops.desired.limits import DEFAULT_LIMITS
from gitops.desired.revision import DesiredState, ObjectKey, flag_set_key, load_revision
from gitops.desired.scope import AdminScope
from gitops.plan import Action, plan
from gitops.plan.provenance import Provenance, manifest
from gitops.rollout.engine import desired_at_weight
from gitops.rollout.step import PublishedFlagSetUnreadable, baselines_of

SOURCE = "shop"
V1, V2 = "a" * 40, "b" * 40
POPULATION = "5eed"


def boolean(default: str) -> dict[str, Any]:
    return {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": default}


# checkout.json changes in the commit rolled out; other.json does not.
CHECKOUT_V1 = {"flags": {"new-checkout": boolean("off")}}
CHECKOUT_V2 = {"flags": {"new-checkout": boolean("on")}}
OTHER = {"flags": {"dark-mode": boolean("off"), "beta": boolean("off")}}
# What someone puts in other's ConfigMap by hand while the rollout is paused.
EDITED = {"flags": {"dark-mode": boolean("on"), "beta": boolean("off"), "by-hand": boolean("on")}}


def revision(checkout: dict, *, self_heal: bool = False) -> DesiredState:
    policy = "targets: {namespaces: [flags]}\nflags: {namespace: flags}\n"
    if self_heal:
        policy += "selfHeal: true\n"
    files = {
        "sluice.yaml": policy.encode(),
        "flags/checkout.json": json.dumps(checkout).encode(),
        "flags/other.json": json.dumps(OTHER).encode(),
    }
    scope = AdminScope.of(["flags"], [])
    return load_revision({path: path for path in files}, lambda ids: {i: files[i] for i in ids}, scope=scope)


def by_name(state: DesiredState) -> dict[str, Any]:
    return {obj.name: obj for obj in state.objects}


def applied_at_v1(name: str) -> dict[str, Any]:
    """The set's ConfigMap as Sluice applied it at v1: its document, stamps and field manager."""
    obj = by_name(revision(CHECKOUT_V1))[name]
    body = manifest(
        obj.namespace,
        obj.name,
        obj.rendered(commit=V1, source=SOURCE),
        Provenance(SOURCE, V1, obj.content.hash, obj.origin, obj.kind),
    )
    key = flag_set_key(name)
    body["metadata"]["resourceVersion"] = "1"
    body["metadata"]["managedFields"] = [
        {"manager": "sluice", "operation": "Apply", "fieldsV1": {"f:data": {f"f:{key}": {}}}}
    ]
    return body


def edited_by_hand(live: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """``kubectl edit`` of the set's document: Sluice's labels and stamps left as they were."""
    key = next(iter(live["data"]))
    stamped = {**document, "metadata": json.loads(live["data"][key])["metadata"]}
    edited = json.loads(json.dumps(live))
    edited["data"][key] = json.dumps(stamped)
    edited["metadata"]["resourceVersion"] = "2"
    edited["metadata"]["managedFields"] = [
        {"manager": "sluice", "operation": "Apply", "fieldsV1": {}},
        {"manager": "kubectl-edit", "operation": "Update", "fieldsV1": {"f:data": {f"f:{key}": {}}}},
    ]
    return edited


def index_of(*live: dict[str, Any]) -> dict[ObjectKey, dict[str, Any]]:
    return {("default", obj["metadata"]["namespace"], obj["metadata"]["name"]): obj for obj in live}


def flag_objects(state: DesiredState) -> list[Any]:
    return [obj for obj in state.objects if obj.flag_set is not None]


def old_sides(
    state: DesiredState, index: dict[ObjectKey, dict[str, Any]], replaced: dict | None = None
) -> dict[str, Any]:
    found = baselines_of(flag_objects(state), replaced or {}, index, source=SOURCE, limits=DEFAULT_LIMITS)
    return {key[2]: document for key, document in found.items()}


def step_plan(state: DesiredState, index: dict[ObjectKey, dict[str, Any]], weight: int) -> dict[str, Any]:
    """The plan of a step at ``weight``, as ``weight_apply`` makes it (baselines, canaries, plan)."""
    baselines = baselines_of(flag_objects(state), {}, index, source=SOURCE, limits=DEFAULT_LIMITS)
    weighted = desired_at_weight(state, weight, baselines, POPULATION)
    current = plan(
        weighted,
        {("default", "flags"): list(index.values())},
        source=SOURCE,
        commit=V2,
        managed=frozenset(index),
        prune_allowed=False,
    )
    return {item.key[2]: item for item in current.items}


def published_flags(item: Any) -> dict[str, Any]:
    return json.loads(item.after.data[flag_set_key(item.key[2])])["flags"]


def test_a_hand_edit_of_a_set_the_commit_leaves_as_it_is_is_not_its_old_side():
    live = index_of(applied_at_v1("checkout"), edited_by_hand(applied_at_v1("other"), EDITED))
    assert old_sides(revision(CHECKOUT_V2), live)["other"] == OTHER


def test_without_self_heal_the_edit_is_drift_left_alone_not_a_canary_written_over_it():
    """Before, the step split other's flags between the edit and Git's and wrote that over the edit: an
    update of a key kubectl-edit holds, which the apiserver refuses without selfHeal (the rollout
    failed and rolled back for a set its commit does not change)."""
    live = index_of(applied_at_v1("checkout"), edited_by_hand(applied_at_v1("other"), EDITED))
    items = step_plan(revision(CHECKOUT_V2), live, 50)
    assert items["other"].action is Action.DRIFT
    assert items["checkout"].action is Action.UPDATE, "the set the commit changes goes on as planned"
    assert "sluice-canary" in json.dumps(published_flags(items["checkout"]))


def test_with_self_heal_the_edit_is_healed_for_every_user_not_split_against():
    """Before, a forced update published a canary whose old side was the edit: the users outside it got
    the hand-made flags (``by-hand`` among them) from the rollout itself."""
    live = index_of(applied_at_v1("checkout"), edited_by_hand(applied_at_v1("other"), EDITED))
    items = step_plan(revision(CHECKOUT_V2, self_heal=True), live, 50)
    assert items["other"].action is Action.SELF_HEAL
    assert published_flags(items["other"]) == OTHER["flags"], "Git's set, no split"


def test_an_unchanged_set_as_applied_is_left_unwritten_as_before():
    live = index_of(applied_at_v1("checkout"), applied_at_v1("other"))
    items = step_plan(revision(CHECKOUT_V2), live, 50)
    assert items["other"].action is Action.UNCHANGED
    assert old_sides(revision(CHECKOUT_V2), live)["other"] == OTHER


def test_a_set_the_commit_changes_takes_its_old_side_from_the_cluster_until_the_rollout_writes_it():
    """The first read: what the cluster holds (an edit made before the rollout first wrote the set
    included) until the rollout writes it, then what that write replaced, whatever the cluster
    holds since."""
    before_first_write = {"flags": {"new-checkout": boolean("on"), "kept": boolean("on")}}
    live = index_of(edited_by_hand(applied_at_v1("checkout"), before_first_write), applied_at_v1("other"))
    assert old_sides(revision(CHECKOUT_V2), live)["checkout"] == before_first_write

    first_write_replaced = applied_at_v1("checkout")
    later = {"flags": {"new-checkout": boolean("off"), "later": boolean("on")}}
    live = index_of(edited_by_hand(applied_at_v1("checkout"), later), applied_at_v1("other"))
    replaced = {("default", "flags", "checkout"): first_write_replaced}
    assert old_sides(revision(CHECKOUT_V2), live, replaced)["checkout"] == CHECKOUT_V1


def test_an_unreadable_edit_fails_the_step_only_for_a_set_the_commit_changes():
    """An edit Sluice cannot read as a flag set (a fractional weight of 12.5) has no canary of it built
    when the commit leaves the set as it is: it is drift. Before, every step failed the rollout on it."""
    unreadable = {
        "flags": {
            "beta": {**boolean("off"), "targeting": {"fractional": [["on", 12.5], ["off", 87.5]]}},
        }
    }
    live = index_of(applied_at_v1("checkout"), edited_by_hand(applied_at_v1("other"), unreadable))
    assert old_sides(revision(CHECKOUT_V2), live)["other"] == OTHER

    live = index_of(edited_by_hand(applied_at_v1("checkout"), unreadable), applied_at_v1("other"))
    with pytest.raises(PublishedFlagSetUnreadable, match="flags/checkout in cluster default"):
        old_sides(revision(CHECKOUT_V2), live)


def test_a_set_whose_content_hash_was_altered_too_is_still_read_from_the_cluster():
    """The limit of the rule: with Sluice's hash gone from it, nothing says what Sluice applied there, and
    the edit is read as the old side, as before (the plan applies Git's content over it, saying why)."""
    forged = edited_by_hand(applied_at_v1("other"), EDITED)
    forged["metadata"]["annotations"]["sluice.dev/content-hash"] = "not a hash"
    live = index_of(applied_at_v1("checkout"), forged)
    assert old_sides(revision(CHECKOUT_V2), live)["other"] == EDITED


def test_a_set_another_source_holds_is_no_side_at_all():
    foreign = applied_at_v1("other")
    foreign["metadata"]["labels"]["sluice.dev/source"] = "someone-else"
    live = index_of(applied_at_v1("checkout"), foreign)
    assert old_sides(revision(CHECKOUT_V2), live)["other"] is None
