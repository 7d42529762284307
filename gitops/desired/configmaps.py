"""ConfigMap manifests under ``configmaps/``: parsed and checked the way the apiserver would.

Checking here, for the whole revision, means a bad manifest rejects the revision
before any object is applied, instead of failing halfway through an apply.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from gitops.desired.content import (
    COMMIT_ANNOTATION,
    CONTENT_HASH_ANNOTATION,
    ORIGIN_ANNOTATION,
    Content,
    is_reserved,
)
from gitops.desired.documents import Document, PathKey
from gitops.desired.errors import ErrorTally
from gitops.desired.policy import namespace_problem, suggestion, type_name

CONFIGMAP_SIZE_LIMIT = 1024 * 1024  # what the apiserver enforces on data + binaryData
ANNOTATIONS_SIZE_LIMIT = 256 * 1024
# Sluice's own annotations but the origin's path: a SHA-256 commit and a content hash, with their keys.
_STAMPS_SIZE = len(COMMIT_ANNOTATION) + 64 + len(CONTENT_HASH_ANNOTATION) + 32 + len(ORIGIN_ANNOTATION)

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+\Z")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]\Z")

TOP_LEVEL_FIELDS = ("apiVersion", "kind", "metadata", "data", "binaryData", "immutable")
METADATA_FIELDS = ("name", "namespace", "labels", "annotations")
CLUSTER_OWNED_METADATA = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "managedFields",
    "selfLink",
    "ownerReferences",
    "finalizers",
    "generateName",
)


@dataclass(frozen=True)
class ConfigMapManifest:
    """A ConfigMap as written in Git, before it is expanded to its target namespaces."""

    file: str
    line: int | None
    name: str
    namespace: str | None
    data: dict[str, str]
    binary_data: dict[str, str]  # base64 text, as in the manifest
    labels: dict[str, str]
    annotations: dict[str, str]
    immutable: bool | None

    @cached_property
    def content(self) -> Content:
        # Built once per parsed file: the parse cache hands the same manifest to
        # every later revision, so its content hash is computed once too.
        return Content(
            data=self.data,
            binary_data=self.binary_data,
            labels=self.labels,
            annotations=self.annotations,
            immutable=self.immutable,
        )


def dns_subdomain_problem(name: str) -> str | None:
    if len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        return (
            f"{name!r} is not a valid object name (lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit, at most 253)"
        )
    return None


def config_key_problem(key: str) -> str | None:
    if len(key) > 253 or not CONFIG_KEY.match(key) or key == "." or key.startswith(".."):
        return (
            f"{key!r} is not a valid key (letters, digits, '-', '_' and '.', at most 253, not '.', "
            "and not starting with '..')"
        )
    return None


def qualified_name_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix)):
        return f"{key!r} has an invalid prefix {prefix!r} (must be a DNS subdomain)"
    if not name or len(name) > 63 or not QUALIFIED_NAME.match(name):
        return f"{key!r} is not a valid key (name part: letters, digits, '-', '_', '.', at most 63)"
    return None


def label_value_problem(value: str) -> str | None:
    if value and (len(value) > 63 or not QUALIFIED_NAME.match(value)):
        return f"{value!r} is not a valid label value (letters, digits, '-', '_', '.', at most 63)"
    return None


class _Checker:
    """One document's checks. Its errors go to the file's ``tally``, which keeps the first few of the
    file's; ``failed`` says whether the document had any, kept or not."""

    def __init__(self, document: Document, tally: ErrorTally) -> None:
        self.document = document
        self.tally = tally
        self.failed = False

    def error(self, path: PathKey, message: str) -> None:
        self.failed = True
        if self.tally.full:
            self.tally.unlisted += 1  # not built: the line lookup costs, and the file lists enough
        else:
            self.tally.add(self.document.error(path, message))

    def string_map(self, value: Any, path: PathKey, *, what: str) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping of {what}, not {type_name(value)}")
            return {}
        result: dict[str, str] = {}
        for key, item in value.items():
            if not isinstance(item, str):
                hint = f'; quote it: "{_scalar_text(item)}"' if isinstance(item, bool | int | float) else ""
                self.error((*path, key), f"value must be a string, not {type_name(item)}{hint}")
                continue
            if "\x00" in item and path != ("binaryData",):  # there, it is not base64: said below
                # An escape ("\0", "\u0000") the raw-text check cannot see. The apiserver would take
                # it, but the change log (PostgreSQL) holds no U+0000 in text or JSON.
                hint = ": put binary content in binaryData" if path == ("data",) else ""
                self.error((*path, key), f"value holds U+0000 (NUL), which Sluice cannot record{hint}")
                continue
            result[key] = item
        return result


def _scalar_text(value: bool | int | float) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_configmap(document: Document, tally: ErrorTally) -> ConfigMapManifest | None:
    """The document's ConfigMap, or None when it has errors: those go to ``tally``, the file's."""
    check = _Checker(document, tally)
    manifest = document.data
    if not isinstance(manifest, dict):
        check.error((), f"a manifest must be a mapping, not {type_name(manifest)}")
        return None
    if not _is_configmap(check, manifest):
        return None
    for key in manifest:
        if key not in TOP_LEVEL_FIELDS:
            check.error((key,), f"unknown field {key!r}{suggestion(key, TOP_LEVEL_FIELDS)}")
    metadata = manifest.get("metadata")
    if not isinstance(metadata, dict):
        check.error(("metadata",), "metadata with a name is required")
        return None

    name, namespace = _check_identity(check, metadata)
    labels, annotations = _check_metadata_maps(check, metadata)
    data, binary_data = _check_payload(check, manifest)
    immutable = manifest.get("immutable")
    if immutable is not None and not isinstance(immutable, bool):
        check.error(("immutable",), f"must be true or false, not {type_name(immutable)}")

    if check.failed or name is None:
        return None
    return ConfigMapManifest(
        file=document.file,
        line=document.line_of(),
        name=name,
        namespace=namespace,
        data=data,
        binary_data=binary_data,
        labels=labels,
        annotations=annotations,
        immutable=immutable,
    )


def _is_configmap(check: _Checker, manifest: dict[str, Any]) -> bool:
    api_version, kind = manifest.get("apiVersion"), manifest.get("kind")
    if kind == "ConfigMap" and api_version == "v1":
        return True
    if kind == "Secret":
        message = "Secrets are never managed by Sluice; only v1 ConfigMap documents are allowed"
    else:
        message = f"only v1 ConfigMap documents are allowed here, found {api_version or '?'} {kind or '?'}"
    check.error(("kind",) if "kind" in manifest else (), message)
    return False


def _check_identity(check: _Checker, metadata: dict[str, Any]) -> tuple[str | None, str | None]:
    for key in metadata:
        if key in CLUSTER_OWNED_METADATA:
            check.error(("metadata", key), f"{key!r} is set by the cluster and must not be in Git")
        elif key not in METADATA_FIELDS:
            check.error(("metadata", key), f"unknown field {key!r}{suggestion(key, METADATA_FIELDS)}")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        check.error(("metadata", "name"), "a name is required")
        name = None
    elif problem := dns_subdomain_problem(name):
        check.error(("metadata", "name"), problem)
    namespace = metadata.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        check.error(("metadata", "namespace"), f"must be a string, not {type_name(namespace)}")
        namespace = None
    elif namespace is not None and (problem := namespace_problem(namespace)):
        check.error(("metadata", "namespace"), problem)
    return name, namespace


def _check_metadata_maps(check: _Checker, metadata: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    labels = check.string_map(metadata.get("labels"), ("metadata", "labels"), what="label values")
    for key, value in labels.items():
        if problem := qualified_name_problem(key) or label_value_problem(value) or _reserved(key):
            check.error(("metadata", "labels", key), problem)
    annotations = check.string_map(metadata.get("annotations"), ("metadata", "annotations"), what="strings")
    for key in annotations:
        if problem := qualified_name_problem(key) or _reserved(key):
            check.error(("metadata", "annotations", key), problem)
    # Sluice adds its own three (commit, content hash, this file's path) before the apiserver counts.
    own = _STAMPS_SIZE + len(check.document.file.encode())
    if sum(len(k) + len(v.encode()) for k, v in annotations.items()) + own > ANNOTATIONS_SIZE_LIMIT:
        check.error(
            ("metadata", "annotations"),
            f"annotations exceed {ANNOTATIONS_SIZE_LIMIT} bytes in total, with the {own} of Sluice's own",
        )
    return labels, annotations


def _check_payload(check: _Checker, manifest: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    data = check.string_map(manifest.get("data"), ("data",), what="strings")
    binary_data = check.string_map(manifest.get("binaryData"), ("binaryData",), what="base64 strings")
    size = 0
    for key, value in data.items():
        if problem := config_key_problem(key):
            check.error(("data", key), problem)
        size += len(key) + len(value.encode())
    for key, value in binary_data.items():
        if problem := config_key_problem(key):
            check.error(("binaryData", key), problem)
        if key in data:
            check.error(("binaryData", key), f"key {key!r} is also in data; a key may be in only one of them")
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            check.error(("binaryData", key), "value is not valid base64")
            continue
        size += len(key) + len(decoded)
        if (canonical := base64.b64encode(decoded).decode("ascii")) != value:
            # Go's decoder refuses excess padding, and stores padding bits that are not zero as zeros: an
            # object whose every read then differs from Git.
            shown = canonical if len(canonical) <= 40 else canonical[:40] + "…"
            check.error(
                ("binaryData", key),
                f"value is not canonical base64: write it as the apiserver does, {shown!r}",
            )
    if size > CONFIGMAP_SIZE_LIMIT:
        check.error(
            (), f"data and binaryData are {size} bytes; a ConfigMap holds at most {CONFIGMAP_SIZE_LIMIT}"
        )
    return data, binary_data


def _reserved(key: str) -> str | None:
    if is_reserved(key):
        return f"{key!r} is reserved: Sluice sets it on every object it manages"
    return None
