"""The benchmarks' process environments stand on their own.

A benchmark that runs Sluice with DEBUG off must hand it a SECRET_KEY itself: settings refuse to
start without one, and CI's shell has none (a developer's shell that loaded .stack/env does, which
is how a benchmark once passed here and failed in CI on its first `manage.py migrate`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _literal_keys(node: ast.Dict) -> dict[str, ast.expr]:
    return {
        key.value: value
        for key, value in zip(node.keys, node.values, strict=True)
        if isinstance(key, ast.Constant) and isinstance(key.value, str)
    }


def _environments_with_debug_off(path: Path) -> list[tuple[int, dict[str, ast.expr]]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Dict):
            continue
        keys = _literal_keys(node)
        debug = keys.get("DEBUG")
        if isinstance(debug, ast.Constant) and debug.value == "0":
            found.append((node.lineno, keys))
    return found


SCRIPTS = sorted(BENCH.glob("*.py"))


def test_the_benchmarks_that_turn_debug_off_are_found() -> None:
    # Guards the test below against passing on nothing (a renamed folder, a changed idiom).
    names = {path.name for path in SCRIPTS if _environments_with_debug_off(path)}
    assert {"reconcile.py", "drift_heal.py", "push_latency.py", "fleet.py"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_an_environment_with_debug_off_sets_its_own_secret_key(script: Path) -> None:
    for line, keys in _environments_with_debug_off(script):
        assert "SECRET_KEY" in keys, f"{script.name}:{line}: DEBUG is '0' but SECRET_KEY is not set beside it"
