"""Rollout and revision events leave as CloudEvents, delivered with retries, never blocking a rollout."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gitops.models import Notification
from gitops.rollout import decisions
from tests.gitrepo import configmap, policy
from tests.rollouts import wait_for
from tests.workers import poll

pytestmark = pytest.mark.django_db(transaction=True)


class Receiver:
    """A real HTTP endpoint that fails the first ``failures`` requests, then records CloudEvents."""

    def __init__(self, failures: int = 0) -> None:
        receiver = self
        self.failures = failures
        self.events: list[dict] = []
        self.content_types: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if receiver.failures > 0:
                    receiver.failures -= 1
                    self.send_response(503)
                else:
                    receiver.events.append(json.loads(body))
                    receiver.content_types.append(self.headers.get("Content-Type", ""))
                    self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"

    def types(self) -> list[str]:
        return [event["type"].removeprefix("dev.sluice.") for event in self.events]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = Receiver()
    yield made
    made.close()


def paused_with_notifications(repo, make_namespaces, make_source, sync, receiver):
    """A source notifying ``receiver`` whose second commit waits for approval at 50%."""
    targets = make_namespaces("canary", "rest")
    repo.write_all({"sluice.yaml": policy(targets), "configmaps/app.yaml": configmap("app", {"v": "1"})})
    repo.commit("v1")
    source = make_source(notify_urls=[receiver.url])
    sync(source)
    repo.write_all(
        {
            "sluice.yaml": policy(targets, rollout={"steps": [{"setWeight": 50}, {"pause": {}}]}),
            "configmaps/app.yaml": configmap("app", {"v": "2"}),
        }
    )
    repo.commit("v2")
    sync(source)
    return source, wait_for(source, phase="Paused", waiting_for="approval")


def test_a_rollout_and_a_rejected_revision_are_announced(
    repo, make_namespaces, make_source, sync, receiver, people
):
    source, paused = paused_with_notifications(repo, make_namespaces, make_source, sync, receiver)
    decisions.rollout_promote(paused.pk, user=people["approver"])
    wait_for(source, phase="Completed")
    repo.write(
        "configmaps/app.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  v: 3\n"
    )
    repo.commit("broken")
    assert sync(source)["outcome"] == "rejected"

    expected = [
        "rollout.started",
        "rollout.step.applied",
        "rollout.completed",
        "rollout.started",
        "rollout.step.applied",
        "rollout.paused",
        "rollout.promoted",
        "rollout.step.applied",
        "rollout.completed",
        "revision.rejected",
    ]
    poll(lambda: len(receiver.events) >= len(expected), timeout=30, what="every event to be delivered")
    assert sorted(receiver.types()) == sorted(expected)
    assert set(receiver.content_types) == {"application/cloudevents+json; charset=utf-8"}
    event = next(e for e in receiver.events if e["type"] == "dev.sluice.rollout.promoted")
    assert event["specversion"] == "1.0"
    assert event["source"] == f"/sluice/sources/{source.name}"
    assert event["subject"] == f"rollouts/{paused.pk}"
    assert (event["data"]["actor"], event["data"]["rollout"]) == ("otto", paused.pk)
    rejected = next(e for e in receiver.events if e["type"] == "dev.sluice.revision.rejected")
    assert "data.v: value must be a string" in rejected["data"]["errors"][0]
    assert len({e["id"] for e in receiver.events}) == len(receiver.events)


def test_a_rejection_whose_notice_could_not_be_written_stays_unmarked_and_is_told_next_time(
    make_source, repo, monkeypatch
):
    """The rejected mark and its notice were two commits: a notice that failed (or a worker killed
    between them) left the revision marked rejected, and a revision already marked is never told again."""
    from django.db import DatabaseError

    from gitops.desired.errors import RevisionRejected, ValidationError
    from gitops.fetch.revisions import revision_reject
    from gitops.models import Revision
    from gitops.record import notifications

    source = make_source(notify_urls=["http://127.0.0.1:9/hook"])
    revision = Revision.objects.create(source=source, commit="a" * 40)
    rejected = RevisionRejected([ValidationError("configmaps/app.yaml", 3, "data", "not a string")])
    real_emit = notifications.emit

    def outbox_away(*args, **kwargs):
        raise DatabaseError("the outbox's insert failed")

    monkeypatch.setattr(notifications, "emit", outbox_away)
    with pytest.raises(DatabaseError):
        revision_reject(source, revision, rejected)
    assert Revision.objects.get(pk=revision.pk).outcome != "rejected", "not marked without its notice"

    monkeypatch.setattr(notifications, "emit", real_emit)
    revision_reject(source, revision, rejected)
    assert Revision.objects.get(pk=revision.pk).outcome == "rejected"
    assert Notification.objects.filter(source=source, event__type="dev.sluice.revision.rejected").count() == 1

    # A URL past what the row keeps, stored before such URLs were refused: its event is left out, where
    # its insert failed, and now the rejection with it, at every pass.
    type(source).objects.filter(pk=source.pk).update(notify_urls=["https://hooks.example.com/" + "a" * 2100])
    source.refresh_from_db()
    later = Revision.objects.create(source=source, commit="b" * 40)
    revision_reject(source, later, rejected)
    assert Revision.objects.get(pk=later.pk).outcome == "rejected"


def test_a_failing_receiver_is_retried_with_backoff_and_never_blocks_the_rollout(
    repo, make_namespaces, make_source, sync
):
    flaky = Receiver(failures=2)
    try:
        (namespace,) = make_namespaces("app")
        repo.write_all(
            {"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"v": "1"})}
        )
        repo.commit()
        source = make_source(notify_urls=[flaky.url])

        assert sync(source)["outcome"] == "applied", (
            "the rollout finishes while notifications are still failing"
        )
        poll(
            lambda: not Notification.objects.filter(source=source, status="pending").exists(),
            timeout=60,
            what="the notifications to be delivered after retries",
        )
        assert set(Notification.objects.filter(source=source).values_list("status", flat=True)) == {
            "delivered"
        }
        assert max(Notification.objects.filter(source=source).values_list("attempts", flat=True)) >= 2
        assert len(flaky.events) == Notification.objects.filter(source=source).count()
    finally:
        flaky.close()


def test_what_leaves_sluice_in_an_event_is_redacted_as_pages_show_it(
    repo, make_namespaces, make_source, sync, receiver, people
):
    """An event's message may quote a secret (a reason pasted with a token, an analysis URL's query):
    pages redact it, and the CloudEvent carries it redacted too."""
    source, paused = paused_with_notifications(repo, make_namespaces, make_source, sync, receiver)
    decisions.rollout_abort(paused.pk, user=people["approver"], reason="see ?token=ABORT-SECRET-77 for why")
    wait_for(source, phase="Aborted")

    poll(lambda: "rollout.rolledback" in receiver.types(), timeout=30, what="the rollback's event")
    rolled_back = next(e for e in receiver.events if e["type"] == "dev.sluice.rollout.rolledback")
    assert "token=***" in rolled_back["data"]["message"], rolled_back["data"]
    assert not any("ABORT-SECRET-77" in json.dumps(event) for event in receiver.events)


def test_a_url_an_administrator_took_out_gets_no_more_of_the_events_still_pending(
    repo, make_namespaces, make_source
):
    """Events wait in the outbox while their receiver fails. An administrator who takes its URL out of
    the source (it was leaked, or misdirected) expects nothing more to go there: before, every pending
    event was still posted to it, retries included."""
    from gitops import reconcile, source_admin
    from gitops.record import notifications

    failing = Receiver(failures=1_000)
    try:
        (namespace,) = make_namespaces("app")
        repo.write_all(
            {"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"v": "1"})}
        )
        repo.commit()
        source = make_source(notify_urls=[failing.url])
        assert reconcile.source_sync(source.pk).outcome == "applied"
        pending = list(
            Notification.objects.filter(source=source, status="pending").values_list("pk", flat=True)
        )
        assert pending
        source_admin.source_update(source, notify_urls=[])
        # The stack's worker may have claimed an event before the URL went out: a POST already on
        # its way cannot be called back. Wait for such attempts to end; any later one must not post.
        poll(
            lambda: (
                not Notification.objects.filter(
                    pk__in=pending, status="pending", lease_until__isnull=False
                ).exists()
            ),
            timeout=30,
            what="attempts begun before the removal to end",
        )
        left = failing.failures

        for notification_id in pending:
            assert notifications.deliver(notification_id) is True

        assert failing.failures == left, "nothing was posted to the URL taken out"
        given_up = {("gave-up", "the source no longer notifies this URL")}
        poll(
            lambda: (
                set(Notification.objects.filter(pk__in=pending).values_list("status", "last_error"))
                == given_up
            ),
            timeout=30,
            what="every pending event given up",
        )
    finally:
        failing.close()
