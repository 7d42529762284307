"""Which changed flags the Flags page shows as everyone has them until 100: those every cluster's canary
keeps whole (their variants change type), with the definition published before the rollout."""

from __future__ import annotations

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
