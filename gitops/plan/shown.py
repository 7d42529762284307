"""How much of a plan is kept to be shown: the source page's plan, ``GET /api/sources/NAME/plan`` and a
preview's answer. Pure.

A plan has an item for every object that differs, and an item's diff holds both sides of every changed key
(a ConfigMap holds up to 1 MiB). Kept whole, a held revision of 10,000 objects was a row of hundreds of
MiB rewritten at every pass, a page nobody could load, and a preview's answer that filled the broker. So
the first ``ITEMS_SHOWN`` items are kept, and their diffs while they fit in ``DIFF_CHARACTERS_SHOWN``; the
counts stay exact, and ``gitops diff`` prints every item whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from typing import Any

from gitops.plan.diff import DiffItem
from gitops.plan.planner import PlanItem

ITEMS_SHOWN = 500
# Characters of diff text across the items kept: each side of a text key and its unified text.
DIFF_CHARACTERS_SHOWN = 4 * 1024 * 1024
# What a value that is not text (a summarized binary, an "immutable" flag) counts for.
_SMALL_VALUE = 64


def items_shown(
    items: Sequence[PlanItem], *, limit: int | None = None, characters: int | None = None
) -> list[dict[str, Any]]:
    """The first ``limit`` items (``ITEMS_SHOWN``) as plain data, in the plan's order. An item whose diff
    does not fit in what is left of ``characters`` (``DIFF_CHARACTERS_SHOWN``) keeps its name, action and
    reason, and says ``diff_cut`` instead: a later, smaller diff may still fit, so one large ConfigMap
    does not hide every other diff."""
    shown: list[dict[str, Any]] = []
    left = DIFF_CHARACTERS_SHOWN if characters is None else characters
    for item in islice(items, ITEMS_SHOWN if limit is None else limit):
        # Weighed before its unified text is made: that text is the costly part of a large change.
        weight = sum(map(_diff_weight, item.diff))
        if weight > left:
            shown.append({**_without_diff(item), "diff": [], "diff_cut": True})
            continue
        left -= weight
        shown.append(item.as_dict())
    return shown


def _without_diff(item: PlanItem) -> dict[str, Any]:
    return {**item.head(), "diff_keys": len(item.diff)}


def _diff_weight(entry: DiffItem) -> int:
    """About the characters ``entry.as_dict()`` carries: each side, and a unified text that repeats them
    with a mark a line."""
    if entry.field == "binaryData":  # shown as its size and digest, whatever its length
        return 2 * _SMALL_VALUE
    return _SMALL_VALUE + sum(2 * len(side) + side.count("\n") for side in _texts(entry))


def _texts(entry: DiffItem) -> tuple[str, ...]:
    return tuple(side for side in (entry.old, entry.new) if isinstance(side, str))
