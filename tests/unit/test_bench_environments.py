"""The benchmarks' process environments stand on their own.

A benchmark that starts Sluice (its environment names ``DJANGO_SETTINGS_MODULE``) with DEBUG off, as
it is when unset, must hand it a SECRET_KEY of its own: settings refuse to start without one, and
CI's shell has none. A developer's shell that loaded .stack/env does, which is how a benchmark once
passed here and failed in CI on its first ``manage.py migrate``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
TRUE_WORDS = {"1", "true", "yes", "on"}  # sluice/settings.py's env_bool


def _literal_keys(node: ast.Dict) -> dict[str, ast.expr]:
    return {
        key.value: value
        for key, value in zip(node.keys, node.values, strict=True)
        if isinstance(key, ast.Constant) and isinstance(key.value, str)
    }


def _reads_the_environment(value: ast.expr) -> bool:
    """Whether ``value`` comes from the shell's environment (``os.environ[...]``, ``.get``, ``getenv``)."""
    return any(
        isinstance(node, ast.Attribute) and node.attr in {"environ", "getenv"} for node in ast.walk(value)
    )


def _debug_on(keys: dict[str, ast.expr]) -> bool:
    debug = keys.get("DEBUG")
    return isinstance(debug, ast.Constant) and str(debug.value).strip().lower() in TRUE_WORDS


def _sluice_environments(path: Path) -> list[tuple[int, dict[str, ast.expr]]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            keys = _literal_keys(node)
            if "DJANGO_SETTINGS_MODULE" in keys:
                found.append((node.lineno, keys))
    return found


SCRIPTS = sorted(BENCH.glob("*.py"))


def test_the_benchmarks_that_start_sluice_are_found():
    # Guards the test below against passing on nothing (a renamed folder, a changed idiom).
    names = {path.name for path in SCRIPTS if _sluice_environments(path)}
    assert {"reconcile.py", "drift_heal.py", "push_latency.py", "fleet.py", "dashboard.py"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_an_environment_with_debug_off_sets_a_secret_key_of_its_own(script: Path):
    for line, keys in _sluice_environments(script):
        if _debug_on(keys):
            continue
        where = f"{script.name}:{line}"
        assert "SECRET_KEY" in keys, f"{where}: DEBUG is off but SECRET_KEY is not set beside it"
        assert not _reads_the_environment(keys["SECRET_KEY"]), (
            f"{where}: SECRET_KEY is the shell's, CI has none"
        )
