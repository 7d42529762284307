"""A fleet on one machine: many sources polled on their interval, and bursts of webhook pushes.

Two measurements (issue #15), each on the embedded stack with real Celery worker
processes, a real beat, a real web server (gunicorn) and real Git repositories:

* ``poll``: SOURCES sources x CONFIGMAPS ConfigMaps each (one namespace per
  source), polled every INTERVAL seconds, with WORKERS worker processes. After
  the initial syncs, every poll is a no-op; what is measured is the *reconcile
  lag*: from the moment a poll is due (``next_poll_at``) to the moment its
  reconcile has finished (``last_synced_at``). A backlog shows as a lag that
  grows round after round; the queue length in Redis is sampled too.
  Run it with ``--workers 1`` and ``--workers 2`` for the scale-out ratio.
* ``pushes``: PUSHES pushes in SECONDS seconds spread over SOURCES sources. Each
  push moves a branch (commits are prepared beforehand, so the driver costs
  nothing while it runs) and POSTs the signed generic webhook, as
  ``scripts/post-receive`` does. Lag is from the POST to the first change-log row
  of that commit or a later one (a later commit carries the earlier ones' content:
  Sluice coalesces pushes that arrive while a source reconciles). At the end every
  ConfigMap must hold the content of the last push that touched it: none lost.

Usage:
    python bench/fleet.py poll   [--sources 1000] [--configmaps 50] [--interval 60] [--workers 2] [--duration 180]
    python bench/fleet.py pushes [--sources 200] [--pushes 1000] [--seconds 10] [--workers 2]
Both take --concurrency N (reconciles per worker process, 1) and --no-live-cache (the live-cache
process runs by default, as deployed). Both print each process's CPU while measured, the driver's
included. BENCH_LOG_LEVEL=INFO runs the Sluice processes at that level (each task's time is in the
workers' logs) and BENCH_KEEP_LOGS=1 keeps the logs, whose directory is printed at the end.
The fleet's namespaces are deleted at the end when the stack was already up (it is stopped otherwise).
Goals (issue #15): poll: no backlog, lag p95 <= 5 s; pushes: every commit applied, lag p95 <= 10 s.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from reconcile import bench_redis, cpu_seconds, delete_namespaces, process_tree  # noqa: E402 - bench/reconcile.py, beside this script

SETUP_CONCURRENCY = 8


def machine_speed() -> float:
    """Milliseconds of CPU a fixed piece of Python work takes now (the best of three): the same code
    measured 9 s and 14 s on this VM an hour apart, every process about a third slower in the slow
    run, so each run prints this to say which kind of moment it ran in."""
    document = {"metadata": {"name": "cm-000", "namespace": "team"}, "data": {"key": "value" * 20}}
    timings = []
    for _ in range(3):
        started = time.thread_time()
        for index in range(20_000):
            json.loads(json.dumps({**document, "index": index}))
            hashlib.sha256(str(index).encode()).hexdigest()
        timings.append((time.thread_time() - started) * 1000)
    return min(timings)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def manifest(name: str, namespace: str, value: str) -> str:
    return (
        f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
        f'data:\n  VALUE: "{value}"\n  LOG_LEVEL: info\n'
    )


def _blob(path: str, text: str) -> bytes:
    data = text.encode()
    return b"M 100644 inline " + path.encode() + b"\ndata %d\n" % len(data) + data + b"\n"


def _commit(ref: str, mark: int, message: str, files: list[bytes], *, parent: int | None, when: int) -> bytes:
    body = message.encode()
    head = (
        (
            f"commit {ref}\nmark :{mark}\nauthor Bench <bench@example.com> {when} +0000\n"
            f"committer Bench <bench@example.com> {when} +0000\n"
        ).encode()
        + b"data %d\n" % len(body)
        + body
        + b"\n"
    )
    if parent is not None:
        head += f"from :{parent}\n".encode()
    return head + b"".join(files) + b"\n"


@dataclass
class FleetRepo:
    """A bare repository: an initial commit on main and, optionally, prepared later commits."""

    path: Path
    namespace: str
    names: list[str]
    pending: list[str] = field(default_factory=list)  # commit hashes, in push order
    touched: list[str] = field(default_factory=list)  # the ConfigMap each pending commit changes

    @classmethod
    def create(cls, path: Path, namespace: str, configmaps: int, later_commits: int) -> FleetRepo:
        names = [f"cm-{index:03d}" for index in range(configmaps)]
        repo = cls(path=path, namespace=namespace, names=names)
        policy = f"targets:\n  namespaces: [{namespace}]\n"
        files = [_blob("sluice.yaml", policy)]
        files += [_blob(f"configmaps/{name}.yaml", manifest(name, namespace, "0")) for name in names]
        when = int(time.time())
        stream = [_commit("refs/heads/main", 1, "initial", files, parent=None, when=when)]
        for number in range(1, later_commits + 1):
            name = names[(number * 7) % len(names)]
            repo.touched.append(name)
            change = [_blob(f"configmaps/{name}.yaml", manifest(name, namespace, f"push-{number}"))]
            stream.append(
                _commit("refs/bench/pending", number + 1, f"push {number}", change, parent=number, when=when)
            )
        subprocess.run(["git", "init", "--quiet", "--bare", "--initial-branch=main", str(path)], check=True)
        marks = path / "bench-marks"
        subprocess.run(
            ["git", "fast-import", "--quiet", f"--export-marks={marks}"],
            cwd=path,
            input=b"".join(stream),
            check=True,
        )
        by_mark = dict(line.split() for line in marks.read_text().splitlines())
        repo.pending = [by_mark[f":{number + 1}"] for number in range(1, later_commits + 1)]
        return repo

    def move_main_to(self, commit: str) -> None:
        """What a push does to a bare repository's branch: a loose ref replaced atomically."""
        ref = self.path / "refs" / "heads" / "main"
        temporary = ref.with_suffix(".lock")
        temporary.write_text(commit + "\n")
        os.replace(temporary, ref)


class Environment:
    """The stack, a fresh database, Django in this process, and the Sluice processes it starts."""

    def __init__(self, workdir: Path) -> None:
        from devstack import Stack

        self.workdir = workdir
        self.stack = Stack()
        self.started_stack = not self.stack.is_up()
        self.stack_env = self.stack.up()
        self.database = f"sluice_fleet_{uuid.uuid4().hex[:6]}"
        self.env = {
            **os.environ,
            **self.stack_env,
            "DATABASE_URL": self.stack_env["DATABASE_URL"].rsplit("/", 1)[0] + "/" + self.database,
            **bench_redis(self.stack_env),
            "DJANGO_SETTINGS_MODULE": "sluice.settings",
            "DEBUG": "0",
            "SLUICE_ALLOW_HTTP": "1",
            "SECRET_KEY": "bench-" + uuid.uuid4().hex,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
            "SLUICE_DATA_DIR": str(workdir / "data"),
            "SLUICE_POLL_SWEEP_SECONDS": "1",
            "PYTHONPATH": str(ROOT),
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        self.named: dict[str, subprocess.Popen[bytes]] = {}
        self.namespaces: list[str] = []  # created in the default cluster; deleted by close()
        (workdir / "logs").mkdir(parents=True)

    def setup(self) -> None:
        import psycopg

        with psycopg.connect(self.stack_env["DATABASE_URL"], autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{self.database}"')
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=self.env, check=True)
        os.environ.update(self.env)
        import django

        django.setup()

    def start(self, name: str, *command: str) -> None:
        log = open(self.workdir / "logs" / f"{name}.log", "wb")
        process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        self.named[name] = process

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of each process of the stack and of this run (children included)."""
        stack = self.stack._state().get("processes", {})
        pids = {name: process_tree(int(process["pid"])) for name, process in stack.items()}
        pids.update({name: process_tree(process.pid) for name, process in self.named.items()})
        # A worker's git processes count as its own: a pass starts them, and they take the same cores.
        used = {name: cpu_seconds(group, children=name.startswith("worker")) for name, group in pids.items()}
        # The driver itself (Django polling, git refs, the webhook posts) shares the same 2 cores.
        driver = os.times()
        used["bench driver"] = driver.user + driver.system
        return used

    def workers_git_cpu(self) -> float:
        """CPU seconds so far of the workers' ``git`` processes alone (the part of the workers' figures
        that runs in their children): a push's or a poll's fetch is mostly these."""
        groups = [process_tree(p.pid) for name, p in self.named.items() if name.startswith("worker")]
        return sum(cpu_seconds(group, children=True) - cpu_seconds(group) for group in groups)

    def start_workers(self, count: int, concurrency: int = 1) -> None:
        for index in range(count):
            self.start(
                f"worker-{index}",
                sys.executable,
                "-m",
                "celery",
                "-A",
                "gitops",
                "worker",
                f"--concurrency={concurrency}",
                f"--hostname=fleet-{index}@%h",
                f"--loglevel={os.environ.get('BENCH_LOG_LEVEL', 'WARNING')}",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            )

    def start_live_cache(self) -> None:
        """The live cache, as deployed: planning settles unchanged objects from it instead of listing."""
        self.start("live-cache", sys.executable, "manage.py", "gitops", "live-cache")

    def start_beat(self) -> None:
        schedule = self.workdir / "beat-schedule"
        self.start("beat", sys.executable, "-m", "celery", "-A", "gitops", "beat", "-s", str(schedule))

    def start_web(self) -> int:
        port = free_port()
        self.start(
            "web",
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--threads",
            "8",
            "--worker-class",
            "gthread",
            # The application (views included, see sluice/wsgi.py) loads before the workers fork: a
            # worker still importing would bill its start-up to the burst it is measured on.
            "--preload",
            "sluice.wsgi:application",
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
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

        with psycopg.connect(self.stack_env["DATABASE_URL"], autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        if self.started_stack:
            self.stack.down()
        else:  # a stack kept up would hold the fleet's ConfigMaps for every later run to list
            delete_namespaces(self.namespaces, self.env)


def create_fleet(
    env: Environment, sources: int, configmaps: int, later_commits: int, interval: int
) -> list[Any]:
    """Namespaces, repositories and sources; returns (source, repo) pairs."""
    from gitops import source_admin
    from gitops.cluster import get_cluster

    run = uuid.uuid4().hex[:5]
    namespaces = [f"fleet-{run}-{index:04d}" for index in range(sources)]
    cluster = get_cluster()
    env.namespaces.extend(namespaces)
    started = time.perf_counter()
    with ThreadPoolExecutor(SETUP_CONCURRENCY) as pool:
        list(pool.map(cluster.create_namespace, namespaces))
        repos = list(
            pool.map(
                lambda pair: FleetRepo.create(
                    env.workdir / "repos" / f"{pair[0]}.git", pair[1], configmaps, later_commits
                ),
                enumerate(namespaces),
            )
        )
    fleet = []
    for index, repo in enumerate(repos):
        source = source_admin.source_add(
            name=f"fleet-{run}-{index:04d}",
            url=f"file://{repo.path}",
            allowed_namespaces=[repo.namespace],
            poll_interval=timedelta(seconds=interval),
        )
        fleet.append((source, repo))
    print(f"created {sources} namespaces, repositories and sources in {time.perf_counter() - started:.1f}s")
    return fleet


def initial_syncs(fleet: list[Any], configmaps: int) -> None:
    from django.db import transaction

    from gitops.models import Source
    from gitops.schedule import source_sync

    started = time.perf_counter()
    ids = [source.pk for source, _ in fleet]
    with transaction.atomic():
        for source_id in ids:
            source_sync(source_id, actor="bench")
    deadline = time.monotonic() + max(600, len(ids) * configmaps / 20)
    while Source.objects.filter(pk__in=ids, last_synced_at__isnull=True).exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the initial syncs did not finish; see the worker logs")
        time.sleep(0.5)
    took = time.perf_counter() - started
    objects = len(ids) * configmaps
    print(
        f"initial sync of {len(ids)} sources, {objects:,} ConfigMaps: {took:.1f}s ({objects / took:,.0f} objects/s)"
    )


def queue_length(env: Environment) -> int:
    import redis

    return int(redis.Redis.from_url(env.env["REDIS_URL"]).llen("celery"))


def measure_polls(env: Environment, fleet: list[Any], interval: int, duration: float) -> dict[str, Any]:
    """Samples next_poll_at and last_synced_at; a poll's lag is due time -> its reconcile finished."""
    from django.utils import timezone

    from gitops.models import Source

    ids = [source.pk for source, _ in fleet]
    # A fleet that has run for a while has its polls spread over the interval.
    now = timezone.now()
    for source_id in ids:
        offset = timedelta(seconds=random.uniform(0, interval))  # noqa: S311 - not for security
        Source.objects.filter(pk=source_id).update(next_poll_at=now + offset)
    env.start_beat()
    cpu_before, git_before = env.cpu(), env.workers_git_cpu()
    waiting: dict[int, datetime] = {}  # source -> when its claimed poll was due
    last_due = dict(Source.objects.filter(pk__in=ids).values_list("pk", "next_poll_at"))
    last_synced = dict(Source.objects.filter(pk__in=ids).values_list("pk", "last_synced_at"))
    lags: list[float] = []
    queue: list[int] = []
    per_round: dict[int, list[float]] = {}
    started = time.monotonic()
    while time.monotonic() - started < duration:
        rows = Source.objects.filter(pk__in=ids).values_list("pk", "next_poll_at", "last_synced_at")
        for source_id, due, synced in rows:
            if due != last_due[source_id]:
                waiting.setdefault(source_id, last_due[source_id])
                last_due[source_id] = due
            if synced != last_synced[source_id]:
                last_synced[source_id] = synced
                if source_id in waiting and synced is not None:
                    was_due = waiting.pop(source_id)
                    lag = (synced - was_due).total_seconds()
                    lags.append(lag)
                    per_round.setdefault(int((time.monotonic() - started) // interval), []).append(lag)
        queue.append(queue_length(env))
        time.sleep(0.5)
    overdue = [
        (timezone.now() - due).total_seconds() for due in waiting.values()
    ]  # claimed, not yet reconciled
    after = env.cpu()
    elapsed = time.monotonic() - started
    cpu = {name: (after[name] - cpu_before.get(name, 0.0)) / elapsed for name in after}
    git_cores = (env.workers_git_cpu() - git_before) / elapsed
    return {
        "lags": lags,
        "queue": queue,
        "per_round": per_round,
        "still_waiting": overdue,
        "cpu": cpu,
        "git": git_cores,
    }


def run_poll(args: argparse.Namespace, env: Environment) -> None:
    env.start_workers(args.workers, args.concurrency)
    if args.live_cache:
        env.start_live_cache()
    fleet = create_fleet(env, args.sources, args.configmaps, 0, args.interval)
    initial_syncs(fleet, args.configmaps)
    result = measure_polls(env, fleet, args.interval, args.duration)
    lags = result["lags"]
    expected = args.sources * args.duration / args.interval
    print(
        f"{args.sources} sources x {args.configmaps} ConfigMaps, polled every {args.interval}s, "
        f"{args.workers} worker process(es) x {args.concurrency}, live cache {'on' if args.live_cache else 'off'}, "
        f"{args.duration:.0f}s measured (2 shared cores)"
    )
    if lags:
        print(
            f"polls reconciled: {len(lags)} of ~{expected:.0f} due   lag p50 {statistics.median(lags):.2f}s"
            f"   p95 {percentile(lags, 0.95):.2f}s   max {max(lags):.2f}s   (goal: p95 <= 5 s)"
        )
    for number, values in sorted(result["per_round"].items()):
        print(f"  round {number + 1}: {len(values)} polls, lag p95 {percentile(values, 0.95):.2f}s")
    backlog = max(result["still_waiting"], default=0.0)
    print(
        f"queue length: max {max(result['queue'], default=0)}, at the end {result['queue'][-1] if result['queue'] else 0}; "
        f"claimed but not reconciled at the end: {len(result['still_waiting'])} (oldest due {backlog:.1f}s ago)"
    )
    grows = (
        len(result["per_round"]) >= 2
        and percentile(result["per_round"][max(result["per_round"])], 0.95)
        > 2 * percentile(result["per_round"][min(result["per_round"])], 0.95) + 5
    )
    print("backlog: " + ("YES, the lag grows round after round" if grows else "none (the lag does not grow)"))
    busiest = sorted(result["cpu"].items(), key=lambda item: -item[1])
    print(
        "CPU while measured, in cores: "
        + ", ".join(f"{name} {cores:.2f}" for name, cores in busiest if cores >= 0.005)
        + f" (all: {sum(result['cpu'].values()):.2f} of 2; the workers' git processes {result['git']:.2f} of it)"
    )


def post_webhook(port: int, name: str, secret: str, before: str, after: str) -> int:
    body = json.dumps(
        {"ref": "refs/heads/main", "before": before, "after": after, "repository": name}
    ).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks/git/{name}",
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "X-Sluice-Event": "push",
            "X-Sluice-Delivery": str(uuid.uuid4()),
            "X-Sluice-Signature": signature,
        },
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our own server
        return int(response.status)


def run_pushes(args: argparse.Namespace, env: Environment) -> None:
    from gitops.intake import webhook_secrets
    from gitops.models import Change

    env.start_workers(args.workers, args.concurrency)
    if args.live_cache:
        env.start_live_cache()
    per_source = -(-args.pushes // args.sources)
    fleet = create_fleet(env, args.sources, args.configmaps, per_source, interval=3600)
    initial_syncs(fleet, args.configmaps)
    secrets = {source.pk: webhook_secrets.webhook_secret_rotate(source) for source, _ in fleet}
    port = env.start_web()
    pushed: list[tuple[Any, FleetRepo, int, float]] = []  # source, repo, push number, when
    heads = {source.pk: None for source, _ in fleet}
    statuses: list[int] = []
    gap = args.seconds / args.pushes
    cpu_before, git_before = env.cpu(), env.workers_git_cpu()
    started = time.time()
    with ThreadPoolExecutor(16) as pool:
        futures = []
        for index in range(args.pushes):
            source, repo = fleet[index % args.sources]
            number = index // args.sources + 1
            commit = repo.pending[number - 1]
            target = started + index * gap
            time.sleep(max(0.0, target - time.time()))  # the driver's pace, not a synchronisation
            before = heads[source.pk] or "0" * 40
            repo.move_main_to(commit)
            heads[source.pk] = commit
            pushed.append((source, repo, number, time.time()))
            futures.append(pool.submit(post_webhook, port, source.name, secrets[source.pk], before, commit))
        paced = time.time() - started
        statuses = [future.result() for future in futures]
    print(
        f"{args.pushes} pushes over {paced:.1f}s across {args.sources} sources; "
        f"webhook answers: {sorted(set(statuses))}"
    )
    last = {source.pk: repo.pending[per_source_count(pushed, source.pk) - 1] for source, repo in fleet}
    deadline = time.monotonic() + 600
    while True:
        done = Change.objects.filter(commit__in=list(last.values())).values("source_id").distinct().count()
        if done == len(last) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    elapsed = time.time() - started
    cpu_after, git_seconds = env.cpu(), env.workers_git_cpu() - git_before
    report_pushes(pushed, fleet)
    used = {name: after - cpu_before.get(name, 0.0) for name, after in cpu_after.items()}
    print_cpu(used, elapsed, git_seconds)
    print_yardstick(used.get("web", 0.0), args.pushes)


def print_yardstick(web_seconds: float, deliveries: int) -> None:
    """The web's CPU per delivery. Every run's web does the same work for each delivery (verify,
    look up, record, enqueue), so this moves only with the machine's moment under load. The speed
    check at the start measures an idle machine, and it read 108 to 109 ms for runs whose p95 went
    from 7.8 to 10.7 s, each process (a fresh web included) using up to a third more CPU."""
    print(
        f"yardstick: the web's CPU a webhook delivery {web_seconds * 1000 / max(deliveries, 1):.2f} ms"
        " (the same work in every run; higher means a slower moment of the machine)"
    )


def print_cpu(seconds: dict[str, float], elapsed: float, git_seconds: float) -> None:
    """Where the cores went while the run was measured: CPU seconds and the share of that time;
    ``git_seconds``: the workers' git processes' part of their figures."""
    busiest = sorted(seconds.items(), key=lambda item: -item[1])
    print(
        f"CPU over {elapsed:.1f}s, in CPU seconds: "
        + ", ".join(f"{name} {used:.1f}" for name, used in busiest if used >= 0.05)
        + f" (all: {sum(seconds.values()):.1f} s, {sum(seconds.values()) / elapsed:.2f} of 2 cores;"
        f" a worker's figure includes its git processes, {git_seconds:.1f} s of the workers' together)"
    )


def per_source_count(pushed: list[Any], source_id: int) -> int:
    return sum(1 for source, _, _, _ in pushed if source.pk == source_id)


def report_pushes(pushed: list[Any], fleet: list[Any]) -> None:
    from gitops.cluster import get_cluster
    from gitops.models import Change

    first_change: dict[tuple[int, str], float] = {}
    for source_id, commit, at in Change.objects.filter(
        source_id__in=[source.pk for source, _ in fleet], action__in=["update", "create"]
    ).values_list("source_id", "commit", "at"):
        key = (source_id, commit)
        first_change[key] = min(first_change.get(key, at.timestamp()), at.timestamp())
    lags, lost = [], 0
    for source, repo, number, when in pushed:
        # Applied once this commit, or a later one carrying it, has reached the cluster.
        arrivals = [
            first_change[(source.pk, commit)]
            for commit in repo.pending[number - 1 : per_source_count(pushed, source.pk)]
            if (source.pk, commit) in first_change
        ]
        if arrivals:
            lags.append(min(arrivals) - when)
        else:
            lost += 1
    cluster = get_cluster()
    wrong = 0
    for source, repo in fleet:
        final: dict[str, str] = {}
        for index in range(per_source_count(pushed, source.pk)):
            final[repo.touched[index]] = f"push-{index + 1}"
        for configmap in cluster.list_configmaps(repo.namespace):
            name = configmap["metadata"]["name"]
            if name in final and configmap["data"]["VALUE"] != final[name]:
                wrong += 1
    print(
        f"applied: {len(lags)} of {len(pushed)} pushes; not applied: {lost}; "
        f"ConfigMaps not holding their last push: {wrong}; commits applied (after coalescing): {len(first_change)}"
    )
    if lags:
        print(
            f"push -> applied: p50 {statistics.median(lags):.2f}s   p95 {percentile(lags, 0.95):.2f}s"
            f"   max {max(lags):.2f}s   (goal: none lost, p95 <= 10 s)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    poll = sub.add_parser("poll")
    poll.add_argument("--sources", type=int, default=1000)
    poll.add_argument("--configmaps", type=int, default=50)
    poll.add_argument("--interval", type=int, default=60)
    poll.add_argument("--workers", type=int, default=2)
    poll.add_argument(
        "--concurrency", type=int, default=1, help="reconciles each worker process runs at once"
    )
    poll.add_argument("--duration", type=float, default=180)
    pushes = sub.add_parser("pushes")
    pushes.add_argument("--sources", type=int, default=200)
    pushes.add_argument("--configmaps", type=int, default=10)
    pushes.add_argument("--pushes", type=int, default=1000)
    pushes.add_argument("--seconds", type=float, default=10)
    pushes.add_argument("--workers", type=int, default=2)
    pushes.add_argument(
        "--concurrency", type=int, default=1, help="reconciles each worker process runs at once"
    )
    for command in (poll, pushes):
        command.add_argument(
            "--no-live-cache",
            dest="live_cache",
            action="store_false",
            help="plan by listing every namespace, as without the live-cache process",
        )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sluice-fleet-"))
    env = Environment(workdir)
    try:
        env.setup()
        print(f"machine speed: {machine_speed():.0f} ms for a fixed piece of Python work (lower is faster)")
        {"poll": run_poll, "pushes": run_pushes}[args.mode](args, env)
    finally:
        env.close()
        if os.environ.get("BENCH_KEEP_LOGS"):
            print(f"logs kept in {workdir / 'logs'}")
            shutil.rmtree(workdir / "repos", ignore_errors=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
