"""Each real part of the stack does real work: kube-apiserver, a Celery worker, PostgreSQL."""

import os
import subprocess

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from gitops.cluster import FieldConflictError


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
