"""Flag keys across sources, the pure part: where a revision publishes each key, and the error at a key
another source publishes into the same cluster's flags namespace (the shell asks the catalog which)."""

from __future__ import annotations

import json

from gitops.desired.flag_keys import (
    FlagKeyDefinition,
    PublishedElsewhere,
    claimed_elsewhere,
    flag_claims,
    flag_key_definitions,
    flag_key_hash,
    flag_keys,
    published_elsewhere_errors,
)
from gitops.desired.flag_summary import effective_flags, flag_summary
from gitops.desired.revision import DesiredState, load_revision
from gitops.desired.scope import AdminScope

POLICY = b"""targets:
  - cluster: default
    namespaces: [team-a]
  - cluster: member-1
    namespaces: [team-a]
flags:
  namespace: flags
"""
SWITCH = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "on"}
CHECKOUT = (
    b'{\n  "flags": {\n'
    b'    "new-checkout": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"},\n'
    b'    "banner": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}\n'
    b"  }\n}\n"
)
# A ConfigMap of the flags namespace that is no flag set: it publishes no flag key.
PLAIN = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: plain\n  namespace: flags\ndata:\n  v: '1'\n"
BOTH = frozenset({("default", "flags"), ("member-1", "flags")})
HERE = FlagKeyDefinition("flags/checkout.json", 3, frozenset({("default", "flags")}))
PROBLEM = (
    "flagd serves every flag set of a namespace together, merged by key, and of two definitions the one "
    "it read last, so one key belongs to one source"
)


def load(files: dict[str, bytes]) -> DesiredState:
    scope = AdminScope.of(["*/*"], [], known_clusters=("default", "member-1"))
    return load_revision({path: path for path in files}, lambda ids: {i: files[i] for i in ids}, scope=scope)


def test_each_key_is_defined_at_its_line_and_published_into_the_flags_namespace_of_every_cluster():
    other = json.dumps({"flags": {"search": SWITCH}}).encode()
    desired = load(
        {
            "sluice.yaml": POLICY,
            "flags/checkout.json": CHECKOUT,
            "flags/search.json": other,
            "configmaps/p.yaml": PLAIN,
        }
    )
    keys = flag_keys(desired)
    assert (
        keys.definitions
        == flag_key_definitions(desired)
        == {
            "new-checkout": FlagKeyDefinition("flags/checkout.json", 3, BOTH),
            "banner": FlagKeyDefinition("flags/checkout.json", 4, BOTH),
            "search": FlagKeyDefinition("flags/search.json", 1, BOTH),
        }
    )
    assert keys.places == BOTH
    assert keys.hashes == {flag_key_hash(key) for key in ("new-checkout", "banner", "search")}


def test_a_revision_without_flag_sets_has_no_key_to_ask_about():
    keys = flag_keys(load({"sluice.yaml": POLICY, "configmaps/p.yaml": PLAIN}))
    assert (keys.definitions, keys.places, keys.hashes) == ({}, frozenset(), frozenset())


def test_a_key_another_source_publishes_where_the_revision_would_is_an_error_at_its_line():
    (error,) = published_elsewhere_errors(
        {"new-checkout": HERE}, [PublishedElsewhere("shop-a", "default", "flags", "new-checkout")]
    )
    assert (error.file, error.line, error.field) == ("flags/checkout.json", 3, "flags.new-checkout")
    assert str(error) == (
        "flags/checkout.json:3: flags.new-checkout: the flag 'new-checkout' is also published into "
        f"default/flags by source 'shop-a': {PROBLEM}; take it out of one of them, or publish into "
        "another flags namespace"
    )


def test_the_same_key_in_another_namespace_or_cluster_is_no_error():
    elsewhere = [
        PublishedElsewhere("shop-a", "default", "other-flags", "new-checkout"),
        PublishedElsewhere("shop-a", "member-1", "flags", "new-checkout"),
        PublishedElsewhere("shop-a", "default", "flags", "another-key"),
    ]
    assert published_elsewhere_errors({"new-checkout": HERE}, elsewhere) == []


def test_a_key_its_source_is_taking_out_counts_until_that_rollout_completes():
    (error,) = published_elsewhere_errors(
        {"new-checkout": HERE},
        [PublishedElsewhere("shop-a", "default", "flags", "new-checkout", removed=True)],
    )
    assert error.message.endswith(
        f"{PROBLEM}; 'shop-a' is taking it out: it counts until that rollout completes"
    )
    # Moving between two of its flag sets, it stays: one set still has it.
    (moving,) = published_elsewhere_errors(
        {"new-checkout": HERE},
        [
            PublishedElsewhere("shop-a", "default", "flags", "new-checkout", removed=True),
            PublishedElsewhere("shop-a", "default", "flags", "new-checkout", removed=False),
        ],
    )
    assert "taking it out" not in moving.message


def test_an_error_names_the_first_source_by_name_its_places_and_counts_the_rest():
    definition = FlagKeyDefinition(
        "flags/checkout.json", None, frozenset({(f"c{i}", "flags") for i in range(5)})
    )
    published = [PublishedElsewhere("shop-b", f"c{i}", "flags", "k") for i in range(5)]
    published += [
        PublishedElsewhere("shop-a", "c4", "flags", "k"),
        PublishedElsewhere("shop-c", "c0", "flags", "k"),
    ]
    (error,) = published_elsewhere_errors({"k": definition}, published)
    assert str(error).startswith(
        "flags/checkout.json: flags.k: the flag 'k' is also published into c4/flags by source 'shop-a' "
        "(and by 2 other sources): "
    )
    (many,) = published_elsewhere_errors({"k": definition}, published[:5])
    assert "into c0/flags, c1/flags, c2/flags and 2 more by source 'shop-b':" in many.message


def test_errors_come_one_per_key_in_key_order():
    definitions = {"b": HERE, "a": HERE, "c": HERE}
    published = [
        PublishedElsewhere(source, "default", "flags", key) for key in "bca" for source in ("x", "y")
    ]
    published = [each for each in published if each.key != "c"]
    assert [error.field for error in published_elsewhere_errors(definitions, published)] == [
        "flags.a",
        "flags.b",
    ]


def test_keys_are_hashed_as_the_flag_catalog_stores_them():
    from gitops.rollout.flag_catalog import _row

    for key in ("new-checkout", "ключ", "a key with spaces", "k" * 5000):
        document = {"flags": {key: SWITCH}}
        summary = flag_summary(SWITCH, effective_flags(document)[key])
        row = _row(1, ("flags", "checkout"), key, summary, None, rollout_id=None)
        assert flag_key_hash(key) == row.key_hash


def test_a_rollouts_claim_holds_each_key_once_with_the_places_of_its_file():
    other = json.dumps({"flags": {"search": SWITCH}}).encode()
    desired = load({"sluice.yaml": POLICY, "flags/checkout.json": CHECKOUT, "flags/search.json": other})
    claims = flag_claims(flag_keys(desired))
    assert claims == [
        {
            "places": [["default", "flags"], ["member-1", "flags"]],
            "keys": [[flag_key_hash(key), key] for key in ("banner", "new-checkout", "search")],
        }
    ], "one group: the three keys go to the same places"
    assert flag_claims(flag_keys(load({"sluice.yaml": POLICY, "configmaps/p.yaml": PLAIN}))) == []


def test_a_key_another_sources_rollout_claimed_counts_where_it_claimed_it():
    claims = [
        {"places": [["default", "flags"]], "keys": [[flag_key_hash("new-checkout"), "new-checkout"]]},
        {"places": [["member-1", "flags"]], "keys": [[flag_key_hash("banner"), "banner"]]},
    ]
    asked = {flag_key_hash("new-checkout"), flag_key_hash("banner")}
    found = claimed_elsewhere([("shop-a", 7, claims)], {("default", "flags")}, asked)
    assert found == [PublishedElsewhere("shop-a", "default", "flags", "new-checkout", rollout=7)]
    assert claimed_elsewhere([("shop-a", 7, claims)], {("default", "other")}, asked) == []

    (error,) = published_elsewhere_errors({"new-checkout": HERE}, found)
    assert str(error) == (
        "flags/checkout.json:3: flags.new-checkout: the flag 'new-checkout' is being published into "
        f"default/flags by rollout 7 of source 'shop-a': {PROBLEM}; take it out of one of them, or publish "
        "into another flags namespace"
    )
    published = PublishedElsewhere("shop-a", "default", "flags", "new-checkout")
    (both,) = published_elsewhere_errors({"new-checkout": HERE}, [*found, published])
    assert "is also published into default/flags by source 'shop-a':" in str(both), "published: said so"
