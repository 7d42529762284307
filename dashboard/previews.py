"""The dashboard's "Preview a revision": any ref or commit of a source's remote, planned on a worker.

The web process has no Git mirror and no access to ConfigMaps (in production its ServiceAccount has
no role), so a worker fetches, validates and plans the revision (``gitops.preview``), and the page
polls for its answer. The page's address carries a signed ticket (the task, the source, the revision
and when it was asked), so that nobody can read another source's answer through it, and the page
knows how long to wait. Nothing is applied or recorded; any user who may see the source (every
role, viewers included) may preview.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

from celery import states
from celery.exceptions import TimeLimitExceeded
from celery.result import AsyncResult
from django.conf import settings
from django.contrib.auth.decorators import login_required, permission_required
from django.core import signing
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from gitops import preview, schedule
from gitops.celery import app
from gitops.desired.errors import ValidationError
from gitops.fetch.refs import InvalidRevision, parse_revision
from gitops.models import Source
from gitops.plan import ACTIONABLE, Action
from gitops.vocabulary import PreviewOutcome

TICKET_SALT = "sluice.dashboard.preview"
NO_ANSWER = "no-answer"
# The page renders this many of the (up to 500) objects a worker's answer holds: each is a section with
# its key-level diff, and the page stays within the dashboard's budget (bench/dashboard.py).
ITEMS_ON_PAGE = 50
PENDING = "pending"
# What a plan lists but a sync would not write, in a few words each (the items below say more).
LEFT_ALONE = {
    Action.CONFLICT: "not Sluice's",
    Action.UNREACHABLE: "cluster did not answer",
    Action.DRIFT: "edited in the cluster; self-heal is off",
    Action.ORPHAN: "gone from Git; prune is off",
    Action.HELD: "for a later rollout step",
    Action.RELEASED: "taken over; forgotten",
}


def answer_deadline_seconds() -> int:
    return schedule.preview_deadline_seconds()


def unanswered(task_id: str) -> tuple[str, dict[str, Any] | None]:
    """A preview task that left no answer: its state in the result backend (STARTED once a worker runs
    it, its ``track_started``; PENDING for anything unknown), and what the page says of one that failed.
    The task answers whatever it meets; only its hard time limit, which ends the worker's process before
    it can answer, or a process ended some other way, leaves a failure."""
    result: AsyncResult[Any] = AsyncResult(task_id, app=app)
    state = str(result.state)
    if state != states.FAILURE:
        return state, None
    if isinstance(result.result, TimeLimitExceeded):
        return state, preview.revision_timed_out(schedule.preview_run_seconds())
    return state, {"outcome": PreviewOutcome.FAILED.value, "detail": "the worker running it stopped"}


@login_required
@permission_required("gitops.view_source", raise_exception=True)
@require_http_methods(["GET", "POST"])
def source_preview(request: HttpRequest, name: str) -> HttpResponse:
    """GET: the form, and the answer a ticket names; POST: ask a worker, then show its answer."""
    source = get_object_or_404(Source, name=name)
    if request.method == "POST":
        return _ask(request, source)
    context: dict[str, Any] = {"source": source, "revision": request.GET.get("revision", "")[:256]}
    token = request.GET.get("task", "")
    if token:
        context.update(_answer_context(source, token))
    if request.headers.get("HX-Request") and "outcome" in context:
        return render(request, "dashboard/_preview_result.html", context)
    return render(request, "dashboard/preview.html", context)


def _ask(request: HttpRequest, source: Source) -> HttpResponse:
    text = request.POST.get("revision", "")
    try:
        requested = parse_revision(text)
    except InvalidRevision as invalid:
        context = {"source": source, "revision": text[:256], "revision_error": str(invalid)}
        return render(request, "dashboard/preview.html", context)
    try:
        task_id = schedule.revision_preview(source.pk, requested.text, actor=request.user.get_username())
    except schedule.PreviewsBusy as busy:
        context = {"source": source, "revision": requested.text, "revision_error": str(busy)}
        response = render(request, "dashboard/preview.html", context, status=429)
        response["Retry-After"] = str(int(busy.delay or 5))
        return response
    ticket = {"task": task_id, "source": source.pk, "revision": requested.text, "at": int(time.time())}
    token = signing.dumps(ticket, salt=TICKET_SALT)
    page = reverse("dashboard:source-preview", args=[source.name])
    return redirect(f"{page}?{urlencode({'revision': requested.text, 'task': token})}")


def _answer_context(source: Source, token: str) -> dict[str, Any]:
    try:
        ticket = signing.loads(token, salt=TICKET_SALT, max_age=settings.CELERY_RESULT_EXPIRES)
    except signing.BadSignature:
        ticket = None
    if not isinstance(ticket, dict) or ticket.get("source") != source.pk:
        return {"ticket_invalid": True}
    waited = max(0, int(time.time()) - int(ticket["at"]))
    context: dict[str, Any] = {"revision": ticket["revision"], "waited": waited}
    task_id = str(ticket["task"])
    answer = schedule.revision_preview_answer(task_id)
    state: str = states.SUCCESS
    if answer is None:
        state, answer = unanswered(task_id)
    if answer is None:
        # A preview a worker took up may answer until its time limit stops it, which is past the task's
        # expiry: the page gave up on it at the expiry, and never showed that it timed out.
        deadline = schedule.preview_slot_seconds() if state == states.STARTED else answer_deadline_seconds()
        context["outcome"] = NO_ANSWER if waited > deadline else PENDING
        context["deadline"] = deadline
        return context
    errors = [ValidationError.from_dict(error) for error in answer.get("errors", [])]
    items = answer.get("items") or []
    context.update(answer=answer, outcome=answer.get("outcome"), errors=errors, items=items[:ITEMS_ON_PAGE])
    context["planned"] = answer.get("outcome") == PreviewOutcome.PLANNED
    summary = answer.get("summary") or {}
    # Only what a sync would write counts as a change: a conflict or an unreachable cluster's object is
    # listed too (items_total counts it), but left alone, and said apart with why.
    context["changed_summary"] = [
        (action, count) for action, count in summary.items() if action in ACTIONABLE
    ]
    context["changed_total"] = sum(count for _, count in context["changed_summary"])
    context["left_alone"] = [
        (action, count, LEFT_ALONE.get(action, ""))
        for action, count in summary.items()
        if action not in ACTIONABLE and action != Action.UNCHANGED
    ]
    return context
