"""The shape the README promises, checked: short functions, one place that queues work, stages by package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

GITOPS = Path(__file__).resolve().parents[2] / "gitops"
MAX_FUNCTION_LINES = 60
# Argument parsers are one long, flat list of options: length there is not complexity.
ARGUMENT_PARSERS = {("management/commands/gitops.py", "add_arguments")}
ENQUEUEING = re.compile(r"\.(delay|apply_async|send_task)\(")


def product_modules() -> list[Path]:
    return sorted(path for path in GITOPS.rglob("*.py") if "migrations" not in path.parts)


def test_no_function_in_gitops_is_over_60_lines():
    too_long = []
    for path in product_modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                where = (str(path.relative_to(GITOPS)), node.name)
                if lines > MAX_FUNCTION_LINES and where not in ARGUMENT_PARSERS:
                    too_long.append(f"{where[0]}:{node.lineno} {node.name} ({lines} lines)")
    assert too_long == []


def test_only_the_schedule_module_puts_work_on_the_queue():
    enqueuers = {
        str(path.relative_to(GITOPS))
        for path in product_modules()
        for line in path.read_text().splitlines()
        if ENQUEUEING.search(line) and not line.lstrip().startswith("#")
    }
    assert enqueuers == {"schedule.py"}


def test_each_pipeline_stage_is_a_package():
    stages = ("fetch", "desired", "plan", "rollout", "cluster", "record", "intake")
    assert all((GITOPS / stage / "__init__.py").is_file() for stage in stages)
    # The old catch-all modules are gone for good.
    gone = ("services.py", "rollouts.py", "apply.py", "sources.py")
    assert not any((GITOPS / name).exists() for name in gone)
