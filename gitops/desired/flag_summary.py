"""What a flag does, in a few words, and whether it serves one variant to everyone. Pure: no Django, no I/O.

The Flags page lists every flag a source publishes with its state, variants,
default and a summary of its targeting, and marks stale flags the way Unleash
does. Both are read from the flag's definition as Git has it, never from traffic.

**Serves one variant to everyone** (one of the two reasons a flag is stale) means
every result the definition can give is the same:

- it is ``DISABLED``: every evaluation gets the application's code default;
- it has no targeting (or ``{}``): everyone gets ``defaultVariant`` (the code
  default when there is none);
- or every result its targeting can give names the same variant: each branch of an
  ``if`` (the default variant where a branch is null or the ``else`` is missing),
  and each ``fractional`` bucket whose weight is above 0 or computed (all weights 0:
  nobody is bucketed, everyone gets the default variant). A result that is not one
  of the variants counts as the code default.

Conditions are not evaluated: an ``if`` whose branches name different variants
counts as targeting even when its condition can never be true. Targeting that
computes the variant name (``{"var": "plan"}``, ``cat``, a ``$ref`` in a result)
counts as targeting. Contexts without a targeting key, which ``fractional`` cannot
bucket, are not counted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

# A result that is no variant: flagd then serves the application's code default.
CODE_DEFAULT: Final = None
NO_TARGETING: Final = "none"
MAX_SUMMARY_CHARS: Final = 200
MAX_VALUE_CHARS: Final = 40
MAX_VARIANTS_CHARS: Final = 300
# Raise it when a summary's wording or the one-variant rule changes, so recorded flags are summarised again.
SUMMARY_VERSION: Final = 1
_COMPARISONS: Final = frozenset(
    ("==", "===", "!=", "!==", "<", "<=", ">", ">=", "in", "starts_with", "ends_with")
)


@dataclass(frozen=True)
class FlagSummary:
    """One flag as the Flags page shows it; every text is bounded."""

    state: str
    variants: str  # "on: true · off: false"
    variant_count: int
    default_variant: str  # "" when there is none (the code default)
    targeting: str  # "none", "fractional 20/80 (on/off) on targetingKey", "if email ends_with ..."
    serves_one_variant: bool
    definition_hash: str  # of the definition with its $ref evaluators inlined


def flag_summary(flag: Mapping[str, Any], effective: Mapping[str, Any]) -> FlagSummary:
    """``flag`` as written (its ``$ref``s name evaluators) and ``effective`` (evaluators inlined)."""
    variants = flag.get("variants")
    variants = variants if isinstance(variants, Mapping) else {}
    default = flag.get("defaultVariant")
    return FlagSummary(
        state=str(flag.get("state", "")),
        variants=_bounded(
            " · ".join(_variant_text(name, value) for name, value in variants.items()),
            MAX_VARIANTS_CHARS,
        ),
        variant_count=len(variants),
        default_variant=_bounded(_variant_key(default), MAX_VALUE_CHARS) if _has_default(default) else "",
        targeting=_bounded(describe_targeting(flag.get("targeting")), MAX_SUMMARY_CHARS),
        serves_one_variant=serves_one_variant(effective),
        definition_hash=definition_hash(effective),
    )


def _variant_text(name: str, value: Any) -> str:
    return f"{name}: {_bounded(_json(value), MAX_VALUE_CHARS)}"


def definition_hash(effective: Mapping[str, Any]) -> str:
    """A hash of the definition, and of how this module summarises it: new wording is recorded anew."""
    canonical = json.dumps(effective, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{SUMMARY_VERSION}:{canonical}".encode()).hexdigest()[:32]


# -- one variant for everyone ---------------------------------------------------------------


def serves_one_variant(flag: Mapping[str, Any]) -> bool:
    """Whether every result the definition can give is the same (see the module docstring)."""
    outcomes = served_outcomes(flag)
    return outcomes is not None and len(outcomes) == 1


def served_outcomes(flag: Mapping[str, Any]) -> frozenset[str | None] | None:
    """The variants the flag can serve (None: the code default); None when targeting computes them."""
    if flag.get("state") == "DISABLED":
        return frozenset({CODE_DEFAULT})
    variants = flag.get("variants")
    names = set(variants) if isinstance(variants, Mapping) else set()
    default_name = flag.get("defaultVariant")
    default = _variant_key(default_name) if _has_default(default_name) else CODE_DEFAULT
    default = default if default in names else CODE_DEFAULT
    targeting = flag.get("targeting")
    if not targeting:
        return frozenset({default})
    if not isinstance(targeting, dict):
        return frozenset({CODE_DEFAULT})
    return _Outcomes(frozenset(names), default).of(targeting)


@dataclass(frozen=True)
class _Outcomes:
    variants: frozenset[str]
    default: str | None

    def of(self, node: Any) -> frozenset[str | None] | None:
        if node is None:
            return frozenset({self.default})
        if isinstance(node, list):
            return frozenset({CODE_DEFAULT})
        if not isinstance(node, dict):
            name = _variant_key(node)
            return frozenset({name if name in self.variants else CODE_DEFAULT})
        if len(node) != 1:
            return frozenset({CODE_DEFAULT})  # returned as it is: never a variant name
        ((operator, operand),) = node.items()
        if operator == "if":
            return self._if(operand if isinstance(operand, list) else [operand])
        if operator == "fractional" and isinstance(operand, list):
            return self._fractional(operand)
        return None  # a computed result

    def _if(self, arguments: list[Any]) -> frozenset[str | None] | None:
        # [condition, then, condition, then, ..., else]: the odd positions and a trailing else.
        if not arguments:
            return frozenset({self.default})
        last = len(arguments) - 1
        results = [arg for index, arg in enumerate(arguments) if index % 2 == 1 or index == last]
        outcomes: set[str | None] = set()
        if len(arguments) % 2 == 0:
            outcomes.add(self.default)  # no else: null
        for result in results:
            branch = self.of(result)
            if branch is None:
                return None
            outcomes |= branch
        return frozenset(outcomes)

    def _fractional(self, operand: list[Any]) -> frozenset[str | None] | None:
        buckets = [bucket for bucket in operand if isinstance(bucket, list) and 1 <= len(bucket) <= 2]
        reachable = [b[0] for b in buckets if len(b) == 1 or _weight_may_be_positive(b[1])]
        if not reachable:
            return frozenset({self.default})  # nobody lands in a bucket
        outcomes: set[str | None] = set()
        for variant in reachable:
            branch = self.of(variant)
            if branch is None:
                return None
            outcomes |= branch
        return frozenset(outcomes)


def _weight_may_be_positive(weight: Any) -> bool:
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        return True  # computed at evaluation time
    return weight > 0


# -- words --------------------------------------------------------------------------------------


def describe_targeting(targeting: Any) -> str:
    """A one-line summary of a flag's targeting, for people: "none" when there is none."""
    if not targeting:
        return NO_TARGETING
    return _describe_result(targeting)


def _describe_result(node: Any) -> str:
    if node is None:
        return "default"
    if isinstance(node, dict) and len(node) == 1:
        ((operator, operand),) = node.items()
        if operator == "if":
            return _describe_if(operand if isinstance(operand, list) else [operand])
        if operator == "fractional" and isinstance(operand, list):
            return _describe_fractional(operand)
        if operator == "var":
            return f"the variant named by {_describe_value(node)}"
        if operator == "$ref":
            return f"evaluator {_describe_value(operand)}"
        return f"computed: {_describe_value(node)}"
    if isinstance(node, str | bool | int | float):
        return _variant_key(node)
    return _describe_value(node)


def _describe_if(arguments: list[Any]) -> str:
    if not arguments:
        return "default"
    parts = []
    last = len(arguments) - 1
    index = 0
    while index < len(arguments):
        if index == last:
            parts.append(f"else {_describe_result(arguments[index])}")
            break
        condition, result = arguments[index], arguments[index + 1]
        parts.append(f"if {_describe_value(condition)} → {_describe_result(result)}")
        index += 2
    else:
        parts.append("else default")
    return "; ".join(parts)


def _describe_fractional(operand: list[Any]) -> str:
    by = "targetingKey"
    buckets = operand
    if operand and not isinstance(operand[0], list):
        by, buckets = _describe_value(operand[0]), operand[1:]
    names, weights = [], []
    for bucket in buckets:
        if isinstance(bucket, list) and 1 <= len(bucket) <= 2:
            names.append(_describe_result(bucket[0]))
            weights.append(bucket[1] if len(bucket) == 2 else 1)
    return f"fractional {_shares(weights)} ({'/'.join(names)}) on {by}"


def _shares(weights: list[Any]) -> str:
    """Weights as percentages: 20/80; a computed weight shows as "?"."""
    literal = [w for w in weights if isinstance(w, int | float) and not isinstance(w, bool)]
    if len(literal) != len(weights):
        return "/".join(_json(w) if isinstance(w, int | float) else "?" for w in weights)
    total = sum(literal)
    if total <= 0:
        return "/".join("0" for _ in weights)
    return "/".join(_percent(100 * w / total) for w in literal)


def _percent(share: float) -> str:
    return str(round(share)) if abs(share - round(share)) < 0.05 else f"{share:.1f}"


def _describe_value(node: Any) -> str:
    """A JsonLogic argument in words: a variable by its name, literals as JSON, comparisons infix."""
    if isinstance(node, dict) and len(node) == 1:
        ((operator, operand),) = node.items()
        arguments = operand if isinstance(operand, list) else [operand]
        if operator == "var":
            name = arguments[0] if arguments else ""
            return str(name) if isinstance(name, str) else _json(name)
        if operator == "$ref":
            return f"evaluator {operand}" if isinstance(operand, str) else _json(operand)
        if operator in _COMPARISONS and len(arguments) >= 2:
            return f" {operator} ".join(_describe_value(argument) for argument in arguments)
        if operator == "sem_ver" and len(arguments) == 3:
            return f"{_describe_value(arguments[0])} {arguments[1]} {_describe_value(arguments[2])} (semver)"
        if operator in ("and", "or"):
            return f" {operator} ".join(_grouped(argument) for argument in arguments)
        if operator == "!":
            return f"not {_grouped(arguments[0])}" if arguments else "not"
        if operator == "fractional":
            return _describe_fractional(arguments)
        return f"{operator}({', '.join(_describe_value(argument) for argument in arguments)})"
    if isinstance(node, list):
        return "[" + ", ".join(_describe_value(item) for item in node) + "]"
    return _json(node)


def _grouped(node: Any) -> str:
    text = _describe_value(node)
    return f"({text})" if " and " in text or " or " in text else text


# -- small helpers ------------------------------------------------------------------------------


def _has_default(default: Any) -> bool:
    # flagd reads "" (like null or absent) as "no default"; a boolean is looked up as "true"/"false".
    return isinstance(default, str | bool) and default != ""


def _variant_key(result: Any) -> str:
    """The variant name flagd looks up for a targeting result."""
    if isinstance(result, bool):
        return "true" if result else "false"
    return result if isinstance(result, str) else _json(result)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def effective_flags(document: Mapping[str, Any] | None) -> dict[str, Any]:
    """Each flag with the set's ``$ref`` evaluators substituted, as flagd does before evaluating."""
    if document is None:
        return {}
    evaluators = document.get("$evaluators") or {}
    flags = document.get("flags") or {}
    return {key: _inline(flag, evaluators, frozenset()) for key, flag in flags.items()}


def _inline(value: Any, evaluators: Mapping[str, Any], resolving: frozenset[str]) -> Any:
    if isinstance(value, dict):
        # flagd substitutes objects that hold nothing but "$ref", anywhere in a flag.
        name = value.get("$ref") if len(value) == 1 else None
        if isinstance(name, str) and name in evaluators and name not in resolving:
            return _inline(evaluators[name], evaluators, resolving | {name})
        return {key: _inline(item, evaluators, resolving) for key, item in value.items()}
    if isinstance(value, list):
        return [_inline(item, evaluators, resolving) for item in value]
    return value
