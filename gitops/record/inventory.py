"""The inventory: what Sluice applied for each source, so that prune knows what is its own to delete."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

from django.db.models import Q
from django.utils import timezone

from gitops import caches
from gitops.models import ApplyIntent, InventoryVersion, ManagedObject, Source
from gitops.prepared import PreparedSelect

log = logging.getLogger(__name__)

CONFIGMAP = "ConfigMap"  # the inventory is of ConfigMaps: what prune may delete

_INVENTORY_VERSION: PreparedSelect[int] = PreparedSelect(
    lambda source_id: InventoryVersion.objects.filter(source_id=source_id).values_list("version", flat=True)[
        :1
    ],
    int,
)


def managed_keys(source: Source) -> frozenset[tuple[str, str, str]]:
    """(cluster, namespace, name) of every object Sluice applied for the source.

    The worker keeps the last set it read with the inventory's version (bumped by the database on
    every change to the keys): while the version holds, one number is read instead of every row, and
    the same set object comes back, which later comparisons of it answer by identity.
    """
    version = _INVENTORY_VERSION.first(source.pk)
    cache = caches.for_source(source.pk)
    if version is not None and cache.inventory is not None and cache.inventory[0] == version:
        return cache.inventory[1]
    # The version is read first: a write between the two reads makes the set newer than its version,
    # so the next pass reads it again; never the other way round.
    keys = frozenset(ManagedObject.objects.filter(source=source).values_list("cluster", "namespace", "name"))
    cache.inventory = (version, keys) if version is not None else None
    return keys


def inventory_targets(
    source_id: int, inventory: frozenset[tuple[str, str, str]]
) -> frozenset[tuple[str, str]]:
    """The (cluster, namespace) pairs of ``inventory``: found again only when the set is another one
    (``managed_keys`` gives back the same set while the inventory's version holds)."""
    cache = caches.for_source(source_id)
    if cache.inventory_targets is not None and cache.inventory_targets[0] is inventory:
        return cache.inventory_targets[1]
    targets = frozenset((cluster, namespace) for cluster, namespace, _ in inventory)
    cache.inventory_targets = (inventory, targets)
    return targets


def managed_targets(source: Source) -> set[tuple[str, str]]:
    """Every (cluster, namespace) where Sluice applied something for the source."""
    return set(ManagedObject.objects.filter(source=source).values_list("cluster", "namespace").distinct())


def inventory_forget_gone(
    source: Source, gone: Collection[tuple[str, str, str]], *, why: str = "gone from the cluster and Git"
) -> None:
    """Drops the entries of objects (cluster, namespace, name) a read found gone that Git no longer has:
    nothing is left to prune, and planning would read each again on every pass (the live cache has no
    stamp of it, so a missing stamp cannot say it is gone, see ``plan.stamps.settle_namespace``). So
    are objects taken over (their Sluice labels removed) that Git no longer has: they are not Sluice's
    to prune any more."""
    if not gone:
        return
    condition = Q()
    for cluster, namespace, name in gone:
        condition |= Q(cluster=cluster, namespace=namespace, name=name, kind=CONFIGMAP)
    dropped, _ = ManagedObject.objects.filter(condition, source=source).delete()
    shown = ", ".join("/".join(key) for key in sorted(gone)[:5])
    log.info("source %s: dropped %d inventory entries of objects %s: %s", source.name, dropped, why, shown)


def inventory_update(applied: Sequence[ApplyIntent]) -> None:
    """Records what applied intents left in the cluster: one query for the deletes, batches for the rest."""
    now = timezone.now()
    deleted = [intent for intent in applied if intent.manifest is None]
    present = [intent for intent in applied if intent.manifest is not None]
    if deleted:
        condition = Q()
        for intent in deleted:
            # The intent's source's row only: another source may hold the name now (taken over since).
            condition |= Q(
                source_id=intent.source_id,
                cluster=intent.cluster,
                namespace=intent.namespace,
                name=intent.name,
                kind=intent.kind,
            )
        ManagedObject.objects.filter(condition).delete()
    if present:
        # Copied from the intents' rows in PostgreSQL: no model per object, one query for any number.
        ManagedObject.record_applied([intent.pk for intent in present], at=now)
