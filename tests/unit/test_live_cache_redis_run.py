"""A live-cache term ends when Redis answers from another run than the one it began on."""

from __future__ import annotations

from types import SimpleNamespace

from gitops import livecache
from gitops.livecache import RUN_CHANGES_TRUSTED, LiveCache, LiveCacheOptions


class Term:
    """A term whose lease always renews, on a Redis answering with the run ids of ``runs`` in turn (the
    last one from then on); the cache is stopped after ``renewals`` renewals."""

    def __init__(self, cache: LiveCache, runs: list[str], *, renewals: int = 100) -> None:
        self.cache, self.runs, self.renewals, self.told = cache, runs, renewals, []
        self.store = SimpleNamespace(renew=self._renew, server_run=self._run, release=self._release)

    def _renew(self) -> bool:
        self.renewals -= 1
        if self.renewals <= 0:
            self.cache.stopping.set()  # a term that sees no new run is stopped from outside
        return True

    def _run(self) -> str:
        return self.runs.pop(0) if len(self.runs) > 1 else self.runs[0]

    def _release(self) -> None:
        self.told.append("released")

    def begin(self, *, whole_cluster: bool) -> bool:
        return True

    def rescan(self) -> None:
        return None

    def cluster_read_granted_again(self) -> bool:
        return False

    def end(self) -> None:
        self.told.append("ended")

    whole_cluster = True


def serve(cache: LiveCache, runs: list[str], *, renewals: int = 100) -> list[str]:
    cache.stopping.clear()
    term = Term(cache, runs, renewals=renewals)
    cache._serve(term)  # type: ignore[arg-type]
    assert term.renewals < renewals, "served: renewed at least once"
    return term.told


def a_cache(monkeypatch) -> LiveCache:
    monkeypatch.setattr(livecache, "RENEW_SECONDS", 0.001)
    return LiveCache("local", LiveCacheOptions(), waker=None)  # type: ignore[arg-type]


def test_a_redis_that_restarted_under_the_term_ends_it_and_gives_the_lease_up(monkeypatch):
    """Restarted within the lease (or failed over), Redis may lack the last second's writes while the
    lease's key survived; the term's informers, past those events in memory, would never store them."""
    assert serve(a_cache(monkeypatch), ["run-a", "run-a", "run-b"]) == ["ended", "released"]


def test_the_same_run_throughout_keeps_the_term(monkeypatch):
    assert serve(a_cache(monkeypatch), ["run-a"], renewals=5) == ["released"], "stopped from outside only"


def test_a_redis_that_does_not_say_its_run_keeps_the_term(monkeypatch):
    """``INFO`` refused by an ACL: the run id is "", and nothing is taken for a restart."""
    assert serve(a_cache(monkeypatch), [""], renewals=5) == ["released"]


def test_a_run_id_that_keeps_changing_is_taken_for_several_servers_and_no_longer_ends_terms(monkeypatch):
    """A proxy whose frontends reach different servers answers with their run ids in turn: each term
    would end within seconds, every namespace stale each time. After a few changes the check is off."""
    cache = a_cache(monkeypatch)
    for _ in range(RUN_CHANGES_TRUSTED - 1):
        assert serve(cache, ["run-a", "run-b"]) == ["ended", "released"]
    assert serve(cache, ["run-a", "run-b"], renewals=5) == ["released"], "the third change keeps the term"
    assert serve(cache, ["run-a", "run-c"], renewals=5) == ["released"], "and so does every later one"


def test_a_redis_that_refuses_info_is_said_once_not_taken_silently(caplog):
    """An ACL that refuses INFO (in @dangerous) turns the restart check off for good: said, once a term."""
    import logging

    import redis

    from gitops.cluster.livestore import LiveStore

    def refused(section: str) -> dict:
        raise redis.ResponseError("NOPERM this user has no permissions to run the 'info' command")

    store = object.__new__(LiveStore)
    store.cluster, store.client, store._info_refusal_said = "prod-eu", SimpleNamespace(info=refused), False
    with caplog.at_level(logging.WARNING, logger="gitops.livecache"):
        assert [store.server_run() for _ in range(3)] == ["", "", ""]
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 1 and "prod-eu: Redis refuses INFO" in said[0] and "allow INFO" in said[0]


def test_a_redis_that_may_evict_its_keys_is_not_served_from(monkeypatch, caplog):
    """Managed Redis services default to volatile-lru, which evicts keys with a TTL first: the floors.
    A lost floor let a late, older event store an old stamp back as applied, and a revert was settled
    "unchanged". Such a Redis is said, once, and the cache serves nothing from it (plans read)."""
    import logging

    from gitops.cluster.livestore import LiveStore

    def memory(policy: str, maxmemory: int):
        store = object.__new__(LiveStore)
        info = {"maxmemory": maxmemory, "maxmemory_policy": policy}
        store.cluster, store.client = "prod-eu", SimpleNamespace(info=lambda section: info)
        return store

    assert (
        memory("volatile-lru", 2**30).eviction_risk()
        == "maxmemory 1073741824 with maxmemory-policy volatile-lru"
    )
    assert memory("noeviction", 2**30).eviction_risk() == ""
    assert memory("allkeys-lru", 0).eviction_risk() == "", "no maxmemory: nothing is evicted"

    cache = a_cache(monkeypatch)
    claims: list[bool] = []
    evicting = memory("volatile-lru", 2**30)
    evicting.claim = lambda: claims.append(True) or True  # type: ignore[method-assign]
    rounds = iter(range(5))
    monkeypatch.setattr(
        cache.stopping, "wait", lambda seconds: next(rounds, None) is None and cache.stopping.set()
    )
    with caplog.at_level(logging.ERROR, logger="gitops.livecache"):
        assert cache._take_lease(SimpleNamespace(store=evicting)) is False  # type: ignore[arg-type]
    assert claims == [], "never took the lease: nothing served"
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 1 and "maxmemory-policy noeviction" in said[0]
