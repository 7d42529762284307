"""What the cluster holds now, for a plan: from the live cache where it vouches, otherwise read.

``live_view`` asks the live cache (``livestore``) for the stamps of each
namespace. Where a namespace is fresh, an object whose stamp settles it
(``gitops.plan.stamps.settles``: as Sluice applied it, and that is Git's content
now) is not read at all; every other object the plan needs is read with a GET,
or the whole namespace with one LIST when that is cheaper. A namespace that is
stale or absent from the cache is LISTed, as without a cache. So a missed
event, a restart or a relist costs reads, never a wrong plan.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gitops.cluster import livestore
from gitops.cluster.client import Cluster
from gitops.desired.revision import DesiredObject, DesiredState
from gitops.plan.stamps import LiveStamp, settles

LIST_CONCURRENCY = 8
# Past this many objects to read in a namespace, one LIST costs less than a GET each.
GET_BUDGET_PER_NAMESPACE = 64

Key = tuple[str, str]


class ReadVia(StrEnum):
    CACHE = "cache"  # objects settled by their stamp, never read
    GET = "get"  # objects read one by one
    LIST = "list"  # namespaces read whole


@dataclass
class LiveView:
    """The live objects a plan needs: those read, and those the live cache settled without a read."""

    objects: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    settled: dict[Key, LiveStamp] = field(default_factory=dict)
    reads: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ReadVia, 0))


def live_configmaps(cluster: Cluster, namespaces: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Every ConfigMap of each namespace, keyed by namespace."""
    ordered = sorted(set(namespaces))
    if not ordered:
        return {}
    with ThreadPoolExecutor(max_workers=min(LIST_CONCURRENCY, len(ordered))) as pool:
        return dict(zip(ordered, pool.map(cluster.list_configmaps, ordered), strict=True))


def live_index(live: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(namespace, name) -> object."""
    return {
        (namespace, obj["metadata"]["name"]): obj for namespace, objects in live.items() for obj in objects
    }


def live_view(
    cluster: Cluster,
    namespaces: Iterable[str],
    *,
    cluster_name: str,
    source: str,
    desired: DesiredState,
    managed: Collection[Key],
) -> LiveView:
    """What ``plan`` needs of ``namespaces`` for ``source``, reading as little as the live cache allows."""
    ordered = sorted(set(namespaces))
    cached = livestore.fresh_stamps(cluster_name, ordered)
    wanted: dict[str, list[DesiredObject]] = {}
    for obj in desired.objects:
        wanted.setdefault(obj.namespace, []).append(obj)
    view = LiveView()
    to_list: list[str] = []
    to_get: list[Key] = []
    for namespace in ordered:
        stamps = cached.get(namespace)
        if stamps is None:
            to_list.append(namespace)
            continue
        here = wanted.get(namespace, [])
        settled, unread = _settle(namespace, stamps, here, source=source, managed=managed)
        if len(unread) > GET_BUDGET_PER_NAMESPACE:
            to_list.append(namespace)
            continue
        view.settled.update(settled)
        to_get += unread
    view.objects = live_configmaps(cluster, to_list)
    for (namespace, _), found in zip(to_get, _get_each(cluster, to_get), strict=True):
        objects = view.objects.setdefault(namespace, [])
        if found is not None:
            objects.append(found)
    view.reads = {ReadVia.CACHE: len(view.settled), ReadVia.GET: len(to_get), ReadVia.LIST: len(to_list)}
    return view


def _settle(
    namespace: str,
    texts: dict[str, str],
    wanted: list[DesiredObject],
    *,
    source: str,
    managed: Collection[Key],
) -> tuple[dict[Key, LiveStamp], list[Key]]:
    """Of one fresh namespace: the objects their stamps settle, and those to read.

    To read: every wanted object not settled (a missing stamp included), and every
    object the stamps say is the source's that Git no longer has (prune or orphan).
    """
    settled: dict[Key, LiveStamp] = {}
    unread: list[Key] = []
    names = set()
    for obj in wanted:
        key = obj.key
        names.add(obj.name)
        text = texts.get(obj.name)
        stamp = LiveStamp.decode(text) if text is not None else None
        if stamp is not None and key in managed and settles(stamp, obj, source=source):
            settled[key] = stamp
        else:
            unread.append(key)
    for name, text in texts.items():
        if name not in names:
            stamp = LiveStamp.decode(text)
            if stamp is None or stamp.source == source:
                unread.append((namespace, name))
    return settled, unread


def _get_each(cluster: Cluster, keys: list[Key]) -> list[dict[str, Any] | None]:
    if not keys:
        return []
    with ThreadPoolExecutor(max_workers=min(LIST_CONCURRENCY, len(keys))) as pool:
        return list(pool.map(lambda key: cluster.get_configmap(*key), keys))
