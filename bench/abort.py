"""Abort at scale: the rollback of a rollout that created N ConfigMaps, against `kubectl delete` of them.

A source applies one ConfigMap in each of 10 namespaces; its next commit adds N more (spread over the
same namespaces) with a rollout of ``[setWeight: 100, pause: {}]``, whose first step creates all N and
then waits for a person. An abort (as ``gitops abort`` asks it) rolls the step back: the rollback deletes
the N objects the rollout created. It is timed from the request to the rollout's end (Aborted), through
a real Celery worker with the live cache running, with the worker's and the default cluster's
kube-apiserver's CPU per 1,000 deletes. The peer: the same N manifests applied by kubectl in namespaces
of their own, then ``kubectl delete --wait=false`` of them (one DELETE each), in the same run.

An abort is what an on-call approver reaches for when a step hurts: its time is the incident's.

Usage: python bench/abort.py [--sizes 1000,5000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reconcile import (
    NAMESPACES,
    Bench,
    apiserver_cpu,
    bench_environment,
    cpu_seconds,
    git,
    live_cache_listing,
    manifest,
    process_tree,
)

STEPS = "rollout:\n  steps:\n    - setWeight: 100\n    - pause: {}\n"


def write_seed(work: Path, namespaces: list[str]) -> None:
    """The first commit: one ConfigMap in each namespace, applied whole (no rollout yet)."""
    policy = "targets:\n  namespaces: [" + ", ".join(namespaces) + "]\nprune: true\n"
    (work / "sluice.yaml").write_text(policy)
    for namespace in namespaces:
        target = work / "configmaps" / namespace / "seed.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(manifest("seed", namespace, 0))


def write_created(directory: Path, namespaces: list[str], size: int) -> None:
    for index in range(size):
        namespace = namespaces[index % NAMESPACES]
        target = directory / namespace / f"new-{index:05d}.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(manifest(f"new-{index:05d}", namespace, index))


def repository(bench: Bench, size: int) -> tuple[list[str], Path, Any]:
    """Namespaces, a repository whose first commit is the seed, and a source that follows it."""
    from gitops import source_admin

    namespaces = bench.namespaces(f"a{size}")
    path = bench.workdir / f"abort-{size}"
    remote, work = path / "remote.git", path / "work"
    path.mkdir(parents=True)
    git(path, "init", "--quiet", "--bare", "--initial-branch=main", str(remote))
    git(path, "init", "--quiet", "--initial-branch=main", str(work))
    write_seed(work, namespaces)
    git(work, "add", "--all")
    git(work, "commit", "--quiet", "-m", "seed")
    git(work, "remote", "add", "origin", str(remote))
    git(work, "push", "--quiet", "origin", "HEAD:refs/heads/main")
    source = source_admin.source_add(
        name=f"abort-{size}-{bench.run_id}",
        url=f"file://{remote}",
        allowed_namespaces=[f"a{size}-{bench.run_id}-*"],
    )
    return namespaces, work, source


def approver() -> Any:
    from django.contrib.auth.models import Group, User

    person = User.objects.create_user(f"oncall-{uuid.uuid4().hex[:6]}", password=uuid.uuid4().hex)
    person.groups.add(Group.objects.get(name="approver"))
    return User.objects.get(pk=person.pk)


def sluice_abort(bench: Bench, size: int) -> dict[str, float]:
    """The abort's wall time from the request to Aborted, and the CPU per 1,000 of the rollback's deletes."""
    from django.conf import settings

    from gitops.cluster import get_cluster
    from gitops.models import Change, Rollout
    from gitops.rollout import decisions
    from gitops.tasks import sync_source
    from tests.workers import WorkerProcess, poll

    namespaces, work, source = repository(bench, size)
    worker = WorkerProcess(
        {**bench.env, "SLUICE_DATA_DIR": str(bench.workdir / "data")}, concurrency=1
    ).start()
    try:
        cache = live_cache_listing(bench.env)
    except BaseException:
        worker.stop()
        raise
    try:
        assert worker.process is not None
        worker_pid = worker.process.pid
        assert sync_source.delay(source.pk).get(timeout=600)["outcome"] == "applied"
        (work / "sluice.yaml").write_text((work / "sluice.yaml").read_text() + STEPS)
        write_created(work / "configmaps", namespaces, size)
        git(work, "add", "--all")
        git(work, "commit", "--quiet", "-m", f"{size} new configmaps, behind a pause")
        git(work, "push", "--quiet", "origin", "HEAD:refs/heads/main")
        result = sync_source.delay(source.pk).get(timeout=1800)
        assert result["outcome"] == "paused", result
        rollout = Rollout.objects.get(source=source, phase=Rollout.Phase.PAUSED)
        person = approver()

        ours_before, theirs_before = cpu_seconds(process_tree(worker_pid), children=True), apiserver_cpu()
        started = time.perf_counter()
        decisions.rollout_abort(rollout.pk, user=person, reason="bench: abort at scale")

        def ended() -> bool:
            rollout.refresh_from_db()
            return not rollout.is_active

        poll(ended, timeout=1800, interval=0.05, what="the rollout to be rolled back")
        elapsed = time.perf_counter() - started
        ours = cpu_seconds(process_tree(worker_pid), children=True) - ours_before
        theirs = apiserver_cpu() - theirs_before
        assert rollout.phase == Rollout.Phase.ABORTED, (rollout.phase, rollout.message)
        deleted = Change.objects.filter(rollout=rollout, action="rollback", after__isnull=True).count()
        assert deleted == size, (deleted, size)
        cluster = get_cluster(settings.SLUICE_CLUSTER_NAME)
        left = sum(len(cluster.list_configmaps(namespace)) for namespace in namespaces)
        assert left == NAMESPACES, f"{left} ConfigMaps left, not only the {NAMESPACES} seeds"
    finally:
        cache.stop()
        worker.stop()
    return {
        "abort": elapsed,
        "cpu_per_1000": ours * 1000 / size,
        "apiserver_cpu_per_1000": theirs * 1000 / size,
    }


def kubectl_delete(bench: Bench, size: int) -> float:
    """kubectl's delete of the same N manifests, applied first in namespaces of their own."""
    namespaces = bench.namespaces(f"k{size}")
    directory = bench.workdir / f"kubectl-abort-{size}"
    write_created(directory, namespaces, size)
    bench.kubectl_timed(*bench.kubectl_apply(directory))
    return bench.kubectl_timed("delete", "--wait=false", "-R", "-f", str(directory))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,5000")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    with bench_environment() as (env, workdir):
        bench = Bench(env, workdir)
        bench.setup_django()
        for size in sizes:
            print(f"-- an abort whose rollback deletes {size} ConfigMaps across {NAMESPACES} namespaces")
            ours = sluice_abort(bench, size)
            theirs = kubectl_delete(bench, size)
            print(
                f"abort {size}: {ours['abort']:.2f} s to Aborted; kubectl delete {theirs:.2f} s; "
                f"ratio {theirs / ours['abort']:.2f}x (above 1: Sluice faster); worker CPU "
                f"{ours['cpu_per_1000']:.2f} s per 1,000 deletes, apiserver "
                f"{ours['apiserver_cpu_per_1000']:.2f} s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        sys.exit(1)
