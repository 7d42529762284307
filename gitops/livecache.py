"""The live-cache process (``python manage.py gitops live-cache``): watches, stamps in Redis, drift wakes.

One process watches every cluster that sources target or hold objects in: the
default cluster always, and each registered one (``gitops add-cluster``) a
source's targets name or the inventory holds ConfigMaps in, re-read every
``SLUICE_LIVE_CACHE_RESCAN_SECONDS``. Each cluster has its own lease in Redis
(another process waits as that cluster's standby and takes over when the lease
runs out) and its own informers (``gitops.cluster.informer``) over the ConfigMaps
labelled ``app.kubernetes.io/managed-by=sluice``, connecting through
``gitops.cluster.clients.get_cluster(name)``: one for every namespace of the
cluster, or, where RBAC grants no cluster-wide read (``WatchScope``), one for each
namespace the inventory holds there. It keeps each object's stamp in Redis, where
planning reads it (``gitops.cluster.live``). A cluster that does not answer or
refuses only leaves its own namespaces stale: the others' informers go on.

When an object changes away from what Sluice applied (``stamps.sources_to_wake``),
in any cluster, the source it belongs to (whose inventory holds it) is reconciled at once, through
``gitops.schedule``; a burst of events makes one reconcile, since a source
already queued is not queued again. Sluice's own writes leave objects as applied
and wake nobody.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple, TypeVar

import redis
from django.conf import settings
from django.db import DatabaseError, close_old_connections

from gitops import schedule
from gitops.cluster.client import Cluster, ReadForbidden
from gitops.cluster.clients import clients, default_cluster_name, get_cluster
from gitops.cluster.informer import DELETED, ConfigMapInformer, WatchOptions
from gitops.cluster.livestore import LEASE_SECONDS, LiveStore, deleted_at, lease_held, stored_clusters
from gitops.desired.content import MANAGED_BY_LABEL, MANAGED_BY_VALUE
from gitops.errors import TemporaryError
from gitops.heartbeat import heartbeat_touch
from gitops.memory import limit_malloc_arenas, tune_garbage_collector
from gitops.models import ManagedObject, Source
from gitops.plan.stamps import LiveStamp, sources_to_wake, stamp_of
from gitops.record.inventory import CONFIGMAP
from gitops.vocabulary import SYSTEM_ACTOR

log = logging.getLogger("gitops.livecache")
T = TypeVar("T")

LABEL_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
ALL_NAMESPACES = ""  # an informer's namespace that stands for every namespace of the cluster
RENEW_SECONDS = LEASE_SECONDS / 3
# Redis's run id changing this often (``LiveCache._redis_restarted``) is taken for several servers behind
# one address (a proxy's frontends), not for restarts: the check is turned off rather than end every term.
RUN_CHANGES_TRUSTED, RUN_CHANGES_WINDOW_SECONDS = 3, 600.0
# How often a live-cache process looks in Redis for clusters stored but watched by nobody: one SCAN
# of every key Redis holds, so not at each rescan; what it finds is dropped (``LiveCaches.sweep``).
SWEEP_SECONDS = 300.0
# Idle connections kept per cluster's client: each watch holds one (one per namespace, where a
# cluster cannot be watched whole).
WATCH_POOL_SIZE = 4096


class WatchScope(StrEnum):
    """How the live cache watches a cluster (``SLUICE_LIVE_CACHE_SCOPE``)."""

    AUTO = "auto"  # one watch for the cluster; one per namespace where RBAC refuses that
    CLUSTER = "cluster"  # one watch for the cluster, always
    NAMESPACE = "namespace"  # one watch per namespace the inventory holds ConfigMaps in


class LeaseLost(TemporaryError):
    """Another live-cache process holds the cluster's lease now; this one must stop writing."""


@dataclass(frozen=True)
class LiveCacheOptions:
    stale_seconds: float = 30.0
    watch_seconds: int = 10
    relist_seconds: float = 600.0
    rescan_seconds: float = 5.0
    scope: WatchScope = WatchScope.AUTO
    scope_retry_seconds: float = 300.0

    @classmethod
    def from_settings(cls) -> LiveCacheOptions:
        options = cls(
            stale_seconds=float(getattr(settings, "SLUICE_LIVE_CACHE_STALE_SECONDS", cls.stale_seconds)),
            watch_seconds=int(getattr(settings, "SLUICE_LIVE_CACHE_WATCH_SECONDS", cls.watch_seconds)),
            relist_seconds=float(getattr(settings, "SLUICE_LIVE_CACHE_RELIST_SECONDS", cls.relist_seconds)),
            rescan_seconds=float(getattr(settings, "SLUICE_LIVE_CACHE_RESCAN_SECONDS", cls.rescan_seconds)),
            scope=_scope(str(getattr(settings, "SLUICE_LIVE_CACHE_SCOPE", cls.scope))),
            scope_retry_seconds=float(
                getattr(settings, "SLUICE_LIVE_CACHE_SCOPE_RETRY_SECONDS", cls.scope_retry_seconds)
            ),
        )
        if options.scope_retry_seconds < 1:
            raise ValueError("SLUICE_LIVE_CACHE_SCOPE_RETRY_SECONDS must be at least 1")
        # A watch that ends on time renews freshness; it must end well before freshness runs out.
        if options.watch_seconds + 5 >= options.stale_seconds:
            raise ValueError(
                "SLUICE_LIVE_CACHE_WATCH_SECONDS must be at least 5 s below SLUICE_LIVE_CACHE_STALE_SECONDS"
            )
        return options


def _scope(text: str) -> WatchScope:
    try:
        return WatchScope(text)
    except ValueError:
        choices = ", ".join(scope.value for scope in WatchScope)
        raise ValueError(f"SLUICE_LIVE_CACHE_SCOPE must be one of {choices}, not {text!r}") from None


def watched_targets(only: str | None = None) -> dict[str, set[str]]:
    """The namespaces to watch, per cluster: the default cluster and every registered one that a
    source targets or the inventory holds ConfigMaps in (``only``: that cluster alone).

    The namespaces are those the inventory holds ConfigMaps in. A namespace a source
    has not applied anything to yet is not watched: planning reads it, as it must
    for the first apply anyway, and the next rescan adds it. A cluster the
    inventory names but that is no longer registered is left out.
    """
    close_old_connections()
    known = {default_cluster_name(), *clients.refresh()}  # the registry, read again: one query
    wanted: dict[str, set[str]] = {default_cluster_name(): set()}
    for clusters in Source.objects.values_list("target_clusters", flat=True):
        for cluster in clusters or ():
            wanted.setdefault(str(cluster), set())
    rows = ManagedObject.objects.filter(kind="ConfigMap").values_list("cluster", "namespace").distinct()
    for cluster, namespace in rows:
        wanted.setdefault(cluster, set()).add(namespace)
    if only is not None:
        return {only: wanted.get(only, set())}
    return {cluster: namespaces for cluster, namespaces in wanted.items() if cluster in known}


# -- waking sources -------------------------------------------------------------------------


WAKE_RETRY_SECONDS = 2.0
WAKER_DRAIN_SECONDS = 10.0  # how long a stopping process waits for the wakes still queued


class Wake(NamedTuple):
    """A change to an object that may wake ``source``: only one its inventory holds does."""

    source: str
    cluster: str
    namespace: str
    name: str


class Waker:
    """Reconciles sources whose objects changed, from one thread (one database connection).

    Labels anyone may write do not make an object a source's: a ConfigMap a tenant labels with a
    source's name, and edits in a loop, would reconcile that source in a loop. Only a change to an
    object the source's inventory holds (what Sluice applied for it) wakes it; the others wait for its
    poll, whose plan reports them as not the source's."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.pending: queue.Queue[Wake] = queue.Queue()

    def wake(self, wakes: Iterable[Wake]) -> None:
        for each in wakes:
            self.pending.put(each)

    def run(self) -> None:
        """Wakes what is asked until ``stop``, and then what is still queued: the caches store events
        until their leases go, after the process was told to stop, and no later event repeats a wake."""
        while not (self.stop.is_set() and self.pending.empty()):
            try:
                wakes = {self.pending.get(timeout=0.5)}
            except queue.Empty:
                continue
            while not self.pending.empty():
                wakes.add(self.pending.get_nowait())
            try:
                self._enqueue(wakes)
            except DatabaseError:  # the database away: the waker lives on, and tries them again
                # No later event repeats this wake: the stamp is stored already, so the drift would
                # wait for the next poll. They are put back, after a pause that lets the database return.
                log.exception("could not wake sources %s; trying again shortly", _sources(wakes))
                if self.stop.is_set():
                    return  # stopping: their next poll syncs them
                self.stop.wait(WAKE_RETRY_SECONDS)
                self.wake(wakes)
            except Exception:  # anything else would fail again: the waker lives on, the next poll syncs them
                log.exception("could not wake sources %s", _sources(wakes))

    @staticmethod
    def _enqueue(wakes: set[Wake]) -> None:
        close_old_connections()
        names = _held_by_inventory(wakes)
        if ignored := _sources(wakes) - names:
            log.debug("objects labelled for %s changed; none the source applied: woken by its poll", ignored)
        for source_id, name in Source.objects.filter(name__in=names).values_list("pk", "name"):
            try:
                if schedule.source_sync_once(source_id, actor=SYSTEM_ACTOR):
                    log.info("source=%s changed in the cluster: reconcile queued", name)
            except schedule.SyncNotQueued:  # given back as a due poll; the other sources are still woken
                log.warning("source=%s changed in the cluster: the broker refused its reconcile", name)


def _sources(wakes: Iterable[Wake]) -> set[str]:
    return {each.source for each in wakes}


def _held_by_inventory(wakes: set[Wake]) -> set[str]:
    """The sources of ``wakes`` whose inventory holds the changed object: one query for the batch."""
    held = set(
        ManagedObject.objects.filter(
            kind=CONFIGMAP,
            source__name__in=_sources(wakes),
            cluster__in={each.cluster for each in wakes},
            namespace__in={each.namespace for each in wakes},
            name__in={each.name for each in wakes},
        ).values_list("source__name", "cluster", "namespace", "name")
    )
    return {each.source for each in wakes if tuple(each) in held}


# -- stamps from events ---------------------------------------------------------------------


# Events of a cluster's watch stored in one Redis round trip, at most; four times that may queue.
EVENT_BATCH = 500
WRITER_CHECK_SECONDS = 0.5  # how often a wait on the writer checks that it still runs
# A bulk apply's events come a few at a time, as the apiserver commits them: a batch waits this long
# after its first event for more, so 10,000 events take hundreds of round trips instead of thousands.
# A lone event (an edit to heal) is stored at most this much later. A ``drain`` waits it out too:
# a few times a watch, so not worth a signal to cut it short.
WRITER_GATHER_SECONDS = 0.01


@dataclass(frozen=True)
class _Event:
    namespace: str
    name: str
    stamp: LiveStamp | None  # None: deleted
    resource_version: str
    fresh: bool | None


class EventWriter:
    """Stores a cluster watch's events from a thread of its own: those queued up meanwhile, and those
    that follow the first within ``WRITER_GATHER_SECONDS``, in one round trip
    (``LiveStore.write_events``, all or none), then updates what the sink knows and wakes the sources
    whose objects changed, in the events' order.

    A bulk apply makes thousands of events a second, and one round trip each was most of the cache's
    CPU. One informer feeds it. A failed write drops the cluster's freshness at once (best effort)
    and is kept as ``failure``; what queued after it is skipped, so ``known`` stays as Redis holds
    it (but for stamps a floor held back: ``known`` has them, as the watch told them, and wakes are
    worked out between events as before). ``drain`` waits for the queue and raises the failure, so
    the informer's watch ends and resumes from where it began, replaying the skipped events (a stamp
    is stored whole, so a replay is harmless) and waking what they change.
    """

    def __init__(self, sink: StampSink) -> None:
        self.sink = sink
        self.queue: queue.Queue[_Event | None] = queue.Queue(maxsize=4 * EVENT_BATCH)
        self.failure: TemporaryError | None = None
        self.closed = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closing = threading.Event()  # ends a batch's gathering at once

    def put(self, event: _Event) -> None:
        with self._lock:
            if self.closed:
                raise LeaseLost("the live cache's term is over")
            if self._thread is None:
                name = f"live-cache-{self.sink.store.cluster}-writer"
                self._thread = threading.Thread(target=self._run, name=name, daemon=True)
                self._thread.start()
        while True:
            try:
                self.queue.put(event, timeout=WRITER_CHECK_SECONDS)
                return
            except queue.Full:
                self._check_running()

    def drain(self) -> None:
        """Waits until every queued event is stored or skipped; raises a failure once."""
        with self.queue.all_tasks_done:
            while self.queue.unfinished_tasks:
                self._check_running()
                self.queue.all_tasks_done.wait(WRITER_CHECK_SECONDS)
        failure, self.failure = self.failure, None
        if failure is not None:
            raise failure

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._closing.set()
            if self._thread is not None:
                # Full: the writer is busy or stopped. A daemon either way, its writes fenced by the
                # old epoch, so at worst it lingers.
                with contextlib.suppress(queue.Full):
                    self.queue.put_nowait(None)

    def _check_running(self) -> None:
        if self.closed:
            raise LeaseLost("the live cache's term is over")
        if self._thread is not None and not self._thread.is_alive():
            raise TemporaryError("the live cache's event writer stopped")

    def _run(self) -> None:
        while True:
            batch = self._gathered()
            if not batch:
                return  # closed, and the queue drained: ``close`` found it full and queued no None
            events = [event for event in batch if event is not None]
            woken: set[Wake] = set()
            try:
                if self.failure is None and events:
                    woken = self._store(events)
            except Exception as exc:  # Redis away, the lease lost, or a bug: the informer replays
                self._failed(exc)
            finally:
                for _ in batch:
                    self.queue.task_done()
            if woken:
                self.sink.wake(woken)
            if len(events) < len(batch):
                return  # closed

    def _gathered(self) -> list[_Event | None]:
        """The next batch: the first event and what follows it within ``WRITER_GATHER_SECONDS``, up
        to ``EVENT_BATCH``; a None (closed) ends it. Empty once the term is closed and nothing is left:
        a writer waiting for ever would keep the thread and its sink (every stamp of the cluster)."""
        while True:
            try:
                batch = [self.queue.get(timeout=WRITER_CHECK_SECONDS)]
                break
            except queue.Empty:
                if self.closed:
                    return []
        if batch[-1] is not None and self.queue.qsize() < EVENT_BATCH - 1:
            # One wait, not a wakeup for each event that joins: what queued meanwhile is taken at once.
            self._closing.wait(WRITER_GATHER_SECONDS)
        while len(batch) < EVENT_BATCH and batch[-1] is not None:
            try:
                batch.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _failed(self, exc: Exception) -> None:
        if not isinstance(exc, TemporaryError):
            log.exception("could not store the cluster watch's events")
        self.failure = exc if isinstance(exc, TemporaryError) else TemporaryError(str(exc))
        # Nothing vouches for the cluster until the informer has replayed what was not stored.
        with contextlib.suppress(Exception):
            self.sink.store.write("", {}, fresh=False, whole_cluster=True)

    def _store(self, events: list[_Event]) -> set[Wake]:
        """Stores the events, then updates ``known``; the sources to wake."""
        last = events[-1]
        # A deletion is told by its version: below a floor it leaves the floor (see livestore's "Floors").
        texts = [
            (e.namespace, e.name, e.stamp.encode() if e.stamp else deleted_at(e.resource_version))
            for e in events
        ]
        store = self.sink.store
        self.sink._fenced(
            lambda: store.write_events(texts, resource_version=last.resource_version, fresh=last.fresh)
        )
        woken: set[Wake] = set()
        for event in events:
            known = self.sink.known.setdefault(event.namespace, {})
            before = known.pop(event.name, None)
            if event.stamp is not None:
                known[event.name] = event.stamp
            woken |= self.sink.wakes(event.namespace, event.name, before, event.stamp)
        return woken


class StampSink:
    """Turns informers' news into stored stamps and wakes.

    A scope is one informer's: a namespace, or "" for the cluster's one watch of
    every namespace. Each scope is told of by one thread, and each namespace by one scope.
    """

    def __init__(self, store: LiveStore, wake: Callable[[set[Wake]], None]) -> None:
        self.store, self.wake = store, wake
        self.known: dict[str, dict[str, LiveStamp]] = {}
        self.synced: set[str] = set()  # scopes whose watch is caught up
        self._listing: dict[str, dict[str, dict[str, LiveStamp]]] = {}  # scope -> namespace -> stamps
        self.events = EventWriter(self)  # the cluster watch's; a namespace's own are written at once

    def adopt(self, namespace: str, stored: dict[str, str]) -> None:
        """What an earlier process stored: the starting point that changes are compared with. A stamp
        that already shows a drift wakes its source: the term that stored it may have ended (a crash, a
        lease lost) before its wake went out, and nothing later repeats it."""
        decoded = {name: LiveStamp.decode(text) for name, text in stored.items()}
        self.known[namespace] = {name: stamp for name, stamp in decoded.items() if stamp is not None}
        self.synced.discard(namespace)
        drifted = {
            each
            for name, stamp in self.known[namespace].items()
            for each in self.wakes(namespace, name, None, stamp)
        }
        if drifted:
            self.wake(drifted)

    def wakes(
        self, namespace: str, name: str, before: LiveStamp | None, after: LiveStamp | None
    ) -> set[Wake]:
        """What a change of one object from ``before`` to ``after`` (None: absent) may wake."""
        cluster = self.store.cluster
        return {Wake(source, cluster, namespace, name) for source in sources_to_wake(before, after)}

    def drop(self, namespace: str) -> None:
        self.known.pop(namespace, None)
        self.synced.discard(namespace)
        self._listing.pop(namespace, None)

    def listing(self, scope: str) -> None:
        if not scope:
            self.events.drain()
        # Even the periodic relist of a healthy watch vouches for nothing while it lists: no event is
        # told meanwhile, and Sluice's own applies in that time would wake nobody when the relist
        # stores them, so a stamp they left behind could settle an object wrongly until then.
        self.lost(scope, "listing")
        self._listing[scope] = {}

    def listed(self, scope: str, objects: list[dict[str, Any]]) -> None:
        # Only stamps are kept of a page: a cluster's LIST is never held whole.
        by_namespace = self._listing.setdefault(scope, {})
        for obj in objects:
            metadata = obj["metadata"]
            namespace = scope or str(metadata.get("namespace", ""))
            by_namespace.setdefault(namespace, {})[str(metadata["name"])] = stamp_of(obj)

    def relisted(self, scope: str, resource_version: str, *, server: str = "") -> None:
        self._relisted(scope, resource_version)
        if server:  # after the LIST's writes: see ``LiveStore.remember_list``
            self._fenced(lambda: self.store.remember_list(scope, server))

    def _relisted(self, scope: str, resource_version: str) -> None:
        if not scope:
            self.events.drain()
        listed = self._listing.pop(scope, {})
        if scope:
            namespaces = {scope}
            encoded: dict[str, str | None] = {name: s.encode() for name, s in listed.get(scope, {}).items()}
            self._write(
                scope,
                encoded,
                resource_version=resource_version,
                fresh=True,
                reset=True,
                listed=resource_version,
            )
        else:
            namespaces = self.known.keys() | listed.keys()
            texts = {ns: {name: s.encode() for name, s in stamps.items()} for ns, stamps in listed.items()}
            # What Redis holds, not only what this process knows: a write whose answer was lost may
            # have stored a namespace this process never learnt of.
            stored = self._redis(self.store.stored_namespaces)
            gone = (stored | self.known.keys()) - listed.keys()
            self._fenced(lambda: self.store.replace_all(texts, gone, listed=resource_version))
            self._write("", {}, resource_version=resource_version, fresh=True)
        woken: set[Wake] = set()
        for namespace in namespaces:
            before, after = self.known.pop(namespace, {}), listed.get(namespace, {})
            for name in before.keys() | after.keys():
                woken |= self.wakes(namespace, name, before.get(name), after.get(name))
            if after or scope:
                self.known[namespace] = after
        self.synced.add(scope)
        self.wake(woken)

    def changed(self, scope: str, event: str, obj: dict[str, Any]) -> None:
        metadata = obj.get("metadata") or {}
        namespace = scope or str(metadata.get("namespace", ""))
        name = str(metadata.get("name", ""))
        stamp = None if event == DELETED else stamp_of(obj)
        resource_version = str(metadata.get("resourceVersion", ""))
        fresh = True if scope in self.synced else None
        if not scope:  # the cluster's watch: stored, then known and woken, by the event writer
            if self.events.failure is not None:
                self.events.drain()  # raises it: the watch ends and replays
            self.events.put(_Event(namespace, name, stamp, resource_version, fresh))
            return
        self._write(
            namespace,
            {name: stamp.encode() if stamp is not None else deleted_at(resource_version)},
            resource_version=resource_version,
            fresh=fresh,
        )
        known = self.known.setdefault(namespace, {})
        before = known.pop(name, None)
        if stamp is not None:
            known[name] = stamp
        self.wake(self.wakes(namespace, name, before, stamp))

    def alive(self, scope: str, resource_version: str) -> None:
        if not scope:
            self.events.drain()  # every event before it stored: only then does it vouch for them
        self._write(scope, {}, resource_version=resource_version, fresh=True)
        self.synced.add(scope)

    def lost(self, scope: str, why: str) -> None:
        self.synced.discard(scope)
        if not scope:
            with contextlib.suppress(TemporaryError):  # a failure ends this watch anyway, which replays
                self.events.drain()
        try:
            self._write(scope, {}, fresh=False)
        except TemporaryError as exc:  # Redis away, or the lease gone: then nothing vouches for it anyway
            where = scope or "every namespace"
            log.warning("ConfigMaps in %s: could not mark them stale (%s): %s", where, why, exc)

    def flush(self, scope: str) -> None:
        if not scope:  # a namespace's own events are written as they are told
            self.events.drain()

    def _write(self, namespace: str, changes: dict[str, str | None], **options: Any) -> None:
        """One fenced write; with the namespace "" (and no changes), the cluster watch's freshness."""
        options.setdefault("whole_cluster", not namespace)
        self._fenced(lambda: self.store.write(namespace, changes, **options))

    def _fenced(self, write: Callable[[], bool]) -> None:
        if not self._redis(write):
            raise LeaseLost(f"the lease of the live cache of {self.store.cluster} is no longer this term's")

    @staticmethod
    def _redis(call: Callable[[], T]) -> T:
        try:
            return call()
        except redis.RedisError as exc:
            raise TemporaryError(f"Redis: {exc}") from exc


# -- the process ----------------------------------------------------------------------------


# How much longer than a watch a retired namespace's informer is waited for before each warning.
RETIRE_WAIT_MARGIN_SECONDS = 10.0


@dataclass
class _Watch:
    stop: threading.Event
    thread: threading.Thread


class _Term:
    """One hold of a cluster's lease: an epoch, its fenced store and sink, and its informers.

    A term watches the whole cluster with one informer, unless told to watch each
    namespace (``SLUICE_LIVE_CACHE_SCOPE=namespace``) or refused a cluster-wide read
    (403, with ``auto``): then one informer per wanted namespace.

    A process that loses its lease (paused past it, or Redis lost the key) starts
    a new term with a new epoch. Informers of the old term may still be blocked
    on a watch, but their writes carry the old epoch, so Redis refuses them.
    """

    def __init__(self, cache: LiveCache) -> None:
        self.cache = cache
        self.epoch = uuid.uuid4().hex
        self.store = LiveStore(cache.cluster_name, self.epoch, stale_seconds=cache.options.stale_seconds)
        self.sink = StampSink(self.store, cache.waker.wake)
        self.over = threading.Event()
        self.whole_cluster = cache.options.scope != WatchScope.NAMESPACE
        self.watches: dict[str, _Watch] = {}  # by namespace; "" is the cluster's one watch
        self.retiring: set[str] = set()
        self.refused_at = 0.0  # monotonic time of the last refused cluster-wide read (``auto``)
        self.probing = False  # a probe of the cluster-wide read runs (``cluster_read_granted_again``)
        self.granted = threading.Event()  # it found the read allowed
        self._lock = threading.Lock()

    def begin(self, *, whole_cluster: bool) -> bool:
        """Clears what the other way of watching left to resume from, and with one watch per
        namespace the stamps of namespaces not wanted; False if that failed (Redis away, or the lease
        no longer this term's). No informer of the term starts before it succeeded."""
        try:
            if not self.store.watching(whole_cluster=whole_cluster):
                return False
            if not whole_cluster:
                return forget_unwatched(self.store, self.cache.wanted)
        except redis.RedisError as exc:
            log.warning(
                "cluster %s: could not clear what an earlier watch left: %s", self.cache.cluster_name, exc
            )
            return False
        return True

    def rescan(self) -> None:
        with self._lock:
            whole_cluster, running, retiring = self.whole_cluster, set(self.watches), set(self.retiring)
            cluster_watch = self.watches.get(ALL_NAMESPACES)
            # Decided under the lock: a cluster informer ends only when stopped or switched off
            # (``_forbidden`` switches under it first), so one that died is started again.
            restart = whole_cluster and (cluster_watch is None or not cluster_watch.thread.is_alive())
        if whole_cluster:
            if restart:
                self._watch(ALL_NAMESPACES)
            return
        wanted = set(self.cache.wanted)
        for namespace in sorted(wanted - running - retiring):
            self._watch(namespace)
        for namespace in sorted(running - wanted):
            self._retire(namespace)

    def end(self) -> None:
        self.over.set()
        with self._lock:
            for watch in self.watches.values():
                watch.stop.set()
        self.sink.events.close()

    def _watch(self, namespace: str) -> None:
        # What Redis holds is complete up to its resume version (each write stores both at once),
        # so a new term, or a new process, resumes the watch from there.
        if namespace == ALL_NAMESPACES:
            stored_all, resume_from = self.store.load_cluster()
            for each, stored in stored_all.items():
                self.sink.adopt(each, stored)
            self._version_stored(stored_all)
            log.info(
                "live cache of cluster %s: watching ConfigMaps in every namespace, from %s",
                self.cache.cluster_name,
                f"resourceVersion {resume_from}" if resume_from else "a LIST",
            )
        else:
            # One round trip: loading and versioning (see ``_version_stored``) in one transaction.
            stored, resume_from = self.store.load(namespace, adopt=True)
            self.sink.adopt(namespace, stored)
        # A version is resumed only at the server it is from: the informer lists a server it does not
        # know, and one stored with no server (by a release before this one) is listed once.
        resume_server, listed_ago = self.store.stored_list(namespace) if resume_from else ("", 0.0)
        resume_from = resume_from if resume_server else ""
        stop = threading.Event()
        informer = ConfigMapInformer(
            self.cache.connect,
            namespace,
            self.sink,
            self.cache.watch_options,
            stop=stop,
            resume_from=resume_from,
            resume_server=resume_server,
            listed_ago=listed_ago,
            cluster_name=self.cache.cluster_name,
            on_forbidden=self._forbidden if namespace == ALL_NAMESPACES else None,
        )
        name = f"live-cache-{self.cache.cluster_name}-{namespace or '*'}"
        thread = threading.Thread(target=informer.run, name=name, daemon=True)
        with self._lock:
            self.watches[namespace] = _Watch(stop, thread)
        thread.start()

    def _version_stored(self, namespaces: Iterable[str]) -> None:
        """Gives what was loaded a version of this term before its watch starts (``LiveStore.adopt``),
        so passes read each namespace whole once, not on every pass until the term writes it. Only
        a saving: on failure (Redis away, the lease lost) passes read whole, as they would anyway."""
        try:
            if not self.store.adopt(namespaces):
                log.info(
                    "cluster %s: the lease went before the stored stamps were versioned",
                    self.cache.cluster_name,
                )
        except redis.RedisError as exc:
            log.warning("cluster %s: could not version the stored stamps: %s", self.cache.cluster_name, exc)

    def _forbidden(self, refused: ReadForbidden) -> bool:
        """The cluster-wide LIST or WATCH was refused: with ``auto``, watch each namespace instead
        (True ends the cluster's informer); told to watch the cluster whole, keep trying."""
        if self.over.is_set():
            return True  # an old term's informer: the term's successor decides
        if self.cache.options.scope == WatchScope.CLUSTER:
            return False
        # Cleared before any namespace informer may start (the switch below lets rescan start them).
        if not self.begin(whole_cluster=False):
            return False  # the informer backs off, is refused again, and asks again
        log.warning(
            "cluster %s: no cluster-wide list and watch of ConfigMaps (%s); watching each namespace instead",
            self.cache.cluster_name,
            refused,
        )
        with self._lock:
            self.whole_cluster = False
            self.refused_at = time.monotonic()
            self.watches.pop(ALL_NAMESPACES, None)
        self.sink.drop(ALL_NAMESPACES)
        return True

    def cluster_read_granted_again(self) -> bool:
        """After a refusal (``auto``), whether a cluster-wide list and watch are allowed now.

        Asked every ``scope_retry_seconds`` on a thread of its own, so that a slow or unreachable
        apiserver never holds up the lease's renewals. Once it is allowed (RBAC granted since, or the
        403 was a passing fault), the caller ends this term and the next one watches the cluster whole
        instead of each namespace for good."""
        with self._lock:
            due = bool(self.refused_at) and not self.whole_cluster and not self.probing
            due = due and time.monotonic() - self.refused_at >= self.cache.options.scope_retry_seconds
            if due and self.cache.options.scope == WatchScope.AUTO:
                self.refused_at, self.probing = time.monotonic(), True
                threading.Thread(target=self._probe, name="live-cache-probe", daemon=True).start()
        return self.granted.is_set()

    def _probe(self) -> None:
        """A LIST of one object across the cluster, then a one-second WATCH from it: what the cluster's
        informer needs (a grant of ``list`` without ``watch`` would only be refused again)."""
        try:
            cluster = self.cache.connect()
            _, version, _ = cluster.list_configmap_page(
                ALL_NAMESPACES, label_selector=LABEL_SELECTOR, limit=1
            )
            for _ in cluster.watch_configmaps(
                ALL_NAMESPACES, resource_version=version, label_selector=LABEL_SELECTOR, timeout_seconds=1
            ):
                pass
        except Exception as exc:  # refused again (ReadForbidden), the cluster away, the database away
            log.info(
                "cluster %s: the cluster-wide read is still refused or failed: %s",
                self.cache.cluster_name,
                exc,
            )
        else:
            self.granted.set()
        finally:
            with self._lock:
                self.probing = False

    def _retire(self, namespace: str) -> None:
        """Stops watching a namespace; its stamps go once its informer has ended (in the background)."""
        with self._lock:
            watch = self.watches.pop(namespace)
            self.retiring.add(namespace)
        watch.stop.set()

        def finish() -> None:
            # Until its informer has ended the namespace stays retiring, so no second informer of it
            # starts: the first, stopped mid-LIST (a large namespace, a slow token), told nothing more,
            # but a second one beside it would share its scope, which one thread at a time tells of.
            wait = self.cache.options.watch_seconds + RETIRE_WAIT_MARGIN_SECONDS
            watch.thread.join(timeout=wait)
            while watch.thread.is_alive():
                log.warning("the watch of %s has not ended yet; still waiting for it", namespace)
                watch.thread.join(timeout=wait)
            self.sink.drop(namespace)
            try:
                if not self.over.is_set():
                    self.store.forget(namespace)  # fenced: a term that lost its lease deletes nothing
            except redis.RedisError as exc:  # its stamps linger, vouched for by no watch
                log.warning("could not drop the stamps of %s: %s", namespace, exc)
            finally:
                with self._lock:
                    self.retiring.discard(namespace)

        threading.Thread(target=finish, name=f"live-cache-retire-{namespace}", daemon=True).start()


class LiveCache:
    """One cluster's live cache: terms of its lease, each with its informers (see ``_Term``).

    It never touches the database: ``LiveCaches`` sets ``wanted``, the namespaces a term watches
    one by one when it cannot watch the cluster whole.
    """

    def __init__(self, cluster: str, options: LiveCacheOptions, waker: Waker) -> None:
        self.cluster_name, self.options, self.waker = cluster, options, waker
        self.wanted: frozenset[str] = frozenset()
        self.stopping = threading.Event()
        # Set when nothing is to be watched in the cluster any more (its last source gone, or the
        # cluster removed): what is stored for it is dropped once stopped, not left in Redis for good.
        self.drop_when_stopped = False
        self.run_checked = True  # off once Redis's run id changed too often to be restarts
        self._run_changes: deque[float] = deque(maxlen=RUN_CHANGES_TRUSTED)
        self.watch_options = WatchOptions(
            label_selector=LABEL_SELECTOR,
            watch_seconds=options.watch_seconds,
            relist_seconds=options.relist_seconds,
        )

    def connect(self) -> Cluster:
        """The cluster's client as the registry has it now (rebuilt when its kubeconfig changed)."""
        return get_cluster(self.cluster_name)

    def run(self) -> None:
        """Serves until ``stopping``, starting a new term whenever the lease was lost."""
        while not self.stopping.is_set():
            term = _Term(self)
            if not self._take_lease(term):
                break
            log.info("live cache of cluster %s serving (epoch %s)", self.cluster_name, term.epoch)
            try:
                self._serve(term)
            finally:
                term.end()
        if self.drop_when_stopped:
            self.drop_stored()
        log.info("live cache of cluster %s stopped", self.cluster_name)

    def drop_stored(self) -> None:
        """Deletes the cluster's stamps under a lease of its own; left alone when another process holds
        the lease (it watches the cluster: something is wanted there after all)."""
        store = LiveStore(self.cluster_name, uuid.uuid4().hex, stale_seconds=self.options.stale_seconds)
        try:
            if not store.claim():
                log.info("cluster %s: another live-cache process holds it; its keys stay", self.cluster_name)
                return
            try:
                dropped = store.drop_stored()
            finally:
                store.release()
        except redis.RedisError as exc:
            log.warning("could not drop what is stored for cluster %s: %s", self.cluster_name, exc)
            return
        if dropped:
            log.info(
                "cluster %s: nothing watched any more, what was stored for it dropped", self.cluster_name
            )
        else:  # its lease ran out meanwhile: whoever holds it now keeps what it stores
            log.warning("cluster %s: the drop of what was stored for it stopped halfway", self.cluster_name)

    def _take_lease(self, term: _Term) -> bool:
        """Waits, as a standby, until no other live-cache process holds the cluster's lease."""
        told = warned = False
        while not self.stopping.is_set():
            try:
                if risk := term.store.eviction_risk():
                    if not warned:  # serves nothing: plans read the cluster, as with no cache at all
                        log.error(
                            "cluster %s: not serving, Redis may evict the live cache's keys (%s); set "
                            "maxmemory-policy noeviction, or give the cache a Redis of its own",
                            self.cluster_name,
                            risk,
                        )
                        warned = True
                elif term.store.claim():
                    return True
                elif not told:
                    log.info("another live-cache process holds cluster %s; standing by", self.cluster_name)
                    told = True
            except redis.RedisError as exc:
                log.warning("Redis is out of reach, trying again: %s", exc)
            self.stopping.wait(RENEW_SECONDS)
        return False

    def _serve(self, term: _Term) -> None:
        """Renews the lease and follows ``wanted`` until stopped (then releases), the lease is lost, or
        Redis is another run than the one the term began on (``_redis_restarted``)."""
        begun, run = False, ""
        while not self.stopping.is_set():
            try:
                if not term.store.renew():
                    log.error("the live cache of cluster %s lost its lease; starting over", self.cluster_name)
                    return
            except redis.RedisError as exc:
                log.warning("could not renew the live cache's lease: %s", exc)
            now = self._server_run(term)
            if self._redis_restarted(run, now):
                term.end()  # its informers stop before the lease goes, as below
                break
            run = run or now
            try:
                begun = begun or term.begin(whole_cluster=term.whole_cluster)
                if begun:
                    term.rescan()
            except Exception:  # Redis may be away for a moment; the running watches go on meanwhile
                log.exception("cluster %s: could not start or stop watches", self.cluster_name)
            if term.cluster_read_granted_again():
                log.warning(
                    "cluster %s: a cluster-wide list of ConfigMaps is allowed again; watching it whole",
                    self.cluster_name,
                )
                term.end()  # its informers stop before the lease goes: no write of theirs is refused
                break  # released below, so that the next term, watching the cluster whole, takes over
            self.stopping.wait(RENEW_SECONDS)
        try:
            term.store.release()  # every namespace is stale at once: planning reads the cluster
        except redis.RedisError as exc:
            log.warning("could not release the live cache's lease (it runs out by itself): %s", exc)

    def _server_run(self, term: _Term) -> str:
        """Redis's run id now; "" when it does not answer (the renewal says so) or will not say."""
        if not self.run_checked:
            return ""
        try:
            return term.store.server_run()
        except redis.RedisError:
            return ""

    def _redis_restarted(self, run: str, now: str) -> bool:
        """Whether Redis answers from another run (``now``) than ``run``, the one the term began on. A Redis
        restarted within the lease (its append-only file written once a second) or failed over to a
        replica may lack the last writes, the lease's key kept: stored events, a worker's drops and
        floors. The term's informers are past those events in memory, and would never be told them
        again; a new term resumes from the versions Redis holds, which go with what it holds."""
        if not (run and now and now != run):
            return False
        self._run_changes.append(time.monotonic())
        changes = self._run_changes
        if len(changes) == RUN_CHANGES_TRUSTED and changes[-1] - changes[0] < RUN_CHANGES_WINDOW_SECONDS:
            self.run_checked = False
            log.error(
                "cluster %s: Redis's run id changed %d times within %.0f s: taken for several servers behind "
                "one address, not restarts; restarts are no longer looked for by this process",
                self.cluster_name,
                len(changes),
                changes[-1] - changes[0],
            )
            return False
        log.error(
            "cluster %s: Redis restarted or failed over since this term began (a new run id): it may "
            "lack the last writes; starting a new term, which resumes from what Redis holds",
            self.cluster_name,
        )
        return True


def forget_unwatched(store: LiveStore, wanted: frozenset[str]) -> bool:
    """Drops stamps an earlier process left for namespaces of the cluster no longer in the inventory;
    False when the lease is no longer this process's."""
    return all(store.forget(namespace) for namespace in sorted(store.stored_namespaces() - wanted))


@dataclass
class _Running:
    cache: LiveCache
    thread: threading.Thread


class LiveCaches:
    """The process: a ``LiveCache`` per watched cluster, each on its own thread and lease, and one
    waker for all. Every ``rescan_seconds`` it reads which clusters and namespaces to watch."""

    def __init__(self, options: LiveCacheOptions, *, only: str | None = None) -> None:
        self.options, self.only = options, only
        self.stopping = threading.Event()
        # Its own: it stops once the caches have let their leases go, waking what they stored till then.
        self.waker = Waker(threading.Event())
        self.running: dict[str, _Running] = {}
        self.stopped: list[_Running] = []  # caches told to stop that may still be dropping their keys
        self.next_sweep = 0.0
        self.unwatched_before: set[str] = set()  # what the last sweep found (``sweep``)

    def run(self) -> None:
        """Serves until ``stopping`` (SIGTERM or SIGINT), then lets every cluster's lease go."""
        waker = threading.Thread(target=self.waker.run, name="live-cache-waker", daemon=True)
        waker.start()
        while not self.stopping.is_set():
            heartbeat_touch("live-cache", period=self.options.rescan_seconds)  # its liveness probe reads it
            try:
                targets = watched_targets(self.only)
                self.follow(targets)
            except Exception:  # the database may be away for a moment; watches go on meanwhile
                log.exception("could not read the clusters and namespaces to watch")
            else:
                if time.monotonic() >= self.next_sweep:
                    self.next_sweep = time.monotonic() + SWEEP_SECONDS
                    try:
                        self.sweep(targets)
                    except Exception:  # the watches matter more; the next sweep tries again
                        log.exception("the sweep of clusters watched by nobody failed")
            self.stopping.wait(self.options.rescan_seconds)
        for running in self.running.values():
            running.cache.stopping.set()
        for running in [*self.running.values(), *self.stopped]:
            running.thread.join(timeout=LEASE_SECONDS + self.options.watch_seconds)
        self.waker.stop.set()
        waker.join(timeout=WAKER_DRAIN_SECONDS)
        if not self.waker.pending.empty():
            log.warning("stopping with wakes not sent: their sources' next polls sync them")

    def follow(self, targets: dict[str, set[str]]) -> None:
        """Starts a cache for each new cluster, hands each its namespaces, stops those not wanted."""
        for cluster, namespaces in sorted(targets.items()):
            running = self.running.get(cluster)
            if running is None or not running.thread.is_alive():
                running = self._start(cluster, namespaces)
            running.cache.wanted = frozenset(namespaces)
        for cluster in sorted(set(self.running) - set(targets)):
            log.info("cluster %s: nothing to watch any more", cluster)
            stopped = self.running.pop(cluster)
            stopped.cache.drop_when_stopped = True
            stopped.cache.stopping.set()
            self.stopped = [each for each in self.stopped if each.thread.is_alive()] + [stopped]

    def sweep(self, targets: dict[str, set[str]]) -> None:
        """Drops what is stored for clusters nothing watches, which a cache's own drop missed: Redis
        failed it, or the cluster lost its last source while no live-cache process ran.

        A cluster is dropped when two sweeps in a row found it stored, not to be watched, and its
        lease free: a process whose targets lag (a stale read, a ``--cluster`` process still serving
        a cluster just removed) leaves a served cluster alone, even in the instant between a lease
        running out and a standby taking it. The drop takes the lease first, as a cache's own does.
        A process for one cluster (``only``) sweeps nothing: the others' clusters are not its to judge.
        """
        if self.only is not None:
            return
        dropping = {each.cache.cluster_name for each in self.stopped if each.thread.is_alive()}
        try:
            unwatched = {
                cluster
                for cluster in stored_clusters() - set(targets) - dropping
                if "{" not in cluster and not lease_held(cluster)  # a brace: no key of ours
            }
        except redis.RedisError as exc:
            log.warning("could not look in Redis for clusters watched by nobody: %s", exc)
            return
        for cluster in sorted(unwatched & self.unwatched_before):
            log.info("cluster %s: stored in Redis, watched by nobody; dropping it", cluster)
            LiveCache(cluster, self.options, self.waker).drop_stored()
        self.unwatched_before = unwatched

    def _start(self, cluster: str, namespaces: set[str]) -> _Running:
        cache = LiveCache(cluster, self.options, self.waker)
        cache.wanted = frozenset(namespaces)  # before its first term may forget what is not wanted
        thread = threading.Thread(target=cache.run, name=f"live-cache-{cluster}", daemon=True)
        self.running[cluster] = running = _Running(cache, thread)
        thread.start()
        return running


def live_cache_run(cluster: str | None = None) -> None:
    """Runs the live cache of every cluster sources use (``cluster``: that one) until SIGTERM or SIGINT."""
    if cluster is not None:
        clients.ref(cluster)  # an unknown name fails here, before anything starts
    limit_malloc_arenas()  # a thread per watch: before any of them starts
    tune_garbage_collector()  # it holds every managed object: fewer full collections walking them
    # Each watch holds a connection of its cluster's client (one per namespace, where a cluster
    # cannot be watched whole).
    clients.pool_size = WATCH_POOL_SIZE
    clients.forget()
    caches = LiveCaches(LiveCacheOptions.from_settings(), only=cluster)

    def stop(signum: int, frame: object) -> None:
        caches.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    caches.run()
