#!/usr/bin/env python3
"""Print Sluice's Kubernetes manifests for the namespaces it should manage.

    python deploy/render.py --namespaces team-a,team-b [--image registry/sluice:0.1.0] | kubectl apply -f -

The fixed part (namespace, ServiceAccounts, read-only ClusterRole, Deployments, Service,
NetworkPolicies) lives as plain YAML in deploy/kubernetes/. What depends on your cluster
is generated: in each listed namespace, two Roles and their RoleBindings for the worker's
`sluice` ServiceAccount, and nowhere else:

- `sluice-configmaps`: manage ConfigMaps (the only objects Sluice creates);
- `sluice-workloads`: get, list, watch and patch Deployments, StatefulSets and DaemonSets,
  which a rollout with `consumers: watch|restart` waits on, and restarts by a server-side
  apply of two pod-template annotations. No create or delete: Sluice never makes or removes
  a workload (a server-side apply that would create one is refused).

List every target namespace of every source, the flag-set namespaces included. Nothing
grants access to Secrets or Pods, and the web pods' `sluice-web` ServiceAccount is granted
nothing.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

MANIFESTS = Path(__file__).resolve().parent / "kubernetes"
SYSTEM_NAMESPACE = "sluice-system"
SERVICE_ACCOUNT = "sluice"
DEFAULT_IMAGE = "sluice:0.1.0"
ROLE_NAME = "sluice-configmaps"
WORKLOAD_ROLE_NAME = "sluice-workloads"
# RFC 1123 label, what Kubernetes accepts as a namespace name.
NAMESPACE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABELS = {"app.kubernetes.io/name": "sluice"}


def namespace_list(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one namespace")
    for name in names:
        if not NAMESPACE_NAME.match(name):
            raise argparse.ArgumentTypeError(f"{name!r} is not a valid namespace name")
    return list(dict.fromkeys(names))  # drop repeats, keep the order


def static_manifests(image: str) -> Iterator[dict[str, Any]]:
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
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
            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
        }
    ],
    # The consumers of those ConfigMaps: watched for health, restarted by a pod-template stamp.
    WORKLOAD_ROLE_NAME: [
        {
            "apiGroups": ["apps"],
            "resources": ["deployments", "statefulsets", "daemonsets"],
            "verbs": ["get", "list", "watch", "patch"],
        }
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


def render(namespaces: list[str], image: str = DEFAULT_IMAGE) -> str:
    documents = list(static_manifests(image))
    for namespace in namespaces:
        documents.extend(namespace_access(namespace))
    return yaml.dump_all(documents, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False)


class _PlainDumper(yaml.SafeDumper):
    """Writes shared sub-objects out in full rather than as YAML anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--namespaces",
        required=True,
        type=namespace_list,
        help="comma-separated namespaces Sluice may write ConfigMaps to (and restart their consumers in)",
    )
    parser.add_argument("--image", default=DEFAULT_IMAGE, help=f"Sluice image (default {DEFAULT_IMAGE})")
    args = parser.parse_args(argv)
    sys.stdout.write(render(args.namespaces, args.image))
    return 0


if __name__ == "__main__":
    sys.exit(main())
