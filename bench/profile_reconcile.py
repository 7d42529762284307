"""CPU profile of a reconcile, in the process that runs it: cProfile on a cold apply and a no-op.

For each size it writes a fresh repository of ConfigMaps (as bench/reconcile.py
does), then calls the reconcile in this process, not through a Celery worker,
so one profiler sees it all:
  - cold apply: the first sync of the fresh source;
  - no-op reconcile: a sync when nothing changed (after one unprofiled no-op).

Intents are applied on a thread pool: every thread that applies gets its own
profiler and the tables merge them with the main thread's. The profilers count
CPU time (``time.thread_time``), not wall time, so waiting for the apiserver is
not in them; profiling slows the run itself down, so compare tables, not
seconds with bench/reconcile.py.

Usage: python bench/profile_reconcile.py [--sizes 1000,10000] [--top 15] [--out bench/results]
(PROFILE_SQL=1 also prints each profiled pass's SQL statements with their times.)
Prints the top entries by cumulative and by own time, and keeps each run's
pstats file under --out (open it with ``python -m pstats``).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import os
import pstats
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reconcile import NAMESPACES, ROOT, Bench, apiserver_cpu, bench_environment


class ThreadProfiles:
    """One CPU-time profiler per thread that runs a wrapped function, merged at the end."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.profiles: list[cProfile.Profile] = []
        self.lock = threading.Lock()

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def profiled(*args: Any, **kwargs: Any) -> Any:
            profile = getattr(self.local, "profile", None)
            if profile is None:
                profile = self.local.profile = cProfile.Profile(time.thread_time)
                with self.lock:
                    self.profiles.append(profile)
            profile.enable()
            try:
                return function(*args, **kwargs)
            finally:
                profile.disable()

        return profiled


def sampled_sync(source_id: int, label: str, out: Path, top: int, py_spy: str) -> dict[str, Any]:
    """The sync under py-spy, attached to this process: samples of every thread that runs (not idle)."""
    from gitops.reconcile import source_sync

    out.mkdir(parents=True, exist_ok=True)
    collapsed = out / f"{label}.collapsed"
    sampler = subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(os.getpid()),
            "--format",
            "raw",
            "--rate",
            "250",
            "-o",
            str(collapsed),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1)  # py-spy attaches before the sync starts
    cpu_before, apiserver_before, wall_before = time.process_time(), apiserver_cpu(), time.perf_counter()
    result = source_sync(source_id)
    figures = {
        "wall": time.perf_counter() - wall_before,
        "cpu": time.process_time() - cpu_before,
        "apiserver_cpu": apiserver_cpu() - apiserver_before,
        "outcome": str(result.outcome),
        "summary": result.summary,
    }
    sampler.send_signal(signal.SIGINT)
    sampler.wait(timeout=60)
    print(f"\n==== {label} (py-spy): {figures}")
    print_collapsed(collapsed, top)
    return figures


def print_collapsed(collapsed: Path, top: int) -> None:
    """Top functions of py-spy's collapsed stacks: by samples in the function or below, and in it alone."""
    own: Counter[str] = Counter()
    below: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [frame for frame in stack.split(";") if not frame.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples = int(count)
        total += samples
        own[_function(frames[-1])] += samples
        for function in {_function(frame) for frame in frames}:
            below[function] += samples
    for title, counter in (("cumulative", below), ("own time", own)):
        print(f"-- top {top} by {title}: % of {total} samples of running threads")
        for function, samples in counter.most_common(top):
            print(f"{100 * samples / max(total, 1):6.1f}%  {function}")


def _function(frame: str) -> str:
    """``name (path/to/file.py:12)`` as ``name (file.py)``: one row per function, not per line."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.rstrip(')').rpartition(':')[0]).name})"


def profiled_sync(source_id: int, label: str, out: Path, top: int) -> dict[str, Any]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from gitops.cluster import apply
    from gitops.reconcile import source_sync

    threads = ThreadProfiles()
    original = apply._apply_one
    apply._apply_one = threads.wrap(original)  # type: ignore[method-assign]
    # A one-file change waits more than it computes: its profile is in wall time.
    main = cProfile.Profile(time.perf_counter if label.startswith("change") else time.thread_time)
    cpu_before, apiserver_before, wall_before = time.process_time(), apiserver_cpu(), time.perf_counter()
    try:
        with CaptureQueriesContext(connection) as queries:
            main.enable()
            result = source_sync(source_id)
            main.disable()
    finally:
        apply._apply_one = original  # type: ignore[method-assign]
    if os.environ.get("PROFILE_SQL"):
        for query in queries.captured_queries:
            print(f"SQL {float(query['time']) * 1000:7.1f} ms  {query['sql'][:160]}")
    figures = {
        "queries": len(queries.captured_queries),
        "wall": time.perf_counter() - wall_before,
        "cpu": time.process_time() - cpu_before,
        "apiserver_cpu": apiserver_cpu() - apiserver_before,
        "outcome": str(result.outcome),
        "summary": result.summary,
    }
    stats = pstats.Stats(main)
    for profile in threads.profiles:
        stats.add(profile)
    out.mkdir(parents=True, exist_ok=True)
    stats.dump_stats(out / f"{label}.pstats")
    print(f"\n==== {label}: {figures}")
    for order in ("cumulative", "tottime"):
        text = io.StringIO()
        stats.stream = text  # type: ignore[attr-defined]
        stats.strip_dirs().sort_stats(order).print_stats(top)
        body = text.getvalue()
        print(f"-- top {top} by {order} (CPU seconds; {len(threads.profiles)} apply threads merged)")
        print(body[body.index("ncalls") :].rstrip())
    return figures


def profile_size(
    bench: Bench,
    size: int,
    out: Path,
    top: int,
    *,
    noop: bool,
    change: bool,
    py_spy: str,
    with_live_cache: bool = False,
) -> None:
    from gitops.reconcile import source_sync

    namespaces, work, source = bench.source_with_repo("p", size)
    profiled: Callable[[int, str], dict[str, Any]] = (
        functools.partial(sampled_sync, out=out, top=top, py_spy=py_spy)
        if py_spy
        else functools.partial(profiled_sync, out=out, top=top)
    )
    cold = profiled(source.pk, f"cold-{size}")
    assert cold["outcome"] == "applied", cold
    live_cache = start_live_cache(bench, namespaces) if with_live_cache else None
    try:
        if noop:
            assert str(source_sync(source.pk).outcome) == "unchanged"
            figures = profiled(source.pk, f"noop-{size}")
            assert figures["outcome"] == "unchanged", figures
        if change:
            profile_change(source.pk, namespaces, work, profiled, size)
    finally:
        if live_cache is not None:
            live_cache.stop()


def start_live_cache(bench: Bench, namespaces: list[str]) -> Any:
    """The live cache as deployed, once it vouches for every namespace of the source."""
    from tests.workers import LiveCacheProcess, poll

    live_cache = LiveCacheProcess(bench.env).start()
    try:
        poll(
            lambda: bench.live_cache_vouches(namespaces),
            timeout=300,
            what="the live cache to vouch for every namespace",
        )
    except BaseException:
        live_cache.stop()  # a cache left running would hold its lease against the next run's
        raise
    return live_cache


def profile_change(
    source_id: int,
    namespaces: list[str],
    work: Path,
    profiled: Callable[[int, str], dict[str, Any]],
    size: int,
) -> None:
    from gitops.reconcile import source_sync

    for revision in (1, 2):  # the first change warms what a long-running worker has warm
        Bench.change_one_file(work, namespaces, revision, size)
        if revision == 1:
            assert str(source_sync(source_id).outcome) == "applied"
    figures = profiled(source_id, f"change-{size}")
    assert figures["summary"].get("update") == 1, figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--noop-sizes", default="10000", help="sizes whose no-op reconcile is profiled too")
    parser.add_argument("--change-sizes", default="1000", help="sizes whose one-file change is profiled too")
    parser.add_argument(
        "--live-cache",
        action="store_true",
        help="run the live cache (as deployed) while the no-op and the one-file change are profiled",
    )
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--py-spy",
        default="",
        metavar="PATH",
        help="sample with this py-spy binary instead of cProfile (less overhead; needs ptrace)",
    )
    args = parser.parse_args()
    noop_sizes = {int(size) for size in args.noop_sizes.split(",") if size}
    change_sizes = {int(size) for size in args.change_sizes.split(",") if size}
    with bench_environment() as (env, workdir):
        bench = Bench({**env, "SLUICE_DATA_DIR": str(workdir / "data")}, workdir)
        bench.setup_django()
        for size in (int(size) for size in args.sizes.split(",")):
            print(f"-- {size} ConfigMaps across {NAMESPACES} namespaces", flush=True)
            profile_size(
                bench,
                size,
                args.out,
                args.top,
                noop=size in noop_sizes,
                change=size in change_sizes,
                py_spy=args.py_spy,
                with_live_cache=args.live_cache,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
