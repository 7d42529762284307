"""What a stored plan, the API's plan and a preview's answer keep of a plan: bounded by items and by the
size of their diffs, with the counts exact."""

from __future__ import annotations

import base64
import json

from gitops.desired.content import Content
from gitops.plan import Action, DiffItem, DiffOp, PlanItem
from gitops.plan.diff import diff_content
from gitops.plan.shown import DIFF_CHARACTERS_SHOWN, ITEMS_SHOWN, items_shown


def updated(name: str, old: str, new: str) -> PlanItem:
    before, after = Content(data={"v": old}), Content(data={"v": new})
    return PlanItem(
        "", "ns", name, Action.UPDATE, tuple(diff_content(before, after)), before=before, after=after
    )


def test_the_first_items_are_kept_in_the_plans_order_each_as_it_is_shown_whole():
    items = [updated(f"cm-{n:04d}", "1", "2") for n in range(ITEMS_SHOWN + 7)]
    shown = items_shown(items)
    assert len(shown) == ITEMS_SHOWN
    assert [entry["name"] for entry in shown] == [item.name for item in items[:ITEMS_SHOWN]]
    assert shown[0] == items[0].as_dict()


def test_a_diff_that_does_not_fit_is_cut_and_a_later_smaller_one_still_fits():
    large = "line\n" * 20_000  # 100,000 characters a side
    items = [
        updated("a-small", "1", "2"),
        updated("b-large", large, large + "x\n"),
        updated("c-small", "3", "4"),
    ]
    shown = items_shown(items, characters=150_000)
    assert [entry["name"] for entry in shown] == ["a-small", "b-large", "c-small"]
    assert shown[0] == items[0].as_dict() and shown[2] == items[2].as_dict()
    cut = shown[1]
    assert (cut["diff"], cut["diff_cut"], cut["diff_keys"], cut["action"]) == ([], True, 1, "update")
    assert "diff_cut" not in shown[0]


def test_what_is_kept_is_bounded_by_its_characters_once_serialised():
    value = "k: v\n" * 2_000  # 10,000 characters a side, a unified text of both
    items = [updated(f"cm-{n:03d}", value, value + "more: yes\n") for n in range(400)]
    shown = items_shown(items, characters=1_000_000)
    kept = [entry for entry in shown if not entry.get("diff_cut")]
    characters = sum(
        len(d["old"]) + len(d["new"]) + len(d.get("unified") or "") for entry in kept for d in entry["diff"]
    )
    assert 0 < characters <= 1_000_000
    assert len(kept) < len(shown) == 400


def test_the_largest_configmap_fits_in_the_default_budget_whole():
    mebibyte = "x" * (1024 * 1024 - 16)
    shown = items_shown([updated("big", mebibyte, mebibyte[:-1] + "y")])
    assert "diff_cut" not in shown[0]
    assert DIFF_CHARACTERS_SHOWN >= 4 * 1024 * 1024


def test_binary_data_weighs_its_summary_not_its_bytes():
    blob = base64.b64encode(b"\0" * 600_000).decode()
    item = PlanItem("", "ns", "bin", Action.CREATE, (DiffItem(DiffOp.ADD, "binaryData", "b", None, blob),))
    shown = items_shown([item], characters=1_000)
    assert "diff_cut" not in shown[0]
    assert shown[0]["diff"][0]["new"].startswith("<600000 bytes, sha256:")


def test_a_json_value_is_weighed_by_its_pretty_printed_unified_text_too():
    """A JSON value's unified text is pretty-printed first: a compact 100,000-character array nested
    twelve deep grows several times over, which an estimate from its sides missed (30 MiB kept under a
    4 Mi budget)."""
    # Two lines, so that it has a unified text at all; valid JSON, so that text is pretty-printed.
    nested = json.dumps([[[[[[[[[[[[n] for n in range(2_000)]]]]]]]]]]]).replace(", ", ",\n", 1)
    created = [
        PlanItem("", "ns", f"cm-{n}", Action.CREATE, (DiffItem(DiffOp.ADD, "data", "v.json", None, nested),))
        for n in range(40)
    ]
    shown = items_shown(created, characters=1_000_000)
    kept = [entry for entry in shown if not entry.get("diff_cut")]
    carried = sum(
        len(d.get("new") or "") + len(d.get("unified") or "") for entry in kept for d in entry["diff"]
    )
    assert kept and carried <= 1_000_000
    assert len(shown) == 40
