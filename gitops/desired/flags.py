"""Feature-flag sets in the OpenFeature flagd format: loading, validation, publishing.

A flag set is one file under ``flags/`` (JSON or YAML) in flagd's flag-definition
format. The rules of flagd's JSON schema (``flags.json`` and ``targeting.json``,
v0.2.x) are written out here by hand rather than run through a schema validator,
so that every problem names its file, line and field and says what to do. On top
of the schema come the checks it cannot express: variant names that the
targeting returns, ``$ref``s naming evaluators that do not exist, values JSON
cannot hold (YAML dates, NaN), and what flagd's Go daemon substitutes or selects wrongly (a
``$ref`` between evaluators, ``$flagd`` in an evaluator, a variant named ``a&b``). Where the
schema is looser than flagd's evaluator or JsonLogic itself (several operators in one rule
object, ``fractional`` with no buckets, a non-string ``version``), the stricter rule applies:
anything accepted here also passes the official schema.

Pure: no Django, no I/O.
"""

from __future__ import annotations

import copy
import datetime
import difflib
import functools
import heapq
import itertools
import json
import math
import re
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from gitops.desired.documents import Document, PathKey, Usage, load_json, load_yaml
from gitops.desired.errors import ErrorTally, ValidationError
from gitops.desired.flag_summary import definition_hash, effective_flags
from gitops.desired.limits import DEFAULT_LIMITS, Limits, setting_hint

MetadataValue = str | int | float | bool

COMMIT_METADATA_KEY: Final = "sluiceCommit"
SOURCE_METADATA_KEY: Final = "sluiceSource"
CANARY_WEIGHT_METADATA_KEY: Final = "sluiceCanaryWeight"

_FLAG_SET_FIELDS: Final = ("$schema", "flags", "$evaluators", "metadata")
# An evaluator's name as flagd's evaluators find it in JSON text, escaped or not: printable ASCII, no " or \.
# What sets published before 2026-12-07 were held to (``_EVALUATOR_NAME`` since).
_PLAIN_NAME: Final = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]+")
# An evaluator's name as flagd's Go daemon finds it: v0.12.6 to v0.15 put the name into a regular expression
# unescaped (metacharacters, "." among them, change what it matches), and v0.16 looks for it in JSON text
# that escapes <, > and &.
_EVALUATOR_NAME: Final = re.compile(r"[A-Za-z0-9_-]+")
# A name JavaScript iterates first, in numeric order (an array index), whatever the declared order.
_WHOLE_NUMBER: Final = re.compile(r"0|[1-9][0-9]{0,9}")
_LARGEST_INDEX = 4_294_967_294  # JavaScript's largest array index: larger whole numbers keep their place
# What JavaScript's replaceAll reads in a replacement string: $$, $&, $` and $'.
_JS_REPLACEMENT_PATTERN: Final = re.compile(r"\$[$&`']")
# What Go's Regexp.ReplaceAllString reads as a group in a replacement ($name, $1, ${name}) and replaces
# with that group's text: flagd's pattern names no group, so "$flagd.timestamp" becomes ".timestamp".
_GO_REPLACEMENT_GROUP: Final = re.compile(r"\$(?:[A-Za-z0-9_]+|\{)")
# What Go's JSON encoder escapes in a string: flagd's daemon looks a targeting result up among the
# variants as its JsonLogic wrote it, escaped, so a name holding one is never selected.
_UNSELECTABLE_VARIANT_CHARACTER: Final = re.compile(r'[<>&"\\]')
_FLAG_FIELDS: Final = ("state", "variants", "defaultVariant", "targeting", "metadata")
_STATES: Final = ("ENABLED", "DISABLED")
_VARIANT_TYPES: Final = ("boolean", "string", "number", "object")
# The schema's metadata allows any key, but means these two as strings.
_STRING_METADATA: Final = ("flagSetId", "version")
# Sluice writes these when it publishes; from Git they would claim a commit, a source or a canary.
_STAMPED_METADATA: Final = (COMMIT_METADATA_KEY, SOURCE_METADATA_KEY, CANARY_WEIGHT_METADATA_KEY)

# Context properties flagd injects; any other "$flagd." name evaluates to nothing.
_FLAGD_PROPERTIES: Final = ("$flagd.timestamp", "$flagd.flagKey")
_SEM_VER_COMPARATORS: Final = ("=", "!=", ">", "<", ">=", "<=", "~", "^")
# The semver.org grammar, which is what the schema's semVerString pattern encodes.
_SEM_VER: Final = re.compile(
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
# Versions are short; the bound keeps the regular expression's work linear in practice.
_MAX_VERSION_CHARS: Final = 256
# Suggestions and listings in messages: the names compared and listed come from the
# repository, so both are bounded (difflib is quadratic in the worst case).
_MAX_SUGGESTION_CHOICES: Final = 200
_MAX_SUGGESTION_CHARS: Final = 100
# A word's length times its choices' together, past which no suggestion is looked for (``_did_you_mean``).
_MAX_SUGGESTION_WORK: Final = 40_000
_MAX_LISTED_NAMES: Final = 10
# flagd sums the fractional weights in a 32-bit signed integer.
_MAX_TOTAL_WEIGHT: Final = 2**31 - 1
# The schema's key pattern is ^.{1,}$, and "." matches no line terminator.
_LINE_TERMINATOR: Final = re.compile("[\n\r\u2028\u2029]")

# Operators whose operand is a list of JsonLogic arguments, with the fewest and the
# most arguments targeting.json allows (None: no upper limit).
_ARGUMENT_COUNTS: Final[Mapping[str, tuple[int, int | None]]] = {
    **dict.fromkeys(("==", "===", "!=", "!==", ">", ">=", "%", "/"), (2, 2)),
    **dict.fromkeys(("map", "filter", "all", "none", "some", "in"), (2, 2)),
    **dict.fromkeys(("substr", "<", "<="), (2, 3)),
    **dict.fromkeys(("if", "or", "and", "+", "-", "max", "min", "merge", "cat"), (1, None)),
    "*": (2, None),
    "reduce": (3, 3),
}

_YAML_BOOLEAN_HINT: Final = " (YAML reads unquoted on/off/yes/no/true/false as booleans: quote it)"


@dataclass(frozen=True)
class FlagSet:
    """One validated flag-set file; the fields are parts of ``document``, not copies."""

    file: str
    flags: dict[str, dict[str, Any]]
    evaluators: dict[str, Any]
    metadata: dict[str, MetadataValue]
    document: dict[str, Any]
    # Each flag key's line in its file, for errors that span files (a key two flag sets define).
    key_lines: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False)

    @functools.cached_property
    def definition_hashes(self) -> Mapping[str, str]:
        """Each flag's ``definition_hash``, its ``$ref`` evaluators inlined: the flag catalog compares
        them on every pass, and a worker parses a revision's flag set once (its parse cache)."""
        # A plain dict, so that a flag set stays copyable and picklable once it is computed.
        return {key: definition_hash(flag) for key, flag in effective_flags(self.document).items()}


def load_flag_set(
    file: str,
    content: bytes,
    *,
    limits: Limits = DEFAULT_LIMITS,
    usage: Usage | None = None,
    published: bool = False,
    tally: ErrorTally | None = None,
) -> tuple[FlagSet | None, list[ValidationError]]:
    """Parse and validate one flag-set file; the flag set is None when there are errors.

    ``.json`` files are read as JSON and ``.yaml``/``.yml`` files as YAML, which must
    hold exactly one document. Loader errors (syntax, duplicate keys) come first. ``published``: a
    set as a cluster holds it, checked as Git's were when it was published (a weight written 50.0).
    ``tally``: where the errors go, the file's (``revision.parse_file``); the errors returned are what it
    lists.
    """
    tally = tally if tally is not None else ErrorTally(file)
    name = file.lower()
    if name.endswith(".json"):
        documents, errors = load_json(file, content, limits=limits, usage=usage)
    elif name.endswith((".yaml", ".yml")):
        documents, errors = load_yaml(file, content, limits=limits, usage=usage)
    else:
        tally.add(ValidationError(file, None, "", "a flag set is a .json, .yaml or .yml file"))
        return None, tally.listed()
    tally.extend(errors)
    if not documents:
        if not errors:
            tally.add(ValidationError(file, None, "", 'the file is empty: a flag set needs "flags"'))
        return None, tally.listed()
    if len(documents) > 1:
        message = f"a flag set file holds one YAML document, this one has {len(documents)}"
        tally.add(ValidationError(file, documents[1].line_of(), "", message))
    document = documents[0]
    validate_flag_set(document, published=published, tally=tally)
    if not tally.failed:
        past, inlined = _inlined_past(document, limits)
        if past is not None:
            tally.add(past)
        elif usage is not None:
            # What the worker builds from them (the catalog, canaries) counts toward the revision's
            # values: 2,000 sets that each inline to 250,000 values would otherwise all pass.
            usage.nodes += inlined
    if tally.failed:
        return None, tally.listed()
    data: dict[str, Any] = document.data
    return FlagSet(
        file=file,
        flags=data["flags"],
        evaluators=data.get("$evaluators", {}),
        metadata=data.get("metadata", {}),
        document=data,
        key_lines={key: line for key in data["flags"] if (line := document.lines.get(("flags", key)))},
    ), []


def evaluator_references(evaluators: Mapping[str, Any]) -> dict[str, set[str]]:
    """Each evaluator -> the evaluators its rule refers to (``{"$ref": name}`` of a defined one)."""
    graph: dict[str, set[str]] = {}
    for name, rule in evaluators.items():
        referred: set[str] = set()
        pending = [rule]
        while pending:
            value = pending.pop()
            if isinstance(value, dict):
                target = value.get("$ref")
                if isinstance(target, str) and target in evaluators:
                    referred.add(target)
                pending.extend(value.values())
            elif isinstance(value, list):
                pending.extend(value)
        graph[name] = referred
    return graph


def evaluator_order(evaluators: Mapping[str, Any]) -> list[str]:
    """The evaluators' names in an order flagd resolves: each before those it refers to.

    Both flagd evaluators substitute the evaluators into the flags' JSON text one after the other, in
    the order the published document lists them (JavaScript takes whole-number names first), so a
    reference an evaluator brings along is resolved only by one that comes later. Among names free
    to go next, the first in sorted order goes: the same evaluators always publish the same text, and
    in sorted order when no evaluator refers to another. An evaluator in a cycle (refused by
    validation) goes last.
    """
    graph = evaluator_references(evaluators)
    waiting = dict.fromkeys(graph, 0)
    for targets in graph.values():
        for target in targets:
            waiting[target] += 1
    ready: list[str] = [name for name, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        name = heapq.heappop(ready)
        order.append(name)
        for target in graph[name]:
            waiting[target] -= 1
            if waiting[target] == 0:
                heapq.heappush(ready, target)
    placed = set(order)
    return order + sorted(name for name in graph if name not in placed)


def evaluator_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One path of references back to its start (["a", "b", "a"]) for each group of evaluators that
    refer to one another in a circle, by the group's first name; in time linear in the references
    (Tarjan's strongly connected components, without recursion: a file may hold thousands)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            name, targets = work[-1]
            target = next(targets, None)
            if target is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[name])
                if low[name] == index[name]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == name:
                            break
                    if len(group) > 1 or name in graph[name]:
                        groups.append(sorted(group))
            elif target not in index:
                index[target] = low[target] = len(index)
                stack.append(target)
                on_stack.add(target)
                work.append((target, iter(sorted(graph[target]))))
            elif target in on_stack:
                low[name] = min(low[name], index[target])
    return [_circle(group, graph) for group in sorted(groups)]


def _circle(group: list[str], graph: Mapping[str, set[str]]) -> list[str]:
    """A shortest path of references from the group's first name back to it, within the group."""
    start, members = group[0], set(group)
    came_from: dict[str, str] = {}
    pending = deque([start])
    while pending:
        name = pending.popleft()
        for target in sorted(graph[name] & members):
            if target == start:
                path = [name]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, start]
            if target not in came_from:
                came_from[target] = name
                pending.append(target)
    return [start, start]  # never: a group is a circle


def _inlined_past(document: Document, limits: Limits) -> tuple[ValidationError | None, int]:
    """The flag with which the set's flags, their ``$ref`` evaluators inlined as flagd and Sluice
    (``effective_flags``) inline them, hold more than ``limits.max_revision_nodes`` values or nest
    deeper than ``limits.max_depth`` (None when they do not); and how many values inlining adds.

    The file's own values are bounded as it is read, but an evaluator that refers to another twice
    doubles at each level (thirty such evaluators, a kilobyte, inline to a billion values), and a
    chain of evaluators each wrapping the next nests as deep as it is long. A string counts a value for
    every 32 characters too (``inlined_weight``): one evaluator's 650 KB string, used by 1,000 flags,
    is 1,000 values and 650 MB of text. Counted without building anything, and never past
    ``max_revision_nodes`` steps.
    """
    evaluators = document.data.get("$evaluators") or {}
    if not evaluators:
        return None, 0
    budget = limits.max_revision_nodes
    inlined = 0  # values reached through a $ref: the flags' own were counted as the file was read
    for key, flag in document.data["flags"].items():
        pending: list[tuple[Any, int, frozenset[str]]] = [(flag, 1, frozenset())]
        while pending:
            value, depth, resolving = pending.pop()
            name = value.get("$ref") if isinstance(value, dict) and len(value) == 1 else None
            if isinstance(name, str) and name in evaluators and name not in resolving:
                pending.append((evaluators[name], depth, resolving | {name}))  # replaces the reference
                continue
            weight = inlined_weight(value)
            budget -= weight
            inlined += weight if resolving else 0
            nested = isinstance(value, dict | list)
            if budget < 0 or (nested and depth > limits.max_depth):
                error = document.error(("flags", key), _inlined_problem(limits, too_deep=budget >= 0))
                return error, inlined
            if nested:
                items = value.values() if isinstance(value, dict) else value
                pending.extend((item, depth + 1, resolving) for item in items)
    return None, inlined


# Characters of text that count as one more value where flags are counted with their $ref evaluators
# inlined: 500,000 values then hold at most 16 MB of text (a canary has its own bound in bytes). At 8
# (4 MB), 100 flags sharing an allowlist of 2,000 addresses, an 85 KB flag set, were refused.
CHARS_PER_INLINED_VALUE: Final = 32


def inlined_weight(value: Any, chars_per_value: int = CHARS_PER_INLINED_VALUE) -> int:
    """What one value counts toward a bound on values inlined from ``$ref`` evaluators: 1, and 1 more for
    every ``chars_per_value`` characters of a string (of a mapping's keys, for a mapping). Inlined, one
    evaluator's string is repeated in each flag that refers to it: its copies share its memory, but
    hashing, comparing and publishing the flags write it out each time."""
    if isinstance(value, str):
        return 1 + len(value) // chars_per_value
    if isinstance(value, dict):
        return 1 + sum(len(key) for key in value) // chars_per_value
    return 1


def _inlined_problem(limits: Limits, *, too_deep: bool) -> str:
    inlined = "with their $ref evaluators inlined (as flagd evaluates them), the flags"
    if too_deep:
        return (
            f"{inlined} nest more than {limits.max_depth} deep: evaluators that wrap one another add "
            f"up{setting_hint('max_depth')}"
        )
    return (
        f"{inlined} hold more than {limits.max_revision_nodes:,} values (a string counting one more for "
        f"every {CHARS_PER_INLINED_VALUE} characters): an evaluator that refers to another twice doubles "
        f"it, and each use of one repeats its text{setting_hint('max_revision_nodes')}"
    )


def validate_flag_set(
    document: Document, *, published: bool = False, tally: ErrorTally | None = None
) -> list[ValidationError]:
    """Every problem in one flag-set document, in file order (``published``: see ``load_flag_set``), as
    ``tally`` lists them; into ``tally`` when given (the file's)."""
    tally = tally if tally is not None else ErrorTally(document.file)
    try:
        _FlagSetValidator(document, tally, published=published).run()
    except RecursionError:
        # Rules nested hundreds deep: no real flag set, but no reason to crash a reconcile.
        tally.add(ValidationError(document.file, None, "", "the document is nested too deeply to validate"))
    return tally.listed()


def published_flag_set(flag_set: FlagSet, *, commit: str, source: str) -> dict[str, Any]:
    """The document flagd is given: the flag set with its origin in the flag-set metadata.

    A new document; ``flag_set`` is left as it was. Metadata values must be strings,
    numbers or booleans, so the commit and source are stamped as strings.
    """
    document = copy.deepcopy(flag_set.document)
    document["metadata"] = {
        **document.get("metadata", {}),
        COMMIT_METADATA_KEY: commit,
        SOURCE_METADATA_KEY: source,
    }
    return document


def canonical_json(document: dict[str, Any]) -> str:
    """The one serialization of ``document`` that is hashed and published."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class _FlagSetValidator:
    def __init__(self, document: Document, tally: ErrorTally, *, published: bool = False) -> None:
        self.document = document
        # Sets published before 2026-12-06 may hold a weight written 50.0: still read as their old side.
        self.published = published
        self.tally = tally
        self._first = len(tally.kept)  # the loader's errors come before this validator's
        self.from_yaml = document.file.lower().endswith((".yaml", ".yml"))
        self.evaluators: Mapping[str, Any] = {}
        # Values JSON cannot hold are reported once, as such, not again by the
        # structural checks that would also trip over them.
        self._not_json: set[PathKey] = set()

    def report(self, path: PathKey, message: str | Callable[[], str]) -> None:
        """``message``, or what builds it when it costs work (a suggestion): built only when kept."""
        if path in self._not_json:
            return
        if self.tally.full:
            self.tally.unlisted += 1
        else:
            self.tally.add(self.document.error(path, message if isinstance(message, str) else message()))

    def yaml_boolean_hint(self, value: object) -> str:
        return _YAML_BOOLEAN_HINT if self.from_yaml and isinstance(value, bool) else ""

    def run(self) -> None:
        data = self.document.data
        self._report_non_json_values(data, ())
        if not isinstance(data, dict):
            self.report((), f'a flag set is an object with "flags", got {_describe(data)}')
            return
        self._check_known_fields(data, (), _FLAG_SET_FIELDS, "a flag set has")
        if "$schema" in data and not isinstance(data["$schema"], str):
            self.report(("$schema",), f"must be the URL of the schema, got {_describe(data['$schema'])}")
        if "metadata" in data:
            self._check_metadata(data["metadata"], ("metadata",), flag_set=True)
        if "$evaluators" in data:
            self._check_evaluators(data["$evaluators"])
        if "flags" not in data:
            self.report(("flags",), '"flags" is required: an object of flag definitions by flag key')
        else:
            self._check_flags(data["flags"])
        found = self.tally.kept[self._first :]
        self.tally.kept[self._first :] = sorted(found, key=lambda error: (error.line or 0, error.field))

    def _report_non_json_values(self, value: object, path: PathKey) -> None:
        # YAML can produce dates, binary and non-finite floats; JSON's NaN too. And an escape ("\0",
        # "\u0000") can make a U+0000 that the raw-text check cannot see: flag keys, variants and
        # targeting are recorded in PostgreSQL (the flag catalog), whose text holds no U+0000.
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and "\x00" in key:
                    self._report_nul((*path, key), "key")
                    continue
                self._report_non_json_values(item, (*path, key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self._report_non_json_values(item, (*path, index))
        elif isinstance(value, str) and "\x00" in value:
            self._report_nul(path, "value")
        elif isinstance(value, float) and not math.isfinite(value):
            self.report(path, f"{value} is not a number JSON can hold")
            self._not_json.add(path)
        elif isinstance(value, datetime.date):  # datetimes too
            self.report(path, f"YAML read {value.isoformat()} as a date, which JSON cannot hold: quote it")
            self._not_json.add(path)
        elif value is not None and not isinstance(value, str | int | float):
            self.report(path, f"a {type(value).__name__} value cannot be published as JSON")
            self._not_json.add(path)

    def _report_nul(self, path: PathKey, what: str) -> None:
        self.report(path, f"{what} holds U+0000 (NUL), which Sluice cannot record")
        self._not_json.add(path)

    def _check_known_fields(
        self, value: dict[str, Any], path: PathKey, known: tuple[str, ...], owner: str
    ) -> None:
        for key in value:
            if key not in known:
                self.report(
                    (*path, key),
                    f"unknown field {_quoted(key)}{_did_you_mean(key, known)}; {owner} {_listing(known)}",
                )

    def _check_name(self, name: str, path: PathKey, what: str) -> None:
        if not name or _LINE_TERMINATOR.search(name):
            self.report(path, f"{what} must be non-empty and on one line, got {_quoted(name)}")

    def _check_metadata(self, metadata: object, path: PathKey, *, flag_set: bool) -> None:
        if not isinstance(metadata, dict):
            self.report(
                path, f"must be an object of string, number or boolean values, got {_describe(metadata)}"
            )
            return
        for key, value in metadata.items():
            value_path = (*path, key)
            if key == "" and not self.published:
                # The schema allows it; flagd's Python core refuses the whole flag set over it. A set
                # published before 2026-12-06 may hold one: still read, as its canary's old side.
                self.report(
                    value_path, "a metadata key must be non-empty: flagd's Python core refuses the flag set"
                )
            elif not isinstance(value, str | int | float):
                self.report(
                    value_path, f"metadata values are strings, numbers or booleans, got {_describe(value)}"
                )
            elif flag_set and key in _STRING_METADATA and not isinstance(value, str):
                self.report(value_path, f"must be a string, got {_describe(value)}: quote it")
            elif key in _STAMPED_METADATA:
                self.report(value_path, "is set by Sluice when it publishes the flag set: remove it")

    def _check_evaluators(self, evaluators: object) -> None:
        path: PathKey = ("$evaluators",)
        if not isinstance(evaluators, dict):
            self.report(path, f"must be an object of JsonLogic rules by name, got {_describe(evaluators)}")
            return
        self.evaluators = evaluators
        # Evaluators are shared by flags with different variants: no variant checks.
        checker = _TargetingChecker(self, variants=None, in_evaluator=True)
        for name, rule in evaluators.items():
            self._check_name(name, (*path, name), "an evaluator name")
            self._check_substitutable(name, rule, (*path, name))
            checker.check(rule, (*path, name))
        if self.published:
            # Since 2026-12-07 every reference between evaluators is refused where it is written
            # (``_TargetingChecker.reference``); a set published before may hold them, held to these rules.
            self._check_references(evaluators, path)

    def _check_references(self, evaluators: Mapping[str, Any], path: PathKey) -> None:
        """What flagd's Python and JavaScript evaluators cannot resolve however the evaluators are ordered:
        an evaluator that refers to itself (directly or through others), and one with a whole-number name
        that another refers to (JavaScript substitutes those first, before the evaluator that brings the
        reference along). Their other references resolve: Sluice publishes the evaluators in an order
        that resolves them (``evaluator_order``). The rules for sets published before 2026-12-07; since,
        flagd's Go daemon, which resolves no reference between evaluators, has them refused."""
        graph = evaluator_references(evaluators)
        for cycle in evaluator_cycles(graph):  # one each, at its first name; linear in the references
            through = " → ".join(_quoted(step) for step in cycle)
            self.report(
                (*path, cycle[0]),
                f"refers to itself ({through}): flagd never resolves such a reference, and the flags "
                "using it fail to evaluate",
            )
        for name in sorted(graph):
            for referred in sorted(graph[name]):
                if _WHOLE_NUMBER.fullmatch(referred) and int(referred) <= _LARGEST_INDEX:
                    self.report(
                        (*path, name),
                        f"refers to {_quoted(referred)}, a whole-number name: JavaScript visits those "
                        "first, so flagd's JavaScript core substitutes it before this evaluator brings the "
                        "reference along; rename it with a letter",
                    )

    def _check_substitutable(self, name: str, rule: object, path: PathKey) -> None:
        """What flagd's evaluators (Python's openfeature-flagd-core, JavaScript's @openfeature/flagd-core)
        can substitute: each replaces ``{"$ref": "name"}`` in the flags' JSON text with the evaluator's
        JSON text, the Python one through a regular expression whose replacement reads backslash
        escapes, the JavaScript one through ``replaceAll``, whose replacement reads ``$`` patterns. And
        what flagd's Go daemon can: from v0.12.6 to v0.15 it finds a ``$ref`` through a regular
        expression built from the name and substitutes with Go's ``ReplaceAllString``, whose replacement
        reads ``$name``, ``$1`` and ``${name}`` as groups."""
        if not self._substitutable_name(name, path):
            return
        try:
            text = json.dumps(rule, ensure_ascii=True).replace('\\"', "")
        except (TypeError, ValueError):
            return  # a YAML date, NaN and the like: reported where the value is read
        if "\\" in text:
            self.report(
                path,
                "holds non-ASCII text, a backslash or a control character in a string: the Python flagd "
                "provider substitutes evaluators as a regular-expression replacement, which turns those "
                "escapes into errors or other characters; move such text into the flags that use it",
            )
        elif found := _JS_REPLACEMENT_PATTERN.search(text):
            self.report(
                path,
                f"holds {_quoted(found.group())} in a string: the JavaScript flagd core substitutes "
                "evaluators with replaceAll, which reads it as a replacement pattern; move such text "
                "into the flags that use it",
            )
        # A "$ref" key is a reference between evaluators, reported where it is written.
        elif not self.published and (found := _GO_REPLACEMENT_GROUP.search(text.replace('"$ref":', '"":'))):
            self.report(
                path,
                f"holds {_quoted(found.group())} in a string: flagd's daemon (v0.12.6 to v0.15) substitutes "
                "evaluators with a Go regular-expression replacement, which reads a $ before a letter, "
                'digit, "_" or "{" as a group and drops it ("$flagd.timestamp" becomes ".timestamp"); move '
                "the rule holding it into the targeting of the flags that use it",
            )

    def _substitutable_name(self, name: str, path: PathKey) -> bool:
        """Whether flagd's evaluators find a ``$ref`` naming ``name``; reported when they do not."""
        if not self.published and not _EVALUATOR_NAME.fullmatch(name):
            self.report(
                path,
                f"evaluator name {_quoted(name)}: flagd's daemon finds a $ref through a regular "
                "expression built from the name (and from v0.16 in JSON text that escapes <, > and &), so "
                'use only ASCII letters, digits, "_" and "-"',
            )
            return False
        if not _PLAIN_NAME.fullmatch(name):
            self.report(
                path,
                f"evaluator name {_quoted(name)}: flagd finds a $ref by its name in JSON text, so use ASCII "
                'letters, digits and punctuation other than " and \\',
            )
            return False
        return True

    def _check_flags(self, flags: object) -> None:
        path: PathKey = ("flags",)
        if isinstance(flags, list):
            self.report(
                path, 'must be an object of flag definitions by flag key (not a list of flags with "key")'
            )
        elif not isinstance(flags, dict):
            self.report(path, f"must be an object of flag definitions by flag key, got {_describe(flags)}")
        else:
            for key, flag in flags.items():
                self._check_name(key, (*path, key), "a flag key")
                self._check_flag(flag, (*path, key))

    def _check_flag(self, flag: object, path: PathKey) -> None:
        if not isinstance(flag, dict):
            self.report(path, f"a flag is an object with state and variants, got {_describe(flag)}")
            return
        self._check_known_fields(flag, path, _FLAG_FIELDS, "a flag has")
        self._check_state(flag, (*path, "state"))
        variants = self._check_variants(flag, (*path, "variants"))
        if "defaultVariant" in flag:
            self._check_default_variant(flag["defaultVariant"], (*path, "defaultVariant"), variants)
        if "targeting" in flag:
            _TargetingChecker(self, variants).check(flag["targeting"], (*path, "targeting"))
        if "metadata" in flag:
            self._check_metadata(flag["metadata"], (*path, "metadata"), flag_set=False)

    def _check_state(self, flag: dict[str, Any], path: PathKey) -> None:
        if "state" not in flag:
            self.report(path, '"state" is required: ENABLED or DISABLED')
        elif flag["state"] not in _STATES:
            state = flag["state"]
            suggestion = _did_you_mean(state, _STATES) if isinstance(state, str) else ""
            self.report(path, f"must be ENABLED or DISABLED, got {_describe(state)}{suggestion}")

    def _check_variants(self, flag: dict[str, Any], path: PathKey) -> dict[str, Any] | None:
        """The flag's variants when they can be used to check names against, else None."""
        variants = flag.get("variants")
        if "variants" not in flag:
            self.report(path, '"variants" is required: an object of variant values by name')
            return None
        if not isinstance(variants, dict):
            self.report(path, f"must be an object of variant values by name, got {_describe(variants)}")
            return None
        if not variants:
            self.report(path, "must define at least one variant")
            return None
        first: tuple[str, str] | None = None
        for name, value in variants.items():
            value_path = (*path, name)
            self._check_name(name, value_path, "a variant name")
            self._check_selectable(name, value_path)
            kind = json_type(value)
            if kind not in _VARIANT_TYPES:
                advice = " (wrap the array in an object)" if kind == "array" else ""
                self.report(
                    value_path,
                    f"a variant is a boolean, string, number or object, got {_describe(value)}{advice}",
                )
            elif first is None:
                first = (name, kind)
            elif kind != first[1]:
                self.report(
                    value_path,
                    f"is {_a(kind)} but variant {_quoted(first[0])} is {_a(first[1])}: "
                    "all variants of a flag have the same type",
                )
        return variants

    def _check_selectable(self, name: str, path: PathKey) -> None:
        """A variant name flagd's Go daemon can select by targeting (since 2026-12-07: a set published
        before may hold one it cannot)."""
        if not self.published and (found := _UNSELECTABLE_VARIANT_CHARACTER.search(name)):
            self.report(
                path,
                f"variant name {_quoted(name)} holds {_quoted(found.group())}: flagd's daemon looks a "
                'targeting result up as its JSON encoder wrote it, which escapes <, >, &, " and \\, so '
                "targeting never selects this variant; rename it without them",
            )

    def _check_default_variant(
        self, default: object, path: PathKey, variants: Mapping[str, Any] | None
    ) -> None:
        if default is None:
            return  # null: the application's own default value is served
        if not isinstance(default, str):
            self.report(
                path,
                f"must be a variant name or null, got {_describe(default)}{self.yaml_boolean_hint(default)}",
            )
        elif variants is not None and default not in variants:
            self.report(path, f"{_quoted(default)} is not one of the variants ({_some(variants)})")


class _TargetingChecker:
    """Checks one JsonLogic targeting rule against targeting.json and flagd's semantics.

    Objects are operations only where targeting.json says so (arguments of
    operations, fractional's bucketing value and weights, string comparisons).
    JsonLogic evaluates the items of a list in an argument position, and the
    operand of "var": an object of one key there is a rule too (one of several is
    data), and a "$ref" there is substituted. A "result position" is one whose value flagd uses as the
    variant name: the rule itself, "if"'s then/else branches, fractional's bucket
    variants. Literal names there must be variants of the flag.
    """

    def __init__(
        self, validator: _FlagSetValidator, variants: Mapping[str, Any] | None, *, in_evaluator: bool = False
    ) -> None:
        self.validator = validator
        self.variants = variants  # None: unknown (an evaluator, or the flag's variants are broken)
        self.in_evaluator = in_evaluator  # checking a rule of $evaluators, not a flag's targeting

    def report(self, path: PathKey, message: str | Callable[[], str]) -> None:
        self.validator.report(path, message)

    def check(self, targeting: object, path: PathKey) -> None:
        if not isinstance(targeting, dict):
            self.report(path, f"must be a JsonLogic rule (an object), got {_describe(targeting)}")
        elif targeting:  # {} is "no targeting"
            self.rule(targeting, path, in_result=True)

    def rule(self, rule: dict[str, Any], path: PathKey, in_result: bool) -> None:
        if not rule:
            self.report(path, "an empty object is not a JsonLogic rule")
            return
        if len(rule) > 1:
            operators = _listing(tuple(_quoted(key) for key in rule))
            self.report(path, f"a JsonLogic rule has exactly one operator, this one has {operators}")
            return
        ((operator, operand),) = rule.items()
        operator_path = (*path, operator)
        if operator == "$ref":
            self.report(
                operator_path,
                '"$ref" is not allowed here; flagd\'s schema (targeting.json) takes an evaluator only as an '
                'argument of an operation, e.g. {"if": [{"$ref": "name"}, "on", "off"]}',
            )
        elif operator in self._SPECIAL_OPERATIONS:
            self._SPECIAL_OPERATIONS[operator](self, operator, operand, operator_path, in_result)
        elif operator in _ARGUMENT_COUNTS:
            self._check_argument_count(operator, operand, operator_path)
            # The arguments are checked even when there are too many or too few.
            if isinstance(operand, list):
                for index, argument in enumerate(operand):
                    self.argument(argument, (*operator_path, index), in_result=False)
        else:
            self.report(
                operator_path,
                f"unknown JsonLogic operator {_quoted(operator)}{_did_you_mean(operator, _OPERATORS)}",
            )

    def argument(self, value: object, path: PathKey, in_result: bool) -> None:
        if isinstance(value, dict):
            if "$ref" in value:
                self.reference(value, path)
            else:
                self.rule(value, path, in_result)
        elif in_result and isinstance(value, list):
            # Python's evaluator names a list result by its text, JavaScript's by its items joined.
            self.report(path, "a list is not a variant name: write the variant's name, a string")
        elif isinstance(value, list):
            # JsonLogic evaluates an array's items: a rule in one is run, and a $ref in one substituted.
            # (An object of one key is a rule there; one of several is data.)
            for index, item in enumerate(value):
                if not isinstance(item, dict) or len(item) == 1:
                    self.argument(item, (*path, index), in_result=False)
        elif in_result and isinstance(value, str | bool):
            self.variant_name(value, path)
        elif in_result and isinstance(value, float) and (value.is_integer() or "e" in repr(value)):
            # Python names 1.0 "1.0" and 1e21 "1e+21"; JavaScript "1" and "1e+21" or all its digits.
            self.report(
                path,
                f"{value!r} names a different variant in flagd's Python and JavaScript evaluators: write "
                "the variant's name, a string",
            )

    def reference(self, value: dict[str, Any], path: PathKey) -> None:
        others = [key for key in value if key != "$ref"]
        if others:
            self.report(
                path, f'a "$ref" stands alone in its object; remove {_listing(tuple(map(_quoted, others)))}'
            )
        name = value["$ref"]
        names = self.validator.evaluators
        if not isinstance(name, str):
            self.report((*path, "$ref"), f"must name an evaluator in $evaluators, got {_describe(name)}")
        elif self.in_evaluator and not self.validator.published:
            # flagd v0.12.6 to v0.15 read the "$ref" inside the substituted text as a regular-expression
            # group ({"": "internal"}); v0.16 looks for it compact, and evaluators are inlined as written.
            self.report(
                (*path, "$ref"),
                f"refers to {_quoted(name)} from inside $evaluators: flagd's daemon does not resolve "
                "references inside $evaluators, so the flags using this evaluator fail on every evaluation; "
                f"write the rule of {_quoted(name)} in its place, or refer to both evaluators from the "
                "flags' targeting",
            )
        elif name not in names:
            known = f" (defined: {_some(names)})" if names else " ($evaluators defines none)"
            self.report(
                (*path, "$ref"),
                lambda: f"no evaluator {_quoted(name)} in $evaluators{_did_you_mean(name, names) or known}",
            )

    def variant_name(self, value: str | bool, path: PathKey) -> None:
        if self.variants is None:
            return
        # flagd looks a boolean result up as the variant "true" or "false".
        name = json.dumps(value) if isinstance(value, bool) else value
        if name not in self.variants:
            self.report(path, lambda: self._not_a_variant(value, name))

    def _not_a_variant(self, value: str | bool, name: str) -> str:
        returned = (
            f"{name} selects the variant {_quoted(name)}, which" if isinstance(value, bool) else _quoted(name)
        )
        hint = self.validator.yaml_boolean_hint(value)
        return f"{returned} is not one of the variants ({_some(self.variants or {})}){hint}"

    def _check_argument_count(self, operator: str, operand: object, path: PathKey) -> None:
        fewest, most = _ARGUMENT_COUNTS[operator]
        if not isinstance(operand, list):
            self.report(
                path, f"{_quoted(operator)} takes a list of arguments, e.g. {{{_quoted(operator)}: [...]}}"
            )
        elif len(operand) < fewest or (most is not None and len(operand) > most):
            self.report(path, f"{_quoted(operator)} takes {_count(fewest, most)}, got {len(operand)}")

    def _if(self, operator: str, operand: object, path: PathKey, in_result: bool) -> None:
        self._check_argument_count(operator, operand, path)
        if isinstance(operand, list):
            # [condition, then, condition, then, ..., else]; a lone condition is its own result.
            last = len(operand) - 1
            for index, argument in enumerate(operand):
                is_branch = index % 2 == 1 or (index == last and index > 0)
                self.argument(argument, (*path, index), in_result=in_result and is_branch)

    def _var(self, operator: str, operand: object, path: PathKey, in_result: bool) -> None:
        # targeting.json accepts any operand but a "$flagd." name flagd does not inject.
        name, name_path = (
            (operand[0], (*path, 0)) if isinstance(operand, list) and operand else (operand, path)
        )
        # JsonLogic evaluates the name and the default (``["x", default]``): a rule in either is run.
        for index, item in enumerate(operand if isinstance(operand, list) else [operand]):
            if isinstance(item, dict | list):
                self.argument(item, (*path, index) if isinstance(operand, list) else path, in_result=False)
        if isinstance(name, str) and name.startswith("$flagd.") and name not in _FLAGD_PROPERTIES:
            self.report(
                name_path, f"flagd provides no {_quoted(name)}; it provides {_listing(_FLAGD_PROPERTIES)}"
            )

    def _missing(self, operator: str, operand: object, path: PathKey, in_result: bool) -> None:
        if isinstance(operand, list):
            self._data_keys(operand, path)
        else:
            self.report(path, '"missing" takes a list of data keys, e.g. {"missing": ["email"]}')

    def _missing_some(self, operator: str, operand: object, path: PathKey, in_result: bool) -> None:
        if not isinstance(operand, list) or len(operand) != 2:
            self.report(
                path, '"missing_some" takes [how many, [data keys]], e.g. {"missing_some": [1, ["a", "b"]]}'
            )
            return
        minimum, keys = operand
        if not _is_number(minimum):
            self.report((*path, 0), f"must be the number of keys needed, got {_describe(minimum)}")
        if isinstance(keys, list):
            self._data_keys(keys, (*path, 1))
        else:
            self.report((*path, 1), f"must be a list of data keys, got {_describe(keys)}")

    def _data_keys(self, keys: list[Any], path: PathKey) -> None:
        for index, key in enumerate(keys):
            if not isinstance(key, str):
                self.report((*path, index), f"must be a data key (a string), got {_describe(key)}")

    def _unary(self, operator: str, operand: object, path: PathKey, in_result: bool) -> None:
        # The argument itself or a list holding it; a longer list is literal data.
        if not isinstance(operand, list):
            self.argument(operand, path, in_result=False)
        elif len(operand) == 1:
            self.argument(operand[0], (*path, 0), in_result=False)

    def _string_comparison(self, operator: str, operand: object, path: PathKey, in_result: bool) -> None:
        if not isinstance(operand, list) or len(operand) != 2:
            self.report(
                path,
                f"{_quoted(operator)} takes 2 arguments, e.g. "
                f'{{{_quoted(operator)}: [{{"var": "email"}}, "@example.com"]}}',
            )
            return
        for index, argument in enumerate(operand):
            if isinstance(argument, dict):
                self.rule(argument, (*path, index), in_result=False)
            elif not isinstance(argument, str):
                self.report(
                    (*path, index), f"must be a string or a JsonLogic rule, got {_describe(argument)}"
                )

    def _sem_ver(self, operator: str, operand: object, path: PathKey, in_result: bool) -> None:
        if not isinstance(operand, list) or len(operand) != 3:
            self.report(
                path,
                '"sem_ver" takes [version, comparator, version], '
                'e.g. {"sem_ver": [{"var": "appVersion"}, ">=", "1.2.0"]}',
            )
            return
        for index in (0, 2):
            self._version(operand[index], (*path, index))
        if not isinstance(operand[1], str) or operand[1] not in _SEM_VER_COMPARATORS:
            self.report(
                (*path, 1),
                f"{_describe(operand[1])} is not a comparator; use {_listing(_SEM_VER_COMPARATORS)}",
            )

    def _version(self, version: object, path: PathKey) -> None:
        if isinstance(version, str):
            if len(version) > _MAX_VERSION_CHARS or not _SEM_VER.fullmatch(version):
                self.report(path, f'{_quoted(version)} is not a semantic version such as "1.2.3"')
        elif isinstance(version, dict) and list(version) == ["var"]:
            self._var("var", version["var"], (*path, "var"), in_result=False)
        else:
            self.report(
                path, f'must be a version such as "1.2.3" or {{"var": ...}}, got {_describe(version)}'
            )

    def _fractional(self, operator: str, operand: object, path: PathKey, in_result: bool) -> None:
        if not isinstance(operand, list) or not operand:
            self.report(
                path, '"fractional" takes a list of buckets, e.g. {"fractional": [["on", 10], ["off", 90]]}'
            )
            return
        first = 0
        if isinstance(operand[0], dict):
            # A leading rule computes the value hashed into a bucket (default: flag key + targeting key).
            self.rule(operand[0], (*path, 0), in_result=False)
            first = 1
        elif not isinstance(operand[0], list):
            self.report(
                (*path, 0),
                'must be a bucket ["variant", weight] or a rule computing the bucketing value, '
                f'such as {{"var": "email"}}; got {_describe(operand[0])}',
            )
            first = 1
        if len(operand) == first:
            self.report(path, '"fractional" needs at least one bucket ["variant", weight]')
        total = sum(
            self._bucket(bucket, (*path, index), in_result)
            for index, bucket in enumerate(operand[first:], first)
        )
        if total > _MAX_TOTAL_WEIGHT:
            self.report(
                path, f"the weights add up to {total}, more than flagd's limit of {_MAX_TOTAL_WEIGHT}"
            )

    def _bucket(self, bucket: object, path: PathKey, in_result: bool) -> int:
        """Checks one [variant, weight] bucket; returns its literal weight (0 when computed or wrong)."""
        if not isinstance(bucket, list) or not 1 <= len(bucket) <= 2:
            self.report(
                path, f'a bucket is ["variant", weight] (the weight defaults to 1), got {_describe(bucket)}'
            )
            return 0
        self.argument(bucket[0], (*path, 0), in_result)
        return 1 if len(bucket) == 1 else self._weight(bucket[1], (*path, 1))

    def _weight(self, weight: object, path: PathKey) -> int:
        if isinstance(weight, dict):
            # Computed weights drive time-based rollouts; flagd clamps negative results to 0.
            self.rule(weight, path, in_result=False)
            return 0
        # JSON Schema's "integer" includes 25.0, and flagd's JavaScript evaluator takes it; its Python
        # evaluator refuses the whole fractional (every user gets the default): the two would differ.
        if isinstance(weight, float) and weight.is_integer() and not self.validator.published:
            self.report(
                path,
                f"write the weight {weight!r} as {int(weight)}: flagd's Python evaluator takes only "
                "integers, and serves none of this fractional's buckets with it",
            )
            return 0
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not float(weight).is_integer():
            unquote = " (remove the quotes)" if isinstance(weight, str) and weight.strip().isdigit() else ""
            self.report(
                path,
                "a weight is a whole number (0 or more) or a JsonLogic rule computing one, "
                f"got {_describe(weight)}{unquote}",
            )
            return 0
        if weight < 0:
            self.report(path, f"the weight {weight} is negative; weights are whole numbers, 0 or more")
            return 0
        return int(weight)

    _SPECIAL_OPERATIONS: ClassVar[dict[str, Callable[[_TargetingChecker, str, Any, PathKey, bool], None]]] = {
        "if": _if,
        "var": _var,
        "missing": _missing,
        "missing_some": _missing_some,
        "!": _unary,
        "!!": _unary,
        "starts_with": _string_comparison,
        "ends_with": _string_comparison,
        "sem_ver": _sem_ver,
        "fractional": _fractional,
    }


# Every operator targeting.json knows: JsonLogic's own and flagd's custom ones.
_OPERATORS: Final = frozenset(_ARGUMENT_COUNTS) | frozenset(_TargetingChecker._SPECIAL_OPERATIONS)


def json_type(value: object) -> str:
    """The JSON type of a parsed value, by JSON's names: boolean, number, string, object, array, null."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "null" if value is None else type(value).__name__


def _is_number(value: object) -> bool:
    return json_type(value) == "number"


def _describe(value: object) -> str:
    """A value as a message shows it: scalars literally, containers by their type."""
    kind = json_type(value)
    if kind == "string":
        return f"the string {_quoted(str(value))}"
    if kind in ("object", "array"):
        return _a(kind)
    if kind in ("boolean", "number", "null"):
        return json.dumps(value)
    return _a(kind)


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _listing(names: tuple[str, ...]) -> str:
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)


def _count(fewest: int, most: int | None) -> str:
    arguments = "argument" if (most or fewest) == 1 else "arguments"
    if most is None:
        return f"at least {fewest} {arguments}"
    if most == fewest:
        return f"exactly {fewest} {arguments}"
    return f"{fewest} to {most} {arguments}"


def _some(names: Collection[str]) -> str:
    """The first few names, comma-separated, and how many more there are."""
    listed = ", ".join(itertools.islice(names, _MAX_LISTED_NAMES))
    more = len(names) - _MAX_LISTED_NAMES
    return listed + (f" and {more:,} more" if more > 0 else "")


def _did_you_mean(word: str, choices: Collection[str]) -> str:
    """`` (did you mean "x"?)`` for a near miss among ``choices``, ignoring case, else ``""``. Asked only
    while the comparison is cheap: difflib's is about quadratic in the two lengths, and 200 names of 100
    characters that share a prefix cost 0.3 s a suggestion."""
    if len(word) > _MAX_SUGGESTION_CHARS or len(choices) > _MAX_SUGGESTION_CHOICES:
        return ""
    by_lower = {choice.lower(): choice for choice in choices if len(choice) <= _MAX_SUGGESTION_CHARS}
    if len(word) * sum(map(len, by_lower)) > _MAX_SUGGESTION_WORK:
        return ""
    matches = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {_quoted(by_lower[matches[0]])}?)" if matches else ""
