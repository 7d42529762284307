"""Consumer gate benchmark: how long after its workloads become available does a step's gate open?

On the embedded stack (kube-scheduler, kube-controller-manager and kwok nodes),
a source with ``consumers: restart`` rolls a ConfigMap read by N Deployments
out in one step, through a real Celery worker. For each run this process
watches the Deployments itself and notes when the last one became available
(its new ReplicaSet rolled out); the gate's opening is the rollout event Sluice
records. The difference is the gate's latency; the table gives p50 and p95
over the runs, and the whole step's time for reference.

Usage: python bench/consumer_gate.py [--deployments 50] [--runs 10]
Target (issue 12): the gate opens within a second of the workload becoming healthy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reconcile import bench_redis, drop_database, git  # noqa: E402 - bench/reconcile.py, beside this script

IMAGE = "registry.example.com/sluice/consumer:1"


def deployment(name: str) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {"name": "app", "image": IMAGE, "envFrom": [{"configMapRef": {"name": "app"}}]}
                    ],
                    "terminationGracePeriodSeconds": 0,
                },
            },
        },
    }


def head(work: Path) -> str:
    return git(work, "rev-parse", "HEAD").strip()


def write(work: Path, namespace: str, version: int) -> None:
    (work / "sluice.yaml").write_text(
        f"targets:\n  namespaces: [{namespace}]\nrollout:\n  consumers: restart\n  healthTimeout: 5m\n"
    )
    (work / "configmaps").mkdir(exist_ok=True)
    (work / "configmaps" / "app.yaml").write_text(
        f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  VERSION: '{version}'\n"
    )


class AvailabilityWatch:
    """Notes, per Deployment, when it last became available for the generation it was asked for."""

    def __init__(self, apps, namespace: str) -> None:
        from kubernetes import watch

        self.available_at: dict[str, float] = {}
        self._stopped = False
        self._watch = watch.Watch()
        self._apps, self._namespace = apps, namespace
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from urllib3.exceptions import HTTPError

        from gitops.consumers.workloads import Health, health_of

        while not self._stopped:
            listed = self._apps.list_namespaced_deployment(self._namespace, _preload_content=False)
            version = json.loads(listed.data)["metadata"]["resourceVersion"]
            stream = self._watch.stream(
                self._apps.list_namespaced_deployment,
                self._namespace,
                resource_version=version,
                timeout_seconds=300,
            )
            try:
                for event in stream:
                    raw = {**event["raw_object"], "kind": "Deployment"}
                    if health_of(raw).health is Health.HEALTHY:
                        key = f"{raw['metadata']['name']}@{raw['metadata']['generation']}"
                        self.available_at.setdefault(key, time.time())
            except HTTPError:
                continue  # the watch broke off: list and watch again

    def last_available(self, names: list[str], generation: int) -> float:
        return max(self.available_at[f"{name}@{generation}"] for name in names)

    def stop(self) -> None:
        self._stopped = True
        self._watch.stop()


def run(env: dict[str, str], workdir: Path, deployments: int, runs: int) -> list[tuple[float, float]]:
    from kubernetes import client, config

    from gitops import source_admin
    from gitops.cluster import get_cluster
    from gitops.models import Rollout, RolloutEvent
    from gitops.tasks import sync_source
    from tests.workers import WorkerProcess, poll

    namespace = f"gate-{uuid.uuid4().hex[:6]}"
    get_cluster().create_namespace(namespace)
    remote, work = workdir / "remote.git", workdir / "work"
    git(workdir, "init", "--quiet", "--bare", "--initial-branch=main", str(remote))
    git(workdir, "init", "--quiet", "--initial-branch=main", str(work))
    git(work, "remote", "add", "origin", str(remote))
    write(work, namespace, 0)
    git(work, "add", "--all")
    git(work, "commit", "--quiet", "-m", "v0")
    git(work, "push", "--quiet", "origin", "HEAD:refs/heads/main")
    source = source_admin.source_add(name=namespace, url=f"file://{remote}", allowed_namespaces=[namespace])
    worker = WorkerProcess({**env, "SLUICE_DATA_DIR": str(workdir / "data")}, concurrency=1).start()
    apps = client.AppsV1Api(config.new_client_from_config(config_file=env["KUBECONFIG"]))
    names = [f"consumer-{index:03d}" for index in range(deployments)]
    watcher = AvailabilityWatch(apps, namespace)
    results = []
    try:
        sync_source.delay(source.pk).get(timeout=300)
        for name in names:
            apps.create_namespaced_deployment(namespace, deployment(name))
        poll(lambda: all(f"{n}@1" in watcher.available_at for n in names), timeout=300, what="the consumers")
        for version in range(1, runs + 1):
            write(work, namespace, version)
            git(work, "commit", "--quiet", "-am", f"v{version}")
            git(work, "push", "--quiet", "origin", "HEAD:refs/heads/main")
            started = time.time()
            sync_source.delay(source.pk).get(timeout=600)
            # A wave that outlasts one pass is watched on by the next: wait for the rollout to complete.
            rollout = poll(
                lambda: Rollout.objects.filter(
                    source=source, phase="Completed", revision__commit=head(work)
                ).first(),
                timeout=600,
                what="the rollout to complete",
            )
            opened = RolloutEvent.objects.filter(
                rollout=rollout, kind="consumers", message__startswith="healthy"
            ).get()
            last = watcher.last_available(names, version + 1)
            results.append((opened.at.timestamp() - last, opened.at.timestamp() - started))
            print(
                f"run {version}: gate opened {results[-1][0] * 1000:.0f} ms after the last workload was available;"
                f" step took {results[-1][1]:.1f}s",
                flush=True,
            )
    finally:
        watcher.stop()
        worker.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deployments", type=int, default=50)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()

    from devstack import Stack

    stack = Stack()
    started_stack = not stack.is_up()
    stack_env = stack.up()
    workdir = Path(tempfile.mkdtemp(prefix="sluice-gate-"))
    database = f"sluice_gate_{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        **stack_env,
        "DATABASE_URL": f"{stack_env['DATABASE_URL'].rsplit('/', 1)[0]}/{database}",
        **bench_redis(stack_env),
        "DJANGO_SETTINGS_MODULE": "sluice.settings",
        "DEBUG": "0",  # as production runs it (see bench/reconcile.py)
        # DEBUG off needs a key; the shell that loaded .stack/env has one, CI does not.
        "SECRET_KEY": "bench-" + uuid.uuid4().hex,
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
        "SLUICE_CONSUMER_GATE_SLICE_SECONDS": "60",
    }
    try:
        import psycopg

        with psycopg.connect(stack_env["DATABASE_URL"], autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{database}"')
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        os.environ.update(env)
        import django

        django.setup()
        results = run(env, workdir, args.deployments, args.runs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        drop_database(stack_env["DATABASE_URL"], database)
        if started_stack:
            stack.down()
    latencies = sorted(latency for latency, _ in results)
    steps = sorted(step for _, step in results)
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    print(f"\n== {args.deployments} consuming Deployments, {len(results)} runs")
    print(
        f"gate latency after the last workload is available: p50 {statistics.median(latencies) * 1000:.0f} ms,"
        f" p95 {p95 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
    )
    print(
        f"whole step (apply, restart {args.deployments}, wait): p50 {statistics.median(steps):.1f}s, max {steps[-1]:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
