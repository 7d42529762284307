"""The live cache's sink for one cluster-wide watch: which namespaces a relist replaces or drops, what
it wakes, and when freshness is dropped. The store is an in-memory stand-in for the fenced Redis
writes (tests/integration/test_live_cache.py runs the real one); the sink's own logic is under test.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import pytest
import redis

from gitops import livecache
from gitops.cluster.informer import DELETED
from gitops.cluster.livestore import deleted_at
from gitops.errors import TemporaryError
from gitops.livecache import LeaseLost, StampSink
from gitops.plan.stamps import LiveStamp, stamp_of
from tests.unit.test_live_stamps import as_applied, desired, edited_by_hand
from tests.workers import poll

FRESH, STALE = True, False


class MemoryStore:
    """Namespace -> name -> stamp text, the freshness of each scope, and whether the lease holds."""

    cluster = "local"

    def __init__(self, stored: dict[str, dict[str, str]] | None = None) -> None:
        self.objects: dict[str, dict[str, str]] = {ns: dict(texts) for ns, texts in (stored or {}).items()}
        self.fresh: dict[str, bool] = {}
        self.leased = True
        self.freshness_seen: list[tuple[str, bool | None]] = []
        self.fail_next_events = False
        self.gate = threading.Event()  # the writer's round trip waits for it
        self.gate.set()
        self.writing = threading.Event()

    def write(self, namespace: str, changes: dict[str, str | None], **options: Any) -> bool:
        if not self.leased:
            return False
        if options.get("reset"):
            self.objects.pop(namespace, None)
        for name, text in changes.items():
            if text is None or text.startswith(deleted_at("")):  # a deletion, at a version or not
                self.objects.get(namespace, {}).pop(name, None)
            else:
                self.objects.setdefault(namespace, {})[name] = text
        if namespace in self.objects and not self.objects[namespace]:
            del self.objects[namespace]  # Redis keeps no empty hash
        scope = "" if options.get("whole_cluster") else namespace
        if options.get("fresh") is not None:
            self.fresh[scope] = bool(options["fresh"])
        self.freshness_seen.append((scope, options.get("fresh")))
        return True

    def write_events(self, events: list[tuple[str, str, str | None]], **options: Any) -> bool:
        self.writing.set()
        assert self.gate.wait(10), "the test never let the writer go on"
        if self.fail_next_events:
            self.fail_next_events = False
            raise redis.ConnectionError("Redis went away")
        if not self.leased:
            return False
        for namespace, name, text in events:
            self.write(namespace, {name: text}, whole_cluster=True)
        self.write("", {}, whole_cluster=True, **options)
        return True

    def replace_all(self, stamps: dict[str, dict[str, str]], gone: set[str], *, listed: str = "") -> bool:
        if not self.leased:
            return False
        for namespace in gone:
            self.objects.pop(namespace, None)
        for namespace, texts in stamps.items():
            self.objects[namespace] = dict(texts)
        return True

    def stored_namespaces(self) -> set[str]:
        return set(self.objects)


def configmap(namespace: str, name: str, *, source: str = "src", version: str = "1") -> dict[str, Any]:
    """A ConfigMap as Sluice applied it (its stamp is as applied)."""
    obj = dataclasses.replace(desired(), namespace=namespace, name=name)
    return as_applied(obj, source=source, resource_version=version)


def relist(sink: StampSink, objects: list[dict[str, Any]]) -> None:
    sink.listing("")
    half = len(objects) // 2
    sink.listed("", objects[:half])  # two pages
    sink.listed("", objects[half:])
    sink.relisted("", "100")


class Woken(list):
    """The sources each wake asked for; which objects they were is the waker's business (one test)."""

    def append(self, wakes: set[livecache.Wake]) -> None:
        super().append({each.source for each in wakes})


@pytest.fixture
def woken() -> list[set[str]]:
    return Woken()


def test_a_wake_names_the_changed_object_so_the_waker_can_check_the_inventory() -> None:
    """Labels anyone may write: the waker wakes a source only for an object its inventory holds, so
    each wake carries the object's cluster, namespace and name beside the source."""
    store = MemoryStore()
    asked: list[set[livecache.Wake]] = []
    sink = StampSink(store, asked.append)  # type: ignore[arg-type]
    edited = edited_by_hand(configmap("team-a", "app", source="a"), section="data", key="MODE", value="x")
    sink.changed("team-a", "MODIFIED", edited)
    assert asked[-1] == {livecache.Wake("a", "local", "team-a", "app")}


def test_a_relist_replaces_every_namespace_and_drops_those_in_no_page(woken) -> None:
    kept = stamp_of(configmap("team-a", "app", source="a")).encode()
    emptied = stamp_of(configmap("team-b", "app", source="b")).encode()
    store = MemoryStore({"team-a": {"app": kept}, "team-b": {"app": emptied}})
    sink = StampSink(store, woken.append)  # type: ignore[arg-type]
    sink.adopt("team-a", store.objects["team-a"])
    # team-b was stored by a write whose answer this process never got: the sink does not know it.

    relist(sink, [configmap("team-a", "app", source="a"), configmap("team-c", "new", source="c")])

    assert set(store.objects) == {"team-a", "team-c"}, "team-b is in no page: its stamps go"
    assert store.objects["team-a"] == {"app": kept}
    assert store.fresh[""] is FRESH
    assert set().union(*woken) == set(), "nothing the sink knew of changed; a new object wakes nobody"


def test_a_relist_wakes_the_sources_of_objects_that_changed_or_went(woken) -> None:
    store = MemoryStore()
    sink = StampSink(store, woken.append)  # type: ignore[arg-type]
    relist(sink, [configmap("team-a", "edited", source="a"), configmap("team-b", "gone", source="b")])
    woken.clear()

    edited = edited_by_hand(configmap("team-a", "edited", source="a"), section="data", key="MODE", value="x")
    relist(sink, [edited])

    assert set().union(*woken) == {"a", "b"}
    assert set(store.objects) == {"team-a"}


def test_a_relist_vouches_for_nothing_until_its_last_page_is_stored(woken) -> None:
    store = MemoryStore()
    sink = StampSink(store, woken.append)  # type: ignore[arg-type]
    relist(sink, [configmap("team-a", "app")])
    store.freshness_seen.clear()

    relist(sink, [configmap("team-a", "app")])  # the periodic one, after a healthy watch

    assert store.freshness_seen[0] == ("", STALE), "freshness dropped before the first page"
    assert store.freshness_seen[-1] == ("", FRESH)


def test_a_cluster_event_writes_the_objects_namespace_and_renews_the_cluster_watch(woken) -> None:
    store = MemoryStore()
    sink = StampSink(store, woken.append)  # type: ignore[arg-type]
    relist(sink, [configmap("team-a", "app", source="a")])

    store.freshness_seen.clear()
    sink.changed("", "ADDED", configmap("team-b", "other", source="b"))
    sink.changed("", DELETED, configmap("team-a", "app", source="a"))
    sink.alive("", "101")  # stored only once every event before it is

    assert set(store.objects) == {"team-b"}
    assert ("", FRESH) in store.freshness_seen[:-1], "the events' own batch renews the cluster's freshness"
    assert store.freshness_seen[-1] == ("", FRESH)
    assert {"a"} in woken
    sink.events.close()


def test_a_lost_lease_stops_the_sink_writing(woken) -> None:
    store = MemoryStore()
    sink = StampSink(store, woken.append)  # type: ignore[arg-type]
    store.leased = False
    sink.listing("")  # marking stale is best effort: it does not raise

    sink.listed("", [configmap("team-a", "app")])

    with pytest.raises(LeaseLost):
        sink.relisted("", "100")
    assert store.objects == {}


def test_a_failed_write_of_events_is_raised_and_their_replay_wakes_as_the_first_telling_would(woken) -> None:
    store = MemoryStore()
    sink = StampSink(store, woken.append)  # type: ignore[arg-type]
    relist(sink, [configmap("team-a", "app", source="a")])
    woken.clear()
    edited = edited_by_hand(configmap("team-a", "app", source="a"), section="data", key="MODE", value="x")

    store.fail_next_events, store.gate = True, threading.Event()
    sink.changed("", "MODIFIED", edited)
    assert store.writing.wait(10)
    sink.changed("", "ADDED", configmap("team-b", "queued", source="b"))  # queued behind the failure
    store.gate.set()
    with pytest.raises(TemporaryError, match="Redis went away"):
        sink.alive("", "102")  # the watch ends here, and resumes from where it began
    assert woken == [], "nothing stored, nothing woken"
    assert "team-b" not in store.objects, "what queued after a failed write is not stored"
    assert store.fresh[""] is STALE, "a failed write stops the cluster's watch vouching at once"

    sink.lost("", "the watch failed")  # what the informer does next, then it replays
    sink.changed("", "MODIFIED", edited)
    sink.alive("", "102")

    assert set().union(*woken) == {"a"}
    assert LiveStamp.decode(store.objects["team-a"]["app"]) == stamp_of(edited)
    sink.events.close()


def _event(name: str) -> livecache._Event:
    return livecache._Event("team-a", name, None, "1", True)


def test_the_writer_gathers_events_that_follow_the_first_into_one_batch(monkeypatch) -> None:
    """A bulk apply's events trickle in: each batch waits for more, so they share round trips; closing
    the writer ends the wait at once, and what was gathered is still stored."""
    monkeypatch.setattr(livecache, "WRITER_GATHER_SECONDS", 30.0)
    batches: list[list[str]] = []

    class RecordingStore(MemoryStore):
        def write_events(self, events: list[tuple[str, str, str | None]], **options: Any) -> bool:
            batches.append([name for _, name, _ in events])
            return super().write_events(events, **options)

    writer = livecache.EventWriter(StampSink(RecordingStore(), lambda _: None))
    writer.put(_event("first"))
    poll(writer.queue.empty, timeout=10, what="the writer to take the first event")
    writer.put(_event("second"))  # after the first was taken: it joins its batch all the same
    writer.close()  # ends the batch at once, well within the 30 s
    assert writer._thread is not None
    writer._thread.join(timeout=10)
    assert not writer._thread.is_alive()
    assert batches == [["first", "second"]]


def test_a_batch_is_no_larger_than_event_batch_and_a_lone_event_waits_only_the_window(monkeypatch) -> None:
    monkeypatch.setattr(livecache, "EVENT_BATCH", 2)
    monkeypatch.setattr(livecache, "WRITER_GATHER_SECONDS", 30.0)
    writer = livecache.EventWriter(StampSink(MemoryStore(), lambda _: None))
    for name in ("a", "b", "c"):
        writer.queue.put(_event(name))
    started = time.monotonic()
    assert [event.name for event in writer._gathered() if event] == ["a", "b"]
    assert time.monotonic() - started < 5, "a batch already full is stored at once, not after the window"
    monkeypatch.setattr(livecache, "WRITER_GATHER_SECONDS", 0.05)
    took: list[float] = []
    gathered: list[list[Any]] = []

    def gather() -> None:
        started = time.monotonic()
        gathered.append(writer._gathered())
        took.append(time.monotonic() - started)

    thread = threading.Thread(target=gather, daemon=True)  # a writer that waited for ever fails, not hangs
    thread.start()
    thread.join(timeout=10)
    assert [event.name for event in gathered[0] if event] == ["c"]
    assert 0.05 <= took[0] < 5  # it waited for more, and no longer than the window (and a slow machine)


def test_a_writer_closed_while_its_queue_was_full_still_ends_once_it_has_drained(monkeypatch) -> None:
    """A lease lost in the middle of a bulk apply: ``close`` finds the queue full and cannot queue the
    None that ends the writer. The writer still ends once the queue is drained; before, it waited on
    the empty queue for ever, keeping its thread and every stamp the sink knew, term after term."""
    monkeypatch.setattr(livecache, "WRITER_CHECK_SECONDS", 0.05)
    monkeypatch.setattr(livecache, "WRITER_GATHER_SECONDS", 0.0)
    store = MemoryStore()
    store.gate.clear()  # the first round trip waits: the queue fills behind it
    writer = livecache.EventWriter(StampSink(store, lambda _: None))
    writer.put(_event("first"))
    assert store.writing.wait(10)
    while not writer.queue.full():
        writer.queue.put_nowait(_event("queued"))

    writer.close()
    store.gate.set()

    assert writer._thread is not None
    writer._thread.join(timeout=10)
    assert not writer._thread.is_alive()
    assert writer.queue.unfinished_tasks == 0


def test_a_new_term_wakes_the_sources_of_stored_stamps_that_already_show_a_drift(woken) -> None:
    """The term that stored an edit's stamp ended (a crash, a lost lease) before its wake went out; the
    next term starts from the stored stamps, so no event of that edit comes again. Adopting them wakes
    the source whose object shows the drift, and nobody for objects as Sluice applied them."""
    drifted = edited_by_hand(configmap("team-a", "app", source="a"), section="data", key="MODE", value="fast")
    stored = {
        "app": stamp_of(drifted).encode(),
        "other": stamp_of(configmap("team-a", "other", source="b")).encode(),
    }
    sink = StampSink(MemoryStore({"team-a": stored}), woken.append)  # type: ignore[arg-type]

    sink.adopt("team-a", stored)

    assert woken == [{"a"}]
    sink.adopt("team-b", {"app": stamp_of(configmap("team-b", "app", source="c")).encode()})
    assert woken == [{"a"}], "as applied: nobody"


def test_the_waker_wakes_what_was_queued_before_it_stops(monkeypatch) -> None:
    """The process is told to stop; its caches store events until their leases go, and the wakes those
    events asked for are still sent. Before, the waker stopped with the process, within half a second,
    and the drifts waited for their next poll."""
    enqueued: list[set[livecache.Wake]] = []
    monkeypatch.setattr(livecache.Waker, "_enqueue", staticmethod(enqueued.append))
    waker = livecache.Waker(threading.Event())
    waker.stop.set()
    shop, billing = (
        livecache.Wake("shop", "local", "a", "app"),
        livecache.Wake("billing", "local", "b", "app"),
    )
    waker.wake([shop, billing])

    thread = threading.Thread(target=waker.run, daemon=True)
    thread.start()
    thread.join(timeout=10)

    assert not thread.is_alive()
    assert enqueued == [{shop, billing}]
