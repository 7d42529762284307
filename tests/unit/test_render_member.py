"""deploy/render.py's member-cluster output, without a cluster (the real one is in
tests/integration/test_deploy_member.py)."""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path

import pytest
import yaml

RENDER = Path(__file__).resolve().parents[2] / "deploy" / "render.py"


def load_render():
    spec = importlib.util.spec_from_file_location("sluice_deploy_render", RENDER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = load_render()


def documents(text: str) -> list[dict]:
    return [document for document in yaml.safe_load_all(text) if document]


def test_member_rbac_is_the_identity_the_reader_a_token_and_roles_in_listed_namespaces_only() -> None:
    rendered = documents(render.render_member_rbac(["team-a", "team-b"]))

    kinds = [(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in rendered]
    assert kinds == [
        ("Namespace", "sluice-system", None),
        ("ServiceAccount", "sluice", "sluice-system"),
        ("ClusterRole", "sluice-namespace-reader", None),
        ("ClusterRoleBinding", "sluice-namespace-reader", None),
        ("Secret", "sluice-token", "sluice-system"),
        *[
            (kind, role, namespace)
            for namespace in ("team-a", "team-b")
            for role in ("sluice-configmaps", "sluice-workloads")
            for kind in ("Role", "RoleBinding")
        ],
    ]
    secret = rendered[4]
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert secret["metadata"]["annotations"] == {"kubernetes.io/service-account.name": "sluice"}
    assert "data" not in secret, "the cluster fills the token in; nothing secret is rendered"
    granted = {resource for d in rendered for rule in d.get("rules", []) for resource in rule["resources"]}
    assert granted == {"namespaces", "configmaps", "deployments", "statefulsets", "daemonsets", "rollouts"}


@pytest.mark.parametrize("rendered", ["install", "member"])
def test_watch_cluster_grants_only_list_and_watch_of_configmaps_everywhere(rendered) -> None:
    def render_with(watch_cluster: bool) -> list[dict]:
        if rendered == "install":
            return documents(render.render(["team-a"], watch_cluster=watch_cluster))
        return documents(render.render_member_rbac(["team-a"], watch_cluster=watch_cluster))

    without, with_it = render_with(False), render_with(True)
    added = [document for document in with_it if document not in without]

    assert [(d["kind"], d["metadata"]["name"]) for d in added] == [
        ("ClusterRole", "sluice-configmap-watcher"),
        ("ClusterRoleBinding", "sluice-configmap-watcher"),
    ]
    assert added[0]["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch"]}]
    sluice = {"kind": "ServiceAccount", "name": "sluice", "namespace": "sluice-system"}
    assert added[1]["subjects"] == [sluice]
    assert len(with_it) == len(without) + 2


def test_member_rbac_shares_its_documents_with_the_installation() -> None:
    """Rendering a member on the cluster Sluice runs in must change nothing there."""
    installed = documents(render.render(["team-a"]))
    member = documents(render.render_member_rbac(["team-a"]))
    for document in member:
        if document["kind"] != "Secret":
            assert document in installed, (document["kind"], document["metadata"]["name"])


def test_member_kubeconfig_reaches_the_server_with_the_token_and_the_clusters_ca() -> None:
    kubeconfig = render.member_kubeconfig(
        name="member-1", server="https://10.0.0.1:6443", ca_pem=b"-----BEGIN CERT", token="tok"
    )

    assert kubeconfig["current-context"] == "member-1"
    assert kubeconfig["contexts"] == [
        {"name": "member-1", "context": {"cluster": "member-1", "user": "member-1-sluice"}}
    ]
    (cluster,) = kubeconfig["clusters"]
    assert cluster["cluster"]["server"] == "https://10.0.0.1:6443"
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]) == b"-----BEGIN CERT"
    assert kubeconfig["users"] == [{"name": "member-1-sluice", "user": {"token": "tok"}}]


@pytest.mark.parametrize(
    "argv, complaint",
    [
        (["member-rbac", "--namespaces", "Team_A"], "'Team_A' is not a valid namespace name"),
        (["member-rbac", "--namespaces", " , "], "name at least one namespace"),
        (["member-kubeconfig", "--context", "member-1"], "the following arguments are required: --output"),
    ],
)
def test_bad_arguments_are_refused_with_the_reason(argv, complaint, capsys) -> None:
    with pytest.raises(SystemExit) as refused:
        render.main(argv)
    assert refused.value.code == 2
    assert complaint in capsys.readouterr().err


def test_without_a_subcommand_it_renders_the_installation_as_before(capsys) -> None:
    assert render.main(["--namespaces", "team-a"]) == 0
    rendered = documents(capsys.readouterr().out)
    assert {"Deployment", "Role", "RoleBinding"} <= {d["kind"] for d in rendered}
    assert not [d for d in rendered if d["kind"] == "Secret"]
