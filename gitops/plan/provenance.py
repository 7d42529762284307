"""Provenance: the labels and annotations that tie a live object to Git, and reading them back. Pure.

Sluice applies ``manifest(...)``: content plus provenance. ``live_content``
reads back the part of a live object Sluice compares with Git.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gitops.desired.content import (
    COMMIT_ANNOTATION,
    CONTENT_HASH_ANNOTATION,
    KIND_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    ORIGIN_ANNOTATION,
    SOURCE_LABEL,
    Content,
    is_reserved,
)


def owned_keys(live: Mapping[str, Any], manager: str) -> dict[str, set[str]]:
    """Keys of data, binaryData, labels and annotations that ``manager`` applied, from managedFields."""
    owned: dict[str, set[str]] = {"data": set(), "binaryData": set(), "labels": set(), "annotations": set()}
    for entry in live.get("metadata", {}).get("managedFields") or ():
        if entry.get("manager") != manager or entry.get("operation") != "Apply":
            continue
        fields = entry.get("fieldsV1") or {}
        for section in ("data", "binaryData"):
            owned[section].update(_field_names(fields.get(f"f:{section}")))
        metadata = fields.get("f:metadata") or {}
        for section in ("labels", "annotations"):
            owned[section].update(_field_names(metadata.get(f"f:{section}")))
    return owned


def other_holders(live: Mapping[str, Any], fields: Iterable[tuple[str, str]]) -> set[str]:
    """The field managers besides Sluice's apply that hold any of ``fields`` ((section, key): data,
    binaryData, labels, annotations), from managedFields: an apply that changes one conflicts with them."""
    wanted = set(fields)
    holders: set[str] = set()
    for entry in live.get("metadata", {}).get("managedFields") or ():
        manager = entry.get("manager") or "?"
        if manager == MANAGED_BY_VALUE and entry.get("operation") == "Apply":
            continue
        held = entry.get("fieldsV1") or {}
        metadata = held.get("f:metadata") or {}
        for section, names in (
            ("data", held.get("f:data")),
            ("binaryData", held.get("f:binaryData")),
            ("labels", metadata.get("f:labels")),
            ("annotations", metadata.get("f:annotations")),
        ):
            if any((section, name) in wanted for name in _field_names(names)):
                holders.add(str(manager))
    return holders


def held_by_others(live: Mapping[str, Any]) -> dict[str, set[str]]:
    """Keys of data and binaryData that a field manager other than Sluice's apply holds (an injector, a
    controller, `kubectl edit`), from managedFields."""
    held: dict[str, set[str]] = {"data": set(), "binaryData": set()}
    for entry in live.get("metadata", {}).get("managedFields") or ():
        if entry.get("manager") == MANAGED_BY_VALUE and entry.get("operation") == "Apply":
            continue
        fields = entry.get("fieldsV1") or {}
        for section, names in held.items():
            names.update(_field_names(fields.get(f"f:{section}")))
    return held


def _field_names(fields: Mapping[str, Any] | None) -> Iterable[str]:
    return (name[2:] for name in (fields or {}) if name.startswith("f:"))


def live_content(
    live: Mapping[str, Any],
    *,
    desired_labels: Iterable[str] = (),
    desired_annotations: Iterable[str] = (),
    manager: str = MANAGED_BY_VALUE,
) -> Content:
    """The part of a live object that Sluice compares with Git.

    data and binaryData are compared whole: an extra key is drift. Of labels and
    annotations, only keys Git sets or Sluice applied before count, since other
    controllers legitimately add their own.
    """
    metadata = live.get("metadata", {})
    owned = owned_keys(live, manager)
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    label_keys = (set(desired_labels) | owned["labels"]) - {MANAGED_BY_LABEL}
    annotation_keys = set(desired_annotations) | owned["annotations"]
    return Content(
        data=dict(live.get("data") or {}),
        binary_data=dict(live.get("binaryData") or {}),
        labels={k: labels[k] for k in label_keys if k in labels and not is_reserved(k)},
        annotations={k: annotations[k] for k in annotation_keys if k in annotations and not is_reserved(k)},
        immutable=live.get("immutable"),
    )


@dataclass(frozen=True)
class Provenance:
    source: str
    commit: str
    content_hash: str
    origin: str
    kind: str = "configmap"


def manifest(namespace: str, name: str, content: Content, provenance: Provenance) -> dict[str, Any]:
    """The object Sluice applies with server-side apply: content plus provenance."""
    labels = {
        **content.labels,
        MANAGED_BY_LABEL: MANAGED_BY_VALUE,
        SOURCE_LABEL: provenance.source,
        KIND_LABEL: provenance.kind,
    }
    annotations = {
        **content.annotations,
        COMMIT_ANNOTATION: provenance.commit,
        CONTENT_HASH_ANNOTATION: provenance.content_hash,
        ORIGIN_ANNOTATION: provenance.origin,
    }
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations},
    }
    # Omitted sections release their fields, so keys removed in Git disappear.
    if content.data:
        body["data"] = dict(content.data)
    if content.binary_data:
        body["binaryData"] = dict(content.binary_data)
    if content.immutable is not None:
        body["immutable"] = content.immutable
    return body


# What Sluice writes as provenance: a Git commit (SHA-1 or SHA-256) and a content hash. Anybody who
# may edit the object can write anything there; whatever else is found was not written by Sluice.
COMMIT_PATTERN = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
CONTENT_HASH_PATTERN = re.compile(r"[0-9a-f]{32}")  # ``Content.hash``, and a workload's config hash


def live_provenance(live: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(source, commit, content hash) recorded on a live object; None where absent.

    A commit or hash that is not one (someone's edit) counts as absent: a plan then finds the
    object drifted, as it is; self-heal stamps Git's commit instead of copying the text back; and
    nothing of unbounded length reaches the columns that keep provenance.
    """
    metadata = live.get("metadata", {})
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    source = labels.get(SOURCE_LABEL) if labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE else None
    commit = annotations.get(COMMIT_ANNOTATION)
    applied_hash = annotations.get(CONTENT_HASH_ANNOTATION)
    return (
        source,
        commit if isinstance(commit, str) and COMMIT_PATTERN.fullmatch(commit) else None,
        applied_hash
        if isinstance(applied_hash, str) and CONTENT_HASH_PATTERN.fullmatch(applied_hash)
        else None,
    )


def write_holds(
    live: Mapping[str, Any] | None,
    *,
    manifest: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    before: Mapping[str, Any] | None,
) -> bool:
    """Whether the cluster's object shows that a write of ``manifest`` (content ``after``, over
    ``before``) took effect: the provenance it writes, each key it writes with its value, and Sluice
    owning none of the keys it removes. Keys other managers own are not compared: server-side apply
    keeps them beside Sluice's. A deletion (``after`` None) took effect when the object is gone."""
    if after is None:
        return live is None
    if live is None or not manifest:
        return False
    if live_provenance(live)[1:] != live_provenance(manifest)[1:]:
        return False
    written, was = Content.from_dict(after), Content.from_dict(before) if before is not None else Content()
    owned = owned_keys(live, MANAGED_BY_VALUE)
    sections = (("data", written.data, was.data), ("binaryData", written.binary_data, was.binary_data))
    for section, keys, earlier in sections:
        held = live.get(section) or {}
        if any(held.get(key) != value for key, value in keys.items()):
            return False
        if any(key in owned[section] for key in earlier.keys() - keys.keys()):
            return False
    return True


def read_as_held(live: Mapping[str, Any]) -> dict[str, str]:
    """The live object's uid and resourceVersion, as a delete's condition (``PlanItem.live_version``)."""
    metadata = live.get("metadata") or {}
    return {
        "live_uid": str(metadata.get("uid") or ""),
        "live_version": str(metadata.get("resourceVersion") or ""),
    }
