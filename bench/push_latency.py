"""Push-to-cluster latency: from `git push` returning to the object changing in kube-apiserver.

A bare repository with Sluice's post-receive hook, a real web server (Django's
runserver) receiving the signed webhook, a real Celery worker reconciling, and
the embedded kube-apiserver. The repo holds 1,000 ConfigMaps; each of the 50
pushes changes one of them. Prints p50/p95, and the worker's own reconcile
time, to show where the time goes.

Usage: python bench/push_latency.py [--pushes 50] [--configmaps 1000]
Targets (issue #15): p50 <= 150 ms, p95 <= 400 ms (issue #6 had p50 <= 300 ms, p95 <= 1 s).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from reconcile import bench_redis  # noqa: E402 - bench/reconcile.py, beside this script

NAMESPACE_COUNT = 10


def git(cwd: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Bench",
        "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "Bench",
        "GIT_COMMITTER_EMAIL": "bench@example.com",
        "GIT_CONFIG_GLOBAL": "/dev/null",
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def manifest(index: int, namespace: str, value: str) -> str:
    return (
        f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{index:04d}\n  namespace: {namespace}\n"
        f'data:\n  VALUE: "{value}"\n  LOG_LEVEL: info\n'
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pushes", type=int, default=50)
    parser.add_argument("--configmaps", type=int, default=1000)
    args = parser.parse_args()

    from devstack import Stack

    stack = Stack()
    started_stack = not stack.is_up()
    stack_env = stack.up()
    workdir = Path(tempfile.mkdtemp(prefix="sluice-push-"))
    database = f"sluice_push_{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        **stack_env,
        "DATABASE_URL": stack_env["DATABASE_URL"].rsplit("/", 1)[0] + "/" + database,
        **bench_redis(stack_env),
        "DJANGO_SETTINGS_MODULE": "sluice.settings",
        "DEBUG": "0",
        "SLUICE_ALLOW_HTTP": "1",  # the post-receive hook posts over plain HTTP to 127.0.0.1
        "SECRET_KEY": "bench-" + uuid.uuid4().hex,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "INFO",
        "SLUICE_DATA_DIR": str(workdir / "data"),
        "PYTHONPATH": str(ROOT),
    }
    processes: list[subprocess.Popen[bytes]] = []
    created: list[str] = []  # namespaces in the default cluster, deleted at the end
    try:
        import psycopg

        with psycopg.connect(stack_env["DATABASE_URL"], autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{database}"')
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        os.environ.update(env)
        import django

        django.setup()
        from gitops import source_admin
        from gitops.cluster import get_cluster
        from gitops.intake import webhook_secrets

        run = uuid.uuid4().hex[:5]
        namespaces = [f"push-{run}-{i}" for i in range(NAMESPACE_COUNT)]
        created.extend(namespaces)
        for namespace in namespaces:
            get_cluster().create_namespace(namespace)
        remote, work = workdir / "remote.git", workdir / "work"
        git(workdir, "init", "--quiet", "--bare", "--initial-branch=main", str(remote))
        git(workdir, "init", "--quiet", "--initial-branch=main", str(work))
        (work / "sluice.yaml").write_text("targets:\n  namespaces: [" + ", ".join(namespaces) + "]\n")
        for index in range(args.configmaps):
            namespace = namespaces[index % NAMESPACE_COUNT]
            path = work / "configmaps" / f"cm-{index:04d}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(manifest(index, namespace, "0"))
        git(work, "add", "--all")
        git(work, "commit", "--quiet", "-m", "initial")
        git(work, "remote", "add", "origin", str(remote))
        git(work, "push", "--quiet", "origin", "HEAD:refs/heads/main")

        source = source_admin.source_add(name=f"push-{run}", url=f"file://{remote}", allowed_namespaces=["*"])
        secret = webhook_secrets.webhook_secret_rotate(source)
        port = free_port()
        logs = workdir / "logs"
        logs.mkdir()
        worker_log = logs / "worker.log"
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "gitops",
                    "worker",
                    "--concurrency=2",
                    "--loglevel=INFO",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
                cwd=ROOT,
                env=env,
                stdout=open(worker_log, "wb"),
                stderr=subprocess.STDOUT,
            )
        )
        processes.append(  # the live cache, as deployed: planning reads what it vouches for
            subprocess.Popen(
                [sys.executable, "manage.py", "gitops", "live-cache"],
                cwd=ROOT,
                env={**env, "SLUICE_LIVE_CACHE_RESCAN_SECONDS": "1"},
                stdout=open(logs / "live-cache.log", "wb"),
                stderr=subprocess.STDOUT,
            )
        )
        processes.append(
            subprocess.Popen(
                [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
                cwd=ROOT,
                env=env,
                stdout=open(logs / "web.log", "wb"),
                stderr=subprocess.STDOUT,
            )
        )
        from gitops.tasks import sync_source

        started = time.perf_counter()
        assert sync_source.delay(source.pk).get(timeout=600)["outcome"] in ("applied", "completed")
        print(f"initial sync of {args.configmaps} ConfigMaps: {time.perf_counter() - started:.1f}s")

        hook = remote / "hooks" / "post-receive"
        shutil.copy(ROOT / "scripts" / "post-receive", hook)
        hook.chmod(0o755)
        git(remote, "config", "sluice.url", f"http://127.0.0.1:{port}/webhooks/git/{source.name}")
        git(remote, "config", "sluice.secret", secret)
        deadline = time.monotonic() + 30
        while True:  # the web server is up once it answers
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

        cluster = get_cluster()
        latencies: list[float] = []
        for push in range(1, args.pushes + 1):
            index = (push * 37) % args.configmaps
            namespace = namespaces[index % NAMESPACE_COUNT]
            (work / "configmaps" / f"cm-{index:04d}.yaml").write_text(manifest(index, namespace, str(push)))
            git(work, "commit", "--quiet", "-am", f"push {push}")
            git(work, "push", "--quiet", "origin", "HEAD:refs/heads/main")
            pushed = time.perf_counter()
            while True:
                live = cluster.get_configmap(namespace, f"cm-{index:04d}")
                if live and live["data"]["VALUE"] == str(push):
                    break
                if time.perf_counter() - pushed > 30:
                    raise RuntimeError(f"push {push} did not arrive within 30 s; see {worker_log}")
                time.sleep(0.002)  # polling the apiserver, which is what is measured
            latencies.append((time.perf_counter() - pushed) * 1000)

        reconciles = [
            float(m) * 1000
            for m in re.findall(r"reconciled source=\S+ .* in ([0-9.]+)s", worker_log.read_text())
        ]
        print(f"{len(latencies)} pushes, one ConfigMap changed each, {args.configmaps} in the repo")
        print(
            f"push -> object changed:   p50 {statistics.median(latencies):6.0f} ms   p95 {percentile(latencies, 0.95):6.0f} ms"
            f"   max {max(latencies):6.0f} ms   (targets: p50 <= 150, p95 <= 400)"
        )
        if reconciles:
            print(
                f"worker reconcile (fetch, diff, apply, record): p50 {statistics.median(reconciles):6.0f} ms"
                f"   p95 {percentile(reconciles, 0.95):6.0f} ms   ({len(reconciles)} runs)"
            )
            print(
                "the rest is the hook's POST, the web request, queueing through Redis and the worker picking it up"
            )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # noqa: S110 - django may not be set up yet
            pass
        import psycopg

        with psycopg.connect(stack_env["DATABASE_URL"], autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        shutil.rmtree(workdir, ignore_errors=True)
        if started_stack:
            stack.down()
        else:  # a stack kept up would hold these ConfigMaps for every later run to list
            from reconcile import delete_namespaces  # bench/reconcile.py, beside this script

            delete_namespaces(created, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
