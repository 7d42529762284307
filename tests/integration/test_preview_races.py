"""Previews beside passes, and a preview against its time limit.

``gitops diff NAME`` (``preview.source_preview``) records what it fetches as a pass's fetch does: the
mirror's branch, the revision's row and outcome, the source's last commit and target clusters, a rejection's
notification. It did so without the source's reconcile lock, and could write over what a pass wrote. Now
it records only under the lock, taken when nobody holds it: beside a pass it records nothing and waits for
nothing; a pass that comes while it records waits for it, and runs once it lets go; and a pass that asks
for the source while the preview's fetch waits on Git stops that fetch.

The passes run here, on threads of this process, held by events; nothing goes on the queue but what the
last test sends to a worker of its own, which holds the preview at a failpoint until its time limit.
"""

from __future__ import annotations

import io
import subprocess
import threading
import time
import uuid
from typing import Any

import pytest
from celery.result import AsyncResult
from django.contrib.auth.models import User
from django.core import signing
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone

from dashboard import previews
from gitops import preview, reconcile, schedule, tasks
from gitops.celery import app, redis_client
from gitops.errors import TemporaryError
from gitops.fetch.mirror_sweep import mirror_path
from gitops.locks import SourceBusy, source_lock_held
from gitops.models import Notification, Revision, Source
from gitops.plan import Action
from gitops.vocabulary import Outcome
from tests.gitrepo import GitRepo, SilentGitServer, configmap, policy
from tests.passes import HeldPass
from tests.workers import poll

pytestmark = pytest.mark.django_db(transaction=True)

HOOK = "http://127.0.0.1:9/sluice-events"  # never posted to: nothing goes on the queue
UNQUOTED_PORT = "configmaps/app.yaml:6: data.PORT: value must be a string, not a number"


@pytest.fixture
def sent(monkeypatch) -> list[tuple[str, dict[str, Any]]]:
    """What would go on the queue (a sync, a notification's delivery): kept here, and nothing runs it."""
    queued: list[tuple[str, dict[str, Any]]] = []

    def send(name: str, *, kwargs: dict[str, Any], **options: Any) -> str:
        queued.append((name, kwargs))
        return ""

    monkeypatch.setattr(schedule, "_send", send)
    return queued


def syncs_queued(sent: list[tuple[str, dict[str, Any]]], source: Source) -> int:
    return sum(1 for name, kwargs in sent if name == schedule.SYNC_TASK and kwargs["source_id"] == source.pk)


def commit(repo: GitRepo, namespace: str, data: dict[str, Any], message: str) -> str:
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", data)})
    return repo.commit(message)


def mirror_refs(source: Source) -> dict[str, str]:
    mirror = mirror_path(source)
    listed = subprocess.run(
        ["git", f"--git-dir={mirror}", "for-each-ref", "--format=%(refname) %(objectname)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(line.split(" ", 1) for line in listed.stdout.splitlines())


def recorded(source: Source) -> dict[str, Any]:
    """Everything of the source a fetch, a validation or a rejection writes."""
    return {
        "source": Source.all_objects.filter(pk=source.pk).values().get(),
        "revisions": list(Revision.objects.filter(source=source).order_by("pk").values()),
        "notifications": Notification.objects.filter(source=source).count(),
        "refs": mirror_refs(source),
    }


@pytest.fixture
def applied(repo, make_namespaces, make_source, sent) -> tuple[Source, str]:
    """A source applied at v1 (by a pass run here) that notifies a URL, and its namespace."""
    (namespace,) = make_namespaces("app")
    commit(repo, namespace, {"V": "1"}, "v1")
    source = make_source(notify_urls=[HOOK])
    assert reconcile.source_sync(source.pk).outcome == Outcome.APPLIED
    return Source.objects.get(pk=source.pk), namespace


def preview_thread(source_id: int, outcome: dict[str, Any], name: str) -> threading.Thread:
    """``gitops diff``'s preview of the source on a thread of its own (not started): what it showed, or
    raised, goes into ``outcome``."""

    def run() -> None:
        try:
            outcome["shown"] = preview.source_preview(Source.objects.get(pk=source_id))
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            connection.close()

    return threading.Thread(target=run, name=name)


# -- (a) beside a pass: nothing written, nothing waited for -----------------------------------------------


def test_a_preview_beside_a_pass_plans_the_tip_writes_nothing_and_does_not_wait(applied, repo, monkeypatch):
    source, namespace = applied
    v2 = commit(repo, namespace, {"V": "2"}, "v2")

    with HeldPass(monkeypatch, source) as held:
        before = recorded(source)
        shown = preview.source_preview(Source.objects.get(pk=source.pk))
        after = recorded(source)
        pass_still_holds_it = source_lock_held(source.pk)

    assert pass_still_holds_it, "the preview did not wait for the pass"
    assert before["revisions"][-1]["commit"] == v2 and before["revisions"][-1]["outcome"] == "pending"
    # Before, the preview wrote VALID over the pending row and moved the source's last fetch, unlocked.
    assert after == before, "the pass records the tip; the preview wrote nothing beside it"
    assert (shown.revision.pk, shown.revision.commit, shown.revision.outcome) == (None, v2, "valid")
    assert shown.plan is not None
    assert [(item.name, item.action) for item in shown.plan.items] == [("app", Action.UPDATE)]
    assert held.error is None, held.error
    assert held.result is not None and held.result.outcome == Outcome.APPLIED
    assert Revision.objects.get(source=source, commit=v2).outcome == Revision.Outcome.APPLIED


def test_a_diff_beside_a_pass_prints_its_own_rejection_and_the_pass_announces_it_once(
    applied, repo, monkeypatch
):
    source, namespace = applied
    v2 = commit(repo, namespace, {"PORT": 8080}, "v2: an unquoted port")  # type: ignore[dict-item]

    with HeldPass(monkeypatch, source) as held:
        before = recorded(source)
        printed = io.StringIO()
        with pytest.raises(SystemExit) as exited:
            call_command("gitops", "diff", source.name, stdout=printed)
        after = recorded(source)

    assert exited.value.code == 1
    lines = printed.getvalue().splitlines()
    assert lines[0] == f"{source.name} @ {v2[:12]}: rejected"
    assert len(lines) == 2 and lines[1].startswith(f"  {UNQUOTED_PORT}"), lines
    # Before, the diff wrote REJECTED and announced it, beside the pass that was about to validate it.
    assert after == before
    assert held.error is None, held.error
    assert held.result is not None and held.result.outcome == Outcome.REJECTED
    assert Revision.objects.get(source=source, commit=v2).outcome == Revision.Outcome.REJECTED
    announced = Notification.objects.filter(source=source, event__subject=f"revisions/{v2}")
    assert announced.count() == 1, "announced once, by the pass"


# -- (b) a pass that comes while a preview records --------------------------------------------------------


def test_a_pass_that_comes_while_a_preview_records_waits_and_is_queued_once_it_lets_go(
    applied, repo, monkeypatch, sent
):
    source, namespace = applied
    v2 = commit(repo, namespace, {"V": "2"}, "v2")
    validating, go_on = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}
    real = preview.revision_desired_state

    def held(*args: Any, **kwargs: Any) -> Any:
        validating.set()
        assert go_on.wait(timeout=120), "the test lets the preview go on"
        return real(*args, **kwargs)

    monkeypatch.setattr(preview, "revision_desired_state", held)
    queued_before = syncs_queued(sent, source)
    previewing = preview_thread(source.pk, outcome, "recording-preview")
    previewing.start()
    try:
        assert validating.wait(timeout=120), "the preview to fetch the tip under the source's lock"
        assert Revision.objects.get(source=source, commit=v2).outcome == Revision.Outcome.PENDING
        # A push's pass finds the source held: it leaves its request and does not interleave.
        with pytest.raises(SourceBusy):
            reconcile.source_sync(source.pk, automatic=True)
        assert syncs_queued(sent, source) == queued_before
    finally:
        go_on.set()
        previewing.join(timeout=120)

    assert "error" not in outcome, outcome.get("error")
    shown = outcome["shown"]
    assert shown.revision.pk is not None and shown.revision.commit == v2, "recorded, under the lock"
    assert Revision.objects.get(source=source, commit=v2).outcome == Revision.Outcome.VALID
    assert syncs_queued(sent, source) == queued_before + 1, (
        "the pass's request, queued once the preview let go"
    )
    assert reconcile.source_sync(source.pk, automatic=True).outcome == Outcome.APPLIED
    assert Revision.objects.get(source=source, commit=v2).outcome == Revision.Outcome.APPLIED


# -- (c) a pass that asks while the preview's fetch waits on Git ----------------------------------------


def test_a_preview_stops_its_fetch_for_a_pass_that_asks_for_the_source(make_source, sent, settings):
    """A Git host that never answers held the source's lock for the whole fetch (two minutes), and a pass
    (an abort's) behind it. The preview gives the source up, queues the pass, and previews without it."""
    settings.SLUICE_PREVIEW_TIMEOUT_SECONDS = 2  # its own fetch, once it gave the source up
    host = SilentGitServer()
    outcome: dict[str, Any] = {}
    source = make_source()
    Source.objects.filter(pk=source.pk).update(url=host.url)

    previewing = preview_thread(source.pk, outcome, "fetching-preview")
    try:
        previewing.start()
        poll(
            lambda: host.connections and source_lock_held(source.pk),
            timeout=30,
            what="the preview's fetch of the branch, under the source's lock",
        )
        # What a pass that finds the source held does.
        Source.objects.filter(pk=source.pk).update(sync_requested_at=timezone.now())
        previewing.join(timeout=60)
        assert not previewing.is_alive(), "the fetch waited for its timeout, and the pass behind it"
    finally:
        host.close()
        previewing.join(timeout=60)

    error = outcome.get("error")
    assert isinstance(error, TemporaryError) and "timed out after 2s" in str(error), outcome
    assert len(host.connections) >= 2, "the branch's fetch, stopped; then the preview's own, unrecorded"
    assert not source_lock_held(source.pk)
    assert syncs_queued(sent, source) == 1
    assert not Revision.objects.filter(source=source).exists()
    assert Source.objects.get(pk=source.pk).last_fetched_at is None


# -- (d) a preview against its time limit, on a real worker -----------------------------------------------


def test_a_preview_held_past_its_run_is_stopped_says_it_timed_out_and_its_process_lives_on(
    repo, make_namespaces, make_source, start_worker, people, tmp_path
):
    """The worker's run bound here: a 5 s fetch, 1 s to list the clusters, 1 s to connect and 1 s to read,
    and the 30 s margin: 38 s, the soft limit 10 s before. The preview is held before its plan (a cluster
    read that hangs) until the test ends."""
    (namespace,) = make_namespaces("app")
    commit(repo, namespace, {"V": "1"}, "v1")
    source = make_source()
    queue = f"preview-limits-{uuid.uuid4().hex[:8]}"
    go_on = tmp_path / "go-on"
    worker = start_worker(
        concurrency=1,
        queues=queue,
        env_overrides={
            "SLUICE_FAILPOINTS": f"preview-planning=until:{go_on}",
            "SLUICE_PREVIEW_TIMEOUT_SECONDS": "5",
            "SLUICE_CLUSTER_LIST_DEADLINE": "1",
            "SLUICE_CLUSTER_CONNECT_TIMEOUT": "1",
            "SLUICE_CLUSTER_READ_TIMEOUT": "1",
        },
    )
    slots = redis_client()
    actor, task_id = f"vera-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    try:
        process = tasks.ping.apply_async(("before",), queue=queue).get(timeout=60)["pid"]
        schedule._preview_slot_take(actor, task_id)  # as schedule.revision_preview takes it
        kwargs = {"source_id": source.pk, "revision": "refs/heads/main", "actor": actor}
        app.send_task(schedule.PREVIEW_TASK, kwargs=kwargs, task_id=task_id, queue=queue)

        answer = AsyncResult(task_id, app=app).get(timeout=120)

        assert answer["outcome"] == "unavailable", answer
        assert answer["detail"].startswith("the preview timed out: it ran for 28 s"), answer
        assert slots.zcard(f"sluice:previews:{actor}") == 0, "its slot is free at once"
        after = tasks.ping.apply_async(("after",), queue=queue).get(timeout=60)["pid"]
        assert after == process, (
            "the soft limit stopped the preview; the hard one would have ended the process"
        )
        logged = worker.log_path.read_text(errors="replace")
        assert "Soft time limit (" in logged and "Hard time limit" not in logged
        page = preview_page(source, task_id)
        assert 'data-outcome="unavailable"' in page and "the preview timed out" in page
    finally:
        go_on.touch()
        slots.delete(f"sluice:previews:{actor}", "sluice:previews-all")


def preview_page(source: Source, task_id: str) -> str:
    """The page's answer for the task, as htmx asks for it."""
    client = Client()
    client.force_login(User.objects.get(username="vera"))
    ticket = {"task": task_id, "source": source.pk, "revision": "refs/heads/main", "at": int(time.time())}
    token = signing.dumps(ticket, salt=previews.TICKET_SALT)
    answered = client.get(f"/sources/{source.name}/preview/", {"task": token}, headers={"HX-Request": "true"})
    return answered.content.decode()
