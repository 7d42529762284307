"""The informer pattern for one namespace's ConfigMaps: one LIST, then a WATCH from its resourceVersion.

The watch asks for bookmarks and ends on the server's side after
``watch_seconds``; each on-time end proves nothing was missed, and the next
watch resumes from the last resourceVersion seen. A ``410 Gone`` (the version
is older than the apiserver keeps) lists again at once; so do three failures in
a row, and a full relist every ``relist_seconds`` bounds anything a watch could
ever miss. Every call is bounded in time (see ``Cluster.watch_configmaps``).
What happens is told to a ``Sink``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from gitops.cluster.client import Cluster, ResourceGone
from gitops.errors import TemporaryError

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
        cluster: Cluster,
        namespace: str,
        sink: Sink,
        options: WatchOptions,
        *,
        stop: threading.Event,
        resume_from: str = "",
    ) -> None:
        self.cluster, self.namespace, self.sink, self.options = cluster, namespace, sink, options
        self.stop = stop
        self.resume_from = resume_from

    def run(self) -> None:
        version = self.resume_from
        listed_at = time.monotonic()
        failures = 0
        while not self.stop.is_set():
            try:
                if not version or time.monotonic() - listed_at > self.options.relist_seconds:
                    version, listed_at = self._relist(), time.monotonic()
                version = self._watch(version)
                failures = 0
            except ResourceGone as exc:
                log.info("ConfigMaps in %s: %s; listing again", self.namespace, exc)
                version = ""
            except TemporaryError as exc:
                failures += 1
                self.sink.lost(self.namespace, str(exc))
                log.warning("ConfigMaps in %s: watch failed (%d in a row): %s", self.namespace, failures, exc)
                if failures >= RELIST_AFTER_FAILURES:
                    version = ""
                self.stop.wait(min(MAX_BACKOFF_SECONDS, 0.5 * 2**failures))
            except Exception as exc:  # a bug must not end the watch of a namespace for good
                failures += 1
                self.sink.lost(self.namespace, str(exc))
                log.exception("ConfigMaps in %s: unexpected failure; listing again", self.namespace)
                version = ""
                self.stop.wait(min(MAX_BACKOFF_SECONDS, 0.5 * 2**failures))

    def _relist(self) -> str:
        """Every object, page by page from one snapshot; returns the snapshot's resourceVersion."""
        self.sink.lost(self.namespace, "listing")
        objects: list[dict[str, Any]] = []
        token, version = "", ""
        while True:
            page, version, token = self.cluster.list_configmap_page(
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

    def _watch(self, version: str) -> str:
        """One watch from ``version``; returns the last resourceVersion seen."""
        for event, obj in self.cluster.watch_configmaps(
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
