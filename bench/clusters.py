"""Many-clusters benchmark: a no-op reconcile of 3 clusters x N ConfigMaps against 1 cluster x 3N.

Both sources hold the same number of objects (3N) through a real Celery worker on the embedded
stack: one targets the default cluster and the two member clusters (each gets N, spread over 10
namespaces), the other puts all 3N in the default cluster. It measures, for each:
  - cold apply: the first sync of a fresh source;
  - no-op reconcile: a sync when nothing changed (median of 3), first listing every
    (cluster, namespace), then planned from the live cache (`gitops live-cache` started, every
    namespace fresh);
and prints the figures and the ratio (3 clusters / 1 cluster). The clusters are listed and applied
to side by side, so 3 x N should cost about what 3N does in one cluster, not three times N's.

Usage: python bench/clusters.py [--per-cluster 1000]
"""

from __future__ import annotations

import argparse
import os
import shutil
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

from reconcile import NAMESPACES, bench_redis, drop_database, git, manifest  # noqa: E402

CLUSTERS = ("default", "member-1", "member-2")


def write_repo(path: Path, count: int, clusters: tuple[str, ...], namespaces: list[str]) -> Path:
    """``count`` manifests with their namespace, for every cluster in ``clusters``."""
    remote, work = path / "remote.git", path / "work"
    path.mkdir(parents=True)
    git(path, "init", "--quiet", "--bare", "--initial-branch=main", str(remote))
    git(path, "init", "--quiet", "--initial-branch=main", str(work))
    listed = ", ".join(namespaces)
    policy = "targets:\n" + "".join(f"  - cluster: {c}\n    namespaces: [{listed}]\n" for c in clusters)
    (work / "sluice.yaml").write_text(policy)
    for index in range(count):
        namespace = namespaces[index % NAMESPACES]
        target = work / "configmaps" / namespace / f"cm-{index:05d}.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(manifest(f"cm-{index:05d}", namespace, index))
    git(work, "add", "--all")
    git(work, "commit", "--quiet", "-m", f"{count} configmaps x {len(clusters)} clusters")
    git(work, "remote", "add", "origin", str(remote))
    git(work, "push", "--quiet", "origin", "HEAD:refs/heads/main")
    return remote


def measure(env: dict[str, str], workdir: Path, label: str, count: int, clusters: tuple[str, ...]) -> dict:
    from gitops import source_admin
    from gitops.cluster import get_cluster, livestore
    from gitops.tasks import sync_source
    from tests.workers import LiveCacheProcess, WorkerProcess, poll

    run = uuid.uuid4().hex[:5]
    namespaces = [f"c{label}-{run}-{i}" for i in range(NAMESPACES)]
    for cluster in clusters:
        for namespace in namespaces:
            get_cluster(cluster).create_namespace(namespace)
    remote = write_repo(workdir / f"repo-{label}", count, clusters, namespaces)
    source = source_admin.source_add(
        name=f"clusters-{label}-{run}",
        url=f"file://{remote}",
        allowed_namespaces=[f"c{label}-{run}-*", f"member-*/c{label}-{run}-*"],
    )
    worker = WorkerProcess({**env, "SLUICE_DATA_DIR": str(workdir / f"data-{label}")}, concurrency=1).start()
    try:

        def timed_sync() -> tuple[float, dict]:
            started = time.perf_counter()
            result = sync_source.delay(source.pk).get(timeout=1800)
            return time.perf_counter() - started, result

        cold, result = timed_sync()
        assert result["outcome"] == "applied", result
        assert result["summary"].get("create") == count * len(clusters), result

        def noop() -> float:
            elapsed, result = timed_sync()
            assert result["outcome"] == "unchanged", result
            return elapsed

        listed = [noop() for _ in range(3)]  # no live cache yet: every (cluster, namespace) is listed
        live_cache = LiveCacheProcess(env, env_overrides={"SLUICE_LIVE_CACHE_RESCAN_SECONDS": "1"}).start()
        try:

            def fresh() -> bool:
                return all(
                    len(livestore.fresh_stamps(cluster, namespaces)) == len(namespaces)
                    for cluster in clusters
                )

            poll(fresh, timeout=120, what="the live cache to vouch for every (cluster, namespace)")
            cached = [noop() for _ in range(3)]
        finally:
            live_cache.stop()
    finally:
        worker.stop()
    return {
        "objects": count * len(clusters),
        "cold": cold,
        "noop": statistics.median(listed),
        "noop_cache": statistics.median(cached),
    }


def bench_env(stack_env: dict[str, str], database: str) -> dict[str, str]:
    """The environment of this process, its worker and its live cache: the stack's, on a database of
    the bench's own."""
    base_url = stack_env["DATABASE_URL"].rsplit("/", 1)[0]
    return {
        **os.environ,
        **stack_env,
        "DATABASE_URL": f"{base_url}/{database}",
        **bench_redis(stack_env),
        "DJANGO_SETTINGS_MODULE": "sluice.settings",
        "DEBUG": "0",  # as production runs it (see bench/reconcile.py)
        # DEBUG off needs a key; the shell that loaded .stack/env has one, CI does not.
        "SECRET_KEY": "bench-" + uuid.uuid4().hex,
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
        "SLUICE_CLUSTER_NAME": "default",
    }


def set_up(stack_env: dict[str, str], env: dict[str, str], database: str) -> None:
    """Creates and migrates the database, sets Django up in this process on it, and registers the
    member clusters."""
    import psycopg

    with psycopg.connect(stack_env["DATABASE_URL"], autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{database}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    os.environ.update(env)
    import django

    django.setup()
    from gitops import cluster_admin
    from gitops.record.audit import Actor

    for member in CLUSTERS[1:]:
        cluster_admin.cluster_add(
            name=member,
            kubeconfig=stack_env["KUBECONFIG"],
            context=member,
            actor=Actor.command_line("bench"),
        )


def report(per: int, fleet: dict, single: dict) -> None:
    """The figures of both layouts, and their ratio."""
    print(f"{'layout':>24} {'objects':>8} {'cold apply':>11} {'no-op LIST':>11} {'no-op cache':>12}")
    for name, row in (("3 clusters x " + f"{per:,}", fleet), ("1 cluster x " + f"{3 * per:,}", single)):
        print(
            f"{name:>24} {row['objects']:>8} {row['cold']:>10.2f}s {row['noop']:>10.2f}s"
            f" {row['noop_cache']:>11.2f}s"
        )
    print(
        f"ratio (3 clusters / 1 cluster): cold apply {fleet['cold'] / single['cold']:.2f}x, "
        f"no-op LIST {fleet['noop'] / single['noop']:.2f}x, "
        f"no-op from the live cache {fleet['noop_cache'] / single['noop_cache']:.2f}x"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-cluster", type=int, default=1000)
    args = parser.parse_args()

    from devstack import Stack

    stack = Stack()
    started_stack = not stack.is_up()
    stack_env = stack.up()
    workdir = Path(tempfile.mkdtemp(prefix="sluice-bench-clusters-"))
    database = f"sluice_bench_{uuid.uuid4().hex[:6]}"
    env = bench_env(stack_env, database)
    try:
        set_up(stack_env, env, database)
        per = args.per_cluster
        print(f"-- no-op reconcile: 3 clusters x {per:,} ConfigMaps vs 1 cluster x {3 * per:,}", flush=True)
        fleet = measure(env, workdir, "fleet", per, CLUSTERS)
        single = measure(env, workdir, "single", 3 * per, CLUSTERS[:1])
        report(per, fleet, single)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        drop_database(stack_env["DATABASE_URL"], database)
        if started_stack:
            stack.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
