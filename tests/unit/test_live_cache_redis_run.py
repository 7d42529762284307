"""A live-cache term ends when Redis answers from another run than the one it began on."""

from __future__ import annotations

import functools
import threading
from types import SimpleNamespace

from gitops import livecache
from gitops.livecache import LiveCache


class Term:
    """A term whose lease always renews, on a Redis whose run id is ``runs``, one per renewal."""

    def __init__(self, runs: list[str]) -> None:
        self.runs, self.told = runs, []
        self.store = SimpleNamespace(
            renew=lambda: True, server_run=self._run, release=lambda: self.told.append("release")
        )

    def _run(self) -> str:
        return self.runs.pop(0) if len(self.runs) > 1 else self.runs[0]

    def begin(self, *, whole_cluster: bool) -> bool:
        return True

    def rescan(self) -> None:
        self.told.append("rescan")

    def cluster_read_granted_again(self) -> bool:
        return False

    def end(self) -> None:
        self.told.append("end")

    whole_cluster = True


def serve(term: Term, *, stop_after: int) -> None:
    cache = SimpleNamespace(cluster_name="local", stopping=threading.Event())
    cache._redis_restarted = functools.partial(LiveCache._redis_restarted, cache)
    rescans = 0

    def rescan() -> None:
        nonlocal rescans
        rescans += 1
        if rescans >= stop_after:
            cache.stopping.set()  # a term that sees no new run is stopped from outside

    term.rescan = rescan  # type: ignore[method-assign]
    LiveCache._serve(cache, term)  # type: ignore[arg-type]


def test_a_redis_that_restarted_under_the_term_ends_it_and_gives_the_lease_up(monkeypatch):
    """Restarted within the lease (or failed over), Redis may lack the last second's writes while the
    lease's key survived; the term's informers, past those events in memory, would never store them."""
    monkeypatch.setattr(livecache, "RENEW_SECONDS", 0.001)
    term = Term(["run-a", "run-a", "run-b"])

    serve(term, stop_after=100)

    assert term.told == ["end", "release"], "ended at the new run, before any rescan of it"
    assert term.runs == ["run-b"]


def test_the_same_run_throughout_keeps_the_term(monkeypatch):
    monkeypatch.setattr(livecache, "RENEW_SECONDS", 0.001)
    term = Term(["run-a"])

    serve(term, stop_after=5)

    assert term.told == ["release"], "stopped from outside, never ended for a restart"


def test_a_redis_that_does_not_say_its_run_keeps_the_term(monkeypatch):
    """``INFO`` refused by an ACL: the run id is "", and nothing is taken for a restart."""
    monkeypatch.setattr(livecache, "RENEW_SECONDS", 0.001)
    term = Term([""])

    serve(term, stop_after=5)

    assert term.told == ["release"]
