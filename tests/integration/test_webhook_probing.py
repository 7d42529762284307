"""A stranger probing /webhooks/git/NAME learns nothing and cannot fill the database (issue 10, section 4)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from gitops import metrics
from gitops.intake import webhook_secrets
from gitops.intake.webhooks import sign
from gitops.models import WebhookDelivery

pytestmark = pytest.mark.django_db(transaction=True)
SECRET = "push-secret-for-tests-0123456789"
BODY = json.dumps({"ref": "refs/heads/main", "after": "a" * 40}).encode()

# What a stranger can send: every provider, with no signature and with a wrong one.
PROBES = {
    "github, unsigned": {"X-GitHub-Event": "push"},
    "github, wrong signature": {
        "X-GitHub-Event": "push",
        "X-Hub-Signature-256": sign("guess-guess-guess", BODY),
    },
    "gitlab, no token": {"X-Gitlab-Event": "Push Hook"},
    "gitlab, wrong token": {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "guess-guess-guess"},
    "gitea, wrong signature": {"X-Gitea-Event": "push", "X-Gitea-Signature": "0" * 64},
    "generic, wrong signature": {"X-Sluice-Event": "push", "X-Sluice-Signature": sign("guess", BODY)},
    "no provider headers": {},
}


def post(name: str, headers: dict[str, str], body: bytes = BODY):
    extra = {f"HTTP_{key.upper().replace('-', '_')}": value for key, value in headers.items()}
    return Client().post(f"/webhooks/git/{name}", data=body, content_type="application/json", **extra)


@pytest.fixture
def sources(make_source):
    with_secret = make_source(name="shop-config")
    webhook_secrets.webhook_secret_set(with_secret, SECRET)
    without_secret = make_source(name="billing-config")
    return with_secret, without_secret


@pytest.mark.parametrize("probe", PROBES)
def test_an_unknown_name_is_answered_exactly_like_a_known_one(sources, probe):
    with_secret, without_secret = sources
    answers = {
        name: post(name, PROBES[probe]) for name in (with_secret.name, without_secret.name, "no-such-source")
    }
    statuses = {name: answer.status_code for name, answer in answers.items()}
    bodies = {name: answer.content for name, answer in answers.items()}
    assert len(set(statuses.values())) == 1, statuses
    assert len(set(bodies.values())) == 1, bodies
    assert statuses["no-such-source"] in (400, 401)


def test_why_a_delivery_was_rejected_is_kept_for_the_sources_page(sources):
    with_secret, without_secret = sources
    post(without_secret.name, PROBES["github, wrong signature"])
    post(with_secret.name, PROBES["github, wrong signature"])
    assert (
        WebhookDelivery.objects.get(source=without_secret).reason
        == "no webhook secret is set for this source"
    )
    assert WebhookDelivery.objects.get(source=with_secret).reason == "signature does not match"


def test_rejected_rows_are_bounded_per_source_and_minute_and_the_rest_counted(sources, settings):
    settings.SLUICE_WEBHOOK_REJECTED_ROWS_PER_MINUTE = 5
    with_secret, _ = sources
    counter = metrics.WEBHOOK_DELIVERIES.labels("github", "rejected")
    counted_before = counter._value.get()

    for _ in range(12):
        assert post(with_secret.name, PROBES["github, wrong signature"]).status_code == 401
    for _ in range(12):
        assert post("no-such-source", PROBES["github, wrong signature"]).status_code == 401

    assert WebhookDelivery.objects.filter(source=with_secret, outcome="rejected").count() == 5
    assert WebhookDelivery.objects.count() == 5, "an unknown name never leaves a row"
    assert counter._value.get() - counted_before == 24

    # A minute later the source records rejections again: the bound is a rate, not a cap.
    WebhookDelivery.objects.update(received_at=timezone.now() - timedelta(minutes=2))
    post(with_secret.name, PROBES["github, wrong signature"])
    assert WebhookDelivery.objects.filter(source=with_secret, outcome="rejected").count() == 6


def test_past_the_bound_a_known_and_an_unknown_name_cost_the_same_queries(sources, settings):
    settings.SLUICE_WEBHOOK_REJECTED_ROWS_PER_MINUTE = 1
    with_secret, _ = sources
    post(with_secret.name, PROBES["github, wrong signature"])  # uses up the bound

    def queries_for(name: str) -> list[str]:
        with CaptureQueriesContext(connection) as captured:
            post(name, PROBES["github, wrong signature"])
        return [query["sql"].split(" WHERE ")[0] for query in captured.captured_queries]

    assert queries_for(with_secret.name) == queries_for("no-such-source")


def test_a_replayed_delivery_leaves_a_bounded_number_of_rows(sources, settings):
    settings.SLUICE_WEBHOOK_REJECTED_ROWS_PER_MINUTE = 3
    with_secret, _ = sources
    body = json.dumps({"ref": "refs/heads/other", "after": "b" * 40}).encode()
    headers = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "d-1",
        "X-Hub-Signature-256": sign(SECRET, body),
    }
    for _ in range(10):
        assert post(with_secret.name, headers, body).status_code in (200, 202)
    assert WebhookDelivery.objects.filter(source=with_secret, outcome="duplicate").count() == 3


def signed_push(commit: str, delivery: str) -> tuple[dict[str, str], bytes]:
    body = json.dumps({"ref": "refs/heads/main", "before": "0" * 40, "after": commit}).encode()
    return {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": sign(SECRET, body),
    }, body


def test_a_signed_body_sent_again_under_new_delivery_ids_is_a_bounded_duplicate(
    sources, settings, monkeypatch
):
    """A signature covers the body, never the delivery id: whoever saw a push's body could send it again
    under new ids without end. Before, each was accepted, a row, and a sync asked for."""
    from tests.broker import keep_sends

    settings.SLUICE_WEBHOOK_REJECTED_ROWS_PER_MINUTE = 3
    with_secret, _ = sources
    sent = keep_sends(monkeypatch)
    answers = [post(with_secret.name, *signed_push("c" * 40, f"d-{n}")) for n in range(10)]

    assert [a.status_code for a in answers] == [202] + [200] * 9
    assert [a.json()["status"] for a in answers[1:]] == ["duplicate"] * 9
    assert WebhookDelivery.objects.filter(source=with_secret, outcome="accepted").count() == 1
    assert WebhookDelivery.objects.filter(source=with_secret, outcome="duplicate").count() == 3
    assert len(sent) == 1, "one sync, asked by the first"


def test_the_same_body_again_asks_for_a_sync_only_while_the_source_lacks_its_commit(sources, monkeypatch):
    """A plain Git server's body is the same for the same move (A to B, back to A, to B again): the
    last push is a duplicate by its body, yet the source is at A and must sync, not wait for a poll, a
    backing-off source too (the push may bring the fix). A source that has the commit is not synced
    for a body sent again."""
    from gitops.models import Source
    from tests.broker import keep_sends

    with_secret, _ = sources
    sent = keep_sends(monkeypatch)
    assert post(with_secret.name, *signed_push("b" * 40, "first")).status_code == 202
    Source.objects.filter(pk=with_secret.pk).update(sync_queued=False, last_commit="a" * 40)

    again = post(with_secret.name, *signed_push("b" * 40, "third"))

    assert again.json()["status"] == "duplicate"
    assert len(sent) == 2, "synced: the source is at another commit"
    Source.objects.filter(pk=with_secret.pk).update(sync_queued=False, last_commit="b" * 40)
    assert post(with_secret.name, *signed_push("b" * 40, "fourth")).json()["status"] == "duplicate"
    Source.objects.filter(pk=with_secret.pk).update(last_commit="a" * 40, consecutive_failures=2)
    assert len(sent) == 2, "not synced: the source has the commit"
    forget_replays(with_secret)  # ten seconds later
    assert post(with_secret.name, *signed_push("b" * 40, "fifth")).json()["status"] == "duplicate"
    assert len(sent) == 3, "synced though backing off: it may bring the fix"
    assert Source.objects.get(pk=with_secret.pk).sync_requested_at is not None


def forget_replays(source) -> None:
    """As DUPLICATE_PUSH_SYNC_SECONDS later: the source's last replay asked long ago."""
    from gitops.celery import redis_client

    redis_client().delete(
        f"sluice:duplicate-push-sync:{source.pk}", f"sluice:duplicate-push-request:{source.pk}"
    )


def test_a_body_replayed_as_each_pass_begins_asks_for_a_sync_once_in_ten_seconds(sources, monkeypatch):
    """Whoever saw an old push's body (a proxy's log) sent it again as each pass began, and each asked
    for a sync: one fetch after another for as long as they liked (before 2026-12-07). Now one asks, and
    those after it within ten seconds make the poll due then: nothing is lost, nothing is asked at once."""
    from gitops.models import Source
    from tests.broker import keep_sends

    with_secret, _ = sources
    sent = keep_sends(monkeypatch)
    assert post(with_secret.name, *signed_push("b" * 40, "first")).status_code == 202
    later = timezone.now() + timedelta(hours=1)
    Source.objects.filter(pk=with_secret.pk).update(last_commit="c" * 40, next_poll_at=later)
    forget_replays(with_secret)

    for n in range(10):
        Source.objects.filter(pk=with_secret.pk).update(sync_queued=False)  # a pass began
        assert post(with_secret.name, *signed_push("b" * 40, f"again-{n}")).json()["status"] == "duplicate"

    assert len(sent) == 2, "the push, then one of the ten replays"
    after = Source.objects.get(pk=with_secret.pk)
    assert after.next_poll_at <= timezone.now() + timedelta(seconds=10), after.next_poll_at
    # A pass running meanwhile ends by putting its poll an interval away: a request runs after it.
    assert after.sync_requested_at is not None
