"""bench/cores.py's pure parts: reading bench/reconcile.py's summary, and the fit.

The summary is read from what ``reconcile.print_rows`` prints, so a change of its columns fails here
rather than putting another column's figure in a README table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


cores = _load("cores")
reconcile = _load("reconcile")


def _printed_summary(capsys: pytest.CaptureFixture[str], sluice: float, kubectl: float) -> list[str]:
    ours = {
        "cold": sluice,
        "noop": 0.027,
        "one_file": 0.094,
        "one_file_min": 0.08,
        "one_file_max": 0.12,
        "noop_read": 0.45,
        "rss_mib": 274.4,
        "cpu_per_1000": 0.318,
        "apiserver_cpu_per_1000": 1.237,
        "cache_cpu_per_1000": 0.07,
        "cold_samples": [sluice],
    }
    theirs = {"cold": kubectl, "diff": 38.5, "noop_apply": 19.52, "cold_samples": [kubectl]}
    reconcile.print_rows([(10000, ours, theirs)])
    return capsys.readouterr().out.splitlines()


@pytest.mark.parametrize(("sluice", "kubectl"), [(13.25, 24.5), (9.87, 123.45), (120.0, 9.5)])
def test_the_summary_row_gives_sluices_and_kubectls_cold_apply(
    capsys: pytest.CaptureFixture[str], sluice: float, kubectl: float
) -> None:
    lines = _printed_summary(capsys, sluice, kubectl)
    rows = [match for line in lines if (match := cores._ROW.match(line))]
    assert len(rows) == 1
    assert (int(rows[0]["size"]), float(rows[0]["sluice"]), float(rows[0]["kubectl"])) == (
        10000,
        sluice,
        kubectl,
    )
    cpu = [match.group(1) for line in lines if (match := cores._CPU_LINE.search(line))]
    assert cpu == [
        "Sluice worker (its git included) 0.32 s, kube-apiserver 1.24 s (26%); the live cache 0.07 s"
    ]


def test_a_row_with_a_column_more_is_not_read() -> None:
    row = (
        "   10000      13.25s    0.03s    0.08s      0.45s      274 |        24.50s       38.50s"
        "        19.52s |     1.8x  1385.9x    16.2x"
    )
    assert cores._ROW.match(row) is not None
    assert cores._ROW.match(row.replace("|     1.8x", "|     3.21s |     1.8x")) is None


def test_the_fit_splits_a_run_into_its_serial_and_parallel_parts() -> None:
    fit = cores.Fit.of(20.0, 12.0, 2)
    assert (fit.serial, fit.parallel) == pytest.approx((4.0, 16.0))
    assert fit.at(4) == pytest.approx(8.0)
    four = cores.Fit.of(20.0, 8.0, 4)
    assert (four.serial, four.parallel) == pytest.approx((4.0, 16.0))
    assert fit.resolved


def test_no_figure_for_more_cores_when_a_part_is_not_resolved(capsys: pytest.CaptureFixture[str]) -> None:
    assert not cores.Fit.of(30.0, 14.0, 2).resolved  # a serial part below 0: noise, not a law
    runs = [cores.Run(1, 30.0, 30.0, ""), cores.Run(2, 14.0, 29.0, "")]
    cores.report(runs, 2)
    out = capsys.readouterr().out
    assert "the model's" not in out
    assert "no figure for more cores" in out


def test_the_report_takes_each_core_counts_median(capsys: pytest.CaptureFixture[str]) -> None:
    runs = [
        cores.Run(1, 22.0, 30.0, ""),
        cores.Run(2, 13.0, 25.0, ""),
        cores.Run(1, 20.0, 34.0, ""),
        cores.Run(2, 12.0, 27.0, ""),
    ]
    cores.report(runs, 2)
    out = capsys.readouterr().out
    # Medians: Sluice 21 and 12.5 s (S 4, P 17); kubectl 32 and 26 s (S 20, P 12).
    assert "Sluice: S   4.00 s, P  17.00 s" in out
    assert "kubectl: S  20.00 s, P  12.00 s" in out
    assert "8.25s" in out  # Sluice at 4 cores: 4 + 17/4
