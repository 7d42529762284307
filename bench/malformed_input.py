"""Malformed-input benchmark: what refusing each case of the corpus costs a worker.

Every case of tests/corpus (static and generated, at the default limits) is loaded by the pure
loader the way a worker loads a revision (file sizes from the Git listing, blobs read on demand),
each in a fresh Python process. For each it measures the wall time of ``load_revision`` and the
extra memory: the process's peak RSS during the load minus its RSS just before (the peak is reset
through /proc/self/clear_refs first, so building the input does not count).

Bounds (issue #10): a file is refused within 2 s and under 100 MB of extra memory. Cases that
break a revision-wide limit (file count, total bytes, total values, expanded objects) cost what
the largest revision the limits allow costs, by design; they are held to 10 s and 400 MB, and the
cost of the largest allowed revision is printed beside them for comparison.

Usage: python bench/malformed_input.py [--case NAME]
Exits non-zero when a case is accepted, does not name its file, or breaks its bounds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FILE_SECONDS, FILE_MIB = 2.0, 100.0
REVISION_SECONDS, REVISION_MIB = 10.0, 400.0
LARGEST_ALLOWED = "largest-allowed-revision"


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def largest_allowed_revision() -> dict[str, bytes]:
    """Valid ConfigMaps up to just under max_revision_nodes: the most a revision may cost."""
    from gitops.desired.limits import DEFAULT_LIMITS
    from tests.corpus import baseline_revision

    files = baseline_revision()
    keys_per_file = DEFAULT_LIMITS.max_file_nodes // 2 - 20  # a key and its value each
    count = (DEFAULT_LIMITS.max_revision_nodes - 1000) // (2 * keys_per_file + 20)
    for index in range(count):
        data = "".join(f"  K{key}: v{key}\n" for key in range(keys_per_file))
        files[f"configmaps/big-{index}.yaml"] = (
            f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big-{index}\n  namespace: team-a\ndata:\n{data}"
        ).encode()
    return files


def measure(name: str) -> dict[str, Any]:
    """Runs in the child process: loads one case and reports what it cost."""
    from gitops.desired.errors import RevisionRejected
    from gitops.desired.revision import ParseCache, load_revision
    from tests.corpus import case_named

    if name == LARGEST_ALLOWED:
        files, expected, revision_wide = largest_allowed_revision(), None, True
    else:
        case = case_named(name)
        files, expected, revision_wide = case.revision(), case.file, case.revision_wide
    paths = {path: f"{index:040x}" for index, path in enumerate(sorted(files))}
    blobs = {paths[path]: content for path, content in files.items()}
    sizes = {path: len(content) for path, content in files.items()}

    Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS to the current RSS
    before = status_kib("VmRSS")
    started = time.perf_counter()
    errors = []
    try:
        load_revision(paths, lambda ids: {blob: blobs[blob] for blob in ids}, sizes=sizes, cache=ParseCache())
    except RevisionRejected as rejected:
        errors = rejected.errors
    seconds = time.perf_counter() - started
    extra_mib = (status_kib("VmHWM") - before) / 1024
    return {
        "case": name,
        "seconds": seconds,
        "extra_mib": extra_mib,
        "refused": bool(errors),
        "names_file": expected is None or any(error.file == expected for error in errors),
        "revision_wide": revision_wide,
    }


def run_case(name: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--case", name], capture_output=True, text=True, check=False, timeout=300
    )
    if done.returncode != 0:
        return {"case": name, "error": done.stderr[-2000:]}
    return dict(json.loads(done.stdout))


def problems_of(result: dict[str, Any]) -> list[str]:
    if "error" in result:
        return [f"crashed: {result['error']}"]
    if result["case"] == LARGEST_ALLOWED:
        return [] if not result["refused"] else ["the largest allowed revision was refused"]
    seconds_bound, mib_bound = (
        (REVISION_SECONDS, REVISION_MIB) if result["revision_wide"] else (FILE_SECONDS, FILE_MIB)
    )
    found = []
    if not result["refused"]:
        found.append("accepted")
    if not result["names_file"]:
        found.append("the errors do not name the offending file")
    if float(result["seconds"]) > seconds_bound:
        found.append(f"took {result['seconds']:.2f} s (bound {seconds_bound:g} s)")
    if float(result["extra_mib"]) > mib_bound:
        found.append(f"used {result['extra_mib']:.1f} MiB (bound {mib_bound:g} MiB)")
    return found


def report(results: list[dict[str, Any]]) -> int:
    cases = [r for r in results if r["case"] != LARGEST_ALLOWED and "error" not in r]
    for title, wide in (("file cases", False), ("revision-wide cases", True)):
        group = [r for r in cases if r["revision_wide"] == wide]
        slowest = max(group, key=lambda r: float(r["seconds"]))
        biggest = max(group, key=lambda r: float(r["extra_mib"]))
        print(
            f"{title}: {len(group)}; worst time {slowest['seconds']:.3f} s ({slowest['case']}); "
            f"worst extra memory {biggest['extra_mib']:.1f} MiB ({biggest['case']})"
        )
    print(
        "slowest five:",
        ", ".join(
            f"{r['case']} {r['seconds']:.2f}s" for r in sorted(cases, key=lambda r: -float(r["seconds"]))[:5]
        ),
    )
    print(
        "biggest five:",
        ", ".join(
            f"{r['case']} {r['extra_mib']:.1f}MiB"
            for r in sorted(cases, key=lambda r: -float(r["extra_mib"]))[:5]
        ),
    )
    for result in results:
        if result["case"] == LARGEST_ALLOWED and "error" not in result:
            print(
                f"for comparison, the largest revision the default limits accept: "
                f"{result['seconds']:.2f} s, {result['extra_mib']:.1f} MiB"
            )
    failures = [(r["case"], problem) for r in results for problem in problems_of(r)]
    for case, problem in failures:
        print(f"FAIL {case}: {problem}")
    print(f"{len(cases)} cases, {len(failures)} failures")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", help="measure one case in this process and print it as JSON")
    options = parser.parse_args()
    if options.case:  # the loader is pure: no Django set-up needed
        print(json.dumps(measure(options.case)))
        return 0
    from tests.corpus import GENERATORS, static_cases

    names = [case.name for case in static_cases()] + list(GENERATORS) + [LARGEST_ALLOWED]
    results = []
    for index, name in enumerate(names, 1):
        results.append(run_case(name))
        print(f"\r{index}/{len(names)} {name:<50}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return report(results)


if __name__ == "__main__":
    sys.exit(main())
