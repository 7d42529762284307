"""Wall time per stage of one-file passes, in process, with the live cache: where a pass's time goes.

bench/reconcile.py times a one-file change through a real worker; this one runs
the same passes in its own process (so the stages can be timed) and prints, per
stage, the median and the least wall time over the passes, then each SQL
statement's median time. The first few passes warm what a long-running worker
has warm and are not counted.

Usage: python bench/pass_stages.py [--size 10000] [--passes 20]
"""

from __future__ import annotations

import argparse
import collections
import functools
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile_reconcile import start_live_cache
from reconcile import Bench, bench_environment

WARM_PASSES = 3


def timed_stages(times: dict[str, list[float]]) -> None:
    """Wraps each stage where its caller looks it up, recording its wall time under its name."""
    from gitops import reconcile as pass_module
    from gitops.cluster import live, livestore
    from gitops.rollout import lifecycle, step

    stages: list[tuple[Any, str]] = [
        (pass_module, "revision_fetch"),
        (pass_module, "revision_desired_state"),
        (pass_module, "rollout_choose"),
        (pass_module, "_owed"),
        (lifecycle, "rollout_start"),
        (lifecycle, "desired_hash"),
        (step, "managed_keys"),
        (step, "live_state"),
        (livestore, "fresh_stamps_since"),
        (live, "_read_all"),
        (step, "plan"),
        (step, "intents_write"),
        (step, "intents_execute"),
        (step, "plan_snapshot"),
        (step, "flag_catalog_record"),
    ]
    for module, name in stages:
        setattr(module, name, _timed(getattr(module, name), name, times))


def _timed(function: Callable[..., Any], name: str, times: dict[str, list[float]]) -> Callable[..., Any]:
    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            times[name].append(time.perf_counter() - started)

    return timed


def _shape(sql: str) -> str:
    """A statement without its literals (timestamps, ids), so each pass's counts as the same one."""
    return re.sub(r"'[^']*'|\b\d+\b", "?", sql)[:70]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--passes", type=int, default=20)
    args = parser.parse_args()
    with bench_environment() as (env, workdir):
        bench = Bench({**env, "SLUICE_DATA_DIR": str(workdir / "data")}, workdir)
        bench.setup_django()
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        from gitops.reconcile import source_sync

        namespaces, work, source = bench.source_with_repo("s", args.size)
        assert str(source_sync(source.pk).outcome) == "applied"
        live_cache = start_live_cache(bench, namespaces)
        times: dict[str, list[float]] = collections.defaultdict(list)
        statements: dict[str, list[float]] = collections.defaultdict(list)
        walls, cpus = [], []
        try:
            timed_stages(times)
            for revision in range(1, WARM_PASSES + args.passes + 1):
                Bench.change_one_file(work, namespaces, revision, args.size)
                wall, cpu = time.perf_counter(), time.process_time()
                with CaptureQueriesContext(connection) as queries:
                    result = source_sync(source.pk)
                assert result.summary.get("update") == 1, result.summary
                if revision > WARM_PASSES:
                    walls.append(time.perf_counter() - wall)
                    cpus.append(time.process_time() - cpu)
                    for query in queries.captured_queries:
                        statements[_shape(query["sql"])].append(float(query["time"]))
        finally:
            live_cache.stop()
    print(f"{args.size} ConfigMaps, {args.passes} one-file passes in process (wall ms: median, least)")
    print(f"{'the pass':<40} {statistics.median(walls) * 1e3:8.1f} {min(walls) * 1e3:8.1f}")
    print(f"{'its CPU':<40} {statistics.median(cpus) * 1e3:8.1f} {min(cpus) * 1e3:8.1f}")
    for name, spent in sorted(times.items(), key=lambda item: -statistics.median(item[1])):
        counted = spent[-args.passes :]
        print(f"{name:<40} {statistics.median(counted) * 1e3:8.1f} {min(counted) * 1e3:8.1f}")
    print(f"SQL statements per pass: {len(queries.captured_queries)}; the slowest (median ms):")
    for sql, spent in sorted(statements.items(), key=lambda item: -statistics.median(item[1]))[:8]:
        print(f"  {statistics.median(spent) * 1e3:6.1f}  {sql}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
