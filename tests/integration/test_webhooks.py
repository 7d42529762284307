"""The webhook endpoint on the real stack: signatures, branches, replays, bursts, and a real git push."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from gitops.intake import webhook_secrets
from gitops.intake.webhooks import sign
from gitops.models import Revision, Source, WebhookDelivery
from tests.broker import keep_sends, refuse_sends
from tests.gitrepo import configmap, policy
from tests.workers import poll

pytestmark = pytest.mark.django_db(transaction=True)
SECRET = "push-secret-for-tests-0123456789"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def hooked_source(repo, make_namespaces, make_source):
    (namespace,) = make_namespaces("app")
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"v": "1"})})
    repo.commit("v1")
    source = make_source(poll_interval=__import__("datetime").timedelta(hours=1))
    webhook_secrets.webhook_secret_set(source, SECRET)
    return source, namespace


def post(source: Source, body: bytes, headers: dict[str, str]):
    extra = {f"HTTP_{key.upper().replace('-', '_')}": value for key, value in headers.items()}
    return Client().post(f"/webhooks/git/{source.name}", data=body, content_type="application/json", **extra)


def github_push(repo, *, branch: str = "main", delivery: str = "d-1") -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"ref": f"refs/heads/{branch}", "before": "0" * 40, "after": repo.head()}).encode()
    return body, {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": sign(SECRET, body),
    }


def test_a_signed_push_is_accepted_and_reconciled(hooked_source, repo, celery_worker, cluster):
    source, namespace = hooked_source
    body, headers = github_push(repo)

    response = post(source, body, headers)

    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "delivery": "d-1", "commit": repo.head()}
    poll(lambda: cluster.get_configmap(namespace, "app"), timeout=60, what="the push to be reconciled")
    delivery = WebhookDelivery.objects.get(source=source)
    assert (delivery.provider, delivery.outcome, delivery.commit) == ("github", "accepted", repo.head())


def test_a_bad_signature_is_401_and_triggers_nothing(hooked_source, repo):
    source, _ = hooked_source
    body, headers = github_push(repo)
    response = post(source, body, {**headers, "X-Hub-Signature-256": sign("not the secret!!", body)})
    assert response.status_code == 401
    assert response.json()["reason"] == "signature does not match"
    assert post(source, body, {"X-GitHub-Event": "push"}).status_code == 401
    assert not Source.objects.get(pk=source.pk).sync_queued
    assert not Revision.objects.filter(source=source).exists()
    assert (
        list(WebhookDelivery.objects.filter(source=source).values_list("outcome", flat=True))
        == ["rejected"] * 2
    )


def test_another_branch_is_ignored_and_a_replay_is_recognised(hooked_source, repo):
    source, _ = hooked_source
    body, headers = github_push(repo, branch="feature", delivery="d-9")
    response = post(source, body, headers)
    assert response.status_code == 202
    assert response.json()["status"] == "ignored"
    assert "follows main" in response.json()["reason"]
    assert not Source.objects.get(pk=source.pk).sync_queued

    replay = post(source, body, headers)
    assert replay.status_code == 200
    assert replay.json()["status"] == "duplicate"


def test_a_push_goes_to_the_live_source_not_a_deleted_one_of_the_same_name(
    hooked_source, repo, make_source, monkeypatch
):
    live, _ = hooked_source
    # The name was used before: a source made and deleted, then this one made with its name.
    name = live.name
    Source.objects.filter(pk=live.pk).update(name="src-made-after-the-deleted-one")
    deleted = make_source(name=name)
    webhook_secrets.webhook_secret_set(deleted, "the deleted source's own secret, 0123456789")
    Source.objects.filter(pk=deleted.pk).update(deleted_at=timezone.now())
    Source.objects.filter(pk=live.pk).update(name=name)

    body, headers = github_push(repo, delivery="d-live")
    # Kept, not queued: the stack's worker would take the sync (and clear ``sync_queued``) at once.
    sent = keep_sends(monkeypatch)
    response = post(live, body, headers)

    assert response.status_code == 202, response.json()
    assert response.json()["status"] == "accepted"
    assert [kwargs["source_id"] for kwargs in sent] == [live.pk]
    assert Source.objects.get(pk=live.pk).sync_queued
    assert list(WebhookDelivery.objects.values_list("source_id", flat=True)) == [live.pk]


def test_a_push_whose_sync_the_broker_refuses_is_503_and_its_redelivery_is_accepted(
    hooked_source, repo, monkeypatch
):
    """Stored as received, a push the queue refused would make the Git host's redelivery a
    duplicate, and the commit would wait for the next poll (an hour here)."""
    source, _ = hooked_source
    body, headers = github_push(repo, delivery="d-refused")

    refuse_sends(monkeypatch)
    refused = post(source, body, headers)
    assert refused.status_code == 503
    assert (refused.json()["status"], refused["Retry-After"]) == ("unqueued", "10")
    row = WebhookDelivery.objects.get(source=source, delivery_id="d-refused")
    assert (row.outcome, row.reason) == ("unqueued", "the sync could not be queued; deliver it again")
    assert not Source.objects.get(pk=source.pk).sync_queued, "the claim is given back"

    sent = keep_sends(monkeypatch)
    redelivered = post(source, body, headers)
    assert (redelivered.status_code, redelivered.json()["status"]) == (202, "accepted")
    assert [kwargs["source_id"] for kwargs in sent] == [source.pk]
    outcomes = WebhookDelivery.objects.filter(source=source, delivery_id="d-refused").values_list(
        "outcome", flat=True
    )
    assert sorted(outcomes) == ["accepted", "unqueued"]
    assert post(source, body, headers).json()["status"] == "duplicate", "accepted once, then a replay"


def test_a_push_whose_sync_a_database_error_stopped_is_503_and_its_redelivery_is_accepted(
    hooked_source, repo, monkeypatch
):
    """The delivery commits as accepted before its sync is claimed. A database error in the claim (here
    its connection ended under it) was a 500 with the row left accepted, so the host's redelivery read
    "duplicate" and the commit waited for the next poll (an hour here)."""
    from gitops import schedule

    source, _ = hooked_source
    body, headers = github_push(repo, delivery="d-database")
    claim = schedule.sync_queued_claim

    def connection_lost(source_id: int) -> bool:
        """The claim meets a connection PostgreSQL ended (a restart, a failover, an idle timeout)."""
        backend = _backend_pid()
        ended = threading.Thread(target=_terminate, args=(backend,))
        ended.start()
        ended.join()
        return claim(source_id)

    monkeypatch.setattr(schedule, "sync_queued_claim", connection_lost)
    refused = post(source, body, headers)
    assert (refused.status_code, refused.json()["status"]) == (503, "unqueued")
    assert WebhookDelivery.objects.get(source=source, delivery_id="d-database").outcome == "unqueued"

    monkeypatch.setattr(schedule, "sync_queued_claim", claim)
    sent = keep_sends(monkeypatch)
    redelivered = post(source, body, headers)
    assert (redelivered.status_code, redelivered.json()["status"]) == (202, "accepted")
    assert [kwargs["source_id"] for kwargs in sent] == [source.pk]


def _backend_pid() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def _terminate(backend: int) -> None:
    """On a connection of its own (this thread's): ends the backend and waits until it is gone."""
    from django.db import connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s, 5000)", [backend])
    finally:
        connection.close()


def test_a_redelivered_ping_is_answered_pong_and_kept_once(hooked_source):
    """A ping is kept as an ignored delivery, under the unique constraint a push's id has: the host's
    redelivery of it (the same id) met that constraint and was answered 500."""
    source, _ = hooked_source
    body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    signature = sign(SECRET, body)
    headers = {"X-GitHub-Event": "ping", "X-GitHub-Delivery": "p-1", "X-Hub-Signature-256": signature}

    answers = [post(source, body, headers) for _ in range(2)]

    assert [(a.status_code, a.json()["status"]) for a in answers] == [(200, "pong"), (200, "pong")]
    assert WebhookDelivery.objects.filter(source=source, delivery_id="p-1").count() == 1


def test_a_signed_body_sent_again_as_a_ping_is_answered_and_not_kept(hooked_source, repo, monkeypatch):
    """The event's name is a header the signature does not cover: a push's body, seen once, sent again as
    a ping without an id (or under new ones) was a new row each time, without bound, and pushed the real
    deliveries off the source page. It is a replay of that body: answered pong, not kept."""
    source, _ = hooked_source
    keep_sends(monkeypatch)
    body, headers = github_push(repo, delivery="d-seen")
    assert post(source, body, headers).json()["status"] == "accepted"
    as_ping = {"X-GitHub-Event": "ping", "X-Hub-Signature-256": headers["X-Hub-Signature-256"]}

    answers = [post(source, body, as_ping) for _ in range(6)]

    assert {(answer.status_code, answer.json()["status"]) for answer in answers} == {(200, "pong")}
    rows = WebhookDelivery.objects.filter(source=source)
    assert list(rows.values_list("event", "outcome")) == [("push", "accepted")]
    # A ping of its own (its own body) is kept, once.
    ping = json.dumps({"zen": "Design for failure.", "hook_id": 7}).encode()
    own = {"X-GitHub-Event": "ping", "X-Hub-Signature-256": sign(SECRET, ping)}
    assert post(source, ping, own).json()["status"] == "pong"
    assert rows.filter(event="ping", outcome="ignored").count() == 1


def test_a_push_whose_sync_the_broker_refused_is_synced_by_beat_once_the_broker_is_back(
    hooked_source, repo, monkeypatch
):
    """GitHub does not redeliver a 503 by itself: the refused push makes the source's poll due at
    once, so beat's first sweep after the broker is back syncs it, not the poll an hour later."""
    from datetime import timedelta

    from django.utils import timezone

    from gitops.tasks import poll_sources

    source, _ = hooked_source
    body, headers = github_push(repo, delivery="d-never-redelivered")
    in_an_hour = timezone.now() + timedelta(hours=1)
    Source.objects.filter(pk=source.pk).update(next_poll_at=in_an_hour)  # polled, next hourly

    refuse_sends(monkeypatch)
    assert post(source, body, headers).status_code == 503
    assert Source.objects.get(pk=source.pk).next_poll_at <= timezone.now(), "the poll is due now"
    tried = refuse_sends(monkeypatch)
    poll_sources.apply()
    assert [kwargs["source_id"] for kwargs in tried] == [source.pk], "still away: given back again"

    sent = keep_sends(monkeypatch)
    assert poll_sources.apply().get() == [source.pk]
    assert [kwargs["source_id"] for kwargs in sent] == [source.pk], "synced with no redelivery"


def test_a_push_refused_while_its_source_reconciles_is_run_by_the_pass_under_way(
    hooked_source, repo, cluster, monkeypatch
):
    """The pass under way had cleared the queued mark, and its end would put the poll a whole
    interval away again: it runs the refused push's commit next itself, needing no broker."""
    from gitops import reconcile

    source, namespace = hooked_source
    refuse_sends(monkeypatch)
    real_pass = reconcile._measured
    answers: list[int] = []

    def a_push_arrives_during_the_first_pass(*args, **options):
        result = real_pass(*args, **options)
        if not answers:
            repo.write("configmaps/app.yaml", configmap("app", {"v": "2"}))
            repo.commit("v2")
            body, headers = github_push(repo, delivery="d-during-a-pass")
            answers.append(post(source, body, headers).status_code)
        return result

    monkeypatch.setattr(reconcile, "_measured", a_push_arrives_during_the_first_pass)
    reconcile.source_sync(source.pk, actor="webhook:github", automatic=True)
    assert answers == [503]
    assert cluster.get_configmap(namespace, "app")["data"] == {"v": "2"}, "run by the pass under way"


def test_malformed_and_oversized_bodies(hooked_source):
    source, _ = hooked_source
    body = b"{not json"
    assert (
        post(source, body, {"X-Sluice-Event": "push", "X-Sluice-Signature": sign(SECRET, body)}).status_code
        == 400
    )
    huge = b"{" + b" " * (1024 * 1024) + b"}"
    assert (
        post(source, huge, {"X-Sluice-Event": "push", "X-Sluice-Signature": sign(SECRET, huge)}).status_code
        == 413
    )
    # An unknown name is answered like a known source (tests/integration/test_webhook_probing.py).
    unknown = Client().post("/webhooks/git/no-such-source", data=b"{}", content_type="application/json")
    assert (unknown.status_code, unknown.content) == (400, post(source, b"{}", {}).content)


def test_a_burst_of_pushes_coalesces_into_the_newest_commit(hooked_source, repo, celery_worker, cluster):
    source, namespace = hooked_source
    commits = []
    for index in range(20):
        repo.write("configmaps/app.yaml", configmap("app", {"v": str(index)}))
        commits.append(repo.commit(f"push {index}", push=False))
    repo.push()

    # Twenty deliveries arrive faster than one reconcile takes.
    for index, commit in enumerate(commits):
        body = json.dumps({"ref": "refs/heads/main", "after": commit}).encode()
        headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": f"burst-{index}"}
        assert post(source, body, {**headers, "X-Hub-Signature-256": sign(SECRET, body)}).status_code == 202

    poll(
        lambda: (cluster.get_configmap(namespace, "app") or {}).get("data") == {"v": "19"},
        timeout=60,
        what="the newest commit to arrive",
    )
    assert WebhookDelivery.objects.filter(source=source, outcome="accepted").count() == 20
    reconciled = list(Revision.objects.filter(source=source).values_list("commit", flat=True))
    assert reconciled == [commits[-1]], "only the newest commit is reconciled"


def test_the_cli_sets_and_rotates_the_secret_and_shows_it_once(hooked_source, manage, worker_env):
    source, _ = hooked_source

    def gitops(*args: str) -> str:
        done = manage("gitops", *args, env=worker_env)
        assert done.returncode == 0, done
        return done.stdout

    rotated = gitops("webhook-secret", source.name, "--rotate")
    secret = rotated.splitlines()[1]
    assert len(secret) >= 32
    body = b'{"ref": "refs/heads/main", "after": "' + b"a" * 40 + b'"}'
    assert (
        post(source, body, {"X-Sluice-Event": "push", "X-Sluice-Signature": sign(secret, body)}).status_code
        == 202
    )
    assert secret not in Source.objects.get(pk=source.pk).webhook_secret_encrypted
    assert "set" in gitops("webhook-secret", source.name, "--set", "another-secret-of-length-16+")


def test_a_git_push_through_the_shipped_post_receive_hook_reaches_the_cluster(
    hooked_source, repo, live_server, celery_worker, cluster
):
    source, namespace = hooked_source
    hook = repo.remote / "hooks" / "post-receive"
    shutil.copy(ROOT / "scripts" / "post-receive", hook)
    hook.chmod(0o755)
    subprocess.run(
        ["git", "config", "sluice.url", f"{live_server.url}/webhooks/git/{source.name}"],
        cwd=repo.remote,
        check=True,
    )
    subprocess.run(["git", "config", "sluice.secret", SECRET], cwd=repo.remote, check=True)

    repo.write("configmaps/app.yaml", configmap("app", {"v": "pushed"}))
    repo.git("add", "--all")
    repo.git("commit", "--quiet", "-m", "through the hook")
    pushed = subprocess.run(
        ["git", "push", "origin", "HEAD:refs/heads/main"],
        cwd=repo.work,
        capture_output=True,
        text=True,
        env={**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null"},
        check=True,
    )

    assert "sluice: refs/heads/main" in pushed.stderr and "accepted" in pushed.stderr, pushed.stderr
    poll(
        lambda: (cluster.get_configmap(namespace, "app") or {}).get("data") == {"v": "pushed"},
        timeout=60,
        what="the pushed change to reach the apiserver",
    )
    assert WebhookDelivery.objects.get(source=source, outcome="accepted").provider == "generic"


def test_a_push_to_a_backing_off_source_whose_owed_rollback_is_queued_is_fetched_after_it(
    hooked_source, repo, cluster, monkeypatch
):
    """The source backs off (its last passes failed) and owes a cluster a rollback, so beat's sweep has
    queued a pass that carries out decisions only and does not fetch. A push comes meanwhile: its sync
    is already queued, so the webhook queues none. The decisions' pass then runs the push's fetch after
    it. Before, it took the push's request with its own and never fetched: the commit waited for the
    back-off's next try (up to an hour) though the push was answered "accepted"."""
    from datetime import timedelta

    from gitops import reconcile, schedule

    source, namespace = hooked_source
    monkeypatch.setattr(schedule, "_send", lambda *args, **kwargs: "")  # the passes run here
    assert reconcile.source_sync(source.pk).outcome == "applied"
    Source.objects.filter(pk=source.pk).update(
        consecutive_failures=2, next_poll_at=timezone.now() + timedelta(minutes=30), last_error="git down"
    )
    assert schedule.sync_queued_claim(source.pk), "beat's sweep claims it for the owed rollback"
    repo.write("configmaps/app.yaml", configmap("app", {"v": "2"}))
    repo.commit("v2: the fix")
    body, headers = github_push(repo)

    assert post(source, body, headers).json()["status"] == "accepted"
    reconcile.source_sync(source.pk, actor="sluice", rollouts_only=True)  # the sweep's queued pass

    assert cluster.get_configmap(namespace, "app")["data"] == {"v": "2"}
    assert Source.objects.get(pk=source.pk).consecutive_failures == 0


def test_rejected_deliveries_anyone_sends_leave_the_real_ones_on_the_source_page(hooked_source, repo, people):
    """Anyone who knows a source's name may send it deliveries that are rejected, and 20 a minute of
    them are kept. The page showed the latest 20 deliveries: a stream of rejected ones pushed a real
    push off it within a minute. It shows the latest verified ones, and a few rejected beside them."""
    source, _ = hooked_source
    body, headers = github_push(repo, delivery="the-real-one")
    assert post(source, body, headers).status_code == 202
    for attempt in range(25):
        forged = {**headers, "X-GitHub-Delivery": f"forged-{attempt}", "X-Hub-Signature-256": "sha256=00"}
        assert post(source, body, forged).status_code == 401
    assert WebhookDelivery.objects.filter(source=source, outcome="rejected").count() == 20

    client = Client()
    client.force_login(people["viewer"])
    page = client.get(f"/sources/{source.name}/").content.decode()
    table = page.split('<table id="deliveries">')[1].split("</table>")[0]
    assert "the-real-one" in table
    assert table.count("outcome-rejected") == 5
