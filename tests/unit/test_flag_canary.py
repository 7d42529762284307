"""Canary flag sets, checked with both real flagd evaluators.

Each published document is served by its own evaluator and evaluated for 10,000
targeting keys, once with each of the two evaluators flagd ships (tests/flagd.py):
the Python one (openfeature-provider-flagd in-process, file-based, on
openfeature-flagd-core 2.x) and the JavaScript one (@openfeature/flagd-core 4.0.1,
through Node). No daemon, no network. They bucket ``fractional`` differently, so
each must see the intended share and stickiness on its own. The "old result" and the
"new result" of a key are what the pure old and new flag sets serve it: the
documents published at 0 and at 100, which are asserted to be exactly ``old`` and
``new``.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from gitops.desired.flags import canonical_json
from gitops.desired.revision import flag_set_json
from gitops.rollout.flag_canary import (
    OLD_VARIANT_SUFFIX,
    SPLIT_BUCKET_NEW,
    SPLIT_BUCKET_OLD,
    CanaryRefused,
    canary_flag_set,
    canary_reach,
    changed_flags,
    moved_flags,
)
from gitops.vocabulary import FlagReach
from tests.flagd import EVALUATORS, KEYS, Context, FlagdEvaluator, PythonEvaluator

WEIGHTS = (0, 25, 50, 75, 100)
# A rollout's seed, as Rollout.flag_population makes them: every changed flag splits the same users.
POPULATION = "5eed0f1a9c3b7d24"
TOLERANCE = 2.0  # percentage points, which is 4 standard errors of a 50% share of 10,000 keys
PLANS = ("free", "pro", "enterprise")


def _context(index: int, targeting_key: str | None) -> Context:
    # Attributes vary with the key so that rule changes affect a large share of keys.
    domain = "corp.example" if index % 2 == 0 else "mail.example"
    attributes = {
        "plan": PLANS[index % 3],
        "email": f"user-{index}@{domain}",
        "appVersion": f"2.{index % 4}.0",
        "seats": index % 4,  # a number: targeting that computes the variant "0" to "3" from it
    }
    return Context(targeting_key, attributes)


CONTEXTS = {key: _context(index, key) for index, key in enumerate(KEYS)}
# Contexts without a targeting key cannot be bucketed.
KEYLESS_CONTEXTS = {f"keyless-{index}": _context(index, None) for index in range(6)}

# A code default no variant has, for each kind of flag.
CODE_DEFAULTS: dict[str, Any] = {
    "boolean": False,
    "string": "code default",
    "number": -1.0,
    "object": {"codeDefault": True},
}

# A key's result: None for the caller's code default, else the served value as JSON.
Result = str | None


class Published:
    """One published document, served by one evaluator."""

    def __init__(self, evaluator: FlagdEvaluator) -> None:
        self.evaluator = evaluator

    def results(self, flag: str, kind: str, contexts: Mapping[str, Context]) -> dict[str, Result]:
        return self.results_of([(flag, kind)], contexts)[flag]

    def results_of(
        self, flags: list[tuple[str, str]], contexts: Mapping[str, Context]
    ) -> dict[str, dict[str, Result]]:
        """results[flag][key] for several flags, in one pass of the evaluator."""
        evaluations = [(flag, kind, CODE_DEFAULTS[kind]) for flag, kind in flags]
        resolved = self.evaluator.resolve_flags(evaluations, contexts)
        results: dict[str, dict[str, Result]] = {}
        for flag, _ in flags:
            results[flag] = {}
            for key, details in resolved[flag].items():
                # A missing flag is the code default too; any other error is a broken document.
                assert details.error_code in (None, "FLAG_NOT_FOUND"), (self.evaluator.name, flag, details)
                value = None if details.variant is None else json.dumps(details.value, sort_keys=True)
                results[flag][key] = value
        return results

    def close(self) -> None:
        self.evaluator.close()


def keys_by_result(
    published: Published, flag: str, kind: str, contexts: Mapping[str, Context]
) -> dict[Result, set[str]]:
    """The keys that got each result (None: the code default)."""
    by_result: dict[Result, set[str]] = defaultdict(set)
    for key, result in published.results(flag, kind, contexts).items():
        by_result[result].add(key)
    return dict(by_result)


@pytest.fixture(scope="module", params=sorted(EVALUATORS))
def evaluator(request: pytest.FixtureRequest) -> str:
    """Every test that evaluates a published document runs once per flagd evaluator."""
    return str(request.param)


@pytest.fixture(scope="module")
def publish(
    evaluator: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[Mapping[str, Any]], Published]]:
    directory = tmp_path_factory.mktemp(f"published-{evaluator}")
    served: list[Published] = []

    def serve(document: Mapping[str, Any]) -> Published:
        served.append(Published(EVALUATORS[evaluator](flag_set_json(dict(document)), directory)))
        return served[-1]

    yield serve
    for published in served:
        published.close()


def _flag(
    variants: dict[str, Any], default: str | None, targeting: Any = None, **extra: Any
) -> dict[str, Any]:
    flag: dict[str, Any] = {"state": "ENABLED", "variants": variants, "defaultVariant": default, **extra}
    if targeting is not None:
        flag["targeting"] = targeting
    return flag


ON_OFF = {"on": True, "off": False}
# A whole number computed from the context: both evaluators look it up as "0" to "3".
SEATS = {"var": "seats"}
IS_ENTERPRISE = {"==": [{"var": "plan"}, "enterprise"]}
IS_CORP = {"ends_with": [{"var": "email"}, "@corp.example"]}
PAID = {"in": [{"var": "plan"}, ["pro", "enterprise"]]}

# One flag per kind of change, with its type. Each change alters the result of at
# least half of the keys, so that the share of new results is measured on
# thousands of keys.
CHANGES: dict[str, tuple[str, dict[str, Any] | None, dict[str, Any] | None]] = {
    "default-variant": ("boolean", _flag(ON_OFF, "off"), _flag(ON_OFF, "on")),
    "targeting-rule": (
        "string",
        _flag(
            {"standard": "S", "premium": "P", "internal": "I"},
            "standard",
            {"if": [IS_ENTERPRISE, "premium", None]},
        ),
        _flag(
            {"standard": "S", "premium": "P", "internal": "I"},
            "standard",
            {"if": [IS_CORP, "internal", PAID, "premium"]},
        ),
    ),
    # The split must not follow the flag's own buckets: with fractional's default
    # key the new bucket at 25 would hold 30% of the changed keys, at 50 all of them.
    "fractional-rollout": (
        "boolean",
        _flag(ON_OFF, "off", {"fractional": [["on", 10], ["off", 90]]}),
        _flag(ON_OFF, "off", {"fractional": [["on", 60], ["off", 40]]}),
    ),
    "fractional-to-rule": (
        "string",
        _flag(
            {"light": "#fff", "dark": "#000"},
            "light",
            {"fractional": [{"var": "email"}, ["light", 50], ["dark", 50]]},
        ),
        _flag(
            {"light": "#fff", "dark": "#000"},
            "light",
            {"if": [{"sem_ver": [{"var": "appVersion"}, ">=", "2.2.0"]}, "dark", "light"]},
        ),
    ),
    # "a" changes its value, so the old "a" is renamed inside the fractional buckets.
    "fractional-buckets": (
        "string",
        _flag({"a": "A", "b": "B"}, "a", {"fractional": [["a", 50], ["b", 50]]}),
        _flag({"a": "A2", "b": "B", "c": "C"}, "a", {"fractional": [["b", 50], ["a", 25], ["c", 25]]}),
    ),
    "variant-value": (
        "number",
        _flag({"small": 10, "large": 100}, "small", {"if": [IS_ENTERPRISE, "large", "small"]}),
        _flag({"small": 20, "large": 100}, "small", {"if": [IS_ENTERPRISE, "large", "small"]}),
    ),
    "variant-added": (
        "object",
        _flag(
            {"basic": {"methods": ["card"]}, "extended": {"methods": ["card", "invoice"]}},
            "basic",
            {"if": [PAID, "extended"]},
        ),
        _flag(
            {
                "basic": {"methods": ["card"]},
                "extended": {"methods": ["card", "invoice"]},
                "wallet": {"methods": ["card", "wallet"]},
            },
            "wallet",
            {"if": [IS_ENTERPRISE, "extended"]},
        ),
    ),
    "variant-removed": (
        "string",
        _flag({"legacy": "solr", "v2": "opensearch", "v3": "vespa"}, "legacy", {"if": [IS_ENTERPRISE, "v3"]}),
        _flag({"v2": "opensearch", "v3": "vespa"}, "v2", {"if": [IS_ENTERPRISE, "v3"]}),
    ),
    "disabled": ("boolean", _flag(ON_OFF, "on"), {**_flag(ON_OFF, "on"), "state": "DISABLED"}),
    "enabled": ("string", {**_flag({"v1": "one"}, "v1"), "state": "DISABLED"}, _flag({"v1": "one"}, "v1")),
    "added": ("string", None, _flag({"spring": "Spring sale", "summer": "Summer sale"}, "spring")),
    "removed": ("number", _flag({"five": 5, "ten": 10}, "five", {"if": [IS_CORP, "ten"]}), None),
    # Same targeting, but the evaluator it references changes under the same name.
    "evaluator-change": (
        "boolean",
        _flag(ON_OFF, "off", {"if": [{"$ref": "staff"}, "on", "off"]}),
        _flag(ON_OFF, "off", {"if": [{"$ref": "staff"}, "on", "off"]}),
    ),
    # Computed variant names: the lookup chain, with renamed old variants.
    "computed-variant": (
        "string",
        _flag({"free": "Free", "pro": "Pro", "enterprise": "Enterprise"}, None, {"var": "plan"}),
        _flag({"free": "Free plan", "pro": "Pro plan", "enterprise": "Enterprise"}, "free", {"var": "plan"}),
    ),
    # A computed number selects the variant its decimal text names (a review found it served the code
    # default to everyone during a canary, on both evaluators).
    "computed-number": (
        "string",
        _flag({"0": "zero", "1": "one", "2": "two", "3": "three"}, "0", SEATS),
        _flag({"0": "zero", "1": "uno", "2": "two", "3": "tres"}, "0", SEATS),
    ),
    # A boolean computed result selects the variant "true" or "false".
    "computed-boolean": (
        "boolean",
        _flag({"true": True, "false": False}, "false", PAID),
        _flag({"true": True, "false": False}, "false", IS_CORP),
    ),
}

UNCHANGED: dict[str, tuple[str, dict[str, Any]]] = {
    "steady": ("boolean", _flag(ON_OFF, "off", {"if": [{"$ref": "beta"}, "on", "off"]})),
    "steady-rollout": ("string", _flag({"a": "A", "b": "B"}, "a", {"fractional": [["a", 30], ["b", 70]]})),
}


def _flag_set(side: int, evaluators: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    flags = {key: flag for key, change in CHANGES.items() if (flag := change[1 + side]) is not None}
    flags |= {key: flag for key, (_, flag) in UNCHANGED.items()}
    return {"$evaluators": evaluators, "flags": flags, "metadata": metadata}


OLD = _flag_set(
    0, {"beta": {"in": [{"var": "plan"}, ["pro"]]}, "staff": IS_CORP}, {"flagSetId": "shop", "version": "1"}
)
NEW = _flag_set(
    1, {"beta": {"in": [{"var": "plan"}, ["pro"]]}, "staff": PAID}, {"flagSetId": "shop", "version": "2"}
)


def _kind(flag: str) -> str:
    return CHANGES[flag][0] if flag in CHANGES else UNCHANGED[flag][0]


@pytest.fixture(scope="module")
def served(publish: Callable[[Mapping[str, Any]], Published]) -> dict[int, Published]:
    return {weight: publish(canary_flag_set(OLD, NEW, weight, population=POPULATION)) for weight in WEIGHTS}


@pytest.fixture(scope="module")
def results(served: dict[int, Published]) -> dict[str, dict[int, dict[str, Result]]]:
    """results[flag][weight][key], for every flag of OLD and NEW at every weight."""
    flags = [(flag, _kind(flag)) for flag in sorted(CHANGES.keys() | UNCHANGED.keys())]
    at_weight = {weight: served[weight].results_of(flags, CONTEXTS) for weight in WEIGHTS}
    return {flag: {weight: at_weight[weight][flag] for weight in WEIGHTS} for flag, _ in flags}


def tolerance(weight: int, keys: int) -> float:
    """TOLERANCE, or 4 standard errors of the share when fewer keys are measured.

    Where a change alters the result of only some keys, the share is measured on
    those, and its sampling error grows as their number shrinks.
    """
    return max(TOLERANCE, 4 * 100 * math.sqrt(weight / 100 * (1 - weight / 100) / keys))


def new_result_keys(at_weight: dict[int, dict[str, Result]]) -> dict[int, set[str]]:
    """At each weight, the keys whose result is the new one where old and new differ.

    Also checks that every key gets its old or its new result.
    """
    old, new = at_weight[0], at_weight[100]
    differing = {key for key in KEYS if old[key] != new[key]}
    assert len(differing) >= len(KEYS) // 3, "the change must affect thousands of keys to measure shares"
    new_keys = {}
    for weight, got in at_weight.items():
        strays = [key for key in KEYS if got[key] not in (old[key], new[key])]
        assert not strays, f"at {weight}, {strays[:5]} get neither their old nor their new result"
        new_keys[weight] = {key for key in differing if got[key] == new[key]}
    return new_keys


@pytest.mark.parametrize("flag", sorted(CHANGES))
def test_changed_flag_serves_new_results_to_a_sticky_weighted_share(
    flag: str, results: dict[str, dict[int, dict[str, Result]]]
) -> None:
    new_keys = new_result_keys(results[flag])
    changed = len(new_keys[100])
    shares = {weight: 100 * len(keys) / changed for weight, keys in new_keys.items()}
    for weight, share in shares.items():
        assert abs(share - weight) <= tolerance(weight, changed), (
            f"{flag}: {changed} keys change, {share:.2f}% get the new result at {weight}: {shares}"
        )
    for lower, higher in itertools.pairwise(WEIGHTS):
        lost = new_keys[lower] - new_keys[higher]
        assert not lost, f"{flag}: {sorted(lost)[:5]} had the new result at {lower} but not at {higher}"


def test_every_changed_flag_sends_the_same_users_to_its_new_side(
    results: dict[str, dict[int, dict[str, Result]]],
) -> None:
    """One population per rollout: a key on the new side of one flag is on the new side of every other
    flag the rollout changes, wherever both changes reach it (a key whose result one change leaves
    alone shows no side of that flag)."""
    new_keys = {flag: new_result_keys(results[flag]) for flag in sorted(CHANGES)}
    reached = {flag: keys[100] for flag, keys in new_keys.items()}
    compared = 0
    for first, second in itertools.combinations(sorted(CHANGES), 2):
        both = reached[first] & reached[second]
        for weight in (25, 50, 75):
            apart = (new_keys[first][weight] ^ new_keys[second][weight]) & both
            assert not apart, (
                f"at {weight}: {sorted(apart)[:5]} are on the new side of {first} or {second} only"
            )
        compared += len(both)
    assert compared > 100_000, "the changes must overlap on many keys to show one population"


@pytest.mark.parametrize("flag", sorted(UNCHANGED))
def test_unchanged_flags_serve_the_new_results_at_every_weight(
    flag: str, results: dict[str, dict[int, dict[str, Result]]]
) -> None:
    for weight in WEIGHTS:
        assert results[flag][weight] == results[flag][100], f"{flag} at {weight}"


def test_the_ends_are_exactly_old_and_new() -> None:
    assert canary_flag_set(OLD, NEW, 0) == OLD
    assert canary_flag_set(OLD, NEW, 100) == NEW
    assert canary_flag_set(None, NEW, 0) == {"flags": {}}


def test_unchanged_flags_are_published_as_written() -> None:
    published = canary_flag_set(OLD, NEW, 50, population=POPULATION)
    assert published["$evaluators"] == NEW["$evaluators"]
    assert published["metadata"] == NEW["metadata"]
    for flag, (_, definition) in UNCHANGED.items():
        assert published["flags"][flag] == definition


def test_contexts_without_a_targeting_key_keep_the_old_results(served: dict[int, Published]) -> None:
    flags = [(flag, _kind(flag)) for flag in sorted(CHANGES)]
    old = served[0].results_of(flags, KEYLESS_CONTEXTS)
    for weight in (25, 50, 75):
        got = served[weight].results_of(flags, KEYLESS_CONTEXTS)
        for flag, _ in flags:
            assert got[flag] == old[flag], f"{flag} at {weight}"


def test_changed_flags() -> None:
    assert changed_flags(OLD, NEW) == set(CHANGES)
    assert changed_flags(None, NEW) == set(NEW["flags"])
    assert changed_flags(NEW, NEW) == set()


def test_changed_flags_compares_definitions_with_evaluators_inlined() -> None:
    rule = {"if": [{"$ref": "segment"}, "on", "off"]}
    old = {"$evaluators": {"segment": IS_CORP}, "flags": {"a": _flag(ON_OFF, "off", rule)}}
    renamed = {
        "$evaluators": {"staff": IS_CORP},
        "flags": {"a": _flag(ON_OFF, "off", {"if": [{"$ref": "staff"}, "on", "off"]})},
    }
    inlined = {"flags": {"a": _flag(ON_OFF, "off", {"if": [IS_CORP, "on", "off"]})}}
    unused = {**old, "$evaluators": {**old["$evaluators"], "unused": PAID}}
    assert changed_flags(old, renamed) == set()
    assert changed_flags(old, inlined) == set()
    assert changed_flags(old, unused) == set()
    assert changed_flags(old, {**old, "$evaluators": {"segment": PAID}}) == {"a"}
    with_metadata = {**old, "flags": {"a": {**old["flags"]["a"], "metadata": {"owner": "shop"}}}}
    assert changed_flags(old, with_metadata) == {"a"}


def test_a_new_flag_set_rolls_out_from_missing_flags(
    publish: Callable[[Mapping[str, Any]], Published],
) -> None:
    new = {
        "flags": {
            "welcome": _flag(ON_OFF, "on"),
            "limits": _flag({"low": {"max": 1}, "high": {"max": 9}}, "low", {"if": [PAID, "high"]}),
        }
    }
    flags = [("welcome", "boolean"), ("limits", "object")]
    served = {weight: publish(canary_flag_set(None, new, weight)) for weight in WEIGHTS}
    # Both flags of each published document in one pass of the evaluator.
    results = {weight: published.results_of(flags, CONTEXTS) for weight, published in served.items()}
    for flag, _ in flags:
        at_weight = {weight: results[weight][flag] for weight in WEIGHTS}
        assert at_weight[0] == dict.fromkeys(KEYS), "at 0 every key gets the code default"
        new_keys = new_result_keys(at_weight)
        for weight, keys in new_keys.items():
            assert abs(100 * len(keys) / len(KEYS) - weight) <= TOLERANCE, (flag, weight, len(keys))
        for lower, higher in itertools.pairwise(WEIGHTS):
            assert new_keys[lower] <= new_keys[higher]


def test_a_changed_variant_type_switches_at_100_only(
    publish: Callable[[Mapping[str, Any]], Published],
) -> None:
    old = {
        "$evaluators": {"paid": PAID},
        "flags": {"mode": _flag(ON_OFF, "off", {"if": [{"$ref": "paid"}, "on"]})},
    }
    new = {"flags": {"mode": _flag({"fast": "fast", "safe": "safe"}, "safe")}}
    inlined = _flag(ON_OFF, "off", {"if": [PAID, "on"]})
    expected = publish(old).results("mode", "boolean", CONTEXTS)
    assert set(expected.values()) == {"true", "false"}
    assert keys_by_result(publish(new), "mode", "string", CONTEXTS).keys() == {'"safe"'}
    for weight in (25, 50, 75):
        published = canary_flag_set(old, new, weight)
        assert published["flags"]["mode"] == inlined
        assert publish(published).results("mode", "boolean", CONTEXTS) == expected
    assert canary_flag_set(old, new, 100) == new


def test_split_buckets_are_not_variant_names() -> None:
    variants = {SPLIT_BUCKET_NEW: "x", SPLIT_BUCKET_OLD: "y"}
    old = {"flags": {"f": _flag(variants, SPLIT_BUCKET_NEW)}}
    new = {"flags": {"f": _flag(variants, SPLIT_BUCKET_OLD)}}
    split = canary_flag_set(old, new, 50)["flags"]["f"]["targeting"]["if"][0]
    fractional = split["and"][1]["==="][0]["fractional"]
    buckets = [bucket[0] for bucket in fractional[1:]]
    assert len(set(buckets)) == 2
    assert not set(buckets) & set(variants)


def test_conflicting_variants_rename_the_old_one() -> None:
    old = {"flags": {"f": _flag({"a": 1, f"a{OLD_VARIANT_SUFFIX}": 2, "b": 3}, "a")}}
    new = {"flags": {"f": _flag({"a": 10, "b": 3}, "a")}}
    flag = canary_flag_set(old, new, 50)["flags"]["f"]
    assert flag["variants"] == {"a": 10, "a~old": 2, "a~old~2": 1, "b": 3}
    assert flag["defaultVariant"] is None
    assert flag["targeting"]["if"][1:] == ["a", "a~old~2"]


def test_a_change_that_serves_the_same_results_is_published_as_new() -> None:
    old = {"flags": {"f": _flag(ON_OFF, "on")}}
    new = {"flags": {"f": _flag(ON_OFF, "on", metadata={"owner": "shop"})}}
    assert changed_flags(old, new) == {"f"}
    assert canary_flag_set(old, new, 50) == new


def _split_key(published: Mapping[str, Any], flag: str) -> Any:
    """What a published canary flag's split hashes."""
    return published["flags"][flag]["targeting"]["if"][0]["and"][1]["==="][0]["fractional"][0]


def test_output_is_deterministic_and_independent_of_the_inputs() -> None:
    old, new = copy.deepcopy(OLD), copy.deepcopy(NEW)
    first = canary_flag_set(old, new, 25, metadata={"sluiceCanaryWeight": 25}, population=POPULATION)
    second = canary_flag_set(old, new, 25, metadata={"sluiceCanaryWeight": 25}, population=POPULATION)
    assert canonical_json(first) == canonical_json(second)
    assert (old, new) == (OLD, NEW)
    first["flags"]["steady"]["variants"]["on"] = "changed"
    first["flags"]["default-variant"]["variants"]["on"] = "changed"
    # Every split hashes the same key: the published flags share no part of it either.
    _split_key(first, "default-variant")["cat"][0] = "changed"
    assert _split_key(first, "disabled") == _split_key(second, "disabled")
    assert canonical_json(
        canary_flag_set(old, new, 25, metadata={"sluiceCanaryWeight": 25}, population=POPULATION)
    ) == canonical_json(second)
    assert (old, new) == (OLD, NEW)


@pytest.mark.parametrize("weight", [0, 50, 100])
def test_metadata_is_merged_into_the_set_metadata(weight: int) -> None:
    published = canary_flag_set(OLD, NEW, weight, metadata={"sluiceCommit": "abc123", "version": "9"})
    base = OLD if weight == 0 else NEW
    assert published["metadata"] == {**base["metadata"], "sluiceCommit": "abc123", "version": "9"}
    assert canary_flag_set(None, NEW, 0, metadata={"sluiceCanaryWeight": 0}) == {
        "flags": {},
        "metadata": {"sluiceCanaryWeight": 0},
    }


@pytest.mark.parametrize("weight", [-1, 101, 12.5, True, "50"])
def test_a_weight_is_a_whole_percentage(weight: Any) -> None:
    with pytest.raises(ValueError, match="weight"):
        canary_flag_set(OLD, NEW, weight)


def _new_side(
    publish: Callable[[Mapping[str, Any]], Published], document: Mapping[str, Any], flags: list[str]
) -> dict[str, set[str]]:
    """The keys that get ``on`` for each boolean flag of ``document``."""
    results = publish(document).results_of([(flag, "boolean") for flag in flags], CONTEXTS)
    return {flag: {key for key, result in results[flag].items() if result == "true"} for flag in flags}


def _shares_and_overlap(sides: list[set[str]]) -> tuple[list[float], float]:
    """Each side's share of the keys, and the share of keys on the new side of all of them."""
    return [100 * len(side) / len(KEYS) for side in sides], 100 * len(set.intersection(*sides)) / len(KEYS)


def test_flag_sets_of_one_rollout_split_the_same_users_and_another_rollout_other_users(
    publish: Callable[[Mapping[str, Any]], Published],
) -> None:
    """Two flag sets (two ConfigMaps, possibly in two clusters) of one rollout: the same users get both
    new defaults. Another rollout's seed, or a rollout from before seeds (each flag its own users),
    picks users independently: at 25% about 6% get both."""
    old = {
        "checkout": {"flags": {"new-ui": _flag(ON_OFF, "off")}},
        "api": {"flags": {"v2": _flag(ON_OFF, "off")}},
    }
    new = {
        "checkout": {"flags": {"new-ui": _flag(ON_OFF, "on")}},
        "api": {"flags": {"v2": _flag(ON_OFF, "on")}},
    }
    flag_of = {"checkout": "new-ui", "api": "v2"}

    def sides(populations: dict[str, str], weight: int) -> list[set[str]]:
        return [
            _new_side(
                publish, canary_flag_set(old[name], new[name], weight, population=population), [flag_of[name]]
            )[flag_of[name]]
            for name, population in populations.items()
        ]

    previous: set[str] = set()
    for weight in (25, 50, 75):
        checkout, api = sides({"checkout": POPULATION, "api": POPULATION}, weight)
        assert checkout == api, (
            f"at {weight}: {len(checkout ^ api)} keys get one new default and not the other"
        )
        assert abs(100 * len(checkout) / len(KEYS) - weight) <= TOLERANCE
        assert previous <= checkout, "sticky as the weight grows"
        previous = checkout
    for populations in ({"checkout": POPULATION, "api": "0ther5eed"}, {"checkout": "", "api": ""}):
        shares, both = _shares_and_overlap(sides(populations, 25))
        assert all(abs(share - 25) <= TOLERANCE for share in shares), (populations, shares)
        assert abs(both - 6.25) <= TOLERANCE, f"{populations}: {both:.2f}% get both, not about 6.25%"


def test_a_rollout_from_before_seeds_keeps_each_flags_own_split_sticky(
    publish: Callable[[Mapping[str, Any]], Published],
) -> None:
    """A rollout already running when Sluice learned populations has none: its flags keep the per-flag
    key they started with, so nobody who had a new result loses it at the next step."""
    old = {"flags": {"a": _flag(ON_OFF, "off"), "b": _flag(ON_OFF, "off")}}
    new = {"flags": {"a": _flag(ON_OFF, "on"), "b": _flag(ON_OFF, "on")}}
    key = _split_key(canary_flag_set(old, new, 25), "a")
    assert key == {"cat": ["sluice-canary/", {"var": "$flagd.flagKey"}, "/", {"var": "targetingKey"}]}
    previous = {"a": set(), "b": set()}
    for weight in (25, 50, 75):
        sides = _new_side(publish, canary_flag_set(old, new, weight), ["a", "b"])
        for flag, side in sides.items():
            assert previous[flag] <= side, f"{flag} at {weight}"
            assert abs(100 * len(side) / len(KEYS) - weight) <= TOLERANCE, (flag, weight)
        previous = sides
    assert previous["a"] != previous["b"]


@pytest.mark.parametrize("population", ["UPPER", "with/slash", "a" * 33, "sp ace"])
def test_a_population_is_a_short_lowercase_token(population: str) -> None:
    with pytest.raises(CanaryRefused, match="population"):
        canary_flag_set(OLD, NEW, 50, population=population)


def test_the_two_evaluators_put_different_users_on_the_new_side_at_the_same_share(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The bucketing caveat the Flags page shows: same document, same share, different users."""
    directory = tmp_path_factory.mktemp("both")
    document = canonical_json(canary_flag_set(OLD, NEW, 25, population=POPULATION))
    new_side: dict[str, set[str]] = {}
    for name, evaluator_class in sorted(EVALUATORS.items()):
        published = Published(evaluator_class(document, directory))
        try:
            got = published.results("default-variant", "boolean", CONTEXTS)
        finally:
            published.close()
        new_side[name] = {key for key, result in got.items() if result == "true"}
        assert abs(100 * len(new_side[name]) / len(KEYS) - 25) <= TOLERANCE, (name, len(new_side[name]))
    differing = new_side["python"] ^ new_side["js"]
    # Independent hashes: about 2 x (25% - 25% x 25%) = 37.5% of the keys land on different sides.
    assert len(differing) > len(KEYS) // 5, f"only {len(differing)} keys differ between the evaluators"


def test_the_provider_resolves_what_the_openfeature_client_resolves(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """tests/flagd.py reads the Python evaluator through the provider's resolve methods, not the
    OpenFeature client, for speed: both paths give the same value, variant, reason, error code and
    metadata, on every flag of a canary document, keyed and keyless contexts, a missing flag and a
    flag read as the wrong type."""
    directory = tmp_path_factory.mktemp("through-client")
    document = canonical_json(canary_flag_set(OLD, NEW, 50, population=POPULATION))
    evaluations = [(flag, _kind(flag), CODE_DEFAULTS[_kind(flag)]) for flag in sorted(NEW["flags"])]
    evaluations += [("no-such-flag", "string", "code default"), ("default-variant", "string", "code default")]
    contexts = {**dict(itertools.islice(CONTEXTS.items(), 300)), **KEYLESS_CONTEXTS}
    direct = PythonEvaluator(document, directory)
    through_client = PythonEvaluator(document, directory, through_client=True)
    try:
        expected = through_client.resolve_flags(evaluations, contexts, metadata=True)
        got = direct.resolve_flags(evaluations, contexts, metadata=True)
    finally:
        direct.close()
        through_client.close()
    assert got == expected
    outcomes = {(r.reason, r.error_code) for by_context in got.values() for r in by_context.values()}
    assert {("ERROR", "FLAG_NOT_FOUND"), ("ERROR", "TYPE_MISMATCH"), ("TARGETING_MATCH", None)} <= outcomes


def test_a_canary_that_would_repeat_a_computed_targeting_past_a_configmap_is_refused_before_it_is_built():
    """A review measured 160 MB of canary, and 534 MB of the worker, from a 99 KB flag."""
    from gitops.rollout.flag_canary import CanaryTooLarge

    variants = {f"v{i}": f"value {i}" for i in range(1000)}
    targeting = {"cat": [{"var": "plan"}, *(f"-{i}" for i in range(300))]}  # about 2 KB, computed
    old = {
        "flags": {
            "big": {"state": "ENABLED", "variants": variants, "defaultVariant": "v0", "targeting": targeting}
        }
    }
    new = copy.deepcopy(old)
    new["flags"]["big"]["variants"]["v1"] = "changed"
    with pytest.raises(CanaryTooLarge, match=r"flag 'big': .*1,000 variants.*setWeight 100"):
        canary_flag_set(old, new, 50)
    assert canary_flag_set(old, new, 100) == new


def doubling_evaluators(levels: int, leaf: str) -> dict[str, Any]:
    """``levels`` evaluators, each referring to the next twice: under 1 KB, 2**levels leaves inlined."""
    evaluators: dict[str, Any] = {f"e{levels}": {"in": [leaf, {"var": "email"}]}}
    for level in range(levels - 1, -1, -1):
        evaluators[f"e{level}"] = {"or": [{"$ref": f"e{level + 1}"}, {"$ref": f"e{level + 1}"}]}
    return evaluators


@pytest.mark.timeout(20)
def test_a_canary_whose_ref_evaluators_inline_past_a_configmap_is_refused_before_it_is_serialized():
    """A review measured a 36 MB canary (3.6 s, written to the intents) from an 865-byte flag set."""
    from gitops.rollout.flag_canary import MAX_CANARY_VALUES, CanaryTooLarge

    def flag_set(leaf: str) -> dict[str, Any]:
        flag = {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"if": [{"$ref": "e0"}, "on", "off"]},
        }
        return {"$evaluators": doubling_evaluators(15, leaf), "flags": {"wide": flag}}

    old, new = flag_set("@a.example"), flag_set("@b.example")
    with pytest.raises(CanaryTooLarge, match=rf"flag 'wide': .*more than {MAX_CANARY_VALUES:,} values"):
        canary_flag_set(old, new, 50)
    assert canary_flag_set(old, new, 100) == new  # published as written: flagd resolves the $refs
    small_old, small_new = flag_set("@a.example"), flag_set("@b.example")
    for document in (small_old, small_new):
        document["$evaluators"] = doubling_evaluators(4, document["$evaluators"]["e15"]["in"][0])
    assert canary_flag_set(small_old, small_new, 50)["flags"]["wide"]["defaultVariant"] is None


@pytest.mark.timeout(20)
def test_a_canary_repeating_a_long_evaluator_string_is_refused_before_it_is_serialized():
    """1,000 flags using one evaluator's 65 KB string are a few values each, and were a 131 MB canary
    (a 650 KB string: 1.3 GB, 19 s), built and serialized before its size was looked at."""
    from gitops.rollout.flag_canary import CanaryTooLarge

    def flag_set(text: str, flags: int) -> dict[str, Any]:
        flag = _flag(ON_OFF, "off", {"if": [{"$ref": "listed"}, "on", "off"]})
        listed = {"in": [{"var": "email"}, [text]]}
        return {"$evaluators": {"listed": listed}, "flags": {f"f{index}": flag for index in range(flags)}}

    too_many = r"flag 'f\d+': .*more than 262,144 values .*one more for every four characters"
    with pytest.raises(CanaryTooLarge, match=too_many):
        canary_flag_set(flag_set("a" * 65_000, 1_000), flag_set("b" * 65_000, 1_000), 10, population="p1")
    with pytest.raises(CanaryTooLarge, match=too_many):
        canary_flag_set(None, flag_set("b" * 65_000, 1_000), 10, population="p1")
    canary = canary_flag_set(flag_set("a" * 2_000, 20), flag_set("b" * 2_000, 20), 10, population="p1")
    assert 80_000 < len(flag_set_json(canary)) < 1024 * 1024


def test_evaluators_that_refer_to_one_another_resolve_as_published(
    publish: Callable[[Mapping[str, Any]], Published],
) -> None:
    """Both evaluators substitute evaluators in the published order; in sorted order "internal" would be
    substituted before "staff" brings its reference along, and the flag would fail to evaluate."""
    document = {
        "$evaluators": {"internal": IS_CORP, "staff": {"or": [{"$ref": "internal"}, PAID]}},
        "flags": {"beta": _flag(ON_OFF, "off", {"if": [{"$ref": "staff"}, "on", "off"]})},
    }
    inlined = {"flags": {"beta": _flag(ON_OFF, "off", {"if": [{"or": [IS_CORP, PAID]}, "on", "off"]})}}

    results = publish(document).results("beta", "boolean", CONTEXTS)

    assert results == publish(inlined).results("beta", "boolean", CONTEXTS)
    assert set(results.values()) == {"true", "false"}


def test_pythons_lookup_chain_does_not_take_a_computed_number_for_true_or_false(tmp_path) -> None:
    """Variants named "true" and "false", targeting that computes a number (a client sends ``optIn`` as 1
    or 0): plain flagd finds no such variant, on either side, and serves the code's default. Python's
    JsonLogic ``in`` compares with ==, where 1 == True: the canary once served "true" or "false" to
    those users, a result neither side gives."""
    paid = {"in": [{"var": "plan"}, ["pro", "enterprise"]]}
    variants = {"true": True, "false": False}
    old = {
        "flags": {
            "beta": {
                "state": "ENABLED",
                "variants": variants,
                "defaultVariant": "false",
                "targeting": {"var": "optIn"},
            }
        }
    }
    new = copy.deepcopy(old)
    new["flags"]["beta"]["targeting"] = {"if": [paid, "true", {"var": "optIn"}]}
    contexts = {f"u{i}": Context(f"u{i}", {"plan": "free", "optIn": i % 2}) for i in range(200)}
    served: dict[str, dict[str, tuple[Any, Any]]] = {}
    for name, document in (("old", old), ("canary", canary_flag_set(old, new, 10, population="5eed"))):
        (tmp_path / name).mkdir()
        evaluator = PythonEvaluator(flag_set_json(document), tmp_path / name)
        try:
            answers = evaluator.resolve("beta", "boolean", True, contexts)
            served[name] = {key: (answer.value, answer.variant) for key, answer in answers.items()}
        finally:
            evaluator.close()
    assert served["canary"] == served["old"], "free users: neither side changes what they are served"


def nested_fractional(levels: int, leaf: str) -> dict[str, Any]:
    """``levels`` fractionals, each bucket of one holding the next: a few hundred bytes."""
    rule: Any = leaf
    for _ in range(levels):
        rule = {"fractional": [[rule, 50], ["off", 50]]}
    return rule


@pytest.mark.timeout(20)
def test_nested_fractionals_make_a_canary_as_large_as_the_flag_not_twice_per_level() -> None:
    """Each nested fractional's rewrite held it twice: a 574-byte flag of 20 levels built a 258 MB
    canary in 13 s, under the source's lock, at every weighted step."""
    old = {"flags": {"deep": _flag(ON_OFF, "off", nested_fractional(20, "on"))}}
    new = {"flags": {"deep": _flag(ON_OFF, "off", nested_fractional(20, "off"))}}

    canary = canary_flag_set(old, new, 50, population=POPULATION)

    assert len(canonical_json(canary)) < 50 * len(canonical_json(new))


@pytest.mark.parametrize("weight", [0, 30, 100])
def test_a_nested_fractional_canary_serves_each_user_their_old_or_new_result(
    publish: Callable[[Mapping[str, Any]], Published], weight: int
) -> None:
    """With "or" for the null fractional yields without a key: the default still, on both evaluators."""
    old = {"flags": {"deep": _flag(ON_OFF, "off", nested_fractional(3, "on"))}}
    new = {
        "flags": {
            "deep": _flag(ON_OFF, "on", {"fractional": [["off", 30], [nested_fractional(2, "on"), 70]]})
        }
    }
    contexts = {key: _context(index, key if index % 7 else None) for index, key in enumerate(KEYS[:2000])}
    before = publish(canary_flag_set(None, old, 100)).results("deep", "boolean", contexts)
    after = publish(canary_flag_set(None, new, 100)).results("deep", "boolean", contexts)
    during = publish(canary_flag_set(old, new, weight, population=POPULATION)).results(
        "deep", "boolean", contexts
    )

    strays = [key for key, result in during.items() if result not in (before[key], after[key])]
    assert not strays
    if weight == 0:
        assert during == before
    if weight == 100:
        assert during == after


@pytest.mark.parametrize("names", [("0.0", "1.0", "2.0", "3.0"), ("1e-05", "2.0")])
def test_a_computed_targeting_over_variant_names_only_one_evaluator_prints_is_refused(names) -> None:
    """Python's evaluator serves variant "2.0" for a computed 2.0, JavaScript's "2": the canary's lookup
    served Python's users the code default at every weight between 0 and 100. Refused, with the advice."""
    variants = {name: f"plan {name}" for name in names}
    computed = {"/": [{"var": "seats"}, 1]}
    old = {"flags": {"seats": _flag(variants, names[0], computed)}}
    new = copy.deepcopy(old)
    new["flags"]["seats"]["variants"][names[1]] = "changed"

    with pytest.raises(
        CanaryRefused, match=rf"flag 'seats': .*variant '{names[0]}' is a number.*setWeight 100"
    ):
        canary_flag_set(old, new, 50, population=POPULATION)
    assert canary_flag_set(old, new, 100, population=POPULATION) == new


def test_every_flag_the_canary_splits_reaches_the_rollouts_share() -> None:
    canary = canary_flag_set(OLD, NEW, 25, population=POPULATION)
    assert canary_reach(OLD, NEW, canary) == dict.fromkeys(changed_flags(OLD, NEW), FlagReach.SPLIT)


def test_the_reach_of_a_flag_the_canary_does_not_split_is_what_its_users_get(
    publish: Callable[[Mapping[str, Any]], Published],
) -> None:
    # The Flags page showed the rollout's share for these: a change the two sides serve alike reaches
    # everyone at the canary's first publication, one held until 100 nobody before it.
    owner = {"owner": "shop"}
    old = {
        "flags": {
            "tagged": _flag(ON_OFF, "on", {"if": [IS_CORP, "off"]}),
            "mode": _flag(ON_OFF, "off", {"if": [PAID, "on"]}),
            "retired": {**_flag(ON_OFF, "on"), "state": "DISABLED"},
            "split": _flag(ON_OFF, "off", {"if": [PAID, "on"]}),
        }
    }
    new = {
        "flags": {
            "tagged": _flag(ON_OFF, "on", {"if": [IS_CORP, "off"]}, metadata=owner),
            "mode": _flag({"fast": "fast", "safe": "safe"}, "safe"),
            "split": _flag(ON_OFF, "on", {"if": [PAID, "off"]}),
        }
    }
    canary = canary_flag_set(old, new, 25, population=POPULATION)
    reach = canary_reach(old, new, canary)
    assert reach == {
        "tagged": FlagReach.AT_ONCE,
        "mode": FlagReach.AT_FULL,
        "retired": FlagReach.AT_ONCE,
        "split": FlagReach.SPLIT,
    }
    served = publish(canary).results_of([("tagged", "boolean"), ("mode", "boolean")], CONTEXTS)
    assert served["tagged"] == publish(new).results("tagged", "boolean", CONTEXTS), "everyone: the new one"
    assert served["mode"] == publish(old).results("mode", "boolean", CONTEXTS), "everyone: the old one"
    assert "retired" not in canary["flags"], "removed for everyone"


def test_a_flag_moving_between_flag_sets_reaches_nobody_until_100_on_either_side() -> None:
    banner = _flag(ON_OFF, "off", {"if": [PAID, "on"]})
    sides = {
        "old-set": (
            {"flags": {"banner": banner, "kept": _flag(ON_OFF, "on")}},
            {"flags": {"kept": _flag(ON_OFF, "off")}},
        ),
        "new-set": (None, {"flags": {"banner": banner}}),
    }
    moved = moved_flags(sides)
    reach = {
        name: canary_reach(
            old, new, canary_flag_set(old, new, 40, population=POPULATION, moved=moved.get(name, frozenset()))
        )
        for name, (old, new) in sides.items()
    }
    assert reach == {
        "old-set": {"banner": FlagReach.AT_FULL, "kept": FlagReach.SPLIT},
        "new-set": {"banner": FlagReach.AT_FULL},
    }


def test_a_computed_number_past_fifteen_digits_is_served_its_variant_at_every_weight(
    evaluator: str, publish: Callable[[Mapping[str, Any]], Published]
) -> None:
    """Variants named by long integer ids (a 16-digit or snowflake tenant id that targeting computes):
    both evaluators look the number up by its full text, but the canary matched only names of up to 15
    digits by their text, so every such user got the code default between 0% and 100% (before
    2026-12-07). JavaScript holds no 19-digit id exactly: Python alone is asked for one."""
    names = ["1234567890123456", "7"] + (["1234567890123456789"] if evaluator == "python" else [])
    old = {"flags": {"tier": _flag({name: f"old-{name}" for name in names}, "7", {"var": "tenant"})}}
    new = copy.deepcopy(old)
    new["flags"]["tier"]["variants"] = {name: f"new-{name}" for name in names}
    contexts = {
        f"t{n}-{name}": Context(f"t{n}-{name}", {"tenant": int(name)}) for n in range(20) for name in names
    }
    for weight in (10, 50, 90):
        published = publish(canary_flag_set(old, new, weight, population=POPULATION))
        for key, result in published.results("tier", "string", contexts).items():
            tenant = key.split("-", 1)[1]
            assert result in (json.dumps(f"old-{tenant}"), json.dumps(f"new-{tenant}")), (weight, key, result)
