"""A cold apply on one core and on all of them: how much of it runs one thing at a time, and what more
cores would give, for Sluice and for kubectl (issue #15's "cold apply >= 3x kubectl").

On 2 cores a cold apply of 10,000 ConfigMaps keeps both cores busy while the applies go out, and one
core while the revision is parsed and planned and while PostgreSQL writes the intents and the change
log; kubectl sends one apply at a time and waits for each answer. Core counts this machine does not
have cannot be measured, so this measures two and fits Amdahl's law to them: the run's time on n cores
is T(n) = S + P/n, where S is what runs on one core at a time, whatever the cores (the parse, the
database's statements, a round trip waited for), and P is the work spread over them. Two runs give
both: P = (T(1) - T(n)) * n / (n - 1) and S = T(1) - P, for Sluice and for kubectl apart. The figures
for 4 and 8 cores are that model's, not measurements: it assumes the work itself does not change with
the core count (no more lock contention, memory bandwidth to spare), which holds less the further it
reaches.

Every process of the embedded stack (kube-apiserver, etcd, PostgreSQL, Redis, the controllers, kwok:
their threads, and the children they have and will fork) and the benchmark (its worker, live cache and
kubectl) are pinned to CPU 0, bench/reconcile.py --sizes SIZE runs, then the same on every CPU. The
stack is started if it is not up, and then stopped; the affinity is given back to every CPU at the end.

Usage: python bench/cores.py [--size 10000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The summary row bench/reconcile.py prints: objects, Sluice's cold apply, ..., kubectl apply, ...
_ROW = re.compile(r"^\s*(\d+)\s+([\d.]+)s\s.*\|\s+([\d.]+)s\s")
_CPU_LINE = re.compile(r"cold apply CPU per 1,000 creates: (.*)$")


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

    def at(self, cores: int) -> float:
        return self.serial + self.parallel / cores


def stack_processes() -> list[int]:
    """The stack's processes and all their descendants (PostgreSQL's backends, the live cache)."""
    from devstack import Stack

    roots = {int(process["pid"]) for process in Stack()._state().get("processes", {}).values()}
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found = set(roots)
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in found} - found
        found |= children
        grew = bool(children)
    return sorted(found)


def pin(cpus: set[int]) -> int:
    """Gives every thread of the stack's processes ``cpus``; returns how many threads were pinned."""
    pinned = 0
    for pid in stack_processes():
        try:
            threads = [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
        except OSError:
            continue  # ended meanwhile
        for thread in threads:
            try:
                os.sched_setaffinity(thread, cpus)
                pinned += 1
            except OSError:
                continue
    return pinned


def measure(size: int, cpus: set[int]) -> Run:
    """bench/reconcile.py at ``size``, the stack and the benchmark on ``cpus``."""
    threads = pin(cpus)
    print(f"-- on {len(cpus)} core(s) ({threads} threads of the stack pinned)", flush=True)
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)  # inherited by the benchmark and what it starts
    try:
        done = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "reconcile.py"), "--sizes", str(size)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        os.sched_setaffinity(0, own)
    if done.returncode != 0:
        raise RuntimeError(f"bench/reconcile.py failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    summary = done.stdout.split("== summary", 1)[-1]
    row = next((match for line in summary.splitlines() if (match := _ROW.match(line))), None)
    cpu = next((match.group(1) for line in summary.splitlines() if (match := _CPU_LINE.search(line))), "")
    if row is None or int(row.group(1)) != size:
        raise RuntimeError(
            f"no summary row for {size} in bench/reconcile.py's output:\n{done.stdout[-3000:]}"
        )
    run = Run(cores=len(cpus), sluice=float(row.group(2)), kubectl=float(row.group(3)), cpu_line=cpu)
    print(
        f"   cold apply: Sluice {run.sluice:.2f} s, kubectl {run.kubectl:.2f} s"
        f" ({run.kubectl / run.sluice:.2f}x); CPU per 1,000: {run.cpu_line}",
        flush=True,
    )
    return run


def report(runs: list[Run], cores: int) -> None:
    """The medians of each core count's runs, the fit, and the model's figures for more cores."""

    def median(values: list[float]) -> float:
        ordered = sorted(values)
        return ordered[len(ordered) // 2]

    one = [run for run in runs if run.cores == 1]
    many = [run for run in runs if run.cores == cores]
    sluice = Fit.of(median([r.sluice for r in one]), median([r.sluice for r in many]), cores)
    kubectl = Fit.of(median([r.kubectl for r in one]), median([r.kubectl for r in many]), cores)
    print("\n== fit: T(n) = S + P/n (S runs on one core at a time; P is spread over the cores)")
    for name, fit in (("Sluice", sluice), ("kubectl", kubectl)):
        print(f"{name:>8}: S {fit.serial:6.2f} s, P {fit.parallel:6.2f} s")
    print(f"{'cores':>8} {'Sluice':>9} {'kubectl':>9} {'ratio':>7}")
    for count in sorted({1, cores, 4, 8}):
        kind = "measured" if count in (1, cores) else "model"
        mine, theirs = sluice.at(count), kubectl.at(count)
        print(f"{count:>8} {mine:>8.2f}s {theirs:>8.2f}s {theirs / mine:>6.2f}x  ({kind})")
    if sluice.serial <= 0 or kubectl.serial <= 0:
        print("a serial part at or below 0: the two runs differ by less than their noise; run more --rounds")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=1, help="one-core and all-core runs, alternating")
    args = parser.parse_args()
    every = set(range(os.cpu_count() or 1))
    if len(every) < 2:
        print("this needs 2 CPUs or more")
        return 1
    from devstack import Stack

    stack = Stack()
    started = not stack.is_up()
    stack.up()
    runs: list[Run] = []
    try:
        for _ in range(args.rounds):
            runs.append(measure(args.size, {0}))
            runs.append(measure(args.size, every))
    finally:
        pin(every)
        if started:
            stack.down()
    report(runs, len(every))
    return 0


if __name__ == "__main__":
    sys.exit(main())
