"""What a worker process remembers between reconciles, per source: bounded, and droppable.

Parsing, validating and planning a large repository again on every poll would
cost seconds; these caches make a no-op reconcile of thousands of objects cost
dictionary lookups. They are per process (a prefork child builds its own), hold
at most ``SLUICE_CACHED_SOURCES`` sources, least recently used out first, and
``drop(source_id)`` forgets one source entirely.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from django.conf import settings

from gitops.desired.revision import DesiredState, ParseCache, RevisionIndex
from gitops.desired.scope import AdminScope
from gitops.plan import PlanMemo
from gitops.plan.stamps import SettleMemo

DEFAULT_CACHED_SOURCES = 256


@dataclass
class SourceCache:
    """One source's parsed files, its last desired state and its plan verdicts."""

    parsed: ParseCache = field(default_factory=ParseCache)
    plan_memo: PlanMemo = field(default_factory=PlanMemo)
    settle_memo: SettleMemo = field(default_factory=SettleMemo)
    # The last revision loaded: ("commit:path", the scope it was validated under, the result).
    desired: tuple[str, AdminScope, DesiredState] | None = None
    # The last valid revision loaded, (commit, path, index): the next commit is loaded from its changes.
    index: tuple[str, str, RevisionIndex] | None = None
    # The inventory's keys as last read, with the version they were read under (gitops_inventoryversion).
    inventory: tuple[int, frozenset[tuple[str, str, str]]] | None = None

    def desired_for(self, key: str, scope: AdminScope) -> DesiredState | None:
        if self.desired is not None and self.desired[:2] == (key, scope):
            return self.desired[2]
        return None


class SourceCaches:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[int, SourceCache] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, source_id: int) -> SourceCache:
        with self._lock:
            entry = self._entries.get(source_id)
            if entry is None:
                entry = self._entries[source_id] = SourceCache()
            self._entries.move_to_end(source_id)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
            return entry

    def drop(self, source_id: int) -> None:
        with self._lock:
            self._entries.pop(source_id, None)

    def __len__(self) -> int:
        return len(self._entries)


_caches: SourceCaches | None = None


def caches() -> SourceCaches:
    global _caches  # noqa: PLW0603 - one bounded set per process, sized from settings on first use
    if _caches is None:
        _caches = SourceCaches(int(getattr(settings, "SLUICE_CACHED_SOURCES", DEFAULT_CACHED_SOURCES)))
    return _caches


def for_source(source_id: int) -> SourceCache:
    return caches().get(source_id)


def drop(source_id: int) -> None:
    """Forgets everything remembered about a source (its scope changed, it was deleted)."""
    caches().drop(source_id)
