"""A member cluster reached only with the ServiceAccount token that deploy/render.py sets up.

`render.py member-rbac` is applied to the stack's `member-1` cluster with the admin's
context; `render.py member-kubeconfig` then reads the token its token controller filled
in and writes a kubeconfig for Sluice. With that file alone (a bearer token, no admin
certificate), ConfigMaps can be written in the listed namespaces and nowhere else,
workloads elsewhere cannot be patched, and no Secret can be read, Sluice's own included.

The module shares one set of fresh namespaces and one rendered kubeconfig. `sluice-system`,
the ServiceAccount, its token Secret and the cluster-wide reader are applied idempotently
and shared by runs on a reused stack.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gitops.cluster import Cluster
from gitops.consumers.workloads import CONFIG_HASH_ANNOTATION, stamp, workload_from
from gitops.errors import PermanentError
from tests.integration.test_deploy import configmap, kubectl
from tests.unit.test_render_member import load_render
from tests.workloads import consumer_deployment

ROOT = Path(__file__).resolve().parents[2]
SERVICE_ACCOUNT_USER = "system:serviceaccount:sluice-system:sluice"
render_module = load_render()


def render(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "render.py"), *args],
        capture_output=True,
        text=True,
        # No KUBECONFIG from this process: the script must use the one it is given.
        env={"PATH": os.environ["PATH"]},
        timeout=120,
        check=False,
    )
    if check:
        assert result.returncode == 0, f"render.py {' '.join(args)} failed:\n{result.stderr}"
    return result


def server_of(kubeconfig: Path, context: str) -> str:
    document = yaml.safe_load(kubeconfig.read_text())
    cluster = next(c["context"]["cluster"] for c in document["contexts"] if c["name"] == context)
    return next(c["cluster"]["server"] for c in document["clusters"] if c["name"] == cluster)


@pytest.fixture(scope="module")
def member(stack, cluster_for, member_kubeconfig_contexts) -> dict[str, object]:
    """member-1 with the rendered RBAC for two fresh namespaces; a third one is left out."""
    context = member_kubeconfig_contexts[0]
    admin = cluster_for(context)
    prefix = f"t{uuid.uuid4().hex[:6]}"
    allowed = [f"{prefix}-team-a", f"{prefix}-team-b"]
    outside = f"{prefix}-other"
    for namespace in [*allowed, outside]:
        admin.create_namespace(namespace)
    rbac = render("member-rbac", "--namespaces", ",".join(allowed)).stdout
    kubectl(stack, "--context", context, "apply", "-f", "-", stdin=rbac)
    return {"context": context, "admin": admin, "allowed": allowed, "outside": outside}


@pytest.fixture(scope="module")
def rendered(stack, member, tmp_path_factory) -> dict[str, object]:
    """The kubeconfig `member-kubeconfig` wrote for member-1, and what the command printed."""
    output = tmp_path_factory.mktemp("rendered") / "member-1.kubeconfig"
    result = render(
        "member-kubeconfig",
        "--kubeconfig",
        stack["KUBECONFIG"],
        "--context",
        str(member["context"]),
        "--output",
        str(output),
    )
    return {"path": output, "stdout": result.stdout, "stderr": result.stderr}


@pytest.fixture(scope="module")
def as_sluice(rendered) -> Iterator[Cluster]:
    with Cluster(str(rendered["path"])) as connected:
        yield connected


@pytest.fixture(scope="module")
def sluice_api(rendered) -> Iterator[object]:
    """The official client with nothing but the rendered kubeconfig, for calls gitops.cluster lacks."""
    from kubernetes import config

    with config.new_client_from_config(config_file=str(rendered["path"])) as api_client:
        yield api_client


def status_of(call, *args) -> int:
    """The HTTP status with which the API server refuses ``call(*args)``."""
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as refused:
        call(*args)
    return refused.value.status


def names_in(stack, context: str, kinds: str, namespace: str) -> list[str]:
    listed = kubectl(stack, "--context", context, "get", kinds, "-n", namespace, "-o", "name")
    return sorted(listed.stdout.split())


def test_member_rbac_grants_roles_in_the_listed_namespaces_only(stack, member) -> None:
    context = str(member["context"])
    for namespace in member["allowed"]:
        assert names_in(stack, context, "roles,rolebindings", namespace) == [
            "role.rbac.authorization.k8s.io/sluice-configmaps",
            "role.rbac.authorization.k8s.io/sluice-workloads",
            "rolebinding.rbac.authorization.k8s.io/sluice-configmaps",
            "rolebinding.rbac.authorization.k8s.io/sluice-workloads",
        ]
    assert names_in(stack, context, "roles", str(member["outside"])) == []
    # Sluice does not run on a member: no Deployment is rendered for it.
    assert names_in(stack, context, "deployments", "sluice-system") == []


def test_the_kubeconfig_holds_the_service_accounts_own_token_only_in_its_file(
    stack, member, rendered, kube_client
) -> None:
    from kubernetes import client

    path: Path = rendered["path"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [entry.name for entry in path.parent.iterdir()] == [path.name], "no staged file left behind"
    written = yaml.safe_load(path.read_text())
    assert written["current-context"] == "member-1"
    assert written["clusters"][0]["cluster"]["server"] == server_of(Path(stack["KUBECONFIG"]), "member-1")

    secret = client.CoreV1Api(kube_client("member-1")).read_namespaced_secret("sluice-token", "sluice-system")
    token = base64.b64decode(secret.data["token"]).decode()
    assert written["users"][0]["user"] == {"token": token}, "the ServiceAccount's own token, nothing else"
    assert token not in rendered["stdout"]
    assert token not in rendered["stderr"]
    assert f"authenticates as {SERVICE_ACCOUNT_USER}" in rendered["stdout"]


def test_configmap_writes_inside_the_listed_namespaces_succeed(member, as_sluice, sluice_api) -> None:
    from kubernetes import client

    core = client.CoreV1Api(sluice_api)
    admin: Cluster = member["admin"]
    for namespace in member["allowed"]:
        as_sluice.apply_configmap(configmap(namespace, "app"), field_manager="sluice")  # created by SSA
        patched = {**configmap(namespace, "app"), "data": {"GREETING": "hi", "LEVEL": "debug"}}
        as_sluice.apply_configmap(patched, field_manager="sluice")
        assert admin.get_configmap(namespace, "app")["data"] == {"GREETING": "hi", "LEVEL": "debug"}

        core.create_namespaced_config_map(namespace, configmap(namespace, "plain"))
        core.patch_namespaced_config_map("plain", namespace, {"data": {"GREETING": "patched"}})
        assert admin.get_configmap(namespace, "plain")["data"] == {"GREETING": "patched"}
        assert {"app", "plain"} <= {item["metadata"]["name"] for item in as_sluice.list_configmaps(namespace)}
        assert as_sluice.delete_configmap(namespace, "plain")
    for namespace in [*member["allowed"], member["outside"]]:
        assert as_sluice.namespace_exists(namespace), "namespaces can be read (get and list)"


def test_configmap_writes_outside_the_listed_namespaces_get_403(member, as_sluice, sluice_api) -> None:
    from kubernetes import client

    core = client.CoreV1Api(sluice_api)
    for namespace in [member["outside"], "sluice-system", "default"]:
        with pytest.raises(PermanentError) as refused:
            as_sluice.apply_configmap(configmap(namespace, "app"), field_manager="sluice")
        assert "answered 403" in str(refused.value)
        assert status_of(core.create_namespaced_config_map, namespace, configmap(namespace, "x")) == 403
    assert member["admin"].get_configmap(member["outside"], "app") is None


def test_patching_a_deployment_outside_gets_403(member, as_sluice, sluice_api, kube_client) -> None:
    from kubernetes import client

    admin_apps = client.AppsV1Api(kube_client("member-1"))
    allowed, outside = member["allowed"][0], member["outside"]
    # A member runs no Deployment controller: the objects are only stored, which is all a patch needs.
    for namespace in (allowed, outside):
        admin_apps.create_namespaced_deployment(namespace, consumer_deployment("web", "app"))
    inside = as_sluice.get_workload("Deployment", allowed, "web")
    stamped = as_sluice.apply_workload(
        stamp(workload_from(inside), config_hash_value="f" * 32, commit="c" * 40), field_manager="sluice"
    )
    assert stamped["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] == "f" * 32

    elsewhere = {"kind": "Deployment", "metadata": {"name": "web", "namespace": outside}, "spec": {}}
    with pytest.raises(PermanentError) as refused:
        as_sluice.apply_workload(
            stamp(workload_from(elsewhere), config_hash_value="f" * 32, commit="c" * 40),
            field_manager="sluice",
        )
    assert "403" in str(refused.value)
    apps = client.AppsV1Api(sluice_api)
    patch = {"spec": {"template": {"metadata": {"annotations": {"touched": "yes"}}}}}
    assert status_of(apps.patch_namespaced_deployment, "web", outside, patch) == 403
    untouched = admin_apps.read_namespaced_deployment("web", outside).spec.template.metadata.annotations
    assert not untouched


def test_secrets_get_403_even_its_own_token(member, sluice_api) -> None:
    from kubernetes import client

    core = client.CoreV1Api(sluice_api)
    assert status_of(core.read_namespaced_secret, "sluice-token", "sluice-system") == 403
    secret = {"metadata": {"name": "db"}, "stringData": {"password": "x"}}
    for namespace in [*member["allowed"], member["outside"]]:
        assert status_of(core.list_namespaced_secret, namespace) == 403
        assert status_of(core.create_namespaced_secret, namespace, secret) == 403


def test_another_cluster_refuses_the_token(stack, rendered, tmp_path) -> None:
    from kubernetes import client, config

    elsewhere = yaml.safe_load(rendered["path"].read_text())
    elsewhere["clusters"][0]["cluster"]["server"] = server_of(Path(stack["KUBECONFIG"]), "member-2")
    path = tmp_path / "elsewhere.kubeconfig"
    path.write_text(yaml.safe_dump(elsewhere))
    with config.new_client_from_config(config_file=str(path)) as api_client:
        core = client.CoreV1Api(api_client)
        assert status_of(core.list_namespace) == 401, "member-2 signs its own tokens"


def test_an_unreachable_cluster_is_a_clear_error_and_writes_nothing(stack, tmp_path) -> None:
    import socket

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    admin = yaml.safe_load(Path(stack["KUBECONFIG"]).read_text())
    for cluster in admin["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{closed_port}"
    broken = tmp_path / "admin.kubeconfig"
    broken.write_text(yaml.safe_dump(admin))
    output = tmp_path / "member-1.kubeconfig"

    result = render(
        "member-kubeconfig", "--kubeconfig", str(broken), "--context", "member-1", "--output", str(output),
        check=False,
    )  # fmt: skip

    assert result.returncode == 1
    assert "context 'member-1': reading the Secret sluice-system/sluice-token: cannot reach" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.glob("*member-1.kubeconfig*")) == []


@pytest.mark.django_db(transaction=True)
def test_a_reconcile_into_the_member_with_only_the_rendered_kubeconfig(
    member, rendered, repo, make_source, start_worker
) -> None:
    from gitops.tasks import sync_source
    from tests.gitrepo import configmap as manifest
    from tests.gitrepo import policy

    allowed = member["allowed"]
    repo.write_all(
        {
            "sluice.yaml": policy(allowed),
            "configmaps/settings.yaml": manifest("settings", {"LOG_LEVEL": "info"}),
        }
    )
    repo.commit()
    source = make_source()
    queue = f"member-{source.pk}"
    # This worker's only credential is the rendered kubeconfig: its cluster is member-1.
    start_worker(queues=queue, env_overrides={"KUBECONFIG": str(rendered["path"])})

    result = sync_source.apply_async((source.pk,), queue=queue).get(timeout=120)

    assert result["outcome"] == "applied", result
    for namespace in allowed:
        assert member["admin"].get_configmap(namespace, "settings")["data"] == {"LOG_LEVEL": "info"}


WATCHER_BINDING = "sluice-configmap-watcher"  # render.py --watch-cluster


def unbind_watcher(stack, context: str) -> None:
    """Takes ``--watch-cluster``'s grant away from Sluice's ServiceAccount, if it has it."""
    kubectl(
        stack, "--context", context, "delete", "clusterrolebinding", WATCHER_BINDING, "--ignore-not-found"
    )


def lists_every_namespace(as_sluice: Cluster) -> bool:
    """Whether Sluice's token may list ConfigMaps across the cluster now (RBAC changes take a moment)."""
    from gitops.cluster.client import ReadForbidden

    try:
        as_sluice.list_configmap_page("", label_selector="app.kubernetes.io/managed-by=sluice", limit=1)
    except ReadForbidden:
        return False
    return True


def live_cache_heals_in_member(stack, member, cluster: str, source, namespace: str, name: str) -> None:
    """An edit in the member, by its admin, is healed on the live cache's word alone."""
    from gitops.models import Change
    from gitops.vocabulary import ChangeAction
    from tests.workers import poll

    edit = ["patch", "configmap", name, "--type", "merge", "-p", '{"data": {"LOG_LEVEL": "debug"}}']
    kubectl(stack, "--context", str(member["context"]), "-n", namespace, *edit)
    healed = lambda: Change.objects.filter(source=source, action=ChangeAction.SELF_HEAL).exists()  # noqa: E731
    poll(healed, timeout=10, what=f"the edit to be healed, woken by the live cache of {cluster}")
    assert member["admin"].get_configmap(namespace, name)["data"] == {"LOG_LEVEL": "info"}


def synced_in_member(cluster: str, kubeconfig: Path, namespace: str, repo, make_source, sync):
    """A source with one ConfigMap in ``namespace`` of member-1, reached as ``cluster`` through
    ``kubeconfig``, polled hourly (only the live cache wakes it), synced once; its ConfigMap's name."""
    from datetime import timedelta

    from gitops import cluster_admin
    from gitops.record.audit import Actor
    from tests.gitrepo import configmap as manifest

    cluster_admin.cluster_add(name=cluster, kubeconfig=str(kubeconfig), actor=Actor.command_line("tests"))
    name = f"live-{uuid.uuid4().hex[:6]}"
    targets = [{"cluster": cluster, "namespaces": [namespace]}]
    repo.write_all(
        {
            "sluice.yaml": {"targets": targets, "selfHeal": True},
            f"configmaps/{name}.yaml": manifest(name, {"LOG_LEVEL": "info"}),
        }
    )
    repo.commit()
    source = make_source(poll_interval=timedelta(hours=1), allowed_namespaces=[f"{cluster}/{namespace}"])
    assert sync(source)["outcome"] == "applied"
    return source, name


@pytest.mark.django_db(transaction=True)
def test_the_live_cache_watches_each_namespace_where_rbac_grants_no_cluster_wide_read(
    stack, member, rendered, as_sluice, repo, make_source, sync, start_live_cache
) -> None:
    from gitops.cluster import livestore
    from tests.workers import poll

    context = str(member["context"])
    kubectl(
        stack, "--context", context, "delete", "clusterrolebinding", WATCHER_BINDING, "--ignore-not-found"
    )
    poll(lambda: not lists_every_namespace(as_sluice), timeout=30, what="no cluster-wide read for Sluice")
    namespace = member["allowed"][0]
    source, name = synced_in_member("restricted", rendered["path"], namespace, repo, make_source, sync)

    cache = start_live_cache()
    # Sluice's token may list ConfigMaps only namespace by namespace: the cluster-wide LIST is
    # refused (403), and the cache watches each namespace Sluice applied to instead.
    fresh = lambda: namespace in livestore.fresh_stamps("restricted", [namespace])  # noqa: E731
    poll(fresh, timeout=60, what="the live cache to vouch for the namespace")
    assert "restricted: no cluster-wide list and watch of ConfigMaps" in cache.log_path.read_text()
    live_cache_heals_in_member(stack, member, "restricted", source, namespace, name)


@pytest.mark.django_db(transaction=True)
def test_with_watch_cluster_the_live_cache_watches_the_member_whole(
    stack, member, rendered, as_sluice, repo, make_source, sync, start_live_cache
) -> None:
    from gitops.cluster import livestore
    from tests.workers import poll

    context = str(member["context"])
    watcher = render("member-rbac", "--namespaces", ",".join(member["allowed"]), "--watch-cluster").stdout
    kubectl(stack, "--context", context, "apply", "-f", "-", stdin=watcher)
    try:
        poll(lambda: lists_every_namespace(as_sluice), timeout=30, what="RBAC to grant the cluster-wide read")
        namespace = member["allowed"][1]
        source, name = synced_in_member("watching", rendered["path"], namespace, repo, make_source, sync)

        cache = start_live_cache()
        fresh = lambda: namespace in livestore.fresh_stamps("watching", [namespace])  # noqa: E731
        poll(fresh, timeout=60, what="the live cache to vouch for the namespace")
        log = cache.log_path.read_text()
        assert "live cache of cluster watching: watching ConfigMaps in every namespace" in log
        assert "watching: no cluster-wide list" not in log, "the ClusterRole grants all the cache needs"
        live_cache_heals_in_member(stack, member, "watching", source, namespace, name)
    finally:
        kubectl(
            stack, "--context", context, "delete", "clusterrolebinding", WATCHER_BINDING, "--ignore-not-found"
        )


@pytest.mark.django_db(transaction=True)
def test_a_cluster_wide_read_granted_later_brings_back_one_watch_for_the_member(
    stack, member, rendered, as_sluice, repo, make_source, sync, start_live_cache
) -> None:
    from gitops.cluster import livestore
    from tests.workers import poll

    context = str(member["context"])
    unbind_watcher(stack, context)
    poll(lambda: not lists_every_namespace(as_sluice), timeout=30, what="no cluster-wide read for Sluice")
    namespace = member["allowed"][0]
    source, name = synced_in_member("regranted", rendered["path"], namespace, repo, make_source, sync)
    cache = start_live_cache(SLUICE_LIVE_CACHE_SCOPE_RETRY_SECONDS="1")
    refused = "regranted: no cluster-wide list and watch of ConfigMaps"
    poll(
        lambda: refused in cache.log_path.read_text(), timeout=60, what="the cluster-wide read to be refused"
    )

    watcher = render("member-rbac", "--namespaces", ",".join(member["allowed"]), "--watch-cluster").stdout
    kubectl(stack, "--context", context, "apply", "-f", "-", stdin=watcher)
    try:
        # Said once by the first term, refused right after; said again by the term that watches it whole.
        whole = "live cache of cluster regranted: watching ConfigMaps in every namespace"
        again = lambda: cache.log_path.read_text().count(whole) == 2  # noqa: E731
        poll(again, timeout=60, what="one watch for the member again")
        log = cache.log_path.read_text()
        assert "regranted: a cluster-wide list of ConfigMaps is allowed again" in log
        assert log.count(refused) == 1, "refused once, then watched whole: no switching back and forth"
        fresh = lambda: namespace in livestore.fresh_stamps("regranted", [namespace])  # noqa: E731
        poll(fresh, timeout=60, what="the live cache to vouch for the namespace, watching the member whole")
        live_cache_heals_in_member(stack, member, "regranted", source, namespace, name)
    finally:
        unbind_watcher(stack, context)


def readable(call) -> bool:
    """Whether Sluice's token may make this read now (RBAC changes take a moment)."""
    from gitops.cluster.client import ReadForbidden

    try:
        call()
    except ReadForbidden:
        return False
    return True


@pytest.mark.django_db(transaction=True)
def test_a_step_whose_consumers_rbac_keeps_from_sluice_fails_and_rolls_back_at_once(
    stack, member, rendered, as_sluice, repo, make_source, sync
) -> None:
    """ConfigMaps granted, workloads not: the step cannot restart or gate its consumers. It fails with
    what to grant and rolls back, instead of waiting for the cluster, with no healthTimeout, for good."""
    from gitops import cluster_admin, preview
    from gitops.models import Rollout
    from gitops.record.audit import Actor
    from tests.gitrepo import configmap as manifest
    from tests.workers import poll

    namespace = f"t{uuid.uuid4().hex[:6]}-noworkloads"
    member["admin"].create_namespace(namespace)
    role = render_module.ROLE_NAME  # the ConfigMaps' Role and its binding, not the workloads'
    documents = [d for d in render_module.namespace_access(namespace) if d["metadata"]["name"] == role]
    rbac = yaml.safe_dump_all(documents)
    kubectl(stack, "--context", str(member["context"]), "apply", "-f", "-", stdin=rbac)
    list_configmaps = lambda: as_sluice.list_configmap_page(namespace, label_selector="", limit=1)  # noqa: E731
    poll(lambda: readable(list_configmaps), timeout=30, what="RBAC to grant the ConfigMaps")
    assert not readable(lambda: as_sluice.list_workloads("Deployment", namespace))
    # Argo Rollouts is not installed here: RBAC that grants nothing on Rollouts refuses nothing Sluice needs.
    assert as_sluice.list_workloads("Rollout", namespace) == ([], "")

    cluster_admin.cluster_add(
        name="noworkloads", kubeconfig=str(rendered["path"]), actor=Actor.command_line("tests")
    )
    targets = [{"cluster": "noworkloads", "namespaces": [namespace]}]
    repo.write_all(
        {
            "sluice.yaml": {"targets": targets, "rollout": {"consumers": "restart", "healthTimeout": "10m"}},
            "configmaps/app.yaml": manifest("app", {"V": "1"}),
        }
    )
    commit = repo.commit("v1")
    source = make_source(allowed_namespaces=[f"noworkloads/{namespace}"])
    # A preview says so before any step: it showed no consumers there, as if the change reached none.
    previewed = preview.revision_preview(source, commit)
    assert previewed.consumers == () and len(previewed.consumer_problems) == 1, previewed
    assert previewed.consumer_problems[0].startswith(
        "a step fails and rolls back in cluster noworkloads: may not list the consumers"
    )
    assert previewed.as_dict()["consumer_problems"] == list(previewed.consumer_problems)

    result = sync(source)

    assert result["outcome"] == "failed", result
    rollout = Rollout.objects.get(source=source)
    assert rollout.phase == Rollout.Phase.FAILED, (rollout.phase, rollout.waiting_for, rollout.message)
    assert "may not list the consumers of its changed ConfigMaps" in rollout.message
    assert "deployments" in rollout.message, "the apiserver's refusal names what was refused"
    assert member["admin"].get_configmap(namespace, "app") is None, "the step was rolled back"


# -- reading the token, in process: the waits and the refusals ----------------------------


@pytest.fixture
def token_namespace(member, kube_client) -> tuple[object, str]:
    """A fresh namespace on member-1 with its `default` ServiceAccount, and the admin's CoreV1Api."""
    from kubernetes import client

    from tests.workers import poll

    core = client.CoreV1Api(kube_client("member-1"))
    namespace = f"t{uuid.uuid4().hex[:6]}-tokens"
    member["admin"].create_namespace(namespace)
    poll(
        lambda: core.list_namespaced_service_account(namespace).items,
        timeout=30,
        what="member-1's serviceaccount controller to make `default`",
    )
    return core, namespace


def test_read_token_waits_for_the_token_controller(token_namespace) -> None:
    core, namespace = token_namespace
    secret = {
        "metadata": {"name": "fresh", "annotations": {"kubernetes.io/service-account.name": "default"}},
        "type": "kubernetes.io/service-account-token",
    }
    core.create_namespaced_secret(namespace, secret)

    # Asked at once, before the controller (most likely) filled it in: the watch sees it filled.
    token, ca_pem = render_module.read_token(core, "member-1", 30, namespace=namespace, name="fresh")

    filled = core.read_namespaced_secret("fresh", namespace).data
    assert token == base64.b64decode(filled["token"]).decode()
    assert ca_pem.startswith(b"-----BEGIN CERTIFICATE-----")


def test_read_token_names_a_missing_secret_and_one_never_filled_in(token_namespace) -> None:
    core, namespace = token_namespace
    with pytest.raises(render_module.RenderError) as missing:
        render_module.read_token(core, "member-1", 1, namespace=namespace, name="absent")
    assert str(missing.value) == (
        f"context 'member-1': there is no Secret {namespace}/absent;"
        " apply `render.py member-rbac` there first"
    )

    # An Opaque Secret: no controller ever fills it in, so the wait ends at its deadline.
    core.create_namespaced_secret(namespace, {"metadata": {"name": "opaque"}, "stringData": {"a": "b"}})
    with pytest.raises(render_module.RenderError) as never:
        render_module.read_token(core, "member-1", 2, namespace=namespace, name="opaque")
    assert f"did not fill in a token for {namespace}/opaque within 2 s" in str(never.value)
