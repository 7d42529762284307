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
        # Its sides first, without making its unified text (the costly part of a large change): what
        # they alone do not fit in is cut unmade. Then what it really carries: the unified text of a
        # JSON value is pretty-printed, and can be many times the value's own length.
        entry = item.as_dict() if sum(map(_sides_weight, item.diff)) <= left else None
        weight = _carried(entry["diff"]) if entry is not None else left + 1
        if entry is None or weight > left:
            shown.append({**_without_diff(item), "diff": [], "diff_cut": True})
            continue
        left -= weight
        shown.append(entry)
    return shown


def _without_diff(item: PlanItem) -> dict[str, Any]:
    return {**item.head(), "diff_keys": len(item.diff)}


def _sides_weight(entry: DiffItem) -> int:
    """What ``entry.as_dict()`` carries at least: each side of a text key (a binary one is shown as its
    size and digest, whatever its length)."""
    if entry.field == "binaryData":
        return 2 * _SMALL_VALUE
    return _SMALL_VALUE + sum(len(side) for side in (entry.old, entry.new) if isinstance(side, str))


def _carried(entries: list[dict[str, Any]]) -> int:
    """The characters shown entries carry: each side, and the unified text."""
    return sum(
        _SMALL_VALUE + sum(len(entry[part]) for part in _TEXT_PARTS if isinstance(entry.get(part), str))
        for entry in entries
    )


_TEXT_PARTS = ("old", "new", "unified")
