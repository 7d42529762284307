"""The informer pattern for ConfigMaps: one LIST, then a WATCH from its resourceVersion.

An informer covers one namespace, or with the namespace "" every namespace of
the cluster: one LIST and one WATCH for all of them, which RBAC must grant
cluster-wide. Its ``scope`` is that namespace, or "".

The watch asks for bookmarks and ends on the server's side after
``watch_seconds``; each on-time end proves nothing was missed, and the next
watch resumes from the last resourceVersion seen. A ``410 Gone`` (the version
is older than the apiserver keeps) lists again at once; so do three failures in
a row, and a full relist every ``relist_seconds`` bounds anything a watch could
ever miss. Every call is bounded in time (see ``Cluster.watch_configmaps``).
What happens is told to a ``Sink``. The cluster's client is asked for anew
before each LIST and WATCH (``connect``), so a rotated kubeconfig or a cluster
re-pointed in the registry is followed; a cluster that cannot be reached or
refuses fails only this informer, which backs off and tries again; a 403
(``ReadForbidden``) is first offered to ``on_forbidden``, which may end it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gitops.cluster.client import Cluster, ReadForbidden, ResourceGone
from gitops.errors import GitopsError, TemporaryError
from gitops.numerals import whole_number

log = logging.getLogger("gitops.livecache")

BOOKMARK = "BOOKMARK"
DELETED = "DELETED"
RELIST_AFTER_FAILURES = 3
MAX_BACKOFF_SECONDS = 10.0
# A watch resumed from a stored version (a restart, a failed watch) vouches for nothing until a
# bookmark or its on-time end, and the apiserver sends the bookmark only shortly before the end: so
# that first watch is short, and the cache vouches again within seconds rather than a whole watch.
# The server ends a watch on time even with events still queued for it, so a short one that was still
# telling changes when it ended vouches for nothing, and the next is short too; after CATCH_UP_ROUNDS
# of those (a busy cluster), watches are full length again, as before.
CATCH_UP_WATCH_SECONDS = 2
CATCH_UP_ROUNDS = 3
# A watch that ends this much before its timeout, cleanly and without a bookmark, vouches for nothing
# (a proxy that ends streams, an apiserver resetting its watch cache): its end is no sign the stream
# was live, and taken as one it vouched while nothing was watched, in a loop as fast as the server
# answered.
WATCH_END_MARGIN_SECONDS = 1.0
_clock = time.monotonic  # the watches' clock (the unit tests script it)


class WatchEndedEarly(TemporaryError):
    """A watch ended before its time, cleanly and without a bookmark."""


class Sink(Protocol):
    """What an informer tells. ``scope`` is the informer's namespace, or "" for every namespace."""

    def listing(self, scope: str) -> None:
        """A LIST starts: nothing is vouched for until it is ``relisted``."""

    def listed(self, scope: str, objects: list[dict[str, Any]]) -> None:
        """One page of the LIST (each object names its namespace)."""

    def relisted(self, scope: str, resource_version: str, *, server: str = "") -> None:
        """The LIST is complete: its pages were all the objects, as of ``resource_version`` of the
        apiserver at ``server``."""

    def changed(self, scope: str, event: str, obj: dict[str, Any]) -> None:
        """ADDED, MODIFIED or DELETED, in order."""

    def alive(self, scope: str, resource_version: str) -> None:
        """A bookmark, or a watch that ended on time: every change up to ``resource_version`` was told."""

    def lost(self, scope: str, why: str) -> None:
        """The watch broke; changes may be missed until the next ``alive`` or ``relisted``."""

    def flush(self, scope: str) -> None:
        """Returns once every change told is stored; raises if one was not, so the watch resumes from
        where it began and tells it again."""


@dataclass(frozen=True)
class WatchOptions:
    label_selector: str
    watch_seconds: int = 10
    relist_seconds: float = 600.0
    page_size: int = 500


class _Stopped(Exception):
    """The informer was stopped while it read: it ends, telling nothing of what it read."""


class ConfigMapInformer:
    """Lists and watches one namespace ("": every one) until ``stop`` is set, on a thread of its own."""

    def __init__(
        self,
        connect: Callable[[], Cluster],
        namespace: str,
        sink: Sink,
        options: WatchOptions,
        *,
        stop: threading.Event,
        resume_from: str = "",
        resume_server: str = "",
        listed_ago: float = 0.0,
        cluster_name: str = "",
        on_forbidden: Callable[[ReadForbidden], bool] | None = None,
    ) -> None:
        self.connect, self.namespace, self.sink, self.options = connect, namespace, sink, options
        where = namespace or "every namespace"
        self.where = f"{cluster_name}/{where}" if cluster_name else where  # for the log
        self.stop = stop
        self.resume_from = resume_from
        self.resume_server = resume_server  # the server ``resume_from`` is from; "": not known
        self.listed_ago = listed_ago  # seconds since the LIST ``resume_from`` goes back to, if known
        self.on_forbidden = on_forbidden

    def run(self) -> None:
        version = self.resume_from
        # The periodic relist counts from the last LIST, not from this start: a cache restarted more
        # often than ``relist_seconds`` still lists that often.
        listed_at = time.monotonic() - (self.listed_ago if version else 0.0)
        failures = catch_ups = gone = 0
        vouched = False  # by a complete LIST or a watch's on-time end, until a failure is told
        server = self.resume_server if version else ""
        resume_checked = False
        while not self.stop.is_set():
            try:
                cluster = self.connect()
                if server and cluster.server != server:
                    # The kubeconfig now points at another server: what was stored, and the version to
                    # resume from, are the old one's. Nothing vouches until a LIST of the new one.
                    self.sink.lost(self.namespace, f"the cluster's server is now {cluster.server}")
                    log.warning(
                        "ConfigMaps in %s: the server changed to %s; listing again",
                        self.where,
                        cluster.server,
                    )
                    version, vouched = "", False
                server = cluster.server
                relist_due = time.monotonic() - listed_at > self.options.relist_seconds
                if version and version == self.resume_from and not resume_checked and not relist_due:
                    version, resume_checked = self._resumable(cluster, version), True
                if not version or relist_due:
                    version, listed_at, vouched = self._relist(cluster), time.monotonic(), True
                    catch_ups = 0
                catching_up = not vouched and catch_ups < CATCH_UP_ROUNDS
                version, vouched = self._watch(cluster, version, catching_up=catching_up)
                catch_ups, failures, gone = (0 if vouched else catch_ups + 1), 0, 0
            except _Stopped:
                return
            except ResourceGone as exc:
                log.info("ConfigMaps in %s: %s; listing again", self.where, exc)
                version, gone = "", gone + 1
                if gone > 1:  # a LIST whose continue token keeps expiring: not listed again at once
                    self.sink.lost(self.namespace, str(exc))
                    self.stop.wait(min(MAX_BACKOFF_SECONDS, 0.5 * 2**gone))
            except GitopsError as exc:  # unreachable, refused, or no longer registered: back off, retry
                if isinstance(exc, ReadForbidden) and self._handed_off(exc):
                    return
                failures, vouched, catch_ups = self._failed(exc, failures), False, 0
                version = "" if failures >= RELIST_AFTER_FAILURES else version
            except Exception as exc:  # a bug must not end the watch of a namespace for good
                failures, vouched, catch_ups = failures + 1, False, 0
                self.sink.lost(self.namespace, str(exc))
                log.exception("ConfigMaps in %s: unexpected failure; listing again", self.where)
                version = ""
                self.stop.wait(min(MAX_BACKOFF_SECONDS, 0.5 * 2**failures))

    def _resumable(self, cluster: Cluster, version: str) -> str:
        """``version``, the stored one this informer resumes from, or "" (list again) when the cluster is
        behind it now: etcd restored from a backup, or a cluster rebuilt behind the same address. A
        watch from a version the cluster has not reached says nothing until it does, and its quiet end
        vouched, within seconds, for stamps of another timeline: objects since changed or gone planned
        as applied. One LIST of one object, at the cluster's newest version, tells."""
        _, current, _ = cluster.list_configmap_page(
            self.namespace, label_selector=self.options.label_selector, limit=1
        )
        now, stored = whole_number(current), whole_number(version)
        if now is None or stored is None or now >= stored:
            return version
        self.sink.lost(self.namespace, f"the cluster is at version {current}, behind the stored {version}")
        log.warning(
            "ConfigMaps in %s: the cluster is at version %s, behind the %s stored (etcd restored?); "
            "listing again",
            self.where,
            current,
            version,
        )
        return ""

    def _handed_off(self, refused: ReadForbidden) -> bool:
        """Offers a 403 to ``on_forbidden``; True when it ends this informer."""
        if self.stop.is_set() or self.on_forbidden is None:
            return False
        self.sink.lost(self.namespace, str(refused))  # first: whatever comes next, nothing vouches
        return self.on_forbidden(refused)

    def _failed(self, exc: GitopsError, failures: int) -> int:
        """Tells and logs a failure, and backs off; the failures in a row, this one included."""
        failures += 1
        self.sink.lost(self.namespace, str(exc))
        log.warning("ConfigMaps in %s: watch failed (%d in a row): %s", self.where, failures, exc)
        self.stop.wait(min(MAX_BACKOFF_SECONDS, 0.5 * 2**failures))
        return failures

    def _relist(self, cluster: Cluster) -> str:
        """Every object, page by page from one snapshot; returns the snapshot's resourceVersion.

        Each page is told as it comes, so not every object of a cluster is held at once. Nothing is
        told once ``stop`` is set: a LIST that outlasted its informer's retirement is an old snapshot,
        and told as complete, it would be stored as fresh over what a later informer of the same
        namespace stores (``_Stopped``)."""
        self.sink.listing(self.namespace)
        token, version = "", ""
        while True:
            page, version, token = cluster.list_configmap_page(
                self.namespace,
                label_selector=self.options.label_selector,
                limit=self.options.page_size,
                continue_token=token,
            )
            self._still_wanted()
            self.sink.listed(self.namespace, page)
            if not token:
                break
        self.sink.relisted(self.namespace, version, server=cluster.server)
        return version

    def _still_wanted(self) -> None:
        """Raises ``_Stopped`` once the informer is stopped: what it read since is told to nobody."""
        if self.stop.is_set():
            raise _Stopped()

    def _watch(self, cluster: Cluster, version: str, *, catching_up: bool = False) -> tuple[str, bool]:
        """One watch from ``version``; returns the last resourceVersion seen, and whether the watch
        vouched at its end. ``catching_up``: a short one (``CATCH_UP_WATCH_SECONDS``), which vouches at
        its end only if no change was told after its last bookmark."""
        seconds = self.options.watch_seconds
        timeout = min(seconds, CATCH_UP_WATCH_SECONDS) if catching_up else seconds
        told = bookmarked = False  # a change since the last bookmark; a bookmark in this watch
        started = _clock()
        for event, obj in cluster.watch_configmaps(
            self.namespace,
            resource_version=version,
            label_selector=self.options.label_selector,
            timeout_seconds=timeout,
        ):
            if self.stop.is_set():
                return version, False
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if event == BOOKMARK:
                self.sink.alive(self.namespace, version)
                told, bookmarked = False, True
            else:
                self.sink.changed(self.namespace, event, obj)
                told = True
        if not bookmarked and (lasted := _clock() - started) < timeout - WATCH_END_MARGIN_SECONDS:
            # Resumed from where it began (the changes it told come again): nothing it said is lost.
            raise WatchEndedEarly(f"the watch ended after {lasted:.1f} s of {timeout} s, with no bookmark")
        if catching_up and told:
            # The next watch resumes past these changes, so they must be stored first: a sink may store
            # them after they were told (the cluster's writer thread), and one it failed to store would
            # never be told again. It raises that failure, and the watch resumes from where this began.
            self.sink.flush(self.namespace)
            return version, False
        self.sink.alive(self.namespace, version)
        return version, True
