"""A whole revision: every file at one commit becomes a ``DesiredState`` or is rejected.

Per-file parsing is cached on (path, blob id), so a commit that changes one
file of ten thousand parses one file. Checks that span files (duplicates,
namespaces the policy allows) run on the parsed results every time.
"""

from __future__ import annotations

import copy
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from gitops.content import Content
from gitops.desired.configmaps import ConfigMapManifest, dns_subdomain_problem, parse_configmap
from gitops.desired.documents import load_yaml
from gitops.desired.errors import RevisionRejected, ValidationError
from gitops.desired.flags import (
    COMMIT_METADATA_KEY,
    SOURCE_METADATA_KEY,
    FlagSet,
    load_flag_set,
    published_flag_set,
)
from gitops.desired.policy import POLICY_FILE, Analysis, Policy, load_policy
from gitops.desired.scope import AdminScope

CONFIGMAPS_DIR = "configmaps/"
FLAGS_DIR = "flags/"
MANIFEST_SUFFIXES = (".yaml", ".yml")
FLAG_SUFFIXES = (".json", ".yaml", ".yml")
FLAG_KEY_SUFFIX = ".flagd.json"

ParsedFile = tuple[list[ConfigMapManifest | FlagSet], list[ValidationError]]
BlobReader = Callable[[list[str]], Mapping[str, bytes]]


class ParseCache:
    """Parsed files keyed on (path, blob id), least recently used out first."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self._entries: OrderedDict[tuple[str, str], ParsedFile] = OrderedDict()
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def get(self, path: str, blob: str) -> ParsedFile | None:
        entry = self._entries.get((path, blob))
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end((path, blob))
        return entry

    def put(self, path: str, blob: str, parsed: ParsedFile) -> None:
        self._entries[(path, blob)] = parsed
        self._entries.move_to_end((path, blob))
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


@dataclass(frozen=True)
class DesiredObject:
    """One ConfigMap in one namespace, as Git wants it."""

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

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

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


@dataclass(frozen=True)
class DesiredState:
    policy: Policy
    objects: tuple[DesiredObject, ...]

    def by_key(self) -> dict[tuple[str, str], DesiredObject]:
        return {obj.key: obj for obj in self.objects}

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(obj.namespace for obj in self.objects))


# Metadata Sluice writes into published flag sets; never part of Git's content.
SLUICE_METADATA_KEYS = (COMMIT_METADATA_KEY, SOURCE_METADATA_KEY, "sluiceCanaryWeight")


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
    metadata = {k: v for k, v in result.get("metadata", {}).items() if k not in SLUICE_METADATA_KEYS}
    if metadata:
        result["metadata"] = metadata
    else:
        result.pop("metadata", None)
    return result


def flag_set_key(name: str) -> str:
    return f"{name}{FLAG_KEY_SUFFIX}"


def flag_set_json(document: Mapping[str, Any]) -> str:
    # Indented so that kubectl output and line diffs stay readable.
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def flag_set_name(path: str) -> str:
    """flags/team-a/Checkout.json -> team-a-checkout"""
    relative = PurePosixPath(path).relative_to(FLAGS_DIR.rstrip("/"))
    stem = "-".join((*relative.parent.parts, relative.stem))
    return re.sub(r"[^a-z0-9.-]+", "-", stem.lower()).strip("-.")


def relevant(path: str) -> bool:
    return (
        path == POLICY_FILE
        or (path.startswith(CONFIGMAPS_DIR) and path.endswith(MANIFEST_SUFFIXES))
        or (path.startswith(FLAGS_DIR) and path.endswith(FLAG_SUFFIXES))
    )


def parse_file(path: str, content: bytes) -> ParsedFile:
    if path.startswith(FLAGS_DIR):
        flag_set, errors = load_flag_set(path, content)
        return ([flag_set] if flag_set else []), errors
    documents, errors = load_yaml(path, content)
    manifests: list[ConfigMapManifest | FlagSet] = []
    for document in documents:
        manifest, problems = parse_configmap(document)
        errors.extend(problems)
        if manifest:
            manifests.append(manifest)
    return manifests, errors


def load_revision(
    files: Mapping[str, str],
    read_blobs: BlobReader,
    *,
    cache: ParseCache | None = None,
    scope: AdminScope | None = None,
) -> DesiredState:
    """Turns the files of one commit (path -> blob id) into desired state.

    ``scope`` is what an administrator allowed the source (namespaces, analysis
    URLs); the repository's own policy can narrow it but never widen it. Without
    one nothing is checked against an administrator (offline validation).
    Raises ``RevisionRejected`` with every error found.
    """
    scope = scope if scope is not None else AdminScope()
    cache = cache if cache is not None else ParseCache()
    wanted = {path: blob for path, blob in files.items() if relevant(path)}
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
    for path in missing:
        result = parse_file(path, contents[wanted[path]])
        cache.put(path, wanted[path], result)
        parsed[path] = result

    policy, errors = load_policy(contents[wanted[POLICY_FILE]] if POLICY_FILE in wanted else None)
    errors = list(errors)
    errors.extend(_analysis_url_errors(policy, scope))
    for path in sorted(parsed):
        errors.extend(parsed[path][1])
    objects = _expand(parsed, policy, scope, errors)
    if errors:
        raise RevisionRejected(errors)
    return DesiredState(policy=policy, objects=tuple(objects))


def _analysis_url_errors(policy: Policy, scope: AdminScope) -> list[ValidationError]:
    """Analysis steps may call only URLs under the prefixes an administrator allowed the source."""
    errors = []
    for index, step in enumerate(policy.rollout.steps):
        if isinstance(step, Analysis) and (problem := scope.analysis_url_problem(step.url)):
            field_name = f"rollout.steps[{index}].analysis.http.url"
            errors.append(ValidationError(POLICY_FILE, step.line, field_name, problem))
    return errors


def _expand(
    parsed: Mapping[str, ParsedFile],
    policy: Policy,
    scope: AdminScope,
    errors: list[ValidationError],
) -> list[DesiredObject]:
    def permitted(namespace: str) -> str | None:
        if not policy.allows(namespace):
            allowed = ", ".join(policy.allowed_namespaces)
            return f"namespace {namespace!r} is not allowed by {POLICY_FILE} (allowedNamespaces: {allowed})"
        # The administrator's list is the only thing that widens scope: a repository's "*" reaches no further.
        return scope.namespace_problem(namespace)

    objects: list[DesiredObject] = []
    seen: dict[tuple[str, str], tuple[str, int | None]] = {}

    def add(obj: DesiredObject, field_name: str) -> None:
        first = seen.get(obj.key)
        if first is not None:
            errors.append(
                ValidationError(
                    obj.origin,
                    obj.line,
                    field_name,
                    f"ConfigMap {obj.namespace}/{obj.name} is already defined in {first[0]}"
                    + (f" line {first[1]}" if first[1] else ""),
                )
            )
            return
        seen[obj.key] = (obj.origin, obj.line)
        objects.append(obj)

    for path in sorted(parsed):
        for index, item in enumerate(parsed[path][0]):
            if isinstance(item, ConfigMapManifest):
                targets = (item.namespace,) if item.namespace else policy.target_namespaces
                for rank, namespace in enumerate(targets):
                    if problem := permitted(namespace):
                        errors.append(ValidationError(path, item.line, "metadata.namespace", problem))
                        continue
                    content = item.content
                    add(
                        DesiredObject(
                            namespace=namespace,
                            name=item.name,
                            content=content,
                            origin=path,
                            line=item.line,
                            kind="configmap",
                            group=f"{path}#{index}",
                            rank=rank,
                        ),
                        "metadata.name",
                    )
            else:
                name = flag_set_name(path)
                if problem := dns_subdomain_problem(name):
                    errors.append(
                        ValidationError(path, None, "", f"flag set name from the file name: {problem}")
                    )
                    continue
                namespace = policy.flags_namespace
                if problem := permitted(namespace):
                    errors.append(ValidationError(POLICY_FILE, None, "flags.namespace", problem))
                    continue
                # The content hash covers the flags as Git has them, without the commit stamp.
                unstamped = Content(data={flag_set_key(name): flag_set_json(item.document)})
                add(
                    DesiredObject(
                        namespace=namespace,
                        name=name,
                        content=unstamped,
                        origin=path,
                        line=None,
                        kind="flagset",
                        group=path,
                        rank=0,
                        flag_set=item,
                    ),
                    "",
                )
    return objects
