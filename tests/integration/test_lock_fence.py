"""The reconcile lock is fenced: a pass whose database session ends mid-pass stops writing, and the pass
that takes the freed lock over waits until the lost one's writes are over.

The lock is PostgreSQL's, held by the pass's session: when that session ends (PostgreSQL restarted, a
connection dropped, an administrator's ``pg_terminate_backend``), the lock is free at once, while the
pass's cluster writes go on from memory on other threads. Without a fence, two workers wrote to the
same clusters at once.
"""

from __future__ import annotations

import time
from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from gitops import locks
from gitops.locks import LOCK_CLASS, ReconcileLockLost, TakeoverPending, pass_fence, source_lock
from gitops.models import ApplyIntent, Change, PassClaim
from tests.gitrepo import configmap, policy
from tests.workers import poll

pytestmark = pytest.mark.django_db(transaction=True)


def _terminate(pid: int) -> None:
    """Ends a session from a connection of its own, as a PostgreSQL restart would end it."""
    params = connection.get_connection_params()
    with psycopg.connect(**params, autocommit=True) as other:
        # With a timeout it returns once the backend is gone, its locks with it: without one it returns
        # as the backend is told, and a check right after could still see the lock held.
        other.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])


def _lock_holder(source) -> int | None:
    with connection.cursor() as cursor:
        cursor.execute(
            # This database's: advisory locks of another database (a parallel session) share the ids.
            "SELECT pid FROM pg_locks"
            " WHERE locktype = 'advisory' AND classid = %s AND objid = %s AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            [LOCK_CLASS, source.pk],
        )
        row = cursor.fetchone()
    return row[0] if row else None


# Alone under pytest -n 2: it bounds a wait by the wall clock, which the other session slows.
@pytest.mark.exclusive
def test_a_pass_claims_the_source_at_its_first_write_and_releases_the_claim_as_it_ends(make_source):
    source = make_source()
    with source_lock(source) as acquired:
        assert acquired
        assert not PassClaim.objects.filter(source_id=source.pk).exists(), "a pass that writes nothing"
        pass_fence()()  # before its first write
        assert PassClaim.objects.get(source_id=source.pk).holder, "the pass claims the source"
    assert PassClaim.objects.get(source_id=source.pk).holder == "", "the next pass need not wait"
    started = time.monotonic()
    with source_lock(source) as acquired:  # and it does not
        assert acquired
    assert time.monotonic() - started < 1


def test_the_next_pass_waits_until_the_claim_of_a_pass_that_lost_its_session_is_old(
    make_source, settings, monkeypatch
):
    settings.SLUICE_PASS_TAKEOVER_SECONDS = 3
    source = make_source()
    PassClaim.objects.create(source_id=source.pk, holder="lost", alive_at=timezone.now())
    started = time.monotonic()
    with source_lock(source) as acquired:
        waited = time.monotonic() - started
        assert acquired
        pass_fence()()
        assert PassClaim.objects.get(source_id=source.pk).holder not in ("", "lost")
    assert 2 <= waited < 10, "the pass ran beside one that may still be writing, or waited past its grace"

    # A lost claim found again after the wait: the pass is refused, holding nothing, and says how long.
    monkeypatch.setattr(locks, "TAKEOVER_ATTEMPTS", 1)
    PassClaim.objects.filter(source_id=source.pk).update(holder="lost again", alive_at=timezone.now())
    with pytest.raises(TakeoverPending) as refused, source_lock(source):
        pytest.fail("a pass ran beside one that may still be writing")
    assert 2 <= refused.value.delay <= 3
    assert _lock_holder(source) is None, "a pass that waits holds nothing"

    old = timezone.now() - timedelta(seconds=4)
    PassClaim.objects.filter(source_id=source.pk).update(alive_at=old)
    with source_lock(source) as acquired:
        assert acquired, "a claim older than the grace is taken over at once"


def test_the_fence_proves_the_session_then_stops_the_pass_once_it_is_gone(make_source, monkeypatch):
    monkeypatch.setattr(locks, "FENCE_CHECK_SECONDS", 0.0)  # every call asks the session
    source = make_source()

    def a_pass_whose_session_ends() -> None:
        with source_lock(source) as acquired:
            assert acquired
            fence = pass_fence()
            fence()
            claimed = PassClaim.objects.get(source_id=source.pk).alive_at
            fence()
            assert PassClaim.objects.get(source_id=source.pk).alive_at > claimed, "a proof renews the claim"
            _terminate(_lock_holder(source))
            for _ in range(2):  # the write after it, and every one after that
                with pytest.raises(ReconcileLockLost):
                    fence()

    # The pass's end raises the loss too: whatever it did after, its lock was gone.
    with pytest.raises(ReconcileLockLost):
        a_pass_whose_session_ends()
    assert _lock_holder(source) is None
    assert PassClaim.objects.get(source_id=source.pk).holder != "", "the lost pass's claim stays"
    monkeypatch.setattr(locks, "TAKEOVER_ATTEMPTS", 1)
    with pytest.raises(TakeoverPending), source_lock(source):
        pytest.fail("the next pass did not wait for the lost one")


# Enough that one apply at a time still goes on for seconds after the session ends, on this machine too.
OBJECTS = 1600


@pytest.fixture
def configmaps_in(stack):
    """How many ConfigMaps namespaces hold, read cheaply: one listed, the rest counted by the server."""
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(config_file=stack["KUBECONFIG"]))

    def count(namespaces) -> int:
        total = 0
        for namespace in namespaces:
            page = api.list_namespaced_config_map(namespace, limit=1)
            total += len(page.items) + (page.metadata.remaining_item_count or 0)
        return total

    return count


def test_a_worker_whose_session_ends_mid_apply_stops_writing_and_the_next_pass_finishes_after_it(
    repo, make_namespaces, make_source, start_worker, configmaps_in, settings
):
    from gitops.tasks import sync_source

    namespaces = make_namespaces("a", "b")
    repo.write("sluice.yaml", policy(list(namespaces)))
    for index in range(OBJECTS // 2):
        data = {"index": str(index), "padding": "x" * 2048}
        repo.write(f"configmaps/cm-{index:04d}.yaml", configmap(f"cm-{index:04d}", data))
    repo.commit(f"{OBJECTS} objects")
    source = make_source()
    queue = f"fence-{source.pk}"
    # One apply at a time: the apply is under way for seconds, on the pass's own thread.
    start_worker(concurrency=1, queues=queue, env_overrides={"SLUICE_APPLY_CONCURRENCY": "1"})
    start_worker(concurrency=1, queues=f"{queue}-other")
    sync_source.apply_async((source.pk,), queue=queue)
    poll(lambda: configmaps_in(namespaces) >= 20, timeout=60, interval=0.02, what="the apply under way")
    lost_holder = PassClaim.objects.get(source_id=source.pk).holder
    session = _lock_holder(source)
    assert session is not None, "the pass ended before its session could"
    _terminate(session)
    ended_at = time.monotonic()
    # A push meanwhile, to another worker: the lock is free now.
    pushed = sync_source.apply_async((source.pk,), queue=f"{queue}-other")

    # Until another pass claims the source, count what reaches the cluster.
    seen: list[tuple[float, int]] = []

    def claimed_again() -> bool:
        return PassClaim.objects.get(source_id=source.pk).holder != lost_holder

    def taken_over() -> bool:
        if claimed_again():
            return True
        after, count = time.monotonic() - ended_at, configmaps_in(namespaces)
        if claimed_again():  # the count may hold the new pass's first writes
            return True
        seen.append((after, count))
        return False

    poll(taken_over, timeout=60, interval=0.1, what="the next pass to take the source over")
    claimed_after = time.monotonic() - ended_at
    settled = [count for after, count in seen if after >= 2.0]  # the fence's second, and writes under way
    assert len(settled) >= 5, seen
    assert len(set(settled)) == 1, f"the lost pass went on writing: {seen}"
    assert settled[0] < OBJECTS, "the session ended after the apply"
    grace = settings.SLUICE_PASS_TAKEOVER_SECONDS
    assert claimed_after >= grace - 2, f"taken over {claimed_after:.1f} s after, within the {grace} s grace"

    # The pass that took over finishes the lost one's intents, each logged once.
    assert pushed.get(timeout=120)["outcome"] in ("completed", "unchanged")
    poll(
        lambda: not ApplyIntent.objects.filter(source=source, status="pending").exists(),
        timeout=120,
        what="the lost pass's intents finished",
    )
    assert configmaps_in(namespaces) == OBJECTS
    logged = list(Change.objects.filter(source=source).values_list("namespace", "name"))
    assert len(logged) == len(set(logged)) == OBJECTS


def test_a_persons_decision_waits_for_a_lost_pass_too_within_its_own_wait(make_source, settings):
    from gitops.locks import SourceBusy, sources_locked

    settings.SLUICE_PASS_TAKEOVER_SECONDS = 3
    source = make_source()
    PassClaim.objects.create(source_id=source.pk, holder="lost", alive_at=timezone.now())
    with pytest.raises(SourceBusy), sources_locked([source], wait=1):
        pytest.fail("a decision was taken beside a pass that may still be writing")
    assert _lock_holder(source) is None
    started = time.monotonic()
    with sources_locked([source], wait=10):
        assert time.monotonic() - started >= 1, "it did not wait for the lost pass's grace"
        assert _lock_holder(source) is not None


def test_a_pass_whose_own_statement_meets_the_lost_session_first_ends_with_the_lock_lost(make_source):
    """Not the database's failure as a bug of Sluice's (recorded, not retried): the lock lost, retried."""
    from django.db import DatabaseError

    from gitops.models import Source

    source = make_source()

    def a_pass_whose_session_ends_before_its_next_statement() -> None:
        with source_lock(source):
            _terminate(_lock_holder(source))
            Source.objects.filter(pk=source.pk).update(last_error="")

    with pytest.raises(ReconcileLockLost) as lost:
        a_pass_whose_session_ends_before_its_next_statement()
    assert isinstance(lost.value.__cause__, DatabaseError)
    with source_lock(source) as acquired:  # it wrote nothing to a cluster, so claimed nothing: no wait
        assert acquired


def test_a_lost_claim_committed_as_the_lock_came_free_holds_the_first_write(make_source, settings):
    # The lock's statement reads the claims as they were just before it took the lock: a lost pass's
    # last renewal, committed in between, is what the pass's own claim finds before its first write.
    settings.SLUICE_PASS_TAKEOVER_SECONDS = 3
    source = make_source()
    with source_lock(source) as acquired:
        assert acquired
        PassClaim.objects.create(source_id=source.pk, holder="lost", alive_at=timezone.now())
        started = time.monotonic()
        pass_fence()()
        assert time.monotonic() - started >= 2, "the first write went out beside the lost pass's"
        assert PassClaim.objects.get(source_id=source.pk).holder not in ("", "lost")


def test_a_pass_that_waited_for_a_lost_claim_reads_the_source_again_before_it_runs(
    repo, make_namespaces, make_source, cluster, settings, monkeypatch
):
    """A push's pass read the source, then waited out a lost pass's claim (seconds, after a PostgreSQL
    restart): a suspend, a deletion or a narrowed scope asked meanwhile held for a later pass only, and
    this one ran on the source as it was before its wait, putting the commit out."""
    from gitops.models import Source
    from gitops.reconcile import source_sync

    settings.SLUICE_PASS_TAKEOVER_SECONDS = 2
    (app,) = make_namespaces("app")
    repo.write_all({"sluice.yaml": policy([app]), "configmaps/app.yaml": configmap("waited", {"A": "1"})})
    repo.commit("a ConfigMap")
    source = make_source()
    PassClaim.objects.create(source_id=source.pk, holder="lost", alive_at=timezone.now())
    real_sleep = time.sleep

    def suspended_meanwhile(seconds: float) -> None:
        Source.objects.filter(pk=source.pk).update(suspended=True)
        real_sleep(seconds)

    monkeypatch.setattr(locks.time, "sleep", suspended_meanwhile)
    result = source_sync(source.pk, automatic=True)

    assert result.outcome == "suspended", result
    assert cluster.get_configmap(app, "waited") is None, "nothing went out"
    assert not Source.objects.get(pk=source.pk).sync_queued
