"""A cold apply on one core and on all of them: how much of it runs one thing at a time, and what more
cores would give, for Sluice and for kubectl (issue #15's "cold apply >= 3x kubectl").

Core counts this machine does not have cannot be measured, so this measures two and fits Amdahl's
law to them: a run's time on n cores is T(n) = S + P/n, where S is what runs one thing at a time
whatever the cores (a parse, a database statement waited for, a round trip) and P is the work spread
over them. Two runs give both: P = (T(1) - T(n)) * n / (n - 1) and S = T(1) - P, for Sluice and for
kubectl apart. The figures for more cores are the model's, not measurements: it assumes the work
itself does not change with the core count (no more lock contention, memory bandwidth to spare),
which holds less the further it reaches; with two points the fit matches them exactly, so only more
rounds (their medians) say how steady it is.

Each run starts an embedded stack of its own (in a temporary SLUICE_STACK_DIR, its own PostgreSQL),
from this process restricted to the run's CPUs, so that every process of it (kube-apiservers, etcd,
PostgreSQL and its backends, Redis, the controllers, kwok) and of the benchmark (bench/reconcile.py
--sizes SIZE: its worker, live cache and kubectl) inherits them from the start, and each Go program
sizes its scheduler to them as it starts. The stack is stopped after the run. A stack already up
(.stack) is left alone: its idle processes still share the machine.

Usage: python bench/cores.py [--size 10000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# bench/reconcile.py's summary row (``print_rows``): objects, cold apply, no-op, 1-file, no-op LIST,
# RSS | kubectl apply, kubectl diff, kubectl no-op | apply x, no-op x, cache x.
_ROW = re.compile(
    r"^\s*(?P<size>\d+)\s+(?P<sluice>[\d.]+)s\s+[\d.]+s\s+[\d.]+s\s+[\d.]+s\s+\d+\s+\|"
    r"\s+(?P<kubectl>[\d.]+)s\s+[\d.]+s\s+[\d.]+s\s+\|\s+[\d.]+x\s+[\d.]+x\s+[\d.]+x\s*$"
)
_CPU_LINE = re.compile(r"cold apply CPU per 1,000 creates: (.*)$")
# What a shell that loaded .stack/env carries: the run's own stack must not take any of it (with
# DATABASE_URL set, the devstack would use that database instead of starting its own).
_STACK_VARIABLES = (
    "CELERY_BROKER_URL",
    "DATABASE_URL",
    "KUBECONFIG",
    "REDIS_URL",
    "SECRET_KEY",
    "SLUICE_ALLOW_HTTP",
    "SLUICE_MEMBER_CLUSTERS",
    "SLUICE_STACK_DIR",
)


@dataclass(frozen=True)
class Run:
    cores: int
    sluice: float  # cold apply, seconds
    kubectl: float
    cpu_line: str


@dataclass(frozen=True)
class Fit:
    serial: float  # S, seconds
    parallel: float  # P, seconds of work spread over the cores

    @classmethod
    def of(cls, one: float, many: float, cores: int) -> Fit:
        parallel = (one - many) * cores / (cores - 1)
        return cls(serial=one - parallel, parallel=parallel)

    @property
    def resolved(self) -> bool:
        return self.serial > 0 and self.parallel > 0

    def at(self, cores: int) -> float:
        return self.serial + self.parallel / cores


def run_command(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Runs ``command``; interrupted, it gives the command (which got the same signal) time to clean up
    (bench/reconcile.py stops its worker and live cache, and drops its database) before going on."""
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as child:
        try:
            out, err = child.communicate()
        except KeyboardInterrupt:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=120)
            raise
    return subprocess.CompletedProcess(command, child.returncode, out, err)


@contextlib.contextmanager
def stack_on(cpus: set[int]) -> Iterator[dict[str, str]]:
    """An embedded stack of its own, every process of it on ``cpus``; yields the environment that reaches it."""
    directory = Path(tempfile.mkdtemp(prefix="sluice-cores-stack-"))
    env = {name: value for name, value in os.environ.items() if name not in _STACK_VARIABLES}
    env["SLUICE_STACK_DIR"] = str(directory)
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)  # inherited by the stack and the benchmark, and all they start
    try:
        started = run_command([sys.executable, "-m", "devstack", "up"], env)
        if started.returncode != 0:
            raise RuntimeError(
                f"the run's stack did not start:\n{started.stdout[-2000:]}\n{started.stderr[-2000:]}"
            )
        check_affinity(directory, cpus)
        yield env
    finally:
        os.sched_setaffinity(0, own)
        run_command([sys.executable, "-m", "devstack", "down"], env)
        shutil.rmtree(directory, ignore_errors=True)


def check_affinity(directory: Path, cpus: set[int]) -> None:
    """Fails unless every process the stack recorded, and each of its threads, runs on ``cpus`` only."""
    processes = json.loads((directory / "state.json").read_text()).get("processes", {})
    if not processes:
        raise RuntimeError(f"the run's stack recorded no process in {directory}")
    for name, process in processes.items():
        for task in Path(f"/proc/{process['pid']}/task").iterdir():
            allowed = os.sched_getaffinity(int(task.name))
            if allowed != cpus:
                raise RuntimeError(
                    f"{name} (thread {task.name}) runs on CPUs {sorted(allowed)}, not {sorted(cpus)}"
                )


def measure(size: int, cpus: set[int]) -> Run:
    """bench/reconcile.py at ``size`` on a stack of its own, everything on ``cpus``."""
    print(f"-- on {len(cpus)} core(s)", flush=True)
    with stack_on(cpus) as env:
        done = run_command([sys.executable, str(ROOT / "bench" / "reconcile.py"), "--sizes", str(size)], env)
    if done.returncode != 0:
        raise RuntimeError(f"bench/reconcile.py failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    summary = done.stdout.split("== summary", 1)[-1].splitlines()
    row = next((match for line in summary if (match := _ROW.match(line))), None)
    cpu = next((match.group(1) for line in summary if (match := _CPU_LINE.search(line))), None)
    if row is None or int(row["size"]) != size or cpu is None:
        raise RuntimeError(f"bench/reconcile.py's summary is not as expected:\n{done.stdout[-3000:]}")
    run = Run(cores=len(cpus), sluice=float(row["sluice"]), kubectl=float(row["kubectl"]), cpu_line=cpu)
    print(
        f"   cold apply: Sluice {run.sluice:.2f} s, kubectl {run.kubectl:.2f} s"
        f" (kubectl / Sluice {run.kubectl / run.sluice:.2f}); CPU per 1,000: {run.cpu_line}",
        flush=True,
    )
    return run


def report(runs: list[Run], cores: int) -> None:
    """Each core count's median, the fit, and the model's figures for more cores."""
    one = [run for run in runs if run.cores == 1]
    many = [run for run in runs if run.cores == cores]
    sluice = Fit.of(
        statistics.median(r.sluice for r in one), statistics.median(r.sluice for r in many), cores
    )
    kubectl = Fit.of(
        statistics.median(r.kubectl for r in one), statistics.median(r.kubectl for r in many), cores
    )
    print(
        f"\n== fit over {len(one)} run(s) of each: T(n) = S + P/n (S one thing at a time; P spread over the cores)"
    )
    for name, fit in (("Sluice", sluice), ("kubectl", kubectl)):
        print(f"{name:>8}: S {fit.serial:6.2f} s, P {fit.parallel:6.2f} s")
    counts = sorted({1, cores} | ({4, 8} if sluice.resolved and kubectl.resolved else set()))
    print(f"{'cores':>8} {'Sluice':>9} {'kubectl':>9} {'kubectl / Sluice':>17}")
    for count in counts:
        kind = "medians measured" if count in (1, cores) else "the model's"
        mine, theirs = sluice.at(count), kubectl.at(count)
        print(f"{count:>8} {mine:>8.2f}s {theirs:>8.2f}s {theirs / mine:>16.2f}x  ({kind})")
    if not (sluice.resolved and kubectl.resolved):
        print(
            "a part at or below 0: the runs differ by less than their noise; no figure for more cores (run more --rounds)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument(
        "--rounds", type=int, default=1, help="one-core and all-core runs, in alternating order"
    )
    args = parser.parse_args()
    every = os.sched_getaffinity(0)  # what this process may use: a cgroup's CPU quota is not counted
    if len(every) < 2:
        print("this needs 2 CPUs or more")
        return 1
    first = min(every)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # through the stacks' cleanup

    signal.signal(signal.SIGTERM, stop)
    runs: list[Run] = []
    for round_index in range(args.rounds):
        order = [{first}, every] if round_index % 2 == 0 else [every, {first}]
        runs += [measure(args.size, cpus) for cpus in order]
    report(runs, len(every))
    return 0


if __name__ == "__main__":
    sys.exit(main())
