"""Another Sluice source taking an object over, between Sluice's read of it and its write."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

OTHER_SOURCE = "someone-else"


def taken_over(cluster: Any, namespace: str, name: str, *, data: dict[str, str] | None = None) -> None:
    """The object as another source applies it: its labels name that source, its content is that
    source's (``{"V": "b"}`` unless told), its fields forced into that source's field manager."""
    from gitops.desired.content import MANAGED_BY_LABEL, MANAGED_BY_VALUE, SOURCE_LABEL

    labels = {MANAGED_BY_LABEL: MANAGED_BY_VALUE, SOURCE_LABEL: OTHER_SOURCE}
    metadata = {"name": name, "namespace": namespace, "labels": labels}
    cluster.apply_configmap(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data or {"V": "b"}},
        field_manager="other-sluice",
        force=True,
    )


def taking_over_first(
    execute: Callable[[Sequence[Any]], Any], cluster: Any, namespace: str, name: str, batches: list[list[str]]
) -> Callable[[Sequence[Any]], Any]:
    """``execute`` (an ``intents_execute``) that lets another source take the object over first: the
    caller's write meets an object changed since its read. ``batches`` gets each batch's names."""

    def execute_after_a_takeover(intents: Sequence[Any]) -> Any:
        batches.append(sorted(intent.name for intent in intents))
        taken_over(cluster, namespace, name)
        return execute(intents)

    return execute_after_a_takeover
