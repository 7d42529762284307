"""Which workloads read a ConfigMap, their restart stamp, and when their rollout is done."""

from dataclasses import replace

import pytest

from gitops.consumers.workloads import (
    CONFIG_HASH_ANNOTATION,
    Health,
    config_hash,
    configmaps_declared,
    configmaps_referenced,
    consumed_hash,
    consumers_of,
    health_of,
    referring_rollouts_read,
    restart_due,
    stamp,
    workload_from,
)


def deployment(pod_spec: dict, *, annotations: dict | None = None, template_annotations: dict | None = None):
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "team-a", "annotations": annotations or {}},
        "spec": {"template": {"metadata": {"annotations": template_annotations or {}}, "spec": pod_spec}},
    }


EVERY_REFERENCE = {
    "initContainers": [{"name": "init", "envFrom": [{"configMapRef": {"name": "from-init"}}]}],
    "containers": [
        {
            "name": "app",
            "env": [
                {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "by-key", "key": "a"}}},
                {"name": "B", "value": "plain"},
                {"name": "C", "valueFrom": {"secretKeyRef": {"name": "a-secret", "key": "c"}}},
            ],
            "envFrom": [{"configMapRef": {"name": "whole"}}, {"secretRef": {"name": "other-secret"}}],
        }
    ],
    "volumes": [
        {"name": "v1", "configMap": {"name": "mounted"}},
        {
            "name": "v2",
            "projected": {"sources": [{"configMap": {"name": "projected"}}, {"secret": {"name": "s"}}]},
        },
        {"name": "v3", "emptyDir": {}},
    ],
}


def test_every_kind_of_reference_counts_and_secrets_do_not():
    assert configmaps_referenced(EVERY_REFERENCE) == {"from-init", "by-key", "whole", "mounted", "projected"}


def test_a_workload_names_what_it_reads_in_its_own_annotation_or_reloaders():
    assert configmaps_declared({"sluice.dev/consumes": " app , flags,,"}) == {"app", "flags"}
    assert configmaps_declared({"configmap.reloader.stakater.com/reload": "app"}) == {"app"}
    both = {"sluice.dev/consumes": "a", "configmap.reloader.stakater.com/reload": "b"}
    assert configmaps_declared(both) == {"a", "b"}
    # Anybody who may edit a workload writes these: what names no ConfigMap is skipped; the list is bounded.
    odd = {
        "sluice.dev/consumes": "App Config,-x,ok.name," + "y" * 254,
        "configmap.reloader.stakater.com/reload": 7,
    }
    assert configmaps_declared(odd) == {"ok.name"}
    many = ",".join(f"cm-{index}" for index in range(1000))
    assert len(configmaps_declared({"sluice.dev/consumes": many})) == 100
    workload = workload_from(deployment({"containers": []}, annotations={"sluice.dev/consumes": "app"}))
    assert workload.consumes == {"app"}
    # Reloader reads its annotation from the pod template when the workload has none; its entries are
    # regular expressions to Reloader, and a pattern is no ConfigMap name here.
    reload = {"configmap.reloader.stakater.com/reload": "flags, app-.*, a..b"}
    assert workload_from(deployment({}, template_annotations=reload)).consumes == {"flags"}
    assert workload_from(deployment({}, template_annotations={"sluice.dev/consumes": "x"})).consumes == set()


def test_odd_specs_do_not_crash_the_reader():
    assert configmaps_referenced({}) == frozenset()
    assert (
        configmaps_referenced({"containers": [{"env": [{"valueFrom": {"configMapKeyRef": {}}}]}]})
        == frozenset()
    )
    assert configmaps_referenced({"volumes": [{"configMap": {"name": 7}}]}) == frozenset()


def test_a_workload_knows_what_it_consumes_its_stamp_and_whether_it_may_be_restarted():
    workload = workload_from(
        deployment(
            EVERY_REFERENCE,
            annotations={"sluice.dev/restart": "false"},
            template_annotations={CONFIG_HASH_ANNOTATION: "abc"},
        )
    )
    assert workload.key == ("Deployment", "team-a", "web")
    assert workload.config_hash == "abc"
    assert workload.restartable is False
    assert workload_from(deployment({})).restartable is True


def test_the_stamp_covers_only_managed_configmaps_and_changes_with_their_content():
    workload = workload_from(deployment(EVERY_REFERENCE))
    before = consumed_hash(workload, {"whole": "h1", "mounted": "h2", "unrelated": "h9"})
    assert before == config_hash({"whole": "h1", "mounted": "h2"})
    assert consumed_hash(workload, {"whole": "h1", "mounted": "h2-new"}) != before
    assert consumed_hash(workload, {"unrelated": "h9"}) == ""


def test_the_stamp_body_holds_two_annotations_and_nothing_else():
    workload = workload_from(deployment(EVERY_REFERENCE))
    body = stamp(workload, config_hash_value="abc", commit="c" * 40)
    assert body == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "team-a"},
        "spec": {
            "template": {
                "metadata": {"annotations": {"sluice.dev/config-hash": "abc", "sluice.dev/commit": "c" * 40}}
            }
        },
    }
    # Stamping back to "never stamped" releases the annotations.
    assert stamp(workload, config_hash_value="", commit="c" * 40)["spec"] == {"template": {"metadata": {}}}


def test_consumers_of_a_set_of_configmaps():
    web = workload_from(deployment({"volumes": [{"configMap": {"name": "app"}}]}))
    other = workload_from({**deployment({"volumes": [{"configMap": {"name": "db"}}]}), "kind": "StatefulSet"})
    assert consumers_of([other, web], ["app"]) == [web]
    assert consumers_of([other, web], ["app", "db"]) == [web, other]


def with_status(obj: dict, *, wanted: int = 3, generation: int = 2, **status) -> dict:
    obj = {**obj, "metadata": {**obj["metadata"], "generation": generation}}
    obj["spec"] = {**obj["spec"], "replicas": wanted}
    obj["status"] = status
    return obj


@pytest.mark.parametrize(
    "status, health, detail",
    [
        (
            {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3},
            "healthy",
            "3/3 available",
        ),
        (
            {"observedGeneration": 1, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3},
            "progressing",
            "updating 0/3",
        ),
        (
            {"observedGeneration": 2, "replicas": 4, "updatedReplicas": 1, "availableReplicas": 3},
            "progressing",
            "updating 1/3",
        ),
        (
            {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 2},
            "progressing",
            "updating 2/3",
        ),
        (
            {
                "observedGeneration": 2,
                "conditions": [
                    {
                        "type": "Progressing",
                        "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "message": "ReplicaSet web-1 has timed out progressing.",
                    }
                ],
            },
            "failed",
            "ProgressDeadlineExceeded: ReplicaSet web-1 has timed out progressing.",
        ),
    ],
)
def test_deployment_health(status, health, detail):
    result = health_of(with_status(deployment({}), **status))
    assert (result.health, result.detail) == (Health(health), detail)


def test_a_missed_deadline_of_an_older_template_is_not_a_failure_of_the_new_one():
    missed = {
        "observedGeneration": 1,
        "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}],
    }
    assert health_of(with_status(deployment({}), generation=2, **missed)).health is Health.PROGRESSING
    assert health_of(with_status(deployment({}), generation=1, **missed)).health is Health.FAILED


def statefulset(**status) -> dict:
    return with_status({**deployment({}), "kind": "StatefulSet"}, **status)


def test_statefulset_health_waits_for_the_update_revision():
    rolling = {"observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 3}
    assert (
        health_of(statefulset(**rolling, currentRevision="r1", updateRevision="r2")).health
        is Health.PROGRESSING
    )
    assert (
        health_of(statefulset(**rolling, currentRevision="r2", updateRevision="r2")).health is Health.HEALTHY
    )
    assert (
        health_of(
            statefulset(observedGeneration=2, readyReplicas=2, currentRevision="r2", updateRevision="r2")
        ).health
        is Health.PROGRESSING
    )


def test_daemonset_health_counts_scheduled_pods():
    daemon = {
        **deployment({}),
        "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": "n", "generation": 3},
    }
    done = {
        "observedGeneration": 3,
        "desiredNumberScheduled": 2,
        "updatedNumberScheduled": 2,
        "numberAvailable": 2,
    }
    assert health_of({**daemon, "status": done}).detail == "2/2 available"
    assert health_of({**daemon, "status": {**done, "numberAvailable": 1}}).health is Health.PROGRESSING


def test_an_on_delete_daemonset_is_healthy_once_its_pods_are_available():
    """Its pods change only when someone deletes them (node agents, CNI): updated pods never come by
    themselves, and a restart's wait ran into its healthTimeout and rolled back. As for a StatefulSet
    with OnDelete, available pods are all that can be asked."""
    daemon = {
        **deployment({}),
        "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": "n", "generation": 3},
        "spec": {"updateStrategy": {"type": "OnDelete"}},
    }
    waiting = {"observedGeneration": 3, "desiredNumberScheduled": 2, "updatedNumberScheduled": 0}
    assert health_of({**daemon, "status": {**waiting, "numberAvailable": 2}}).health is Health.HEALTHY
    assert health_of({**daemon, "status": {**waiting, "numberAvailable": 1}}).health is Health.PROGRESSING


def test_a_paused_deployment_says_it_is_paused():
    paused = with_status(
        deployment({}), observedGeneration=2, replicas=3, updatedReplicas=0, availableReplicas=3
    )
    paused["spec"]["paused"] = True
    result = health_of(paused)
    assert (result.health, result.detail) == (Health.PROGRESSING, "paused (spec.paused): updating 0/3")


def test_a_paused_deployment_whose_pods_all_run_its_template_is_healthy():
    """Paused after its last rollout (one Sluice watches, or a pinned one it does not restart): nothing is
    left to roll, and it was never healthy, so the wave ran into its healthTimeout and rolled back."""
    settled = with_status(
        deployment({}), observedGeneration=2, replicas=3, updatedReplicas=3, availableReplicas=3
    )
    settled["spec"]["paused"] = True
    assert health_of(settled).health is Health.HEALTHY


def test_a_workload_that_reads_no_managed_configmap_any_more_is_not_restarted_and_no_preview_says_so():
    """Its only managed ConfigMap pruned, the stamp it should carry is none: the step left it alone, and
    `gitops diff` said it would restart it. Both ask ``restart_due`` now."""
    stamped = workload_from(
        {
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "n"},
            "spec": {
                "template": {
                    "metadata": {"annotations": {CONFIG_HASH_ANNOTATION: "a" * 16}},
                    "spec": {"containers": [{"envFrom": [{"configMapRef": {"name": "app"}}]}]},
                }
            },
        }
    )
    assert not restart_due(stamped, consumed_hash(stamped, {}))
    assert restart_due(stamped, consumed_hash(stamped, {"app": "b" * 32}))
    assert not restart_due(replace(stamped, restartable=False), consumed_hash(stamped, {"app": "b" * 32}))


def test_a_namespace_sluice_may_not_read_leaves_the_clusters_other_consumers_on_the_map():
    """One namespace forbidden (taken out of scope, its RBAC removed) emptied the whole cluster's part of
    the source page's consumer map."""
    from gitops.cluster import ReadForbidden
    from gitops.consumers.wave import consumer_map

    reader = deployment({"containers": [{"envFrom": [{"configMapRef": {"name": "app"}}]}]})

    class OneNamespaceForbidden:
        name = "default"

        def list_workloads(self, kind, namespace):
            if namespace == "locked":
                raise ReadForbidden(f"{kind} in {namespace} is forbidden")
            found = {**reader, "kind": kind, "metadata": {**reader["metadata"], "namespace": namespace}}
            return ([found] if kind == "Deployment" else []), "1"

    mapped = consumer_map(
        OneNamespaceForbidden(), [("locked", "app"), ("open", "app")], default_cluster="default"
    )

    assert mapped == {f"open/Deployment/{reader['metadata']['name']}": ["app"]}


def rollout(pod_spec: dict | None = None, **status) -> dict:
    """An Argo Rollout with a pod template of its own, at generation 2, with ``status`` as its controller
    reported it (its observedGeneration a string, as Argo writes it)."""
    body = {**deployment(pod_spec or {}), "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout"}
    body["metadata"] = {**body["metadata"], "generation": 2}
    body["spec"] = {**body["spec"], "replicas": 3, "strategy": {"canary": {"steps": [{"setWeight": 50}]}}}
    if status:
        body["status"] = status
    return body


def test_a_rollout_is_a_consumer_stamped_on_its_own_template_in_its_own_api():
    workload = workload_from(rollout(EVERY_REFERENCE))
    assert workload.key == ("Rollout", "team-a", "web")
    assert "mounted" in workload.consumes and workload.restartable
    body = stamp(workload, config_hash_value="abc", commit="c" * 40)
    assert body["apiVersion"] == "argoproj.io/v1alpha1" and body["kind"] == "Rollout"
    assert (
        body["spec"]
        == stamp(workload_from(deployment(EVERY_REFERENCE)), config_hash_value="abc", commit="c" * 40)["spec"]
    )


def test_a_rollout_that_refers_to_a_deployment_is_never_stamped_itself():
    referring = rollout(EVERY_REFERENCE)
    referring["spec"] = {"workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}}
    referring["metadata"]["annotations"] = {"sluice.dev/consumes": "mounted"}
    workload = workload_from(referring)
    assert workload.consumes == frozenset() and workload.restartable is False


@pytest.mark.parametrize(
    ("status", "health", "detail"),
    [
        ({}, "progressing", "updating 0/3"),
        ({"observedGeneration": "1", "phase": "Healthy"}, "progressing", "updating 0/3"),
        ({"observedGeneration": "2"}, "progressing", "waiting for Argo Rollouts to report a phase"),
        (
            {"observedGeneration": "2", "phase": "Progressing", "updatedReplicas": 2, "availableReplicas": 3},
            "progressing",
            "updating 2/3",
        ),
        (
            {"observedGeneration": "2", "phase": "Paused", "message": "CanaryPauseStep"},
            "progressing",
            "paused (Argo Rollouts): CanaryPauseStep",
        ),
        (
            {"observedGeneration": "2", "phase": "Degraded", "message": "RolloutAborted: Rollout aborted"},
            "failed",
            "Degraded: RolloutAborted: Rollout aborted",
        ),
        ({"observedGeneration": "2", "phase": "Progressing", "abort": True}, "failed", "Degraded:"),
        ({"observedGeneration": "2", "phase": "Healthy", "availableReplicas": 3}, "healthy", "3/3 available"),
        # Before Argo Rollouts v0.10 observedGeneration was a hash: taken as observed, as Argo CD does.
        (
            {"observedGeneration": "5c9d8f6b7", "phase": "Healthy", "availableReplicas": 3},
            "healthy",
            "3/3 available",
        ),
    ],
)
def test_rollout_health_follows_the_phase_argo_reports_for_the_newest_generation(status, health, detail):
    result = health_of(rollout(**status))
    assert (result.health, result.detail) == (Health(health), detail)


INVALID = {
    "type": "InvalidSpec",
    "status": "True",
    "reason": "InvalidSpec",
    "message": 'The Rollout "web" is invalid: spec.workloadRef.name: Invalid value: "web": not found',
}


def test_a_rollout_argo_holds_invalid_fails_at_once_even_while_it_refers_to_a_deployment():
    referring = rollout(EVERY_REFERENCE, observedGeneration="2", phase="Degraded", conditions=[INVALID])
    referring["spec"] = {"workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}}
    # Argo takes in no generation of the Deployment while the spec is invalid: without the condition
    # read first, the wave waited for that generation until its healthTimeout.
    result = health_of(referring, referred_generation=3)
    assert result.health is Health.FAILED
    assert result.detail == f"InvalidSpec: {INVALID['message']}"
    own_template = health_of(rollout(EVERY_REFERENCE, observedGeneration="2", conditions=[INVALID]))
    assert own_template.health is Health.FAILED, "whatever phase Argo reported with it"


def test_an_invalid_spec_condition_of_an_older_generation_or_not_true_decides_nothing():
    older = health_of(
        rollout(EVERY_REFERENCE, observedGeneration="1", phase="Degraded", conditions=[INVALID])
    )
    assert (older.health, older.detail) == (Health.PROGRESSING, "updating 0/3"), "the spec was mended since"
    cleared = {**INVALID, "status": "False"}
    healthy = rollout(
        EVERY_REFERENCE, observedGeneration="2", phase="Healthy", availableReplicas=3, conditions=[cleared]
    )
    assert health_of(healthy).health is Health.HEALTHY


def test_a_rollout_that_refers_to_a_deployment_reads_what_the_deployment_reads_and_is_only_waited_for():
    web = workload_from(deployment(EVERY_REFERENCE))
    referring = rollout(EVERY_REFERENCE)
    referring["spec"] = {"workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}}
    canary = replace(workload_from(referring), name="canary")
    elsewhere = replace(canary, name="elsewhere", namespace="team-b")
    read = {w.key: w for w in referring_rollouts_read([elsewhere, canary, web])}
    assert read[("Rollout", "team-a", "canary")].consumes == web.consumes
    assert not read[("Rollout", "team-a", "canary")].restartable
    assert read[("Rollout", "team-b", "elsewhere")].consumes == frozenset(), "another namespace's web"
