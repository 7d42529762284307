"""Reconcile benchmark: Sluice through a real Celery worker against kubectl, on the embedded stack.

For each size (ConfigMaps spread over 10 namespaces) it measures, with a live-cache
process running (`gitops live-cache`):
  - cold apply: the first sync of a fresh source;
  - no-op reconcile: a sync when nothing changed (median of 9), planned from the live cache;
  - one-file change: a commit that changes one manifest (median of 9, with the range), from the live
    cache: three samples of a pass of 0.1 to 0.2 s on a shared machine moved the median by a third;
  - prune: a commit that removes half the manifests (5 of the 10 namespaces' files), from the live cache,
    with the worker's and the apiserver's CPU per 1,000 deletes (each cold sample's source prunes too:
    the median of as many as --cold-samples, against as many kubectl deletes);
  - removal, keeping the objects: the source deleted with `--objects keep`, each of the other half
    released (Sluice's labels, annotations and field ownership taken off), with the same CPU figures
    (no peer: kubectl has no such command);
  - no-op without the cache: the live cache stopped, so the plan LISTs every namespace (median of 3);
  - worker peak RSS (VmHWM of the worker's processes);
and the same manifests through `kubectl apply --server-side`, `kubectl diff --server-side` and
`kubectl delete` (the same half of the files).

Usage: python bench/reconcile.py [--sizes 1000,10000]
Targets (issue #15): no-op and one-file change of 10,000 objects <= 0.2 s.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NAMESPACES = 10
# No-op and one-file passes timed at each size: their median is reported (and the range of the latter).
PASS_SAMPLES = 9
PROPERTIES = "\n".join(f"app.setting.{i}=value-{i}" for i in range(12)) + "\n"


def manifest(name: str, namespace: str, index: int, revision: int = 0) -> str:
    body = PROPERTIES.replace("value-3", f"value-3-r{revision}")
    indented = "".join(f"    {line}\n" for line in body.splitlines())
    return (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n"
        f"  name: {name}\n  namespace: {namespace}\n  labels:\n    app: bench\n"
        f'data:\n  INDEX: "{index}"\n  LOG_LEVEL: info\n  application.properties: |\n{indented}'
    )


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Bench",
        "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "Bench",
        "GIT_COMMITTER_EMAIL": "bench@example.com",
    }
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


@contextmanager
def sampled(processes: dict[str, int], label: str) -> Iterator[None]:
    """With BENCH_PY_SPY=<directory> (py-spy installed, or named by BENCH_PY_SPY_BIN), samples each process while the block runs
    into <directory>/<label>-<name>.txt (py-spy's raw format: one stack per line, then its count)."""
    directory = os.environ.get("BENCH_PY_SPY")
    if not directory:
        yield
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    spy = shutil.which(os.environ.get("BENCH_PY_SPY_BIN", "py-spy"))
    if spy is None:
        raise SystemExit("BENCH_PY_SPY is set but py-spy is not installed (or BENCH_PY_SPY_BIN names none)")
    print(f"sampling {label} with py-spy: its timings are inflated by the sampling", flush=True)
    samplers = []
    for name, pid in processes.items():
        output = Path(directory) / f"{label}-{name}.txt"
        command = [
            spy,
            "record",
            "--nonblocking",
            "-r",
            "200",
            "-f",
            "raw",
            "-p",
            str(pid),
            "-o",
            str(output),
        ]
        samplers.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        yield
    finally:
        for sampler in samplers:
            sampler.send_signal(signal.SIGINT)  # py-spy writes its file on an interrupt
        for sampler in samplers:
            sampler.wait(timeout=60)
        for name in processes:
            if not (Path(directory) / f"{label}-{name}.txt").exists():
                print(
                    f"py-spy wrote nothing for {name} (not allowed to attach? try as root)", file=sys.stderr
                )


# What a run created in the default cluster, deleted when it ends: a stack kept up between runs
# would otherwise hold every earlier run's ConfigMaps, and a live cache starting would list them all.
CREATED_NAMESPACES: list[str] = []


def delete_namespaces(names: Sequence[str], env: dict[str, str] | None = None) -> None:
    """Deletes namespaces, and so their objects, and waits for it: the next run must not time its
    applies while the namespace controller deletes tens of thousands of ConfigMaps. Never raises
    (it runs in ``finally`` blocks, where it must not hide what failed)."""
    for start in range(0, len(names), 100):
        batch = names[start : start + 100]
        try:
            subprocess.run(
                ["kubectl", "delete", "namespace", "--ignore-not-found", "--wait", "--timeout=600s", *batch],
                env=env,
                stdout=subprocess.DEVNULL,
                check=False,
                timeout=660,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(
                f"could not delete the benchmark's namespaces ({exc}); delete them by hand", file=sys.stderr
            )
            return


def process_tree(pid: int) -> list[int]:
    """A process and its direct children (a Celery worker's pool processes)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [pid, *(int(p) for p in children.read_text().split())]
    except OSError:
        return [pid]


def cpu_seconds(pids: list[int], *, children: bool = False) -> float:
    """User + system CPU time the processes used so far (their own threads included); with
    ``children``, also that of their children that have ended (a worker's ``git`` processes)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        if children:
            total += int(fields[13]) + int(fields[14])  # cutime, cstime: children waited for
    return total / ticks


def apiserver_pid() -> int | None:
    from devstack import Stack

    process = Stack()._state().get("processes", {}).get("kube-apiserver")
    return int(process["pid"]) if process else None


def apiserver_cpu() -> float:
    pid = apiserver_pid()
    return cpu_seconds([pid]) if pid else 0.0


def peak_rss_mib(pid: int) -> float:
    """Largest VmHWM among a process and its children."""
    peaks = []
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for candidate in pids:
        try:
            for line in Path(f"/proc/{candidate}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        except OSError:
            continue
    return max(peaks, default=0.0)


class Bench:
    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.run_id = uuid.uuid4().hex[:5]
        # Each directory kubectl applied, by size: each deletes the same half as Sluice's prunes.
        self.kubectl_directories: dict[int, list[Path]] = {}

    def setup_django(self) -> None:
        os.environ.update(self.env)
        import django

        django.setup()

    def namespaces(self, prefix: str) -> list[str]:
        from gitops.cluster import get_cluster

        names = [f"{prefix}-{self.run_id}-{i}" for i in range(NAMESPACES)]
        CREATED_NAMESPACES.extend(names)  # before: one made before a failure is deleted too
        for name in names:
            get_cluster().create_namespace(name)
        return names

    def write_repo(self, size: int, namespaces: list[str], path: Path) -> Path:
        remote, work = path / "remote.git", path / "work"
        path.mkdir(parents=True)
        git(path, "init", "--quiet", "--bare", "--initial-branch=main", str(remote))
        git(path, "init", "--quiet", "--initial-branch=main", str(work))
        # Prune on: the prune's figure removes half the files (nothing is pruned before it).
        policy = "targets:\n  namespaces: [" + ", ".join(namespaces) + "]\nprune: true\n"
        (work / "sluice.yaml").write_text(policy)
        for index in range(size):
            namespace = namespaces[index % NAMESPACES]
            target = work / "configmaps" / namespace / f"cm-{index:05d}.yaml"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(manifest(f"cm-{index:05d}", namespace, index))
        git(work, "add", "--all")
        git(work, "commit", "--quiet", "-m", f"{size} configmaps")
        git(work, "remote", "add", "origin", str(remote))
        git(work, "push", "--quiet", "origin", "HEAD:refs/heads/main")
        return work

    def source_with_repo(self, prefix: str, size: int) -> tuple[list[str], Path, Any]:
        """Fresh namespaces, a repository of ``size`` ConfigMaps across them, and a source that follows it."""
        from gitops import source_admin

        namespaces = self.namespaces(f"{prefix}{size}")
        work = self.write_repo(size, namespaces, self.workdir / f"{prefix}-{size}")
        source = source_admin.source_add(
            name=f"{prefix}-{size}-{self.run_id}",
            url=f"file://{work.parent / 'remote.git'}",
            allowed_namespaces=[f"{prefix}{size}-{self.run_id}-*"],
        )
        return namespaces, work, source

    @staticmethod
    def change_one_file(work: Path, namespaces: list[str], revision: int, size: int) -> None:
        """Commits and pushes a new content for one of the ``size`` ConfigMaps (another one per revision,
        as long as ``size`` allows)."""
        index = revision * 7 % size
        namespace = namespaces[index % NAMESPACES]
        path = work / "configmaps" / namespace / f"cm-{index:05d}.yaml"
        path.write_text(manifest(f"cm-{index:05d}", namespace, index, revision))
        git(work, "commit", "--quiet", "-am", f"change {index}")
        git(work, "push", "--quiet", "origin", "HEAD:refs/heads/main")

    @staticmethod
    def remove_half(work: Path, namespaces: list[str]) -> int:
        """Commits and pushes the removal of every manifest in the first half of the namespaces; returns
        how many went."""
        removed = 0
        for namespace in namespaces[: NAMESPACES // 2]:
            directory = work / "configmaps" / namespace
            if directory.is_dir():  # a size under 10 leaves some namespaces without a file
                removed += len(list(directory.glob("*.yaml")))
                git(work, "rm", "--quiet", "-r", str(directory))
        git(work, "commit", "--quiet", "-m", f"remove {removed}")
        git(work, "push", "--quiet", "origin", "HEAD:refs/heads/main")
        return removed

    def more_prunes(
        self, sources: Sequence[tuple[list[str], Path, Any]], timed_sync: Callable[[Any], tuple[float, dict]]
    ) -> list[float]:
        """The same prune of half the objects by each of ``sources`` (the cold samples'), timed."""
        samples = []
        for namespaces, work, source in sources:
            removed = self.remove_half(work, namespaces)
            elapsed, result = timed_sync(source)
            assert result["summary"].get("delete") == removed, result
            samples.append(elapsed)
        return samples

    @staticmethod
    def removal_kept(source: Any, kept: int, worker_pid: int) -> dict[str, float]:
        """The source removed, its objects kept: the wall time from the request to the removal's end, and
        the worker's and the apiserver's CPU per 1,000 releases."""
        from gitops import source_admin
        from gitops.vocabulary import ObjectsOnRemoval
        from tests.workers import poll

        ours_before, theirs_before = cpu_seconds(process_tree(worker_pid), children=True), apiserver_cpu()
        started = time.perf_counter()
        removal = source_admin.source_remove(source, objects=ObjectsOnRemoval.KEEP)

        def ended() -> bool:
            removal.refresh_from_db()
            return not removal.is_active

        poll(ended, timeout=1800, what="the removal to end")
        elapsed = time.perf_counter() - started
        assert removal.status == "done", removal.message
        assert removal.objects_done == kept, (removal.objects_done, kept)
        return {
            "release": elapsed,
            "released": kept,
            "release_cpu_per_1000": (cpu_seconds(process_tree(worker_pid), children=True) - ours_before)
            * 1000
            / max(kept, 1),
            "apiserver_release_cpu_per_1000": (apiserver_cpu() - theirs_before) * 1000 / max(kept, 1),
        }

    @staticmethod
    def live_cache_vouches(namespaces: list[str]) -> bool:
        from django.conf import settings

        from gitops.cluster import livestore

        return len(livestore.fresh_stamps(settings.SLUICE_CLUSTER_NAME, namespaces)) == len(namespaces)

    def sluice(
        self, size: int, *, cold_samples: int = 1, between: Callable[[], None] | None = None
    ) -> dict[str, Any]:
        """Sluice's figures at ``size``. The cold apply is the median of ``cold_samples`` fresh sources;
        ``between`` runs before each one after the first (the peer's cold apply, interleaved)."""
        from gitops.tasks import sync_source
        from tests.workers import WorkerProcess, poll

        namespaces, work, source = self.source_with_repo("s", size)
        worker = WorkerProcess(
            {**self.env, "SLUICE_DATA_DIR": str(self.workdir / "data")}, concurrency=1
        ).start()
        try:
            # Its first LIST done before any apply is timed: what it costs a cold apply is its watch.
            live_cache = live_cache_listing(self.env)
        except BaseException:
            worker.stop()
            raise
        try:

            def timed_sync(target: Any = source) -> tuple[float, dict]:
                started = time.perf_counter()
                result = sync_source.delay(target.pk).get(timeout=1800)
                return time.perf_counter() - started, result

            def noop() -> float:
                elapsed, result = timed_sync()
                assert result["outcome"] == "unchanged", result
                return elapsed

            assert worker.process is not None
            worker_pid = worker.process.pid

            assert live_cache.process is not None
            cache_pid = live_cache.process.pid

            def cold_apply(target: Any) -> tuple[float, float, float, float]:
                """Wall time, and the CPU of the worker, the apiserver and the live cache, of a first sync."""
                ours_before = cpu_seconds(
                    process_tree(worker_pid), children=True
                )  # its git processes included
                theirs_before = apiserver_cpu()
                cache_before = cpu_seconds([cache_pid])
                started = time.perf_counter()
                with sampled(
                    {"worker": process_tree(worker_pid)[-1], "live-cache": cache_pid}, f"cold-{size}"
                ):
                    result = sync_source.delay(target.pk).get(timeout=1800)
                elapsed = time.perf_counter() - started
                assert result["outcome"] == "applied", result
                return (
                    elapsed,
                    cpu_seconds(process_tree(worker_pid), children=True) - ours_before,
                    apiserver_cpu() - theirs_before,
                    cpu_seconds([cache_pid]) - cache_before,
                )

            colds = [cold_apply(source)]
            # The cold samples' sources: each prunes half of its objects too, for the prune's median.
            extras = []
            for sample in range(1, cold_samples):
                if between is not None:
                    between()
                extras.append(self.source_with_repo(f"c{sample}x", size))
                colds.append(cold_apply(extras[-1][2]))
            cold, cold_cpu, apiserver_cold_cpu, cache_cold_cpu = sorted(colds)[len(colds) // 2]
            poll(
                lambda: self.live_cache_vouches(namespaces),
                timeout=120,
                what="the live cache to vouch for every namespace",
            )
            noops = [noop() for _ in range(PASS_SAMPLES)]
            changes = []
            for revision in range(1, PASS_SAMPLES + 1):
                self.change_one_file(work, namespaces, revision, size)
                elapsed, result = timed_sync()
                assert result["summary"].get("update") == 1, result
                changes.append(elapsed)
            live_cache.stop()
            noops_read = [noop() for _ in range(3)]
            rss = peak_rss_mib(worker.process.pid)
            # After the figures of the whole repository (the no-op LIST plans every object, RSS is a
            # peak): half of it pruned, planned from a live cache started again, as the passes above.
            live_cache = live_cache_listing(self.env)
            poll(
                lambda: self.live_cache_vouches(namespaces),
                timeout=120,
                what="the live cache to vouch for every namespace again",
            )
            removed = self.remove_half(work, namespaces)
            ours_before, theirs_before = cpu_seconds(process_tree(worker_pid), children=True), apiserver_cpu()
            prune, result = timed_sync()
            assert result["summary"].get("delete") == removed, result
            prune_cpu = cpu_seconds(process_tree(worker_pid), children=True) - ours_before
            apiserver_prune_cpu = apiserver_cpu() - theirs_before
            released = self.removal_kept(source, size - removed, worker_pid)
            prunes = [prune, *self.more_prunes(extras, timed_sync)]
        finally:
            live_cache.stop()
            worker.stop()
        return {
            "cold": cold,
            "cold_samples": [sample[0] for sample in colds],
            "noop": statistics.median(noops),
            "one_file": statistics.median(changes),
            "one_file_min": min(changes),
            "one_file_max": max(changes),
            "noop_read": statistics.median(noops_read),
            "prune": statistics.median(prunes),
            "prune_samples": prunes,
            "pruned": removed,
            "prune_cpu_per_1000": prune_cpu * 1000 / removed,
            "apiserver_prune_cpu_per_1000": apiserver_prune_cpu * 1000 / removed,
            **released,
            "rss_mib": rss,
            "cpu_per_1000": cold_cpu * 1000 / size,
            "apiserver_cpu_per_1000": apiserver_cold_cpu * 1000 / size,
            "cache_cpu_per_1000": cache_cold_cpu * 1000 / size,
        }

    def kubectl_directory(self, size: int) -> Path:
        """The benchmark's manifests for kubectl, in fresh namespaces of their own: each directory's own
        (until 2026-12-07 every directory of a size shared them, so each cold sample after the first
        applied the same objects again, unchanged, rather than creating them)."""
        namespaces = self.namespaces(f"k{size}n{len(self.kubectl_directories.get(size, []))}")
        directory = self.workdir / f"kubectl-{size}-{uuid.uuid4().hex[:5]}"
        for index in range(size):
            namespace = namespaces[index % NAMESPACES]
            target = directory / namespace / f"cm-{index:05d}.yaml"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(manifest(f"cm-{index:05d}", namespace, index))
        self.kubectl_directories.setdefault(size, []).append(directory)
        return directory

    def kubectl_timed(self, *args: str, ok: tuple[int, ...] = (0,)) -> float:
        started = time.perf_counter()
        done = subprocess.run(["kubectl", *args], env=self.env, capture_output=True, text=True, check=False)
        if done.returncode not in ok:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {done.stderr[-2000:]}")
        return time.perf_counter() - started

    @staticmethod
    def kubectl_apply(directory: Path) -> tuple[str, ...]:
        return ("apply", "--server-side", "--field-manager=kubectl-bench", "-R", "-f", str(directory))

    def kubectl_cold(self, size: int) -> float:
        """One cold ``kubectl apply --server-side`` of fresh manifests."""
        return self.kubectl_timed(*self.kubectl_apply(self.kubectl_directory(size)))

    def kubectl(self, size: int, colds: Sequence[float] = ()) -> dict[str, Any]:
        """kubectl's figures; the cold apply is the median of ``colds`` (samples already taken) and this one."""
        directory = self.kubectl_directory(size)
        samples = [*colds, self.kubectl_timed(*self.kubectl_apply(directory))]
        # kubectl diff exits 1 when there are differences; here there are none.
        diff = self.kubectl_timed(
            "diff", "--server-side", "--field-manager=kubectl-bench", "-R", "-f", str(directory), ok=(0, 1)
        )
        noop_apply = self.kubectl_timed(*self.kubectl_apply(directory))
        # The same half of the objects Sluice's prunes removed (``remove_half``): one DELETE each, from
        # each directory applied (as many as Sluice's cold sources, and so its prunes).
        deletes = [
            self.kubectl_timed(
                "delete",
                "--wait=false",
                "-R",
                *(f"--filename={path}" for path in sorted(applied.iterdir())[: NAMESPACES // 2]),
            )
            for applied in self.kubectl_directories[size]
        ]
        cold = sorted(samples)[len(samples) // 2]
        return {
            "cold": cold,
            "cold_samples": samples,
            "diff": diff,
            "noop_apply": noop_apply,
            "delete": statistics.median(deletes),
            "delete_samples": deletes,
        }


def live_cache_listing(env: dict[str, str]) -> Any:
    """A live-cache process (``gitops live-cache``, rescanning every second), once it holds its lease and
    has listed the whole default cluster: a timed run then pays its watch alone. Stopped if it never does."""
    from gitops.cluster import default_cluster_name, livestore
    from tests.workers import LiveCacheProcess, poll

    # INFO: the cache says in its log when it serves (holds the lease), which is waited for.
    live_cache = LiveCacheProcess(
        env, env_overrides={"SLUICE_LIVE_CACHE_RESCAN_SECONDS": "1", "LOG_LEVEL": "INFO"}
    ).start()
    try:
        poll(live_cache.serving, timeout=60, what="the live cache to take its lease")
        poll(
            lambda: livestore.watching_whole_cluster(default_cluster_name()),
            timeout=300,
            what="the live cache to list the cluster",
        )
    except BaseException:
        live_cache.stop()  # a cache left running would hold its lease against the next run's
        raise
    return live_cache


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument(
        "--fail-if-slower",
        action="store_true",
        help="exit 1 when Sluice is slower than kubectl on the same manifests (make bench-smoke)",
    )
    parser.add_argument(
        "--cold-samples",
        type=int,
        default=1,
        help="cold applies of each (Sluice's and kubectl's interleaved); the median is compared. On a"
        " shared machine one sample can land on a neighbour's burst (make bench-smoke takes 3)",
    )
    parser.add_argument(
        "--skip-peer",
        action="store_true",
        help="Sluice's figures only, no kubectl run (a quick check while working; no ratios then)",
    )
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    with bench_environment() as (env, workdir):
        bench = Bench(env, workdir)
        bench.setup_django()
        rows = []
        for size in sizes:
            print(f"-- {size} ConfigMaps across {NAMESPACES} namespaces", flush=True)
            peer_colds: list[float] = []
            ours = bench.sluice(
                size,
                cold_samples=args.cold_samples,
                between=None if args.skip_peer else functools.partial(peer_cold, bench, size, peer_colds),
            )
            if args.skip_peer:
                # Each list of samples after the figures (the prune's samples broke this print from
                # 2026-12-07 until the thirty-fifth session: a list has no .3f).
                figures = {key: value for key, value in ours.items() if not isinstance(value, list)}
                samples = {key: value for key, value in ours.items() if isinstance(value, list)}
                print(
                    f"sluice only, {size}: "
                    + ", ".join(f"{key} {value:.3f}" for key, value in figures.items())
                    + "".join(
                        f"; {key.replace('_', ' ')} {', '.join(f'{value:.2f}' for value in values)}"
                        for key, values in samples.items()
                    )
                )
                continue
            theirs = bench.kubectl(size, peer_colds)
            rows.append((size, ours, theirs))
            print_rows([rows[-1]])
        if rows:
            print("\n== summary")
            print_rows(rows)
        if args.fail_if_slower:
            return slower_than_kubectl(rows)
    return 0


# The benchmarks' Redis database: their workers' queue, results and locks. On the stack's own (0), a test
# session run beside them (a plain `pytest` uses 0 too) took their syncs, and theirs took its: each side's
# source 1 is another database's (before 2026-12-07, drift_heal.py and clusters.py failed so). Test
# sessions use 0 to 2, webhook_cpu.py 7.
BENCH_REDIS_DB = 8


def bench_redis(stack_env: dict[str, str]) -> dict[str, str]:
    """The Redis settings of a benchmark's processes, on BENCH_REDIS_DB, emptied first: a task an earlier
    run left queued would run against this run's database."""
    import redis

    url = stack_env["REDIS_URL"].rsplit("/", 1)[0] + f"/{BENCH_REDIS_DB}"
    redis.Redis.from_url(url).flushdb()
    return {"REDIS_URL": url, "CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url}


@contextmanager
def bench_environment() -> Iterator[tuple[dict[str, str], Path]]:
    """The embedded stack (started if it is not up, and then stopped), a fresh database, a work directory."""
    from devstack import Stack

    stack = Stack()
    started_stack = not stack.is_up()
    stack_env = stack.up()
    workdir = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    database = f"sluice_bench_{uuid.uuid4().hex[:6]}"
    base_url = stack_env["DATABASE_URL"].rsplit("/", 1)[0]
    env = {
        **os.environ,
        **stack_env,
        "DATABASE_URL": f"{base_url}/{database}",
        **bench_redis(stack_env),
        "DJANGO_SETTINGS_MODULE": "sluice.settings",
        # As production runs it: with DEBUG on, Django keeps the text of the last 9,000 queries (the
        # intents' batches are megabytes each) in the worker, which the RSS figure counted.
        "DEBUG": "0",
        # DEBUG off needs a key; the shell that loaded .stack/env has one, CI does not.
        "SECRET_KEY": "bench-" + uuid.uuid4().hex,
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    try:
        import psycopg

        with psycopg.connect(stack_env["DATABASE_URL"], autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{database}"')
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        yield env, workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        drop_database(stack_env["DATABASE_URL"], database)
        if started_stack:
            stack.down()
        else:
            delete_namespaces(CREATED_NAMESPACES, env)


def drop_database(server_url: str, database: str) -> None:
    """Drops a run's database: on a stack that stays up, runs would otherwise pile theirs up in it.
    ``WITH (FORCE)`` ends what is still connected (this process's own Django connection included)."""
    import psycopg

    try:
        from django.db import connections

        connections.close_all()
    except Exception:  # noqa: S110 - django may not be set up yet
        pass
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def peer_cold(bench: Bench, size: int, samples: list[float]) -> None:
    """One more cold kubectl apply, between two of Sluice's."""
    samples.append(bench.kubectl_cold(size))


def slower_than_kubectl(rows: list[tuple[int, dict[str, Any], dict[str, Any]]]) -> int:
    """1 when Sluice took longer than kubectl for a cold apply, a no-op or a prune, on the same manifests
    (a prune of 500 took 1.9 s against kubectl delete's 1.5 s before its deletes went out in one batch).
    The cold applies' and the prunes' medians are compared (as many samples as ``--cold-samples``: each
    cold sample's source prunes too, and kubectl deletes from each directory it applied); the no-op is
    one sample each."""
    compared = (("cold apply", "cold", "cold"), ("no-op", "noop", "diff"), ("prune", "prune", "delete"))
    slower = [
        f"{size} objects: {what} {ours[mine]:.2f}s vs kubectl {theirs[peer]:.2f}s"
        for size, ours, theirs in rows
        for what, mine, peer in compared
        if mine in ours and peer in theirs and ours[mine] > theirs[peer]
    ]
    for line in slower:
        print(f"SLOWER THAN KUBECTL: {line}")
    return 1 if slower else 0


def print_rows(rows: list[tuple[int, dict[str, Any], dict[str, Any]]]) -> None:
    header = (
        f"{'objects':>8} {'cold apply':>11} {'no-op':>8} {'1-file':>8} {'no-op LIST':>10} {'RSS MiB':>8} | "
        f"{'kubectl apply':>13} {'kubectl diff':>12} {'kubectl no-op':>13} | {'apply x':>8} {'no-op x':>8}"
        f" {'cache x':>8}"
    )
    print(header)
    for size, ours, theirs in rows:
        print(
            f"{size:>8} {ours['cold']:>10.2f}s {ours['noop']:>7.2f}s {ours['one_file']:>7.2f}s"
            f" {ours['noop_read']:>9.2f}s {ours['rss_mib']:>8.0f} | {theirs['cold']:>12.2f}s"
            f" {theirs['diff']:>11.2f}s {theirs['noop_apply']:>12.2f}s | {theirs['cold'] / ours['cold']:>7.1f}x"
            f" {theirs['diff'] / ours['noop']:>7.1f}x {ours['noop_read'] / ours['noop']:>7.1f}x"
        )
    print(
        "no-op and 1-file: planned from the live cache; no-op LIST: the live cache stopped, every namespace listed"
    )
    for size, ours, _ in rows:
        print(
            f"{size:>8} objects, one-file change over {PASS_SAMPLES} commits: median {ours['one_file']:.3f} s,"
            f" {ours['one_file_min']:.3f} to {ours['one_file_max']:.3f} s"
        )
    for size, ours, _ in rows:
        print(
            f"{size:>8} objects, cold apply CPU per 1,000 creates: Sluice worker (its git included)"
            f" {ours['cpu_per_1000']:.2f} s,"
            f" kube-apiserver {ours['apiserver_cpu_per_1000']:.2f} s"
            f" ({100 * ours['cpu_per_1000'] / max(ours['apiserver_cpu_per_1000'], 1e-9):.0f}%);"
            f" the live cache {ours['cache_cpu_per_1000']:.2f} s"
        )
    for size, ours, theirs in rows:
        if (
            "pruned" not in ours or "delete" not in theirs
        ):  # a row made by hand (tests/unit/test_bench_cores.py)
            continue
        print(
            f"{size:>8} objects, prune of {ours['pruned']}: Sluice {ours['prune']:.2f} s, kubectl delete"
            f" {theirs['delete']:.2f} s ({theirs['delete'] / ours['prune']:.1f}x); CPU per 1,000 deletes:"
            f" Sluice worker {ours['prune_cpu_per_1000']:.2f} s,"
            f" kube-apiserver {ours['apiserver_prune_cpu_per_1000']:.2f} s"
        )
        if len(ours.get("prune_samples", ())) > 1:
            print(
                f"{size:>8} objects, prune samples (the medians are compared): Sluice"
                f" {', '.join(f'{value:.2f}' for value in ours['prune_samples'])} s; kubectl delete"
                f" {', '.join(f'{value:.2f}' for value in theirs['delete_samples'])} s"
            )
        print(
            f"{size:>8} objects, removal keeping the other {ours['released']}: Sluice {ours['release']:.2f} s"
            f" (no peer); CPU per 1,000 releases: Sluice worker {ours['release_cpu_per_1000']:.2f} s,"
            f" kube-apiserver {ours['apiserver_release_cpu_per_1000']:.2f} s"
        )
    for size, ours, theirs in rows:
        if len(ours["cold_samples"]) > 1:
            print(
                f"{size:>8} objects, cold apply samples, interleaved (the medians are compared): Sluice"
                f" {', '.join(f'{value:.2f}' for value in ours['cold_samples'])} s; kubectl"
                f" {', '.join(f'{value:.2f}' for value in theirs['cold_samples'])} s"
            )
    print("apply x = kubectl apply --server-side time / Sluice cold apply time (higher is better for Sluice)")
    print("no-op x = kubectl diff --server-side time / Sluice no-op reconcile time (from the live cache)")
    print("cache x = Sluice no-op without the live cache / with it")
    print(
        f"machine: {os.cpu_count()} CPU cores, shared; load average {os.getloadavg()[0]:.1f} at the end of the run"
    )


if __name__ == "__main__":
    sys.exit(main())
