"""Which changed flags the Flags page shows as everyone has them until 100: those every cluster's canary
keeps whole (their variants change type), with the definition published before the rollout."""

from __future__ import annotations

import json

from gitops.rollout.flag_catalog import _held

BANNER_STRINGS = {
    "state": "ENABLED",
    "variants": {"blue": "blue", "green": "green"},
    "defaultVariant": "blue",
}
BANNER_SWITCH = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "on"}
SET = ("flags", "checkout")


def test_a_flag_whose_variants_change_type_is_held_with_its_old_definition():
    held = _held(
        {SET: {"flags": {"banner": BANNER_SWITCH}}}, {("a", *SET): {"flags": {"banner": BANNER_STRINGS}}}
    )
    assert held[SET]["banner"].default_variant == "blue"


def test_it_is_held_only_where_every_clusters_canary_holds_it():
    sets = {SET: {"flags": {"banner": BANNER_SWITCH}}}
    old = {"flags": {"banner": BANNER_STRINGS}}
    assert _held(sets, {("a", *SET): old, ("b", *SET): old})[SET].keys() == {"banner"}
    # Cluster b published no such flag before: its users get the new one at the rollout's share.
    assert _held(sets, {("a", *SET): old, ("b", *SET): None}) == {}
    assert _held(sets, {("b", *SET): None, ("a", *SET): old}) == {}, "whichever cluster comes last"
    assert _held(sets, {("a", *SET): old, ("b", *SET): {"flags": {}}}) == {}


def test_a_flag_of_the_same_type_or_disabled_on_one_side_is_not_held():
    same_type = {**BANNER_STRINGS, "defaultVariant": "green"}
    disabled = {**BANNER_STRINGS, "state": "DISABLED"}
    for old in (same_type, disabled):
        assert (
            _held(
                {SET: {"flags": {"banner": BANNER_SWITCH if old is disabled else BANNER_STRINGS}}},
                {("a", *SET): {"flags": {"banner": old}}},
            )
            == {}
        )


def test_who_has_a_change_is_the_rollouts_share_where_the_clusters_canaries_differ():
    # The canary holds a moving banner in cluster a until 100; cluster b had the new definition already,
    # so its users all have it: the page shows the rollout's share, not "nobody until 100%".
    from gitops.desired.revision import load_revision
    from gitops.desired.scope import AdminScope
    from gitops.rollout.engine import desired_at_weight
    from gitops.rollout.flag_catalog import _reach
    from gitops.vocabulary import FlagReach

    policy = b"targets:\n  - {cluster: a, namespaces: [flags]}\n  - {cluster: b, namespaces: [flags]}\n"
    files = {
        "sluice.yaml": policy,
        "flags/checkout.json": json.dumps({"flags": {"banner": BANNER_STRINGS}}).encode(),
        "flags/promo.json": json.dumps({"flags": {"switch": BANNER_SWITCH}}).encode(),
    }
    scope = AdminScope.of(["*/flags"], [], known_clusters=("default", "a", "b"))
    state = load_revision({path: path for path in files}, lambda ids: {i: files[i] for i in ids}, scope=scope)
    new_promo = {"flags": {"switch": BANNER_SWITCH}}
    baselines = {
        ("a", "flags", "checkout"): {"flags": {}},
        ("a", "flags", "promo"): {"flags": {"switch": BANNER_SWITCH, "banner": BANNER_STRINGS}},
        ("b", "flags", "checkout"): {"flags": {"banner": BANNER_STRINGS}},
        ("b", "flags", "promo"): new_promo,
        ("a", "flags", "retired"): {"flags": {"old": BANNER_SWITCH}},  # dropped from Git: served until 100
    }
    weighted = desired_at_weight(state, 25, baselines, population="5eed")
    assert _reach(state, baselines, weighted) == {
        ("flags", "checkout", "banner"): FlagReach.SPLIT,  # a: arriving, held; b: unchanged
        ("flags", "promo", "banner"): FlagReach.SPLIT,  # a: leaving, held; b: never there
        ("flags", "retired", "old"): FlagReach.AT_FULL,
    }
    one_cluster = {key: document for key, document in baselines.items() if key[0] == "a"}
    policy_a = b"targets:\n  - {cluster: a, namespaces: [flags]}\n"
    files_a = {**files, "sluice.yaml": policy_a}
    only_a = load_revision(
        {path: path for path in files_a},
        lambda ids: {i: files_a[i] for i in ids},
        scope=AdminScope.of(["*/flags"], [], known_clusters=("default", "a")),
    )
    weighted_a = desired_at_weight(only_a, 25, one_cluster, population="5eed")
    assert _reach(only_a, one_cluster, weighted_a) == {
        ("flags", "checkout", "banner"): FlagReach.AT_FULL,
        ("flags", "promo", "banner"): FlagReach.AT_FULL,
        ("flags", "retired", "old"): FlagReach.AT_FULL,
    }
