"""What Sluice owns on a ConfigMap: its comparable content, and the metadata keys Sluice reserves. Pure.

``Content`` is the comparable part of an object: data, binaryData, the labels
and annotations Sluice sets, and ``immutable``. Provenance (source, commit,
content hash) lives in reserved labels and annotations beside it, which a
repository may not set itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from gitops.storable import sorted_json_utf8

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "sluice"
SOURCE_LABEL = "sluice.dev/source"
KIND_LABEL = "sluice.dev/kind"
COMMIT_ANNOTATION = "sluice.dev/commit"
CONTENT_HASH_ANNOTATION = "sluice.dev/content-hash"
ORIGIN_ANNOTATION = "sluice.dev/origin"
RESERVED_PREFIX = "sluice.dev/"


def is_reserved(key: str) -> bool:
    return key == MANAGED_BY_LABEL or key.startswith(RESERVED_PREFIX)


@dataclass(frozen=True)
class Content:
    data: Mapping[str, str] = field(default_factory=dict)
    binary_data: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    immutable: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "data": dict(sorted(self.data.items())),
            "binaryData": dict(sorted(self.binary_data.items())),
            "labels": dict(sorted(self.labels.items())),
            "annotations": dict(sorted(self.annotations.items())),
        }
        if self.immutable is not None:
            result["immutable"] = self.immutable
        return result

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Content:
        return cls(
            data=dict(value.get("data") or {}),
            binary_data=dict(value.get("binaryData") or {}),
            labels=dict(value.get("labels") or {}),
            annotations=dict(value.get("annotations") or {}),
            immutable=value.get("immutable"),
        )

    @cached_property
    def size(self) -> int:
        """UTF-8 bytes of every key and value: what one copy of this content costs, about. Cached: a
        manifest's content is one instance for all its targets and, through the parse cache, all loads."""
        return sum(
            len(key) + len(value.encode())
            for section in (self.data, self.binary_data, self.labels, self.annotations)
            for key, value in section.items()
        )

    @cached_property
    def hash(self) -> str:
        return hashlib.sha256(sorted_json_utf8(self.as_dict())).hexdigest()[:32]
