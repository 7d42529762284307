"""A whole revision: every file at one commit becomes a ``DesiredState`` or is rejected.

Per-file parsing is cached on (path, blob id), so a commit that changes one
file of ten thousand parses one file. Checks that span files (duplicates,
namespaces the policy allows) run on the parsed results every time.

Everything here is bounded by ``Limits``: the number and sizes of the files are
checked from the Git tree before a blob is read, and what parsing builds is
counted per file and per revision, so a hostile push costs a bounded amount of
time and memory before it is rejected.
"""

from __future__ import annotations

import copy
import enum
import functools
import hashlib
import itertools
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from json.encoder import encode_basestring_ascii
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Any, NamedTuple

from gitops.desired.configmaps import (
    CONFIGMAP_SIZE_LIMIT,
    ConfigMapManifest,
    config_key_problem,
    dns_subdomain_problem,
    parse_configmap,
)
from gitops.desired.content import Content
from gitops.desired.documents import Usage, load_yaml
from gitops.desired.errors import ErrorTally, RevisionRejected, ValidationError
from gitops.desired.flags import (
    CANARY_WEIGHT_METADATA_KEY,
    COMMIT_METADATA_KEY,
    SOURCE_METADATA_KEY,
    FlagSet,
    evaluator_order,
    load_flag_set,
    published_flag_set,
)
from gitops.desired.limits import DEFAULT_LIMITS, Limits, setting_hint
from gitops.desired.policy import POLICY_FILE, Analysis, Policy, load_policy, shown_globs
from gitops.desired.scope import AdminScope

CONFIGMAPS_DIR = "configmaps/"
FLAGS_DIR = "flags/"
MANIFEST_SUFFIXES = (".yaml", ".yml")
FLAG_SUFFIXES = (".json", ".yaml", ".yml")
FLAG_KEY_SUFFIX = ".flagd.json"
BlobReader = Callable[[list[str]], Mapping[str, bytes]]


class ParsedFile(NamedTuple):
    items: list[ConfigMapManifest | FlagSet]
    errors: list[ValidationError]  # the first found (``MAX_FILE_ERRORS``)
    nodes: int = 0  # values parsing built: what keeping the result costs
    unlisted: int = 0  # errors found past ``errors``, counted only


def _file_unlisted(parsed: Mapping[str, ParsedFile]) -> int:
    return sum(result.unlisted for result in parsed.values())


class ParseCache:
    """Parsed files keyed on (path, blob id), least recently used out first.

    Bounded by entries, by the values the entries hold and by the bytes of the files
    they came from (a parsed file holds about what its blob did), so a stream of
    pushes of new content cannot grow a worker's memory without end.
    """

    def __init__(
        self,
        max_entries: int = 200_000,
        max_nodes: int = 2 * DEFAULT_LIMITS.max_revision_nodes,
        max_bytes: int = 2 * DEFAULT_LIMITS.max_revision_bytes,
    ) -> None:
        self._entries: OrderedDict[tuple[str, str], tuple[ParsedFile, int]] = OrderedDict()
        self.max_entries = max_entries
        self.max_nodes = max_nodes
        self.max_bytes = max_bytes
        self.nodes = 0
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._limits: Limits | None = None
        # The last revision's ConfigMap objects, by where they came from: an unchanged file gives the very
        # same objects again, so what is remembered per object (the plan's memo) holds across commits.
        self.expanded: dict[tuple[str, int, int, str, str], DesiredObject] = {}
        # Files with errors, parsed by the load under way (``put``).
        self._failed: dict[tuple[str, str], ParsedFile] = {}

    def forget_failed(self) -> None:
        """Drops the files with errors the last load kept: a rejection is remembered by its caller."""
        self._failed.clear()

    def use(self, limits: Limits) -> None:
        """Results parsed under other limits may differ: they are dropped."""
        if limits != self._limits:
            self._entries.clear()
            self._failed.clear()
            self.expanded = {}
            self.nodes = self.bytes = 0
            self._limits = limits

    def get(self, path: str, blob: str) -> ParsedFile | None:
        entry = self._entries.get((path, blob))
        if entry is None:
            if (failed := self._failed.get((path, blob))) is not None:
                self.hits += 1
                return failed
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end((path, blob))
        return entry[0]

    def put(self, path: str, blob: str, parsed: ParsedFile, size: int = 0) -> None:
        """Keeps ``parsed`` for the blob; ``size`` is the blob's length in bytes. A file with errors is
        kept apart, until ``forget_failed``: for the rest of the load (a whole load after the changes'),
        not for later ones (each error held costs up to a few KB)."""
        if parsed.errors or parsed.unlisted:
            self._failed[(path, blob)] = parsed
            return
        if (replaced := self._entries.get((path, blob))) is not None:
            self.nodes -= replaced[0].nodes
            self.bytes -= replaced[1]
        self.nodes += parsed.nodes
        self.bytes += size
        self._entries[(path, blob)] = (parsed, size)
        self._entries.move_to_end((path, blob))
        while self._entries and (
            len(self._entries) > self.max_entries
            or self.nodes > self.max_nodes
            or self.bytes > self.max_bytes
        ):
            _, (evicted, evicted_size) = self._entries.popitem(last=False)
            self.nodes -= evicted.nodes
            self.bytes -= evicted_size


ObjectKey = tuple[str, str, str]  # (cluster, namespace, name)


def _object_key(obj: DesiredObject) -> ObjectKey:
    return obj.key


@dataclass(frozen=True)
class DesiredObject:
    """One ConfigMap in one namespace of one cluster, as Git wants it."""

    namespace: str
    name: str
    content: Content
    origin: str
    line: int | None
    kind: str  # "configmap" or "flagset"
    # A manifest without a namespace goes to several targets; ``rank`` is this
    # target's place in the policy's order, which decides canary order.
    group: str
    rank: int
    flag_set: FlagSet | None = field(default=None, compare=False)
    # During a rollout, the canary-wrapped flag set published instead of Git's.
    canary_document: dict[str, Any] | None = field(default=None, compare=False)
    cluster: str = field(kw_only=True)

    @functools.cached_property
    def key(self) -> ObjectKey:
        # Asked several times per object and pass: built once (a frozen object's key never changes).
        return (self.cluster, self.namespace, self.name)

    @functools.cached_property
    def hash_line(self) -> str:
        """``json.dumps([cluster, namespace, name, content hash])``: one line of a revision's hash. Kept,
        because an unchanged file's objects are the same from commit to commit."""
        quote = encode_basestring_ascii
        cluster, namespace, name = quote(self.cluster), quote(self.namespace), quote(self.name)
        return f"[{cluster}, {namespace}, {name}, {quote(self.content.hash)}]"

    def rendered(self, *, commit: str, source: str) -> Content:
        """The content as applied at ``commit``; flag sets carry the commit inside them."""
        if self.flag_set is None:
            return self.content
        if self.canary_document is not None:
            published = stamped(self.canary_document, commit=commit, source=source)
        else:
            published = published_flag_set(self.flag_set, commit=commit, source=source)
        return Content(
            data={flag_set_key(self.name): flag_set_json(published)},
            labels=self.content.labels,
            annotations=self.content.annotations,
        )


class _HashLines(NamedTuple):
    """A revision's hash lines in key order, and each key's place among them."""

    positions: Mapping[ObjectKey, int]
    lines: tuple[str, ...]


@dataclass(frozen=True)
class DesiredState:
    """What Git wants, object by object. What is derived from the objects (grouped by key or target,
    the content hash) is built once per state, and a state made from another by replacing some objects
    in place (``with_replaced``) starts from the other's, so a one-file commit costs what it changed."""

    policy: Policy
    objects: tuple[DesiredObject, ...]

    def by_key(self) -> dict[ObjectKey, DesiredObject]:
        return self._by_key.copy()

    @functools.cached_property
    def keyed(self) -> Mapping[ObjectKey, DesiredObject]:
        """key -> object, read-only: built once per state (a plan asks on every pass)."""
        return MappingProxyType(self._by_key)

    @functools.cached_property
    def _by_key(self) -> dict[ObjectKey, DesiredObject]:
        # A dict, never handed out: copying a dict clones its table, where a mapping proxy's items
        # would each be hashed again (a tuple does not keep its hash).
        return {obj.key: obj for obj in self.objects}

    @functools.cached_property
    def key_set(self) -> frozenset[ObjectKey]:
        """Every object's key: a state made in place from another (``with_replaced``) shares the other's
        set, so whoever keeps something per key can tell by identity that the keys did not change."""
        return frozenset(self._by_key)

    @functools.cached_property
    def targets(self) -> tuple[tuple[str, str], ...]:
        """Every (cluster, namespace) an object goes to (a cached revision is asked on every pass)."""
        return tuple(self.by_target)

    @functools.cached_property
    def by_target(self) -> Mapping[tuple[str, str], tuple[DesiredObject, ...]]:
        """The objects of each (cluster, namespace), in revision order: grouped once per revision, not on
        every pass that asks."""
        grouped: dict[tuple[str, str], list[DesiredObject]] = {}
        for obj in self.objects:
            grouped.setdefault((obj.cluster, obj.namespace), []).append(obj)
        return MappingProxyType({target: tuple(found) for target, found in grouped.items()})

    @functools.cached_property
    def content_hash(self) -> str:
        """One hash over the whole revision's content: what an approval approves. Each object's line as
        ``json.dumps([cluster, namespace, name, hash])`` writes it (``hash_line``), in key order: the
        same hash as ever, so approvals recorded under it hold."""
        return hashlib.sha256("".join(self._hash_lines.lines).encode()).hexdigest()[:32]

    @functools.cached_property
    def _hash_lines(self) -> _HashLines:
        ordered = sorted(self.objects, key=_object_key)  # stable: objects with one key keep their order
        return _HashLines(
            MappingProxyType({obj.key: place for place, obj in enumerate(ordered)}),
            tuple(obj.hash_line for obj in ordered),
        )

    def with_replaced(
        self, objects: tuple[DesiredObject, ...], replaced: Mapping[ObjectKey, DesiredObject]
    ) -> DesiredState:
        """The state of ``objects``: this state's objects, in the same order and with the same keys,
        ``replaced`` (key -> new object) apart. What this state has built already is carried over and
        mended at the replaced keys instead of being built again from every object."""
        if len(objects) != len(self.objects):
            raise ValueError("a state made in place has as many objects as the state it is made from")
        by_key = self._by_key.copy()  # built by now: the check below needs it
        if not replaced.keys() <= by_key.keys():
            raise ValueError("objects replaced in place replace objects of the same keys")
        by_key.update(replaced)
        state = DesiredState(policy=self.policy, objects=objects)
        state.__dict__["_by_key"] = by_key
        computed = self.__dict__  # what else this state's cached properties have filled in
        for unchanged in ("key_set", "targets"):  # the same keys: the same targets, in the same order
            if unchanged in computed:
                state.__dict__[unchanged] = computed[unchanged]
        if "by_target" in computed:
            grouped = dict(self.by_target)
            for target in {(obj.cluster, obj.namespace) for obj in replaced.values()}:
                grouped[target] = tuple([replaced.get(obj.key, obj) for obj in grouped[target]])
            state.__dict__["by_target"] = MappingProxyType(grouped)
        kept = computed.get("_hash_lines")
        if kept is not None and len(kept.positions) == len(objects):  # one object per key
            lines = list(kept.lines)
            for key, obj in replaced.items():
                lines[kept.positions[key]] = obj.hash_line
            state.__dict__["_hash_lines"] = _HashLines(kept.positions, tuple(lines))
        return state

    @property
    def clusters(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(obj.cluster for obj in self.objects))


# Metadata Sluice writes into published flag sets; never part of Git's content.
SLUICE_METADATA_KEYS = (COMMIT_METADATA_KEY, SOURCE_METADATA_KEY, CANARY_WEIGHT_METADATA_KEY)


def stamped(document: Mapping[str, Any], *, commit: str, source: str) -> dict[str, Any]:
    """A flag-set document with its origin in the flag-set metadata, as ``published_flag_set`` does."""
    result = copy.deepcopy(dict(document))
    result["metadata"] = {
        **result.get("metadata", {}),
        COMMIT_METADATA_KEY: commit,
        SOURCE_METADATA_KEY: source,
    }
    return result


def unstamped(document: Mapping[str, Any]) -> dict[str, Any]:
    """The document as Git had it: the origin stamps (and canary markers) removed."""
    result = copy.deepcopy(dict(document))
    metadata = result.get("metadata", {})
    if not isinstance(metadata, dict):
        return result  # not Sluice's: a cluster's copy can hold anything
    kept = {k: v for k, v in metadata.items() if k not in SLUICE_METADATA_KEYS}
    if kept:
        result["metadata"] = kept
    else:
        result.pop("metadata", None)
    return result


def published_document(text: str | None) -> dict[str, Any] | None:
    """A flag set's document as a cluster holds it, without Sluice's stamps (see ``live_document``)."""
    document = live_document(text)
    if document is None:
        return None
    try:
        return unstamped(document)
    except RecursionError:  # nested within json's limit, past copy's
        return None


def published_baseline(text: str | None, limits: Limits) -> dict[str, Any] | None:
    """A flag set's document as a cluster publishes it, without Sluice's stamps, when it is one a
    repository could hold: validated as Git's are, or None. A canary and the flag catalog compute
    from it (inlining evaluators, reading variants), which assumes a valid flag set.

    ``limits`` are the ones Git's files are read within; a canary Sluice published splits each
    changed flag in two, a few levels deeper, so its document is given twice the values and room.
    """
    document = published_document(text)
    if document is None:
        return None
    canary_room = replace(
        limits,
        max_file_bytes=2 * limits.max_file_bytes,
        max_file_nodes=2 * limits.max_file_nodes,
        max_revision_nodes=2 * limits.max_revision_nodes,
        max_depth=limits.max_depth + CANARY_DEPTH,
    )
    try:
        encoded = json.dumps(document, allow_nan=False, ensure_ascii=False).encode()
    except ValueError:  # NaN and infinities are not JSON
        return None
    flag_set, _ = load_flag_set("published.json", encoded, limits=canary_room, published=True)
    return document if flag_set is not None else None


# The levels a canary adds above a flag's own targeting: its split, the "if" and its branches.
CANARY_DEPTH = 16


# A surrogate escape: JSON text can name half of a pair alone ("\ud800"), which json decodes into a
# string no encoder can write out.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def live_document(text: str | None) -> dict[str, Any] | None:
    """A JSON object a cluster holds, or None. Whoever may edit the ConfigMap can write any text
    there: not JSON, another value, JSON nested past Python's recursion limit (``[`` 100,000 times is
    100 KB), or a lone surrogate escape, which would fail every hash and write of it later."""
    if not text:
        return None
    try:
        document = json.loads(text)
        if _SURROGATE_ESCAPE.search(text):  # rare: emoji written as pairs, or a lone half
            json.dumps(document, ensure_ascii=False).encode()
    except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return None
    return document if isinstance(document, dict) else None


def flag_set_key(name: str) -> str:
    return f"{name}{FLAG_KEY_SUFFIX}"


def flag_set_json(document: Mapping[str, Any]) -> str:
    """The text Sluice publishes: indented (kubectl output and line diffs stay readable), keys sorted,
    except ``$evaluators``, listed in an order flagd resolves (``evaluator_order``): flagd substitutes
    them one after the other in the published order, so sorted names could leave a reference
    unresolved. The same as sorted when no evaluator refers to another."""
    evaluators = document.get("$evaluators")
    if not isinstance(evaluators, Mapping) or len(evaluators) < 2:
        return flag_set_json_sorted(document)
    ordered = {
        key: (
            {name: _keys_sorted(evaluators[name]) for name in evaluator_order(evaluators)}
            if key == "$evaluators"
            else _keys_sorted(document[key])
        )
        for key in sorted(document)
    }
    return json.dumps(ordered, indent=2, ensure_ascii=False) + "\n"


def flag_set_json_sorted(document: Mapping[str, Any]) -> str:
    """Every key sorted, ``$evaluators`` included: ``flag_set_json`` when no evaluator refers to another,
    and the text releases before 2026-12-04 published for every flag set."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _keys_sorted(value: Any) -> Any:
    """``value`` with every mapping's keys in sorted order, as ``json.dumps(sort_keys=True)`` writes them."""
    if isinstance(value, Mapping):
        return {key: _keys_sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_keys_sorted(item) for item in value]
    return value


def flag_set_name(path: str) -> str:
    """flags/team-a/Checkout.json -> team-a-checkout"""
    relative = PurePosixPath(path).relative_to(FLAGS_DIR.rstrip("/"))
    stem = "-".join((*relative.parent.parts, relative.stem))
    return re.sub(r"[^a-z0-9.-]+", "-", stem.lower()).strip("-.")


# What Sluice looks at in a repository: the Git listing can be restricted to these.
READ_PATHS = (POLICY_FILE, CONFIGMAPS_DIR.rstrip("/"), FLAGS_DIR.rstrip("/"))


def in_read_paths(path: str) -> bool:
    return path == POLICY_FILE or path.startswith((CONFIGMAPS_DIR, FLAGS_DIR))


def relevant(path: str) -> bool:
    return (
        path == POLICY_FILE
        or (path.startswith(CONFIGMAPS_DIR) and path.endswith(MANIFEST_SUFFIXES))
        or (path.startswith(FLAGS_DIR) and path.endswith(FLAG_SUFFIXES))
    )


def parse_file(path: str, content: bytes, limits: Limits = DEFAULT_LIMITS) -> ParsedFile:
    """The file's manifests or flag set, and its errors: the first ``MAX_FILE_ERRORS`` found, then how
    many more (``ErrorTally``)."""
    usage = Usage()
    tally = ErrorTally(path)
    if path.startswith(FLAGS_DIR):
        flag_set, _ = load_flag_set(path, content, limits=limits, usage=usage, tally=tally)
        return ParsedFile([flag_set] if flag_set else [], tally.kept, usage.nodes, tally.unlisted)
    documents, errors = load_yaml(path, content, limits=limits, usage=usage)
    tally.extend(errors)
    manifests: list[ConfigMapManifest | FlagSet] = []
    for document in documents:
        if manifest := parse_configmap(document, tally):
            manifests.append(manifest)
    return ParsedFile(manifests, tally.kept, usage.nodes, tally.unlisted)


def load_revision(
    files: Mapping[str, str],
    read_blobs: BlobReader,
    *,
    sizes: Mapping[str, int] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    cache: ParseCache | None = None,
    scope: AdminScope | None = None,
) -> DesiredState:
    """Turns the files of one commit (path -> blob id) into desired state.

    ``sizes`` (path -> bytes, from the Git tree) let the limits on file count and
    sizes reject a revision before any blob is read; without them the sizes are
    checked once the blobs are read. ``scope`` is what an administrator allowed
    the source (namespaces, analysis URLs); the repository's own policy can
    narrow it but never widen it. Without one nothing is checked against an
    administrator (offline validation). Raises ``RevisionRejected`` with every
    error found (at most ``MAX_REPORTED_ERRORS``).
    """
    return load_revision_indexed(files, read_blobs, sizes=sizes, limits=limits, cache=cache, scope=scope)[0]


def load_revision_indexed(
    files: Mapping[str, str],
    read_blobs: BlobReader,
    *,
    sizes: Mapping[str, int] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    cache: ParseCache | None = None,
    scope: AdminScope | None = None,
) -> tuple[DesiredState, RevisionIndex]:
    """``load_revision``, and the index the next commit can be loaded from (``load_revision_changes``)."""
    scope = scope if scope is not None else AdminScope()
    cache = cache if cache is not None else ParseCache()
    cache.use(limits)
    wanted = {path: blob for path, blob in files.items() if relevant(path)}
    known_sizes = sizes if sizes is not None else {}
    problems = name_problems(wanted)
    problems += size_problems({path: known_sizes.get(path, 0) for path in wanted}, limits)
    if too_many := file_count_problem([path for path in files if in_read_paths(path)], limits):
        problems.insert(0, too_many)
    if problems:
        raise RevisionRejected(problems)
    parsed, policy_content, errors = _parse_files(
        wanted, read_blobs, cache, limits, check_sizes=sizes is None
    )
    if errors:  # a limit was hit: what was parsed is partial, so cross-file checks would mislead
        raise RevisionRejected(errors)
    policy_usage = Usage()
    policy, policy_errors = load_policy(
        policy_content, limits=limits, usage=policy_usage, default_cluster=scope.default_cluster
    )
    errors = list(policy_errors)
    errors.extend(_cluster_errors(policy, scope))
    errors.extend(_analysis_url_errors(policy, scope))
    if sum(result.nodes for result in parsed.values()) + policy_usage.nodes > limits.max_revision_nodes:
        errors.append(_too_many_nodes(POLICY_FILE, limits))
    errors.extend(_file_errors(parsed))
    expansion = _expand(parsed, policy, scope, errors, limits, memo=cache.expanded)
    if errors:
        raise RevisionRejected(errors, unlisted=expansion.unlisted + _file_unlisted(parsed))
    objects = expansion.objects
    cache.expanded = {_expansion_key(obj): obj for obj in objects if obj.kind == "configmap"}
    desired = DesiredState(policy=policy, objects=tuple(objects))
    by_path: dict[str, list[DesiredObject]] = {}
    for obj in objects:
        by_path.setdefault(obj.origin, []).append(obj)
    index = RevisionIndex(
        tree={path: (blob, known_sizes.get(path, 0)) for path, blob in files.items()},
        relevant_bytes=sum(known_sizes.get(path, 0) for path in wanted),
        nodes={path: result.nodes for path, result in parsed.items()},
        policy_nodes=policy_usage.nodes,
        by_path={path: tuple(found) for path, found in by_path.items()},
        owners={obj.key: obj.origin for obj in objects},
        limits=limits,
        scope=scope,
        desired=desired,
        sized=sizes is not None,
        expanded_bytes=_content_bytes(objects),
    )
    return desired, index


@dataclass(frozen=True)
class RevisionIndex:
    """A valid revision as it was loaded, kept so that the next commit is loaded from its changed files.

    Every whole-revision check is a sum or a set kept here (file count, bytes, values parsed,
    which file defines each object), so a change of a few files is checked without visiting the rest.
    """

    tree: Mapping[str, tuple[str, int]]  # every listed file -> (blob id, size)
    relevant_bytes: int  # the sizes of the files Sluice reads, added up
    nodes: Mapping[str, int]  # each parsed file (the policy apart) -> the values parsing it built
    policy_nodes: int
    by_path: Mapping[str, tuple[DesiredObject, ...]]  # the objects each file made, in revision order
    owners: Mapping[ObjectKey, str]  # each object -> the file that defines it
    limits: Limits
    scope: AdminScope
    desired: DesiredState
    sized: bool  # the sizes came from the tree listing (else they are not known)
    expanded_bytes: int = 0  # every object's content in every target, added up (max_expanded_bytes)


FileChange = tuple[str, int] | None  # the file's new (blob id, size), or None: gone


def load_revision_changes(
    index: RevisionIndex,
    changes: Mapping[str, FileChange],
    read_blobs: BlobReader,
    *,
    limits: Limits,
    cache: ParseCache,
    scope: AdminScope,
) -> tuple[DesiredState, RevisionIndex] | None:
    """The revision ``index`` was loaded from with ``changes`` (path -> new file) made to it, loaded from
    the changed files alone: the same objects, in the same order, as ``load_revision_indexed`` gives.

    Only a change that leaves the revision valid is loaded here. None when this cannot tell: the
    policy, the limits or the scope changed, a changed file is rejected, or a whole-revision check
    fails; the caller then loads the whole tree, which reports every error in its usual order.
    """
    if not index.sized or limits != index.limits or scope != index.scope or POLICY_FILE in changes:
        return None
    if not changes:  # nothing Sluice reads changed: the very same state, so what is kept per state holds
        return index.desired, index
    tree = dict(index.tree)
    relevant_bytes = index.relevant_bytes
    for path, change in changes.items():
        gone = tree.pop(path, None)
        if relevant(path):
            relevant_bytes += (change[1] if change is not None else 0) - (gone[1] if gone is not None else 0)
        if change is not None:
            tree[path] = change
    changed = {path: change[0] for path, change in changes.items() if change is not None and relevant(path)}
    if (
        len(tree) > limits.max_files
        or relevant_bytes > limits.max_revision_bytes
        or name_problems(changed)
        or any(tree[path][1] > limits.max_file_bytes for path in changed)
    ):
        return None
    parsed = _changes_parsed(changed, read_blobs, cache, limits)
    if parsed is None:
        return None
    nodes = dict(index.nodes)  # copied whole and mended: a loop over every file would cost more
    for path in changes:
        nodes.pop(path, None)
    nodes.update((path, result.nodes) for path, result in parsed.items())
    if sum(nodes.values()) + index.policy_nodes > limits.max_revision_nodes:
        return None
    errors = _file_errors(parsed)
    known = _kept_flag_keys(index, changes, parsed)  # a changed flag set may repeat a kept one's key
    made = _expand(parsed, index.desired.policy, scope, errors, limits, memo=cache.expanded, flag_keys=known)
    replaced = [obj for path in changes for obj in index.by_path.get(path, ())]
    # _expand counted the changed files' objects alone: the revision's total is the kept files' and theirs.
    expanded_bytes = index.expanded_bytes + made.expanded_bytes - _content_bytes(replaced)
    if errors or expanded_bytes > limits.max_expanded_bytes:
        return None
    mended = _objects_after(index, changes, made.objects, limits)
    if mended is None:
        return None
    desired, by_path, owners = mended
    _remember_expansion(cache, replaced, made.objects)
    kept = (tree, relevant_bytes, nodes, index.policy_nodes, by_path, owners, limits, scope, desired)
    return desired, RevisionIndex(*kept, sized=True, expanded_bytes=expanded_bytes)


def _changes_parsed(
    changed: Mapping[str, str], read_blobs: BlobReader, cache: ParseCache, limits: Limits
) -> dict[str, ParsedFile] | None:
    """The changed files parsed; None when a limit was hit, or they hold too many errors to go on (the
    whole load then says so, in its order)."""
    cache.use(limits)
    try:
        parsed, _, errors = _parse_files(changed, read_blobs, cache, limits, check_sizes=False)
    except RevisionRejected:
        return None
    return None if errors else parsed


def _kept_flag_keys(
    index: RevisionIndex, changes: Mapping[str, FileChange], parsed: Mapping[str, ParsedFile]
) -> dict[str, tuple[str, int | None]] | None:
    """The flag keys of the flag sets the commit left as they were, each with its file and line, for a commit
    whose changed files hold a flag set (``_flags_defined_before``); None for any other commit, since
    every kept file is looked at."""
    if not any(isinstance(item, FlagSet) for result in parsed.values() for item in result.items):
        return None
    keys: dict[str, tuple[str, int | None]] = {}
    for path, objects in index.by_path.items():
        if path not in changes and objects and (flag_set := objects[0].flag_set) is not None:
            for key in flag_set.flags:
                keys.setdefault(key, (path, flag_set.key_lines.get(key)))
    return keys


def _content_bytes(objects: Iterable[DesiredObject]) -> int:
    return sum(obj.content.size for obj in objects)


def _objects_after(
    index: RevisionIndex, changes: Mapping[str, FileChange], made: list[DesiredObject], limits: Limits
) -> tuple[DesiredState, dict[str, tuple[DesiredObject, ...]], Mapping[ObjectKey, str]] | None:
    """The state, each file's objects and each object's file once the changed files made ``made``; None
    when the objects are too many or one is defined twice."""
    by_path = _by_path_changed(index.by_path, changes, made)
    objects = tuple(itertools.chain.from_iterable(by_path.values()))
    if _in_place(index.by_path, by_path, changes):
        # Each changed file makes the keys it made before: the keys stay unique and as many, every
        # object stays with its file and in its place, and the state is mended, not built again.
        return index.desired.with_replaced(objects, {obj.key: obj for obj in made}), by_path, index.owners
    owners = {key: path for key, path in index.owners.items() if path not in changes}
    if len(owners) + len(made) > limits.max_objects or any(obj.key in owners for obj in made):
        return None
    owners.update((obj.key, obj.origin) for obj in made)
    return DesiredState(policy=index.desired.policy, objects=objects), by_path, owners


def _in_place(
    before: Mapping[str, tuple[DesiredObject, ...]],
    after: Mapping[str, tuple[DesiredObject, ...]],
    changes: Mapping[str, FileChange],
) -> bool:
    """Whether every changed file makes objects of the very keys it made before, in the same order: then
    only the changed files' objects differ, each in its place. (The same files making objects keeps
    their order: ``_by_path_changed`` then mends the mapping it was given.)"""
    if after.keys() != before.keys():
        return False
    return all(
        [obj.key for obj in after[path]] == [obj.key for obj in before[path]]
        for path in changes
        if path in after
    )


def _remember_expansion(
    cache: ParseCache, dropped: Iterable[DesiredObject], made: Iterable[DesiredObject]
) -> None:
    for obj in dropped:
        if obj.kind == "configmap":
            cache.expanded.pop(_expansion_key(obj), None)
    for obj in made:
        if obj.kind == "configmap":
            cache.expanded[_expansion_key(obj)] = obj


def _by_path_changed(
    by_path: Mapping[str, tuple[DesiredObject, ...]],
    changes: Mapping[str, FileChange],
    made: list[DesiredObject],
) -> dict[str, tuple[DesiredObject, ...]]:
    """Each file's objects after ``changes``, in path order (the order a whole load makes them in)."""
    grouped: dict[str, list[DesiredObject]] = {}
    for obj in made:
        grouped.setdefault(obj.origin, []).append(obj)
    if grouped.keys() <= by_path.keys() and all(path in grouped for path in changes if path in by_path):
        # The same files make objects as before: the order stands, only their objects are new.
        return {**by_path, **{path: tuple(found) for path, found in grouped.items()}}
    kept = {path: found for path, found in by_path.items() if path not in changes}
    kept.update((path, tuple(found)) for path, found in grouped.items())
    return {path: kept[path] for path in sorted(kept)}


# Control characters (C0, DEL and C1: U+009B starts a terminal's escape sequence), surrogates (bytes
# that are not UTF-8), and the invisible format characters that reorder or hide text (a bidi override
# shows the rest of a name reversed), in errors, logs and the origin annotation alike. The zero-width
# joiner and non-joiner (U+200C, U+200D) stay: Persian and Indic words and emoji sequences hold them.
_UNPRINTABLE_NAME = re.compile(
    r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200b\u200e\u200f\u202a-\u202e\u2060-\u2069\ufeff]"
)


def shown_path(path: str) -> str:
    """A path as errors show it: bytes that are not UTF-8 and control characters escaped."""
    text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _UNPRINTABLE_NAME.sub(lambda match: match[0].encode("unicode_escape").decode("ascii"), text)


# A file's path is recorded with each change it makes (``ApplyIntent.origin``) and stamped on each
# object (``sluice.dev/origin``); a longer one failed every pass at the intents' insert.
MAX_PATH_LENGTH = 1000


def name_problems(paths: Iterable[str]) -> list[ValidationError]:
    """Files whose names are not printable UTF-8, or too long to record: they would break every log
    line, page and database row that names them, so they are rejected rather than read."""
    problems = []
    for path in sorted(paths):
        if _UNPRINTABLE_NAME.search(path):
            message = "the file name is not UTF-8 text or holds control characters; rename it"
        elif len(path) > MAX_PATH_LENGTH:
            message = f"the path is {len(path):,} characters; Sluice records at most {MAX_PATH_LENGTH:,}"
        else:
            continue
        problems.append(ValidationError(shown_path(path), None, "", message))
    return problems


def file_count_problem(paths: Iterable[str], limits: Limits) -> ValidationError | None:
    """Too many files in sluice.yaml, configmaps/ and flags/ (including those Sluice ignores there)."""
    listed = list(paths)
    if len(listed) <= limits.max_files:
        return None  # (sorted only to name the file past the limit: a whole load asks twice)
    ordered = sorted(listed)
    return ValidationError(
        shown_path(ordered[limits.max_files]),
        None,
        "",
        f"more than {limits.max_files:,} files in {POLICY_FILE}, {CONFIGMAPS_DIR} and {FLAGS_DIR}; "
        f"this one is past the limit{setting_hint('max_files')}",
    )


def size_problems(sizes: Mapping[str, int], limits: Limits) -> list[ValidationError]:
    """What the sizes of the files Sluice reads (path -> bytes) break, in path order."""
    paths = sorted(sizes)
    problems: list[ValidationError] = []
    total = 0
    for path in paths:
        size = sizes[path]
        if size > limits.max_file_bytes:
            problems.append(
                ValidationError(
                    shown_path(path),
                    None,
                    "",
                    f"the file is {size:,} bytes; files are read up to {limits.max_file_bytes:,} bytes"
                    f"{setting_hint('max_file_bytes')}",
                )
            )
        if total <= limits.max_revision_bytes < total + size:
            problems.append(
                ValidationError(
                    shown_path(path),
                    None,
                    "",
                    f"with this file the files Sluice reads add up to more than "
                    f"{limits.max_revision_bytes:,} bytes{setting_hint('max_revision_bytes')}",
                )
            )
        total += size
    return problems


def _parse_files(
    wanted: Mapping[str, str], read_blobs: BlobReader, cache: ParseCache, limits: Limits, *, check_sizes: bool
) -> tuple[dict[str, ParsedFile], bytes | None, list[ValidationError]]:
    """Every wanted file parsed (from the cache where it can be), the policy's bytes, and limit errors.
    Raises RevisionRejected once the files parsed hold more than ``MAX_PARSE_ERRORS`` errors."""
    parsed: dict[str, ParsedFile] = {}
    missing: list[str] = []
    for path, blob in wanted.items():
        if path == POLICY_FILE:
            continue
        hit = cache.get(path, blob)
        if hit is None:
            missing.append(path)
        else:
            parsed[path] = hit
    blobs_needed = [wanted[path] for path in missing]
    if POLICY_FILE in wanted:
        blobs_needed.append(wanted[POLICY_FILE])
    contents = read_blobs(blobs_needed) if blobs_needed else {}
    if check_sizes and (
        problems := size_problems({path: len(contents[wanted[path]]) for path in missing}, limits)
    ):
        return parsed, None, problems
    nodes = sum(result.nodes for result in parsed.values())
    listed = 0
    for path in sorted(missing):
        if listed > MAX_PARSE_ERRORS:
            raise RevisionRejected(
                _file_errors(parsed), unlisted=_file_unlisted(parsed), stopped=_not_parsed(path)
            )
        result = parse_file(path, contents[wanted[path]], limits)
        cache.put(path, wanted[path], result, len(contents[wanted[path]]))
        parsed[path] = result
        nodes += result.nodes
        listed += len(result.errors)
        if nodes > limits.max_revision_nodes:
            return parsed, None, [_too_many_nodes(path, limits)]
    policy_content = contents[wanted[POLICY_FILE]] if POLICY_FILE in wanted else None
    return parsed, policy_content, []


# Past this many errors in the files parsed so far, the rest are not parsed: a revision reports
# MAX_REPORTED_ERRORS, and files of a hundred errors each (``MAX_FILE_ERRORS``) at the revision's value
# limit would otherwise hold hundreds of MB of them.
MAX_PARSE_ERRORS = 1_000


def _not_parsed(path: str) -> ValidationError:
    return ValidationError(
        path,
        None,
        "",
        f"not checked, nor the files after it: those before it hold more than {MAX_PARSE_ERRORS:,} errors; "
        "mend them and push again",
    )


def _file_errors(parsed: Mapping[str, ParsedFile]) -> list[ValidationError]:
    """What parsing found wrong, file by file in path order."""
    return [error for path in sorted(parsed) for error in parsed[path].errors]


def _too_many_nodes(path: str, limits: Limits) -> ValidationError:
    return ValidationError(
        path,
        None,
        "",
        f"with this file the revision builds more than {limits.max_revision_nodes:,} values (a flag set's "
        f"$ref evaluators count as often as they are inlined){setting_hint('max_revision_nodes')}",
    )


class _TooManyObjects(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(path)
        self.path = path
        self.message = message


# Errors an expansion keeps, ten times what a rejection shows; past them errors are counted, not kept. A
# manifest without a namespace goes to each of up to 1,000 targets, and so does any mistake in it.
MAX_EXPANSION_ERRORS = 1_000


class _Expansion:
    """What ``_expand`` builds as it goes: the objects, where each key was first defined, what the limits
    count, and the errors past ``MAX_EXPANSION_ERRORS`` (``unlisted``)."""

    def __init__(self, errors: list[ValidationError], limits: Limits) -> None:
        self.errors = errors
        self.limits = limits
        self.objects: list[DesiredObject] = []
        self.seen: dict[ObjectKey, tuple[str, int | None]] = {}
        self.expanded_bytes = 0
        self.visited = 0
        self.unlisted = 0
        self._room = len(errors) + MAX_EXPANSION_ERRORS

    def report(self, error: ValidationError) -> None:
        if len(self.errors) < self._room:
            self.errors.append(error)
        else:
            self.unlisted += 1

    def visit(self, path: str) -> None:
        """Counts a (manifest, target) pair against ``max_objects``, a refused or repeated one too: each
        costs a check and maybe an error, so these are what bound the time an expansion takes."""
        if self.visited >= self.limits.max_objects:
            raise _TooManyObjects(path, _too_many(self.limits))
        self.visited += 1

    def add(self, obj: DesiredObject, field_name: str) -> None:
        self.visit(obj.origin)
        first = self.seen.get(obj.key)
        if first is not None:
            where = first[0] + (f" line {first[1]}" if first[1] else "")
            message = f"ConfigMap {obj.namespace}/{obj.name} is already defined in {where}"
            self.report(ValidationError(obj.origin, obj.line, field_name, message))
            return
        self.expanded_bytes += obj.content.size
        if self.expanded_bytes > self.limits.max_expanded_bytes:
            raise _TooManyObjects(obj.origin, _too_large(self.limits))
        self.seen[obj.key] = (obj.origin, obj.line)
        self.objects.append(obj)


def _expand(
    parsed: Mapping[str, ParsedFile],
    policy: Policy,
    scope: AdminScope,
    errors: list[ValidationError],
    limits: Limits = DEFAULT_LIMITS,
    *,
    memo: Mapping[tuple[str, int, int, str, str], DesiredObject] | None = None,
    flag_keys: Mapping[str, tuple[str, int | None]] | None = None,
) -> _Expansion:
    """Every object the parsed files make, in every target; ``memo`` holds the last revision's objects,
    reused (the same instances) where the manifest they came from is the same parsed one. ``flag_keys``:
    the flag keys files not among ``parsed`` define, and which file (a load from a commit's changes)."""
    permitted = _namespace_check(policy, scope)
    remembered = memo if memo is not None else {}
    reachable = _reachable_clusters(policy, scope)
    refused, target_errors = _refused_targets(policy, reachable, permitted)
    unnamespaced = [pair for pair in policy.target_pairs if pair[0] in reachable and pair not in refused]
    expansion = _Expansion(errors, limits)
    flag_files = dict(flag_keys or {})  # each flag key, and the flag-set file (and line) that defines it
    try:
        for path in sorted(parsed):
            for index, item in enumerate(parsed[path].items):
                if isinstance(item, FlagSet):
                    errors.extend(_flags_defined_before(path, item, flag_files, policy.flags_namespace))
                    # Published to the flags namespace of every target cluster.
                    for found in _flag_set_objects(path, item, reachable, policy.flags_namespace, permitted):
                        if isinstance(found, ValidationError):
                            expansion.report(found)
                        else:
                            expansion.add(found, "")
                    continue
                if not item.namespace:  # the first manifest that goes to the targets: refused ones are said
                    errors.extend(target_errors)
                    target_errors = []
                for rank, (cluster, namespace) in enumerate(_manifest_targets(item, unnamespaced, reachable)):
                    if problem := permitted(cluster, namespace):
                        expansion.visit(path)
                        expansion.report(ValidationError(path, item.line, "metadata.namespace", problem))
                        continue
                    known = remembered.get((path, index, rank, cluster, namespace))
                    if known is None or known.content is not item.content or known.line != item.line:
                        known = _configmap_object(path, index, item, rank, (cluster, namespace))
                    expansion.add(known, "metadata.name")
    except _TooManyObjects as too_many:
        errors.append(ValidationError(too_many.path, None, "", too_many.message))
    return expansion


def _refused_targets(
    policy: Policy, reachable: tuple[str, ...], permitted: Callable[[str, str], str | None]
) -> tuple[frozenset[tuple[str, str]], list[ValidationError]]:
    """The target namespaces sluice.yaml lists that may not be written to, left out of the expansion, and
    an error at each one the administrator's scope refuses (``load_policy`` reported those outside the
    repository's own allowedNamespaces), for when a manifest without a namespace would go there: one
    error per entry rather than one per manifest and entry. The target a policy gets when it names none
    is not here: its manifests say it, as before."""
    refused: set[tuple[str, str]] = set()
    errors = []
    for target in policy.targets:
        if target.cluster not in reachable or not target.namespace_places:
            continue
        for namespace, (field_name, line) in zip(target.namespaces, target.namespace_places, strict=True):
            if problem := permitted(target.cluster, namespace):
                refused.add((target.cluster, namespace))
                if policy.allows(namespace):
                    errors.append(ValidationError(POLICY_FILE, line, field_name, problem))
    return frozenset(refused), errors


def _flags_defined_before(
    path: str, flag_set: FlagSet, flag_files: dict[str, tuple[str, int | None]], namespace: str
) -> list[ValidationError]:
    """A flag key another flag-set file defines too: flagd serves every set of the flags namespace
    together, merged by key, so which definition a client got would depend on the order flagd read them
    in, and a canary could not say which side is the old one. Records this file's keys."""
    errors = []
    for key in flag_set.flags:
        first, first_line = flag_files.setdefault(key, (path, flag_set.key_lines.get(key)))
        if first != path:
            where = f"{first} (line {first_line})" if first_line else first
            message = (
                f"the flag {key!r} is also defined in {where}: flagd serves every flag set of {namespace} "
                "together, merged by key, so one key belongs in one file"
            )
            errors.append(ValidationError(path, flag_set.key_lines.get(key), f"flags.{key}", message))
    return errors


def _too_many(limits: Limits) -> str:
    return (
        f"with this file the revision expands to more than {limits.max_objects:,} ConfigMaps "
        f"(one per target namespace, counting those refused there or defined there twice)"
        f"{setting_hint('max_objects')}"
    )


def _too_large(limits: Limits) -> str:
    return (
        f"with this file the revision's content, counted once per target, passes "
        f"{limits.max_expanded_bytes:,} bytes{setting_hint('max_expanded_bytes')}"
    )


def _configmap_object(
    path: str, index: int, item: ConfigMapManifest, rank: int, target: tuple[str, str]
) -> DesiredObject:
    cluster, namespace = target
    return DesiredObject(
        namespace=namespace,
        name=item.name,
        content=item.content,
        origin=path,
        line=item.line,
        kind="configmap",
        group=f"{path}#{index}",
        rank=rank,
        cluster=cluster,
    )


def _expansion_key(obj: DesiredObject) -> tuple[str, int, int, str, str]:
    """Where a ConfigMap object came from: its file, the document's index in it, and its target."""
    return (obj.origin, int(obj.group.rpartition("#")[2]), obj.rank, obj.cluster, obj.namespace)


def _manifest_targets(
    item: ConfigMapManifest, unnamespaced: list[tuple[str, str]], reachable: tuple[str, ...]
) -> list[tuple[str, str]]:
    """A manifest's (cluster, namespace) targets in policy order: with its own namespace, that namespace
    in every target cluster; without, ``unnamespaced``, the policy's targets it may write to."""
    if item.namespace:
        return [(cluster, item.namespace) for cluster in reachable]
    return unnamespaced


def _flag_set_objects(
    path: str,
    flag_set: FlagSet,
    clusters: tuple[str, ...],
    namespace: str,
    permitted: Callable[[str, str], str | None],
) -> list[DesiredObject | ValidationError]:
    """The flag set in each cluster's flags namespace; one error (the first) rather than one per cluster."""
    name = flag_set_name(path)
    if problem := dns_subdomain_problem(name):
        return [ValidationError(path, None, "", f"flag set name from the file name: {problem}")]
    key = flag_set_key(name)
    if problem := config_key_problem(key):
        return [
            ValidationError(path, None, "", f"the ConfigMap key {key[:40]!r}… from the file name: {problem}")
        ]
    # The content hash covers the flags as Git has them, without the commit stamp; one text for all clusters.
    unstamped = Content(data={key: flag_set_json(flag_set.document)})
    published = unstamped.size + STAMPS_ROOM
    if published > CONFIGMAP_SIZE_LIMIT:
        message = (
            f"published (indented, with Sluice's stamps) the flag set is about {published:,} bytes; "
            f"a ConfigMap holds at most {CONFIGMAP_SIZE_LIMIT:,}: split it into several files"
        )
        return [ValidationError(path, None, "", message)]
    found: list[DesiredObject | ValidationError] = []
    for cluster in clusters:
        if problem := permitted(cluster, namespace):
            return [ValidationError(POLICY_FILE, None, "flags.namespace", problem)]
        found.append(_flag_set_object(path, name, flag_set, unstamped, cluster=cluster, namespace=namespace))
    return found


# What stamping a published flag set adds to it: its commit and source in the metadata.
STAMPS_ROOM = 256


def _reachable_clusters(policy: Policy, scope: AdminScope) -> tuple[str, ...]:
    """The policy's clusters the scope lets it name; the others are reported by ``_cluster_errors``."""
    return tuple(cluster for cluster in policy.clusters if scope.cluster_problem(cluster) is None)


def _cluster_errors(policy: Policy, scope: AdminScope) -> list[ValidationError]:
    """A policy may name only clusters that exist and that the source's scope reaches."""
    return [
        ValidationError(POLICY_FILE, target.line, target.field_name, problem)
        for target in policy.targets
        if (problem := scope.cluster_problem(target.cluster))
    ]


class _Verdict(enum.Enum):
    ALLOWED = enum.auto()
    OUTSIDE_POLICY = enum.auto()  # the repository's own allowedNamespaces
    OUTSIDE_SCOPE = enum.auto()  # the administrator's globs


def _namespace_check(policy: Policy, scope: AdminScope) -> Callable[[str, str], str | None]:
    """Why a namespace of a cluster may not be written to, or None. Whether it may is judged once per
    pair, since many objects share few namespaces; why not is written when asked and not kept, since a
    repository can name 100,000 namespaces, and each reason quotes globs."""
    allowed = shown_globs(policy.allowed_namespaces)

    @functools.cache
    def verdict(cluster: str, namespace: str) -> _Verdict:
        if not policy.allows(namespace):
            return _Verdict.OUTSIDE_POLICY
        # The administrator's list is the only thing that widens scope: a repository's "*" reaches no further.
        return _Verdict.ALLOWED if scope.reaches(namespace, cluster) else _Verdict.OUTSIDE_SCOPE

    def permitted(cluster: str, namespace: str) -> str | None:
        found = verdict(cluster, namespace)
        if found is _Verdict.OUTSIDE_POLICY:
            return f"namespace {namespace!r} is not allowed by {POLICY_FILE} (allowedNamespaces: {allowed})"
        if found is _Verdict.OUTSIDE_SCOPE:
            return scope.namespace_refusal(namespace, cluster)
        return None

    return permitted


def _analysis_url_errors(policy: Policy, scope: AdminScope) -> list[ValidationError]:
    """Analysis steps may call only URLs under the prefixes an administrator allowed the source."""
    errors = []
    for index, step in enumerate(policy.rollout.steps):
        if isinstance(step, Analysis) and (problem := scope.analysis_url_problem(step.url)):
            written = index if step.step_index is None else step.step_index
            field_name = f"rollout.steps[{written}].analysis.http.url"
            errors.append(ValidationError(POLICY_FILE, step.line, field_name, problem))
    return errors


def _flag_set_object(
    path: str, name: str, flag_set: FlagSet, content: Content, *, cluster: str, namespace: str
) -> DesiredObject:
    """The flag set published in one cluster's flags namespace."""
    return DesiredObject(
        namespace=namespace,
        name=name,
        content=content,
        origin=path,
        line=None,
        kind="flagset",
        group=path,
        rank=0,
        flag_set=flag_set,
        cluster=cluster,
    )
