"""Runs every benchmark under bench/ at a tiny size, to prove each still runs: not a measurement.

Only `make bench-smoke` measured anything in CI, so a benchmark whose set-up broke stayed broken unseen
(bench/dashboard.py failed every run for a day, 2026-12-06 to 2026-12-07). `make bench-check` runs
each one here on one shared embedded stack (started if it is not up, then stopped) and fails if any
exits non-zero or overruns its time; `.ci/run` calls it.

    python scripts/bench_check.py [NAME ...]    # NAME: a script's name without .py, e.g. dashboard
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Each benchmark's smallest meaningful run; a few seconds to a minute or so each on 2 cores.
TINY_RUNS: dict[str, list[str]] = {
    "reconcile": ["--sizes", "50", "--cold-samples", "1"],
    "abort": ["--sizes", "20"],
    "dashboard": ["--changes", "2000", "--sources", "5", "--flags", "3", "--runs", "2"],
    "fleet-poll": ["poll", "--sources", "10", "--configmaps", "2", "--duration", "20"],
    "fleet-pushes": ["pushes", "--sources", "5", "--pushes", "20", "--seconds", "5"],
    "clusters": ["--per-cluster", "20"],
    "consumer_gate": ["--deployments", "1", "--runs", "1"],
    "drift_heal": ["--edits", "2", "--configmaps", "10"],
    "webhook_cpu": ["--webhooks", "20"],
    "flag_poll": ["--size", "50", "--flags", "5", "--polls", "3"],
    "pass_stages": ["--size", "50", "--passes", "2"],
    "phase_cpu": ["--size", "50", "--passes", "1"],
    "malformed_input": [],
    "cores": ["--size", "50", "--rounds", "1"],
    "push_latency": ["--pushes", "3", "--configmaps", "10"],
    "profile_reconcile": ["--sizes", "50", "--noop-sizes", "50", "--change-sizes", "50", "--top", "5"],
}
# A tiny run that takes this long is stuck, not slow.
TIMEOUT_SECONDS = 600
# How long an interrupted benchmark has for its clean-up before its group is killed.
STOP_GRACE_SECONDS = 180


def script_of(name: str) -> Path:
    return ROOT / "bench" / f"{name.split('-', maxsplit=1)[0]}.py"


def run(name: str, scratch: Path) -> tuple[int, float, str]:
    """The run's exit code (-1: it overran), its wall time and the end of its output."""
    arguments = list(TINY_RUNS[name])
    if name == "profile_reconcile":  # its profiles go to scratch, not bench/results/
        arguments += ["--out", str(scratch / "profiles")]
    started = time.monotonic()
    # A session of its own: one that overruns is stopped with everything it started (its worker, live
    # cache, a stack of its own), which would otherwise take the next benchmark's tasks.
    process = subprocess.Popen(
        [sys.executable, str(script_of(name)), *arguments],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        return -1, time.monotonic() - started, _stopped(process)[-3000:]
    except BaseException:  # Ctrl-C, CI cancelling: its own session does not hear it, so it is told
        _stopped(process)
        raise
    return process.returncode, time.monotonic() - started, output[-3000:]


def _stopped(process: subprocess.Popen[str]) -> str:
    """Stops an overrun benchmark's whole process group: SIGINT first (Python's KeyboardInterrupt, so its
    clean-up runs: its worker and live cache run in sessions of their own), then SIGKILL."""
    for sent in (signal.SIGINT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sent)
        try:
            # cores.py waits up to 120 s for its inner run, then stops a stack of its own: time for both.
            return process.communicate(timeout=STOP_GRACE_SECONDS)[0] or ""
        except subprocess.TimeoutExpired:
            continue
    return ""


def main(names: list[str]) -> int:
    from devstack import Stack  # noqa: PLC0415 - after ROOT is on the path

    unknown = sorted(set(names) - set(TINY_RUNS))
    if unknown:
        print(f"no such benchmark: {', '.join(unknown)} (known: {', '.join(TINY_RUNS)})", file=sys.stderr)
        return 2
    listed = {script_of(name).name for name in TINY_RUNS}
    present = {path.name for path in (ROOT / "bench").glob("*.py")}
    missing, unlisted = sorted(listed - present), sorted(present - listed)
    if missing or unlisted:
        print(f"TINY_RUNS and bench/ disagree: missing {missing}, not listed {unlisted}", file=sys.stderr)
        return 2
    # Started in the background by a shell that ignores SIGINT, the benchmarks would inherit that and
    # ignore the SIGINT that asks them to clean up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stack = Stack()
    started_stack = not stack.is_up()
    stack.up()
    failed: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="sluice-bench-check-") as scratch:
            for name in names or list(TINY_RUNS):
                code, seconds, tail = run(name, Path(scratch))
                verdict = "ok" if code == 0 else ("overran" if code < 0 else f"exit {code}")
                print(f"{name:<18} {verdict:<8} {seconds:6.1f} s", flush=True)
                if code != 0:
                    failed.append(name)
                    print("    " + tail.replace("\n", "\n    "), flush=True)
    finally:
        if started_stack:
            stack.down()
    if failed:
        print(f"{len(failed)} benchmark(s) failed: {', '.join(failed)}")
        return 1
    print("every benchmark ran")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
