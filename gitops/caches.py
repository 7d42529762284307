"""What a worker process remembers between reconciles, per source: bounded, and droppable.

Parsing, validating and planning a large repository again on every poll would
cost seconds; these caches make a no-op reconcile of thousands of objects cost
dictionary lookups. They are per process (a prefork child builds its own), hold
at most ``SLUICE_CACHED_SOURCES`` sources and ``SLUICE_CACHED_OBJECTS`` desired
objects between them, least recently used out first, and ``drop(source_id)``
forgets one source entirely.

Memory follows objects, not sources: a fleet of a thousand small sources costs
what one large source does. Counting sources alone, a worker either kept a few
large sources' worth of memory or parsed a fleet's small sources again on every
poll (with 1,000 sources and the old 256-source bound, three polls in four
missed).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings

from gitops.desired.revision import DesiredState, ParseCache, RevisionIndex
from gitops.desired.scope import AdminScope
from gitops.plan import PlanMemo
from gitops.plan.stamps import SettleMemo

DEFAULT_CACHED_SOURCES = 4096
# Twice the largest revision the default limits allow (max_objects), so that one such source is
# never evicted by a pass of another: its passes would each parse it whole again.
DEFAULT_CACHED_OBJECTS = 200_000
# Parsed values weigh this many to an object: a cached object costs about 3.2 KiB, a parsed value about
# 74 bytes (README, "Limits"). Each source's parse cache is bounded on its own (1,000,000 values), so
# many sources of one monorepo, each with its own path, held that many each outside the budget.
VALUES_PER_OBJECT = 40


@dataclass(eq=False)
class SourceCache:
    """One source's parsed files, its last desired state and its plan verdicts."""

    parsed: ParseCache = field(default_factory=ParseCache)
    plan_memo: PlanMemo = field(default_factory=PlanMemo)
    settle_memo: SettleMemo = field(default_factory=SettleMemo)
    # The last revision loaded: ("commit:path", the scope it was validated under, the result).
    _desired: tuple[str, AdminScope, DesiredState] | None = None
    # Told of a change in weight (the set that holds this cache), so that it can keep its budget.
    _resized: Callable[[SourceCache], None] | None = field(default=None, repr=False)
    source_id: int = 0
    # The last valid revision loaded, (commit, path, index): the next commit is loaded from its changes.
    index: tuple[str, str, RevisionIndex] | None = None
    # The inventory's keys as last read, with the version they were read under (gitops_inventoryversion).
    inventory: tuple[int, frozenset[tuple[str, str, str]]] | None = None
    # The (cluster, namespace) pairs of the inventory kept above, found once for that very set.
    inventory_targets: tuple[frozenset[tuple[str, str, str]], frozenset[tuple[str, str]]] | None = None
    # The last revision rejected here: ("commit:path", the scope it was rejected under). Asked again at
    # every poll and push until someone pushes a fix, a rejected head was listed, read and validated
    # again each time: a crafted one cost seconds of CPU a pass (``revisions.revision_desired_state``).
    rejected: tuple[str, AdminScope] | None = None
    # The revision (its id, and the directory it was read from) a completed rollout was found of: its flag
    # keys are not asked about again (``revisions._went_out``).
    went_out: tuple[int, str] | None = None
    # ``Source.stamps_to_drop`` as this process last wrote or read it: the pass that held them, whose
    # Source row was read before, sees them too (``cluster.apply.stamps_drop_held``).
    stamps_to_drop: dict[str, dict[str, list[list[str]]]] = field(default_factory=dict)

    @property
    def desired(self) -> tuple[str, AdminScope, DesiredState] | None:
        return self._desired

    @desired.setter
    def desired(self, value: tuple[str, AdminScope, DesiredState] | None) -> None:
        self._desired = value
        if self._resized is not None:
            self._resized(self)

    @property
    def objects(self) -> int:
        """Its last desired state's objects."""
        return len(self._desired[2].objects) if self._desired is not None else 0

    @property
    def weight(self) -> int:
        """What it weighs against SLUICE_CACHED_OBJECTS: its objects, the stamps its settle memo holds and
        the values of the files it keeps parsed."""
        return self.objects + self.settle_memo.stamps_held + self.parsed.nodes // VALUES_PER_OBJECT

    def desired_for(self, key: str, scope: AdminScope) -> DesiredState | None:
        if self._desired is not None and self._desired[:2] == (key, scope):
            return self._desired[2]
        return None


class SourceCaches:
    def __init__(self, capacity: int, object_budget: int = DEFAULT_CACHED_OBJECTS) -> None:
        self.capacity = capacity
        self.object_budget = object_budget
        self._entries: OrderedDict[int, SourceCache] = OrderedDict()
        self._weights: dict[int, int] = {}  # source id -> the objects its cache was counted with
        self.objects = 0
        self._lock = threading.RLock()

    def get(self, source_id: int) -> SourceCache:
        with self._lock:
            entry = self._entries.get(source_id)
            if entry is None:
                entry = self._entries[source_id] = SourceCache(_resized=self._resized, source_id=source_id)
            self._entries.move_to_end(source_id)
            # Weighed again on every use: its last pass may have settled (and kept) other namespaces.
            self._reweigh(entry)
            return entry

    def drop(self, source_id: int) -> None:
        with self._lock:
            if self._entries.pop(source_id, None) is not None:
                self._forget(source_id)

    def _resized(self, entry: SourceCache) -> None:
        with self._lock:
            if self._entries.get(entry.source_id) is not entry:
                return  # dropped or evicted: a pass still holding it counts for nothing here
            self._reweigh(entry)

    def _reweigh(self, entry: SourceCache) -> None:
        weight = entry.weight
        self.objects += weight - self._weights.get(entry.source_id, 0)
        self._weights[entry.source_id] = weight
        self._keep_within_bounds()

    def _keep_within_bounds(self) -> None:
        """Least recently used out first, until both bounds hold; the most recent source always stays,
        however large (its pass is running)."""
        while len(self._entries) > 1 and (
            len(self._entries) > self.capacity or self.objects > self.object_budget
        ):
            evicted, _ = self._entries.popitem(last=False)
            self._forget(evicted)

    def _forget(self, source_id: int) -> None:
        self.objects -= self._weights.pop(source_id, 0)

    def __len__(self) -> int:
        return len(self._entries)


_caches: SourceCaches | None = None


def caches() -> SourceCaches:
    global _caches  # noqa: PLW0603 - one bounded set per process, sized from settings on first use
    if _caches is None:
        _caches = SourceCaches(
            int(getattr(settings, "SLUICE_CACHED_SOURCES", DEFAULT_CACHED_SOURCES)),
            int(getattr(settings, "SLUICE_CACHED_OBJECTS", DEFAULT_CACHED_OBJECTS)),
        )
    return _caches


def for_source(source_id: int) -> SourceCache:
    return caches().get(source_id)


def drop(source_id: int) -> None:
    """Forgets everything remembered about a source (its scope changed, it was deleted)."""
    caches().drop(source_id)
