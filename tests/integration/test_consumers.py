"""A ConfigMap canary that changes running software (issue 12), on the real control plane.

kube-scheduler and kube-controller-manager run on the default cluster and kwok
simulates its nodes, so a restarted Deployment really gets a new ReplicaSet
whose pods are scheduled and become Ready, or stay Pending when no node takes them.
"""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from gitops.models import Change, Rollout, Source
from gitops.rollout import decisions
from tests.gitrepo import configmap, policy
from tests.rollouts import rollout_of, wait_for
from tests.workers import poll
from tests.workloads import IMAGE, set_unschedulable, wait_for_rollout

pytestmark = pytest.mark.django_db(transaction=True)

CONFIG_HASH = "sluice.dev/config-hash"


def container(**reads) -> dict:
    return {"name": "app", "image": IMAGE, **reads}


# One consumer per kind of reference, one that reads something else, and one that must not be restarted.
POD_SPECS = {
    "by-env": {
        "containers": [
            container(env=[{"name": "V", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "V"}}}])
        ]
    },
    "by-envfrom": {"containers": [container(envFrom=[{"configMapRef": {"name": "app"}}])]},
    "by-volume": {
        "containers": [container()],
        "volumes": [{"name": "config", "configMap": {"name": "app"}}],
    },
    "by-projected": {
        "containers": [container()],
        "volumes": [{"name": "config", "projected": {"sources": [{"configMap": {"name": "app"}}]}}],
    },
    "by-init": {
        "initContainers": [{"name": "init", "image": IMAGE, "envFrom": [{"configMapRef": {"name": "app"}}]}],
        "containers": [container()],
    },
    "unrelated": {"containers": [container(envFrom=[{"configMapRef": {"name": "other"}}])]},
}


def deployment(name: str, pod_spec: dict, *, replicas: int = 1, annotations=None, deadline=None) -> dict:
    spec = {
        "replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {**pod_spec, "terminationGracePeriodSeconds": 0},
        },
    }
    if deadline is not None:
        spec["progressDeadlineSeconds"] = deadline
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": spec,
    }


def diff(source) -> str:
    out = io.StringIO()
    call_command("gitops", "diff", source.name, stdout=out)
    return out.getvalue()


def generations(apps_api, namespace: str) -> dict[str, int]:
    return {
        d.metadata.name: d.metadata.generation for d in apps_api.list_namespaced_deployment(namespace).items
    }


def start(repo, make_source, sync, targets, *, consumers="restart", steps=None, **extra) -> object:
    """v1 of app and other, applied everywhere in one step (nothing consumes them yet)."""
    rollout = {"consumers": consumers, "healthTimeout": "2m"}
    repo.write_all(
        {
            "sluice.yaml": policy(targets, rollout=rollout),
            "configmaps/app.yaml": configmap("app", {"V": "1"}),
            "configmaps/other.yaml": configmap("other", {"X": "1"}),
        }
    )
    repo.commit("v1")
    source = make_source(**extra)
    assert sync(source)["outcome"] == "applied"
    repo.write_all(
        {
            "sluice.yaml": policy(
                targets, rollout={**rollout, "steps": steps or [{"setWeight": 33}, {"pause": {}}]}
            ),
            "configmaps/app.yaml": configmap("app", {"V": "2"}),
        }
    )
    return source


def test_restart_goes_wave_by_wave_through_every_kind_of_reference(
    repo, make_namespaces, make_source, sync, apps_api, people
):
    targets = make_namespaces("a", "b", "c")
    source = start(repo, make_source, sync, targets)
    for namespace in targets:
        for name, pod_spec in POD_SPECS.items():
            apps_api.create_namespaced_deployment(namespace, deployment(name, pod_spec))
        apps_api.create_namespaced_deployment(
            namespace,
            deployment("pinned", POD_SPECS["by-envfrom"], annotations={"sluice.dev/restart": "false"}),
        )
        for name in [*POD_SPECS, "pinned"]:
            wait_for_rollout(apps_api, namespace, name)
    repo.commit("v2")
    first, rest = targets[0], targets[1:]
    planned = diff(source)
    for namespace in targets:
        for name in POD_SPECS:
            if name != "unrelated":
                assert f"  restart deployment {namespace}/{name}  (reads app)" in planned
        assert f" wait for deployment {namespace}/pinned  (reads app)" in planned
    assert "unrelated" not in planned

    result = sync(source, timeout=180)

    assert result["outcome"] == "paused", result
    restarted = {name: 2 for name in POD_SPECS if name != "unrelated"}
    assert generations(apps_api, first) == {**restarted, "unrelated": 1, "pinned": 1}
    for namespace in rest:
        assert set(generations(apps_api, namespace).values()) == {1}, "later waves keep their pods"
    for name in [*POD_SPECS, "pinned"]:
        wait_for_rollout(apps_api, first, name, timeout=5)  # the gate opened on available workloads
    # A pass's consumer gate may have run out of its slice: the worker's next one opens it.
    paused = wait_for(source, phase="Paused", waiting_for="approval", timeout=120)
    assert paused.weight == 33
    assert {s["name"] for s in paused.consumer_states} == set(restarted) | {"pinned"}
    assert all(s["health"] == "healthy" for s in paused.consumer_states)
    restarts = Change.objects.filter(source=source, action="restart")
    assert sorted((c.kind, c.namespace, c.name) for c in restarts) == [
        ("Deployment", first, name) for name in sorted(restarted)
    ]
    assert all(c.commit == paused.revision.commit and c.step_index == 0 and c.weight == 33 for c in restarts)
    assert all(c.before_hash == "" and c.after_hash for c in restarts)

    consumer_map = Source.objects.get(pk=source.pk).consumer_map
    assert consumer_map[f"{first}/Deployment/by-init"] == ["app"]
    assert consumer_map[f"{first}/Deployment/unrelated"] == ["other"]

    decisions.rollout_promote(paused.pk, user=people["approver"])
    wait_for(source, phase="Completed", timeout=180)
    for namespace in rest:
        assert generations(apps_api, namespace) == {**restarted, "unrelated": 1, "pinned": 1}
    # The same content never restarts twice.
    assert sync(source)["outcome"] in ("unchanged", "completed")
    assert generations(apps_api, first) == {**restarted, "unrelated": 1, "pinned": 1}


def test_a_workload_that_names_what_it_reads_is_restarted_and_gated_as_one_that_mounts_it(
    repo, make_namespaces, make_source, sync, apps_api
):
    """An application that reads its ConfigMap through the API shows no reference in its pod template:
    it names it in sluice.dev/consumes, or in Reloader's configmap.reloader.stakater.com/reload. Before,
    a change of it restarted and gated nothing."""
    (namespace,) = make_namespaces("a")
    source = start(repo, make_source, sync, [namespace], steps=[{"setWeight": 100}])
    annotated = {
        "declares": {"sluice.dev/consumes": "app"},
        "reloader": {"configmap.reloader.stakater.com/reload": "other, app"},
        "elsewhere": {"sluice.dev/consumes": "not-app,App Config"},
    }
    for name, names_read in annotated.items():
        apps_api.create_namespaced_deployment(
            namespace, deployment(name, POD_SPECS["unrelated"], annotations=names_read)
        )
        wait_for_rollout(apps_api, namespace, name)
    repo.commit("v2")
    planned = diff(source)
    assert f"  restart deployment {namespace}/declares  (reads app)" in planned
    assert f"  restart deployment {namespace}/reloader  (reads app)" in planned
    assert "elsewhere" not in planned

    sync(source, timeout=180)

    done = wait_for(source, phase="Completed", timeout=180)
    assert generations(apps_api, namespace) == {"declares": 2, "reloader": 2, "elsewhere": 1}
    assert {state["name"] for state in done.consumer_states} == {"declares", "reloader"}
    consumer_map = Source.objects.get(pk=source.pk).consumer_map
    assert consumer_map[f"{namespace}/Deployment/reloader"] == ["app", "other"]


def test_a_stamp_sluice_did_not_write_is_recorded_and_restored_exactly_on_abort(
    repo, make_namespaces, make_source, sync, apps_api, people
):
    """A pod template's stamp is the cluster's text: anybody may have written it. A long one once
    overflowed the restart intent's columns, and U+0000 its jsonb, so the step failed every pass."""
    (namespace,) = make_namespaces("a")
    source = start(repo, make_source, sync, [namespace], steps=[{"setWeight": 100}, {"pause": {}}])
    forged = {CONFIG_HASH: "h\u0000" * 50, "sluice.dev/commit": "not a commit " * 10}
    web = deployment("web", POD_SPECS["by-envfrom"])
    web["spec"]["template"]["metadata"]["annotations"] = forged
    apps_api.create_namespaced_deployment(namespace, web)
    wait_for_rollout(apps_api, namespace, "web")
    repo.commit("v2")

    result = sync(source, timeout=180)

    assert result["outcome"] == "paused", result
    paused = rollout_of(source)
    restart = Change.objects.get(source=source, action="restart")
    assert (restart.before_hash, len(restart.after_hash)) == ("", 32)
    assert restart.before == {"configHash": "h\ufffd" * 50, "commit": "not a commit " * 10}
    assert restart.commit == paused.revision.commit
    stamped = apps_api.read_namespaced_deployment("web", namespace).spec.template.metadata.annotations
    assert stamped["sluice.dev/commit"] == paused.revision.commit

    decisions.rollout_abort(paused.pk, user=people["approver"])
    wait_for(source, phase="Aborted", timeout=180)
    restored = apps_api.read_namespaced_deployment("web", namespace).spec.template.metadata.annotations
    # As recorded: the text exactly, but U+0000, which no record can keep, as U+FFFD.
    assert {key: restored.get(key) for key in forged} == {
        CONFIG_HASH: "h\ufffd" * 50,
        "sluice.dev/commit": "not a commit " * 10,
    }
    rollback = Change.objects.get(source=source, kind="Deployment", action="rollback")
    assert (rollback.commit, rollback.after_hash) == (paused.revision.commit, "")


def test_watch_gates_a_step_on_health_without_restarting(
    repo, make_namespaces, make_source, sync, apps_api, core_api, cordoned_nodes
):
    targets = make_namespaces("a", "b")
    source = start(repo, make_source, sync, targets, consumers="watch", steps=[{"setWeight": 50}])
    # A consumer still rolling out (no node takes its pod) holds the step.
    apps_api.create_namespaced_deployment(targets[0], deployment("web", POD_SPECS["by-envfrom"]))
    repo.commit("v2")
    from gitops.tasks import sync_source

    pending = sync_source.delay(source.pk)
    waiting = wait_for(source, phase="Paused", waiting_for="consumers", timeout=60)
    assert waiting.consumer_states[0]["name"] == "web"
    set_unschedulable(core_api, False)
    wait_for_rollout(apps_api, targets[0], "web")
    wait_for(source, phase="Completed", timeout=90)
    pending.get(timeout=60)
    assert generations(apps_api, targets[0]) == {"web": 1}, "watch never restarts"
    assert not Change.objects.filter(source=source, action="restart").exists()


@pytest.mark.exclusive  # cordons the nodes
def test_a_failing_wave_rolls_back_configmaps_and_stamps_and_retry_succeeds(
    repo, make_namespaces, make_source, sync, apps_api, core_api, cluster, people
):
    targets = make_namespaces("a", "b")
    source = start(repo, make_source, sync, targets, steps=[{"setWeight": 50}])
    apps_api.create_namespaced_deployment(targets[0], deployment("web", POD_SPECS["by-envfrom"], deadline=5))
    wait_for_rollout(apps_api, targets[0], "web")
    repo.commit("v2")
    set_unschedulable(core_api, True)
    try:
        result = sync(source, timeout=180)
    finally:
        set_unschedulable(core_api, False)

    assert result["outcome"] == "failed", result
    failed = rollout_of(source)
    assert failed.phase == "Failed"
    assert "ProgressDeadlineExceeded" in failed.message
    assert cluster.get_configmap(targets[0], "app")["data"] == {"V": "1"}, "the ConfigMap is restored"
    web = apps_api.read_namespaced_deployment("web", targets[0])
    assert CONFIG_HASH not in (web.spec.template.metadata.annotations or {}), "the stamp is taken back"
    wait_for_rollout(apps_api, targets[0], "web", after_a_missed_deadline=True)
    actions = list(
        Change.objects.filter(source=source, kind="Deployment")
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == ["restart", "rollback"]

    retried = decisions.rollout_retry(failed.pk, user=people["approver"])
    wait_for(source, phase="Completed", timeout=180)
    assert Rollout.objects.get(pk=retried.pk).phase == "Completed"
    assert cluster.get_configmap(targets[0], "app")["data"] == {"V": "2"}
    wait_for_rollout(apps_api, targets[0], "web")
    assert apps_api.read_namespaced_deployment("web", targets[0]).spec.template.metadata.annotations[
        CONFIG_HASH
    ]


def test_a_worker_killed_between_a_configmap_and_its_restart_restarts_exactly_once(
    repo, make_namespaces, make_source, apps_api, cluster, start_worker, celery_worker
):
    from gitops.tasks import sync_source

    targets = make_namespaces("a")
    source = start(
        repo,
        make_source,
        lambda s: sync_source.delay(s.pk).get(timeout=120),
        targets,
        steps=[{"setWeight": 100}],
    )
    apps_api.create_namespaced_deployment(targets[0], deployment("web", POD_SPECS["by-envfrom"]))
    wait_for_rollout(apps_api, targets[0], "web")
    repo.commit("v2")
    held = start_worker(queues="held", env_overrides={"SLUICE_FAILPOINTS": "before-restart=60"})
    sync_source.apply_async((source.pk,), queue="held")
    poll(
        lambda: (cluster.get_configmap(targets[0], "app") or {}).get("data") == {"V": "2"},
        timeout=60,
        what="v2 applied",
    )
    assert generations(apps_api, targets[0]) == {"web": 1}, "held before the restart"
    held.kill()

    sync_source.delay(source.pk).get(timeout=120)

    wait_for(source, phase="Completed", timeout=120)
    assert generations(apps_api, targets[0]) == {"web": 2}, "restarted exactly once"
    assert Change.objects.filter(source=source, action="restart").count() == 1
    wait_for_rollout(apps_api, targets[0], "web")


def test_a_change_of_a_configmaps_labels_alone_restarts_nobody(
    repo, make_namespaces, make_source, sync, apps_api
):
    """Pods read a ConfigMap's data and binaryData (env, envFrom, volumes), never its labels or
    annotations: a commit that changes only those restarts none of its consumers, and `gitops diff`
    says so. Before, every workload reading it was restarted. A change of its data afterwards still
    restarts them."""
    (target,) = make_namespaces("a")
    source = start(repo, make_source, sync, [target], steps=[{"setWeight": 100}])
    repo.commit("v2")
    apps_api.create_namespaced_deployment(target, deployment("web", POD_SPECS["by-envfrom"]))
    wait_for_rollout(apps_api, target, "web")
    assert sync(source)["outcome"] == "applied"
    assert generations(apps_api, target) == {"web": 2}, "v2's data: restarted"

    labelled = configmap("app", {"V": "2"})
    labelled["metadata"]["labels"] = {"team": "payments"}
    repo.write("configmaps/app.yaml", labelled)
    repo.commit("a label")
    assert f"restart deployment {target}/web" not in diff(source)
    assert sync(source)["outcome"] == "applied"
    assert generations(apps_api, target) == {"web": 2}, "a label alone: not restarted"

    repo.write("configmaps/app.yaml", {**labelled, "data": {"V": "3"}})
    repo.commit("v3")
    assert f"  restart deployment {target}/web  (reads app)" in diff(source)
    assert sync(source)["outcome"] == "applied"
    assert generations(apps_api, target) == {"web": 3}, "data again: restarted"


def test_a_workload_keeps_its_restart_when_the_cluster_refuses_to_restore_what_it_reads(
    repo, make_namespaces, make_source, sync, apps_api, core_api, cluster, kube_client, people
):
    """An abort whose ConfigMap restore the cluster refuses (its own admission policy) leaves the new
    content in place: the consumer restarted onto it keeps its stamp. Before, its stamp was put back
    all the same, and it restarted once more, onto that same new content."""

    from tests.admission import updates_denied

    (namespace,) = make_namespaces("a")
    source = start(repo, make_source, sync, [namespace], steps=[{"setWeight": 100}, {"pause": {}}])
    apps_api.create_namespaced_deployment(namespace, deployment("web", POD_SPECS["by-envfrom"]))
    wait_for_rollout(apps_api, namespace, "web")
    repo.commit("v2")
    assert sync(source, timeout=180)["outcome"] == "paused"
    paused = wait_for(source, phase="Paused", waiting_for="approval", timeout=120)
    assert generations(apps_api, namespace) == {"web": 2}, "restarted onto v2"

    restore_denied = refused_in_dry_run(core_api, namespace, "app", {"V": "1"})
    expression = "!has(object.data) || !('V' in object.data) || object.data.V != '1'"
    with updates_denied(
        kube_client(), namespace, expression=expression, message="V 1 is retired here", denied=restore_denied
    ):
        decisions.rollout_abort(paused.pk, user=people["approver"])
        failed = wait_for(source, phase="Failed", timeout=120)

    assert "V 1 is retired here" in failed.message
    assert cluster.get_configmap(namespace, "app")["data"] == {"V": "2"}, "the restore was refused"
    assert generations(apps_api, namespace) == {"web": 2}, "not restarted again onto the same content"
    stamped = apps_api.read_namespaced_deployment("web", namespace).spec.template.metadata.annotations
    assert stamped["sluice.dev/commit"] == paused.revision.commit
    assert not Change.objects.filter(source=source, kind="Deployment", action="rollback").exists()


def refused_in_dry_run(core_api, namespace: str, name: str, data: dict[str, str]):
    """Whether the cluster's admission policy refuses this write yet: a dry run of it."""
    from kubernetes.client.exceptions import ApiException

    def refused() -> bool:
        try:
            core_api.patch_namespaced_config_map(name, namespace, {"data": data}, dry_run="All")
        except ApiException:
            return True
        return False

    return refused


def test_a_step_the_cluster_refused_in_part_restarts_nobody_before_it_rolls_back(
    repo, make_namespaces, make_source, sync, apps_api, core_api, kube_client
):
    """One write of the step is refused (the cluster's admission policy), another went out and a
    Deployment reads it: the step rolls back whole. Before, its consumers were restarted onto the new
    content first, then restarted back: two rolling restarts for a step that never stood."""

    from tests.admission import updates_denied

    (namespace,) = make_namespaces("a")
    source = start(repo, make_source, sync, [namespace], steps=[{"setWeight": 100}, {"pause": {}}])
    repo.write("configmaps/other.yaml", configmap("other", {"X": "2"}))
    apps_api.create_namespaced_deployment(namespace, deployment("web", POD_SPECS["by-envfrom"]))
    wait_for_rollout(apps_api, namespace, "web")
    repo.commit("v2")

    denied = refused_in_dry_run(core_api, namespace, "other", {"X": "2"})
    expression = "!has(object.data) || !('X' in object.data) || object.data.X != '2'"
    with updates_denied(
        kube_client(), namespace, expression=expression, message="X 2 refused", denied=denied
    ):
        result = sync(source, timeout=180)

    assert result["outcome"] == "failed", result
    assert rollout_of(source).phase == "Failed"
    assert generations(apps_api, namespace) == {"web": 1}, "a step that rolls back restarts nobody"
    assert not Change.objects.filter(source=source, kind="Deployment").exists()


def web_reading_app_then_v2(repo, make_namespaces, make_source, apps_api) -> tuple[str, object]:
    """v1 applied by a worker, then a Deployment that reads app, then v2 committed (one 100% step and an
    approval gate), not yet synced: the target namespace and the source."""
    from gitops.tasks import sync_source

    (target,) = make_namespaces("a")
    source = start(
        repo,
        make_source,
        lambda s: sync_source.delay(s.pk).get(timeout=120),
        [target],
        steps=[{"setWeight": 100}, {"pause": {}}],
    )
    apps_api.create_namespaced_deployment(target, deployment("web", POD_SPECS["by-envfrom"]))
    wait_for_rollout(apps_api, target, "web")
    repo.commit("v2")
    return target, source


def test_a_pass_resumed_after_a_crash_past_the_restart_counts_the_restart_as_the_steps(
    repo, make_namespaces, make_source, apps_api, cluster, start_worker, celery_worker
):
    """A worker killed once its step restarted the consumer, before the step's gate closed: the next
    pass finds the workload stamped already and restarts nothing, yet the restart is this step's. Before,
    the consumer showed as not restarted, and the timeline said nothing of the restart."""
    from gitops.models import RolloutEvent
    from gitops.tasks import sync_source

    target, source = web_reading_app_then_v2(repo, make_namespaces, make_source, apps_api)
    held = start_worker(queues="held", env_overrides={"SLUICE_FAILPOINTS": "after-restart=60"})
    sync_source.apply_async((source.pk,), queue="held")
    poll(lambda: generations(apps_api, target) == {"web": 2}, timeout=60, what="the restart")
    held.kill()

    sync_source.delay(source.pk).get(timeout=120)

    paused = wait_for(source, phase="Paused", waiting_for="approval", timeout=120)
    assert generations(apps_api, target) == {"web": 2}, "restarted exactly once"
    assert [(s["name"], s["restarted"]) for s in paused.consumer_states] == [("web", True)]
    gate = RolloutEvent.objects.filter(rollout=paused, kind="consumers", message__startswith="waiting")
    waiting = gate.get()
    assert waiting.message == "waiting for 1 consumer to be healthy (1 restarted)"


def test_an_abort_asked_while_a_step_applies_rolls_back_before_any_consumer_restarts(
    repo, make_namespaces, make_source, apps_api, cluster, start_worker, celery_worker, people, tmp_path
):
    """A person aborts while the step's ConfigMaps go out (the worker held between its applies and its
    restarts): the step rolls back there, and its consumer never restarts. Before, the step restarted
    it onto the new content and the next turn rolled back, restarting it again onto the old."""
    from gitops.tasks import sync_source

    target, source = web_reading_app_then_v2(repo, make_namespaces, make_source, apps_api)
    go_on = tmp_path / "go-on"
    start_worker(queues="held", env_overrides={"SLUICE_FAILPOINTS": f"before-restart=until:{go_on}"})
    sync_source.apply_async((source.pk,), queue="held")
    poll(
        lambda: (cluster.get_configmap(target, "app") or {}).get("data") == {"V": "2"},
        timeout=60,
        what="v2 applied",
    )

    decisions.rollout_abort(rollout_of(source).pk, user=people["approver"])
    go_on.touch()

    aborted = wait_for(source, phase="Aborted", timeout=120)
    assert (cluster.get_configmap(target, "app") or {}).get("data") == {"V": "1"}
    assert generations(apps_api, target) == {"web": 1}, "never restarted"
    assert not Change.objects.filter(source=source, kind="Deployment").exists()
    assert aborted.abort_requested_by == people["approver"].username


def test_a_step_moved_by_someone_as_its_gate_closes_is_not_told_as_taken(
    repo, make_namespaces, make_source, apps_api, monkeypatch
):
    """A promote (or an abort) lands while the step restarts its consumers: the gate's compare-and-swap
    fails, nothing is held, and the step's timeline line goes with it. Before, the line was committed
    alone, and the step, taken again at once from the rollout as moved, was told twice."""
    from django.db.models import F

    from gitops import reconcile, schedule
    from gitops.models import RolloutEvent
    from gitops.rollout import lifecycle

    monkeypatch.setattr(schedule, "_send", lambda *args, **kwargs: "")  # every pass runs here
    (target,) = make_namespaces("a")
    source = start(repo, make_source, lambda s: reconcile.source_sync(s.pk).as_dict(), [target])
    apps_api.create_namespaced_deployment(target, deployment("web", POD_SPECS["by-envfrom"]))
    wait_for_rollout(apps_api, target, "web")
    repo.commit("v2")
    real_close = lifecycle.wave_gate_close
    moved: list[int] = []

    def moved_as_it_closes(rollout, *args, **kwargs):
        if not moved:  # a person's move, committed while the step restarted its consumers
            moved.append(Rollout.objects.filter(pk=rollout.pk).update(version=F("version") + 1))
        return real_close(rollout, *args, **kwargs)

    monkeypatch.setattr(lifecycle, "wave_gate_close", moved_as_it_closes)
    reconcile.source_sync(source.pk)  # the loop reads the moved rollout, and takes the step again

    assert moved == [1]
    rollout = rollout_of(source)
    assert (rollout.phase, rollout.waiting_for) == ("Paused", "approval"), "its consumers were healthy"
    assert RolloutEvent.objects.filter(rollout=rollout, kind="step", step_index=0).count() == 1


@pytest.mark.exclusive  # cordons the nodes
def test_a_restart_someone_undid_while_its_step_waits_keeps_the_gate_closed(
    repo, make_namespaces, make_source, sync, apps_api, core_api, people
):
    """An operator (or an Argo CD Replace sync) put the template back without Sluice's stamp: the
    Deployment went back to pods started before the change, and the gate opened on them (before
    2026-12-07)."""
    from gitops.tasks import sync_source

    (namespace,) = make_namespaces("a")
    source = start(repo, make_source, sync, [namespace], steps=[{"setWeight": 100}])
    apps_api.create_namespaced_deployment(namespace, deployment("web", POD_SPECS["by-envfrom"]))
    wait_for_rollout(apps_api, namespace, "web")
    repo.commit("v2")
    set_unschedulable(core_api, True)  # the restarted pods wait: the step is caught at its gate
    try:
        pending = sync_source.delay(source.pk)
        waiting = wait_for(source, phase="Paused", waiting_for="consumers", timeout=60)
        assert waiting.consumer_states[0]["restarted"]
        unstamped = {CONFIG_HASH: None, "sluice.dev/commit": None}
        apps_api.patch_namespaced_deployment(
            "web", namespace, {"spec": {"template": {"metadata": {"annotations": unstamped}}}}
        )
    finally:
        set_unschedulable(core_api, False)
    wait_for_rollout(apps_api, namespace, "web")
    poll(
        lambda: (
            rollout_of(source).consumer_states[0]["detail"]
            == "its restart was undone: it carries the stamp it had before the restart again"
        ),
        timeout=30,
        what="the gate to see the stamp gone",
    )
    assert rollout_of(source).phase == "Paused", "not opened on pods from before the change"
    decisions.rollout_abort(rollout_of(source).pk, user=people["approver"])
    wait_for(source, phase="Aborted", timeout=60)
    pending.get(timeout=60)
