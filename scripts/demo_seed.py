"""Seeds `make demo`: a sample repository, a source, and a rollout waiting for the visitor's approval.

The stack's member clusters are registered (`member-1`, `member-2`), and the policy targets three
clusters one after the other: the canary namespace of the default cluster, then both team namespaces
of member-1, then member-2's; so the rollout goes cluster by cluster. The canary namespace runs a
`shop` Deployment that reads the sample ConfigMaps (`shop` through envFrom, `nginx` as a volume of its
sidecar), and the policy uses `consumers: restart`: the first wave restarts it and waits until it is
available again. (The member clusters run no scheduler or nodes, so they hold ConfigMaps only.)

Run with the stack's environment loaded and Django settings configured (scripts/demo.sh does both).
Safe to run again: it reuses what exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import django

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
django.setup()

from django.contrib.auth.models import Group, User  # noqa: E402
from kubernetes import client, config  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402

from gitops import cluster_admin, reconcile, source_admin  # noqa: E402
from gitops.cluster import get_cluster  # noqa: E402
from gitops.consumers.workloads import Health, health_of  # noqa: E402
from gitops.models import Cluster, Rollout, Source  # noqa: E402
from gitops.record.audit import Actor  # noqa: E402

DEFAULT_CLUSTER = os.environ.get("SLUICE_CLUSTER_NAME", "default")
MEMBERS = [name for name in os.environ.get("SLUICE_MEMBER_CLUSTERS", "member-1,member-2").split(",") if name]
CANARY = "demo-canary"  # in the default cluster, where the shop Deployment runs
TEAMS = ["demo-team-a", "demo-team-b"]  # in each member cluster
TARGETS = [CANARY]  # the namespaces with a shop Deployment
NAMESPACES = {
    DEFAULT_CLUSTER: [CANARY, "demo-flags"],
    **{member: [*TEAMS, "demo-flags"] for member in MEMBERS},
}
CONSUMER = "shop"
# kwok simulates the nodes: pods are scheduled and become Ready, no image is ever pulled.
IMAGE = "registry.example.com/demo/shop:1.0"
AUTHOR = {
    "GIT_AUTHOR_NAME": "Dana Developer",
    "GIT_AUTHOR_EMAIL": "dana@example.com",
    "GIT_COMMITTER_NAME": "Dana Developer",
    "GIT_COMMITTER_EMAIL": "dana@example.com",
}

NGINX = """worker_processes auto;
events {{ worker_connections {connections}; }}
http {{
    upstream shop {{ server shop:8080; }}
    server {{
        listen 80;
        location / {{ proxy_pass http://shop; }}
        location /healthz {{ return 200 "ok"; }}
    }}
}}
"""
PROPERTIES = """server.port=8080
shop.currency=EUR
shop.cart.max-items={max_items}
payments.timeout-ms=3000
"""


def policy(with_rollout: bool) -> str:
    members = "".join(f"  - cluster: {member}\n    namespaces: [{', '.join(TEAMS)}]\n" for member in MEMBERS)
    text = f"""targets:                     # waves walk these (cluster, namespace) pairs in this order
  - cluster: {DEFAULT_CLUSTER}
    namespaces: [{CANARY}]
{members}allowedNamespaces: ["demo-*"]
prune: true
selfHeal: true
flags:
  namespace: demo-flags      # published in every target cluster
"""
    if with_rollout:
        text += """rollout:
  consumers: restart         # restart the Deployments that read a changed ConfigMap, wave by wave
  healthTimeout: 2m          # and wait until they are available again
  steps:
    - setWeight: 20          # the default cluster's canary namespace first (20% of 5 targets: 1)
    - pause: {}              # waits for an approver
    - setWeight: 60          # member-1's two namespaces too (60% of 5: 3)
    - pause: {duration: 20s}
    - setWeight: 100         # and member-2's
approvals:
  required: 1
  forbidSelfApproval: true
"""
    return text


def flags(default: str) -> str:
    return json.dumps(
        {
            "flags": {
                "new-checkout": {
                    "state": "ENABLED",
                    "variants": {"on": True, "off": False},
                    "defaultVariant": default,
                },
                "banner-color": {
                    "state": "ENABLED",
                    "variants": {"blue": "#1f6feb", "green": "#2da44e"},
                    "defaultVariant": "blue",
                    "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "green", None]},
                },
            }
        },
        indent=2,
    )


def settings_json(retries: int) -> str:
    return json.dumps(
        {"search": {"page_size": 24, "retries": retries}, "features": ["wishlist", "gift-cards"]}, indent=2
    )


def manifest(name: str, key: str, value: str) -> str:
    indented = "".join(f"    {line}\n" for line in value.splitlines())
    header = f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  labels:\n    app: shop\n"
    return header + f"data:\n  {key}: |\n{indented}"


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **AUTHOR, "GIT_CONFIG_GLOBAL": "/dev/null"}
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def write(
    work: Path, *, connections: int, max_items: int, retries: int, checkout: str, with_rollout: bool
) -> None:
    files = {
        "sluice.yaml": policy(with_rollout),
        "configmaps/nginx.yaml": manifest("nginx", "nginx.conf", NGINX.format(connections=connections)),
        "configmaps/shop.yaml": manifest(
            "shop", "application.properties", PROPERTIES.format(max_items=max_items)
        ),
        "configmaps/search.yaml": manifest("search", "settings.json", settings_json(retries)),
        "flags/checkout.json": flags(checkout),
        "README.md": "Sample configuration repository for the Sluice demo.\n",
    }
    for path, content in files.items():
        target = work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)


def shop_deployment(namespace: str) -> dict[str, Any]:
    """The shop: its app reads the `shop` ConfigMap through envFrom, its nginx sidecar mounts `nginx`."""
    labels = {"app": CONSUMER}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": CONSUMER, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {"name": "shop", "image": IMAGE, "envFrom": [{"configMapRef": {"name": "shop"}}]},
                        {
                            "name": "nginx",
                            "image": IMAGE,
                            "volumeMounts": [{"name": "nginx-conf", "mountPath": "/etc/nginx"}],
                        },
                    ],
                    "volumes": [{"name": "nginx-conf", "configMap": {"name": "nginx"}}],
                    "terminationGracePeriodSeconds": 0,
                },
            },
        },
    }


def deploy_consumers() -> None:
    """A `shop` Deployment in each target namespace (kept when there), then waits until each is available."""
    with config.new_client_from_config(config_file=os.environ["KUBECONFIG"]) as api_client:
        apps = client.AppsV1Api(api_client)
        for namespace in TARGETS:
            try:
                apps.create_namespaced_deployment(namespace, shop_deployment(namespace))
            except ApiException as exc:
                if exc.status != 409:  # 409: it is there already
                    raise
    cluster = get_cluster()
    deadline = time.monotonic() + 120
    waiting = list(TARGETS)
    while waiting:
        waiting = [
            namespace
            for namespace in waiting
            if health_of(cluster.get_workload("Deployment", namespace, CONSUMER) or {}).health
            is not Health.HEALTHY
        ]
        if waiting and time.monotonic() > deadline:
            raise SystemExit(f"demo: the shop Deployment did not become available in {', '.join(waiting)}")
        time.sleep(0.5)  # polling the cluster with a deadline
    print(f"demo: a shop Deployment runs in {', '.join(TARGETS)}, reading the shop and nginx ConfigMaps")


def settle(source: Source) -> Rollout | None:
    """Syncs again while the canary's first wave waits for its consumers (each pass waits a while)."""
    deadline = time.monotonic() + 180
    rollout = Rollout.objects.filter(source=source).order_by("-id").first()
    while rollout is not None and rollout.waiting_for == Rollout.Waiting.CONSUMERS:
        if time.monotonic() > deadline:
            break
        reconcile.source_sync(source.pk, actor="demo")
        rollout.refresh_from_db()
    return rollout


def describe(rollout: Rollout) -> None:
    waiting = f", waiting for {rollout.waiting_for}" if rollout.waiting_for else ""
    print(f"demo: rollout {rollout.pk} is {rollout.phase}{waiting} at {rollout.weight}%")
    for cluster_name, namespaces in NAMESPACES.items():
        for namespace in namespaces:
            if namespace == "demo-flags":
                continue
            live = get_cluster(cluster_name).get_configmap(namespace, "shop") or {}
            properties = (live.get("data") or {}).get("application.properties", "")
            limit = next((line for line in properties.splitlines() if "max-items" in line), "absent")
            print(f"demo:   {cluster_name}/{namespace}: {limit}")
    for state in rollout.consumer_states:
        restarted = "restarted, " if state["restarted"] else ""
        print(
            f"demo:   {state['namespace']}: {state['name']} {restarted}{state['health']} ({state['detail']})"
        )


def register_members() -> None:
    """The stack's member clusters, by their contexts in its kubeconfig: credentials stay in that file."""
    for member in MEMBERS:
        if not Cluster.objects.filter(name=member).exists():
            cluster_admin.cluster_add(
                name=member,
                kubeconfig=os.environ["KUBECONFIG"],
                context=member,
                actor=Actor.command_line("demo-seed"),
            )
    for status in cluster_admin.clusters_status():
        state = f"reachable, {status.version}" if status.reachable else f"unreachable: {status.error}"
        print(f"demo: cluster {status.name} ({status.server}): {state}")


def main() -> int:
    data = Path(os.environ.get("SLUICE_DATA_DIR", ROOT / ".stack" / "data"))
    repo = data / "demo-repo"
    remote, work = repo / "remote.git", repo / "work"
    register_members()
    for cluster_name, namespaces in NAMESPACES.items():
        for namespace in namespaces:
            get_cluster(cluster_name).create_namespace(namespace)

    if not remote.exists():
        repo.mkdir(parents=True, exist_ok=True)
        git(repo, "init", "--quiet", "--bare", "--initial-branch=main", str(remote))
        git(repo, "init", "--quiet", "--initial-branch=main", str(work))
        git(work, "remote", "add", "origin", str(remote))
        write(work, connections=1024, max_items=50, retries=2, checkout="off", with_rollout=False)
        git(work, "add", "--all")
        git(work, "commit", "--quiet", "-m", "Initial shop configuration")
        git(work, "push", "--quiet", "origin", "HEAD:refs/heads/main")

    source = Source.objects.filter(name="shop-config").first()
    if source is None:
        source = source_admin.source_add(
            name="shop-config", url=f"file://{remote}", allowed_namespaces=["demo-*", "member-*/demo-*"]
        )
        first = reconcile.source_sync(source.pk, actor="demo")
        print(f"demo: applied the first commit: {first.outcome}")
        deploy_consumers()

        write(work, connections=4096, max_items=100, retries=3, checkout="on", with_rollout=True)
        git(work, "add", "--all")
        git(work, "commit", "--quiet", "-m", "Raise limits and turn on the new checkout, as a canary")
        git(work, "push", "--quiet", "origin", "HEAD:refs/heads/main")
        second = reconcile.source_sync(source.pk, actor="demo")
        print(f"demo: the second commit rolls out as a canary: {second.outcome}")

    user, _created = User.objects.get_or_create(username="demo", defaults={"email": "demo@example.com"})
    user.set_password("demo")
    user.is_staff = True
    user.save()
    user.groups.add(Group.objects.get(name="approver"))
    rollout = settle(source)
    if rollout is not None:
        describe(rollout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
