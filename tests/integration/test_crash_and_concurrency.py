"""A worker killed mid-apply, and two workers given the same source: the log stays exact."""

from __future__ import annotations

from collections import Counter

import pytest
from django.db import transaction

from gitops.models import ApplyIntent, Change
from tests.gitrepo import configmap, policy
from tests.workers import poll

pytestmark = pytest.mark.django_db(transaction=True)

# The worker that comes after a killed one: the pass it takes over was left by a SIGKILL (or a finished
# SIGTERM), so no write of the old one can still land; 2 s instead of the suite's 5 s each time.
TAKES_OVER_SOONER = {"SLUICE_PASS_TAKEOVER_SECONDS": "2"}


def many_configmaps(repo, count: int) -> None:
    for index in range(count):
        repo.write(f"configmaps/cm-{index:04d}.yaml", configmap(f"cm-{index:04d}", {"index": str(index)}))


def test_a_worker_killed_mid_apply_leaves_state_the_next_run_completes(
    repo, make_namespaces, make_source, start_worker, cluster, worker_env
):
    from gitops.tasks import sync_source

    first_ns, second_ns = make_namespaces("a", "b")
    repo.write("sluice.yaml", policy([first_ns, second_ns]))
    many_configmaps(repo, 300)
    commit = repo.commit("600 objects")
    source = make_source()
    # Only these workers consume this queue, so the kill hits the run doing the apply;
    # a slow apply makes the kill land while objects are going out.
    queue = f"crash-{source.pk}"
    doomed = start_worker(concurrency=1, queues=queue, env_overrides={"SLUICE_APPLY_CONCURRENCY": "1"})
    sync_source.apply_async((source.pk,), queue=queue)

    poll(
        lambda: (
            ApplyIntent.objects.filter(source=source).exists()
            and len(cluster.list_configmaps(first_ns)) + len(cluster.list_configmaps(second_ns)) >= 20
        ),
        timeout=60,
        interval=0.02,
        what="the apply to be under way",
    )
    doomed.kill()
    applied_before_crash = len(cluster.list_configmaps(first_ns)) + len(cluster.list_configmaps(second_ns))
    assert 0 < applied_before_crash < 600, "the kill must land mid-apply"
    assert ApplyIntent.objects.filter(source=source, status="pending").count() == 600
    assert Change.objects.filter(source=source).count() == 0

    start_worker(queues=queue, env_overrides=TAKES_OVER_SOONER)
    result = sync_source.apply_async((source.pk,), queue=queue).get(timeout=180)

    # The interrupted rollout finishes: nothing is left to apply, its step completes.
    assert result["outcome"] == "completed", result
    assert result["rollout"]["phase"] == "Completed"
    assert result["summary"].get("resumed") == 600, result
    assert len(cluster.list_configmaps(first_ns)) + len(cluster.list_configmaps(second_ns)) == 600
    logged = Counter((c.namespace, c.name) for c in Change.objects.filter(source=source))
    assert len(logged) == 600
    assert set(logged.values()) == {1}, "each change is logged exactly once"
    assert set(Change.objects.filter(source=source).values_list("commit", "action", "result")) == {
        (commit, "create", "ok")
    }
    assert not ApplyIntent.objects.filter(source=source, status="pending").exists()


def log_held_open_by_the_pass(source_id: int, table: str = "gitops_change") -> bool:
    """True while the session holding the source's reconcile lock has written rows of ``table`` (the
    change log) in a transaction it has not committed (a worker held at a failpoint inside one). Idle in
    it for a second at least: a transaction caught between two of its statements (a rollout's start, on
    a slow machine) is not the failpoint's, and a worker killed there had applied nothing yet."""
    from django.db import connection

    from gitops.locks import LOCK_CLASS

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks a "
            "JOIN pg_locks t ON t.pid = a.pid AND t.granted AND t.mode = 'RowExclusiveLock' "
            "AND t.relation = %s::regclass "
            "JOIN pg_stat_activity s ON s.pid = a.pid AND s.state = 'idle in transaction' "
            "AND s.state_change < clock_timestamp() - interval '1 second' "
            "WHERE a.locktype = 'advisory' AND a.granted AND a.classid = %s AND a.objid = %s "
            "AND a.objsubid = 2 "
            "AND a.database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
            [table, LOCK_CLASS, source_id],
        )
        return bool(cursor.fetchone()[0])


def test_a_worker_killed_between_the_log_and_the_inventory_leaves_both_to_the_next_pass(
    repo, make_namespaces, make_source, start_worker, cluster
):
    from gitops.models import ManagedObject
    from gitops.tasks import sync_source

    (namespace,) = make_namespaces("app")
    repo.write("sluice.yaml", policy([namespace]))
    many_configmaps(repo, 40)
    commit = repo.commit("40 objects")
    source = make_source()
    queue = f"crash-log-{source.pk}"
    doomed = start_worker(
        concurrency=1, queues=queue, env_overrides={"SLUICE_FAILPOINTS": "after-change-log=300"}
    )
    sync_source.apply_async((source.pk,), queue=queue)
    poll(
        lambda: log_held_open_by_the_pass(source.pk) or Change.objects.filter(source=source).exists(),
        timeout=90,
        what="the pass to write its change log and stop before the inventory",
    )
    doomed.kill()
    assert len(cluster.list_configmaps(namespace)) == 40, "every object was applied before the kill"
    # Logged without the inventory, the objects would be called another's by every later plan.
    assert not Change.objects.filter(source=source).exists(), "the log went without the inventory"
    assert not ManagedObject.objects.filter(source=source).exists()
    assert ApplyIntent.objects.filter(source=source, status="pending").count() == 40

    start_worker(queues=queue, env_overrides=TAKES_OVER_SOONER)
    result = sync_source.apply_async((source.pk,), queue=queue).get(timeout=180)

    assert result["summary"].get("resumed") == 40, result
    assert ManagedObject.objects.filter(source=source).count() == 40
    logged = Counter((c.namespace, c.name) for c in Change.objects.filter(source=source, commit=commit))
    assert len(logged) == 40 and set(logged.values()) == {1}, "each change is logged exactly once"
    # The objects are the source's own: a change to one is applied, not refused as another's.
    repo.write("configmaps/cm-0007.yaml", configmap("cm-0007", {"index": "7", "v": "2"}))
    repo.commit("v2")
    result = sync_source.apply_async((source.pk,), queue=queue).get(timeout=180)
    assert result["outcome"] == "applied", result
    assert "conflict" not in result["summary"], result
    assert cluster.get_configmap(namespace, "cm-0007")["data"]["v"] == "2"


def test_a_worker_killed_as_a_rollout_completes_leaves_it_for_the_next_pass_to_complete_whole(
    repo, make_namespaces, make_source, start_worker, cluster
):
    """The completion, the revision marked applied and the timeline's line go together: a worker
    killed after the first left the revision unapplied and the completion unannounced for good (later
    passes found the rollout completed)."""
    from gitops.models import Revision, Rollout, RolloutEvent
    from gitops.tasks import sync_source

    (namespace,) = make_namespaces("app")
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"V": "1"})})
    commit = repo.commit("v1")
    source = make_source()
    queue = f"crash-complete-{source.pk}"
    doomed = start_worker(concurrency=1, queues=queue, env_overrides={"SLUICE_FAILPOINTS": "completing=300"})
    sync_source.apply_async((source.pk,), queue=queue)
    poll(
        lambda: (
            log_held_open_by_the_pass(source.pk, "gitops_rollout")
            or Rollout.objects.filter(source=source, phase="Completed").exists()
        ),
        timeout=90,
        what="the pass to stop inside the completion",
    )
    doomed.kill()
    assert cluster.get_configmap(namespace, "app")["data"] == {"V": "1"}

    start_worker(queues=queue, env_overrides=TAKES_OVER_SOONER)
    sync_source.apply_async((source.pk,), queue=queue).get(timeout=180)

    rollout = Rollout.objects.get(source=source)
    assert rollout.phase == "Completed"
    assert Revision.objects.get(source=source, commit=commit).outcome == "applied"
    assert RolloutEvent.objects.filter(rollout=rollout, kind="completed").count() == 1


def test_a_prune_a_killed_worker_left_pending_spares_an_object_someone_took_over_meanwhile(
    repo, make_namespaces, make_source, start_worker, cluster, core_api
):
    """A pending deletion was sent again by name, whatever the object had become: one whose Sluice
    labels were removed (the documented way to keep it) was deleted by the next pass. Now it is read
    first, and dropped, unlogged, when the object is no longer the source's; one already carried out is
    logged and not sent again."""
    from gitops.tasks import sync_source

    (namespace,) = make_namespaces("app")
    repo.write_all(
        {
            "sluice.yaml": policy([namespace], prune=True),
            "configmaps/kept.yaml": configmap("kept", {"V": "1"}),
            "configmaps/gone.yaml": configmap("gone", {"V": "1"}),
        }
    )
    repo.commit("v1")
    source = make_source()
    queue = f"crash-prune-{source.pk}"
    first = start_worker(queues=queue)
    assert sync_source.apply_async((source.pk,), queue=queue).get(timeout=180)["outcome"] == "applied"
    first.kill()
    repo.remove("configmaps/kept.yaml")
    repo.remove("configmaps/gone.yaml")
    repo.commit("v2: neither")
    doomed = start_worker(
        concurrency=1, queues=queue, env_overrides={"SLUICE_FAILPOINTS": "before-apply=300"}
    )
    sync_source.apply_async((source.pk,), queue=queue)
    pending = ApplyIntent.objects.filter(source=source, status="pending", action="delete")
    poll(lambda: pending.count() == 2, timeout=90, what="the prune's intents, written and not sent")
    doomed.kill()

    # Meanwhile someone keeps "kept" (Sluice's labels off), and deletes "gone" by hand.
    core_api.patch_namespaced_config_map(
        "kept",
        namespace,
        {"metadata": {"labels": {"sluice.dev/source": None, "app.kubernetes.io/managed-by": None}}},
    )
    core_api.delete_namespaced_config_map("gone", namespace)
    start_worker(queues=queue, env_overrides=TAKES_OVER_SOONER)
    sync_source.apply_async((source.pk,), queue=queue).get(timeout=180)

    assert cluster.get_configmap(namespace, "kept")["data"] == {"V": "1"}, "taken over: not deleted"
    assert not pending.exists()
    logged = list(Change.objects.filter(source=source, action="delete").values_list("name", flat=True))
    assert logged == ["gone"], "the deletion found carried out is logged; the spared one is not"


def test_a_prune_spares_an_object_another_source_took_over_between_its_plan_and_its_delete(
    repo, make_namespaces, make_source, start_worker, cluster, core_api, tmp_path
):
    """The plan found the object the source's and Git without it; before the delete went out (the worker
    held between writing its intents and sending them), another source's labels were put on it. The
    delete reads it first and is made only on the condition that it is the object read: it is kept, and
    the change log says why."""
    from gitops.tasks import sync_source

    (namespace,) = make_namespaces("app")
    repo.write_all(
        {
            "sluice.yaml": policy([namespace], prune=True),
            "configmaps/gone.yaml": configmap("gone", {"V": "1"}),
        }
    )
    repo.commit("v1")
    source = make_source()
    queue = f"held-prune-{source.pk}"
    go_on = tmp_path / "go-on"
    start_worker(queues=queue, env_overrides={"SLUICE_FAILPOINTS": f"before-apply=until:{go_on}"})
    go_on.touch()
    assert sync_source.apply_async((source.pk,), queue=queue).get(timeout=180)["outcome"] == "applied"
    go_on.unlink()
    repo.remove("configmaps/gone.yaml")
    repo.commit("v2: without it")
    answer = sync_source.apply_async((source.pk,), queue=queue)
    pending = ApplyIntent.objects.filter(source=source, status="pending", action="delete")
    poll(lambda: pending.count() == 1, timeout=90, what="the prune's intent, written and not sent")

    core_api.patch_namespaced_config_map(
        "gone", namespace, {"metadata": {"labels": {"sluice.dev/source": "another-source"}}}
    )
    go_on.touch()
    result = answer.get(timeout=180)

    assert result["outcome"] == "failed"
    assert cluster.get_configmap(namespace, "gone")["data"] == {"V": "1"}, "taken over: not deleted"
    refused = Change.objects.get(source=source, action="delete")
    assert "not deleted: it is now source another-source's" in refused.error


def test_an_analysis_failed_for_good_rolls_back_after_a_crash_though_its_check_passes_now(
    repo, make_namespaces, make_source, start_worker, cluster, analysis_endpoint, tmp_path
):
    """The analysis's last allowed failure and the decision to roll back were two commits: a worker killed
    between them left the rollout under way, and the next pass ran the check again; passing now, it took
    the rollout on past its failureLimit. The decision now commits with the failure."""
    from gitops.models import Rollout, RolloutEvent
    from gitops.tasks import sync_source

    targets = make_namespaces("canary", "rest")
    repo.write_all({"sluice.yaml": policy(targets), "configmaps/app.yaml": configmap("app", {"V": "1"})})
    repo.commit("v1")
    source = make_source(analysis_url_prefixes=[analysis_endpoint.url])
    queue = f"analysis-crash-{source.pk}"
    doomed = start_worker(
        concurrency=1,
        queues=queue,
        env_overrides={"SLUICE_FAILPOINTS": f"after-analysis-failed=until:{tmp_path / 'never'}"},
    )
    assert sync_source.apply_async((source.pk,), queue=queue).get(timeout=180)["outcome"] == "applied"
    analysis = {"analysis": {"http": {"url": analysis_endpoint.url}, "failureLimit": 1}}
    steps = [{"setWeight": 50}, analysis, {"setWeight": 100}]
    repo.write_all(
        {
            "sluice.yaml": policy(targets, rollout={"steps": steps}),
            "configmaps/app.yaml": configmap("app", {"V": "2"}),
        }
    )
    repo.commit("v2")
    analysis_endpoint.status = 503
    sync_source.apply_async((source.pk,), queue=queue)
    failed = RolloutEvent.objects.filter(rollout__source=source, kind="analysis")
    poll(failed.exists, timeout=90, what="the analysis's failure, stored")
    doomed.kill()

    analysis_endpoint.status = 200  # the check would pass now
    start_worker(queues=queue, env_overrides=TAKES_OVER_SOONER)
    sync_source.apply_async((source.pk,), queue=queue).get(timeout=180)

    rollout = Rollout.objects.filter(source=source).order_by("-id").first()
    assert rollout.phase == "Aborted" and "analysis failed" in rollout.message
    assert [cluster.get_configmap(ns, "app")["data"]["V"] for ns in targets] == ["1", "1"]


def test_an_update_a_killed_worker_left_pending_spares_an_object_someone_took_over_meanwhile(
    repo, make_namespaces, make_source, start_worker, cluster, core_api
):
    """A pending update was sent again whatever the object had become: one an operator took over meanwhile
    (Sluice's labels off, a key of their own) got Sluice's labels and content back, taken over silently.
    Now it is read first and dropped, unlogged; the source's other object gets its update."""
    from gitops.tasks import sync_source

    (namespace,) = make_namespaces("app")
    repo.write_all(
        {
            "sluice.yaml": policy([namespace]),
            "configmaps/kept.yaml": configmap("kept", {"V": "1"}),
            "configmaps/ours.yaml": configmap("ours", {"V": "1"}),
        }
    )
    repo.commit("v1")
    source = make_source()
    queue = f"crash-update-{source.pk}"
    first = start_worker(queues=queue)
    assert sync_source.apply_async((source.pk,), queue=queue).get(timeout=180)["outcome"] == "applied"
    first.kill()
    repo.write("configmaps/kept.yaml", configmap("kept", {"V": "2"}))
    repo.write("configmaps/ours.yaml", configmap("ours", {"V": "2"}))
    repo.commit("v2")
    doomed = start_worker(
        concurrency=1, queues=queue, env_overrides={"SLUICE_FAILPOINTS": "before-apply=300"}
    )
    sync_source.apply_async((source.pk,), queue=queue)
    pending = ApplyIntent.objects.filter(source=source, status="pending", action="update")
    poll(lambda: pending.count() == 2, timeout=90, what="the step's updates, written and not sent")
    doomed.kill()

    core_api.patch_namespaced_config_map(
        "kept",
        namespace,
        {
            "metadata": {"labels": {"sluice.dev/source": None, "app.kubernetes.io/managed-by": None}},
            "data": {"mine": "kept by hand"},
        },
    )
    start_worker(queues=queue, env_overrides=TAKES_OVER_SOONER)
    sync_source.apply_async((source.pk,), queue=queue).get(timeout=180)

    kept = cluster.get_configmap(namespace, "kept")
    assert kept["data"] == {"V": "1", "mine": "kept by hand"}, "taken over: left as the operator left it"
    assert "sluice.dev/source" not in (kept["metadata"].get("labels") or {})
    assert cluster.get_configmap(namespace, "ours")["data"] == {"V": "2"}
    assert not pending.exists()
    updated = Change.objects.filter(source=source, action="update").values_list("name", flat=True)
    assert list(updated) == ["ours"]


def test_a_write_a_killed_worker_made_outside_a_scope_narrowed_since_is_logged_not_forgotten(
    repo, make_namespaces, make_source, start_worker, cluster
):
    """A worker applied its step in two namespaces and was killed before it logged anything. Then an
    administrator took one namespace out of the source's scope. The next pass does not apply that
    namespace's writes again, but the cluster shows they took effect: they are logged, so the log holds
    what the cluster got and the rollout's rollback knows them. (Dropped unlogged, they were neither.)"""
    from gitops import source_admin
    from gitops.tasks import sync_source

    kept, narrowed = make_namespaces("kept", "narrowed")
    repo.write("sluice.yaml", policy([kept, narrowed]))
    many_configmaps(repo, 3)
    repo.commit("3 objects in 2 namespaces")
    source = make_source()
    queue = f"crash-scope-{source.pk}"
    doomed = start_worker(
        concurrency=1, queues=queue, env_overrides={"SLUICE_FAILPOINTS": "after-change-log=300"}
    )
    sync_source.apply_async((source.pk,), queue=queue)
    poll(lambda: log_held_open_by_the_pass(source.pk), timeout=90, what="the pass to hold its log open")
    doomed.kill()
    assert len(cluster.list_configmaps(narrowed)) == 3, "applied there before the kill"
    assert ApplyIntent.objects.filter(source=source, status="pending").count() == 6

    source_admin.source_update_scope(source, allowed_namespaces=[kept])
    start_worker(queues=queue, env_overrides=TAKES_OVER_SOONER)
    sync_source.apply_async((source.pk,), queue=queue).get(timeout=180)

    outside = ApplyIntent.objects.filter(source=source, namespace=narrowed, rollout__isnull=False)
    forward = outside.exclude(action="rollback")
    assert set(forward.values_list("status", flat=True)) == {"done"}, "found in effect: logged"
    assert Change.objects.filter(source=source, namespace=narrowed, intent__in=forward).count() == 3
    assert not ApplyIntent.objects.filter(source=source, status="pending").exists()


def test_two_workers_given_the_same_source_log_each_change_once(
    repo, make_namespaces, make_source, start_worker, cluster
):
    from gitops.tasks import sync_source

    (namespace,) = make_namespaces("app")
    repo.write("sluice.yaml", policy([namespace]))
    many_configmaps(repo, 200)
    repo.commit()
    source = make_source()
    queue = f"race-{source.pk}"
    start_worker(concurrency=2, queues=queue)
    start_worker(concurrency=2, queues=queue)

    results = [sync_source.apply_async((source.pk,), queue=queue) for _ in range(6)]
    outcomes = [r.get(timeout=180) for r in results]

    assert sorted(o["outcome"] for o in outcomes).count("applied") == 1, outcomes
    assert len(cluster.list_configmaps(namespace)) == 200
    logged = Counter((c.namespace, c.name) for c in Change.objects.filter(source=source))
    assert len(logged) == 200
    assert set(logged.values()) == {1}


# Alone under pytest -n 2: the kill must land while the step's 250 applies are under way, a window
# of about a second that a busier machine lets the test process miss.
@pytest.mark.exclusive
def test_a_worker_killed_during_a_rollout_step_then_the_rollout_finishes_logging_each_change_once(
    repo, make_namespaces, make_source, start_worker, celery_worker, cluster, people
):
    from gitops.models import Rollout
    from gitops.rollout import decisions
    from gitops.tasks import sync_source

    canary, rest = make_namespaces("canary", "rest")
    repo.write("sluice.yaml", policy([canary, rest]))
    many_configmaps(repo, 250)
    repo.commit("v1")
    source = make_source()
    queue = f"crash-step-{source.pk}"
    start_worker(queues=queue, env_overrides=TAKES_OVER_SOONER)
    assert sync_source.apply_async((source.pk,), queue=queue).get(timeout=180)["outcome"] == "applied"

    repo.write("sluice.yaml", policy([canary, rest], rollout={"steps": [{"setWeight": 50}, {"pause": {}}]}))
    for index in range(250):
        repo.write(
            f"configmaps/cm-{index:04d}.yaml", configmap(f"cm-{index:04d}", {"index": str(index), "v": "2"})
        )
    v2 = repo.commit("v2")
    doomed = start_worker(concurrency=1, queues=queue, env_overrides={"SLUICE_APPLY_CONCURRENCY": "1"})

    def updated_in_canary() -> int:
        return sum(1 for cm in cluster.list_configmaps(canary) if cm.get("data", {}).get("v") == "2")

    sync_source.apply_async((source.pk,), queue=queue)
    poll(lambda: updated_in_canary() >= 20, timeout=60, interval=0.02, what="the canary step to be under way")
    doomed.kill()
    assert 0 < updated_in_canary() < 250, "the kill must land inside the step"

    start_worker(queues=queue, env_overrides=TAKES_OVER_SOONER)
    result = sync_source.apply_async((source.pk,), queue=queue).get(timeout=180)
    assert result["rollout"]["phase"] == "Paused"
    assert updated_in_canary() == 250
    assert not any(cm.get("data", {}).get("v") == "2" for cm in cluster.list_configmaps(rest))

    rollout = Rollout.objects.get(source=source, revision__commit=v2)
    decisions.rollout_promote(rollout.pk, user=people["approver"])
    poll(
        lambda: Rollout.objects.get(pk=rollout.pk).phase == "Completed",
        timeout=120,
        what="the rollout to finish",
    )

    logged = Counter((c.namespace, c.name) for c in Change.objects.filter(source=source, commit=v2))
    assert len(logged) == 500
    assert set(logged.values()) == {1}, "each change of the rollout is logged exactly once"
    steps = Counter((c.namespace, c.step_index, c.weight, c.actor) for c in Change.objects.filter(commit=v2))
    assert steps == {(canary, 0, 50, "sluice"): 250, (rest, 2, 100, "otto"): 250}


def test_a_worker_given_sigterm_mid_step_finishes_what_it_applies_and_records_it(
    repo, make_namespaces, make_source, start_worker, cluster
):
    import signal

    from gitops.tasks import sync_source

    first_ns, second_ns = make_namespaces("a", "b")
    repo.write("sluice.yaml", policy([first_ns, second_ns]))
    many_configmaps(repo, 150)
    commit = repo.commit("300 objects")
    source = make_source()
    queue = f"term-{source.pk}"
    stopping = start_worker(concurrency=1, queues=queue, env_overrides={"SLUICE_APPLY_CONCURRENCY": "1"})
    sync_source.apply_async((source.pk,), queue=queue)
    poll(
        lambda: len(cluster.list_configmaps(first_ns)) + len(cluster.list_configmaps(second_ns)) >= 20,
        timeout=60,
        interval=0.02,
        what="the apply to be under way",
    )

    # Warm shutdown: the running reconcile is finished before the worker exits.
    stopping.process.send_signal(signal.SIGTERM)
    assert stopping.process.wait(timeout=120) == 0

    assert len(cluster.list_configmaps(first_ns)) + len(cluster.list_configmaps(second_ns)) == 300
    assert not ApplyIntent.objects.filter(source=source, status="pending").exists(), (
        "nothing is half-recorded"
    )
    logged = Counter((c.namespace, c.name) for c in Change.objects.filter(source=source, commit=commit))
    assert len(logged) == 300
    assert set(logged.values()) == {1}

    start_worker(queues=queue, env_overrides=TAKES_OVER_SOONER)
    assert sync_source.apply_async((source.pk,), queue=queue).get(timeout=120)["outcome"] == "unchanged"


def test_a_promote_to_100_percent_while_a_step_runs_is_not_stepped_past_by_the_worker(
    paused_rollout, people, sync, cluster
):
    """The worker is mid-step (``setWeight 50``, Progressing) when an approver promotes to 100%: the
    promote rewrites the steps to end at 100% from this step, and the worker's move to the next
    step, read before the promote, must fail rather than land past the end and complete at 50%."""
    from gitops.models import Rollout
    from gitops.rollout import decisions
    from gitops.rollout.state import transition
    from tests.rollouts import wait_for

    Rollout.objects.filter(pk=paused_rollout.pk).update(phase="Progressing", waiting_for="", step_index=0)
    running = Rollout.objects.get(pk=paused_rollout.pk)  # what the worker read before its step

    with transaction.atomic():  # the promote's pass is queued on commit: the stack's worker waits for it
        decisions.rollout_promote(running.pk, user=people["approver"], full=True)
        moved = transition(running, weight=50, step_index=1)

        assert not moved, "the worker stepped past a promote's rewritten steps"
        promoted = Rollout.objects.get(pk=running.pk)
        assert (promoted.step_index, promoted.steps) == (0, [{"setWeight": 100}])
    # The promote's own pass takes it to 100% everywhere.
    done = wait_for(paused_rollout.source, phase="Completed")
    assert done.weight == 100
    namespaces = sorted({intent.namespace for intent in done.intents.all()})
    assert [cluster.get_configmap(ns, "app")["data"]["V"] for ns in namespaces] == ["2"] * len(namespaces)


def test_a_worker_killed_mid_rollback_leaves_a_rollback_the_next_pass_finishes(
    repo, make_namespaces, make_source, start_worker, sync, cluster, analysis_endpoint
):
    """Sluice's own decision to roll back (a failed analysis) is saved before anything is restored. It
    lived only in the worker's memory: a worker killed mid-restore left an active rollout that the next
    pass drove on, and a flaky check that now passed took it to the next step."""
    from gitops.models import Rollout
    from gitops.tasks import sync_source

    canary, rest = make_namespaces("canary", "rest")
    check = {"analysis": {"http": {"url": analysis_endpoint.url}, "failureLimit": 1}}
    steps = [{"setWeight": 50}, check, {"pause": {}}]
    repo.write_all(
        {"sluice.yaml": policy([canary, rest]), "configmaps/app.yaml": configmap("app", {"V": "1"})}
    )
    repo.commit("v1")
    source = make_source(analysis_url_prefixes=[analysis_endpoint.url])
    assert sync(source)["outcome"] == "applied"
    rollout_policy = policy([canary, rest], rollout={"steps": steps})
    repo.write_all({"sluice.yaml": rollout_policy, "configmaps/app.yaml": configmap("app", {"V": "2"})})
    v2 = repo.commit("v2")

    def version(namespace: str) -> str | None:
        return (cluster.get_configmap(namespace, "app") or {}).get("data", {}).get("V")

    analysis_endpoint.status = 503
    queue = f"crash-rollback-{source.pk}"
    doomed = start_worker(
        concurrency=1, queues=queue, env_overrides={"SLUICE_FAILPOINTS": "mid-rollback=300"}
    )
    sync_source.apply_async((source.pk,), queue=queue)
    decided = poll(
        lambda: (
            Rollout.objects.filter(source=source, revision__commit=v2).exclude(abort_requested_by="").first()
        ),
        timeout=90,
        what="the failed analysis's rollback to be decided",
    )
    assert decided.is_active and (decided.abort_requested_by, decided.rollback_phase) == ("sluice", "Aborted")
    assert decided.abort_reason.startswith("analysis failed: HTTP 503")
    doomed.kill()
    assert (version(canary), version(rest)) == ("2", "1"), "killed before anything was restored"

    analysis_endpoint.status = 200  # the check is flaky: it would pass now
    result = sync(source)

    assert result["outcome"] == "aborted"
    ended = Rollout.objects.get(pk=decided.pk)
    assert ended.phase == "Aborted" and ended.message.startswith("analysis failed: HTTP 503")
    assert (version(canary), version(rest)) == ("1", "1")
    assert sync(source)["outcome"] == "aborted", "nothing drives the ended rollout on"
    assert (version(canary), version(rest)) == ("1", "1")
