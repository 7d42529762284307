"""A task that kills its worker does not come back forever.

Tasks are acknowledged late and requeued when their worker process dies, so a sync
that crashes its worker (out of memory, a segfault) would be handed to the next
worker process, and the next, without end. Here a real worker's pool child is
SIGKILLed while it runs the sync, again and again: after SLUICE_MAX_TASK_DELIVERIES
deaths the sync is not started again, and the failure shows on the source.
"""

from __future__ import annotations

import io
import os
import signal

import pytest
from django.core.management import call_command

from tests.gitrepo import SilentGitServer
from tests.workers import poll

pytestmark = pytest.mark.django_db(transaction=True)

DEATHS = 3  # SLUICE_MAX_TASK_DELIVERIES' default


@pytest.fixture
def silent_git_server():
    server = SilentGitServer()
    yield server
    server.close()


def running_pid(worker, task_id: str) -> int | None:
    from gitops.celery import app

    replies = app.control.inspect(destination=[worker.hostname], timeout=1).active() or {}
    for task in replies.get(worker.hostname, []):
        if task["id"] == task_id:
            return int(task["worker_pid"])
    return None


def test_a_sync_that_kills_its_worker_is_stopped_after_the_cap_and_the_failure_shows(
    make_source, start_worker, silent_git_server
):
    from gitops import selectors
    from gitops.models import Source
    from gitops.tasks import sync_source

    source = make_source(url=silent_git_server.url)
    queue = f"poison-{source.pk}"
    # Each start after a death waits for the dead pass's claim (locks.source_lock): two seconds, not ten.
    worker = start_worker(concurrency=1, queues=queue, env_overrides={"SLUICE_PASS_TAKEOVER_SECONDS": "2"})
    result = sync_source.apply_async((source.pk,), queue=queue)

    for death in range(1, DEATHS + 1):
        # The sync is under way once its fetch has connected; then its pool child dies.
        poll(
            lambda death=death: len(silent_git_server.connections) == death,
            timeout=60,
            what=f"start number {death} of the sync",
        )
        pid = poll(lambda: running_pid(worker, result.id), timeout=30, what="the pool child running the sync")
        os.kill(pid, signal.SIGKILL)

    outcome = result.get(timeout=60)

    assert outcome["outcome"] == "failed"
    assert f"died {DEATHS} times" in outcome["errors"][0]
    assert len(silent_git_server.connections) == DEATHS, "the sync never started again"
    source = Source.objects.get(pk=source.pk)
    assert f"the worker process running it died {DEATHS} times" in source.last_error
    assert selectors.source_status(source)["last_error"] == source.last_error
    rows, _ = selectors.overview_rows(search=source.name)
    assert [row.state for row in rows] == ["Error"], "the dashboard shows the source as failing"
    status = io.StringIO()
    call_command("gitops", "status", source.name, stdout=status)
    assert f"last error: the sync was stopped: the worker process running it died {DEATHS} times" in (
        status.getvalue()
    )
    assert "is not started again: its worker process died 3 times" in worker.log_path.read_text()
