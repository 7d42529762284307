"""What a preview says it would change: only what a sync would write (create, update, delete, self-heal,
replace). A conflict (an object that is not Sluice's) or an unreachable cluster's object is listed and left
alone, and is said apart: the dashboard's "Preview a revision" and ``gitops diff``."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace
from typing import Any

import pytest
from django.core import signing
from django.template.loader import render_to_string

from dashboard import previews
from gitops.management.commands.gitops import Command
from gitops.plan import Action, Plan, PlanItem

COMMIT = "3f2a9c1d" * 5
SOURCE = SimpleNamespace(pk=7, name="shop", commit_url_template="")


def answer(summary: dict[str, int]) -> dict[str, Any]:
    """A worker's answer (gitops.preview.RevisionPreview.as_dict), without its items."""
    listed = sum(count for action, count in summary.items() if action != "unchanged")
    return {
        "outcome": "planned",
        "revision": "refs/pull/7/head",
        "commit": COMMIT,
        "message": "PR 7",
        "author_name": "Ada",
        "author_email": "ada@example.com",
        "summary": summary,
        "items_total": listed,  # every object listed: what changes and what is left alone
        "items": [],
        "errors": [],
        "consumers": [],
        "consumer_problems": [],
    }


def preview_page(monkeypatch, summary: dict[str, int]) -> str:
    monkeypatch.setattr(previews.schedule, "revision_preview_answer", lambda task_id: answer(summary))
    ticket = {"task": "t", "source": SOURCE.pk, "revision": "refs/pull/7/head", "at": int(time.time())}
    context = previews._answer_context(SOURCE, signing.dumps(ticket, salt=previews.TICKET_SALT))  # type: ignore[arg-type]
    page = render_to_string("dashboard/_preview_result.html", {**context, "source": SOURCE})
    return " ".join(page.split())


def test_the_dashboard_counts_only_what_would_change_and_says_the_rest_apart(monkeypatch):
    page = preview_page(monkeypatch, {"update": 2, "conflict": 1, "unreachable": 3, "unchanged": 5})

    assert "Applying it now would change 2 objects: 2 update." in page
    assert "would change 6" not in page
    assert (
        '<span id="preview-left-alone">Left alone: 1 conflict (not Sluice&#x27;s), '
        "3 unreachable (cluster did not answer).</span>"
    ) in page


def test_a_preview_of_conflicts_only_would_change_nothing(monkeypatch):
    page = preview_page(monkeypatch, {"conflict": 2, "unchanged": 1})

    assert "Applying it now would change nothing." in page
    assert "Left alone: 2 conflict" in page
    assert "would change 2" not in page


@pytest.mark.parametrize(
    ("summary", "said"),
    [
        ({"update": 2, "create": 2}, "Applying it now would change 4 objects: 2 update, 2 create."),
        ({"unchanged": 3}, "Everything already matches it: applying it would change nothing."),
    ],
)
def test_a_preview_without_anything_left_alone_reads_as_before(monkeypatch, summary, said):
    page = preview_page(monkeypatch, summary)
    assert said in page
    assert "preview-left-alone" not in page


def printed_plan(*actions: Action) -> list[str]:
    items = tuple(PlanItem("c", "ns", f"cm-{index}", action) for index, action in enumerate(actions))
    out = io.StringIO()
    Command(stdout=out)._print_plan(Plan("shop", COMMIT, items))
    return out.getvalue().splitlines()


def test_gitops_diff_says_what_would_change_apart_from_conflicts_and_unreachable_objects():
    printed = printed_plan(
        Action.CREATE,
        Action.UPDATE,
        Action.CONFLICT,
        Action.UNREACHABLE,
        Action.UNREACHABLE,
        Action.UNCHANGED,
    )

    assert (
        printed[0]
        == f"plan for shop @ {COMMIT[:12]}: 1 conflict, 1 create, 1 unchanged, 2 unreachable, 1 update"
    )
    assert printed[1] == "would change 2 objects (1 create, 1 update); left alone: 1 conflict, 2 unreachable"
    assert (
        printed_plan(Action.CONFLICT, Action.UNCHANGED)[1] == "would change nothing; left alone: 1 conflict"
    )
    assert printed_plan(Action.DELETE)[1] == "would change 1 object (1 delete)"
