"""Applying intents with server-side apply, many at a time. Says how each went; records nothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings

from gitops.cluster.client import WORKLOAD_KINDS, Cluster, FieldConflictError, NotFoundError
from gitops.desired.content import Content
from gitops.errors import PermanentError
from gitops.models import ApplyIntent
from gitops.vocabulary import ChangeAction


def intents_apply(cluster: Cluster, intents: Sequence[ApplyIntent]) -> list[str | None]:
    """Applies each intent, ``SLUICE_APPLY_CONCURRENCY`` at a time: for each, why it was refused, or None.

    A refusal for good (a field conflict, a 403, a 422) is an answer; a temporary
    failure (the apiserver is unreachable) raises, and the intents stay pending.
    """
    if not intents:
        return []
    concurrency = int(getattr(settings, "SLUICE_APPLY_CONCURRENCY", 16))
    with ThreadPoolExecutor(max_workers=min(concurrency, len(intents))) as pool:
        return list(pool.map(lambda intent: _apply_one(cluster, intent), intents))


def _apply_one(cluster: Cluster, intent: ApplyIntent) -> str | None:
    if intent.kind in WORKLOAD_KINDS:
        return _stamp_workload(cluster, intent)
    try:
        if (
            intent.action in (ChangeAction.DELETE, ChangeAction.REPLACE)
            or intent.recreate
            or (intent.action == ChangeAction.ROLLBACK and intent.manifest is None)
        ):
            cluster.delete_configmap(intent.namespace, intent.name)
        if intent.manifest is not None:
            applied = cluster.apply_configmap(
                intent.manifest, field_manager=settings.SLUICE_FIELD_MANAGER, force=intent.force
            )
            _drop_foreign_keys(cluster, intent, applied)
    except FieldConflictError as exc:
        return f"conflict with another field manager: {exc}"
    except PermanentError as exc:
        return str(exc)
    return None


def _stamp_workload(cluster: Cluster, intent: ApplyIntent) -> str | None:
    """A restart (or its rollback): server-side apply of the pod template's stamp, and nothing else."""
    if intent.manifest is None:
        return None
    try:
        cluster.apply_workload(intent.manifest, field_manager=settings.SLUICE_FIELD_MANAGER, force=True)
    except NotFoundError:
        return f"{intent.kind.lower()} {intent.namespace}/{intent.name} is gone"
    except PermanentError as exc:
        return str(exc)
    return None


def _drop_foreign_keys(cluster: Cluster, intent: ApplyIntent, applied: Mapping[str, Any]) -> None:
    """Self-heal also removes data keys another manager added, which apply alone leaves in place."""
    if intent.action != ChangeAction.SELF_HEAL or intent.after is None:
        return
    wanted = Content.from_dict(intent.after)
    extra_data = sorted(set(applied.get("data") or {}) - set(wanted.data))
    extra_binary = sorted(set(applied.get("binaryData") or {}) - set(wanted.binary_data))
    if extra_data or extra_binary:
        cluster.remove_configmap_keys(
            intent.namespace, intent.name, data=extra_data, binary_data=extra_binary
        )
