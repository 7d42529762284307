"""The repository's own policy file, ``sluice.yaml``.

Unknown fields are errors (with a "did you mean"), because a misspelt
``selfHeal`` silently doing nothing is worse than a rejected revision.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gitops.desired.documents import Document, PathKey, load_yaml
from gitops.desired.errors import ValidationError

POLICY_FILE = "sluice.yaml"
DEFAULT_NAMESPACE = "default"

# RFC 1123 label: what Kubernetes accepts as a namespace name.
NAMESPACE_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
NAMESPACE_GLOB_PATTERN = re.compile(r"^[a-z0-9*?\[\]-]+$")


@dataclass(frozen=True)
class Policy:
    target_namespaces: tuple[str, ...] = (DEFAULT_NAMESPACE,)
    allowed_namespaces: tuple[str, ...] = ()
    prune: bool = False
    self_heal: bool = False
    flags_namespace: str = DEFAULT_NAMESPACE
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def allows(self, namespace: str) -> bool:
        return any(fnmatch.fnmatchcase(namespace, pattern) for pattern in self.allowed_namespaces)


@dataclass
class _Reader:
    """Walks a policy document against a declared shape, collecting errors."""

    document: Document
    errors: list[ValidationError] = field(default_factory=list)

    def error(self, path: PathKey, message: str) -> None:
        self.errors.append(self.document.error(path, message))

    def mapping(self, value: Any, path: PathKey, known: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping, not {type_name(value)}")
            return {}
        for key in value:
            if key not in known:
                self.error((*path, key), f"unknown field {key!r}{suggestion(key, known)}")
        return value

    def boolean(self, value: Any, path: PathKey, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(path, f"must be true or false, not {type_name(value)}")
            return default
        return value

    def string_list(
        self, value: Any, path: PathKey, check: Callable[[str], str | None]
    ) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not isinstance(value, list):
            self.error(path, f"must be a list of strings, not {type_name(value)}")
            return None
        items: list[str] = []
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.error((*path, index), f"must be a string, not {type_name(item)}")
                continue
            problem = check(item)
            if problem:
                self.error((*path, index), problem)
                continue
            if item in items:
                self.error((*path, index), f"{item!r} is listed twice")
                continue
            items.append(item)
        return tuple(items)


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


def suggestion(key: str, known: tuple[str, ...]) -> str:
    by_lower = {k.lower(): k for k in known}
    if key.lower() in by_lower:
        return f"; did you mean {by_lower[key.lower()]!r}?"
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f" (known fields: {', '.join(known)})"


def namespace_problem(name: str) -> str | None:
    if len(name) > 63 or not NAMESPACE_PATTERN.match(name):
        return f"{name!r} is not a valid namespace name (lowercase letters, digits and '-', at most 63)"
    return None


def namespace_glob_problem(pattern: str) -> str | None:
    if not NAMESPACE_GLOB_PATTERN.match(pattern):
        return f"{pattern!r} is not a namespace name or glob (letters, digits, '-', '*', '?', [...])"
    return None


TOP_LEVEL_FIELDS = ("targets", "allowedNamespaces", "prune", "selfHeal", "flags")
ExtensionReader = Callable[[_Reader, dict[str, Any]], dict[str, Any]]
# Later stages (rollout steps, approvals) register their sections here.
EXTENSIONS: dict[str, ExtensionReader] = {}


def load_policy(content: bytes | None, file: str = POLICY_FILE) -> tuple[Policy, list[ValidationError]]:
    """The policy at a commit; defaults apply when the file is missing."""
    if content is None:
        return _with_defaults(Policy()), []
    documents, errors = load_yaml(file, content)
    if errors:
        return Policy(), errors
    if len(documents) > 1:
        return Policy(), [
            ValidationError(file, documents[1].line_of(), "", "must hold a single YAML document")
        ]
    if not documents:
        return _with_defaults(Policy()), []
    return read_policy(documents[0])


def read_policy(document: Document) -> tuple[Policy, list[ValidationError]]:
    reader = _Reader(document)
    top = reader.mapping(document.data, (), TOP_LEVEL_FIELDS + tuple(EXTENSIONS))

    targets = reader.mapping(top.get("targets"), ("targets",), ("namespaces",))
    target_namespaces = reader.string_list(
        targets.get("namespaces"), ("targets", "namespaces"), namespace_problem
    )
    if target_namespaces == ():
        reader.error(("targets", "namespaces"), "must list at least one namespace")
        target_namespaces = None

    allowed = reader.string_list(top.get("allowedNamespaces"), ("allowedNamespaces",), namespace_glob_problem)
    flags = reader.mapping(top.get("flags"), ("flags",), ("namespace",))
    flags_namespace = flags.get("namespace")
    if flags_namespace is not None and (
        not isinstance(flags_namespace, str) or namespace_problem(flags_namespace)
    ):
        problem = namespace_problem(flags_namespace) if isinstance(flags_namespace, str) else None
        reader.error(("flags", "namespace"), problem or f"must be a string, not {type_name(flags_namespace)}")
        flags_namespace = None

    extra = {name: read(reader, top) for name, read in EXTENSIONS.items()}
    policy = _with_defaults(
        Policy(
            target_namespaces=target_namespaces or (DEFAULT_NAMESPACE,),
            allowed_namespaces=allowed or (),
            prune=reader.boolean(top.get("prune"), ("prune",), default=False),
            self_heal=reader.boolean(top.get("selfHeal"), ("selfHeal",), default=False),
            flags_namespace=flags_namespace or "",
            extra=extra,
        )
    )
    if allowed is not None:
        for index, namespace in enumerate(target_namespaces or ()):
            if not policy.allows(namespace):
                reader.error(
                    ("targets", "namespaces", index), f"namespace {namespace!r} is not in allowedNamespaces"
                )
        if flags_namespace and not policy.allows(flags_namespace):
            reader.error(("flags", "namespace"), f"namespace {flags_namespace!r} is not in allowedNamespaces")
    return policy, reader.errors


def _with_defaults(policy: Policy) -> Policy:
    flags_namespace = policy.flags_namespace or policy.target_namespaces[0]
    # Without an explicit list, a repository may write only where it targets.
    allowed = policy.allowed_namespaces or tuple(dict.fromkeys((*policy.target_namespaces, flags_namespace)))
    return Policy(
        target_namespaces=policy.target_namespaces,
        allowed_namespaces=allowed,
        prune=policy.prune,
        self_heal=policy.self_heal,
        flags_namespace=flags_namespace,
        extra=policy.extra,
    )
