"""The flag set published at each weight of a flag-set rollout. Pure: no Django, no I/O.

A rollout of a flagd flag set goes from ``old`` (as published before) to ``new``
(Git's) in ``setWeight`` steps. At weight w, flagd itself must serve the new
definition of every changed flag to about w% of evaluation contexts and the old
definition to the rest, sticky and growing from step to step. At 0 the published
document is exactly ``old``, at 100 exactly ``new``.

How a changed flag is published in between::

    {"state": "ENABLED", "variants": <old and new variants>, "defaultVariant": null,
     "targeting": {"if": [<split>, <new side>, <old side>]}}

The split is ``fractional`` with the new side as the FIRST bucket, weight w, and
the old side second, weight 100 - w. flagd maps a context to bucket
``(hash * 100) >> 32`` and walks the buckets in order, so whoever lands in the
new bucket at one weight stays there at every higher weight. The bucket labels
are only compared with ``===``, never returned, and are chosen apart from the
flag's variant names all the same.

The split hashes ``"sluice-canary/" + population + "/" + targetingKey``, where
``population`` is one seed per rollout (``Rollout.flag_population``). So the
canary is one population of users: whoever is on the new side of one changed
flag at weight w is on the new side of every flag the rollout changes, in every
flag set and every cluster, as a canary pod runs all of a release's new
configuration together. Flags changed in one commit often go together (a UI and
the API it calls); split apart, only w% x w% of users would get both at first,
and the rest would run combinations nobody meant. Two rollouts hash different
seeds, so one set of users is not every canary's first. A rollout started
before the seed existed has none (``population=""``) and keeps the key it
started with, ``"sluice-canary/" + flagKey + "/" + targetingKey``: one
population per flag, so its users stay where they were.

Either key is apart from fractional's default key (flagKey and targetingKey).
With the default key a flag whose own targeting is a ``fractional`` would be
split along the same hash: going from ``[["on", 10], ["off", 90]]`` to
``[["on", 60], ["off", 40]]``, step 25 would hold 30% of the users whose result
changes and step 50 all of them. The prefix makes the split independent of the
flag's own buckets. A context without a targeting key cannot be bucketed and
keeps the old result until 100.

Each side is a JsonLogic expression that yields the name of the canary variant
that side's definition selects, or null for "the caller's code default": the
flag is missing or DISABLED on that side, its targeting yields null and it has no
``defaultVariant``, or it selects a name that is not one of its variants (flagd
reports an error and the caller gets its default). With ``defaultVariant: null``
flagd resolves a null from either side to the code default, as it does a missing
or disabled flag; only the reason differs (DEFAULT, not FLAG_NOT_FOUND or DISABLED).

Building a side, with the flag's ``$ref`` evaluators inlined first (so an old and
a new evaluator of the same name cannot clash, and the published ``$evaluators``
can stay ``new``'s for the unchanged flags):

- No targeting: the default variant's canary name, or null.
- Targeting whose results are all literals (the rule itself, ``if`` branches and
  ``fractional`` buckets, nested): the literals are rewritten in place to canary
  names (null becomes the default variant; a name that is not a variant becomes
  null), an ``if`` with no else gets the default as its else, and a
  ``fractional`` that can find no bucket (no targeting key) is mapped to the
  default. The rule is evaluated once, as before.
- Targeting with a computed result (``{"var": "plan"}`` as a variant name,
  ``or``, ``cat``...): a lookup chain that compares the rule's result with each
  variant name, ``{"if": [{"===": [rule, null]}, default, {"in": [rule, ["a"]]},
  "a", ..., null]}``. JsonLogic has no way to bind a value, so the rule is
  evaluated once per comparison; that is only slower, as a rule is a pure
  function of the context (flagd fixes ``$flagd.timestamp`` per evaluation).
  A computed number is matched to the variant its decimal text names ("2", "1.5"), as both
  evaluators look it up; a whole number computed as a float ("2.0" in Python, "2" in
  JavaScript) is matched as JavaScript does.

Variants: the published variants are those of the sides that can serve a value
(present and ENABLED). ``new``'s names are kept; an ``old`` variant whose name
is also ``new``'s with a different value is renamed ``<name>~old`` (then
``<name>~old~2``... if taken) in the canary only, so the new side reports its real
variant names and only the outgoing side reports synthetic ones.

A flag whose variant type changes (say boolean to string) while both sides serve
values cannot be served mixed: the application reads it as one type, and the
other half would get type errors. It keeps its old definition (inlined) until
100, where the whole set switches to ``new``.

A changed flag whose two sides come out identical (only its metadata changed, or
it is disabled on both sides) is published as in ``new``. Flag metadata cannot be
split by user: a canary flag carries ``new``'s, or ``old``'s for a removed flag.
Likewise the set's metadata and ``$schema`` are ``new``'s from the first step.

Output is deterministic: the same inputs give the same document, key order aside
(canonical JSON sorts keys), and it shares no objects with the inputs.

A flag that moves between two flag sets of a namespace switches at 100 (``moved_flags``);
``move_order`` says which of that step's writes go after others, so it is added where it
arrives before it is taken away where it leaves.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Hashable, Mapping, Set
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from gitops.desired.flag_summary import effective_flags
from gitops.desired.flags import inlined_weight, json_type
from gitops.errors import PermanentError
from gitops.vocabulary import FlagReach

MetadataValue = str | int | float | bool

SPLIT_BUCKET_NEW: Final = "sluice-canary-new"
SPLIT_BUCKET_OLD: Final = "sluice-canary-old"
SPLIT_KEY_PREFIX: Final = "sluice-canary/"
# A rollout's population seed: what Rollout.flag_population holds (hex, made by secrets.token_hex).
POPULATION_PATTERN: Final = re.compile(r"[0-9a-z]{1,32}")
OLD_VARIANT_SUFFIX: Final = "~old"

# The split buckets: fractional's weights are relative, so 100 makes w a percentage.
_TOTAL_WEIGHT: Final = 100


def canary_flag_set(
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any],
    weight: int,
    *,
    metadata: Mapping[str, MetadataValue] | None = None,
    population: str = "",
    moved: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The flag set to publish at ``weight`` (0..100) while rolling out from ``old`` to ``new``.

    ``old`` and ``new`` are whole flagd documents; ``old`` is None when the flag set
    is new. At 100 the result is ``new``, at 0 ``old`` (or a set without flags when
    ``old`` is None); in between, unchanged flags are as in ``new`` and each
    changed flag is split between its new and old definitions as the module
    docstring describes. ``metadata`` is merged into the set-level metadata.
    ``population`` is the rollout's seed: every changed flag splits the same users
    (see the module docstring); "" splits each flag's own. ``moved``: flags this set loses to, or gains
    from, another flag set flagd serves beside it (one namespace); each keeps its side until 100 (see
    ``moved_flags``).
    """
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= _TOTAL_WEIGHT:
        raise ValueError(f"weight must be a whole number from 0 to 100, got {weight!r}")
    if population and not POPULATION_PATTERN.fullmatch(population):
        # Only a hand-edited database row gets here: the step fails and names it, and nothing is published.
        raise CanaryRefused(
            f"the rollout's flag population {population[:40]!r} is not 1 to 32 lowercase letters and digits"
        )
    if weight == _TOTAL_WEIGHT:
        document: Mapping[str, Any] = new
    elif weight == 0:
        document = old if old is not None else {"flags": {}}
    else:
        document = _split_document(old, new, weight, _bucket_key(population), moved)
    result: dict[str, Any] = _fresh(document)
    if metadata:
        result["metadata"] = {**result.get("metadata", {}), **_fresh(metadata)}
    return result


def moved_flags(
    sides: Mapping[Any, tuple[Mapping[str, Any] | None, Mapping[str, Any]]],
) -> dict[Any, frozenset[str]]:
    """For flag sets flagd serves side by side (one namespace: set -> (old, new) documents), the flags
    each loses to, or gains from, another of them.

    flagd merges its sources by flag key. A flag moving from set A to set B, split in each on its own,
    would be served by A to the old side only and by B to the new side only, and whichever source flagd
    reads last would give the other side the code's default for the whole canary. So a moving flag
    switches at 100 only, as a flag whose variants change type does: A keeps serving its old
    definition, and B adds it at 100, when A drops it.
    """
    keys = {name: (_flag_keys(old), _flag_keys(new)) for name, (old, new) in sides.items()}
    leaving = {name: olds - news for name, (olds, news) in keys.items()}
    arriving = {name: news - olds for name, (olds, news) in keys.items()}
    # Counted once over every set, linear in their flags (a key leaves and arrives in different sets).
    left_count = Counter(key for flags in leaving.values() for key in flags)
    came_count = Counter(key for flags in arriving.values() for key in flags)
    moved: dict[Any, frozenset[str]] = {}
    for name in sides:
        mine = {key for key in leaving[name] if came_count[key]} | {
            key for key in arriving[name] if left_count[key]
        }
        if mine:
            moved[name] = frozenset(mine)
    return moved


WriteId = TypeVar("WriteId", bound=Hashable)


@dataclass(frozen=True)
class MoveOrder(Generic[WriteId]):
    """When each write of a batch goes: ``rounds`` holds the round of each write that waits (a write not
    in it goes in round 0), ``waits`` the writes each of those waits for (all in earlier rounds)."""

    rounds: Mapping[WriteId, int]
    waits: Mapping[WriteId, frozenset[WriteId]]


def move_order(writes: Mapping[WriteId, tuple[Set[str], Set[str]]]) -> MoveOrder[WriteId]:
    """The order of the writes of flag sets flagd serves side by side (one namespace of one cluster),
    given the flag keys each set holds before and after its write.

    A moving flag leaves one set and joins another in the same step (at 100, ``moved_flags``). Written
    together, flagd could read the set that loses it first and, until it read the other, serve the flag
    from neither: the code's default to every user. So a write that takes a flag away waits for every
    write that adds it: a round after the latest of them, sent once the apiserver stored them. A reader
    taking the sets in the order they were stored then finds the flag in one at every moment, for a
    moment in both (its old definition or its new one: the switch itself).

    Sets that swap flags (each takes one away that the other adds, or a longer ring of them) cannot be
    put in order: whichever goes first leaves a flag in neither for a moment. Their waits on one another
    are left out (not ordered, as before); their other waits hold.
    """
    adders: dict[str, list[WriteId]] = {}
    for write, (before, after) in writes.items():
        for key in after - before:
            adders.setdefault(key, []).append(write)
    waits: dict[WriteId, set[WriteId]] = {}
    for write, (before, after) in writes.items():
        first = {other for key in before - after for other in adders.get(key, ())}
        if first:
            waits[write] = first
    if not waits:
        return MoveOrder({}, {})
    # A wait inside a ring goes: the write waited for waits, through others, for this one.
    reach = {write: _reachable(write, waits) for write in waits}
    kept = {
        write: frozenset(other for other in first if write not in reach.get(other, ()))
        for write, first in waits.items()
    }
    kept = {write: first for write, first in kept.items() if first}
    rounds: dict[WriteId, int] = {}
    left = dict(kept)
    while left:
        ready = [write for write, first in left.items() if not any(other in left for other in first)]
        if not ready:  # never: without the rings' waits, a turn always finds a write waiting for none left
            raise RuntimeError("flag set writes wait for one another in a ring")
        for write in ready:
            rounds[write] = 1 + max(rounds.get(other, 0) for other in left[write])
        for write in ready:
            del left[write]
    return MoveOrder(rounds, kept)


def _reachable(start: WriteId, waits: Mapping[WriteId, Set[WriteId]]) -> set[WriteId]:
    """The writes ``start`` waits for, directly or through others."""
    seen: set[WriteId] = set()
    stack = [start]
    while stack:
        for other in waits.get(stack.pop(), ()):
            if other not in seen:
                seen.add(other)
                stack.append(other)
    return seen


def canary_reach(
    old: Mapping[str, Any] | None, new: Mapping[str, Any], canary: Mapping[str, Any]
) -> dict[str, FlagReach]:
    """For each flag changed from ``old`` to ``new``, who has its new definition (or its removal) in
    ``canary``, what ``canary_flag_set`` published between 0 and 100 (exclusive).

    Read from the canary itself, so the Flags page says what flagd serves: a flag published as in ``new``
    (its sides serve the same: only its metadata changed, say) reached everyone; one published as ``old``
    had it (its variants change type, or it moves to another set), or absent while ``new`` has it (it
    arrives from another set), nobody until 100; a removed flag absent from the canary is gone for all.
    """
    old_flags, new_flags = effective_flags(old), effective_flags(new)
    written = new.get("flags") or {}
    published = canary.get("flags") or {}
    reach: dict[str, FlagReach] = {}
    for key in _changed(old_flags, new_flags):
        if key not in published:
            reach[key] = FlagReach.AT_FULL if key in new_flags else FlagReach.AT_ONCE
        elif key in written and _canonical(published[key]) == _canonical(written[key]):
            reach[key] = FlagReach.AT_ONCE
        elif key in old_flags and _canonical(published[key]) == _canonical(old_flags[key]):
            reach[key] = FlagReach.AT_FULL
        else:
            reach[key] = FlagReach.SPLIT
    return reach


def _flag_keys(document: Mapping[str, Any] | None) -> set[str]:
    flags = (document or {}).get("flags")
    return set(flags) if isinstance(flags, Mapping) else set()


def changed_flags(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> set[str]:
    """Flag keys whose effective definition differs ($ref evaluators inlined), added and removed ones too."""
    return _changed(effective_flags(old), effective_flags(new))


def _changed(old_flags: Mapping[str, Any], new_flags: Mapping[str, Any]) -> set[str]:
    return {
        key
        for key in old_flags.keys() | new_flags.keys()
        if _canonical(old_flags.get(key)) != _canonical(new_flags.get(key))
    }


# A published flag set lives in one ConfigMap, which holds at most 1 MiB.
MAX_LOOKUP_CHAIN_BYTES = 1024 * 1024


class CanaryRefused(PermanentError):
    """A flag set's canary cannot be built: the step fails, naming why, and nothing is published."""


class CanaryTooLarge(CanaryRefused):
    """A flag's canary would not fit in its ConfigMap: said before building it, not after."""


# A value takes at least four bytes of the indented text Sluice publishes (its line's indent, the value,
# a comma, the line end), and a string one more per character: with a string counting a value for every
# four characters, a canary holding more than this many values cannot fit in its ConfigMap.
MAX_CANARY_VALUES = MAX_LOOKUP_CHAIN_BYTES // 4
CANARY_CHARS_PER_VALUE = 4


def _bucket_key(population: str) -> dict[str, Any]:
    """What the split hashes: the rollout's population and the targeting key, or (no population, a
    rollout from before seeds) the flag's key and the targeting key."""
    if population:
        return {"cat": [f"{SPLIT_KEY_PREFIX}{population}/", {"var": "targetingKey"}]}
    return {"cat": [SPLIT_KEY_PREFIX, {"var": "$flagd.flagKey"}, "/", {"var": "targetingKey"}]}


def _split_document(
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any],
    weight: int,
    bucket_key: Mapping[str, Any],
    moved: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    old_flags, new_flags = effective_flags(old), effective_flags(new)
    published: dict[str, Any] = dict(new.get("flags") or {})
    room = MAX_CANARY_VALUES
    for key in _changed(old_flags, new_flags):
        if key in moved:
            # Leaving: its old definition (inlined) until 100. Arriving: absent until 100.
            if key in old_flags:
                published[key] = old_flags[key]
            else:
                published.pop(key, None)
            continue
        try:
            flag = _split_flag(old_flags.get(key), new_flags.get(key), published.get(key), weight, bucket_key)
            # Split flags carry both sides inlined: $ref evaluators that refer to one another twice
            # grow to millions of values, counted here before any of it is serialized or stored.
            room = _values_left(flag, room)
        except CanaryRefused as exc:
            exc.args = (f"flag {key!r}: {exc}",)  # the same error (a subclass may take other arguments)
            raise exc from None
        if flag is None:
            published.pop(key, None)
        else:
            published[key] = flag
    return {**new, "flags": {key: published[key] for key in sorted(published)}}


def _values_left(value: Any, room: int) -> int:
    """``room`` less the values ``value`` holds, a string counting one more for every four characters
    (inlined, one evaluator's string is repeated in each flag that refers to it: 1,000 flags using one
    of 650 KB were a 650 MB canary of few values); CanaryTooLarge once that goes below zero (counting
    stops)."""
    pending = [value]
    while pending:
        item = pending.pop()
        room -= inlined_weight(item, CANARY_CHARS_PER_VALUE)
        if room < 0:
            raise CanaryTooLarge(
                f"its canary would hold more than {MAX_CANARY_VALUES:,} values with its $ref evaluators "
                "inlined (a string counting one more for every four characters), past what a ConfigMap "
                "holds; roll it out with a single setWeight 100 step, or write the targeting with fewer "
                "references"
            )
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return room


def _split_flag(
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    new_as_written: Any,
    weight: int,
    bucket_key: Mapping[str, Any],
) -> Any:
    """The published definition of one changed flag; None: no flag.

    ``old`` and ``new`` have their evaluators inlined; ``new_as_written`` is the
    flag as ``new`` has it, which resolves against ``new``'s ``$evaluators``.
    """
    if held_until_full(old, new):
        return old
    old_serves, new_serves = _serves(old), _serves(new)
    variants, old_names, new_names = _merge_variants(
        _variants(old) if old_serves else {}, _variants(new) if new_serves else {}
    )
    old_side = _side_expression(old, old_names) if old_serves else None
    new_side = _side_expression(new, new_names) if new_serves else None
    if _canonical(old_side) == _canonical(new_side):
        return new_as_written
    flag: dict[str, Any] = {
        "state": "ENABLED",
        "variants": variants,
        "defaultVariant": None,
        "targeting": {"if": [_split(weight, variants, bucket_key), new_side, old_side]},
    }
    described = new if new is not None else old
    if described is not None and described.get("metadata"):
        flag["metadata"] = described["metadata"]
    return flag


def _split(weight: int, variants: Mapping[str, Any], bucket_key: Mapping[str, Any]) -> dict[str, Any]:
    """A condition true for the contexts in the new bucket at ``weight``."""
    new_bucket = _unused(SPLIT_BUCKET_NEW, set(variants))
    old_bucket = _unused(SPLIT_BUCKET_OLD, {*variants, new_bucket})
    fractional = {"fractional": [bucket_key, [new_bucket, weight], [old_bucket, _TOTAL_WEIGHT - weight]]}
    return {"and": [{"var": "targetingKey"}, {"===": [fractional, new_bucket]}]}


def held_until_full(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> bool:
    """Whether a changed flag keeps its old definition until 100: its variants change type while both
    sides serve values (see the module's docstring). Both with their evaluators inlined."""
    return _serves(old) and _serves(new) and _variant_types(old) != _variant_types(new)


def _serves(flag: Mapping[str, Any] | None) -> bool:
    """Whether the flag can serve one of its variants (flagd serves a DISABLED flag as the code default)."""
    return flag is not None and flag.get("state") != "DISABLED"


def _variants(flag: Mapping[str, Any] | None) -> Mapping[str, Any]:
    variants = flag.get("variants") if flag is not None else None
    return variants if isinstance(variants, Mapping) else {}


def _variant_types(flag: Mapping[str, Any] | None) -> frozenset[str]:
    # The types an OpenFeature application reads a flag as; valid variants are never arrays or null.
    return frozenset(json_type(value) for value in _variants(flag).values())


def _merge_variants(
    old: Mapping[str, Any], new: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """The canary's variants, and each side's map from its variant names to the canary's."""
    variants = dict(new)
    new_names = {name: name for name in new}
    old_names: dict[str, str] = {}
    for name in sorted(old):
        if name not in new or _canonical(new[name]) == _canonical(old[name]):
            variants[name] = old[name]
            old_names[name] = name
    taken = {*new, *old}
    for name in sorted(old):
        if name not in old_names:
            renamed = _unused(f"{name}{OLD_VARIANT_SUFFIX}", taken)
            taken.add(renamed)
            variants[renamed] = old[name]
            old_names[name] = renamed
    return {name: variants[name] for name in sorted(variants)}, old_names, new_names


def _unused(name: str, taken: set[str]) -> str:
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{name}~{number}"
    return candidate


def _side_expression(flag: Mapping[str, Any] | None, names: Mapping[str, str]) -> Any:
    """JsonLogic yielding the canary variant name this serving flag selects, or null (code default)."""
    if flag is None:
        return None
    default = _default_name(flag, names)
    targeting = flag.get("targeting")
    if not targeting:  # flagd: no targeting, or {}, serves the default variant
        return default
    if not isinstance(targeting, dict):
        return None  # flagd fails the evaluation: the caller gets its default
    try:
        expression, _ = _ResultRewriter(names, default).result(targeting)
    except _ComputedResultError:
        if printed_by_one := sorted(name for name in names if _PRINTED_BY_ONE_EVALUATOR.fullmatch(name)):
            raise CanaryRefused(
                f"its targeting computes the variant name, and variant {printed_by_one[0]!r} is a number "
                'as only one of flagd\'s evaluators prints it (Python\'s "2.0" and "1e-05", where '
                'JavaScript prints "2" and "0.00001"): no canary serves each user their old or new '
                "variant on both; roll it out with a single setWeight 100 step"
            ) from None
        # JsonLogic has no variables: the chain repeats the targeting once per variant name.
        repeated = len(_canonical(targeting)) * (len(names) + 1)
        if repeated > MAX_LOOKUP_CHAIN_BYTES:
            raise CanaryTooLarge(
                f"its targeting computes the variant name, so a canary repeats it for each of its "
                f"{len(names):,} variants: {repeated:,} bytes, more than a ConfigMap holds; "
                "roll it out without weighted steps (setWeight 100)"
            ) from None
        return _lookup_chain(targeting, names, default)
    return expression


def _default_name(flag: Mapping[str, Any], names: Mapping[str, str]) -> str | None:
    default = flag.get("defaultVariant")
    # flagd reads "" (like null or absent) as "no default"; a boolean is looked up as "true"/"false".
    if not isinstance(default, str | bool) or default == "":
        return None
    return names.get(_variant_key(default))


def _variant_key(result: object) -> str:
    """The variant name flagd looks up for a targeting result."""
    if isinstance(result, bool):
        return "true" if result else "false"
    return result if isinstance(result, str) else str(result)


class _ComputedResultError(Exception):
    """A result position holds a rule whose value is not known statically."""


@dataclass(frozen=True)
class _ResultRewriter:
    """Rewrites the literal results of a rule to canary names; raises _ComputedResultError if not all are."""

    names: Mapping[str, str]
    default: str | None

    def result(self, node: Any) -> tuple[Any, bool]:
        """The rewritten node, and whether it can yield null for "not a variant" (not "no result")."""
        if node is None:
            return self.default, False
        if isinstance(node, dict):
            if len(node) != 1:
                # JsonLogic returns such an object as it is: never a variant name.
                return None, True
            ((operator, operand),) = node.items()
            if operator == "if":
                return self._if(operand if isinstance(operand, list) else [operand])
            if operator == "fractional":
                return self._fractional(operand)
            raise _ComputedResultError
        if isinstance(node, list):
            return None, True
        name = self.names.get(_variant_key(node))
        return name, name is None

    def _if(self, arguments: list[Any]) -> tuple[Any, bool]:
        # [condition, then, condition, then, ..., else]: the odd positions and a trailing else
        # are results; with no else (an even count, or nothing) the result is null.
        if not arguments:
            return self.default, False
        rewritten, unknown = [], False
        last = len(arguments) - 1
        for index, argument in enumerate(arguments):
            if index % 2 == 1 or index == last:
                branch, branch_unknown = self.result(argument)
                unknown = unknown or branch_unknown
                rewritten.append(branch)
            else:
                rewritten.append(argument)
        if len(arguments) % 2 == 0 and self.default is not None:
            rewritten.append(self.default)
        return {"if": rewritten}, unknown

    def _fractional(self, operand: Any) -> tuple[Any, bool]:
        if not isinstance(operand, list) or not operand:
            raise _ComputedResultError
        first_bucket = 0 if isinstance(operand[0], list) else 1  # else a bucketing expression leads
        rewritten, unknown = list(operand[:first_bucket]), False
        for bucket in operand[first_bucket:]:
            if isinstance(bucket, list) and 1 <= len(bucket) <= 2:
                variant, variant_unknown = self.result(bucket[0])
                unknown = unknown or variant_unknown
                rewritten.append([variant, *bucket[1:]])
            else:
                rewritten.append(bucket)
        expression = {"fractional": rewritten}
        if self.default is None:
            return expression, unknown
        if unknown:
            # A null could then mean "no bucket" (the default variant) or "not a variant"
            # (the code default); the lookup chain keeps them apart.
            raise _ComputedResultError
        # fractional yields null when it cannot bucket (no targeting key): flagd serves the default. "or",
        # since a canary name is a non-empty string (true in both evaluators) and null is not: an "if"
        # testing the expression held it twice, so nested fractionals doubled per level (a 574-byte flag
        # of 20 levels built a 258 MB canary in 13 s).
        return {"or": [expression, self.default]}, False


def _lookup_chain(targeting: dict[str, Any], names: Mapping[str, str], default: str | None) -> dict[str, Any]:
    branches: list[Any] = []
    if default is not None:
        branches += [{"===": [targeting, None]}, default]
    # Names that are numbers first, matched by the result's text ("cat": "1" for 1, "True" or "true" for
    # a boolean, so never a number's): Python's "in" compares with ==, where True == 1 and 0 == False.
    numeric = sorted(name for name in names if _NUMBER_NAME.fullmatch(name))
    for name in numeric:
        branches += [{"in": [{"cat": [targeting]}, [name]]}, names[name]]
    for name in sorted(set(names) - set(numeric)):
        if name in ("true", "false"):
            # flagd looks a boolean result up as "true"/"false". Python's "in" compares with ==, where
            # 1 == True and 0 == False: a computed number is not taken for a boolean.
            number = "1" if name == "true" else "0"
            match = {
                "and": [{"in": [targeting, [name, name == "true"]]}, {"!==": [{"cat": [targeting]}, number]}]
            }
            branches += [match, names[name]]
        else:
            branches += [{"in": [targeting, [name]]}, names[name]]
    branches.append(None)
    return {"if": branches}


# A variant name that is the text both flagd evaluators give a computed number (Python's str,
# JavaScript's toString): an integer of any length (each evaluator looks up the text it prints, past
# 2^53 too; until 2026-12-07 one of over 15 digits, a 16-digit or snowflake id, got the code default
# during a canary), or a decimal that is not a whole number; not "-0", which no number prints as.
_NUMBER_NAME = re.compile(r"0|-?[1-9][0-9]*|-?(?:0|[1-9][0-9]{0,14})\.[0-9]{0,15}[1-9]")


# A variant name that is a computed number's text in one flagd evaluator only: a whole float as Python
# prints it ("2.0"), or an exponent form. Python's evaluator served it at 0% and 100%, and its canary the
# code default to every user in between (JavaScript's the reverse).
_PRINTED_BY_ONE_EVALUATOR = re.compile(r"-?[0-9]+\.0|-?[0-9](?:\.[0-9]+)?e[-+][0-9]+")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _fresh(value: Any) -> Any:
    # A JSON round trip rather than deepcopy: the result must not share objects with the
    # inputs nor within itself (an evaluator inlined twice), and must be JSON.
    return json.loads(json.dumps(value, allow_nan=False))
