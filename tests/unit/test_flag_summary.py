"""What the Flags page says of a flag: its targeting in words, and whether it serves one variant to everyone.

"Serves one variant" is read from the definition; the evaluator test checks the
verdicts against what both real flagd evaluators serve to 10,000 varied contexts.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gitops.desired.flag_summary import (
    CODE_DEFAULT,
    MAX_SUMMARY_CHARS,
    describe_targeting,
    effective_flags,
    flag_summary,
    served_outcomes,
    serves_one_variant,
)
from tests.flagd import EVALUATORS, KEYS, Context

ON_OFF = {"on": True, "off": False}
IS_CORP = {"ends_with": [{"var": "email"}, "@corp.example"]}
PAID = {"in": [{"var": "plan"}, ["pro", "enterprise"]]}


def flag(
    targeting: Any = None, *, default: Any = "off", state: str = "ENABLED", variants: Any = None
) -> dict:
    definition: dict[str, Any] = {"state": state, "variants": variants or ON_OFF, "defaultVariant": default}
    if targeting is not None:
        definition["targeting"] = targeting
    return definition


# name: (definition, the outcomes it can serve; None: computed)
ONE_VARIANT: dict[str, tuple[dict, frozenset | None]] = {
    "no-targeting": (flag(), frozenset({"off"})),
    "empty-targeting": (flag({}), frozenset({"off"})),
    "disabled-with-targeting": (flag(IS_CORP, state="DISABLED"), frozenset({CODE_DEFAULT})),
    "no-default-no-targeting": (flag(default=None), frozenset({CODE_DEFAULT})),
    "if-both-branches-the-same": (flag({"if": [IS_CORP, "on", "on"]}), frozenset({"on"})),
    "if-without-else-names-the-default": (flag({"if": [IS_CORP, "off"]}), frozenset({"off"})),
    "if-null-branch-is-the-default": (flag({"if": [IS_CORP, None, "off"]}), frozenset({"off"})),
    "fractional-100-0": (flag({"fractional": [["on", 100], ["off", 0]]}), frozenset({"on"})),
    "fractional-one-bucket": (flag({"fractional": [["on", 5]]}), frozenset({"on"})),
    "fractional-all-zero": (flag({"fractional": [["on", 0], ["off", 0]]}), frozenset({"off"})),
    "nested-rules-one-variant": (
        flag({"if": [PAID, {"fractional": [["on", 50], ["on", 50]]}, "on"]}),
        frozenset({"on"}),
    ),
    "computed-weight-one-bucket": (
        flag({"fractional": [["on", {"-": [100, 50]}], ["off", 0]]}),
        frozenset({"on"}),
    ),
    "boolean-result-names-a-variant": (
        flag({"if": [IS_CORP, True, True]}, variants={"true": 1, "false": 0}, default="false"),
        frozenset({"true"}),
    ),
}
TARGETED: dict[str, tuple[dict, frozenset | None]] = {
    "if-two-variants": (flag({"if": [IS_CORP, "on", "off"]}), frozenset({"on", "off"})),
    "if-without-else-other-default": (flag({"if": [IS_CORP, "on"]}), frozenset({"on", "off"})),
    "fractional-split": (flag({"fractional": [["on", 20], ["off", 80]]}), frozenset({"on", "off"})),
    "computed-weight": (
        flag({"fractional": [["on", {"-": [100, 50]}], ["off", 50]]}),
        frozenset({"on", "off"}),
    ),
    "computed-variant-name": (
        flag({"var": "plan"}, variants={"free": 0, "pro": 1, "enterprise": 2}, default="free"),
        None,
    ),
    "unknown-variant-is-the-code-default": (
        flag({"if": [IS_CORP, "on", "nope"]}),
        frozenset({"on", CODE_DEFAULT}),
    ),
}


@pytest.mark.parametrize("name", sorted(ONE_VARIANT))
def test_flags_that_serve_one_variant_to_everyone(name: str) -> None:
    definition, outcomes = ONE_VARIANT[name]
    assert served_outcomes(definition) == outcomes
    assert serves_one_variant(definition)


@pytest.mark.parametrize("name", sorted(TARGETED))
def test_flags_with_targeting_that_can_serve_more(name: str) -> None:
    definition, outcomes = TARGETED[name]
    assert served_outcomes(definition) == outcomes
    assert not serves_one_variant(definition)


def _contexts() -> dict[str, Context]:
    plans = ("free", "pro", "enterprise")
    domains = ("corp.example", "mail.example")
    return {
        key: Context(key, {"plan": plans[i % 3], "email": f"u{i}@{domains[i % 2]}"})
        for i, key in enumerate(KEYS[:2000])
    }


@pytest.mark.parametrize("evaluator", sorted(EVALUATORS))
def test_the_verdicts_match_what_both_evaluators_serve(evaluator: str, tmp_path) -> None:
    """One-variant flags serve one result to 2,000 varied contexts; targeted ones serve several."""
    cases = {**ONE_VARIANT, **TARGETED}
    document = {"flags": {name: definition for name, (definition, _) in cases.items()}}
    served = EVALUATORS[evaluator](json.dumps(document), tmp_path)
    try:
        evaluations: list[tuple[str, str, Any]] = []
        for name, (definition, _) in cases.items():
            kind = "boolean" if isinstance(next(iter(definition["variants"].values())), bool) else "number"
            evaluations.append((name, kind, False if kind == "boolean" else -1))
        resolved = served.resolve_flags(evaluations, _contexts())
    finally:
        served.close()
    for name, by_key in resolved.items():
        results = {(r.variant, json.dumps(r.value)) for r in by_key.values()}
        if name in ONE_VARIANT:
            assert len(results) == 1, (name, results)
            assert {variant for variant, _ in results} == set(ONE_VARIANT[name][1] or ()), name
        else:
            assert len(results) > 1, (name, results)


SUMMARIES = {
    "none": (None, "none"),
    "fractional": ({"fractional": [["on", 20], ["off", 80]]}, "fractional 20/80 (on/off) on targetingKey"),
    "fractional-by-email": (
        {"fractional": [{"var": "email"}, ["a", 1], ["b", 3]]},
        "fractional 25/75 (a/b) on email",
    ),
    "fractional-computed-weight": (
        {"fractional": [["on", {"-": [100, 50]}], ["off", 50]]},
        "fractional ?/50 (on/off) on targetingKey",
    ),
    "if-ends-with": (
        {"if": [IS_CORP, "internal", PAID, "premium", "standard"]},
        'if email ends_with "@corp.example" → internal; if plan in ["pro", "enterprise"] → premium; '
        "else standard",
    ),
    "if-without-else": (
        {"if": [{"==": [{"var": "plan"}, "pro"]}, "on"]},
        'if plan == "pro" → on; else default',
    ),
    "sem-ver-and-ref": (
        {
            "if": [
                {"and": [{"sem_ver": [{"var": "appVersion"}, ">=", "2.2.0"]}, {"$ref": "staff"}]},
                "on",
                "off",
            ]
        },
        'if appVersion >= "2.2.0" (semver) and evaluator staff → on; else off',
    ),
    "computed": ({"var": "plan"}, "the variant named by plan"),
    "not-or": (
        {"if": [{"!": {"or": [IS_CORP, PAID]}}, "on", "off"]},
        'if not (email ends_with "@corp.example" or plan in ["pro", "enterprise"]) → on; else off',
    ),
}


@pytest.mark.parametrize("name", sorted(SUMMARIES))
def test_targeting_in_words(name: str) -> None:
    targeting, words = SUMMARIES[name]
    assert describe_targeting(targeting) == words


def test_every_text_is_bounded_and_the_hash_follows_evaluators() -> None:
    huge = {"if": [{"in": [{"var": "email"}, [f"user-{i}@example.com" for i in range(500)]]}, "on", "off"]}
    variants = {f"v{i}": "x" * 1000 for i in range(100)}
    summary = flag_summary(flag(huge, variants=variants, default="v1"), flag(huge, variants=variants))
    assert len(summary.targeting) == MAX_SUMMARY_CHARS
    assert summary.targeting.endswith("…")
    assert len(summary.variants) <= 300
    assert summary.variant_count == 100

    def with_staff(rule: dict) -> dict:
        written = {
            "flags": {"f": flag({"if": [{"$ref": "staff"}, "on", "off"]})},
            "$evaluators": {"staff": rule},
        }
        return effective_flags(written)["f"]

    first, second = with_staff(IS_CORP), with_staff(PAID)
    assert flag_summary(first, first).definition_hash != flag_summary(second, second).definition_hash
    assert (
        flag_summary(first, first).definition_hash == flag_summary(first, with_staff(IS_CORP)).definition_hash
    )
    assert flag_summary(flag(default=True), flag()).default_variant == "true"
    assert flag_summary(flag(default=""), flag()).default_variant == ""
