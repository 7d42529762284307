"""A settled source's no-op poll, with and without a flag set beside its ConfigMaps, in process.

Two sources of the same ConfigMaps (spread over the benchmark's namespaces), one of them with a flag
set of 200 flags too, each applied, then polled with nothing to do, the live cache running: the
median CPU and wall time of a poll of each, and the flag set's cost as their ratio. A poll of a
settled source runs at 100%, where a flag set is Git's own (no canary): it should cost about what
the ConfigMaps alone cost.

Usage: python bench/flag_poll.py [--size 1000] [--flags 200] [--polls 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile_reconcile import start_live_cache
from reconcile import Bench, bench_environment, git

WARM_POLLS = 5


def flag_set(count: int) -> dict[str, Any]:
    targeting = {"if": [{"in": ["@example.com", {"var": "email"}]}, "on", "off"]}
    return {
        "flags": {
            f"flag-{index}": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "on",
                "targeting": targeting,
            }
            for index in range(count)
        }
    }


def settled_source(bench: Bench, label: str, size: int, flags: int) -> tuple[Any, list[str]]:
    """A source of ``size`` ConfigMaps (and, with ``flags``, a flag set in a namespace of its own),
    applied once."""
    from gitops import source_admin
    from gitops.reconcile import source_sync

    namespaces = bench.namespaces(f"{label}")
    targets, flags_namespace = namespaces[:-1], namespaces[-1]
    work = bench.write_repo(size, namespaces, bench.workdir / label)
    for path in (work / "configmaps" / flags_namespace).glob("*.yaml"):  # every ConfigMap in a target
        path.write_text(path.read_text().replace(flags_namespace, targets[0]))
    policy = "targets:\n  namespaces: [" + ", ".join(targets) + "]\n"
    if flags:
        policy += f"flags:\n  namespace: {flags_namespace}\n"
        (work / "flags").mkdir(exist_ok=True)
        (work / "flags" / "checkout.json").write_text(json.dumps(flag_set(flags)))
    (work / "sluice.yaml").write_text(policy)
    git(work, "add", "--all")
    git(work, "commit", "--quiet", "-m", "settled")
    git(work, "push", "--quiet", "origin", "HEAD:refs/heads/main")
    remote = f"file://{bench.workdir / label / 'remote.git'}"
    source = source_admin.source_add(
        name=f"{label}-{bench.run_id}", url=remote, allowed_namespaces=[f"{label}-*"]
    )
    result = source_sync(source.pk)
    assert str(result.outcome) == "applied", (result.outcome, result.errors)
    return source, namespaces


def polls(source: Any, count: int) -> tuple[float, float]:
    """The median CPU and wall seconds of ``count`` no-op polls, after a few to warm up."""
    from gitops.reconcile import source_sync

    cpus, walls = [], []
    for index in range(WARM_POLLS + count):
        wall, cpu = time.perf_counter(), time.process_time()
        result = source_sync(source.pk, report_rollout=False)
        if index >= WARM_POLLS:
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        assert str(result.outcome) == "unchanged", result.outcome
    return statistics.median(cpus), statistics.median(walls)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--flags", type=int, default=200)
    parser.add_argument("--polls", type=int, default=30)
    args = parser.parse_args()
    with bench_environment() as (env, workdir):
        bench = Bench({**env, "SLUICE_DATA_DIR": str(workdir / "data")}, workdir)
        bench.setup_django()
        plain, plain_namespaces = settled_source(bench, "fplain", args.size, 0)
        flagged, flagged_namespaces = settled_source(bench, "fflags", args.size, args.flags)
        # The plain source's last namespace holds nothing: the cache watches only what sources target.
        live_cache = start_live_cache(bench, plain_namespaces[:-1] + flagged_namespaces)
        try:
            measured = {
                "ConfigMaps only": polls(plain, args.polls),
                "with the flag set": polls(flagged, args.polls),
            }
        finally:
            live_cache.stop()
    print(
        f"{args.size} ConfigMaps; a flag set of {args.flags} flags beside them or not; {args.polls} no-op polls each"
    )
    for label, (cpu, wall) in measured.items():
        print(f"  {label:<18} CPU median {cpu * 1e3:7.1f} ms   wall median {wall * 1e3:7.1f} ms")
    ratio = measured["with the flag set"][0] / measured["ConfigMaps only"][0]
    print(
        f"flag set x = a poll's CPU with the flag set / without it: {ratio:.2f}x (1.0x: the flag set costs a poll nothing)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
