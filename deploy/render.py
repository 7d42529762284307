#!/usr/bin/env python3
"""Print Sluice's Kubernetes manifests, and what a member cluster needs.

    python deploy/render.py --namespaces team-a,team-b [--image registry/sluice:0.1.0] | kubectl apply -f -
    python deploy/render.py member-rbac --namespaces team-a,team-b | kubectl --context member-1 apply -f -
    python deploy/render.py member-kubeconfig --context member-1 --output member-1.kubeconfig

**Installing Sluice** (no subcommand). The fixed part (namespace, ServiceAccounts, read-only
ClusterRole, Deployments, Service, NetworkPolicies) lives as plain YAML in deploy/kubernetes/.
What depends on your cluster is generated: in each listed namespace, two Roles and their
RoleBindings for the worker's `sluice` ServiceAccount, and nowhere else:

- `sluice-configmaps`: manage ConfigMaps (the only objects Sluice creates);
- `sluice-workloads`: get, list, watch and patch Deployments, StatefulSets and DaemonSets,
  which a rollout with `consumers: watch|restart` waits on, and restarts by a server-side
  apply of two pod-template annotations. No create or delete: Sluice never makes or removes
  a workload (a server-side apply that would create one is refused).

List every target namespace of every source, the flag-set namespaces included. Nothing
grants access to Secrets or Pods, and the web pods' `sluice-web` ServiceAccount is granted
nothing.

**member-rbac**: what a member cluster (one Sluice reaches from outside) needs: the
`sluice-system` namespace, the `sluice` ServiceAccount, the namespace reader, the same two
Roles in each listed namespace, and a long-lived token Secret `sluice-token` that the
cluster's token controller fills in. No Deployment: Sluice runs elsewhere.

**member-kubeconfig**: reads that Secret with your own (admin) kubeconfig context and writes
a kubeconfig for Sluice: the context's server, the cluster's CA and the ServiceAccount's
token. The token goes only into the file (mode 0600), never to the terminal; the file is
checked (it must authenticate as the ServiceAccount) before it replaces any older one.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

try:  # member-kubeconfig talks to the cluster; rendering needs PyYAML alone (a workstation without the venv)
    import urllib3
    from kubernetes import client, config, watch
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException
except ImportError as missing:  # pragma: no cover - exercised by hand, without the venv
    KUBERNETES_MISSING: ImportError | None = missing
else:
    KUBERNETES_MISSING = None

MANIFESTS = Path(__file__).resolve().parent / "kubernetes"
SYSTEM_NAMESPACE = "sluice-system"
SERVICE_ACCOUNT = "sluice"
SERVICE_ACCOUNT_USER = f"system:serviceaccount:{SYSTEM_NAMESPACE}:{SERVICE_ACCOUNT}"
TOKEN_SECRET = "sluice-token"  # noqa: S105 (the Secret's name, not a password)
DEFAULT_IMAGE = "sluice:0.1.0"
ROLE_NAME = "sluice-configmaps"
WORKLOAD_ROLE_NAME = "sluice-workloads"
# RFC 1123 label, what Kubernetes accepts as a namespace name.
NAMESPACE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABELS = {"app.kubernetes.io/name": "sluice"}
# The objects of deploy/kubernetes/ a member cluster needs too: Sluice's identity and the
# namespace reader (it checks that target namespaces exist). Identical documents, so
# rendering a member on the cluster Sluice runs in changes nothing there.
MEMBER_STATIC_OBJECTS = {
    ("Namespace", SYSTEM_NAMESPACE),
    ("ServiceAccount", SERVICE_ACCOUNT),
    ("ClusterRole", "sluice-namespace-reader"),
    ("ClusterRoleBinding", "sluice-namespace-reader"),
}
# Seconds to wait for a connection and for an answer from the API server.
REQUEST_TIMEOUT = (5, 30)


class RenderError(Exception):
    """What went wrong, said for the operator; never carries a token."""


def namespace_list(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one namespace")
    for name in names:
        if not NAMESPACE_NAME.match(name):
            raise argparse.ArgumentTypeError(f"{name!r} is not a valid namespace name")
    return list(dict.fromkeys(names))  # drop repeats, keep the order


def static_documents() -> Iterator[dict[str, Any]]:
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield document


def static_manifests(image: str) -> Iterator[dict[str, Any]]:
    for document in static_documents():
        yield with_image(document, image)


def with_image(document: dict[str, Any], image: str) -> dict[str, Any]:
    pod = document.get("spec", {}).get("template", {}).get("spec", {})
    for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        container["image"] = image
    return document


# What the worker may do in each listed namespace, by Role name.
NAMESPACE_RULES: dict[str, list[dict[str, list[str]]]] = {
    # Full control of ConfigMaps: the only objects Sluice writes.
    ROLE_NAME: [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "verbs": ["get", "list", "watch", "create", "patch", "delete"],
        }
    ],
    # The consumers of those ConfigMaps: watched for health, restarted by a pod-template stamp.
    WORKLOAD_ROLE_NAME: [
        {
            "apiGroups": ["apps"],
            "resources": ["deployments", "statefulsets", "daemonsets"],
            "verbs": ["get", "list", "watch", "patch"],
        },
        # Argo Rollouts' Rollouts, where it is installed; a grant on a group a cluster lacks is harmless.
        {
            "apiGroups": ["argoproj.io"],
            "resources": ["rollouts"],
            "verbs": ["get", "list", "watch", "patch"],
        },
    ],
}


def namespace_access(namespace: str) -> Iterator[dict[str, Any]]:
    """The worker's Roles in one namespace, each bound to its ServiceAccount there."""
    for role, rules in NAMESPACE_RULES.items():
        yield {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": role, "namespace": namespace, "labels": dict(LABELS)},
            "rules": rules,
        }
        yield {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": role, "namespace": namespace, "labels": dict(LABELS)},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": SYSTEM_NAMESPACE}],
        }


WATCHER_ROLE_NAME = "sluice-configmap-watcher"
RBAC_GROUP = "rbac.authorization.k8s.io"


def cluster_watch_access() -> Iterator[dict[str, Any]]:
    """``--watch-cluster``: list and watch ConfigMaps in every namespace, so the live cache runs one
    watch for the cluster instead of one per namespace. Reading, not writing: writes stay in the
    listed namespaces. Without it the live cache is refused the cluster-wide read and watches each
    namespace Sluice applied to."""
    yield {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": WATCHER_ROLE_NAME, "labels": dict(LABELS)},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch"]}],
    }
    yield {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": WATCHER_ROLE_NAME, "labels": dict(LABELS)},
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": WATCHER_ROLE_NAME},
        "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": SYSTEM_NAMESPACE}],
    }


def dump(documents: list[dict[str, Any]]) -> str:
    return yaml.dump_all(documents, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False)


def render(namespaces: list[str], image: str = DEFAULT_IMAGE, *, watch_cluster: bool = False) -> str:
    documents = list(static_manifests(image))
    if watch_cluster:
        documents.extend(cluster_watch_access())
    for namespace in namespaces:
        documents.extend(namespace_access(namespace))
    return dump(documents)


class _PlainDumper(yaml.SafeDumper):
    """Writes shared sub-objects out in full rather than as YAML anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


# -- a member cluster ------------------------------------------------------------------------


def token_secret() -> dict[str, Any]:
    """A long-lived token for the ServiceAccount: the cluster's token controller fills in
    `token` and `ca.crt`. Deleting the Secret revokes the token; applying it again makes a new one."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/service-account-token",
        "metadata": {
            "name": TOKEN_SECRET,
            "namespace": SYSTEM_NAMESPACE,
            "labels": dict(LABELS),
            "annotations": {"kubernetes.io/service-account.name": SERVICE_ACCOUNT},
        },
    }


def render_member_rbac(namespaces: list[str], *, watch_cluster: bool = False) -> str:
    documents = [
        document
        for document in static_documents()
        if (document["kind"], document["metadata"]["name"]) in MEMBER_STATIC_OBJECTS
    ]
    # After the ServiceAccount: the token controller deletes a token Secret whose account is missing.
    documents.append(token_secret())
    if watch_cluster:
        documents.extend(cluster_watch_access())
    for namespace in namespaces:
        documents.extend(namespace_access(namespace))
    return dump(documents)


def member_kubeconfig(*, name: str, server: str, ca_pem: bytes, token: str) -> dict[str, Any]:
    """A kubeconfig with one context, `name`, that reaches `server` as the ServiceAccount."""
    user = f"{name}-{SERVICE_ACCOUNT}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode("ascii"),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": user}}],
        "current-context": name,
    }


def _describe_api_error(exc: ApiException, context: str, what: str) -> str:
    # Only the status and reason: an answer's body is not ours to print.
    return f"context {context!r}: {what}: the API server answered {exc.status} {exc.reason}"


def _api_call(context: str, what: str, call: Callable[[], Any], *, missing: str | None = None) -> Any:
    """Runs one call; an API or network failure becomes a RenderError that says what was tried."""
    try:
        return call()
    except ApiException as exc:
        if exc.status == 404 and missing:
            raise RenderError(f"context {context!r}: {missing}") from None
        raise RenderError(_describe_api_error(exc, context, what)) from None
    except urllib3.exceptions.HTTPError as exc:
        raise RenderError(
            f"context {context!r}: {what}: cannot reach the API server ({type(exc).__name__})"
        ) from None


def _token_in(secret: client.V1Secret) -> tuple[str, bytes] | None:
    data = secret.data or {}
    if not data.get("token"):
        return None
    return base64.b64decode(data["token"]).decode("ascii"), base64.b64decode(data.get("ca.crt") or "")


def read_token(
    core: client.CoreV1Api,
    context: str,
    wait_seconds: int,
    *,
    namespace: str = SYSTEM_NAMESPACE,
    name: str = TOKEN_SECRET,
) -> tuple[str, bytes]:
    """A ServiceAccount's token and the cluster's CA from its token Secret, once they are filled in."""
    where = f"{namespace}/{name}"
    secret = _api_call(
        context,
        f"reading the Secret {where}",
        lambda: core.read_namespaced_secret(name, namespace, _request_timeout=REQUEST_TIMEOUT),
        missing=f"there is no Secret {where}; apply `render.py member-rbac` there first",
    )
    found = _token_in(secret)
    if found:
        return found
    # Not filled in yet: watch it rather than ask again and again.
    events = watch.Watch().stream(
        core.list_namespaced_secret,
        namespace,
        field_selector=f"metadata.name={name}",
        resource_version=secret.metadata.resource_version,
        timeout_seconds=wait_seconds,
        _request_timeout=(REQUEST_TIMEOUT[0], wait_seconds + 5),
    )
    filled: tuple[str, bytes] | None = _api_call(
        context, f"waiting for the token in {where}", lambda: _first_token(events)
    )
    if filled:
        return filled
    raise RenderError(
        f"context {context!r}: the cluster did not fill in a token for {where} within {wait_seconds} s"
        " (is its kube-controller-manager running the serviceaccount-token controller?)"
    )


def _first_token(events: Iterator[dict[str, Any]]) -> tuple[str, bytes] | None:
    for event in events:
        # ERROR events carry a Status, not a Secret; the stream ends at the timeout either way.
        if event["type"] in ("ADDED", "MODIFIED") and (found := _token_in(event["object"])):
            return found
    return None


def admin_connection(kubeconfig: str | None, context: str) -> tuple[client.ApiClient, str, bytes]:
    """Your own client for `context`, its server, and the CA your kubeconfig trusts it with."""
    configuration = client.Configuration()
    try:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    except (ConfigException, OSError) as exc:
        raise RenderError(
            f"cannot use context {context!r} of {kubeconfig or 'the default kubeconfig'}: {exc}"
        ) from None
    ca_pem = Path(configuration.ssl_ca_cert).read_bytes() if configuration.ssl_ca_cert else b""
    return client.ApiClient(configuration), configuration.host, ca_pem


def authenticated_user(kubeconfig: Path, context: str) -> str:
    """Who the API server takes the holder of `kubeconfig` for (a SelfSubjectReview)."""
    with config.new_client_from_config(config_file=str(kubeconfig), context=context) as api:
        review = _api_call(
            context,
            "checking the new kubeconfig",
            lambda: client.AuthenticationV1Api(api).create_self_subject_review(
                client.V1SelfSubjectReview(), _request_timeout=REQUEST_TIMEOUT
            ),
        )
    return str(review.status.user_info.username)


def staged_private_file(destination: Path, text: str) -> Path:
    """`text` in a new file beside `destination` that only its owner can read (mkstemp: mode 0600)."""
    try:
        descriptor, staged = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.")
    except OSError as exc:
        raise RenderError(f"cannot write {destination}: {exc.strerror}") from None
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    return Path(staged)


def write_member_kubeconfig(args: argparse.Namespace) -> str:
    """Writes the ServiceAccount's kubeconfig to `args.output`; returns a summary without the token."""
    name = args.name or args.context
    api, server, admin_ca = admin_connection(args.kubeconfig, args.context)
    with api:
        token, cluster_ca = read_token(client.CoreV1Api(api), args.context, args.wait)
    # The CA the cluster itself publishes with the token; an old cluster may leave it empty.
    ca_pem = cluster_ca or admin_ca
    if not ca_pem:
        raise RenderError(f"context {args.context!r}: neither the token Secret nor your kubeconfig has a CA")
    kubeconfig = member_kubeconfig(name=name, server=args.server or server, ca_pem=ca_pem, token=token)
    staged = staged_private_file(args.output, yaml.safe_dump(kubeconfig, sort_keys=False))
    try:
        who = "not checked (--skip-check)"
        if not args.skip_check:
            who = authenticated_user(staged, name)
            if who != SERVICE_ACCOUNT_USER:
                raise RenderError(
                    f"the new kubeconfig authenticates as {who!r}, not {SERVICE_ACCOUNT_USER!r}"
                )
            who = f"authenticates as {who}"
        os.replace(staged, args.output)
    finally:
        staged.unlink(missing_ok=True)
    return f"wrote {args.output} (mode 0600): context {name}, server {args.server or server}, {who}"


# -- the command line ------------------------------------------------------------------------


def _namespaces_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--namespaces",
        required=True,
        type=namespace_list,
        help="comma-separated namespaces Sluice may write ConfigMaps to (and restart their consumers in)",
    )
    parser.add_argument(
        "--watch-cluster",
        action="store_true",
        help=f"also grant list and watch of ConfigMaps in every namespace (ClusterRole {WATCHER_ROLE_NAME}),"
        " so the live cache runs one watch for the cluster rather than one per namespace",
    )


def install_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="render.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _namespaces_option(parser)
    parser.add_argument("--image", default=DEFAULT_IMAGE, help=f"Sluice image (default {DEFAULT_IMAGE})")
    args = parser.parse_args(argv)
    sys.stdout.write(render(args.namespaces, args.image, watch_cluster=args.watch_cluster))
    return 0


def member_rbac_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="render.py member-rbac",
        description="Print what a member cluster needs: Sluice's ServiceAccount and its token Secret,"
        " the namespace reader, and the ConfigMap and workload Roles in each listed namespace.",
    )
    _namespaces_option(parser)
    args = parser.parse_args(argv)
    sys.stdout.write(render_member_rbac(args.namespaces, watch_cluster=args.watch_cluster))
    return 0


def member_kubeconfig_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="render.py member-kubeconfig",
        description="Write a kubeconfig that reaches a member cluster as Sluice's ServiceAccount, from"
        f" the token in its Secret {SYSTEM_NAMESPACE}/{TOKEN_SECRET} (apply `render.py member-rbac` first).",
    )
    parser.add_argument("--context", required=True, help="your own context for the member cluster")
    parser.add_argument("--output", required=True, type=Path, help="the kubeconfig to write (mode 0600)")
    parser.add_argument("--kubeconfig", help="your kubeconfig (default: $KUBECONFIG, then ~/.kube/config)")
    parser.add_argument("--name", help="the cluster, user and context name in the file (default: --context)")
    parser.add_argument("--server", help="the API server URL Sluice should use (default: the context's)")
    parser.add_argument("--wait", type=int, default=60, help="seconds to wait for the token (default 60)")
    parser.add_argument(
        "--skip-check",
        action="store_true",
        help="do not check that the file authenticates (when --server is reachable only from Sluice)",
    )
    args = parser.parse_args(argv)
    if KUBERNETES_MISSING is not None:
        parser.exit(
            1,
            f"{parser.prog}: error: needs the kubernetes client (pip install kubernetes): "
            f"{KUBERNETES_MISSING}\n",
        )
    try:
        print(write_member_kubeconfig(args))
    except RenderError as exc:
        parser.exit(1, f"{parser.prog}: error: {exc}\n")
    return 0


SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    "member-rbac": member_rbac_main,
    "member-kubeconfig": member_kubeconfig_main,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    return install_main(argv)


if __name__ == "__main__":
    sys.exit(main())
