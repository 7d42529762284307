"""How long each watch of the informer asks for, and when its end vouches: short while it catches up
after a resume or a failure (nothing is vouched for until then), the configured length once vouched
for. The cluster is a scripted stand-in for the client's LIST and WATCH calls; the informer's loop is
under test (tests/integration/test_live_cache.py runs it against the real apiserver)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from enum import Enum
from typing import Any

import pytest

from gitops.cluster import informer as informer_module
from gitops.cluster.informer import (
    BOOKMARK,
    CATCH_UP_ROUNDS,
    CATCH_UP_WATCH_SECONDS,
    DELETED,
    ConfigMapInformer,
    WatchOptions,
)
from gitops.errors import TemporaryError
from gitops.livecache import StampSink
from gitops.plan.stamps import stamp_of
from tests.unit.test_stamp_sink import MemoryStore, configmap

WATCH_SECONDS = 10
FULL, SHORT = ("watch", WATCH_SECONDS), ("watch", CATCH_UP_WATCH_SECONDS)
LIST = ("list", None)
PROBE = ("probe", None)  # a resumed informer's LIST of one object: is the cluster behind what was stored?


class Watch(Enum):
    QUIET = "ends on time, having told nothing"
    CHANGES = "tells a change, then ends on time"
    CHANGES_THEN_BOOKMARK = "tells a change, then a bookmark, then ends on time"
    FAILS = "fails"
    ENDS_AT_ONCE = "ends at once, cleanly, having told nothing"
    BOOKMARK_THEN_ENDS_AT_ONCE = "tells a bookmark, then ends at once"


def _event(kind: str) -> tuple[str, dict[str, Any]]:
    return kind, {"metadata": {"name": "app", "namespace": "team", "resourceVersion": "101"}}


class Clock:
    """The informer's clock: a watch that ends on time moves it by its timeout."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


CLOCK = Clock()


@pytest.fixture(autouse=True)
def scripted_clock(monkeypatch):
    """Every informer here reads the scripted clock, which the clusters' watches move."""
    monkeypatch.setattr(informer_module, "_clock", CLOCK)


class ScriptedCluster:
    server = "https://scripted.invalid"  # the informer lists again when the server it reaches changes

    def __init__(self, watches: list[Watch], stop: threading.Event, *, at: str = "100") -> None:
        self.watches, self.stop, self.at = watches, stop, at
        self.calls: list[tuple[str, Any]] = []

    def list_configmap_page(self, namespace: str, **options: Any) -> tuple[list[Any], str, str]:
        self.calls.append(PROBE if options["limit"] == 1 else LIST)
        return [], self.at, ""

    def watch_configmaps(self, namespace: str, **options: Any) -> Any:
        self.calls.append(("watch", options["timeout_seconds"]))
        watch = self.watches.pop(0)
        if watch is Watch.FAILS:
            raise TemporaryError("connection reset")
        events = {
            Watch.CHANGES: ["MODIFIED"],
            Watch.CHANGES_THEN_BOOKMARK: ["MODIFIED", BOOKMARK],
            Watch.BOOKMARK_THEN_ENDS_AT_ONCE: [BOOKMARK],
        }
        at_once = watch in (Watch.ENDS_AT_ONCE, Watch.BOOKMARK_THEN_ENDS_AT_ONCE)
        lasted = 0 if at_once else options["timeout_seconds"]
        return self._told(events.get(watch, []), lasted, last=not self.watches)

    def _told(self, kinds: list[str], lasted: float, *, last: bool) -> Any:
        yield from (_event(kind) for kind in kinds)
        CLOCK.now += lasted
        if last:
            self.stop.set()  # the loop ends after this watch, which ends (and vouches) as any other


class Sink:
    """Records what it is told: "alive" is the informer vouching."""

    def __init__(self) -> None:
        self.told: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self.told.append(name)


def run(
    watches: list[Watch], *, resume_from: str, at: str = "100"
) -> tuple[list[tuple[str, Any]], list[str]]:
    stop = threading.Event()
    cluster, sink = ScriptedCluster(watches, stop, at=at), Sink()
    informer = ConfigMapInformer(
        lambda: cluster,  # type: ignore[arg-type, return-value]
        "",
        sink,
        WatchOptions(label_selector="", watch_seconds=WATCH_SECONDS),
        stop=stop,
        resume_from=resume_from,
    )
    informer._failed = lambda exc, failures: failures + 1  # type: ignore[method-assign]  # no back-off wait
    informer.run()
    return cluster.calls, sink.told


def test_a_resumed_informer_catches_up_with_a_short_watch_then_watches_for_the_configured_length():
    calls, told = run([Watch.QUIET, Watch.QUIET], resume_from="42")
    assert calls == [PROBE, SHORT, FULL]
    assert told == ["alive", "alive"]


def test_a_listed_informer_is_vouched_for_at_once_and_never_shortens_its_watch():
    calls, _ = run([Watch.CHANGES, Watch.QUIET], resume_from="")
    assert calls == [LIST, FULL, FULL]


def test_after_a_failed_watch_the_resumed_one_is_short_again():
    calls, _ = run([Watch.QUIET, Watch.FAILS, Watch.QUIET, Watch.QUIET], resume_from="")
    assert calls == [LIST, FULL, FULL, SHORT, FULL]


def test_a_short_watch_still_telling_changes_at_its_end_vouches_for_nothing():
    """The server ends a watch on time even with events still queued: only a bookmark after the last
    change, or a short watch that told none, vouches; a busy cluster gets full-length watches again."""
    calls, told = run([Watch.CHANGES, Watch.CHANGES_THEN_BOOKMARK, Watch.QUIET], resume_from="42")
    assert calls == [PROBE, SHORT, SHORT, FULL]
    assert told == ["changed", "flush", "changed", "alive", "alive", "alive"], "stored before resumed past"

    calls, told = run([Watch.CHANGES] * CATCH_UP_ROUNDS + [Watch.CHANGES], resume_from="42")
    assert calls == [PROBE] + [SHORT] * CATCH_UP_ROUNDS + [FULL]
    assert told == ["changed", "flush"] * CATCH_UP_ROUNDS + ["changed", "alive"], "the full one's end vouches"


def test_a_failure_after_busy_catch_ups_starts_the_catch_up_afresh():
    busy = [Watch.CHANGES] * CATCH_UP_ROUNDS
    calls, _ = run([*busy, Watch.FAILS, Watch.QUIET, Watch.QUIET], resume_from="42")
    assert calls == [PROBE] + [SHORT] * CATCH_UP_ROUNDS + [FULL, SHORT, FULL]


def test_a_kubeconfig_pointed_at_another_server_is_listed_again_not_resumed():
    """The kubeconfig now names another server: the version to resume from, and the stamps, are the
    old server's. In a fleet of one etcd (the devstack's) the new server would accept the version and
    the old stamps would stand. The informer tells the scope lost and lists the new server."""
    stop = threading.Event()
    before = ScriptedCluster([Watch.QUIET, Watch.QUIET], stop)
    after = ScriptedCluster([Watch.QUIET], stop)
    after.server = "https://another.invalid"
    connections, sink = iter([before, after]), Sink()
    informer = ConfigMapInformer(
        lambda: next(connections),  # type: ignore[arg-type, return-value]
        "",
        sink,
        WatchOptions(label_selector="", watch_seconds=WATCH_SECONDS),
        stop=stop,
        resume_from="42",
    )

    informer.run()

    assert before.calls == [PROBE, SHORT], "resumed on the first server"
    assert after.calls == [LIST, FULL], "listed on the new one, never resumed there"
    assert "lost" in sink.told


def test_a_version_stored_from_another_server_is_not_resumed_there():
    """A process started after the kubeconfig was pointed at another apiserver: the stored version is
    the old server's, and means nothing (or something else) to the new one."""
    stop = threading.Event()
    cluster, sink = ScriptedCluster([Watch.QUIET], stop), Sink()

    def informer(resume_server: str) -> ConfigMapInformer:
        return ConfigMapInformer(
            lambda: cluster,  # type: ignore[arg-type, return-value]
            "",
            sink,
            WatchOptions(label_selector="", watch_seconds=WATCH_SECONDS),
            stop=stop,
            resume_from="42",
            resume_server=resume_server,
        )

    informer("https://old.invalid").run()
    assert cluster.calls == [LIST, FULL], "listed, never resumed from the old server's version"
    assert "lost" in sink.told

    stop.clear()
    cluster.calls, cluster.watches, sink.told = [], [Watch.QUIET], []
    informer(ScriptedCluster.server).run()
    assert cluster.calls == [PROBE, SHORT], "its own server's version is resumed"


def test_the_periodic_relist_counts_from_the_last_list_not_from_the_processs_start():
    """A cache restarted more often than ``relist_seconds`` still lists that often."""
    stop = threading.Event()
    cluster = ScriptedCluster([Watch.QUIET], stop)

    def run_after(listed_ago: float) -> list[tuple[str, Any]]:
        stop.clear()
        cluster.calls, cluster.watches = [], [Watch.QUIET]
        ConfigMapInformer(
            lambda: cluster,  # type: ignore[arg-type, return-value]
            "",
            Sink(),
            WatchOptions(label_selector="", watch_seconds=WATCH_SECONDS, relist_seconds=600),
            stop=stop,
            resume_from="42",
            resume_server=ScriptedCluster.server,
            listed_ago=listed_ago,
        ).run()
        return cluster.calls

    assert run_after(601) == [LIST, FULL], "the last LIST was longer ago than relist_seconds"
    assert run_after(10) == [PROBE, SHORT], "resumed: the last LIST is recent"


class ReplayingCluster:
    """A cluster whose one change since version 42 deletes team-a/app at 101; a watch tells the
    changes after the version it resumes from, then a bookmark at 102. The first watch ends right
    after the deletion, still telling (no bookmark), as a short watch on a busy cluster does."""

    server = ScriptedCluster.server

    def __init__(self, stop: threading.Event, watches: int) -> None:
        self.stop, self.watches = stop, watches
        self.resumed_from: list[str] = []

    def list_configmap_page(self, namespace: str, **options: Any) -> tuple[list[Any], str, str]:
        return [], "102", ""  # a resumed informer's probe: the cluster is past what was stored

    def watch_configmaps(self, namespace: str, **options: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        version = options["resource_version"]
        self.resumed_from.append(version)
        if int(version) < 101:
            yield DELETED, configmap("team-a", "app", version="101")
        if len(self.resumed_from) > 1:
            yield BOOKMARK, {"metadata": {"resourceVersion": "102"}}
        CLOCK.now += options["timeout_seconds"]  # each ends on time
        if len(self.resumed_from) == self.watches:
            self.stop.set()


def test_a_short_watch_ending_while_telling_resumes_past_its_changes_only_once_they_are_stored(
    monkeypatch,
) -> None:
    """The cluster watch's events are stored by the sink's writer thread, after the watch told them.
    A short watch that ends still telling vouches for nothing, but the next watch resumes from its
    last version: were a store of those events to fail after the watch ended, they would never be told
    again, and a missed deletion would leave its "as applied" stamp until the next relist."""
    monkeypatch.setattr(informer_module, "MAX_BACKOFF_SECONDS", 0.0)  # no back-off wait
    applied = stamp_of(configmap("team-a", "app", version="100")).encode()
    store, stop = MemoryStore({"team-a": {"app": applied}}), threading.Event()
    sink = StampSink(store, lambda _: None)  # type: ignore[arg-type]
    sink.adopt("team-a", store.objects["team-a"])
    cluster = ReplayingCluster(stop, watches=3)
    store.fail_next_events = True  # Redis away for the deletion's batch

    ConfigMapInformer(
        lambda: cluster,  # type: ignore[arg-type, return-value]
        "",
        sink,
        WatchOptions(label_selector="", watch_seconds=WATCH_SECONDS),
        stop=stop,
        resume_from="42",
        resume_server=ReplayingCluster.server,
    ).run()
    sink.events.close()

    assert "team-a" not in store.objects, "the deletion is stored on its replay"
    assert store.fresh[""] is True
    assert cluster.resumed_from == ["42", "42", "102"], "resumed from where the unstored changes began"


class ListingOutlastsItsInformer(ScriptedCluster):
    """A LIST answered only after the informer was stopped (its namespace retired meanwhile)."""

    def list_configmap_page(self, namespace: str, **options: Any) -> tuple[list[Any], str, str]:
        self.calls.append(LIST)
        self.stop.set()
        return [configmap("team", "app", version="100")], "100", ""


def test_a_list_answered_after_the_informer_stopped_is_told_to_nobody():
    """Told, the old snapshot was stored as the namespace's, fresh, over what the next informer of the
    same namespace stores: a stamp of content the cluster no longer held settled plans."""
    stop = threading.Event()
    cluster, sink = ListingOutlastsItsInformer([], stop), Sink()
    ConfigMapInformer(
        lambda: cluster,  # type: ignore[arg-type, return-value]
        "team",
        sink,
        WatchOptions(label_selector="", watch_seconds=WATCH_SECONDS),
        stop=stop,
    ).run()

    assert cluster.calls == [LIST]
    assert sink.told == ["listing"], "neither the page, nor the LIST as complete, nor a watch"


def test_a_resumed_informer_lists_again_when_the_cluster_is_behind_the_stored_version():
    """etcd restored from a backup, or a cluster rebuilt behind the same address: a watch from a version
    the cluster has not reached says nothing, and its quiet end vouched within seconds for stamps of
    another timeline. A LIST of one object first tells the cluster is behind."""
    calls, told = run([Watch.QUIET], resume_from="500", at="120")
    assert calls == [PROBE, LIST, FULL], "listed again, never resumed from 500"
    assert told[0] == "lost", "nothing vouches meanwhile"
    calls, _ = run([Watch.QUIET], resume_from="500", at="501")
    assert calls == [PROBE, SHORT], "the cluster is past it: resumed"


def test_a_watch_that_ends_early_without_a_bookmark_vouches_for_nothing():
    """A proxy that ends watch streams, or an apiserver resetting its watch cache, ended each watch at
    once and cleanly: each end vouched, while nothing was watched, in a loop as fast as it answered."""
    calls, told = run([Watch.ENDS_AT_ONCE, Watch.ENDS_AT_ONCE, Watch.QUIET], resume_from="")
    assert calls == [LIST, FULL, SHORT, SHORT]
    assert told.count("alive") == 1, "only the watch that lasted its time vouches"
    calls, told = run([Watch.BOOKMARK_THEN_ENDS_AT_ONCE, Watch.QUIET], resume_from="")
    assert calls == [LIST, FULL, FULL], "a bookmark shows the stream was live"
