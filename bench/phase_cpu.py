"""CPU per phase of a cold apply, in process, without a profiler: where the worker's CPU per object goes.

bench/reconcile.py measures a cold apply's CPU through a real worker, whole;
bench/profile_reconcile.py breaks it down with cProfile, whose overhead inflates
the many small calls of a parse or a request several times over. This one runs
cold applies in its own process (a fresh repository each, as bench/reconcile.py
writes them) and wraps each phase where its caller looks it up, adding the
calling thread's CPU time from ``getrusage(RUSAGE_THREAD)`` (user and system,
the kernel's share printed apart), and the wall time it took: a phase whose wall
time is far above its CPU waited (on PostgreSQL, the apiserver, git). Nested
phases are indented under the phase that calls them; "rest of the thread" is the
pass's thread's CPU (and the pass's wall time) outside the top-level phases, and the
process's CPU counts its other threads too (the fence's, an apply pool's). That subtraction holds
for what this runs, one cluster (its applies on the pass's thread) and a fresh source (no rollout
superseded, whose rollback would record changes inside choosing the rollout). Each wrapped call
costs about 2 µs of its own (measured before the wall clock's two `perf_counter` calls, a tenth of a
µs, were added), most of it outside the phase it times: some 30,000 calls a pass of 10,000 (a parse,
a check, an intent each) add about 55 to 60 ms to the totals. The collector is tuned as
a worker tunes it (``gitops.memory``). Each pass's objects are deleted before the next; the
apiserver's CPU is that default cluster's, from /proc, as bench/reconcile.py reads it.

Usage: python bench/phase_cpu.py [--size 10000] [--passes 2]
"""

from __future__ import annotations

import argparse
import collections
import functools
import gc
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reconcile import Bench, apiserver_cpu, bench_environment, delete_namespaces

# (label, module, attribute, the label of the phase it runs inside, or "" at the top). Functions are
# wrapped in every module that imported them by name; ``ApplyIntent.for_item`` on its class.
PHASES: list[tuple[str, str, str, str]] = [
    ("revision", "gitops.fetch.revisions", "revision_desired_state", ""),
    ("YAML", "gitops.desired.documents", "load_yaml", "revision"),
    ("ConfigMap checks", "gitops.desired.configmaps", "parse_configmap", "revision"),
    ("targets", "gitops.desired.revision", "_expand", "revision"),
    ("choosing the rollout", "gitops.rollout.lifecycle", "rollout_choose", ""),
    ("planning", "gitops.plan.planner", "plan", ""),
    ("intents", "gitops.record.changelog", "intents_write", ""),
    ("making them", "gitops.models", "ApplyIntent.for_item", "intents"),
    ("writing them", "gitops.record.bulk", "_batch_insert", "intents"),
    ("encoding the document", "gitops.record.bulk", "_document", "writing them"),
    ("applies", "gitops.cluster.apply", "intents_apply", ""),
    ("change log", "gitops.record.changelog", "changes_record", ""),
]


class PhaseClock:
    """Each phase's CPU seconds (user + system) and the system part, summed over its calls."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = collections.defaultdict(float)
        self.kernel: dict[str, float] = collections.defaultdict(float)
        self.wall: dict[str, float] = collections.defaultdict(float)

    def wrap(self, label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            before, started = resource.getrusage(resource.RUSAGE_THREAD), time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.wall[label] += time.perf_counter() - started
                after = resource.getrusage(resource.RUSAGE_THREAD)
                system = after.ru_stime - before.ru_stime
                self.spent[label] += after.ru_utime - before.ru_utime + system
                self.kernel[label] += system

        return timed

    def install(self) -> None:
        for label, module_name, attribute, _ in PHASES:
            __import__(module_name)
            module = sys.modules[module_name]
            if "." in attribute:  # a classmethod: wrapped on its class
                class_name, method = attribute.split(".")
                owner = getattr(module, class_name)
                original = getattr(owner, method).__func__
                setattr(owner, method, classmethod(self.wrap(label, original)))
                continue
            original = getattr(module, attribute)
            timed = self.wrap(label, original)
            for loaded in list(sys.modules.values()):
                names = getattr(loaded, "__dict__", {})
                for name, value in list(names.items()):
                    if value is original:
                        setattr(loaded, name, timed)

    def clear(self) -> None:
        self.spent.clear()
        self.kernel.clear()
        self.wall.clear()


def print_pass(
    index: int, clock: PhaseClock, *, cpu: tuple[float, float], wall: float, apiserver: float, size: int
) -> None:
    """``cpu``: the pass's thread's and the whole process's (other threads: the fence's, an apply pool's)."""
    thread, process = cpu
    print(
        f"pass {index}: {size} creates, wall {wall:.2f} s; the process's CPU {process:.3f} s"
        f" ({process / size * 1000:.3f} s per 1,000), the apiserver's {apiserver:.2f} s"
        f" ({100 * process / max(apiserver, 1e-9):.1f}%); the pass's thread {thread:.3f} s"
    )
    depth = {"": -1}
    for label, _, _, inside in PHASES:
        depth[label] = depth[inside] + 1
        indent = "  " * (depth[label] + 1)
        print(
            f"{indent}{label:<{28 - len(indent)}} {clock.spent[label]:7.3f} s (kernel {clock.kernel[label]:.3f}),"
            f" wall {clock.wall[label]:6.3f} s"
        )
    top = sum(clock.spent[label] for label, _, _, inside in PHASES if not inside)
    top_wall = sum(clock.wall[label] for label, _, _, inside in PHASES if not inside)
    print(f"  {'rest of the thread':<26} {thread - top:7.3f} s{'':<17}wall {wall - top_wall:6.3f} s")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()
    with bench_environment() as (env, workdir):
        bench = Bench({**env, "SLUICE_DATA_DIR": str(workdir / "data")}, workdir)
        bench.setup_django()
        from gitops import memory
        from gitops.reconcile import source_sync

        memory.tune_garbage_collector()
        clock = PhaseClock()
        clock.install()
        for index in range(args.passes):
            namespaces, _, source = bench.source_with_repo(f"c{index}", args.size)
            gc.collect()
            clock.clear()
            thread, process = time.thread_time(), time.process_time()
            apiserver, wall = apiserver_cpu(), time.perf_counter()
            result = source_sync(source.pk)
            cpu = (time.thread_time() - thread, time.process_time() - process)
            wall, apiserver = time.perf_counter() - wall, apiserver_cpu() - apiserver
            assert str(result.outcome) == "applied", result
            print_pass(index, clock, cpu=cpu, wall=wall, apiserver=apiserver, size=args.size)
            delete_namespaces(namespaces, bench.env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
