"""The informer pattern for one namespace's ConfigMaps: one LIST, then a WATCH from its resourceVersion.

The watch asks for bookmarks and ends on the server's side after
``watch_seconds``; each on-time end proves nothing was missed, and the next
watch resumes from the last resourceVersion seen. A ``410 Gone`` (the version
is older than the apiserver keeps) lists again at once; so do three failures in
a row, and a full relist every ``relist_seconds`` bounds anything a watch could
ever miss. Every call is bounded in time (see ``Cluster.watch_configmaps``).
What happens is told to a ``Sink``. The cluster's client is asked for anew
before each LIST and WATCH (``connect``), so a rotated kubeconfig or a cluster
re-pointed in the registry is followed; a cluster that cannot be reached or
refuses fails only this namespace's informer, which backs off and tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gitops.cluster.client import Cluster, ResourceGone
from gitops.errors import GitopsError

log = logging.getLogger("gitops.livecache")

BOOKMARK = "BOOKMARK"
DELETED = "DELETED"
RELIST_AFTER_FAILURES = 3
MAX_BACKOFF_SECONDS = 10.0


class Sink(Protocol):
    def relisted(self, namespace: str, objects: list[dict[str, Any]], resource_version: str) -> None:
        """A complete LIST: these are all the objects, as of ``resource_version``."""

    def changed(self, namespace: str, event: str, obj: dict[str, Any]) -> None:
        """ADDED, MODIFIED or DELETED, in order."""

    def alive(self, namespace: str, resource_version: str) -> None:
        """A bookmark, or a watch that ended on time: every change up to ``resource_version`` was told."""

    def lost(self, namespace: str, why: str) -> None:
        """The watch broke; changes may be missed until the next ``alive`` or ``relisted``."""


@dataclass(frozen=True)
class WatchOptions:
    label_selector: str
    watch_seconds: int = 10
    relist_seconds: float = 600.0
    page_size: int = 500


class NamespaceInformer:
    """Lists and watches one namespace until ``stop`` is set; meant for a thread of its own."""

    def __init__(
        self,
        connect: Callable[[], Cluster],
        namespace: str,
        sink: Sink,
        options: WatchOptions,
        *,
        stop: threading.Event,
        resume_from: str = "",
        cluster_name: str = "",
    ) -> None:
        self.connect, self.namespace, self.sink, self.options = connect, namespace, sink, options
        self.where = f"{cluster_name}/{namespace}" if cluster_name else namespace  # for the log
        self.stop = stop
        self.resume_from = resume_from

    def run(self) -> None:
        version = self.resume_from
        listed_at = time.monotonic()
        failures = 0
        while not self.stop.is_set():
            try:
                cluster = self.connect()
                if not version or time.monotonic() - listed_at > self.options.relist_seconds:
                    version, listed_at = self._relist(cluster), time.monotonic()
                version = self._watch(cluster, version)
                failures = 0
            except ResourceGone as exc:
                log.info("ConfigMaps in %s: %s; listing again", self.where, exc)
                version = ""
            except GitopsError as exc:  # unreachable, refused, or no longer registered: back off, retry
                failures += 1
                self.sink.lost(self.namespace, str(exc))
                log.warning("ConfigMaps in %s: watch failed (%d in a row): %s", self.where, failures, exc)
                if failures >= RELIST_AFTER_FAILURES:
                    version = ""
                self.stop.wait(min(MAX_BACKOFF_SECONDS, 0.5 * 2**failures))
            except Exception as exc:  # a bug must not end the watch of a namespace for good
                failures += 1
                self.sink.lost(self.namespace, str(exc))
                log.exception("ConfigMaps in %s: unexpected failure; listing again", self.where)
                version = ""
                self.stop.wait(min(MAX_BACKOFF_SECONDS, 0.5 * 2**failures))

    def _relist(self, cluster: Cluster) -> str:
        """Every object, page by page from one snapshot; returns the snapshot's resourceVersion."""
        self.sink.lost(self.namespace, "listing")
        objects: list[dict[str, Any]] = []
        token, version = "", ""
        while True:
            page, version, token = cluster.list_configmap_page(
                self.namespace,
                label_selector=self.options.label_selector,
                limit=self.options.page_size,
                continue_token=token,
            )
            objects += page
            if not token:
                break
        self.sink.relisted(self.namespace, objects, version)
        return version

    def _watch(self, cluster: Cluster, version: str) -> str:
        """One watch from ``version``; returns the last resourceVersion seen."""
        for event, obj in cluster.watch_configmaps(
            self.namespace,
            resource_version=version,
            label_selector=self.options.label_selector,
            timeout_seconds=self.options.watch_seconds,
        ):
            if self.stop.is_set():
                return version
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if event == BOOKMARK:
                self.sink.alive(self.namespace, version)
            else:
                self.sink.changed(self.namespace, event, obj)
        self.sink.alive(self.namespace, version)
        return version
