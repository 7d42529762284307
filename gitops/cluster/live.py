"""What the clusters hold now, for a plan: from the live cache where it vouches, otherwise read.

Reads go per cluster, several at a time, each cluster on its own pool. A
cluster that does not answer, answers with errors or refuses Sluice's
credentials is reported as unreachable, with why, and its namespaces are left
out; the other clusters' reads are not held up by it. Every read has its
connect and read timeouts, and all of a pass's reads a deadline
(``SLUICE_CLUSTER_LIST_DEADLINE``): a cluster whose reads are not all back by
then is unreachable for this pass.

``live_configmaps`` LISTs every target namespace. ``live_view`` first asks the
live cache (``livestore``) for the stamps of each (cluster, namespace): only of
those written since the last pass, whose stamps the settle memo keeps with the
version they were stored at (``fresh_stamps_since``). Where a namespace is
fresh, an object whose stamp settles it (``gitops.plan.stamps.settles``: as
Sluice applied it, and that is Git's content now) is not read at all; every
other object the plan needs is read with a GET, or the whole namespace with one
LIST when that is cheaper. A namespace that is
stale or absent from the cache is LISTed, as without a cache. So a missed
event, a restart or a relist costs reads, never a wrong plan; and a cluster
that fails any read is unreachable for the pass, whatever its cache vouched for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from django.conf import settings

from gitops.cluster import livestore, pools
from gitops.cluster.client import WORKLOAD_KINDS, Cluster
from gitops.cluster.clients import clients, get_cluster
from gitops.desired.revision import DesiredState, ObjectKey
from gitops.errors import GitopsError, TemporaryError
from gitops.plan.stamps import LiveStamp, SettleMemo

LIST_CONCURRENCY = 8
DEFAULT_LIST_DEADLINE_SECONDS = 60.0
# Past this many objects to read in a namespace, one LIST costs less than a GET each.
GET_BUDGET_PER_NAMESPACE = 64
Target = tuple[str, str]  # (cluster, namespace)
Connect = Callable[[str], Cluster]


class ReadVia(StrEnum):
    CACHE = "cache"  # objects settled by their stamp, never read
    GET = "get"  # objects read one by one
    LIST = "list"  # namespaces read whole


@dataclass
class LiveState:
    """The live objects a plan needs, keyed by (cluster, namespace); the objects the live cache
    settled without a read; each cluster that could not be read (why); and how many reads of each kind."""

    objects: dict[Target, list[dict[str, Any]]] = field(default_factory=dict)
    unreachable: dict[str, GitopsError] = field(default_factory=dict)
    settled: dict[ObjectKey, LiveStamp] = field(default_factory=dict)
    reads: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ReadVia, 0))
    # Objects read one by one and not found, and the namespaces read whole.
    absent: set[ObjectKey] = field(default_factory=set)
    listed: set[Target] = field(default_factory=set)

    def reasons(self) -> dict[str, str]:
        return {cluster: str(error) for cluster, error in self.unreachable.items()}

    def kept(self, cluster: str, read: _Read, objects: list[dict[str, Any]]) -> None:
        """What one read found."""
        self.objects.setdefault((cluster, read.namespace), []).extend(objects)
        if not read.name:
            self.listed.add((cluster, read.namespace))
        elif not objects:
            self.absent.add((cluster, read.namespace, read.name))

    def drop_unreachable(self) -> None:
        """Keeps nothing of a cluster any of whose reads failed."""
        down = self.unreachable
        if not down:  # nearly every pass: a no-op's 10,000 settled objects are not copied
            return
        self.objects = {target: objects for target, objects in self.objects.items() if target[0] not in down}
        self.settled = {key: stamp for key, stamp in self.settled.items() if key[0] not in down}
        self.absent = {key for key in self.absent if key[0] not in down}
        self.listed = {target for target in self.listed if target[0] not in down}

    def index(self) -> dict[ObjectKey, dict[str, Any]]:
        """(cluster, namespace, name) -> object, of the objects read."""
        return {
            (cluster, namespace, obj["metadata"]["name"]): obj
            for (cluster, namespace), objects in self.objects.items()
            for obj in objects
        }


@dataclass(frozen=True)
class _Read:
    """One read: a whole namespace (one LIST) or, with a name, one object (one GET)."""

    namespace: str
    name: str = ""

    def run(self, client: Cluster) -> list[dict[str, Any]]:
        if not self.name:
            return client.list_configmaps(self.namespace)
        found = client.get_configmap(self.namespace, self.name)
        return [] if found is None else [found]


def live_configmaps(targets: Iterable[Target], *, connect: Connect = get_cluster) -> LiveState:
    """Every ConfigMap of each target namespace; clusters that cannot be read are reported, not raised."""
    state = LiveState()
    work = {
        cluster: [_Read(namespace) for namespace in namespaces]
        for cluster, namespaces in _by_cluster(targets).items()
    }
    reachable = _reachable(state, work, connect)
    _read_all(state, {cluster: work[cluster] for cluster in reachable}, reachable)
    return state


def live_view(
    targets: Iterable[Target],
    *,
    source: str,
    desired: DesiredState,
    managed: frozenset[ObjectKey],
    connect: Connect = get_cluster,
    memo: SettleMemo | None = None,
) -> LiveState:
    """What ``plan`` needs of ``targets`` for ``source``, reading as little as the live cache allows.

    ``memo`` remembers how the last pass settled each namespace: the same stamps, objects and
    inventory settle the same way, so an unchanged namespace costs comparisons, not a decode per object.
    """
    settling = (memo or SettleMemo()).begin(source, managed)
    by_cluster = _by_cluster(targets)
    state = LiveState()
    reachable = _reachable(state, by_cluster, connect)
    wanted = desired.by_target
    work: dict[str, list[_Read]] = {}
    for cluster in reachable:
        namespaces = by_cluster[cluster]
        # Only the namespaces written since the last pass come with their stamps: the others' are kept.
        kept = settling.kept_versions(cluster)
        cached = livestore.fresh_stamps_since(cluster, namespaces, kept, server=reachable[cluster].server)
        reads = work.setdefault(cluster, [])
        for namespace in namespaces:
            stamps = cached.get(namespace)
            if stamps is None:
                reads.append(_Read(namespace))
                continue
            here = wanted.get((cluster, namespace), ())
            settled, unread = settling.settle(cluster, namespace, stamps.texts, here, version=stamps.version)
            if len(unread) > GET_BUDGET_PER_NAMESPACE:
                reads.append(_Read(namespace))
                continue
            state.settled.update(settled)
            reads += (_Read(namespace, name) for name in unread)
    settling.finish()
    _read_all(state, work, reachable)
    return state


def _by_cluster(targets: Iterable[Target]) -> dict[str, list[str]]:
    by_cluster: dict[str, list[str]] = {}
    for cluster, namespace in sorted(set(targets)):
        by_cluster.setdefault(cluster, []).append(namespace)
    return by_cluster


def _reachable(state: LiveState, clusters: Iterable[str], connect: Connect) -> dict[str, Cluster]:
    """The clients of ``clusters`` worth asking; the others go to ``state.unreachable``.

    Not one: a cluster not registered any more, or whose kubeconfig cannot be read,
    and one that failed a moment ago (``clients.recently_unreachable``), even if
    the live cache still vouches for it: its objects could not be written anyway.
    """
    reachable: dict[str, Cluster] = {}
    for cluster in clusters:
        try:
            client = connect(cluster)
        except GitopsError as exc:
            state.unreachable[cluster] = exc
            clients.mark_unreachable(cluster, exc)
            continue
        if (recent := clients.recently_unreachable(cluster)) is not None:
            state.unreachable[cluster] = recent
            continue
        reachable[cluster] = client
    return reachable


def _read_all(state: LiveState, work: dict[str, list[_Read]], reachable: dict[str, Cluster]) -> None:
    """Runs ``work`` (cluster -> reads) into ``state``, each cluster on its own pool, all within the
    deadline; a cluster any of whose reads fails or is late is unreachable, and nothing of it is kept."""
    deadline = float(getattr(settings, "SLUICE_CLUSTER_LIST_DEADLINE", DEFAULT_LIST_DEADLINE_SECONDS))
    started = time.monotonic()
    futures: list[tuple[str, _Read, Future[list[dict[str, Any]]]]] = []
    finished: set[Future[list[dict[str, Any]]]] = set()
    try:
        for cluster, reads in work.items():
            # A pool per cluster: a silent cluster's reads never queue up in front of another's.
            pool = pools.pool(cluster, "read", LIST_CONCURRENCY)
            futures += [(cluster, read, pool.submit(read.run, reachable[cluster])) for read in reads]
        if futures:
            remaining = max(0.0, deadline - (time.monotonic() - started))
            finished = wait_for([future for _, _, future in futures], timeout=remaining).done
    finally:
        # Never wait for a read past the deadline: its thread ends with its own read timeout. A cluster
        # that was late gets a fresh pool, so the next pass does not queue behind threads still blocked.
        late = {cluster for cluster, _, future in futures if not future.cancel() and future not in finished}
        for cluster in late:
            pools.forget(cluster, "read")
    failed: dict[str, GitopsError] = {}
    for cluster, read, future in futures:
        state.reads[ReadVia.GET if read.name else ReadVia.LIST] += 1
        if cluster in failed:
            continue
        outcome = _outcome(cluster, future if future in finished else None, deadline)
        if isinstance(outcome, GitopsError):
            failed[cluster] = outcome
        else:
            state.kept(cluster, read, outcome)
    for cluster, error in failed.items():
        state.unreachable[cluster] = error
        clients.mark_unreachable(cluster, error)
    state.drop_unreachable()
    state.reads[ReadVia.CACHE] = len(state.settled)


def _outcome(
    cluster: str, future: Future[list[dict[str, Any]]] | None, deadline: float
) -> list[dict[str, Any]] | GitopsError:
    """One read's objects, or why its cluster is unreachable; ``future`` is None when it was late."""
    if future is None:
        return TemporaryError(f"cluster {cluster} did not answer its reads within {deadline:.0f}s")
    error = future.exception()
    if error is None:
        return future.result()
    if not isinstance(error, GitopsError):
        raise error
    return error


# (cluster, kind, namespace, name): a ConfigMap's kind is "ConfigMap", a workload's its own.
ObjectAddress = tuple[str, str, str, str]


@dataclass
class ReadOneByOne:
    """What ``objects_read_one_by_one`` found: the objects there, the addresses whose read was refused
    (nothing can be told of them), and the clusters that did not answer."""

    found: dict[ObjectAddress, dict[str, Any]] = field(default_factory=dict)
    refused: set[ObjectAddress] = field(default_factory=set)
    waiting: set[str] = field(default_factory=set)

    def known(self, address: ObjectAddress) -> bool:
        """Whether the read told what is there (an object, or none)."""
        return address not in self.refused and address[0] not in self.waiting


def objects_read_one_by_one(addresses: Iterable[ObjectAddress]) -> ReadOneByOne:
    """What the clusters hold at ``addresses``, each object with a GET. For a few objects outside what
    a pass reads: a cluster that refuses or fails one of these reads is not marked as down, so its other
    targets are read and written as usual."""
    read = ReadOneByOne()
    found, waiting = read.found, read.waiting
    for address in sorted(set(addresses)):
        cluster, kind, namespace, name = address
        if cluster in waiting:
            continue
        try:
            client = get_cluster(cluster)
            live = (
                client.get_workload(kind, namespace, name)
                if kind in WORKLOAD_KINDS
                else client.get_configmap(namespace, name)
            )
        except TemporaryError:
            waiting.add(cluster)
            continue
        except GitopsError:  # refused, or not registered any more: nothing here can tell
            read.refused.add(address)
            continue
        if live is not None:
            found[address] = live
    return read
