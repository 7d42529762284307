"""deploy/kubernetes against the real kube-apiserver (RBAC authorization on).

The rendered manifests must pass a server-side dry run and apply; then, as the
`sluice` ServiceAccount itself (a TokenRequest token, no admin rights), Sluice can
do exactly what it needs: server-side apply ConfigMaps in the listed namespaces,
list, watch and stamp (restart) the Deployments, StatefulSets and DaemonSets there,
and read namespaces, and nothing else: no Secrets, nothing in other namespaces, no
workload created or deleted.

Namespaces are never deleted (emptying one costs the namespace controller a LIST and
a DELETE per resource type); every run uses fresh ones. The manifests are applied once
per module, listing two fresh namespaces for each test. `sluice-system` and the
cluster-wide RBAC objects are applied idempotently and shared by runs on a reused stack.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gitops.cluster import Cluster
from gitops.consumers.workloads import CONFIG_HASH_ANNOTATION, stamp, workload_from
from gitops.errors import PermanentError

ROOT = Path(__file__).resolve().parents[2]
KUBECTL_HOME = tempfile.mkdtemp(prefix="sluice-kubectl-")


def kubectl(stack: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["kubectl", *args],
        input=stdin,
        capture_output=True,
        text=True,
        # kubectl caches discovery under $HOME/.kube; keep that out of the checkout.
        env={"PATH": stack["PATH"], "KUBECONFIG": stack["KUBECONFIG"], "HOME": KUBECTL_HOME},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl {' '.join(args)} failed:\n{result.stderr}"
    return result


def render(*namespaces: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "render.py"), "--namespaces", ",".join(namespaces)],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def service_account_kubeconfig(admin_kubeconfig: str, token: str, path: Path) -> Path:
    """A kubeconfig for the ServiceAccount: the admin's server and CA, the SA's bearer token."""
    admin = yaml.safe_load(Path(admin_kubeconfig).read_text())
    current = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    cluster = next(c for c in admin["clusters"] if c["name"] == current["context"]["cluster"])
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "stack", "cluster": cluster["cluster"]}],
                "users": [{"name": "sluice", "user": {"token": token}}],
                "contexts": [{"name": "sluice", "context": {"cluster": "stack", "user": "sluice"}}],
                "current-context": "sluice",
            }
        )
    )
    return path


def configmap(namespace: str, name: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"GREETING": "hello"},
    }


@pytest.fixture(scope="module")
def installation(request: pytest.FixtureRequest, stack, cluster) -> list[str]:
    """Sluice's manifests rendered, dry-run and applied once for the module, listing two fresh
    namespaces for each of its tests that uses `deployed`; the namespaces no test has taken yet.

    Rendering and applying cost seconds of kubectl, a namespace almost nothing: each test still gets
    listed namespaces no other test touches, and the shared objects are the ones a reused stack
    shares anyway (`sluice-system` and the cluster-wide RBAC)."""
    in_module = [item for item in request.session.items if item.module is request.module]
    users = sum(1 for item in in_module if "deployed" in item.fixturenames)
    prefix = f"t{uuid.uuid4().hex[:6]}"
    listed = [f"{prefix}-team-{index}" for index in range(2 * users)]
    for name in listed:
        cluster.create_namespace(name)
    manifests = render(*listed)

    # A dry run creates nothing, so objects inside a namespace that does not exist
    # yet would be rejected: create sluice-system on its own first (idempotent).
    namespace_doc = next(d for d in yaml.safe_load_all(manifests) if d["kind"] == "Namespace")
    kubectl(stack, "apply", "-f", "-", stdin=yaml.safe_dump(namespace_doc))

    dry_run = kubectl(stack, "apply", "--dry-run=server", "-f", "-", stdin=manifests)
    assert "(server dry run)" in dry_run.stdout
    # The namespace enforces the "restricted" Pod Security Standard and warns about
    # Deployments whose pods it would refuse.
    assert "PodSecurity" not in dry_run.stderr, dry_run.stderr

    kubectl(stack, "apply", "-f", "-", stdin=manifests)
    return listed


@pytest.fixture
def deployed(installation: list[str], make_namespaces) -> dict[str, list[str]]:
    """Two namespaces the installation lists, for this test alone, and a fresh one it leaves out."""
    allowed = [installation.pop(0), installation.pop(0)]
    (outside,) = make_namespaces("other")
    return {"allowed": allowed, "outside": [outside]}


@pytest.fixture
def sluice_kubeconfig(stack, deployed, tmp_path) -> Path:
    """A kubeconfig for the `sluice` ServiceAccount, with a token from the TokenRequest API."""
    token = kubectl(stack, "create", "token", "sluice", "-n", "sluice-system").stdout.strip()
    return service_account_kubeconfig(stack["KUBECONFIG"], token, tmp_path / "sluice.kubeconfig")


@pytest.fixture
def as_sluice(sluice_kubeconfig) -> Iterator[Cluster]:
    with Cluster(str(sluice_kubeconfig)) as connected:
        yield connected


def test_rendered_manifests_are_accepted_and_applied(stack, deployed) -> None:
    for namespace in deployed["allowed"]:
        role = yaml.safe_load(
            kubectl(stack, "get", "role", "sluice-configmaps", "-n", namespace, "-o", "yaml").stdout
        )
        assert role["rules"] == [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "verbs": ["get", "list", "watch", "create", "patch", "delete"],
            }
        ]
        workloads = yaml.safe_load(
            kubectl(stack, "get", "role", "sluice-workloads", "-n", namespace, "-o", "yaml").stdout
        )
        assert workloads["rules"] == [
            {
                "apiGroups": ["apps"],
                "resources": ["deployments", "statefulsets", "daemonsets"],
                "verbs": ["get", "list", "watch", "patch"],
            },
            {
                "apiGroups": ["argoproj.io"],
                "resources": ["rollouts"],
                "verbs": ["get", "list", "watch", "patch"],
            },
        ]
    for namespace in deployed["outside"]:
        roles = yaml.safe_load(kubectl(stack, "get", "roles", "-n", namespace, "-o", "yaml").stdout)
        assert roles["items"] == []
    beat = yaml.safe_load(
        kubectl(stack, "get", "deploy", "sluice-beat", "-n", "sluice-system", "-o", "yaml").stdout
    )
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    kubectl(
        stack, "get", "deploy/sluice-web", "deploy/sluice-worker", "svc/sluice-web", "-n", "sluice-system"
    )


def test_service_account_can_apply_configmaps_in_listed_namespaces(as_sluice, deployed) -> None:
    for namespace in deployed["allowed"]:
        applied = as_sluice.apply_configmap(configmap(namespace, "app"), field_manager="sluice")
        assert applied["data"] == {"GREETING": "hello"}
        assert as_sluice.get_configmap(namespace, "app")["data"] == {"GREETING": "hello"}
        assert as_sluice.list_configmaps(namespace)
        assert as_sluice.delete_configmap(namespace, "app")


def test_service_account_can_read_namespaces(as_sluice, deployed) -> None:
    for namespace in [*deployed["allowed"], *deployed["outside"]]:
        assert as_sluice.namespace_exists(namespace)


def test_service_account_reads_namespaces_by_name_only(sluice_kubeconfig, deployed) -> None:
    """Sluice asks for a namespace by name; it had list and watch on every namespace too (before
    2026-12-07), which no code used and which told it every team's namespace names."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    with config.new_client_from_config(config_file=str(sluice_kubeconfig)) as api_client:
        core = client.CoreV1Api(api_client)
        assert core.read_namespace(deployed["outside"][0]).metadata.name == deployed["outside"][0]
        with pytest.raises(ApiException) as listed:
            core.list_namespace(limit=1)
        assert listed.value.status == 403
        with pytest.raises(ApiException) as watched:
            core.list_namespace(watch=True, timeout_seconds=1)
        assert watched.value.status == 403


def test_service_account_cannot_read_secrets(stack, sluice_kubeconfig, deployed) -> None:
    # gitops.cluster has no Secret methods at all (Sluice never touches them), so
    # ask the API directly with the ServiceAccount's credentials.
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    namespace = deployed["allowed"][0]
    kubectl(stack, "create", "secret", "generic", "db", "-n", namespace, "--from-literal=password=hunter2")
    with config.new_client_from_config(config_file=str(sluice_kubeconfig)) as api_client:
        core = client.CoreV1Api(api_client)
        with pytest.raises(ApiException) as read:
            core.read_namespaced_secret("db", namespace)
        assert read.value.status == 403
        with pytest.raises(ApiException) as listed:
            core.list_namespaced_secret(namespace)
        assert listed.value.status == 403


def test_service_account_cannot_write_configmaps_elsewhere(as_sluice, deployed) -> None:
    (outside,) = deployed["outside"]
    with pytest.raises(PermanentError) as refused:
        as_sluice.apply_configmap(configmap(outside, "app"), field_manager="sluice")
    assert "answered 403" in str(refused.value)
    with pytest.raises(PermanentError):
        as_sluice.apply_configmap(configmap("sluice-system", "app"), field_manager="sluice")


def restart_stamp(live: dict, config_hash: str) -> dict:
    """The server-side apply body of a restart: two pod-template annotations, nothing else."""
    return stamp(workload_from(live), config_hash_value=config_hash, commit="c" * 40)


def test_service_account_watches_and_restarts_workloads_in_listed_namespaces(
    as_sluice, deployed, deploy_consumer, apps_api
) -> None:
    namespace = deployed["allowed"][0]
    deploy_consumer(namespace, "web")
    for kind in ("Deployment", "StatefulSet", "DaemonSet", "Rollout"):
        as_sluice.list_workloads(kind, namespace)  # no 403 for any kind
    items, version = as_sluice.list_workloads("Deployment", namespace)
    assert [item["metadata"]["name"] for item in items] == ["web"]
    live = as_sluice.get_workload("Deployment", namespace, "web")
    assert live is not None and "app" in workload_from(live).consumes

    stamped = as_sluice.apply_workload(restart_stamp(live, "f" * 32), field_manager="sluice")

    assert stamped["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] == "f" * 32
    assert stamped["metadata"]["generation"] == live["metadata"]["generation"] + 1, "a new pod template"
    seen = next(
        obj
        for event, obj in as_sluice.watch_workloads(
            "Deployment", namespace, resource_version=version, timeout_seconds=10
        )
        if event == "MODIFIED"
        and CONFIG_HASH_ANNOTATION in obj["spec"]["template"]["metadata"]["annotations"]
    )
    assert seen["metadata"]["name"] == "web"
    owners = {entry["manager"] for entry in stamped["metadata"]["managedFields"]}
    assert "sluice" in owners
    template = apps_api.read_namespaced_deployment("web", namespace).spec.template
    assert template.spec.containers[0].env_from[0].config_map_ref.name == "app", "only the stamp changed"


def test_service_account_cannot_touch_workloads_elsewhere_nor_create_or_delete_them(
    as_sluice, sluice_kubeconfig, deployed, deploy_consumer
) -> None:
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    from tests.workloads import consumer_deployment

    (outside,) = deployed["outside"]
    deploy_consumer(outside, "web", wait=False)
    live = {"kind": "Deployment", "metadata": {"name": "web", "namespace": outside}, "spec": {}}
    for attempt in (
        lambda: as_sluice.list_workloads("Deployment", outside),
        # Argo Rollouts is installed on this cluster: a refusal of its Rollouts is a refusal, not "none".
        lambda: as_sluice.list_workloads("Rollout", outside),
        lambda: as_sluice.get_workload("Deployment", outside, "web"),
        lambda: as_sluice.apply_workload(restart_stamp(live, "f" * 32), field_manager="sluice"),
        lambda: next(
            iter(as_sluice.watch_workloads("Deployment", outside, resource_version="0", timeout_seconds=2))
        ),
    ):
        with pytest.raises(PermanentError) as refused:
            attempt()
        assert "403" in str(refused.value)

    # Where it may restart workloads, it still can neither make one nor remove one: a stamp of a
    # workload that is gone creates nothing.
    allowed = deployed["allowed"][0]
    ghost = {"kind": "Deployment", "metadata": {"name": "ghost", "namespace": allowed}, "spec": {}}
    with pytest.raises(PermanentError):
        as_sluice.apply_workload(restart_stamp(ghost, "f" * 32), field_manager="sluice")
    assert as_sluice.get_workload("Deployment", allowed, "ghost") is None
    deploy_consumer(allowed, "web", wait=False)
    with config.new_client_from_config(config_file=str(sluice_kubeconfig)) as api_client:
        apps = client.AppsV1Api(api_client)
        with pytest.raises(ApiException) as created:
            apps.create_namespaced_deployment(allowed, consumer_deployment("made-by-sluice", "app"))
        assert created.value.status == 403
        with pytest.raises(ApiException) as deleted:
            apps.delete_namespaced_deployment("web", allowed)
        assert deleted.value.status == 403
        with pytest.raises(ApiException) as pods:
            client.CoreV1Api(api_client).list_namespaced_pod(allowed)
        assert pods.value.status == 403
    assert as_sluice.get_workload("Deployment", allowed, "web") is not None


@pytest.mark.django_db(transaction=True)
def test_a_reconcile_with_the_service_accounts_own_token_succeeds(
    deployed, sluice_kubeconfig, repo, make_source, start_worker, cluster
) -> None:
    from gitops.tasks import sync_source
    from tests.gitrepo import configmap as manifest
    from tests.gitrepo import policy

    allowed = deployed["allowed"]
    repo.write_all(
        {"sluice.yaml": policy(allowed), "configmaps/app.yaml": manifest("app", {"LOG_LEVEL": "info"})}
    )
    repo.commit()
    source = make_source()
    queue = f"service-account-{source.pk}"
    # This worker's only credential is the ServiceAccount's token.
    start_worker(queues=queue, env_overrides={"KUBECONFIG": str(sluice_kubeconfig)})

    result = sync_source.apply_async((source.pk,), queue=queue).get(timeout=120)

    assert result["outcome"] == "applied", result
    for namespace in allowed:
        live = cluster.get_configmap(namespace, "app")
        assert live["data"] == {"LOG_LEVEL": "info"}
        assert any(entry["manager"] == "sluice" for entry in live["metadata"]["managedFields"])


# -- the web pods' identity (issue 10, section 5) ------------------------------------------


@pytest.fixture
def web_kubeconfig(stack, deployed, tmp_path) -> Path:
    """A kubeconfig for the `sluice-web` ServiceAccount, with a token from the TokenRequest API."""
    token = kubectl(stack, "create", "token", "sluice-web", "-n", "sluice-system").stdout.strip()
    return service_account_kubeconfig(stack["KUBECONFIG"], token, tmp_path / "web.kubeconfig")


def test_web_pods_run_as_their_own_service_account(stack, deployed) -> None:
    web = yaml.safe_load(
        kubectl(stack, "get", "deploy", "sluice-web", "-n", "sluice-system", "-o", "yaml").stdout
    )
    assert web["spec"]["template"]["spec"]["serviceAccountName"] == "sluice-web"
    worker = yaml.safe_load(
        kubectl(stack, "get", "deploy", "sluice-worker", "-n", "sluice-system", "-o", "yaml").stdout
    )
    assert worker["spec"]["template"]["spec"]["serviceAccountName"] == "sluice"


def test_the_web_service_account_cannot_write_configmaps_but_reads_readyz(web_kubeconfig, deployed) -> None:
    with Cluster(str(web_kubeconfig)) as as_web:
        assert as_web.healthy(), "the web's /readyz asks the API server's /readyz"
        for namespace in [*deployed["allowed"], "sluice-system"]:
            with pytest.raises(PermanentError) as refused:
                as_web.apply_configmap(configmap(namespace, "app"), field_manager="sluice")
            assert "answered 403" in str(refused.value)
            with pytest.raises(PermanentError) as listed:
                as_web.list_configmaps(namespace)
            assert "answered 403" in str(listed.value)
            with pytest.raises(PermanentError) as workloads:
                as_web.list_workloads("Deployment", namespace)
            assert "answered 403" in str(workloads.value)


def test_the_web_service_account_reads_the_clusters_identity_and_no_other_namespace(
    web_kubeconfig, cluster, deployed
) -> None:
    """With SLUICE_CLUSTER_IDENTITY set, the web's client reads kube-system's uid before it asks /readyz:
    refused, the web's /readyz answered 503 for good."""
    with Cluster(str(web_kubeconfig)) as as_web:
        assert as_web.identity(timeout=10) == cluster.identity(timeout=10)
        for namespace in ["default", *deployed["allowed"], "sluice-system"]:
            with pytest.raises(PermanentError) as refused:
                as_web.namespace_exists(namespace)
            assert "answered 403" in str(refused.value)


def test_the_worker_checks_ssh_host_keys_against_the_known_hosts_it_mounts(stack, deployed) -> None:
    """The image ships no known_hosts: without one, every SSH source failed "Host key verification
    failed" (before 2026-12-07). The operator's ConfigMap is optional, and SLUICE_SSH_KNOWN_HOSTS names
    the file in it."""
    config = yaml.safe_load(
        kubectl(stack, "get", "configmap", "sluice-config", "-n", "sluice-system", "-o", "yaml").stdout
    )
    worker = yaml.safe_load(
        kubectl(stack, "get", "deploy", "sluice-worker", "-n", "sluice-system", "-o", "yaml").stdout
    )["spec"]["template"]["spec"]
    known_hosts = "sluice-ssh-known-hosts"
    (volume,) = [v for v in worker["volumes"] if v.get("configMap", {}).get("name") == known_hosts]
    assert volume["configMap"]["optional"] is True
    (mount,) = [m for m in worker["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert config["data"]["SLUICE_SSH_KNOWN_HOSTS"] == f"{mount['mountPath']}/known_hosts"


@pytest.mark.parametrize("name", ["sluice-worker", "sluice-beat", "sluice-live-cache"])
def test_every_process_but_the_web_waits_for_the_webs_migrations(stack, deployed, name) -> None:
    """One `kubectl apply` rolls every Deployment at once: new workers queried columns the web's init
    container had not added yet, and failed until it had, or for good if it was stuck (before
    2026-12-07)."""
    spec = yaml.safe_load(kubectl(stack, "get", "deploy", name, "-n", "sluice-system", "-o", "yaml").stdout)
    (gate,) = spec["spec"]["template"]["spec"]["initContainers"]
    assert gate["args"] == ["manage", "migrate", "--check"]
    assert gate["image"] == spec["spec"]["template"]["spec"]["containers"][0]["image"]


def test_web_and_workers_are_never_drained_all_at_once(stack, deployed) -> None:
    budgets = yaml.safe_load(
        kubectl(stack, "get", "poddisruptionbudget", "-n", "sluice-system", "-o", "yaml").stdout
    )["items"]
    by_name = {budget["metadata"]["name"]: budget["spec"] for budget in budgets}
    assert by_name["sluice-web"]["minAvailable"] == 1
    assert by_name["sluice-worker"]["maxUnavailable"] == 1
    for name, spec in by_name.items():
        deployment = yaml.safe_load(
            kubectl(stack, "get", "deploy", name, "-n", "sluice-system", "-o", "yaml").stdout
        )
        assert spec["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_network_policies_close_sluice_system_to_everything_but_the_web_and_metrics_ports(
    stack, deployed
) -> None:
    policies = yaml.safe_load(
        kubectl(stack, "get", "networkpolicy", "-n", "sluice-system", "-o", "yaml").stdout
    )["items"]
    by_name = {policy["metadata"]["name"]: policy["spec"] for policy in policies}
    assert by_name["sluice-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    web_ingress = by_name["sluice-web-ingress"]
    assert web_ingress["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "web"
    assert web_ingress["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8000}]}]
    # Each worker's own /metrics: its pod shares no metrics directory with the web (since 2026-12-07).
    config = yaml.safe_load(
        kubectl(stack, "get", "configmap", "sluice-config", "-n", "sluice-system", "-o", "yaml").stdout
    )
    port = int(config["data"]["SLUICE_WORKER_METRICS_PORT"])
    worker_ingress = by_name["sluice-worker-metrics-ingress"]
    assert worker_ingress["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    assert worker_ingress["ingress"] == [{"ports": [{"protocol": "TCP", "port": port}]}]
    assert len(by_name) == 4, sorted(by_name)
    assert "Egress" in by_name["sluice-web-beat-egress"]["policyTypes"]
