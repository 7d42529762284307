"""A preview's time limits (gitops/tasks.py): a preview holds its slot for as long as it may wait in the queue
and then run (``schedule.preview_slot_seconds``, 273 s by default), and its worker stops it once it has run
that long. The soft limit comes first: the preview answers that it timed out, gives its slot back and
leaves its worker process alive; the hard limit, which ends the process, is the backstop and gives the
slot back too. The page waits for a preview a worker took up until its time limit, and says it timed out.

Nothing here reaches Redis or a worker: the task runs in this process, and the result backend is stood in for.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import states
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from django.core import signing
from django.template.loader import render_to_string

from dashboard import previews
from gitops import preview, schedule, tasks

ROOT = Path(__file__).resolve().parents[2]
SOURCE = SimpleNamespace(pk=7, name="shop", commit_url_template="")
PREVIEW = {"source_id": SOURCE.pk, "revision": "refs/pull/7/head", "actor": "vera"}


# -- the limits --------------------------------------------------------------------------------------


def test_a_preview_is_stopped_before_its_slot_can_run_out():
    task = tasks.preview_revision
    # By default 183 s, the run part of the 273 s slot; the queue's 90 s are the rest.
    assert task.time_limit == schedule.preview_run_seconds()
    assert 0 < task.soft_time_limit < task.time_limit
    assert task.time_limit - task.soft_time_limit == tasks.PREVIEW_STOP_SECONDS
    # Started at the latest as its task expires, a preview is ended before its slot lets another one in.
    assert schedule.preview_deadline_seconds() + task.time_limit <= schedule.preview_slot_seconds()


def test_the_limits_follow_the_settings_the_slot_follows():
    """A worker whose fetch or clusters may take longer stops its previews later, as their slots last."""
    program = (
        "import django\n"
        "django.setup()\n"
        "from gitops import schedule, tasks\n"
        "print(tasks.preview_revision.soft_time_limit, tasks.preview_revision.time_limit,"
        " schedule.preview_slot_seconds())\n"
    )
    environment = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "sluice.settings_test",
        "SLUICE_PREVIEW_TIMEOUT_SECONDS": "120",
        "SLUICE_CLUSTER_LIST_DEADLINE": "90",
        "SLUICE_CLUSTER_CONNECT_TIMEOUT": "3",
        "SLUICE_CLUSTER_READ_TIMEOUT": "30",
    }
    printed = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=ROOT,
        env=environment,
    ).stdout
    soft, hard, slot = map(int, printed.split())
    # The fetch's 120 s, the list deadline's 90 s, a connect and a read (33 s) and the 30 s margin.
    assert (soft, hard) == (273 - tasks.PREVIEW_STOP_SECONDS, 273)
    assert slot == 120 + 30 + hard, "the queue's wait (the fetch's bound and the margin), then the run"


# -- the task at its limits ------------------------------------------------------------------------------


@pytest.fixture
def released(monkeypatch) -> list[tuple[str, str]]:
    """The slots the task gives back; and no worker died running it (nothing asks Redis)."""
    slots: list[tuple[str, str]] = []
    monkeypatch.setattr(
        schedule, "preview_slot_release", lambda actor, task_id: slots.append((actor, task_id))
    )
    monkeypatch.setattr(tasks, "redelivered_too_often", lambda task: 0)
    return slots


def run_preview(task_id: str = "preview-1") -> dict[str, Any]:
    """The task as a worker's pool process runs it (its request bears the task's id), in this process."""
    task = tasks.preview_revision
    task.push_request(id=task_id, kwargs=PREVIEW)
    try:
        return task.run(**PREVIEW)
    finally:
        task.pop_request()


def test_a_preview_at_its_soft_limit_answers_that_it_timed_out_and_gives_its_slot_back(released, monkeypatch):
    def stuck(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise SoftTimeLimitExceeded()  # what the pool raises in the task once the soft limit is past

    monkeypatch.setattr(preview, "revision_preview_answer", stuck)

    answer = run_preview()

    assert answer["outcome"] == "unavailable", "worth asking again, as when Git or a cluster does not answer"
    assert answer["detail"].startswith(f"the preview timed out: it ran for {tasks.PREVIEW_SOFT_TIME_LIMIT} s")
    assert released == [("vera", "preview-1")]


def test_a_preview_that_failed_otherwise_still_says_so(released, monkeypatch):
    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(preview, "revision_preview_answer", broken)

    assert run_preview()["outcome"] == "failed"
    assert released == [("vera", "preview-1")]


def test_a_preview_the_hard_limit_ended_gives_its_slot_back_from_the_workers_main_process(released):
    """The pool ends the process past the hard limit, before the task's ``finally``; the worker's main
    process calls the task's ``on_failure`` (celery.worker.request.Request.on_timeout)."""
    task = tasks.preview_revision
    task.on_failure(TimeLimitExceeded(task.time_limit), "preview-2", (), dict(PREVIEW), None)
    task.on_failure(RuntimeError("not a time limit"), "preview-3", (), dict(PREVIEW), None)

    assert released == [("vera", "preview-2")], "any other failure is the task's own to clean up"


# -- the page -----------------------------------------------------------------------------------------


class Backend:
    """The result backend's view of the one preview task: its state, and what a failure left."""

    def __init__(self, state: str, result: object = None) -> None:
        self.state, self.result = state, result

    def __call__(self, task_id: str, app: object) -> Backend:
        return self


def page(monkeypatch, *, waited: int, answer: dict[str, Any] | None = None, backend: Backend | None = None):
    monkeypatch.setattr(previews.schedule, "revision_preview_answer", lambda task_id: answer)
    monkeypatch.setattr(previews, "AsyncResult", backend or Backend(states.PENDING))
    ticket = {
        "task": "t",
        "source": SOURCE.pk,
        "revision": "refs/pull/7/head",
        "at": int(time.time()) - waited,
    }
    context = previews._answer_context(SOURCE, signing.dumps(ticket, salt=previews.TICKET_SALT))  # type: ignore[arg-type]
    rendered = render_to_string("dashboard/_preview_result.html", {**context, "source": SOURCE})
    return context, " ".join(rendered.split())


def test_the_page_waits_for_a_preview_a_worker_runs_until_its_time_limit_not_its_expiry(monkeypatch):
    past_expiry = schedule.preview_deadline_seconds() + 5

    running, _ = page(monkeypatch, waited=past_expiry, backend=Backend(states.STARTED))
    nobody, shown = page(monkeypatch, waited=past_expiry, backend=Backend(states.PENDING))
    past_its_run, _ = page(
        monkeypatch, waited=schedule.preview_slot_seconds() + 1, backend=Backend(states.STARTED)
    )

    assert running["outcome"] == previews.PENDING
    assert (nobody["outcome"], nobody["deadline"]) == (
        previews.NO_ANSWER,
        schedule.preview_deadline_seconds(),
    )
    assert f"No worker answered within {schedule.preview_deadline_seconds()}s" in shown
    assert (past_its_run["outcome"], past_its_run["deadline"]) == (
        previews.NO_ANSWER,
        schedule.preview_slot_seconds(),
    )


def test_the_page_says_a_preview_timed_out(monkeypatch):
    _, soft = page(monkeypatch, waited=200, answer=preview.revision_timed_out(tasks.PREVIEW_SOFT_TIME_LIMIT))
    _, hard = page(
        monkeypatch, waited=200, backend=Backend(states.FAILURE, TimeLimitExceeded(tasks.PREVIEW_TIME_LIMIT))
    )
    _, other = page(monkeypatch, waited=200, backend=Backend(states.FAILURE, RuntimeError("killed")))

    assert 'data-outcome="unavailable"' in soft
    assert f"try again: the preview timed out: it ran for {tasks.PREVIEW_SOFT_TIME_LIMIT} s" in soft
    assert 'data-outcome="unavailable"' in hard
    assert f"the preview timed out: it ran for {schedule.preview_run_seconds()} s" in hard
    assert 'data-outcome="failed"' in other and "The preview failed: the worker running it stopped" in other
