"""Each real part of the stack does real work: kube-apiserver, kube-controller-manager, kube-scheduler,
kwok's simulated nodes, the member clusters, a Celery worker, PostgreSQL."""

import os
import subprocess
import uuid

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from gitops.cluster import FieldConflictError
from tests.workers import poll
from tests.workloads import rollout_state, set_unschedulable, simulated_nodes, wait_for_failure


def configmap(namespace: str, name: str, data: dict[str, str]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }


def test_server_side_apply_records_our_field_manager(cluster, namespace):
    applied = cluster.apply_configmap(
        configmap(namespace, "app", {"LOG_LEVEL": "info"}), field_manager="sluice"
    )

    live = cluster.get_configmap(namespace, "app")
    assert live["data"] == {"LOG_LEVEL": "info"}
    managers = {(entry["manager"], entry["operation"]) for entry in live["metadata"]["managedFields"]}
    assert ("sluice", "Apply") in managers
    owned = next(e for e in live["metadata"]["managedFields"] if e["manager"] == "sluice")
    assert "f:LOG_LEVEL" in owned["fieldsV1"]["f:data"]

    again = cluster.apply_configmap(
        configmap(namespace, "app", {"LOG_LEVEL": "info"}), field_manager="sluice"
    )
    assert again["metadata"]["resourceVersion"] == applied["metadata"]["resourceVersion"], (
        "applying identical content must not write"
    )
    assert [item["metadata"]["name"] for item in cluster.list_configmaps(namespace)] == ["app"]


def test_server_side_apply_reports_a_field_owned_by_another_manager(cluster, namespace):
    cluster.apply_configmap(configmap(namespace, "shared", {"owner": "sluice"}), field_manager="sluice")
    with pytest.raises(FieldConflictError, match="conflict"):
        cluster.apply_configmap(configmap(namespace, "shared", {"owner": "someone"}), field_manager="kubectl")

    cluster.apply_configmap(
        configmap(namespace, "shared", {"owner": "someone"}), field_manager="kubectl", force=True
    )
    assert cluster.get_configmap(namespace, "shared")["data"] == {"owner": "someone"}


def test_a_task_round_trips_through_a_real_worker(celery_worker):
    from gitops.tasks import ping

    result = ping.delay("hello").get(timeout=30)

    assert result["payload"] == "hello"
    assert result["pid"] != os.getpid()
    assert celery_worker.process.poll() is None


@pytest.mark.django_db
def test_migrations_are_applied_on_postgresql():
    assert connection.vendor == "postgresql"
    executor = MigrationExecutor(connection)
    assert executor.migration_plan(executor.loader.graph.leaf_nodes()) == []
    applied = executor.loader.applied_migrations
    assert ("auth", "0001_initial") in applied
    with connection.cursor() as cursor:
        cursor.execute("SELECT version()")
        assert cursor.fetchone()[0].startswith("PostgreSQL")


def test_kubectl_built_from_the_same_module_graph_lists_namespaces(stack):
    listed = subprocess.run(
        ["kubectl", "get", "namespaces", "-o", "name"],
        env={**os.environ, **stack},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert {"namespace/default", "namespace/kube-system"} <= set(listed.stdout.split())
    version = subprocess.run(
        ["kubectl", "version", "-o", "json"],
        env={**os.environ, **stack},
        capture_output=True,
        text=True,
        check=True,
    )
    assert '"gitVersion": "v1.36.3"' in version.stdout


# -- the default cluster schedules and "runs" pods on simulated nodes -----------------------


def test_a_deployment_rolls_out_on_simulated_nodes_placed_by_the_real_scheduler(
    namespace, deploy_consumer, core_api
):
    deployment = deploy_consumer(namespace, "web", replicas=2)

    assert deployment.status.available_replicas == 2
    pods = core_api.list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 2
    nodes = {node.metadata.name for node in simulated_nodes(core_api)}
    for pod in pods:
        assert pod.status.phase == "Running"
        assert pod.spec.node_name in nodes
        conditions = {c.type: c.status for c in pod.status.conditions}
        assert conditions["PodScheduled"] == conditions["Ready"] == "True"
        # The ServiceAccount admission plugin and the serviceaccount controller are both at work.
        assert pod.spec.service_account_name == "default"


def test_with_every_node_cordoned_new_pods_stay_pending_until_the_progress_deadline(
    namespace, cordoned_nodes, deploy_consumer, apps_api, core_api
):
    deploy_consumer(namespace, "stuck", replicas=1, progress_deadline_seconds=5, wait=False)

    state = wait_for_failure(apps_api, namespace, "stuck", timeout=60)

    assert state.failure == "ProgressDeadlineExceeded"
    assert not state.complete
    (pod,) = core_api.list_namespaced_pod(namespace, label_selector="app=stuck").items
    assert pod.status.phase == "Pending"
    scheduled = next(c for c in pod.status.conditions if c.type == "PodScheduled")
    assert (scheduled.status, scheduled.reason) == ("False", "Unschedulable")
    assert f"{len(cordoned_nodes)} node(s) were unschedulable" in scheduled.message

    # Uncordoned, the scheduler places the waiting pod and the rollout completes after all.
    set_unschedulable(core_api, False)

    def recovered() -> bool:
        state = rollout_state(apps_api.read_namespaced_deployment("stuck", namespace))
        return state.complete and state.failure is None

    poll(recovered, timeout=60, interval=0.2, what="the deployment to recover once the nodes are uncordoned")


def test_a_deleted_namespace_is_emptied_and_goes_away(cluster, namespace, core_api):
    cluster.apply_configmap(configmap(namespace, "app", {"K": "v"}), field_manager="sluice")

    core_api.delete_namespace(namespace)

    poll(
        lambda: not cluster.namespace_exists(namespace),
        timeout=60,
        interval=0.2,
        what=f"the namespace controller to delete {namespace}",
    )


# -- member clusters -----------------------------------------------------------------------


def test_member_clusters_are_separate_clusters(cluster_for, member_kubeconfig_contexts, kube_client):
    contexts = ["local", *member_kubeconfig_contexts]
    assert member_kubeconfig_contexts == ["member-1", "member-2"]
    assert len({cluster_for(context).server for context in contexts}) == 3
    name = f"t-{uuid.uuid4().hex[:10]}"

    for owner in member_kubeconfig_contexts:
        namespace = f"{name}-{owner}"
        cluster_for(owner).create_namespace(namespace)
        cluster_for(owner).apply_configmap(
            configmap(namespace, "app", {"CLUSTER": owner}), field_manager="sluice"
        )

        for context in contexts:
            held = cluster_for(context).get_configmap(namespace, "app")
            if context == owner:
                assert held["data"] == {"CLUSTER": owner}
            else:
                assert held is None, f"{owner}'s ConfigMap is visible in {context}"
                assert not cluster_for(context).namespace_exists(namespace)

    # Each member has its own controllers: its namespaces get a ServiceAccount, a long-lived
    # token Secret is filled in, and a namespace can be deleted.
    from kubernetes import client

    member = client.CoreV1Api(kube_client("member-1"))
    namespace = f"{name}-member-1"
    poll(
        lambda: member.list_namespaced_service_account(namespace).items,
        timeout=30,
        what="the default ServiceAccount in member-1",
    )
    member.create_namespaced_secret(
        namespace,
        {
            "metadata": {
                "name": "default-token",
                "annotations": {"kubernetes.io/service-account.name": "default"},
            },
            "type": "kubernetes.io/service-account-token",
        },
    )
    poll(
        lambda: (member.read_namespaced_secret("default-token", namespace).data or {}).get("token"),
        timeout=30,
        what="member-1's token controller to fill in a token Secret",
    )
    member.delete_namespace(namespace)
    poll(
        lambda: not cluster_for("member-1").namespace_exists(namespace),
        timeout=60,
        interval=0.2,
        what="member-1 to delete a namespace",
    )
