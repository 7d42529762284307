"""The live cache on the real stack: a `gitops live-cache` process, real watches, Redis, a real worker.

Every source here polls once an hour, and no beat runs: a reconcile that nobody
asked for can only come from the live cache waking the source.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from datetime import timedelta

import pytest
from django.conf import settings

from gitops import cluster_admin
from gitops.cluster import livestore
from gitops.cluster.livestore import Written, deleted_at
from gitops.models import Change, Source
from gitops.plan import LiveStamp
from gitops.plan.stamps import stamp_of
from gitops.record.audit import Actor
from gitops.vocabulary import ChangeAction
from tests.clusters import FlakyKubeconfig
from tests.gitrepo import configmap, policy
from tests.probes import deadline_in, expire, probe_passes
from tests.replica import apiserver_replica
from tests.workers import poll

pytestmark = pytest.mark.django_db(transaction=True)

HOURLY = timedelta(hours=1)
HEAL_DEADLINE = 10.0  # seconds; the poll interval is an hour
FLAGS = {
    "flags": {"beta": {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}}
}


MEMBER = "member-1"  # a member cluster of the stack: its own kube-apiserver, context member-1


def fresh(*namespaces: str, cluster: str | None = None) -> bool:
    """Whether the live cache vouches for every one of ``namespaces`` of ``cluster`` (default: the
    default cluster) now."""
    stamps = livestore.fresh_stamps(cluster or settings.SLUICE_CLUSTER_NAME, namespaces)
    return set(stamps) == set(namespaces)


def as_applied(cluster: str, namespace: str, name: str) -> bool:
    """Whether the live cache holds the object as Sluice applied it (in a namespace it vouches for)."""
    text = livestore.fresh_stamps(cluster, [namespace]).get(namespace, {}).get(name)
    stamp = LiveStamp.decode(text) if text is not None else None
    return stamp is not None and stamp.as_applied


def kubectl_edit(namespace: str, name: str, sed: str, *, context: str = "local") -> None:
    """`kubectl edit`, with sed as the editor: a person changing a managed object by hand."""
    subprocess.run(
        ["kubectl", "--context", context, "edit", "configmap", name, "-n", namespace],
        env={**os.environ, "KUBE_EDITOR": f"sed -i -e '{sed}'"},
        check=True,
        capture_output=True,
        timeout=60,
    )


def heals(source: Source) -> int:
    return Change.objects.filter(source=source, action=ChangeAction.SELF_HEAL, error="").count()


def last_plan(source: Source) -> dict:
    return Source.objects.get(pk=source.pk).last_plan or {}


def synced_source(repo, make_namespaces, make_source, sync, *, self_heal: bool = True, objects: int = 1):
    (namespace,) = make_namespaces("live")
    repo.write_all({"sluice.yaml": policy([namespace], selfHeal=self_heal, prune=True)})
    for index in range(objects):
        repo.write(f"configmaps/app-{index}.yaml", configmap(f"app-{index}", {"LOG_LEVEL": "info"}))
    repo.commit("v1")
    source = make_source(poll_interval=HOURLY)
    assert sync(source)["outcome"] == "applied"
    return namespace, source


def test_a_kubectl_edit_is_healed_without_waiting_for_a_poll(
    repo, make_namespaces, make_source, sync, cluster, live_cache
):
    namespace, source = synced_source(repo, make_namespaces, make_source, sync)
    poll(lambda: fresh(namespace), timeout=30, what="the live cache to watch the namespace")

    started = time.monotonic()
    kubectl_edit(namespace, "app-0", "s/LOG_LEVEL: info/LOG_LEVEL: debug/")
    poll(lambda: heals(source) == 1, timeout=HEAL_DEADLINE, what="the edit to be healed")
    healed_in = time.monotonic() - started

    assert cluster.get_configmap(namespace, "app-0")["data"] == {"LOG_LEVEL": "info"}
    change = Change.objects.get(source=source, action=ChangeAction.SELF_HEAL)
    assert change.actor == "sluice"
    assert change.diff == [
        {"op": "change", "field": "data", "key": "LOG_LEVEL", "old": "debug", "new": "info"}
    ]
    assert healed_in < HEAL_DEADLINE


def test_a_configmap_labelled_for_a_source_that_never_applied_it_wakes_nobody(
    repo, make_namespaces, make_source, sync, cluster, live_cache
):
    """Labels anyone may write: a tenant's ConfigMap labelled with another source's name, made and edited
    in a loop, reconciled that source in a loop. Only an object the source's inventory holds wakes it;
    an edit of one still heals at once."""
    namespace, source = synced_source(repo, make_namespaces, make_source, sync)
    other = make_source(poll_interval=HOURLY)  # never synced: it applied nothing
    poll(lambda: fresh(namespace), timeout=30, what="the live cache to watch the namespace")

    forged = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "forged",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "sluice", "sluice.dev/source": other.name},
        },
        "data": {"K": "v"},
    }
    cluster.apply_configmap(forged, field_manager="tenant")
    kubectl_edit(namespace, "forged", "s/K: v/K: w/")
    kubectl_edit(
        namespace, "app-0", "s/LOG_LEVEL: info/LOG_LEVEL: debug/"
    )  # after them, in the watch's order
    poll(lambda: heals(source) == 1, timeout=HEAL_DEADLINE, what="the edit of a managed object to be healed")

    told = live_cache.log_path.read_text()
    assert f"source={source.name} changed in the cluster: reconcile queued" in told
    assert f"source={other.name} changed in the cluster" not in told


def resume_keys(cluster: str) -> set[str]:
    """The live cache's resume keys of ``cluster`` in Redis: ``cresume`` for its one cluster-wide
    watch, ``resume:NS`` for each namespace watched on its own."""
    prefix = livestore._key(cluster, "")
    found = livestore.redis_client().scan_iter(match=prefix + "*resume*", count=1000)
    return {key[len(prefix) :] for key in found}


def test_one_watch_covers_every_namespace_of_a_cluster(repo, make_namespaces, make_source, sync, live_cache):
    first, _ = synced_source(repo, make_namespaces, make_source, sync, objects=2)
    second, other = synced_source(repo, make_namespaces, make_source, sync, objects=3)
    poll(lambda: fresh(first, second), timeout=30, what="the live cache to vouch for both namespaces")

    default = settings.SLUICE_CLUSTER_NAME
    assert resume_keys(default) == {"cresume"}, "one watch for the cluster, no watch of its own per namespace"
    assert f"live cache of cluster {default}: watching ConfigMaps in every namespace" in (
        live_cache.log_path.read_text()
    )
    assert sync(other)["outcome"] == "unchanged"
    assert last_plan(other)["reads"] == {"cache": 3, "get": 0, "list": 0}

    # A namespace with no managed ConfigMap has no stamps: the cluster's watch vouches for it all
    # the same, but planning reads it, as a first apply there must.
    (empty,) = make_namespaces("empty")
    assert not fresh(empty)


@pytest.mark.parametrize("scope", ["cluster", "namespace"])
def test_either_way_of_watching_heals_an_edit_and_a_deletion(
    scope, repo, make_namespaces, make_source, sync, cluster, start_live_cache
):
    namespace, source = synced_source(repo, make_namespaces, make_source, sync, objects=2)
    start_live_cache(SLUICE_LIVE_CACHE_SCOPE=scope)
    poll(lambda: fresh(namespace), timeout=30, what="the live cache to watch the namespace")
    keys = resume_keys(settings.SLUICE_CLUSTER_NAME)
    if scope == "cluster":
        assert "cresume" in keys and f"resume:{namespace}" not in keys, keys
    else:  # and a namespace watch's writes void the cluster watch's resume version
        assert f"resume:{namespace}" in keys and "cresume" not in keys, keys

    kubectl_edit(namespace, "app-0", "s/LOG_LEVEL: info/LOG_LEVEL: debug/")
    poll(lambda: heals(source) == 1, timeout=HEAL_DEADLINE, what="the edit to be healed")
    cluster.delete_configmap(namespace, "app-1")
    poll(lambda: cluster.get_configmap(namespace, "app-1"), timeout=HEAL_DEADLINE, what="app-1 made again")

    assert cluster.get_configmap(namespace, "app-0")["data"] == {"LOG_LEVEL": "info"}
    assert cluster.get_configmap(namespace, "app-1")["data"] == {"LOG_LEVEL": "info"}
    poll(lambda: as_applied(settings.SLUICE_CLUSTER_NAME, namespace, "app-1"), timeout=30, what="the cache")
    assert sync(source)["outcome"] == "unchanged"
    assert last_plan(source)["reads"] == {"cache": 2, "get": 0, "list": 0}


def test_a_namespace_watchs_write_voids_the_cluster_watchs_resume_version_and_freshness(stack):
    """Redis's side, through the real Lua scripts: stamps a namespace's own watch wrote are not
    complete up to the cluster watch's version, so that watch must list again, and vouches for nothing."""
    cluster = f"t-{uuid.uuid4().hex[:8]}"
    store = livestore.LiveStore(cluster, "term-1", stale_seconds=30)
    assert store.claim()
    try:
        assert store.write("team-a", {"app": "a"}, whole_cluster=True)
        assert store.write("", {}, resource_version="41", fresh=True, whole_cluster=True)
        assert livestore.fresh_stamps(cluster, ["team-a", "team-b"]) == {"team-a": {"app": "a"}}
        assert store.load_cluster() == ({"team-a": {"app": "a"}}, "41")

        assert store.write("team-b", {"app": "b"}, resource_version="42", fresh=True)

        assert store.load_cluster() == ({"team-a": {"app": "a"}, "team-b": {"app": "b"}}, "")
        assert livestore.fresh_stamps(cluster, ["team-a", "team-b"]) == {"team-b": {"app": "b"}}
        a_paused_old_term = livestore.LiveStore(cluster, "term-0", stale_seconds=30)
        assert not a_paused_old_term.write("team-a", {"app": "x"}, whole_cluster=True)
        assert not a_paused_old_term.forget("team-b")
        assert store.load_cluster()[0] == {"team-a": {"app": "a"}, "team-b": {"app": "b"}}
    finally:
        store.release()
        for namespace in ("team-a", "team-b"):
            store.client.delete(*store._keys(namespace))


def test_a_batch_of_cluster_events_is_stored_whole_with_the_resume_version_last(stack):
    """``write_events`` through the real Lua script: several namespaces in one command, the last
    event of a name wins, the resume version and freshness written once, and fenced."""
    cluster = f"t-{uuid.uuid4().hex[:8]}"
    store = livestore.LiveStore(cluster, "term-1", stale_seconds=30)
    assert store.claim()
    try:
        events = [
            ("team-a", "app", "a1"),
            ("team-b", "app", "b1"),
            ("team-a", "app", "a2"),
            ("team-a", "old", None),
        ]
        assert store.write("team-a", {"old": "o"}, whole_cluster=True)
        assert livestore.fresh_stamps(cluster, ["team-a"]) == {}, "not vouched for before a watch is"

        assert store.write_events(events, resource_version="77", fresh=True)

        assert store.load_cluster() == ({"team-a": {"app": "a2"}, "team-b": {"app": "b1"}}, "77")
        assert livestore.fresh_stamps(cluster, ["team-a", "team-b"]) == {
            "team-a": {"app": "a2"},
            "team-b": {"app": "b1"},
        }
        a_paused_old_term = livestore.LiveStore(cluster, "term-0", stale_seconds=30)
        assert not a_paused_old_term.write_events([("team-a", "app", "x")], resource_version="78", fresh=True)
        assert store.load_cluster() == ({"team-a": {"app": "a2"}, "team-b": {"app": "b1"}}, "77")

        # A resumed watch before its first bookmark keeps the freshness as it is; a failure drops it.
        assert store.write_events([("team-b", "app", "b2")], resource_version="79", fresh=None)
        assert livestore.fresh_stamps(cluster, ["team-b"]) == {"team-b": {"app": "b2"}}
        assert store.write_events([("team-b", "new", "n1")], resource_version="80", fresh=False)
        assert livestore.fresh_stamps(cluster, ["team-a", "team-b"]) == {}, "not vouched for once dropped"
        assert store.write_events([("team-a", "app", "a3")], resource_version="81", fresh=None)
        assert livestore.fresh_stamps(cluster, ["team-a"]) == {}, "kept dropped"
        assert store.load_cluster() == ({"team-a": {"app": "a3"}, "team-b": {"app": "b2", "new": "n1"}}, "81")
        assert store.write_events([], resource_version="82", fresh=True), "nothing to store"
        assert store.load_cluster()[1] == "81"
    finally:
        store.release()
        for namespace in ("team-a", "team-b"):
            store.client.delete(*store._keys(namespace))


def _objects_key(cluster: str, namespace: str) -> str:
    return livestore._key(cluster, "objects", namespace)


def test_every_write_of_a_namespace_gives_it_a_new_version_and_a_reader_reads_only_what_moved(stack):
    """Through the real Lua scripts: a write that changes a namespace's stamps gives its hash a new
    version of the term's epoch; a reader that kept a namespace's stamps at its version is sent the
    version alone until it moves. A version never stands alone: a hash whose last stamp goes is gone."""
    cluster = f"t-{uuid.uuid4().hex[:8]}"
    store = livestore.LiveStore(cluster, "term-1", stale_seconds=30)
    assert store.claim()
    try:
        assert store.write("team-a", {"app": "a"}, whole_cluster=True)
        assert store.write("team-b", {"app": "b"}, whole_cluster=True)
        assert store.write("", {}, resource_version="41", fresh=True, whole_cluster=True)
        first = livestore.fresh_stamps_since(cluster, ["team-a", "team-b"], {})
        assert {ns: found.texts for ns, found in first.items()} == {
            "team-a": {"app": "a"},
            "team-b": {"app": "b"},
        }
        versions = {ns: found.version for ns, found in first.items()}
        assert all(version.startswith("term-1.") for version in versions.values()), versions
        assert versions["team-a"] != versions["team-b"]
        assert store.load_cluster()[0] == {"team-a": {"app": "a"}, "team-b": {"app": "b"}}, "no version"

        # Renewing the freshness writes no stamp: the versions stand, and no stamps are sent.
        assert store.write("", {}, resource_version="42", fresh=True, whole_cluster=True)
        again = livestore.fresh_stamps_since(cluster, ["team-a", "team-b"], versions)
        assert again == {ns: livestore.NamespaceStamps(version, None) for ns, version in versions.items()}

        assert store.write_events([("team-a", "app", "a2")], resource_version="43", fresh=True)
        moved = livestore.fresh_stamps_since(cluster, ["team-a", "team-b"], versions)
        assert moved["team-a"].texts == {"app": "a2"}
        assert moved["team-a"].version not in ("", versions["team-a"])
        assert moved["team-b"] == livestore.NamespaceStamps(versions["team-b"], None)
        # A version kept from before a write (a reader that missed it) is read whole, never trusted.
        assert livestore.fresh_stamps_since(cluster, ["team-a"], versions)["team-a"].texts == {"app": "a2"}

        assert store.write_events([("team-b", "app", None)], resource_version="44", fresh=True)
        assert not store.client.exists(_objects_key(cluster, "team-b")), "no hash of a version alone"
        assert "team-b" not in livestore.fresh_stamps_since(cluster, ["team-b"], versions)
        assert store.write("team-a", {}, reset=True, whole_cluster=True)
        assert not store.client.exists(_objects_key(cluster, "team-a"))
    finally:
        store.release()
        for namespace in ("team-a", "team-b"):
            store.client.delete(*store._keys(namespace))


def test_a_version_is_trusted_only_while_the_term_that_wrote_it_holds_the_lease(stack):
    """An epoch never holds the lease twice, and every write of a term gives a new version: so a version
    of the term holding the lease has seen every write since. Any other (a term before, or a writer of
    an older release that keeps no version) makes the reader read the stamps whole."""
    cluster = f"t-{uuid.uuid4().hex[:8]}"
    first_term = livestore.LiveStore(cluster, "term-1", stale_seconds=30)
    assert first_term.claim()
    second_term = livestore.LiveStore(cluster, "term-2", stale_seconds=30)
    try:
        assert first_term.write("team-a", {"app": "a"}, resource_version="7", fresh=True)
        kept = {"team-a": livestore.fresh_stamps_since(cluster, ["team-a"], {})["team-a"].version}
        first_term.release()
        # The lease let go between a reader's two round trips (a cache process stopping): nothing kept
        # is trusted and nothing raises; the namespace is not vouched for, so a pass reads it.
        found: dict[str, livestore.NamespaceStamps] = {}
        livestore._read_fresh(first_term.client, cluster, ["team-a"], kept, found)
        assert found == {}
        livestore._read_fresh(first_term.client, cluster, ["team-a"], {}, found)
        assert found == {}
        assert second_term.claim()
        assert second_term.write("team-a", {}, resource_version="8", fresh=True)  # freshness alone
        # An older release's writer changes a stamp and leaves the version as it was.
        second_term.client.hset(_objects_key(cluster, "team-a"), "app", "changed")

        found = livestore.fresh_stamps_since(cluster, ["team-a"], kept)["team-a"]
        assert found == livestore.NamespaceStamps("", {"app": "changed"}), "term-1's version is not trusted"
        assert livestore.fresh_stamps(cluster, ["team-a"]) == {"team-a": {"app": "changed"}}
        assert second_term.load("team-a") == ({"app": "changed"}, "8")
    finally:
        second_term.release()
        first_term.client.delete(*first_term._keys("team-a"))


def test_a_new_term_versions_the_stamps_it_loaded_and_a_reader_trusts_them_from_then_on(stack):
    """``adopt``: the stamps as they are, at a version of the new term, fenced by its lease; a hash
    that is not there is not made."""
    cluster = f"t-{uuid.uuid4().hex[:8]}"
    first_term = livestore.LiveStore(cluster, "term-1", stale_seconds=30)
    second_term = livestore.LiveStore(cluster, "term-2", stale_seconds=30)
    assert first_term.claim()
    try:
        assert first_term.write("team-a", {"app": "a"}, resource_version="7", fresh=True)
        kept = {"team-a": livestore.fresh_stamps_since(cluster, ["team-a"], {})["team-a"].version}
        first_term.release()
        assert second_term.claim()
        assert not first_term.adopt(["team-a"]), "fenced: a term without the lease changes nothing"
        assert first_term.load("team-a", adopt=True) == ({"app": "a"}, "7")
        assert livestore.fresh_stamps_since(cluster, ["team-a"], {}) == {}, "not fresh, not trusted"
        assert (
            second_term.client.hget(_objects_key(cluster, "team-a"), livestore.VERSION_FIELD)
            == kept["team-a"]
        )
        assert second_term.adopt(["team-gone"])
        assert not second_term.client.exists(_objects_key(cluster, "team-gone"))
        second_term.client.script_flush()  # a Redis that lost its scripts: loaded again, and run once
        assert second_term.load("team-a", adopt=True) == ({"app": "a"}, "7")
        assert second_term.write("team-a", {}, resource_version="8", fresh=True)  # freshness alone

        found = livestore.fresh_stamps_since(cluster, ["team-a"], kept)["team-a"]
        assert found.texts == {"app": "a"} and found.version.startswith("term-2."), found
        again = livestore.fresh_stamps_since(cluster, ["team-a"], {"team-a": found.version})["team-a"]
        assert again == livestore.NamespaceStamps(found.version, None), "trusted from then on"
        assert second_term.write("team-a", {"app": "a2"}, fresh=True)
        moved = livestore.fresh_stamps_since(cluster, ["team-a"], {"team-a": found.version})["team-a"]
        assert moved.texts == {"app": "a2"} and moved.version != found.version
    finally:
        second_term.release()
        first_term.client.delete(*first_term._keys("team-a"))


# Alone under pytest -n 2: Redis's scripts are the server's, shared by every database, and the other
# session's live cache would load this one again between the flush and the assertion that it is gone.
@pytest.mark.exclusive
def test_a_batch_of_events_costs_one_round_trip_and_survives_a_redis_that_lost_its_scripts(
    stack, monkeypatch
):
    """Sent as EVALSHA straight, a batch never asks SCRIPT EXISTS first (redis-py's Script in a
    pipeline does: one more round trip a batch); a Redis that forgot the script (restarted, flushed)
    answers NOSCRIPT to the whole batch, which runs again once the script is loaded. Events are one
    command whatever namespaces they span; a relist's namespaces, one pipeline."""
    import redis

    cluster = f"t-{uuid.uuid4().hex[:8]}"
    store = livestore.LiveStore(cluster, "term-1", stale_seconds=30)
    assert store.claim()
    no_round_trip = lambda *_: pytest.fail("the batch asked SCRIPT EXISTS first")  # noqa: E731
    monkeypatch.setattr(redis.client.Pipeline, "load_scripts", no_round_trip)
    try:
        assert store.write_events(
            [("team-a", "app", "a1"), ("team-b", "app", "b1")], resource_version="1", fresh=True
        )

        store.client.script_flush()
        assert store.client.script_exists(store._write_events.sha) == [False]
        assert store.write_events([("team-b", "app", "b2")], resource_version="3", fresh=True)
        assert store.client.script_exists(store._write_events.sha) == [True], "loaded again by the retry"
        assert store.load_cluster() == ({"team-a": {"app": "a1"}, "team-b": {"app": "b2"}}, "3")
        store.client.script_flush()
        assert store.replace_all({"team-a": {"app": "a3"}}, gone=["team-b"])
        assert store.client.script_exists(store._write.sha) == [True], "loaded again by the retry"
        assert store.load_cluster() == ({"team-a": {"app": "a3"}}, "3")
    finally:
        monkeypatch.undo()
        store.release()
        for namespace in ("team-a", "team-b"):
            store.client.delete(*store._keys(namespace))


def test_a_cluster_watched_the_other_way_in_between_is_listed_again_not_resumed(
    repo, make_namespaces, make_source, sync, cluster, start_live_cache
):
    namespace, source = synced_source(repo, make_namespaces, make_source, sync)
    default = settings.SLUICE_CLUSTER_NAME
    whole = start_live_cache(SLUICE_LIVE_CACHE_SCOPE="cluster")
    poll(lambda: fresh(namespace), timeout=30, what="the cluster's watch to vouch for the namespace")
    whole.stop()

    by_namespace = start_live_cache(SLUICE_LIVE_CACHE_SCOPE="namespace")
    poll(lambda: fresh(namespace), timeout=30, what="the namespace's own watch to vouch for it")
    assert "cresume" not in resume_keys(default), "stamps it writes are not complete up to that version"
    by_namespace.stop()
    kubectl_edit(namespace, "app-0", "s/LOG_LEVEL: info/LOG_LEVEL: unwatched/")

    again = start_live_cache(SLUICE_LIVE_CACHE_SCOPE="cluster")
    poll(lambda: heals(source) == 1, timeout=30, what="the edit made while nothing watched to be healed")
    poll(lambda: fresh(namespace), timeout=30, what="the cluster's watch to vouch for the namespace again")
    assert f"live cache of cluster {default}: watching ConfigMaps in every namespace, from a LIST" in (
        again.log_path.read_text()
    )
    assert f"resume:{namespace}" not in resume_keys(default)
    assert cluster.get_configmap(namespace, "app-0")["data"] == {"LOG_LEVEL": "info"}


def test_drift_is_reported_at_once_and_left_alone_without_self_heal(
    repo, make_namespaces, make_source, sync, cluster, live_cache
):
    namespace, source = synced_source(repo, make_namespaces, make_source, sync, self_heal=False)
    poll(lambda: fresh(namespace), timeout=30, what="the live cache to watch the namespace")

    kubectl_edit(namespace, "app-0", "s/LOG_LEVEL: info/LOG_LEVEL: debug/")

    reported = lambda: last_plan(source).get("summary") == {"drift": 1}  # noqa: E731
    poll(reported, timeout=HEAL_DEADLINE, what="the drift to be reported")
    assert cluster.get_configmap(namespace, "app-0")["data"] == {"LOG_LEVEL": "debug"}
    assert heals(source) == 0


def test_a_plan_reads_only_what_the_cache_cannot_vouch_for(
    repo, make_namespaces, make_source, sync, cluster, live_cache
):
    namespace, source = synced_source(repo, make_namespaces, make_source, sync, objects=4)
    repo.write("flags/beta.json", json.dumps(FLAGS))
    repo.commit("a flag set")
    assert sync(source)["summary"] == {"create": 1, "unchanged": 4}
    poll(lambda: fresh(namespace), timeout=30, what="the live cache to watch the namespace")

    assert sync(source)["outcome"] == "unchanged"
    # Four ConfigMaps as applied are never read; a flag set always is.
    assert last_plan(source)["reads"] == {"cache": 4, "get": 1, "list": 0}

    kubectl_edit(namespace, "app-3", "s/LOG_LEVEL: info/LOG_LEVEL: debug/")
    poll(lambda: heals(source) == 1, timeout=HEAL_DEADLINE, what="the edit to be healed")
    cluster.apply_configmap(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app-4", "namespace": namespace}},
        field_manager="someone",
    )
    repo.write("configmaps/app-1.yaml", configmap("app-1", {"LOG_LEVEL": "warn"}))
    repo.write("configmaps/app-4.yaml", configmap("app-4", {"LOG_LEVEL": "info"}))
    repo.commit("app-1 changed, and app-4 that someone else made first")

    result = sync(source)

    assert result["summary"] == {"update": 1, "conflict": 1, "unchanged": 4}, result
    # Healed, app-3 is as applied again. Git changed app-1, app-4 is someone else's, the flag set is read.
    assert last_plan(source)["reads"] == {"cache": 3, "get": 3, "list": 0}
    assert cluster.get_configmap(namespace, "app-1")["data"] == {"LOG_LEVEL": "warn"}


def test_a_pass_is_sent_the_stamps_of_only_the_namespaces_written_since_the_last_one(
    repo, make_namespaces, make_source, sync, live_cache, start_live_cache, monkeypatch, settings
):
    """The worker keeps each namespace's stamps with their version: a pass of an unchanged source is
    sent no stamps, and a one-file commit's pass only those of the namespace its last write changed.
    After the cache restarts, its new term versions what it loaded: one pass is sent every namespace,
    and the next ones none, though the term wrote none of them."""
    from gitops import reconcile

    first, second = make_namespaces("one", "two")
    repo.write_all({"sluice.yaml": policy([first, second], prune=True)})
    for index in range(3):
        repo.write(f"configmaps/app-{index}.yaml", configmap(f"app-{index}", {"V": "1"}))
    repo.commit("v1")
    source = make_source(poll_interval=HOURLY)
    assert sync(source)["summary"] == {"create": 6}
    poll(lambda: fresh(first, second), timeout=30, what="the live cache to watch both namespaces")
    poll(
        lambda: all(as_applied(settings.SLUICE_CLUSTER_NAME, ns, "app-2") for ns in (first, second)),
        timeout=30,
        what="the cache to hold what was applied",
    )
    sent: list[dict[str, bool]] = []
    real = livestore.fresh_stamps_since

    def spied(cluster, namespaces, kept, **options):
        found = real(cluster, namespaces, kept, **options)
        sent.append({namespace: stamps.texts is not None for namespace, stamps in found.items()})
        return found

    monkeypatch.setattr(livestore, "fresh_stamps_since", spied)

    def sent_by_a_pass() -> dict[str, bool]:
        """What a pass was sent. ``sent`` is emptied first: the polls below read stamps through the
        same function, and one of their entries must never stand in for a pass's."""
        sent.clear()
        assert reconcile.source_sync(source.pk).outcome == "unchanged"
        assert sent, "the pass asked for no stamps"
        return sent[-1]

    assert sent_by_a_pass() == {first: True, second: True}, "a process's first pass is sent every namespace"
    assert sent_by_a_pass() == {first: False, second: False}, "nothing written since: no stamps sent"
    assert last_plan(source)["reads"] == {"cache": 6, "get": 0, "list": 0}

    def app_1_stamps() -> list[object]:
        stamps = livestore.fresh_stamps(settings.SLUICE_CLUSTER_NAME, [first, second])
        # None while a namespace is stale, or app-1's stamp is withdrawn for its write (not yet told).
        return [stamps.get(namespace, {}).get("app-1") for namespace in (first, second)]

    written = app_1_stamps()
    repo.write("configmaps/app-1.yaml", configmap("app-1", {"V": "2"}))
    repo.commit("app-1 changed")
    assert reconcile.source_sync(source.pk).summary == {"update": 2, "unchanged": 4}
    # Both namespaces' updates, each told by its own event: the next pass reads the cache only once
    # it holds both (a stamp not yet stored is a GET, rightly, and the count below would be 5).
    poll(
        lambda: all(now not in (None, before) for now, before in zip(app_1_stamps(), written, strict=True)),
        timeout=30,
        what="the cache to store the update in both namespaces",
    )
    assert sent_by_a_pass() == {first: True, second: True}, "both namespaces were written by the update"
    assert last_plan(source)["reads"] == {"cache": 6, "get": 0, "list": 0}
    assert sent_by_a_pass() == {first: False, second: False}

    live_cache.kill()
    poll(lambda: not fresh(first, second), timeout=livestore.LEASE_SECONDS + 3, what="the lease to run out")
    start_live_cache()
    poll(lambda: fresh(first, second), timeout=30, what="the restarted cache to vouch for both namespaces")
    assert sent_by_a_pass() == {first: True, second: True}, "an earlier term's versions are not trusted"

    def sent_nothing() -> bool:
        return sent_by_a_pass() == {first: False, second: False}

    # Without the new term's versions, every pass would be sent both until the term wrote them.
    poll(sent_nothing, timeout=20, what="a pass sent no stamps, at the new term's versions")
    assert last_plan(source)["reads"] == {"cache": 6, "get": 0, "list": 0}


def test_what_the_cache_says_is_the_sources_and_git_dropped_is_read_and_pruned(
    repo, make_namespaces, make_source, sync, cluster, live_cache
):
    namespace, source = synced_source(repo, make_namespaces, make_source, sync, objects=2)
    poll(lambda: fresh(namespace), timeout=30, what="the live cache to watch the namespace")
    repo.remove("configmaps/app-1.yaml")
    repo.commit("app-1 goes")

    assert sync(source)["summary"] == {"delete": 1, "unchanged": 1}
    assert cluster.get_configmap(namespace, "app-1") is None


def test_a_stopped_cache_is_stale_at_once_and_plans_read_the_cluster(
    repo, make_namespaces, make_source, sync, cluster, live_cache
):
    namespace, source = synced_source(repo, make_namespaces, make_source, sync)
    poll(lambda: fresh(namespace), timeout=30, what="the live cache to watch the namespace")

    live_cache.stop()
    assert not fresh(namespace)
    kubectl_edit(namespace, "app-0", "s/LOG_LEVEL: info/LOG_LEVEL: stale/")

    result = sync(source)

    assert result["summary"] == {"self-heal": 1}, result
    assert last_plan(source)["reads"] == {"cache": 0, "get": 0, "list": 1}
    assert cluster.get_configmap(namespace, "app-0")["data"] == {"LOG_LEVEL": "info"}


def test_a_frozen_cache_goes_stale_when_its_lease_runs_out_and_catches_up_when_it_thaws(
    repo, make_namespaces, make_source, sync, cluster, live_cache
):
    namespace, source = synced_source(repo, make_namespaces, make_source, sync)
    poll(lambda: fresh(namespace), timeout=30, what="the live cache to watch the namespace")

    os.killpg(live_cache.process.pid, signal.SIGSTOP)
    try:
        # No renewal: within the lease (2 s) the namespace is no longer vouched for.
        poll(lambda: not fresh(namespace), timeout=livestore.LEASE_SECONDS + 3, what="the lease to run out")
        kubectl_edit(namespace, "app-0", "s/LOG_LEVEL: info/LOG_LEVEL: frozen/")
        assert sync(source)["summary"] == {"self-heal": 1}
        assert last_plan(source)["reads"]["list"] == 1
        kubectl_edit(namespace, "app-0", "s/LOG_LEVEL: info/LOG_LEVEL: while-frozen/")
    finally:
        os.killpg(live_cache.process.pid, signal.SIGCONT)

    # Thawed, it finds its lease gone, takes a new one, resumes its watch from where it
    # was and meets the second edit on the way: the source is woken and heals it.
    poll(lambda: heals(source) == 2, timeout=30, what="the edit made while frozen to be healed")
    poll(lambda: fresh(namespace), timeout=30, what="the live cache to vouch for the namespace again")
    assert cluster.get_configmap(namespace, "app-0")["data"] == {"LOG_LEVEL": "info"}


def test_a_killed_cache_is_trusted_no_longer_than_its_lease_and_a_restart_catches_up(
    repo, make_namespaces, make_source, sync, cluster, live_cache, start_live_cache
):
    namespace, source = synced_source(repo, make_namespaces, make_source, sync)
    poll(lambda: fresh(namespace), timeout=30, what="the live cache to watch the namespace")

    live_cache.kill()
    poll(lambda: not fresh(namespace), timeout=livestore.LEASE_SECONDS + 3, what="the lease to run out")
    kubectl_edit(namespace, "app-0", "s/LOG_LEVEL: info/LOG_LEVEL: dead/")
    assert sync(source)["summary"] == {"self-heal": 1}
    kubectl_edit(namespace, "app-0", "s/LOG_LEVEL: info/LOG_LEVEL: still-dead/")

    start_live_cache()

    # The new process resumes from the version stored with the stamps; the edit is in what it replays.
    poll(lambda: heals(source) == 2, timeout=30, what="the edit made while it was down to be healed")
    poll(lambda: fresh(namespace), timeout=30, what="the restarted cache to vouch for the namespace")
    assert sync(source)["outcome"] == "unchanged"
    assert last_plan(source)["reads"] == {"cache": 1, "get": 0, "list": 0}


def stored_versions_said_to_be_from(kubeconfig) -> None:
    """The stored resume versions said to be the replica's: it serves the same etcd (so the same
    versions) at another address, which the cache would otherwise take for another cluster."""
    from gitops.cluster import Cluster

    with Cluster(str(kubeconfig)) as replica:
        key = livestore._key(settings.SLUICE_CLUSTER_NAME, "clisting")
        livestore.redis_client().set(key, f"{time.time()} {replica.server}")


# Alone under pytest -n 2: a replica kube-apiserver fills its watch cache from all of etcd as it starts,
# and the cache then lists every ConfigMap of the cluster through it, both sessions' among them; beside
# the other session's tests the two took past these tests' 30 s deadlines (twice in four runs).
@pytest.mark.exclusive
def test_a_version_stored_from_another_server_is_listed_not_resumed(
    repo, make_namespaces, make_source, sync, stack, live_cache, start_live_cache
):
    """A kubeconfig pointed at another apiserver while the cache was down: the stored version is the
    old server's, and the restarted cache lists the new one instead of resuming there."""
    namespace, _ = synced_source(repo, make_namespaces, make_source, sync, objects=1)
    poll(lambda: fresh(namespace), timeout=30, what="the live cache to watch the namespace")
    listing = livestore.redis_client().get(livestore._key(settings.SLUICE_CLUSTER_NAME, "clisting"))
    listed_at, server = listing.split(" ", 1)
    assert server.startswith("https://"), "the server the stored version is from"
    assert 0 < time.time() - float(listed_at) < 600, "when its last LIST ended"
    live_cache.stop()
    with apiserver_replica(stack) as replica_kubeconfig:
        restarted = start_live_cache(KUBECONFIG=str(replica_kubeconfig))
        poll(lambda: fresh(namespace), timeout=30, what="the listed namespace to be vouched for")
        log = restarted.log_path.read_text()
        assert "the server changed to" in log, "resumed at a server it is not from"
        assert "answered 410" not in log
        restarted.stop()


# Alone under pytest -n 2: a replica kube-apiserver fills its watch cache from all of etcd as it starts,
# and the cache then lists every ConfigMap of the cluster through it, both sessions' among them; beside
# the other session's tests the two took past these tests' 30 s deadlines (twice in four runs).
@pytest.mark.exclusive
def test_a_watch_too_old_for_the_apiserver_lists_again_and_wakes_what_changed(
    repo, make_namespaces, make_source, sync, cluster, stack, live_cache, start_live_cache
):
    namespace, source = synced_source(repo, make_namespaces, make_source, sync, objects=2)
    poll(lambda: fresh(namespace), timeout=30, what="the live cache to watch the namespace")
    live_cache.stop()
    kubectl_edit(namespace, "app-1", "s/LOG_LEVEL: info/LOG_LEVEL: gone/")

    # A replica started after the edit keeps no history from before it: resuming from the
    # stored resourceVersion is answered 410 Gone, and the new process lists again.
    with apiserver_replica(stack) as replica_kubeconfig:
        stored_versions_said_to_be_from(replica_kubeconfig)
        restarted = start_live_cache(KUBECONFIG=str(replica_kubeconfig))
        poll(lambda: heals(source) == 1, timeout=30, what="the edit found by the relist to be healed")
        poll(lambda: fresh(namespace), timeout=30, what="the relisted namespace to be vouched for")
        assert "410" in restarted.log_path.read_text()
        assert sync(source)["outcome"] == "unchanged"
        # The worker talks to the first apiserver, the cache to the replica: a watch of another server
        # vouches for nothing, and the worker lists (the cache's own plans are the test's above).
        assert last_plan(source)["reads"] == {"cache": 0, "get": 0, "list": 1}
        restarted.stop()
    assert cluster.get_configmap(namespace, "app-1")["data"] == {"LOG_LEVEL": "info"}


# Alone under pytest -n 2: a replica kube-apiserver fills its watch cache from all of etcd as it starts,
# and the cache then lists every ConfigMap of the cluster through it, both sessions' among them; beside
# the other session's tests the two took past these tests' 30 s deadlines (twice in four runs).
@pytest.mark.exclusive
def test_a_relist_of_the_cluster_finds_a_namespace_emptied_while_the_cache_was_down(
    repo, make_namespaces, make_source, sync, cluster, stack, live_cache, start_live_cache
):
    namespace, source = synced_source(repo, make_namespaces, make_source, sync, objects=1)
    poll(lambda: fresh(namespace), timeout=30, what="the live cache to watch the namespace")
    live_cache.stop()
    cluster.delete_configmap(namespace, "app-0")

    # Resuming is answered 410 by a replica with no history: the cluster is listed again, the
    # namespace is in no page of it, and what the cache held of it goes, waking its source.
    with apiserver_replica(stack) as replica_kubeconfig:
        stored_versions_said_to_be_from(replica_kubeconfig)
        restarted = start_live_cache(KUBECONFIG=str(replica_kubeconfig))
        poll(lambda: cluster.get_configmap(namespace, "app-0"), timeout=30, what="app-0 made again")
        poll(
            lambda: as_applied(settings.SLUICE_CLUSTER_NAME, namespace, "app-0"), timeout=30, what="its stamp"
        )
        assert "410" in restarted.log_path.read_text(), "the cluster was listed again, not resumed"
    assert Change.objects.filter(source=source, name="app-0", action=ChangeAction.CREATE).count() == 2


# -- many clusters --------------------------------------------------------------------------


def fleet_source(repo, make_source, cluster_for, clusters: dict[str, str], *, objects: int = 2):
    """A source with ``objects`` ConfigMaps in one fresh namespace of each cluster (name -> context)."""
    namespace = f"t{uuid.uuid4().hex[:8]}"
    for context in clusters.values():
        cluster_for(context).create_namespace(namespace)
    targets = [{"cluster": name, "namespaces": [namespace]} for name in clusters]
    repo.write_all({"sluice.yaml": {"targets": targets, "selfHeal": True, "prune": True}})
    for index in range(objects):
        repo.write(f"configmaps/app-{index}.yaml", configmap(f"app-{index}", {"LOG_LEVEL": "info"}))
    repo.commit("v1")
    scope = [f"{name}/t*" for name in clusters]
    return namespace, make_source(poll_interval=HOURLY, allowed_namespaces=scope)


def test_the_live_cache_settles_and_heals_in_a_member_cluster(
    repo, make_source, sync, stack, cluster_for, live_cache
):
    cluster_admin.cluster_add(
        name=MEMBER, kubeconfig=stack["KUBECONFIG"], context=MEMBER, actor=Actor.command_line("tests")
    )
    default = settings.SLUICE_CLUSTER_NAME
    namespace, source = fleet_source(repo, make_source, cluster_for, {default: "local", MEMBER: MEMBER})
    assert sync(source)["outcome"] == "applied"
    # The process picks the member cluster up by itself (its rescan), with a lease of its own.
    poll(
        lambda: fresh(namespace) and fresh(namespace, cluster=MEMBER),
        timeout=30,
        what="the live cache to watch the namespace in both clusters",
    )

    assert sync(source)["outcome"] == "unchanged"
    assert last_plan(source)["reads"] == {"cache": 4, "get": 0, "list": 0}, "two objects in each cluster"

    untouched = cluster_for("local").get_configmap(namespace, "app-1")["metadata"]["resourceVersion"]
    started = time.monotonic()
    kubectl_edit(namespace, "app-1", "s/LOG_LEVEL: info/LOG_LEVEL: debug/", context=MEMBER)
    poll(
        lambda: heals(source) == 1, timeout=HEAL_DEADLINE, what="the edit in the member cluster to be healed"
    )
    assert time.monotonic() - started < HEAL_DEADLINE

    change = Change.objects.get(source=source, action=ChangeAction.SELF_HEAL)
    assert (change.cluster, change.namespace, change.name, change.actor) == (
        MEMBER,
        namespace,
        "app-1",
        "sluice",
    )
    assert cluster_for(MEMBER).get_configmap(namespace, "app-1")["data"] == {"LOG_LEVEL": "info"}
    local = cluster_for("local").get_configmap(namespace, "app-1")
    assert local["metadata"]["resourceVersion"] == untouched, (
        "the same name in the default cluster is another object"
    )

    poll(lambda: as_applied(MEMBER, namespace, "app-1"), timeout=30, what="the heal to reach the live cache")
    assert sync(source)["outcome"] == "unchanged"
    assert last_plan(source)["reads"] == {"cache": 4, "get": 0, "list": 0}


def test_a_silent_member_cluster_leaves_the_live_cache_of_the_others_working(
    repo, make_source, sync, stack, cluster_for, start_live_cache, tmp_path
):
    cluster_admin.cluster_add(
        name=MEMBER, kubeconfig=stack["KUBECONFIG"], context=MEMBER, actor=Actor.command_line("tests")
    )
    flaky = FlakyKubeconfig(tmp_path / "flaky.kubeconfig", stack["KUBECONFIG"], "member-2")
    cluster_admin.cluster_add(name="flaky", kubeconfig=str(flaky.path), actor=Actor.command_line("tests"))
    namespace, source = fleet_source(repo, make_source, cluster_for, {MEMBER: MEMBER, "flaky": "member-2"})
    assert sync(source)["outcome"] == "applied"
    # Short watches and freshness, so a silent cluster goes stale within seconds.
    start_live_cache(SLUICE_LIVE_CACHE_WATCH_SECONDS="2", SLUICE_LIVE_CACHE_STALE_SECONDS="8")
    poll(
        lambda: fresh(namespace, cluster=MEMBER) and fresh(namespace, cluster="flaky"),
        timeout=30,
        what="the live cache to watch both member clusters",
    )

    flaky.silence()  # its server stops answering: a closed loopback port
    poll(lambda: not fresh(namespace, cluster="flaky"), timeout=30, what="the silent cluster to go stale")
    assert fresh(namespace, cluster=MEMBER), "the other cluster's watch goes on"

    kubectl_edit(namespace, "app-0", "s/LOG_LEVEL: info/LOG_LEVEL: debug/", context=MEMBER)
    poll(
        lambda: heals(source) == 1,
        timeout=HEAL_DEADLINE,
        what="the edit to be healed beside a silent cluster",
    )
    assert cluster_for(MEMBER).get_configmap(namespace, "app-0")["data"] == {"LOG_LEVEL": "info"}
    plan = last_plan(source)
    # The silent cluster's objects are reported, not planned; the healthy one's untouched app-1 was
    # settled by the cache all the same.
    assert plan["summary"].get("unreachable") == 2, plan
    assert plan["reads"]["cache"] >= 1, plan
    assert fresh(namespace, cluster=MEMBER)


def test_a_cluster_informer_that_died_is_started_again_by_the_next_rescan(
    repo, make_namespaces, make_source, sync
):
    """In process, on the real apiserver and Redis: a term's one cluster informer ending on its
    own (a bug, an error it did not survive) is seen by the next rescan, which starts another; the
    namespace is vouched for again afterwards."""
    import threading

    from gitops.livecache import ALL_NAMESPACES, LiveCache, LiveCacheOptions, Waker, WatchScope, _Term

    namespace, _ = synced_source(repo, make_namespaces, make_source, sync)
    options = LiveCacheOptions(stale_seconds=8, watch_seconds=2, scope=WatchScope.CLUSTER)
    cache = LiveCache(settings.SLUICE_CLUSTER_NAME, options, Waker(threading.Event()))
    term = _Term(cache)
    poll(term.store.claim, timeout=30, what="the cluster's lease (an earlier cache's runs out)")
    done = threading.Event()

    def renew() -> None:  # what LiveCache._serve does for a term: the lease lasts 2 s
        while not done.wait(0.5):
            term.store.renew()

    threading.Thread(target=renew, daemon=True).start()
    try:
        assert term.begin(whole_cluster=True)
        term.rescan()
        poll(lambda: fresh(namespace), timeout=30, what="the cluster informer to vouch for the namespace")
        first = term.watches[ALL_NAMESPACES]
        first.stop.set()  # it ends as if it had died: nobody stopped the term or switched it off
        first.thread.join(timeout=30)
        assert not first.thread.is_alive()
        poll(lambda: not fresh(namespace), timeout=30, what="the namespace to go stale, nobody watching")

        term.rescan()

        again = term.watches[ALL_NAMESPACES]
        assert again is not first and again.thread.is_alive()
        poll(lambda: fresh(namespace), timeout=30, what="the new informer to vouch for the namespace")
    finally:
        done.set()
        term.end()
        term.store.release()


def test_no_informer_of_a_term_starts_before_the_term_has_begun(repo, make_namespaces, make_source, sync):
    """In process, on the real apiserver and Redis, as ``LiveCache._serve`` runs a term: while the
    term's ``begin`` fails (Redis away for a moment, here its first two answers refused), no informer
    starts, since one would resume from versions the other way of watching left; once it succeeds,
    the cluster is watched and the namespace vouched for."""
    import threading

    import redis

    from gitops.livecache import LiveCache, LiveCacheOptions, Waker, WatchScope, _Term

    namespace, _ = synced_source(repo, make_namespaces, make_source, sync)
    options = LiveCacheOptions(stale_seconds=8, watch_seconds=2, scope=WatchScope.CLUSTER)
    cache = LiveCache(settings.SLUICE_CLUSTER_NAME, options, Waker(threading.Event()))
    term = _Term(cache)
    poll(term.store.claim, timeout=30, what="the cluster's lease (an earlier cache's runs out)")
    watching = term.store.watching
    watches_when_refused: list[int] = []

    def away_twice(*, whole_cluster: bool) -> bool:
        if len(watches_when_refused) < 2:
            watches_when_refused.append(len(term.watches))
            raise redis.ConnectionError("Redis is away for a moment")
        return watching(whole_cluster=whole_cluster)

    term.store.watching = away_twice  # type: ignore[method-assign]
    serving = threading.Thread(target=cache._serve, args=(term,), daemon=True)
    serving.start()
    try:
        poll(lambda: len(watches_when_refused) == 2, timeout=30, what="two refused beginnings")
        poll(lambda: fresh(namespace), timeout=30, what="the informer, once begun, to vouch for it")
        assert watches_when_refused == [0, 0]
        assert serving.is_alive()
    finally:
        cache.stopping.set()
        serving.join(timeout=30)
        term.end()
    assert not serving.is_alive()


def test_a_cluster_left_with_nothing_to_watch_has_what_was_stored_for_it_dropped(
    repo, make_namespaces, make_source, sync
):
    """In process, on the real apiserver and Redis: once no source targets a cluster any more (here
    ``follow`` is handed nothing), its cache stops and deletes the cluster's stamps, resume versions
    and lease from Redis rather than leaving them there for good."""
    from gitops.livecache import LiveCacheOptions, LiveCaches, WatchScope

    namespace, _ = synced_source(repo, make_namespaces, make_source, sync)
    cluster = settings.SLUICE_CLUSTER_NAME
    pattern = f"{livestore.PREFIX}:{{{cluster}}}:*"

    def stored() -> list[str]:
        return list(livestore.redis_client().scan_iter(match=pattern, count=1000))

    caches = LiveCaches(LiveCacheOptions(stale_seconds=10, watch_seconds=2, scope=WatchScope.CLUSTER))
    try:
        caches.follow({cluster: {namespace}})
        poll(lambda: fresh(namespace), timeout=30, what="the cache (once an earlier one's lease ran out)")
        assert any(":objects:" in key for key in stored())
        running = caches.running[cluster]

        caches.follow({})

        running.thread.join(timeout=30)
        assert not running.thread.is_alive()
        assert stored() == []
        assert not fresh(namespace)
    finally:
        caches.stopping.set()
        for each in caches.running.values():
            each.cache.stopping.set()


def _delete_keys_of(cluster: str) -> None:
    client = livestore.redis_client()
    keys = list(client.scan_iter(match=f"{livestore.PREFIX}:{{{cluster}}}:*"))
    if keys:
        client.delete(*keys)


def test_a_drop_cut_short_by_a_lost_lease_keeps_the_successors_stamps_and_no_resume_version(
    stack, monkeypatch
):
    """``drop_stored`` through the real Lua scripts, one key a call: resume versions and freshness go
    first, the stamps last, each call fenced by the lease. A successor that takes the lease halfway
    keeps what is left, and no resume version is left over stamps the drop deleted."""
    cluster = f"t-{uuid.uuid4().hex[:8]}"
    store = livestore.LiveStore(cluster, "dropping", stale_seconds=30)
    assert store.claim()
    for namespace in ("team-a", "team-b"):
        assert store.write(namespace, {"app": "1"}, resource_version="5", fresh=True)
    assert store.write("team-a", {"app": "1"}, resource_version="5", fresh=True, whole_cluster=True)
    left_before = set(store.client.scan_iter(match=f"{livestore.PREFIX}:{{{cluster}}}:*"))
    assert any(":cresume" in key for key in left_before) and any(":resume:" in key for key in left_before)
    monkeypatch.setattr(livestore, "_DROP_BATCH", 1)
    forget, calls = store._forget, []

    def then_the_lease_is_lost(keys, args):  # after every key but one stamp hash is gone
        calls.append(keys)
        if len(calls) == len(left_before) - 1:
            store.client.delete(livestore._key(cluster, "alive"))
            assert livestore.LiveStore(cluster, "successor", stale_seconds=30).claim()
        return forget(keys=keys, args=args)

    store._forget = then_the_lease_is_lost
    try:
        assert not store.drop_stored()

        left = set(store.client.scan_iter(match=f"{livestore.PREFIX}:{{{cluster}}}:*"))
        assert left == {livestore._key(cluster, "alive"), calls[-1][1]}
        assert ":objects:" in calls[-1][1]  # a stamp hash, and no resume version or freshness
    finally:
        _delete_keys_of(cluster)


def test_a_drop_under_its_lease_leaves_only_the_lease(stack):
    cluster = f"t-{uuid.uuid4().hex[:8]}"
    store = livestore.LiveStore(cluster, "dropping", stale_seconds=30)
    assert store.claim()
    try:
        for namespace in ("team-a", "team-b"):
            assert store.write(namespace, {"app": "1"}, resource_version="5", fresh=True)
        assert store.drop_stored()
        left = set(store.client.scan_iter(match=f"{livestore.PREFIX}:{{{cluster}}}:*"))
        assert left == {livestore._key(cluster, "alive")}
    finally:
        store.release()
        _delete_keys_of(cluster)


def test_a_sweep_drops_clusters_stored_but_watched_by_nobody_and_leaves_served_ones_alone(stack):
    """What a cache's own drop missed (Redis failed it, or no live-cache process ran when the cluster
    lost its last source) is found in Redis and dropped by the second sweep that finds it unwatched
    and unleased: a cluster another process serves (its lease held) or one still to watch keeps what
    it stores, and a process for one cluster sweeps nothing. (The sweep drops any such cluster in the
    stack's Redis, a test's leftovers too.)"""
    from gitops.livecache import LiveCacheOptions, LiveCaches

    orphan, served, wanted = (f"t-{uuid.uuid4().hex[:8]}" for _ in range(3))
    for cluster in (orphan, served, wanted):
        store = livestore.LiveStore(cluster, f"writer-{cluster}", stale_seconds=30)
        assert store.claim()
        assert store.write("team-a", {"app": "1"}, resource_version="5", fresh=True)
        assert store.write("team-a", {"app": "1"}, resource_version="5", fresh=True, whole_cluster=True)
        if cluster != served:
            store.release()  # as a process that stopped, or whose drop Redis cut short

    def stored(cluster: str) -> set[str]:
        return set(livestore.redis_client().scan_iter(match=f"{livestore.PREFIX}:{{{cluster}}}:*"))

    options = LiveCacheOptions(stale_seconds=10, watch_seconds=2)
    try:
        assert {orphan, served, wanted} <= livestore.stored_clusters()
        LiveCaches(options, only=settings.SLUICE_CLUSTER_NAME).sweep({settings.SLUICE_CLUSTER_NAME: set()})
        assert stored(orphan) and stored(served) and stored(wanted)

        sweeping = LiveCaches(options)
        sweeping.sweep({settings.SLUICE_CLUSTER_NAME: set(), wanted: set()})
        assert stored(orphan), "one sighting is not enough: a process's targets may lag"
        sweeping.sweep({settings.SLUICE_CLUSTER_NAME: set(), wanted: set()})

        assert stored(orphan) == set()
        assert orphan not in livestore.stored_clusters()
        assert livestore._key(served, "objects", "team-a") in stored(served)
        assert livestore._key(served, "cresume") in stored(served)
        assert livestore._key(wanted, "objects", "team-a") in stored(wanted)
    finally:
        for cluster in (orphan, served, wanted):
            _delete_keys_of(cluster)


class _Lease:
    """A hand-driven term of the live cache for the default cluster: the test writes stamps as a watch
    would, and a thread keeps the lease, so the watch is as late as the test makes it."""

    def __init__(self) -> None:
        import threading

        self.store = livestore.LiveStore(
            settings.SLUICE_CLUSTER_NAME, f"lag-{uuid.uuid4().hex[:6]}", stale_seconds=60
        )
        poll(self.store.claim, timeout=10, what="the default cluster's lease")
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._renew, daemon=True)
        self.thread.start()

    def _renew(self) -> None:
        while not self.stopped.wait(0.3):
            self.store.renew()

    def watched(self, cluster, namespace: str, *names: str) -> None:
        """Stores the objects' stamps as they are now, and the namespace as fresh."""
        stamps = {name: stamp_of(cluster.get_configmap(namespace, name)).encode() for name in names}
        assert self.store.write(namespace, stamps, whole_cluster=True)
        assert self.store.write("", {}, resource_version="1", fresh=True, whole_cluster=True)
        assert self.store.remember_list("", cluster.server)  # as a watch's LIST ends

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.store.release()


def _log_level_synced(repo, source, sync, level: str, message: str) -> None:
    """Commits app-0 with LOG_LEVEL ``level`` and syncs: one update."""
    repo.write("configmaps/app-0.yaml", configmap("app-0", {"LOG_LEVEL": level}))
    repo.commit(message)
    assert sync(source)["summary"] == {"update": 1}


def test_a_revert_pushed_before_the_watch_stored_sluices_own_write_is_not_settled_by_the_old_stamp(
    repo, make_namespaces, make_source, sync, cluster
):
    """The watch is behind Sluice's own write of v2 (its event not stored yet), so the stamp still
    shows v1. A revert to v1 comes at once: the old stamp says "as applied, v1", which is Git's content
    again, and would settle the plan as unchanged while the cluster holds v2. The worker drops the
    stamps its writes outdate, so the revert reads the object and applies v1."""
    namespace, source = synced_source(repo, make_namespaces, make_source, sync)
    lease = _Lease()
    try:
        lease.watched(cluster, namespace, "app-0")
        assert fresh(namespace) and as_applied(settings.SLUICE_CLUSTER_NAME, namespace, "app-0")

        _log_level_synced(repo, source, sync, "debug", "v2")
        held = livestore.fresh_stamps(settings.SLUICE_CLUSTER_NAME, [namespace]).get(namespace, {})
        assert "app-0" not in held, "the stamp of v1 went with the write of v2"

        _log_level_synced(repo, source, sync, "info", "revert to v1")
        assert cluster.get_configmap(namespace, "app-0")["data"] == {"LOG_LEVEL": "info"}
    finally:
        lease.close()


def test_a_stamp_drop_redis_did_not_take_is_held_with_the_source_and_made_by_the_next_pass(
    repo, make_namespaces, make_source, sync, cluster, monkeypatch
):
    """Redis does not answer the worker's drop of the stamp its write of v2 outdated (a blip), so the
    stamp still says "as applied, v1" until the watch stores the write, and a revert to v1 would be
    settled by it as unchanged while the cluster holds v2. The drop is held with the source; while it
    is, plans read the cluster, and the next pass, Redis answering again, makes it first."""
    import redis

    from gitops import reconcile, schedule

    namespace, source = synced_source(repo, make_namespaces, make_source, sync)
    lease = _Lease()
    try:
        lease.watched(cluster, namespace, "app-0")
        assert fresh(namespace) and as_applied(settings.SLUICE_CLUSTER_NAME, namespace, "app-0")

        def no_answer(**_call):
            raise redis.ConnectionError("Redis did not answer")

        monkeypatch.setattr(schedule, "_send", lambda *args, **kwargs: "")  # this pass runs here
        monkeypatch.setattr(livestore, "_UNSETTLE_PAUSES", (0.0, 0.0))
        monkeypatch.setattr(livestore, "_unsettle_given_up_until", 0.0)  # the breaker: back after the test
        monkeypatch.setattr(livestore, "_unsettle_script", lambda: no_answer)
        repo.write("configmaps/app-0.yaml", configmap("app-0", {"LOG_LEVEL": "debug"}))
        repo.commit("v2")
        assert reconcile.source_sync(source.pk).summary == {"update": 1}
        # While Redis does not answer, the source's plans read the cluster.
        assert reconcile.source_sync(source.pk).outcome == "unchanged"
        assert last_plan(source)["reads"] == {"cache": 0, "get": 0, "list": 1}
        monkeypatch.undo()  # Redis answers again
        assert as_applied(settings.SLUICE_CLUSTER_NAME, namespace, "app-0"), "v1's stamp stayed"
        held = Source.objects.get(pk=source.pk).stamps_to_drop
        assert list(held[settings.SLUICE_CLUSTER_NAME][namespace][0][:1]) == ["app-0"], held

        _log_level_synced(repo, source, sync, "info", "revert to v1")
        assert cluster.get_configmap(namespace, "app-0")["data"] == {"LOG_LEVEL": "info"}
        assert Source.objects.get(pk=source.pk).stamps_to_drop == {}, "made by the worker's pass"
        # Read (one GET, or a LIST once the test's freshness has run out), never settled by the old stamp.
        assert last_plan(source)["reads"]["cache"] == 0, last_plan(source)["reads"]
    finally:
        lease.close()


def test_an_object_created_moments_before_a_revert_is_pruned_though_it_has_no_stamp_yet(
    repo, make_namespaces, make_source, sync, cluster
):
    """The watch has not stored the ADDED event of an object Sluice just created (seconds behind during
    a bulk apply), so it has no stamp, and a revert that takes it out of Git comes at once. A missing
    stamp does not say the object is gone: it is in the inventory, so it is read, and pruned."""
    namespace, source = synced_source(repo, make_namespaces, make_source, sync)
    lease = _Lease()
    try:
        lease.watched(cluster, namespace, "app-0")
        repo.write("configmaps/app-1.yaml", configmap("app-1", {"LOG_LEVEL": "info"}))
        repo.commit("app-1")
        assert sync(source)["summary"] == {"create": 1, "unchanged": 1}
        stamps = livestore.fresh_stamps(settings.SLUICE_CLUSTER_NAME, [namespace])[namespace]
        assert "app-1" not in stamps, "the test's lease stores no event: app-1 has no stamp"

        repo.remove("configmaps/app-1.yaml")
        repo.commit("revert: no app-1")
        assert sync(source)["summary"] == {"delete": 1, "unchanged": 1}
        assert cluster.get_configmap(namespace, "app-1") is None
    finally:
        lease.close()


def test_an_inventory_entry_of_an_object_gone_from_the_cluster_and_git_is_read_once_then_dropped(
    repo, make_namespaces, make_source, sync, cluster
):
    """An orphan (prune is off) deleted by hand leaves its inventory entry, and no stamp. Read once and
    not found, the entry goes: the next passes settle the namespace from the cache without a read."""
    from gitops.models import ManagedObject

    namespace, source = synced_source(repo, make_namespaces, make_source, sync, objects=2)
    repo.write("sluice.yaml", policy([namespace], selfHeal=True, prune=False))
    repo.remove("configmaps/app-1.yaml")
    repo.commit("app-1 out of Git, prune off")
    assert sync(source)["summary"] == {"orphan": 1, "unchanged": 1}
    cluster.delete_configmap(namespace, "app-1")
    lease = _Lease()
    try:
        lease.watched(cluster, namespace, "app-0")
        assert sync(source)["summary"] == {"unchanged": 1}
        assert last_plan(source)["reads"] == {"cache": 1, "get": 1, "list": 0}, "app-1 read, not found"
        assert not ManagedObject.objects.filter(source=source, name="app-1").exists()

        assert sync(source)["summary"] == {"unchanged": 1}
        assert last_plan(source)["reads"] == {"cache": 1, "get": 0, "list": 0}, "nothing read again"
    finally:
        lease.close()


def test_inventory_entries_of_objects_gone_from_a_listed_namespace_and_git_are_dropped(
    repo, make_namespaces, make_source, sync, cluster
):
    """Without a live cache every namespace is listed: orphans (prune is off) deleted by hand are
    missing from its LIST, and their inventory entries go, so nothing keeps asking to prune them."""
    from gitops.models import ManagedObject

    namespace, source = synced_source(repo, make_namespaces, make_source, sync, objects=3)
    repo.write("sluice.yaml", policy([namespace], selfHeal=True, prune=False))
    repo.remove("configmaps/app-1.yaml")
    repo.remove("configmaps/app-2.yaml")
    repo.commit("app-1 and app-2 out of Git, prune off")
    assert sync(source)["summary"] == {"orphan": 2, "unchanged": 1}
    cluster.delete_configmap(namespace, "app-1")

    assert sync(source)["summary"] == {"orphan": 1, "unchanged": 1}
    assert last_plan(source)["reads"]["list"] == 1
    kept = set(ManagedObject.objects.filter(source=source).values_list("name", flat=True))
    assert kept == {"app-0", "app-2"}, "the orphan still there keeps its entry"


def test_a_late_event_of_the_content_before_a_workers_write_does_not_settle_its_revert(
    repo, make_namespaces, make_source, sync, cluster
):
    """The watch stores the event of v1 (an older write) after the worker wrote v2 and dropped the stamp:
    a watch seconds behind during a bulk apply, a replay after a restart, or a relist whose LIST was
    taken before the write. Stored, that stamp says "as applied, v1" again, and a revert to v1 would
    be settled as unchanged while the cluster holds v2. The write's version is the stamp's floor."""
    namespace, source = synced_source(repo, make_namespaces, make_source, sync)
    lease = _Lease()
    try:
        lease.watched(cluster, namespace, "app-0")
        late_event = livestore.fresh_stamps(settings.SLUICE_CLUSTER_NAME, [namespace])[namespace]["app-0"]

        _log_level_synced(repo, source, sync, "debug", "v2")
        assert lease.store.write_events(
            [(namespace, "app-0", late_event)], resource_version="1", fresh=True
        ), "the lease is the test's"
        assert not as_applied(settings.SLUICE_CLUSTER_NAME, namespace, "app-0"), "v1's late event is left out"

        _log_level_synced(repo, source, sync, "info", "revert to v1")
        assert cluster.get_configmap(namespace, "app-0")["data"] == {"LOG_LEVEL": "info"}
    finally:
        lease.close()
        lease.store.client.delete(
            _objects_key(settings.SLUICE_CLUSTER_NAME, namespace),
            livestore._key(settings.SLUICE_CLUSTER_NAME, "floor", namespace),
        )


def _stamp(version: int, content_hash: str, *, applied: bool = True) -> str:
    return LiveStamp(str(version), "src", "c0ffee", content_hash * 32, applied).encode()


def _floors(store: livestore.LiveStore, namespace: str) -> dict[str, str]:
    return store.client.hgetall(livestore._key(store.cluster, "floor", namespace))


def test_a_floor_holds_back_every_older_stamp_of_its_object_until_one_at_or_above_it(stack):
    """Through the real scripts, both ways of watching: below the floor nothing is stored (the name is
    deleted, so the object is read), a deletion below it removes the name and keeps the floor; a stamp
    or a deletion at or above it is stored and ends the floor."""
    cluster = f"t-{uuid.uuid4().hex[:8]}"
    store = livestore.LiveStore(cluster, "term-1", stale_seconds=30)
    assert store.claim()
    try:
        _floor_holds_back_older_stamps(store, "team-a", whole_cluster=True)
        _floor_holds_back_older_stamps(store, "team-b", whole_cluster=False)
    finally:
        store.release()
        _delete_keys_of(cluster)


def _floor_holds_back_older_stamps(
    store: livestore.LiveStore, namespace: str, *, whole_cluster: bool
) -> None:
    cluster = store.cluster

    def told(name: str, text: str) -> None:
        if whole_cluster:
            assert store.write_events([(namespace, name, text)], resource_version="1", fresh=None)
        else:
            assert store.write(namespace, {name: text}, resource_version="1")

    assert store.write(namespace, {"app": _stamp(7, "a"), "other": _stamp(7, "a")}, whole_cluster=True)
    written = {namespace: [Written("app", "b" * 32, "10"), Written("other", "a" * 32, "")]}
    assert livestore.unsettle_written(cluster, written) == 1
    assert _floors(store, namespace) == {"app": "10"}, "no floor without a version"

    told("app", _stamp(8, "a"))
    told("app", _stamp(9, "c", applied=False))
    assert "app" not in store.load(namespace)[0]
    told("app", _stamp(7, "a"))
    told("app", deleted_at("9"))
    assert _floors(store, namespace) == {"app": "10"}, "a deletion below the floor keeps it"
    told("other", _stamp(11, "a"))  # no floor: stored as ever
    told("app", _stamp(10, "b"))
    assert store.load(namespace)[0] == {"app": _stamp(10, "b"), "other": _stamp(11, "a")}
    assert _floors(store, namespace) == {}
    told("app", _stamp(9, "a"))  # the floor is over: an event is stored as it comes
    assert store.load(namespace)[0]["app"] == _stamp(9, "a")

    assert livestore.unsettle_written(cluster, {namespace: [Written("app", "d" * 32, "20")]}) == 1
    told("app", deleted_at("21"))
    assert _floors(store, namespace) == {}, "a deletion at or above the floor ends it"


def test_a_worker_sets_a_floor_only_below_its_write_and_never_lowers_one(stack):
    """A stamp that shows the write at an older version is kept (it settles what the cluster holds),
    but its floor is set: an event between the two would otherwise come after it. A stamp at or above
    the write needs none, and a later answer of an earlier write never lowers a floor. The floors
    expire, after at least an hour."""
    cluster = f"t-{uuid.uuid4().hex[:8]}"
    store = livestore.LiveStore(cluster, "term-1", stale_seconds=30)
    assert store.claim()
    try:
        assert store.write("ns", {"again": _stamp(5, "a"), "seen": _stamp(12, "a")}, whole_cluster=True)
        written = [
            Written("again", "a" * 32, "9"),  # a written again at 9, after b at 7 not yet told
            Written("seen", "a" * 32, "12"),
            Written("absent", "a" * 32, "14"),  # an object the cache has no stamp of: a replace's new one
        ]
        assert livestore.unsettle_written(cluster, {"ns": written}) == 0
        assert store.load("ns")[0] == {"again": _stamp(5, "a"), "seen": _stamp(12, "a")}
        assert _floors(store, "ns") == {"again": "9", "absent": "14"}
        assert livestore.unsettle_written(cluster, {"ns": [Written("absent", "b" * 32, "13")]}) == 0
        assert _floors(store, "ns")["absent"] == "14"

        assert store.write_events([("ns", "again", _stamp(7, "b"))], resource_version="7", fresh=None)
        assert "again" not in store.load("ns")[0], "b's event, between a's two writes, is held back"
        ttl = store.client.pttl(livestore._key(cluster, "floor", "ns"))
        assert livestore.floor_milliseconds() - 60_000 < ttl <= livestore.floor_milliseconds()
        assert livestore.floor_milliseconds() >= 3_600_000
    finally:
        store.release()
        _delete_keys_of(cluster)


def test_a_relist_leaves_out_stamps_below_floors_and_ends_the_floors_its_list_reaches(stack):
    """A LIST taken before a worker's write can be stored after the worker's drop. What it shows below
    a floor is left out; a floor at or below the LIST's version ends (its watch resumes from there),
    whether or not the LIST still shows the object. Both ways of watching."""
    cluster = f"t-{uuid.uuid4().hex[:8]}"
    store = livestore.LiveStore(cluster, "term-1", stale_seconds=30)
    assert store.claim()
    try:
        for namespace in ("team-a", "team-b"):
            assert store.write(namespace, {"app": _stamp(5, "a")}, whole_cluster=True)
            written = [Written("app", "b" * 32, "30"), Written("gone", "b" * 32, "12")]
            livestore.unsettle_written(cluster, {namespace: written})
        listed_before_the_write = {"app": _stamp(5, "a"), "kept": _stamp(6, "a")}

        assert store.replace_all({"team-a": listed_before_the_write}, [], listed="20")
        assert store.write("team-b", listed_before_the_write, resource_version="20", reset=True, listed="20")

        for namespace in ("team-a", "team-b"):
            assert store.load(namespace)[0] == {"kept": _stamp(6, "a")}
            assert _floors(store, namespace) == {"app": "30"}
        assert store.replace_all({"team-a": {"app": _stamp(30, "b")}}, [], listed="31")
        assert store.load("team-a")[0] == {"app": _stamp(30, "b")} and _floors(store, "team-a") == {}
    finally:
        store.release()
        _delete_keys_of(cluster)


def test_versions_are_compared_as_whole_numbers_of_any_length(stack):
    """Lua's numbers are floats: 2^53 + 1 would read as 2^53, and a stamp one version older than its
    floor would end it."""
    cluster = f"t-{uuid.uuid4().hex[:8]}"
    store = livestore.LiveStore(cluster, "term-1", stale_seconds=30)
    assert store.claim()
    try:
        big = 2**53
        assert livestore.unsettle_written(cluster, {"ns": [Written("app", "b" * 32, str(big + 1))]}) == 0
        assert store.write_events([("ns", "app", _stamp(big, "a"))], resource_version="1", fresh=None)
        assert "app" not in store.load("ns")[0] and _floors(store, "ns") == {"app": str(big + 1)}
        assert store.write_events([("ns", "app", _stamp(10 * big, "b"))], resource_version="2", fresh=None)
        assert store.load("ns")[0]["app"] == _stamp(10 * big, "b") and _floors(store, "ns") == {}
    finally:
        store.release()
        _delete_keys_of(cluster)


def test_a_floor_is_set_only_where_a_live_cache_could_store_an_older_event(stack):
    """No cache holds the lease and none stored a resume version: a cache that starts lists, and its
    LIST is newer than the write, so a floor would only take room. A namespace's resume version (a
    cache would replay from it) or the lease is enough for one."""
    cluster = f"t-{uuid.uuid4().hex[:8]}"
    store = livestore.LiveStore(cluster, "term-1", stale_seconds=30)
    client = store.client
    try:
        written = {
            "unwatched": [Written("app", "b" * 32, "30")],
            "resumable": [Written("app", "b" * 32, "30")],
        }
        client.set(livestore._key(cluster, "resume", "resumable"), "25")
        livestore.unsettle_written(cluster, written)
        assert _floors(store, "unwatched") == {} and _floors(store, "resumable") == {"app": "30"}
        assert store.claim()
        livestore.unsettle_written(cluster, written)
        assert _floors(store, "unwatched") == {"app": "30"}
    finally:
        _delete_keys_of(cluster)


def test_a_replace_refused_after_its_delete_drops_the_stamp_of_the_object_it_deleted(
    stack, namespace, cluster
):
    """The delete of a replace went through, then the cluster refused the new object: the intent is
    refused, but the object is gone, and its old stamp (as applied) would settle a revert of it."""
    from gitops.cluster.apply import intents_apply_everywhere
    from gitops.models import ApplyIntent

    # The source's (a delete goes out only while the object is still the source's).
    labels = {"app.kubernetes.io/managed-by": "sluice", "sluice.dev/source": "apps"}
    metadata = {"name": "app", "namespace": namespace, "labels": labels}
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}
    cluster.apply_configmap({**manifest, "data": {"A": "1"}}, field_manager=settings.SLUICE_FIELD_MANAGER)
    lease = _Lease()
    try:
        lease.watched(cluster, namespace, "app")
        refused = ApplyIntent(
            source=Source(name="apps"),
            cluster=settings.SLUICE_CLUSTER_NAME,
            namespace=namespace,
            name="app",
            action=ChangeAction.REPLACE,
            manifest={**manifest, "data": {"not a key!": "x"}},
        )
        applied = intents_apply_everywhere([refused])
        assert applied.errors[0] and "not a key!" in applied.errors[0]
        assert "app" not in {obj["metadata"]["name"] for obj in cluster.list_configmaps(namespace)}
        stamps = livestore.fresh_stamps(settings.SLUICE_CLUSTER_NAME, [namespace]).get(namespace, {})
        assert "app" not in stamps
    finally:
        lease.close()
        lease.store.client.delete(_objects_key(settings.SLUICE_CLUSTER_NAME, namespace))


def test_floors_go_with_a_forgotten_namespace_and_a_dropped_cluster(stack):
    cluster = f"t-{uuid.uuid4().hex[:8]}"
    store = livestore.LiveStore(cluster, "term-1", stale_seconds=30)
    assert store.claim()
    try:
        for namespace in ("team-a", "team-b"):
            livestore.unsettle_written(cluster, {namespace: [Written("app", "b" * 32, "30")]})
        assert store.forget("team-a")
        assert _floors(store, "team-a") == {} and _floors(store, "team-b") == {"app": "30"}
        assert store.drop_stored()
        assert set(store.client.scan_iter(match=f"{livestore.PREFIX}:{{{cluster}}}:*")) == {
            livestore._key(cluster, "alive")
        }
    finally:
        store.release()
        _delete_keys_of(cluster)


def test_a_stamp_that_shows_the_write_already_is_kept(stack, namespace, cluster):
    """The watch stored the write before the worker got to it: that stamp stays, so the next plan is
    not sent to read what the cache already vouches for. A deletion's stamp goes whatever it says."""
    cluster.apply_configmap(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": namespace}},
        field_manager="someone",
    )
    written = LiveStamp("7", "src", "c0ffee", "a" * 32, True).encode()
    lease = _Lease()
    try:
        assert lease.store.write(
            namespace, {"kept": written, "outdated": written, "deleted": written}, whole_cluster=True
        )
        default = settings.SLUICE_CLUSTER_NAME

        dropped = livestore.unsettle_written(
            default,
            {
                namespace: [
                    Written("kept", "a" * 32),
                    Written("outdated", "b" * 32),
                    Written("deleted", ""),
                    Written("absent", "c" * 32),
                ]
            },
        )

        assert dropped == 2
        assert lease.store.load(namespace)[0] == {"kept": written}
        assert lease.store.client.hget(_objects_key(default, namespace), livestore.VERSION_FIELD) is None, (
            "a version over stamps it no longer matches is never left"
        )
    finally:
        lease.close()
        lease.store.client.delete(_objects_key(settings.SLUICE_CLUSTER_NAME, namespace))


def test_held_stamp_drops_are_cleared_only_as_they_were_read(make_source):
    """A preview makes a source's held stamp drops without the source's lock. If a pass held more drops
    meanwhile, clearing the column blindly lost them, and the next plan trusted a stamp older than that
    pass's write. They stay now: this plan reads the cluster, and the next makes them all."""
    from gitops import caches
    from gitops.cluster.apply import stamps_drop_held

    source = make_source()
    cluster = settings.SLUICE_CLUSTER_NAME
    read = {cluster: {"team-a": [["one", "h1", "10"]]}}
    held_meanwhile = {cluster: {"team-a": [["one", "h1", "10"], ["two", "h2", "11"]]}}
    Source.objects.filter(pk=source.pk).update(stamps_to_drop=held_meanwhile)
    caches.drop(source.pk)
    source.stamps_to_drop = read  # as the preview read the source, before the pass held more

    assert stamps_drop_held(source) is False, "this plan reads the cluster"
    assert Source.objects.get(pk=source.pk).stamps_to_drop == held_meanwhile
    assert stamps_drop_held(source) is True
    assert Source.objects.get(pk=source.pk).stamps_to_drop == {}


def test_a_watch_that_last_listed_another_server_vouches_for_nothing(
    repo, make_namespaces, make_source, sync, cluster, caplog
):
    """A kubeconfig re-pointed at another apiserver (a migration, a disaster-recovery switch): workers
    connect to the new server at once, while the old server's watch may vouch for its objects until it
    ends. Stamps are trusted only from a watch whose last LIST was of the server the worker talks to;
    the others' namespaces are read. Before, a pass settled the new cluster's objects from the old
    server's stamps as unchanged, and created or updated nothing there."""
    namespace, source = synced_source(repo, make_namespaces, make_source, sync)
    name = settings.SLUICE_CLUSTER_NAME
    lease = _Lease()
    try:
        lease.watched(cluster, namespace, "app-0")
        assert namespace in livestore.fresh_stamps_since(name, [namespace], {}, server=cluster.server)
        assert sync(source)["outcome"] == "unchanged"
        assert last_plan(source)["reads"]["cache"] > 0, "the watch of this server vouches"

        assert lease.store.remember_list("", "https://old-apiserver.example:6443")
        assert livestore.fresh_stamps_since(name, [namespace], {}, server=cluster.server) == {}
        assert "the live cache last listed https://old-apiserver.example:6443" in caplog.text, "said once"
        assert sync(source)["outcome"] == "unchanged"
        assert last_plan(source)["reads"]["cache"] == 0, last_plan(source)["reads"]
    finally:
        lease.close()


def test_an_object_another_source_took_over_is_released_though_the_cache_stamps_it(
    repo, make_namespaces, make_source, sync, cluster, core_api, live_cache
):
    """Still labelled as managed by Sluice, an object relabelled as another source's keeps a stamp in the
    live cache, naming that source: a pass read it no more, so once Git dropped it, it stayed in this
    source's inventory, never released (without the cache, it was)."""
    from gitops.models import ManagedObject

    namespace, source = synced_source(repo, make_namespaces, make_source, sync, objects=2)
    poll(lambda: fresh(namespace), timeout=30, what="the live cache to watch the namespace")
    core_api.patch_namespaced_config_map(
        "app-1", namespace, {"metadata": {"labels": {"sluice.dev/source": "other"}}}
    )

    def relabelled() -> bool:
        text = (
            livestore.fresh_stamps(settings.SLUICE_CLUSTER_NAME, [namespace]).get(namespace, {}).get("app-1")
        )
        return text is not None and LiveStamp.decode(text).source == "other"

    poll(relabelled, timeout=30, what="the live cache to stamp the object as the other source's")
    repo.remove("configmaps/app-1.yaml")
    repo.commit("app-1 goes")

    # The relabel woke the source (its stamp changed hands): under load the pass that wake queued can
    # run after the commit, before this one, and release the object itself (a fresh clone's run once).
    summary = sync(source)["summary"]
    assert summary.get("unchanged") == 1 and set(summary) <= {"unchanged", "released"}, summary
    assert not ManagedObject.objects.filter(source=source, name="app-1").exists(), "released, by one pass"
    assert cluster.get_configmap(namespace, "app-1")["data"] == {"LOG_LEVEL": "info"}, "not pruned"


class PrivateRedis:
    """A redis-server of the test's own, every write on disk before it answers (``appendfsync always``),
    which the test kills and starts again on the same files: a restart within the cache's lease."""

    def __init__(self, directory) -> None:
        from devstack.stack import _redis_server
        from tests.clusters import closed_port

        self.port, self.directory, self.binary = closed_port(), directory, _redis_server()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateRedis:
        import redis

        durable = ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                *durable,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_timeout=1, decode_responses=True)
        poll(lambda: _answers(client), timeout=30, what="the private redis-server to answer")
        self.client = client
        return self

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=30)


def _answers(client) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def test_a_redis_restarted_under_a_term_ends_it_and_a_new_term_vouches_again(
    repo, make_namespaces, make_source, sync, start_live_cache, tmp_path
):
    """Restarted within the lease (or failed over), Redis may lack the last writes while the lease's
    key survived: the term's informers, past those events in memory, would never store them again.
    The cache sees Redis's new run id at its next renewal, ends the term and starts a new one, which
    resumes from what Redis holds; before, the same term went on."""
    redis_server = PrivateRedis(tmp_path).start()
    try:
        synced_source(repo, make_namespaces, make_source, sync)
        private = {"REDIS_URL": redis_server.url, "CELERY_BROKER_URL": redis_server.url}
        cache = start_live_cache(**private)
        alive = livestore._key(settings.SLUICE_CLUSTER_NAME, "alive")
        cfresh = livestore._key(settings.SLUICE_CLUSTER_NAME, "cfresh")

        def vouched_by_a_term() -> str:
            epoch = redis_server.client.get(alive) or ""
            return epoch if epoch and redis_server.client.get(cfresh) == epoch else ""

        poll(vouched_by_a_term, timeout=60, what="the cache's watch to vouch for the cluster")
        first = vouched_by_a_term()

        # A lease longer than the restart takes, so that its key outlives it however slow the machine
        # is now. The cache is held still meanwhile: a renewal between the pexpire and the kill put 2 s
        # back, and a restart slower than that (a loaded machine) lost the key, failing this test once.
        os.killpg(cache.process.pid, signal.SIGSTOP)
        try:
            redis_server.client.pexpire(alive, 60_000)
            redis_server.kill()
            redis_server.start()
            assert redis_server.client.get(alive) == first, "the lease's key survived the restart"
        finally:
            os.killpg(cache.process.pid, signal.SIGCONT)

        poll(lambda: vouched_by_a_term() not in ("", first), timeout=60, what="a new term to vouch")
        assert "Redis restarted or failed over" in cache.log_path.read_text(errors="replace")
    finally:
        redis_server.kill()


def test_the_live_caches_liveness_probe_reads_its_main_loops_heartbeat(start_live_cache, tmp_path):
    """The probe looked for a process whose command line held `gitops live-cache`, which tini's own (the
    container's first process) does: it could never fail (before 2026-12-07). Standing by or serving,
    the main loop touches its heartbeat file each round."""
    data = tmp_path / "data"
    data.mkdir()
    assert not probe_passes("65-live-cache.yaml", data), "no heartbeat yet"
    cache = start_live_cache(wait=False, SLUICE_DATA_DIR=str(data))
    heartbeat = data / f"live-cache-{socket.gethostname()}.heartbeat"
    poll(heartbeat.exists, timeout=60, what=f"the live cache's first round (log: {cache.log_path})")
    assert 55 < deadline_in(heartbeat) <= 61, "three rounds of a second here, at least a minute"
    expire(heartbeat)
    poll(lambda: probe_passes("65-live-cache.yaml", data), timeout=30, what="its next rounds to touch it")
    cache.stop()
    expire(heartbeat)
    assert not probe_passes("65-live-cache.yaml", data), "a main loop that stopped a minute ago"
