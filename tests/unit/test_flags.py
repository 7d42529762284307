"""Flag sets in flagd's format: loading, validation with file/line/field, publishing."""

from __future__ import annotations

import copy
import json
from textwrap import dedent

import pytest

from gitops.desired.documents import load_json
from gitops.desired.errors import ValidationError
from gitops.desired.flags import FlagSet, canonical_json, load_flag_set, published_flag_set, validate_flag_set

CHECKOUT_JSON = """\
{
  "$schema": "https://flagd.dev/schema/v0/flags.json",
  "metadata": {"flagSetId": "checkout", "version": "3", "team": "payments"},
  "$evaluators": {
    "internal-users": {"ends_with": [{"var": "email"}, "@example.com"]}
  },
  "flags": {
    "new-checkout": {
      "state": "ENABLED",
      "variants": {"on": true, "off": false},
      "defaultVariant": "off",
      "targeting": {"if": [{"$ref": "internal-users"}, "on", "off"]},
      "metadata": {"owner": "payments", "ticket": 4321, "temporary": true}
    },
    "header-color": {
      "state": "ENABLED",
      "variants": {"red": "#c00", "blue": "#00c", "green": "#0c0"},
      "defaultVariant": "red",
      "targeting": {
        "fractional": [
          {"cat": [{"var": "$flagd.flagKey"}, {"var": "email"}]},
          ["red", 50], ["blue", 25], ["green", 25]
        ]
      }
    },
    "checkout-limits": {
      "state": "DISABLED",
      "variants": {
        "standard": {"maxItems": 50, "currencies": ["EUR", "USD"]},
        "holiday": {"maxItems": 200, "currencies": ["EUR", "USD", "GBP"]}
      },
      "defaultVariant": "standard"
    }
  }
}
"""

# The same flag set as YAML, the way people write it: "on"/"off" quoted, since
# YAML 1.1 reads them as booleans.
CHECKOUT_YAML = """\
$schema: https://flagd.dev/schema/v0/flags.json
metadata: {flagSetId: checkout, version: "3", team: payments}
$evaluators:
  internal-users:
    ends_with: [{var: email}, "@example.com"]
flags:
  new-checkout:
    state: ENABLED
    variants: {"on": true, "off": false}
    defaultVariant: "off"
    targeting:
      if: [{$ref: internal-users}, "on", "off"]
    metadata: {owner: payments, ticket: 4321, temporary: true}
  header-color:
    state: ENABLED
    variants: {red: "#c00", blue: "#00c", green: "#0c0"}
    defaultVariant: red
    targeting:
      fractional:
        - cat: [{var: $flagd.flagKey}, {var: email}]
        - [red, 50]
        - [blue, 25]
        - [green, 25]
  checkout-limits:
    state: DISABLED
    variants:
      standard: {maxItems: 50, currencies: [EUR, USD]}
      holiday: {maxItems: 200, currencies: [EUR, USD, GBP]}
    defaultVariant: standard
"""

# Semantic versions, a time-based progressive rollout (computed weights) and a
# computed result.
SEARCH_YAML = """\
metadata:
  flagSetId: search
$evaluators:
  beta-testers:
    in: [{var: email}, [alice@example.com, bob@example.com]]
  new-app:
    sem_ver: [{var: appVersion}, ">=", "4.2.0-rc.1"]
flags:
  semantic-search:
    state: ENABLED
    variants: {"on": true, "off": false}
    defaultVariant: "off"
    targeting:
      if:
        - $ref: beta-testers
        - "on"
        - fractional:
            - ["on", {"-": [{var: $flagd.timestamp}, 1767225600]}]
            - ["off", {"-": [1769904000, {var: $flagd.timestamp}]}]
  results-per-page:
    state: ENABLED
    variants: {compact: 10, comfortable: 25}
    defaultVariant: null
    targeting:
      if: [{$ref: new-app}, compact, {var: preferredDensity}]
"""


def load(file: str, text: str) -> tuple[FlagSet | None, list[ValidationError]]:
    return load_flag_set(file, dedent(text).encode())


def loaded(file: str, text: str) -> FlagSet:
    flag_set, errors = load(file, text)
    assert errors == []
    assert flag_set is not None
    return flag_set


# --- good flag sets -------------------------------------------------------------


def test_a_realistic_json_flag_set_loads_with_its_parts() -> None:
    flag_set = loaded("flags/checkout.json", CHECKOUT_JSON)

    assert flag_set.file == "flags/checkout.json"
    assert list(flag_set.flags) == ["new-checkout", "header-color", "checkout-limits"]
    assert flag_set.flags["new-checkout"]["variants"] == {"on": True, "off": False}
    assert flag_set.flags["checkout-limits"]["variants"]["holiday"]["maxItems"] == 200
    assert flag_set.evaluators == {"internal-users": {"ends_with": [{"var": "email"}, "@example.com"]}}
    assert flag_set.metadata == {"flagSetId": "checkout", "version": "3", "team": "payments"}
    assert flag_set.document == json.loads(CHECKOUT_JSON)


def test_the_same_flag_set_in_yaml_loads_to_the_same_document() -> None:
    from_yaml = loaded("flags/checkout.yaml", CHECKOUT_YAML)
    from_json = loaded("flags/checkout.json", CHECKOUT_JSON)

    assert from_yaml.document == from_json.document
    assert canonical_json(from_yaml.document) == canonical_json(from_json.document)


def test_rollouts_with_computed_weights_and_semantic_versions_load() -> None:
    flag_set = loaded("flags/search.yml", SEARCH_YAML)

    assert set(flag_set.evaluators) == {"beta-testers", "new-app"}
    assert flag_set.flags["results-per-page"]["defaultVariant"] is None


def test_unquoted_on_and_off_are_variant_names_in_yaml_keys() -> None:
    flag_set = loaded(
        "flags/checkout.yaml",
        """\
        flags:
          new-checkout:
            state: ENABLED
            variants:
              on: true
              off: false
            defaultVariant: "off"
        """,
    )

    assert flag_set.flags["new-checkout"]["variants"] == {"on": True, "off": False}


def test_optional_parts_default_to_empty() -> None:
    flag_set = loaded(
        "flags/minimal.json",
        '{"flags": {"maintenance-mode": {"state": "DISABLED", "variants": {"on": true, "off": false}}}}',
    )

    assert flag_set.evaluators == {}
    assert flag_set.metadata == {}


def test_validate_flag_set_takes_a_loaded_document() -> None:
    documents, errors = load_json("flags/checkout.json", CHECKOUT_JSON)
    assert errors == []

    assert validate_flag_set(documents[0]) == []


def with_targeting(targeting: str) -> str:
    return dedent(
        """\
        {
          "$evaluators": {
            "staff": {"in": [{"var": "role"}, ["admin", "support"]]},
            "internal-users": {"ends_with": [{"var": "email"}, "@example.com"]}
          },
          "flags": {
            "new-checkout": {
              "state": "ENABLED",
              "variants": {"on": true, "off": false},
              "defaultVariant": "off",
              "targeting": %s
            }
          }
        }
        """
    ).replace("%s", targeting)


@pytest.mark.parametrize(
    "targeting",
    [
        pytest.param("{}", id="empty-targeting"),
        pytest.param('{"if": [{"$ref": "staff"}, "on", null]}', id="null-result-serves-the-default"),
        pytest.param(
            '{"if": [{"==": [{"var": "plan"}, "pro"]}, "on", "off"]}', id="condition-literals-are-not-results"
        ),
        pytest.param('{"if": [false, "on", "off"]}', id="literal-condition-is-not-a-result"),
        pytest.param('{"if": [{"var": "beta"}]}', id="lone-condition"),
        pytest.param('{"if": [{"var": "beta"}, "on"]}', id="then-without-else"),
        pytest.param('{"if": [{"var": "beta"}, {"var": "variantName"}, "off"]}', id="computed-result"),
        pytest.param('{"cat": ["o", {"var": "suffix"}]}', id="computed-root-result"),
        pytest.param('{"in": [{"var": "country"}, ["DE", "AT", "CH"]]}', id="literal-list"),
        pytest.param(
            '{"some": [{"var": "orders"}, {">": [{"var": "total"}, 100]}]}',
            id="var-inside-array-operation",
        ),
        pytest.param(
            '{"in": [{"var": "region"}, [{"name": "eu-west", "if": "ignored"}]]}',
            id="objects-in-literal-lists-are-data",
        ),
        pytest.param('{"if": [{"var": ["tier", "free"]}, "on", "off"]}', id="var-with-default"),
        pytest.param('{"if": [{"var": "$flagd.timestamp"}, "on", "off"]}', id="flagd-timestamp"),
        pytest.param('{"fractional": [["on", 10], ["off", 90]]}', id="fractional-shorthand"),
        pytest.param('{"fractional": [{"var": "userId"}, ["on"], ["off", 25]]}', id="default-and-weight"),
        pytest.param(
            '{"if": [{"==": [{"fractional": [["a", 50], ["b", 50]]}, "a"]}, "on", "off"]}',
            id="fractional-as-a-condition-buckets-are-not-variants",
        ),
        pytest.param(
            '{"fractional": [["on", {"-": [{"var": "$flagd.timestamp"}, 1767225600]}], ["off", 0]]}',
            id="computed-weight",
        ),
        pytest.param('{"!": true}', id="unary-without-list"),
        pytest.param('{"!!": [{"missing_some": [1, ["email", "phone"]]}]}', id="unary-with-list"),
        pytest.param(
            '{"if": [{"sem_ver": [{"var": "appVersion"}, "^", "2.0.0-beta.1+exp.5114f85"]}, "on", "off"]}',
            id="semantic-version-with-prerelease",
        ),
        pytest.param(
            '{"if": [{"starts_with": [{"cat": [{"var": "a"}, "b"]}, "ab"]}, "on", "off"]}',
            id="rule-in-string-op",
        ),
        pytest.param('{"if": [{"<": [1, {"var": "age"}, 65]}, "on", "off"]}', id="between"),
    ],
)
def test_targeting_that_flagd_accepts_is_accepted(targeting: str) -> None:
    _, errors = load("flags/checkout.json", with_targeting(targeting))

    assert errors == []


def test_keys_outside_operator_positions_are_not_taken_for_operators() -> None:
    # Variant values, metadata and evaluator names may use any keys, operator-like or not.
    loaded(
        "flags/layout.json",
        """\
        {
          "metadata": {"if": "x", "fractionl": 1},
          "$evaluators": {"fractionl": {"var": "x"}},
          "flags": {
            "layout": {
              "state": "ENABLED",
              "variants": {"grid": {"if": [1, 2], "fractionl": {"var": "x"}}, "list": {"cat": "x"}},
              "targeting": {"if": [{"$ref": "fractionl"}, "grid", "list"]},
              "metadata": {"var": "x"}
            }
          }
        }
        """,
    )


# --- errors: one per case, with its exact field and line ------------------------


def case(
    name: str, text: str, field: str, line: int | None, message: str, file: str = "flags/checkout.json"
) -> object:
    return pytest.param(file, text, field, line, message, id=name)


REQUIRED_CHECKS = [
    case(
        "default-variant-not-a-variant",
        """\
        {"flags": {
          "new-checkout": {
            "state": "ENABLED",
            "variants": {"on": true, "off": false},
            "defaultVariant": "blue"
          }
        }}
        """,
        "flags.new-checkout.defaultVariant",
        5,
        '"blue" is not one of the variants (on, off)',
    ),
    case(
        "fractional-bucket-not-a-variant",
        """\
        {"flags": {
          "header-color": {
            "state": "ENABLED",
            "variants": {"red": "#c00", "blue": "#00c"},
            "targeting": {"fractional": [
              {"var": "email"},
              ["red", 50],
              ["bleu", 50]
            ]}
          }
        }}
        """,
        "flags.header-color.targeting.fractional[2][0]",
        8,
        '"bleu" is not one of the variants (red, blue)',
    ),
    case(
        "nested-fractional-bucket-not-a-variant",
        """\
        {"flags": {
          "header-color": {
            "state": "ENABLED",
            "variants": {"red": "#c00", "blue": "#00c"},
            "targeting": {"if": [{"var": "beta"}, {"fractional": [["red", 1], ["green", 1]]}, "red"]}
          }
        }}
        """,
        "flags.header-color.targeting.if[1].fractional[1][0]",
        5,
        '"green" is not one of the variants (red, blue)',
    ),
    case(
        "mixed-variant-types",
        """\
        {"flags": {
          "max-items": {
            "state": "ENABLED",
            "variants": {
              "small": 10,
              "large": "100"
            }
          }
        }}
        """,
        "flags.max-items.variants.large",
        6,
        'is a string but variant "small" is a number',
    ),
    case(
        "boolean-and-object-variants",
        """\
        {"flags": {
          "checkout-limits": {
            "state": "ENABLED",
            "variants": {
              "off": false,
              "standard": {"maxItems": 50}
            }
          }
        }}
        """,
        "flags.checkout-limits.variants.standard",
        6,
        'is an object but variant "off" is a boolean',
    ),
    case(
        "array-variant",
        """\
        {"flags": {
          "currencies": {
            "state": "ENABLED",
            "variants": {"eu": ["EUR", "USD"]}
          }
        }}
        """,
        "flags.currencies.variants.eu",
        4,
        "got an array (wrap the array in an object)",
    ),
    case(
        "decimal-weight",
        """\
        {"flags": {
          "new-checkout": {
            "state": "ENABLED",
            "variants": {"on": true, "off": false},
            "targeting": {"fractional": [
              ["on", 12.5],
              ["off", 87]
            ]}
          }
        }}
        """,
        "flags.new-checkout.targeting.fractional[0][1]",
        6,
        "a weight is a whole number (0 or more) or a JsonLogic rule computing one, got 12.5",
    ),
    case(
        "whole-number-written-as-a-decimal",
        """\
        {"flags": {
          "new-checkout": {
            "state": "ENABLED",
            "variants": {"on": true, "off": false},
            "targeting": {"fractional": [
              ["on", 50.0],
              ["off", 50]
            ]}
          }
        }}
        """,
        "flags.new-checkout.targeting.fractional[0][1]",
        6,
        "write the weight 50.0 as 50: flagd's Python evaluator takes only integers",
    ),
    case(
        "quoted-weight",
        """\
        {"flags": {
          "new-checkout": {
            "state": "ENABLED",
            "variants": {"on": true, "off": false},
            "targeting": {"fractional": [
              ["on", 10],
              ["off", "90"]
            ]}
          }
        }}
        """,
        "flags.new-checkout.targeting.fractional[1][1]",
        7,
        'got the string "90" (remove the quotes)',
    ),
    case(
        "negative-weight",
        """\
        {"flags": {
          "new-checkout": {
            "state": "ENABLED",
            "variants": {"on": true, "off": false},
            "targeting": {"fractional": [
              ["on", -10],
              ["off", 110]
            ]}
          }
        }}
        """,
        "flags.new-checkout.targeting.fractional[0][1]",
        6,
        "the weight -10 is negative",
    ),
    case(
        "boolean-weight",
        """\
        {"flags": {
          "new-checkout": {
            "state": "ENABLED",
            "variants": {"on": true, "off": false},
            "targeting": {"fractional": [["on", true], ["off", 1]]}
          }
        }}
        """,
        "flags.new-checkout.targeting.fractional[0][1]",
        5,
        "got true",
    ),
    case(
        "duplicate-flag-key-json",
        """\
        {"flags": {
          "new-checkout": {"state": "ENABLED", "variants": {"on": true, "off": false}},
          "header-color": {"state": "ENABLED", "variants": {"red": "#c00"}},
          "new-checkout": {"state": "DISABLED", "variants": {"on": true, "off": false}}
        }}
        """,
        "flags.new-checkout",
        4,
        "duplicate key 'new-checkout' (first defined on line 2)",
    ),
    case(
        "duplicate-flag-key-yaml",
        """\
        flags:
          new-checkout:
            state: ENABLED
            variants: {"on": true, "off": false}
          new-checkout:
            state: DISABLED
            variants: {"on": true, "off": false}
        """,
        "flags.new-checkout",
        5,
        "duplicate key 'new-checkout' (first defined on line 2)",
        file="flags/checkout.yaml",
    ),
    case(
        "ref-to-missing-evaluator",
        """\
        {
          "$evaluators": {"internal-users": {"ends_with": [{"var": "email"}, "@example.com"]}},
          "flags": {
            "new-checkout": {
              "state": "ENABLED",
              "variants": {"on": true, "off": false},
              "targeting": {"if": [{"$ref": "internal-user"}, "on", "off"]}
            }
          }
        }
        """,
        'flags.new-checkout.targeting.if[0]["$ref"]',
        7,
        'no evaluator "internal-user" in $evaluators (did you mean "internal-users"?)',
    ),
    case(
        "ref-without-evaluators",
        """\
        {"flags": {
          "new-checkout": {
            "state": "ENABLED",
            "variants": {"on": true, "off": false},
            "targeting": {"if": [{"$ref": "internal-users"}, "on", "off"]}
          }
        }}
        """,
        'flags.new-checkout.targeting.if[0]["$ref"]',
        5,
        'no evaluator "internal-users" in $evaluators ($evaluators defines none)',
    ),
    case(
        "ref-between-evaluators",
        """\
        {
          "$evaluators": {
            "staff": {"or": [{"$ref": "contractors"}, {"var": "staff"}]},
            "contractors": {"ends_with": [{"var": "email"}, "@example.com"]}
          },
          "flags": {}
        }
        """,
        '["$evaluators"].staff.or[0]["$ref"]',
        3,
        'refers to "contractors" from inside $evaluators: flagd\'s daemon does not resolve references inside '
        "$evaluators, so the flags using this evaluator fail on every evaluation; write the rule of "
        '"contractors" in its place, or refer to both evaluators from the flags\' targeting',
    ),
    case(
        "operator-typo",
        """\
        {"flags": {
          "header-color": {
            "state": "ENABLED",
            "variants": {"red": "#c00", "blue": "#00c"},
            "targeting": {
              "fractionl": [["red", 50], ["blue", 50]]
            }
          }
        }}
        """,
        "flags.header-color.targeting.fractionl",
        6,
        'unknown JsonLogic operator "fractionl" (did you mean "fractional"?)',
    ),
    case(
        "nested-operator-typo",
        """\
        {"flags": {
          "new-checkout": {
            "state": "ENABLED",
            "variants": {"on": true, "off": false},
            "targeting": {"if": [
              {"and": [{"var": "beta"}, {"startsWith": [{"var": "email"}, "qa-"]}]},
              "on",
              "off"
            ]}
          }
        }}
        """,
        "flags.new-checkout.targeting.if[0].and[1].startsWith",
        6,
        'unknown JsonLogic operator "startsWith" (did you mean "starts_with"?)',
    ),
    case(
        "operator-typo-in-evaluator",
        """\
        {
          "$evaluators": {
            "internal-users": {"end_with": [{"var": "email"}, "@example.com"]}
          },
          "flags": {}
        }
        """,
        '["$evaluators"].internal-users.end_with',
        3,
        'unknown JsonLogic operator "end_with" (did you mean "ends_with"?)',
    ),
    case(
        "then-branch-not-a-variant",
        """\
        {"flags": {
          "new-checkout": {
            "state": "ENABLED",
            "variants": {"on": true, "off": false},
            "targeting": {"if": [
              {"var": "beta"},
              "enabled",
              "off"
            ]}
          }
        }}
        """,
        "flags.new-checkout.targeting.if[1]",
        7,
        '"enabled" is not one of the variants (on, off)',
    ),
    case(
        "else-if-chain-result-not-a-variant",
        """\
        {"flags": {
          "header-color": {
            "state": "ENABLED",
            "variants": {"red": "#c00", "blue": "#00c"},
            "targeting": {"if": [
              {"var": "vip"}, "red",
              {"var": "beta"}, "blue",
              "gray"
            ]}
          }
        }}
        """,
        "flags.header-color.targeting.if[4]",
        8,
        '"gray" is not one of the variants (red, blue)',
    ),
    case(
        "nested-else-not-a-variant",
        """\
        {"flags": {
          "header-color": {
            "state": "ENABLED",
            "variants": {"red": "#c00", "blue": "#00c"},
            "targeting": {"if": [{"var": "vip"}, "red", {"if": [{"var": "beta"}, "blue", "Red"]}]}
          }
        }}
        """,
        "flags.header-color.targeting.if[2].if[2]",
        5,
        '"Red" is not one of the variants (red, blue)',
    ),
    case(
        "boolean-result-is-looked-up-as-true",
        """\
        {"flags": {
          "new-checkout": {
            "state": "ENABLED",
            "variants": {"on": true, "off": false},
            "targeting": {"if": [{"var": "beta"}, true, "off"]}
          }
        }}
        """,
        "flags.new-checkout.targeting.if[1]",
        5,
        'true selects the variant "true", which is not one of the variants (on, off)',
    ),
]

FORMAT_CHECKS = [
    case(
        "not-an-object",
        """\
        ["new-checkout", "header-color"]
        """,
        "",
        1,
        'a flag set is an object with "flags", got an array',
    ),
    case(
        "flags-missing",
        """\
        {
          "metadata": {"flagSetId": "checkout"}
        }
        """,
        "flags",
        1,
        '"flags" is required',
    ),
    case(
        "unknown-top-level-key",
        """\
        {
          "flags": {},
          "evaluators": {}
        }
        """,
        "evaluators",
        3,
        'unknown field "evaluators" (did you mean "$evaluators"?); '
        "a flag set has $schema, flags, $evaluators and metadata",
    ),
    case(
        "unknown-top-level-key-far-off",
        """\
        {
          "flags": {},
          "owner": "payments"
        }
        """,
        "owner",
        3,
        'unknown field "owner"; a flag set has',
    ),
    case(
        "schema-not-a-string",
        """\
        {
          "$schema": 7,
          "flags": {}
        }
        """,
        '["$schema"]',
        2,
        "must be the URL of the schema, got 7",
    ),
    case(
        "flags-as-a-list",
        """\
        {
          "flags": [
            {"key": "new-checkout", "state": "ENABLED", "variants": {"on": true}}
          ]
        }
        """,
        "flags",
        2,
        'must be an object of flag definitions by flag key (not a list of flags with "key")',
    ),
    case(
        "flag-not-an-object",
        """\
        {"flags": {
          "new-checkout": true
        }}
        """,
        "flags.new-checkout",
        2,
        "a flag is an object with state and variants, got true",
    ),
    case(
        "empty-flag-key",
        """\
        {"flags": {
          "": {"state": "ENABLED", "variants": {"on": true}}
        }}
        """,
        'flags[""]',
        2,
        'a flag key must be non-empty and on one line, got ""',
    ),
    case(
        "state-missing",
        """\
        {"flags": {
          "new-checkout": {
            "variants": {"on": true, "off": false}
          }
        }}
        """,
        "flags.new-checkout.state",
        2,
        '"state" is required: ENABLED or DISABLED',
    ),
    case(
        "state-lowercase",
        """\
        {"flags": {
          "new-checkout": {
            "state": "enabled",
            "variants": {"on": true, "off": false}
          }
        }}
        """,
        "flags.new-checkout.state",
        3,
        'must be ENABLED or DISABLED, got the string "enabled" (did you mean "ENABLED"?)',
    ),
    case(
        "variants-missing",
        """\
        {"flags": {
          "new-checkout": {
            "state": "ENABLED",
            "defaultVariant": "on"
          }
        }}
        """,
        "flags.new-checkout.variants",
        2,
        '"variants" is required',
    ),
    case(
        "variants-empty",
        """\
        {"flags": {
          "new-checkout": {
            "state": "ENABLED",
            "variants": {}
          }
        }}
        """,
        "flags.new-checkout.variants",
        4,
        "must define at least one variant",
    ),
    case(
        "null-variant",
        """\
        {"flags": {
          "new-checkout": {
            "state": "ENABLED",
            "variants": {
              "on": true,
              "off": null
            }
          }
        }}
        """,
        "flags.new-checkout.variants.off",
        6,
        "a variant is a boolean, string, number or object, got null",
    ),
    case(
        "default-variant-not-a-string",
        """\
        {"flags": {
          "max-items": {
            "state": "ENABLED",
            "variants": {"10": 10, "50": 50},
            "defaultVariant": 10
          }
        }}
        """,
        "flags.max-items.defaultVariant",
        5,
        "must be a variant name or null, got 10",
    ),
    case(
        "unknown-flag-field",
        """\
        {"flags": {
          "new-checkout": {
            "state": "ENABLED",
            "variants": {"on": true, "off": false},
            "defaultvariant": "off"
          }
        }}
        """,
        "flags.new-checkout.defaultvariant",
        5,
        'unknown field "defaultvariant" (did you mean "defaultVariant"?); '
        "a flag has state, variants, defaultVariant, targeting and metadata",
    ),
    case(
        "targeting-not-an-object",
        """\
        {"flags": {
          "new-checkout": {
            "state": "ENABLED",
            "variants": {"on": true, "off": false},
            "targeting": "on"
          }
        }}
        """,
        "flags.new-checkout.targeting",
        5,
        'must be a JsonLogic rule (an object), got the string "on"',
    ),
    case(
        "flag-metadata-object-value",
        """\
        {"flags": {
          "new-checkout": {
            "state": "ENABLED",
            "variants": {"on": true, "off": false},
            "metadata": {
              "owner": {"team": "payments"}
            }
          }
        }}
        """,
        "flags.new-checkout.metadata.owner",
        6,
        "metadata values are strings, numbers or booleans, got an object",
    ),
    case(
        "flag-set-metadata-null-value",
        """\
        {
          "metadata": {
            "owner": null
          },
          "flags": {}
        }
        """,
        "metadata.owner",
        3,
        "metadata values are strings, numbers or booleans, got null",
    ),
    case(
        "flag-set-metadata-array-value",
        """\
        {
          "metadata": {
            "flagSetId": "checkout",
            "owners": ["ana", "bo"]
          },
          "flags": {}
        }
        """,
        "metadata.owners",
        4,
        "metadata values are strings, numbers or booleans, got an array",
    ),
    case(
        "flag-set-metadata-not-an-object",
        """\
        {
          "metadata": "checkout",
          "flags": {}
        }
        """,
        "metadata",
        2,
        "must be an object of string, number or boolean values, got the string",
    ),
    case(
        "flag-set-version-not-a-string",
        """\
        {
          "metadata": {
            "version": 3
          },
          "flags": {}
        }
        """,
        "metadata.version",
        3,
        "must be a string, got 3: quote it",
    ),
    case(
        "metadata-that-sluice-stamps",
        """\
        {
          "metadata": {
            "sluiceCommit": "3f2a9c1"
          },
          "flags": {}
        }
        """,
        "metadata.sluiceCommit",
        3,
        "is set by Sluice when it publishes the flag set: remove it",
    ),
    case(
        "metadata-that-claims-a-canary",
        """\
        {
          "metadata": {
            "sluiceCanaryWeight": 5
          },
          "flags": {}
        }
        """,
        "metadata.sluiceCanaryWeight",
        3,
        "is set by Sluice when it publishes the flag set: remove it",
    ),
    case(
        "evaluators-not-an-object",
        """\
        {
          "$evaluators": [{"var": "email"}],
          "flags": {}
        }
        """,
        '["$evaluators"]',
        2,
        "must be an object of JsonLogic rules by name, got an array",
    ),
    case(
        "not-a-number-in-json",
        """\
        {"flags": {
          "sample-rate": {
            "state": "ENABLED",
            "variants": {"some": NaN, "all": 1.0}
          }
        }}
        """,
        "flags.sample-rate.variants.some",
        4,  # YAML reads NaN as text, but the shape is the same, so its lines still hold
        "nan is not a number JSON can hold",
    ),
]


def targeting_case(name: str, targeting: str, field: str, message: str) -> object:
    """A case whose problem is in the targeting of flag "new-checkout", on line 6."""
    text = dedent(
        """\
        {"$evaluators": {"beta-testers": {"in": [{"var": "email"}, ["ana@example.com"]]}},
         "flags": {
          "new-checkout": {
            "state": "ENABLED",
            "variants": {"on": true, "off": false},
            "targeting": %s
          }
        }}
        """
    ).replace("%s", targeting)
    return case(name, text, f"flags.new-checkout.targeting{field}", 6, message)


TARGETING_CHECKS = [
    targeting_case(
        "unknown-flagd-property",
        '{"if": [{">": [{"var": "$flagd.now"}, 1767225600]}, "on", "off"]}',
        '.if[0][">"][0].var',
        'flagd provides no "$flagd.now"; it provides $flagd.timestamp and $flagd.flagKey',
    ),
    targeting_case(
        "semantic-version-with-four-parts",
        '{"if": [{"sem_ver": [{"var": "appVersion"}, ">=", "4.2.0.1"]}, "on", "off"]}',
        ".if[0].sem_ver[2]",
        '"4.2.0.1" is not a semantic version such as "1.2.3"',
    ),
    targeting_case(
        "semantic-version-comparator",
        '{"if": [{"sem_ver": [{"var": "appVersion"}, "=>", "4.2.0"]}, "on", "off"]}',
        ".if[0].sem_ver[1]",
        'the string "=>" is not a comparator; use =, !=, >, <, >=, <=, ~ and ^',
    ),
    targeting_case(
        "string-comparison-with-a-number",
        '{"if": [{"starts_with": [{"var": "zip"}, 10]}, "on", "off"]}',
        ".if[0].starts_with[1]",
        "must be a string or a JsonLogic rule, got 10",
    ),
    targeting_case(
        "too-many-arguments",
        '{"if": [{"==": [{"var": "plan"}, "pro", "team"]}, "on", "off"]}',
        '.if[0]["=="]',
        '"==" takes exactly 2 arguments, got 3',
    ),
    targeting_case(
        "arguments-not-a-list",
        '{"if": [{"in": [{"cat": {"var": "email"}}, ["ana@example.com"]]}, "on", "off"]}',
        ".if[0].in[0].cat",
        '"cat" takes a list of arguments',
    ),
    targeting_case(
        "two-operators-in-one-rule",
        '{"if": [{"==": [{"var": "a"}, 1], "!=": [{"var": "b"}, 2]}, "on", "off"]}',
        ".if[0]",
        'a JsonLogic rule has exactly one operator, this one has "==" and "!="',
    ),
    targeting_case(
        "empty-object-as-an-argument",
        '{"if": [{}, "on", "off"]}',
        ".if[0]",
        "an empty object is not a JsonLogic rule",
    ),
    targeting_case(
        "ref-as-the-whole-targeting",
        '{"$ref": "beta-testers"}',
        '["$ref"]',
        '"$ref" is not allowed here; flagd\'s schema (targeting.json) takes an evaluator only as an argument',
    ),
    targeting_case(
        "ref-with-other-keys",
        '{"if": [{"$ref": "beta-testers", "var": "beta"}, "on", "off"]}',
        ".if[0]",
        'a "$ref" stands alone in its object; remove "var"',
    ),
    targeting_case(
        "ref-that-is-not-a-name",
        '{"if": [{"$ref": ["beta-testers"]}, "on", "off"]}',
        '.if[0]["$ref"]',
        "must name an evaluator in $evaluators, got an array",
    ),
    targeting_case(
        "fractional-bucketing-value-not-a-rule",
        '{"fractional": ["email", ["on", 50], ["off", 50]]}',
        ".fractional[0]",
        'must be a bucket ["variant", weight] or a rule computing the bucketing value',
    ),
    targeting_case(
        "fractional-without-buckets",
        '{"fractional": [{"var": "email"}]}',
        ".fractional",
        '"fractional" needs at least one bucket',
    ),
    targeting_case(
        "bucket-with-three-items",
        '{"fractional": [["on", 50, "x"], ["off", 50]]}',
        ".fractional[0]",
        'a bucket is ["variant", weight] (the weight defaults to 1), got an array',
    ),
    targeting_case(
        "weights-over-flagds-limit",
        '{"fractional": [["on", 2000000000], ["off", 2000000000]]}',
        ".fractional",
        "the weights add up to 4000000000, more than flagd's limit of 2147483647",
    ),
    targeting_case(
        "unknown-operator-in-a-computed-weight",
        '{"fractional": [["on", {"minus": [{"var": "$flagd.timestamp"}, 1767225600]}], ["off", 0]]}',
        ".fractional[0][1].minus",
        'unknown JsonLogic operator "minus"',
    ),
]

YAML_CHECKS = [
    case(
        "unquoted-on-as-default-variant",
        """\
        flags:
          new-checkout:
            state: ENABLED
            variants: {"on": true, "off": false}
            defaultVariant: off
        """,
        "flags.new-checkout.defaultVariant",
        5,
        "must be a variant name or null, got false (YAML reads unquoted on/off/yes/no/true/false as booleans",
        file="flags/checkout.yaml",
    ),
    case(
        "unquoted-on-as-a-result",
        """\
        flags:
          new-checkout:
            state: ENABLED
            variants: {"on": true, "off": false}
            targeting:
              if: [{var: beta}, "on", off]
        """,
        "flags.new-checkout.targeting.if[2]",
        6,
        'false selects the variant "false", which is not one of the variants (on, off) (YAML reads',
        file="flags/checkout.yaml",
    ),
    case(
        "date-in-metadata",
        """\
        metadata:
          flagSetId: checkout
          reviewed: 2025-03-01
        flags: {}
        """,
        "metadata.reviewed",
        3,
        "YAML read 2025-03-01 as a date, which JSON cannot hold: quote it",
        file="flags/checkout.yml",
    ),
]


@pytest.mark.parametrize(
    ("file", "text", "field", "line", "message"),
    REQUIRED_CHECKS + FORMAT_CHECKS + TARGETING_CHECKS + YAML_CHECKS,
)
def test_each_problem_is_reported_once_with_its_file_line_and_field(
    file: str, text: str, field: str, line: int | None, message: str
) -> None:
    flag_set, errors = load(file, text)

    assert flag_set is None
    assert [(error.file, error.line, error.field) for error in errors] == [(file, line, field)], errors
    assert message in errors[0].message


def test_all_problems_of_a_file_are_reported_in_file_order() -> None:
    _, errors = load(
        "flags/checkout.json",
        """\
        {"flags": {
          "new-checkout": {
            "targeting": {"if": [{"var": "beta"}, "onn", "off"]},
            "state": "ON",
            "variants": {"on": true, "off": false},
            "defaultVariant": "of"
          }
        },
        "metadata": {"version": 3}}
        """,
    )

    assert [(error.line, error.field) for error in errors] == [
        (3, "flags.new-checkout.targeting.if[1]"),
        (4, "flags.new-checkout.state"),
        (6, "flags.new-checkout.defaultVariant"),
        (9, "metadata.version"),
    ]


def test_absurdly_deep_nesting_is_an_error_not_a_crash() -> None:
    depth = 450  # deeper than the validator's recursion would allow, refused at the nesting limit first
    targeting = '{"!": [' * depth + "true" + "]}" * depth

    flag_set, errors = load("flags/deep.json", with_targeting(targeting))

    assert flag_set is None
    (error,) = errors
    assert (error.file, error.field) == ("flags/deep.json", "")
    assert error.line is not None
    assert error.message == "lists and mappings are nested more than 64 deep (setting SLUICE_MAX_DEPTH)"


def test_a_duplicate_key_fails_the_file_even_when_both_definitions_are_valid() -> None:
    flag_set, errors = load(
        "flags/checkout.json",
        """\
        {"flags": {"new-checkout": {"state": "ENABLED", "variants": {"on": true}}},
         "flags": {"new-checkout": {"state": "ENABLED", "variants": {"on": true}}}}
        """,
    )

    assert flag_set is None
    assert [(error.line, error.field) for error in errors] == [(2, "flags")]


@pytest.mark.parametrize(
    ("file", "content", "line", "message"),
    [
        pytest.param("flags/checkout.yaml", "", None, "the file is empty", id="empty-yaml"),
        pytest.param(
            "flags/checkout.yaml", "# nothing yet\n", None, "the file is empty", id="comment-only-yaml"
        ),
        pytest.param(
            "flags/checkout.yaml",
            "flags: {}\n---\nflags: {}\n",
            3,
            "a flag set file holds one YAML document, this one has 2",
            id="two-yaml-documents",
        ),
        pytest.param(
            "flags/checkout.json", '{"flags": {},\n}\n', 2, "JSON syntax error", id="json-syntax-error"
        ),
        pytest.param("flags/checkout.yaml", "flags: {\n", 2, "YAML syntax error", id="yaml-syntax-error"),
        pytest.param(
            "flags/checkout.toml", "[flags]\n", None, "a .json, .yaml or .yml file", id="other-extension"
        ),
    ],
)
def test_files_that_are_not_one_flag_set_document_are_rejected(
    file: str, content: str, line: int | None, message: str
) -> None:
    flag_set, errors = load_flag_set(file, content.encode())

    assert flag_set is None
    assert [(error.file, error.line, error.field) for error in errors] == [(file, line, "")]
    assert message in errors[0].message


# --- publishing -----------------------------------------------------------------

COMMIT = "3f2a9c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39"
SOURCE = "https://git.example.com/platform/flags.git"


def test_published_flag_set_stamps_commit_and_source_and_keeps_everything_else() -> None:
    flag_set = loaded("flags/checkout.json", CHECKOUT_JSON)

    published = published_flag_set(flag_set, commit=COMMIT, source=SOURCE)

    assert published["metadata"] == {
        "flagSetId": "checkout",
        "version": "3",
        "team": "payments",
        "sluiceCommit": COMMIT,
        "sluiceSource": SOURCE,
    }
    assert {key: value for key, value in published.items() if key != "metadata"} == {
        key: value for key, value in json.loads(CHECKOUT_JSON).items() if key != "metadata"
    }


def test_published_flag_set_adds_metadata_when_the_file_has_none() -> None:
    flag_set = loaded(
        "flags/minimal.json", '{"flags": {"kill-switch": {"state": "ENABLED", "variants": {"on": true}}}}'
    )

    published = published_flag_set(flag_set, commit=COMMIT, source=SOURCE)

    assert published == {
        "flags": {"kill-switch": {"state": "ENABLED", "variants": {"on": True}}},
        "metadata": {"sluiceCommit": COMMIT, "sluiceSource": SOURCE},
    }


def test_publishing_leaves_the_flag_set_untouched() -> None:
    flag_set = loaded("flags/checkout.json", CHECKOUT_JSON)
    before = copy.deepcopy(flag_set.document)

    published = published_flag_set(flag_set, commit=COMMIT, source=SOURCE)
    published["flags"]["new-checkout"]["state"] = "DISABLED"

    assert flag_set.document == before
    assert "sluiceCommit" not in flag_set.metadata


def test_the_published_document_is_a_valid_flag_set_apart_from_the_stamp() -> None:
    flag_set = loaded("flags/checkout.json", CHECKOUT_JSON)
    published = canonical_json(published_flag_set(flag_set, commit=COMMIT, source=SOURCE))

    _, errors = load_flag_set("flags/checkout.json", published.encode())

    # Users may not write the stamp themselves; everything else still validates.
    assert [error.field for error in errors] == ["metadata.sluiceCommit", "metadata.sluiceSource"]


# --- canonical JSON -------------------------------------------------------------


def test_canonical_json_is_sorted_compact_and_keeps_unicode() -> None:
    document = {"flags": {"größe": {"variants": {"s": 1, "m": 2}, "state": "ENABLED"}}, "$schema": "x"}

    assert (
        canonical_json(document)
        == '{"$schema":"x","flags":{"größe":{"state":"ENABLED","variants":{"m":2,"s":1}}}}'
    )


def test_canonical_json_does_not_depend_on_key_order() -> None:
    document = json.loads(CHECKOUT_JSON)
    reordered = json.loads(json.dumps(document, sort_keys=True))
    assert list(reordered) != list(document)

    assert canonical_json(reordered) == canonical_json(document)
    assert json.loads(canonical_json(document)) == document


def test_canonical_json_refuses_values_json_cannot_hold() -> None:
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        canonical_json({"metadata": {"ratio": float("nan")}})


def test_evaluators_that_double_at_each_level_are_refused_before_anything_inlines_them():
    """Twenty evaluators, each referring to the next four times, are two kilobytes that inline to a
    trillion values: ``effective_flags`` (the catalog, the canary) would take the worker's memory. Git's
    evaluators refer to none since 2026-12-07, but what a cluster holds is read as published before."""
    evaluators = {f"e{i}": {"or": [{"$ref": f"e{i + 1}"}] * 4} for i in range(20)}
    evaluators["e20"] = {"==": [1, 1]}
    flag = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}
    document = {
        "$evaluators": evaluators,
        "flags": {"f": {**flag, "targeting": {"if": [{"$ref": "e0"}, "on", "off"]}}},
    }
    flag_set, errors = load_flag_set(
        "flags/bomb.json", json.dumps(document, indent=1).encode(), published=True
    )
    assert flag_set is None
    (error,) = errors
    assert error.field == "flags.f"
    assert "more than 500,000 values" in error.message and "SLUICE_MAX_REVISION_NODES" in error.message
    # Five levels inline to about 4,000 values: allowed.
    small = {f"e{i}": evaluators[f"e{i}"] for i in range(15, 21)}
    document = {
        "$evaluators": small,
        "flags": {"f": {**flag, "targeting": {"if": [{"$ref": "e15"}, "on", "off"]}}},
    }
    assert load_flag_set("flags/ok.json", json.dumps(document).encode(), published=True)[1] == []


def test_evaluators_that_wrap_one_another_past_the_depth_limit_are_refused():
    """Each evaluator shallow, the chain 400 deep once inlined: ``effective_flags`` raised RecursionError.
    (A set as a cluster holds it: Git's evaluators refer to none since 2026-12-07.)"""
    evaluators = {f"e{i}": {"!": {"$ref": f"e{i + 1}"}} for i in range(400)}
    evaluators["e400"] = {"==": [1, 1]}
    flag = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}
    document = {
        "$evaluators": evaluators,
        "flags": {"f": {**flag, "targeting": {"if": [{"$ref": "e0"}, "on", "off"]}}},
    }
    flag_set, errors = load_flag_set("flags/deep.json", json.dumps(document).encode(), published=True)
    assert flag_set is None
    assert "nest more than 64 deep" in errors[0].message and "SLUICE_MAX_DEPTH" in errors[0].message


@pytest.mark.parametrize("addresses", [497, 2_000])
def test_many_flags_sharing_one_evaluator_are_allowed(addresses):
    # 2,000: an allowlist 100 flags share, 85 KB, refused when a string counted a value per 8 characters.
    internal = {"in": [{"var": "email"}, [f"user{i}@example.com" for i in range(addresses)]]}
    flag = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}
    count = 200 if addresses < 1_000 else 100
    flags = {
        f"f{i}": {**flag, "targeting": {"if": [{"$ref": "internal"}, "on", "off"]}} for i in range(count)
    }
    document = {"$evaluators": {"internal": internal}, "flags": flags}
    assert load_flag_set("flags/shared.json", json.dumps(document).encode())[1] == []


def test_an_evaluators_long_string_counts_its_text_each_time_a_flag_inlines_it():
    # 1,000 flags using one evaluator's 650 KB string: a 934 KB file and 1,000 values inlined, but 650 MB
    # of text hashed and compared by the worker, and a canary of 652 MB.
    listed = {"in": [{"var": "email"}, ["x" * 650_000]]}
    flag = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}
    flags = {f"f{i}": {**flag, "targeting": {"if": [{"$ref": "listed"}, "on", "off"]}} for i in range(1_000)}
    document = json.dumps({"$evaluators": {"listed": listed}, "flags": flags}).encode()
    flag_set, errors = load_flag_set("flags/listed.json", document)
    assert flag_set is None
    assert [error.field for error in errors] == [errors[0].field]
    assert "hold more than 500,000 values (a string counting one more for every 32 characters)" in str(
        errors[0]
    )
    assert "SLUICE_MAX_REVISION_NODES" in errors[0].message
    flags = {key: flags[key] for key in list(flags)[:20]}  # 13 MB inlined: within the 16 MB it allows
    document = json.dumps({"$evaluators": {"listed": listed}, "flags": flags}).encode()
    assert load_flag_set("flags/listed.json", document)[1] == []


def test_what_flag_sets_inline_counts_toward_the_revisions_values():
    # One set inlining 100,000 values passes; six of them are 600,000 values the worker would build
    # (the catalog, canaries), past the revision's 500,000.
    from gitops.desired.errors import RevisionRejected
    from gitops.desired.revision import load_revision

    internal = {"in": [{"var": "email"}, [f"u{i}" for i in range(497)]]}
    flag = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}
    flags = {f"f{i}": {**flag, "targeting": {"if": [{"$ref": "internal"}, "on", "off"]}} for i in range(200)}
    document = json.dumps({"$evaluators": {"internal": internal}, "flags": flags}).encode()
    policy = (
        b"targets: {namespaces: [team-a]}\nflags: {namespace: flags}\nallowedNamespaces: [team-a, flags]\n"
    )

    def load(count: int):
        files = {"sluice.yaml": policy} | {f"flags/set-{i}.json": document for i in range(count)}
        blobs = {f"b-{path}": content for path, content in files.items()}
        return load_revision({path: f"b-{path}" for path in files}, lambda ids: {i: blobs[i] for i in ids})

    assert len(load(1).objects) == 1
    with pytest.raises(RevisionRejected) as refused:
        load(6)
    assert any("revision builds more than 500,000 values" in error.message for error in refused.value.errors)


def evaluators_document(evaluators: str) -> str:
    return dedent(
        """\
        {
          "$evaluators": %s,
          "flags": {
            "f": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                  "targeting": {"if": [{"$ref": "first"}, "on", "off"]}}
          }
        }
        """
    ).replace("%s", evaluators)


@pytest.mark.parametrize(
    ("evaluators", "field", "message"),
    [
        pytest.param(
            '{"first": {"==": [{"var": "x"}, "caf\u00e9"]}}',
            '["$evaluators"].first',
            "the Python flagd provider substitutes evaluators as a regular-expression replacement",
            id="non-ascii-text",
        ),
        pytest.param(
            '{"first": {"==": [{"var": "x"}, "a\\\\b"]}}',
            '["$evaluators"].first',
            "a backslash",
            id="backslash",
        ),
        pytest.param(
            '{"first": {"==": [{"var": "x"}, "costs $$5"]}}',
            '["$evaluators"].first',
            'holds "$$" in a string: the JavaScript flagd core substitutes evaluators with replaceAll',
            id="javascript-replacement-pattern",
        ),
        pytest.param(
            '{"first": {"var": "x"}, "caf\u00e9": {"var": "y"}}',
            '["$evaluators"].café',
            "flagd's daemon finds a $ref through a regular expression built from the name (and from v0.16 "
            'in JSON text that escapes <, > and &), so use only ASCII letters, digits, "_" and "-"',
            id="non-ascii-name",
        ),
    ],
)
def test_evaluators_flagd_cannot_substitute_are_refused(evaluators: str, field: str, message: str) -> None:
    """Both pinned evaluators replace a $ref's JSON text with the evaluator's, one evaluator after the
    other in declared order (the Python one with re.sub, the JavaScript one with replaceAll). What
    that cannot resolve passed validation, and the flags using it failed to evaluate once published."""
    _, errors = load("flags/checkout.json", evaluators_document(evaluators))

    assert [(error.field, message in error.message) for error in errors] == [(field, True)], errors


# flagd's Go daemon, the one the README has the ConfigMap mounted into, substitutes $evaluators textually:
# v0.12.6 to v0.15 with a regular expression built from each name and Go's ReplaceAllString, v0.16 in
# compact JSON text that escapes <, > and &.
GO_DAEMON_CASES = [
    pytest.param(
        '{"first": {"and": [{"$ref": "second"}, {"var": "beta"}]}, "second": {"var": "staff"}}',
        '["$evaluators"].first.and[0]["$ref"]',
        'refers to "second" from inside $evaluators: flagd\'s daemon does not resolve references inside '
        "$evaluators, so the flags using this evaluator fail on every evaluation; write the rule of "
        '"second" in its place, or refer to both evaluators from the flags\' targeting',
        id="reference-between-evaluators",
    ),
    pytest.param(
        '{"first": {">": [{"var": "$flagd.timestamp"}, 1767225600]}}',
        '["$evaluators"].first',
        'holds "$flagd" in a string: flagd\'s daemon (v0.12.6 to v0.15) substitutes evaluators with a Go '
        'regular-expression replacement, which reads a $ before a letter, digit, "_" or "{" as a group '
        'and drops it ("$flagd.timestamp" becomes ".timestamp"); move the rule holding it into the '
        "targeting of the flags that use it",
        id="flagd-property-in-an-evaluator",
    ),
    pytest.param('{"first": {"in": ["$5", [{"var": "tier"}]]}}', '["$evaluators"].first', '"$5"', id="digit"),
    pytest.param('{"first": {"in": ["${x}", [{"var": "t"}]]}}', '["$evaluators"].first', '"${"', id="brace"),
    pytest.param(
        '{"first": {"in": ["a$_b", [{"var": "t"}]]}}', '["$evaluators"].first', '"$_b"', id="underscore"
    ),
    pytest.param(
        '{"first": {"var": "x"}, "team.a": {"var": "y"}}',
        '["$evaluators"]["team.a"]',
        'evaluator name "team.a": flagd\'s daemon finds a $ref through a regular expression built from the '
        "name (and from v0.16 in JSON text that escapes <, > and &), so use only ASCII letters, digits, "
        '"_" and "-"',
        id="dot-in-a-name",
    ),
    *(
        pytest.param(
            '{"first": {"var": "x"}, ' + json.dumps(name) + ': {"var": "y"}}',
            f'["$evaluators"][{json.dumps(name)}]',
            'so use only ASCII letters, digits, "_" and "-"',
            id=f"name-{name}",
        )
        for name in ("team-a(", "a+b", "team(a)", "beta&staff", "x<y", "a>b", "team a")
    ),
]


@pytest.mark.parametrize(("evaluators", "field", "message"), GO_DAEMON_CASES)
def test_evaluators_flagds_go_daemon_substitutes_wrongly_are_refused(
    evaluators: str, field: str, message: str
) -> None:
    """Each passed validation and was reproduced against flagd's Go substitution: a reference between
    evaluators became {"": "internal"} (v0.15) or stayed a $ref (v0.16), and the flags using it failed
    on every evaluation; "$flagd.timestamp" lost "$flagd"; "team-a(" made flagd refuse the whole file,
    and "a+b" or "beta&staff" never matched their $ref."""
    _, errors = load("flags/checkout.json", evaluators_document(evaluators))

    assert [(error.field, message in error.message) for error in errors] == [(field, True)], errors


def test_what_flagds_go_daemon_substitutes_as_written_stays_allowed() -> None:
    """Only an evaluator's text is a replacement: "$flagd.timestamp" and "$5" in a flag's own targeting
    stay, as does a "$" no name or brace follows, and a name of letters, digits, "_" and "-"."""
    _, errors = load(
        "flags/checkout.json",
        evaluators_document(
            '{"first": {"in": [{"var": "price"}, ["5 $", "$.5", "$-", "US$ 5", "say \\"hi\\""]]},'
            ' "Team_a-2": {"var": "y"}}'
        ).replace(
            '"targeting": {"if": [{"$ref": "first"}, "on", "off"]}',
            '"targeting": {"if": [{"and": [{"$ref": "first"}, {"$ref": "Team_a-2"},'
            ' {">": [{"var": "$flagd.timestamp"}, 1767225600]}, {"in": ["$5", [{"var": "tier"}]]}]},'
            ' "on", "off"]}',
        ),
    )

    assert errors == []


@pytest.mark.parametrize(
    ("evaluators", "field", "message"),
    [
        pytest.param(
            '{"first": {"!": {"$ref": "second"}}, "second": {"!": {"$ref": "first"}}}',
            '["$evaluators"].first',
            'refers to itself ("first" → "second" → "first")',
            id="cycle",
        ),
        pytest.param(
            '{"first": {"!": {"$ref": "first"}}}',
            '["$evaluators"].first',
            'refers to itself ("first" → "first")',
            id="reference-to-itself",
        ),
        pytest.param(
            '{"first": {"!": {"$ref": "12"}}, "12": {"var": "y"}}',
            '["$evaluators"].first',
            'refers to "12", a whole-number name: JavaScript visits those first',
            id="whole-number-name-referred-to",
        ),
        pytest.param(
            '{"first": {"var": "x"}, "caf\u00e9": {"var": "y"}}',
            '["$evaluators"].café',
            "flagd finds a $ref by its name in JSON text",
            id="non-ascii-name",
        ),
    ],
)
def test_a_set_published_before_references_were_refused_is_held_to_the_rules_of_then(
    evaluators: str, field: str, message: str
) -> None:
    """A set a cluster holds (a canary's old side) is read as Git's were when it was published: before
    2026-12-07 evaluators could refer to one another, in an order that resolves."""
    text = evaluators_document(evaluators).encode()
    _, errors = load_flag_set("flags/checkout.json", text, published=True)

    assert [(error.field, message in error.message) for error in errors] == [(field, True)], errors


def test_a_set_published_before_2026_12_07_may_hold_what_flagds_go_daemon_substitutes_wrongly() -> None:
    """References between evaluators in any declared order (Sluice publishes them in an order flagd's
    Python and JavaScript evaluators resolve), "$flagd" in an evaluator, an evaluator named "team.a"
    and a variant named "beta&staff": still read as the old side of a canary."""
    text = evaluators_document(
        '{"third": {"==": [{"var": "x"}, "say \\"hi\\" for $5"]}, "second": {"!": {"$ref": "third"}},'
        ' "first": {"or": [{"$ref": "second"}, {"$ref": "third"}, {"$ref": "team.a"}]}, "12": {"var": "n"},'
        ' "team.a": {">": [{"var": "$flagd.timestamp"}, 1767225600]}}'
    ).replace('"variants": {"on": true, "off": false}', '"variants": {"on": true, "beta&staff": false}')
    text = text.replace('"defaultVariant": "off"', '"defaultVariant": "beta&staff"').replace(
        '"on", "off"]', '"on", "beta&staff"]'
    )

    assert load_flag_set("flags/checkout.json", text.encode(), published=True)[1] == []
    _, errors = load_flag_set("flags/checkout.json", text.encode())
    assert len(errors) == 7, errors  # from Git: four references, "team.a", "$5" in "third", the variant


@pytest.mark.parametrize("name", ["beta&staff", "<none>", "a>b", 'say "hi"', "a\\b"])
def test_a_variant_flagds_go_daemon_cannot_select_is_refused(name: str) -> None:
    """flagd's daemon looks the targeting result up as Go's JSON encoder wrote it ("beta\\u0026staff"):
    the variant was never served, every user getting the default instead."""
    targeting = {"fractional": [[name, 50], ["off", 50]]}
    flag_set, errors = one_flag(variants={name: "b", "off": "o"}, defaultVariant="off", targeting=targeting)

    assert flag_set is None
    assert [error.field for error in errors] == [f"flags.f.variants[{json.dumps(name)}]"], errors
    assert f"variant name {json.dumps(name)} holds" in errors[0].message
    assert "flagd's daemon looks a targeting result up as its JSON encoder wrote it" in errors[0].message


def test_variant_names_of_other_punctuation_stay_allowed() -> None:
    variants = {"beta-staff": "b", "50%": "h", "on/off": "o", "$x": "d", "a b": "s"}
    targeting = {"fractional": [[name, 20] for name in variants]}
    flag_set, errors = one_flag(variants=variants, defaultVariant="on/off", targeting=targeting)

    assert errors == [] and flag_set is not None


def test_evaluators_are_published_each_before_those_it_refers_to() -> None:
    from gitops.desired.flags import evaluator_order
    from gitops.desired.revision import flag_set_json

    evaluators = {
        "internal-users": {"ends_with": [{"var": "email"}, "@example.com"]},
        "staff": {"or": [{"$ref": "internal-users"}, {"$ref": "contractors"}]},
        "contractors": {"in": [{"var": "team"}, ["ops"]]},
        "admins": {"and": [{"$ref": "staff"}, {"var": "admin"}]},
    }

    assert evaluator_order(evaluators) == ["admins", "staff", "contractors", "internal-users"]
    published = json.loads(flag_set_json({"flags": {}, "$evaluators": evaluators}))
    assert list(published["$evaluators"]) == ["admins", "staff", "contractors", "internal-users"]
    unrelated = {"b": {"var": "x"}, "a": {"var": "y"}}
    sorted_text = json.dumps({"$evaluators": {"a": {"var": "y"}, "b": {"var": "x"}}, "flags": {}}, indent=2)
    assert flag_set_json({"flags": {}, "$evaluators": unrelated}) == sorted_text + "\n", "sorted, as before"


def test_a_yaml_date_in_an_evaluator_is_reported_not_raised() -> None:
    _, errors = load(
        "flags/checkout.yaml",
        "$evaluators:\n  first: {'==': [{var: day}, 2024-01-01]}\nflags: {}\n",
    )

    assert any("2024-01-01" in error.message for error in errors), errors


def test_a_flag_set_published_sorted_by_an_earlier_release_is_not_taken_for_an_edit() -> None:
    """Releases before 2026-12-04 published every key sorted, $evaluators included, and recorded the
    hash of that text; the same flag set now publishes in reference order, and the live object must
    not read as "edited in the cluster" for it."""
    from gitops.desired.content import Content
    from gitops.desired.revision import flag_set_json, flag_set_key
    from gitops.plan.stamps import applied_hashes_of

    document = {
        "$evaluators": {"internal": {"var": "x"}, "staff": {"or": [{"$ref": "internal"}, {"var": "y"}]}},
        "flags": {},
    }
    legacy = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert legacy != flag_set_json(document), "the order changed for this one"
    live = Content(data={flag_set_key("checkout"): legacy})

    hashes = applied_hashes_of("checkout", flag_set=True, current=live)

    assert live.hash in hashes
    now = Content(data={flag_set_key("checkout"): flag_set_json(document)})
    assert applied_hashes_of("checkout", flag_set=True, current=now) == (now.hash, live.hash)


def one_flag(**flag: object) -> tuple[FlagSet | None, list[ValidationError]]:
    """A flag set of one flag ``f``, enabled, of boolean variants on/off unless ``flag`` says otherwise."""
    definition = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off", **flag}
    return load_flag_set("flags/checkout.json", json.dumps({"flags": {"f": definition}}).encode())


@pytest.mark.parametrize("key", ["sluiceCommit", "sluiceSource", "sluiceCanaryWeight"])
def test_a_flag_may_not_set_the_metadata_sluice_stamps_on_its_set(key: str) -> None:
    """Both evaluators let a flag's metadata override its set's: a flag setting one of Sluice's stamps
    would make every evaluation report a commit, a source or a canary weight Git never had."""
    value = 100 if key == "sluiceCanaryWeight" else "0" * 40
    flag_set, errors = one_flag(metadata={key: value})
    assert flag_set is None and [e.field for e in errors] == [f"flags.f.metadata.{key}"], errors


def test_an_empty_metadata_key_is_refused_for_flagds_python_core_refuses_the_whole_set() -> None:
    """The schema allows it; Python apps got none of the set's flags (the provider never became ready)."""
    flag_set, errors = one_flag(metadata={"": "x"})
    assert flag_set is None
    assert [(e.field, "must be non-empty" in e.message) for e in errors] == [
        ('flags.f.metadata[""]', True)
    ], errors


@pytest.mark.parametrize(
    "condition",
    [
        {"in": ["x", [{"bogus": 1}]]},  # an unknown operator inside an array argument
        {"var": {"bogus": 1}},  # ... inside var's operand
        {"in": ["x", [{"$ref": "nope"}]]},  # a $ref to no evaluator, inside an array argument
    ],
)
def test_rules_flagd_evaluates_inside_arrays_and_var_operands_are_checked(condition: dict) -> None:
    """JsonLogic evaluates an array's items and var's operand: both evaluators answer PARSE_ERROR for
    such a flag on every evaluation, so every user would get the code's default."""
    flag_set, errors = one_flag(targeting={"if": [condition, "on", "off"]})
    assert flag_set is None and errors


def test_objects_of_several_keys_in_a_list_stay_data() -> None:
    """An object of one key inside a list is a rule; one of several keys is data, as flagd reads it."""
    loaded(
        "flags/tiers.json",
        """\
        {
          "flags": {
            "tier": {
              "state": "ENABLED",
              "variants": {"gold": "gold", "basic": "basic"},
              "defaultVariant": "basic",
              "targeting": {"if": [{"in": [{"var": "plan"}, ["pro", "max"]]}, "gold", "basic"]}
            }
          }
        }
        """,
    )


PRO = {"in": [{"var": "plan"}, ["pro"]]}


@pytest.mark.parametrize("result", [1.0, ["on"], 1e21])
def test_a_literal_result_the_two_evaluators_name_differently_is_refused(result: object) -> None:
    """flagd looks a number result up by its text: Python writes 1.0 as "1.0", JavaScript as "1"; a
    list, Python by its text and JavaScript by its items joined. Such a canary served JavaScript users
    the code's default on its old side."""
    variants = {"1": 1, "0": 0, "on": 2}
    flag_set, errors = one_flag(variants=variants, defaultVariant="0", targeting={"if": [PRO, result, "0"]})
    assert flag_set is None and [e.field for e in errors] == ["flags.f.targeting.if[1]"], errors


def test_whole_and_decimal_number_results_stay_allowed() -> None:
    variants = {"1": 1, "1.5": 1.5}
    flag_set, errors = one_flag(variants=variants, defaultVariant="1", targeting={"if": [PRO, 1.5, 1]})
    assert errors == [] and flag_set is not None


def test_a_rule_in_vars_default_is_checked_too() -> None:
    """``{"var": ["name", default]}``: JsonLogic evaluates the default as well as the name."""
    flag_set, errors = one_flag(targeting={"if": [{"var": ["beta", {"$ref": "nowhere"}]}, "on", "off"]})
    assert flag_set is None and errors and "nowhere" in errors[0].message, errors
