"""A worker's per-source caches: bounded by sources and by the desired objects they hold."""

from __future__ import annotations

from gitops.caches import SourceCaches
from gitops.desired.policy import Policy
from gitops.desired.revision import DesiredState
from gitops.desired.scope import AdminScope


def state(objects: int) -> DesiredState:
    # Only the number of objects weighs: placeholders stand for them.
    return DesiredState(policy=Policy(), objects=tuple(object() for _ in range(objects)))  # type: ignore[misc]


def remember(caches: SourceCaches, source_id: int, objects: int) -> None:
    caches.get(source_id).desired = (f"commit-{source_id}", AdminScope(), state(objects))


def test_the_least_recently_used_sources_go_first_once_the_objects_exceed_the_budget():
    caches = SourceCaches(capacity=100, object_budget=100)
    for source_id in (1, 2, 3):
        remember(caches, source_id, 40)
    assert len(caches) == 2 and caches.objects == 80  # 120 > 100: source 1 went
    caches.get(2)  # used again: source 3 is now the least recent
    remember(caches, 4, 40)
    assert caches.objects == 80
    assert caches.get(2).desired is not None and caches.get(4).desired is not None
    assert caches.get(3).desired is None  # forgotten: a fresh, empty cache


def test_a_source_larger_than_the_budget_is_kept_alone_while_it_is_the_latest():
    caches = SourceCaches(capacity=100, object_budget=100)
    remember(caches, 1, 10)
    remember(caches, 2, 500)
    assert len(caches) == 1 and caches.objects == 500
    assert caches.get(2).objects == 500


def test_a_cache_that_shrinks_or_is_dropped_gives_its_objects_back():
    caches = SourceCaches(capacity=100, object_budget=1000)
    remember(caches, 1, 300)
    remember(caches, 2, 300)
    remember(caches, 1, 50)  # a new revision with fewer objects
    assert caches.objects == 350
    held = caches.get(2)
    caches.drop(2)
    assert caches.objects == 50
    held.desired = ("commit-late", AdminScope(), state(900))  # a pass that still held it finishes
    assert caches.objects == 50 and len(caches) == 1


def test_the_number_of_sources_is_bounded_too():
    caches = SourceCaches(capacity=3, object_budget=10**9)
    for source_id in range(10):
        remember(caches, source_id, 1)
    assert len(caches) == 3 and caches.objects == 3


def test_the_stamps_a_settle_memo_keeps_weigh_too():
    """A small source in a large shared namespace keeps that namespace's stamps: they count."""
    from gitops.plan.stamps import _Settled, _Snapshot

    caches = SourceCaches(capacity=100, object_budget=1000)
    remember(caches, 1, 5)
    stamps = {f"cm-{index}": "stamp" for index in range(800)}
    memo = caches.get(1).settle_memo
    memo._keep(_Snapshot("one", frozenset(), {("default", "shared"): _Settled(stamps, (), {}, [])}))
    assert caches.get(1).weight == 805
    remember(caches, 2, 5)
    caches.get(2).settle_memo._keep(
        _Snapshot("two", frozenset(), {("default", "shared"): _Settled(dict(stamps), (), {}, [])})
    )
    caches.get(2)  # weighed again when used: 1,610 > 1,000, so source 1 goes
    assert len(caches) == 1 and caches.objects == 805


def test_the_files_a_source_keeps_parsed_weigh_too():
    """Parsed files were bounded per source only: many sources of one monorepo, each with its own path,
    each kept up to a million values outside the budget."""
    from gitops.caches import VALUES_PER_OBJECT
    from gitops.desired.revision import ParsedFile

    caches = SourceCaches(capacity=100, object_budget=1000)
    remember(caches, 1, 5)
    caches.get(1).parsed.put("big.yaml", "blob-1", ParsedFile([], [], nodes=800 * VALUES_PER_OBJECT))
    assert caches.get(1).weight == 805
    remember(caches, 2, 5)
    caches.get(2).parsed.put("big.yaml", "blob-2", ParsedFile([], [], nodes=800 * VALUES_PER_OBJECT))
    caches.get(2)  # weighed again when used: 1,610 > 1,000, so source 1 goes
    assert len(caches) == 1 and caches.objects == 805
