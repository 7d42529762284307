"""The JSON API on the real stack: who may do what, what actions do through the real worker,
tokens, the change log's filters, query counts, and the OpenAPI contract checked by schemathesis."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from celery.result import AsyncResult
from django.contrib.auth.models import Group, Permission, User
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.crypto import get_random_string

from dashboard.models import ApiToken
from gitops.intake import webhook_secrets
from gitops.models import (
    ApplyIntent,
    Approval,
    Change,
    ManagedObject,
    Revision,
    Rollout,
    RolloutEvent,
    Source,
)
from tests.gitrepo import configmap, policy
from tests.workers import poll

pytestmark = pytest.mark.django_db(transaction=True)

# Every operation, with a source and a rollout that do not exist.
ENDPOINTS = [
    ("get", "/sources"),
    ("get", "/sources/shop"),
    ("get", "/sources/shop/revisions"),
    ("get", "/sources/shop/plan"),
    ("get", "/rollouts"),
    ("get", "/rollouts/1"),
    ("get", "/changes"),
    ("get", "/flags"),
    ("get", "/clusters"),
    ("post", "/sources/shop/sync"),
    ("post", "/rollouts/1/promote"),
    ("post", "/rollouts/1/abort"),
    ("post", "/rollouts/1/retry"),
    ("post", "/rollouts/1/waive-rollback"),
    ("post", "/sources"),
    ("patch", "/sources/shop"),
    ("delete", "/sources/shop?objects=keep"),
    ("post", "/sources/shop/suspend"),
    ("post", "/sources/shop/resume"),
    ("get", "/removals/1"),
]
ACTIONS = [(method, path) for method, path in ENDPOINTS if method != "get"]
# Source administration: an approver is refused these before anything is looked up.
ADMIN_ONLY = [(method, path) for method, path in ENDPOINTS if method in ("patch", "delete")] + [
    ("post", "/sources/shop/suspend"),
    ("post", "/sources/shop/resume"),
    ("post", "/rollouts/1/waive-rollback"),
]

# Freezes and sync windows (dashboard/api_freezes.py; roles and actions in test_freezes_ui.py).
FREEZE_OPERATIONS = [
    "GET /api/freezes",
    "POST /api/freezes",
    "POST /api/freezes/lift",
    "GET /api/windows",
    "POST /api/windows",
    "DELETE /api/windows/{window_id}",
]


def operation_of(path: str) -> str:
    """The OpenAPI path an ENDPOINTS entry calls."""
    path = re.sub(r"/removals/1\b", "/removals/{removal_id}", path.split("?", maxsplit=1)[0])
    return re.sub(r"shop", "{name}", re.sub(r"/1\b", "/{rollout_id}", path))


class Api:
    """A test client for /api that sends a bearer token (or nothing)."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.client = Client(headers={"Authorization": f"Bearer {token}"} if token else {})

    def get(self, path: str, **params: Any):
        return self.client.get("/api" + path, params)

    def post(self, path: str, body: dict[str, Any] | None = None):
        return self.client.post("/api" + path, data=json.dumps(body or {}), content_type="application/json")

    def patch(self, path: str, body: dict[str, Any] | None = None):
        return self.client.patch("/api" + path, data=json.dumps(body or {}), content_type="application/json")

    def delete(self, path: str):
        return self.client.delete("/api" + path)

    def call(self, method: str, path: str):
        return getattr(self, method)(path)


def issue_token(username: str, name: str = "tests", *options: str) -> str:
    """``manage.py api-token create`` in this process: the token is the only line on stdout."""
    out, err = io.StringIO(), io.StringIO()
    call_command("api-token", "create", username, "--name", name, *options, stdout=out, stderr=err)
    assert "shown only now" in err.getvalue()
    return out.getvalue().strip()


@pytest.fixture
def as_role(people) -> dict[str, Api]:
    clients = {role: Api(issue_token(user.username)) for role, user in people.items()}
    clients["anonymous"] = Api()
    return clients


@dataclass
class Paused:
    source: Source
    rollout: Rollout
    targets: list[str]
    v1: str
    v2: str


@pytest.fixture
def paused(repo, make_namespaces, make_source, sync, cluster) -> Paused:
    """v1 applied everywhere; v2 (written by ada) applied to the canary, waiting for one approval at 50%."""
    targets = make_namespaces("canary", "rest")
    repo.write_all(
        {"sluice.yaml": policy(targets), "configmaps/app.yaml": configmap("app", {"VERSION": "1"})}
    )
    v1 = repo.commit("v1")
    source = make_source()
    assert sync(source)["outcome"] == "applied"
    rollout_policy = policy(
        targets,
        rollout={"steps": [{"setWeight": 50}, {"pause": {}}]},
        approvals={"required": 1, "forbidSelfApproval": True},
    )
    repo.write_all({"sluice.yaml": rollout_policy, "configmaps/app.yaml": configmap("app", {"VERSION": "2"})})
    v2 = repo.commit("v2: new version")
    assert sync(source)["outcome"] == "paused"
    rollout = Rollout.objects.get(source=source, revision__commit=v2)
    assert (rollout.phase, rollout.waiting_for, rollout.weight) == ("Paused", "approval", 50)
    assert versions(cluster, targets) == ["2", "1"]
    return Paused(source, rollout, targets, v1, v2)


def versions(cluster, namespaces: list[str]) -> list[str | None]:
    return [((cluster.get_configmap(ns, "app") or {}).get("data") or {}).get("VERSION") for ns in namespaces]


def wait_for_phase(api: Api, rollout_id: int, phase: str, timeout: float = 90) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        body = api.get(f"/rollouts/{rollout_id}").json()
        return body if body["phase"] == phase else None

    return poll(reached, timeout=timeout, interval=0.1, what=f"rollout {rollout_id} to be {phase}")


# -- authentication and permissions --------------------------------------------------------


def test_every_endpoint_answers_401_without_a_valid_caller(as_role, people):
    callers = {
        "nobody": Api(),
        "a malformed token": Api("not-a-sluice-token"),
        "an unknown token": Api("sluice_00000000_" + "x" * 43),
        "a token with a wrong secret": Api(as_role["approver"].token[:-4] + "AAAA"),
    }
    for who, api in callers.items():
        for method, path in ENDPOINTS:
            response = api.call(method, path)
            assert response.status_code == 401, (who, method, path, response.content)
            assert response.json()["detail"], (who, method, path)
            assert response["WWW-Authenticate"].startswith("Bearer"), (who, method, path)
    assert not Approval.objects.exists()


def test_a_viewer_reads_every_endpoint_and_may_not_act(as_role, paused, people):
    viewer = as_role["viewer"]
    name = paused.source.name

    listed = viewer.get("/sources").json()
    assert listed["count"] == 1
    assert (listed["limit"], listed["offset"]) == (50, 0)
    entry = listed["items"][0]
    assert (entry["name"], entry["commit"], entry["revision_outcome"]) == (name, paused.v2, "valid")
    assert entry["active_rollout"]["id"] == paused.rollout.pk
    assert entry["managed_objects"] == 2

    detail = viewer.get(f"/sources/{name}").json()
    assert detail["url"] == paused.source.url
    assert detail["applied_commit"] == paused.v1
    assert detail["revision"]["commit"] == paused.v2
    assert detail["revision"]["message"] == "v2: new version"
    active = detail["active_rollout"]
    assert (active["id"], active["phase"], active["waiting_for"], active["weight"]) == (
        paused.rollout.pk,
        "Paused",
        "approval",
        50,
    )
    assert (detail["plan"]["commit"], detail["plan"]["weight"]) == (paused.v2, 50)
    assert detail["plan"]["summary"]

    revisions = viewer.get(f"/sources/{name}/revisions").json()
    assert [r["commit"] for r in revisions["items"]] == [paused.v2, paused.v1]
    assert revisions["items"][1]["outcome"] == "applied"
    assert revisions["items"][0]["author_email"] == "ada@example.com"

    plan = viewer.get(f"/sources/{name}/plan").json()
    assert (plan["source"], plan["commit"], plan["weight"]) == (name, paused.v2, 50)
    # The plan is what still differs from Git: the canary has v2, the other target waits.
    assert [item["namespace"] for item in plan["items"]] == [paused.targets[1]]
    held = plan["items"][0]
    assert held["action"] == "held"
    assert any(d["key"] == "VERSION" and d["new"] == "2" for d in held["diff"])

    rollouts = viewer.get("/rollouts", source=name).json()
    assert rollouts["count"] == 2
    assert rollouts["items"][0]["id"] == paused.rollout.pk
    assert viewer.get("/rollouts", source=name, phase="Paused").json()["count"] == 1
    # active: progressing or paused, as the Rollouts page and `gitops rollouts --phase active` take it.
    active = viewer.get("/rollouts", source=name, phase="active").json()
    assert [item["id"] for item in active["items"]] == [paused.rollout.pk]
    assert viewer.get("/rollouts", phase="Waiting").status_code == 422
    assert viewer.get("/rollouts", source="elsewhere").json()["count"] == 0

    rollout = viewer.get(f"/rollouts/{paused.rollout.pk}").json()
    assert rollout["revision"]["commit"] == paused.v2
    assert rollout["step_definitions"][:2] == [{"setWeight": 50}, {"pause": {}}]
    assert rollout["approved_by"] == []
    assert rollout["flag_population"] == paused.rollout.flag_population != ""
    assert [e["kind"] for e in rollout["events"]][:3] == ["started", "step", "paused"]

    changes = viewer.get("/changes", source=name).json()
    assert changes["count"] == 3  # v1 created app in both targets, v2 updated the canary

    for method, path in [
        ("post", f"/sources/{name}/sync"),
        ("post", f"/rollouts/{paused.rollout.pk}/promote"),
        ("post", f"/rollouts/{paused.rollout.pk}/abort"),
        ("post", f"/rollouts/{paused.rollout.pk}/retry"),
        *ACTIONS,  # permission comes before existence: nothing is revealed
    ]:
        response = viewer.call(method, path)
        assert response.status_code == 403, (path, response.content)
        assert "vera may not" in response.json()["detail"]
    # Without a body at all too: the body is optional, and the role comes first (it was a 422).
    for action in ("promote", "abort"):
        bare = viewer.client.post(
            f"/api/rollouts/{paused.rollout.pk}/{action}", content_type="application/json"
        )
        assert bare.status_code == 403, bare.content
    untouched = Rollout.objects.get(pk=paused.rollout.pk)
    assert (untouched.phase, untouched.abort_requested_by) == ("Paused", "")
    assert not Approval.objects.filter(rollout=untouched).exists()


def test_a_user_without_a_role_may_not_read(people):
    User.objects.create_user("nemo", password="x").groups.clear()  # new accounts may start as viewers
    nobody = Api(issue_token("nemo"))
    for method, path in ENDPOINTS:
        response = nobody.call(method, path)
        assert response.status_code == 403, (method, path, response.content)


# -- actions, through the real worker -------------------------------------------------------


def test_an_approver_promotes_and_the_worker_completes_the_rollout(as_role, paused, cluster):
    approver, author = as_role["approver"], as_role["author"]
    path = f"/rollouts/{paused.rollout.pk}/promote"

    refused = author.post(path, {"comment": "mine"})
    assert refused.status_code == 403
    assert "ada wrote or committed a commit" in refused.json()["detail"]

    promoted = approver.post(path, {"comment": "canary looks healthy"})
    assert promoted.status_code == 200, promoted.content
    assert promoted.json()["id"] == paused.rollout.pk

    done = wait_for_phase(approver, paused.rollout.pk, "Completed")
    assert done["weight"] == 100
    assert versions(cluster, paused.targets) == ["2", "2"]
    assert [(a["username"], a["step"], a["commit"], a["comment"]) for a in done["approved_by"]] == [
        ("otto", 1, paused.v2, "canary looks healthy")
    ]
    people_events = [(e["kind"], e["actor"]) for e in done["events"] if e["actor"] != "sluice"]
    assert ("approved", "otto") in people_events
    assert ("promoted", "otto") in people_events
    # The step the promote released is logged as the promoting user's.
    released = as_role["viewer"].get("/changes", commit=paused.v2[:10], actor="otto").json()
    assert [(c["namespace"], c["action"], c["weight"]) for c in released["items"]] == [
        (paused.targets[1], "update", 100)
    ]

    again = approver.client.generic("POST", "/api" + path)  # no body, as curl -X POST sends: it was a 422
    assert again.status_code == 409
    assert "completed; there is nothing to promote" in again.json()["detail"]
    assert approver.post(f"/rollouts/{paused.rollout.pk}/abort").status_code == 409
    assert approver.post(f"/rollouts/{paused.rollout.pk}/retry").status_code == 409


def test_an_approver_aborts_the_worker_rolls_back_and_retry_starts_again(as_role, paused, cluster):
    approver = as_role["second_approver"]
    rollout_id = paused.rollout.pk

    aborted = approver.post(f"/rollouts/{rollout_id}/abort", {"reason": "errors on the canary"})
    assert aborted.status_code == 202, aborted.content
    assert aborted.json()["id"] == rollout_id

    done = wait_for_phase(approver, rollout_id, "Aborted")
    assert versions(cluster, paused.targets) == ["1", "1"]
    assert (done["abort_requested_by"], done["abort_reason"]) == ("pia", "errors on the canary")
    assert ("abort-requested", "pia") in [(e["kind"], e["actor"]) for e in done["events"]]
    rollbacks = approver.get("/changes", source=paused.source.name, action="rollback").json()
    assert [(c["namespace"], c["actor"]) for c in rollbacks["items"]] == [(paused.targets[0], "pia")]

    assert approver.post(f"/rollouts/{rollout_id}/abort").status_code == 409
    assert approver.post(f"/rollouts/{rollout_id}/promote").status_code == 409

    retried = approver.post(f"/rollouts/{rollout_id}/retry")
    assert retried.status_code == 201, retried.content
    again = retried.json()
    assert again["id"] != rollout_id
    assert again["commit"] == paused.v2
    restarted = wait_for_phase(approver, again["id"], "Paused")
    assert restarted["created_by"] == "pia"
    assert restarted["approved_by"] == []
    assert versions(cluster, paused.targets) == ["2", "1"]


def test_sync_queues_a_task_and_its_revision_appears(
    as_role, repo, make_namespaces, make_source, celery_worker
):
    targets = make_namespaces("a", "b")
    repo.write_all(
        {"sluice.yaml": policy(targets), "configmaps/app.yaml": configmap("app", {"VERSION": "1"})}
    )
    commit = repo.commit("first")
    source = make_source()
    approver = as_role["approver"]
    assert approver.get(f"/sources/{source.name}/plan").status_code == 404  # not reconciled yet

    queued = approver.post(f"/sources/{source.name}/sync")

    assert queued.status_code == 202, queued.content
    body = queued.json()
    assert (body["source"], body["actor"]) == (source.name, "otto")
    assert AsyncResult(body["task_id"]).get(timeout=120)["outcome"] == "applied"
    revisions = approver.get(f"/sources/{source.name}/revisions").json()
    assert [(r["commit"], r["outcome"]) for r in revisions["items"]] == [(commit, "applied")]
    changes = approver.get("/changes", source=source.name).json()
    assert {(c["namespace"], c["action"], c["actor"]) for c in changes["items"]} == {
        (targets[0], "create", "otto"),
        (targets[1], "create", "otto"),
    }
    assert approver.get(f"/sources/{source.name}/plan").json()["commit"] == commit

    # An admin-like user with only gitops.change_source (no approve_rollout) may sync too.
    operator = User.objects.create_user("opal", password="x")
    operator.groups.add(Group.objects.get(name="viewer"))
    operator.user_permissions.add(Permission.objects.get(codename="change_source"))
    queued = Api(issue_token("opal")).post(f"/sources/{source.name}/sync")
    assert queued.status_code == 202, queued.content
    AsyncResult(queued.json()["task_id"]).get(timeout=120)


def test_a_sync_through_the_api_may_retry_refused_changes(as_role, make_source, monkeypatch):
    """As `gitops sync --retry-failed`: an approver in ChatOps or a pipeline had no way to send the
    refused changes again once what refused them was mended."""
    from tests.broker import keep_sends

    source = make_source()
    sent = keep_sends(monkeypatch)
    approver = as_role["approver"]

    retried = approver.post(f"/sources/{source.name}/sync", {"retry_failed": True})
    plain = approver.post(f"/sources/{source.name}/sync")

    assert (retried.status_code, retried.json()["retry_failed"]) == (202, True)
    assert (plain.status_code, plain.json()["retry_failed"]) == (202, False)
    assert [kwargs["retry_failed"] for kwargs in sent] == [True, False]
    assert approver.post(f"/sources/{source.name}/sync", {"retry": True}).status_code == 422, "misspelt"
    assert len(sent) == 2


def test_missing_things_are_404_and_malformed_ids_422(as_role, make_source):
    approver = as_role["approver"]
    admin = User.objects.create_user("ada-admin", password="x")
    admin.groups.add(Group.objects.get(name="admin"))
    administrator = Api(issue_token("ada-admin"))
    for method, path in ENDPOINTS:
        if path in ("/sources", "/rollouts", "/changes", "/flags", "/clusters"):
            continue
        caller = administrator if (method, path) in ADMIN_ONLY else approver
        response = caller.call(method, path.replace("/1", "/987654321"))
        assert response.status_code == 404, (method, path, response.content)
        assert response.json()["detail"]
    source = make_source()
    missing_plan = approver.get(f"/sources/{source.name}/plan")
    assert missing_plan.status_code == 404
    assert "has no plan yet" in missing_plan.json()["detail"]
    for path in ["/rollouts/abc", "/rollouts/0", "/rollouts/-3", f"/rollouts/{2**63}", "/sources/Not_A_Name"]:
        response = approver.get(path)
        assert response.status_code == 422, (path, response.content)
    assert approver.post("/rollouts/1/promote", {"full": "perhaps"}).status_code == 422
    # A path under /api that names nothing: JSON, as every other answer of the API, not an HTML page.
    for path in ["/nothing-here", "/sources/a%2Fb"]:
        response = approver.get(path)
        assert response.status_code == 404 and response.json()["detail"], (path, response.content)


# -- tokens and sessions ------------------------------------------------------------------------


@pytest.fixture
def api_token_command(manage, worker_env):
    """``manage.py api-token ...`` as a real process; asserts its exit status."""

    def run(*args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        done = manage("api-token", *args, env=worker_env, timeout=120)
        assert done.returncode == expect, done
        return done

    return run


def test_token_lifecycle_through_the_command_line(people, api_token_command):
    created = api_token_command("create", "otto", "--name", "ci-deploy")
    token = created.stdout.strip()
    prefix = token.split("_")[1]
    assert re.fullmatch(r"sluice_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", token)
    assert f"created token {prefix} (ci-deploy) for otto" in created.stderr

    row = ApiToken.objects.get(prefix=prefix)
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert row.last_used_at is None
    with connection.cursor() as cursor:
        cursor.execute("SELECT row_to_json(t)::text FROM dashboard_apitoken t")
        stored = " ".join(text for (text,) in cursor.fetchall())
    assert token not in stored
    assert token.split("_", 2)[2] not in stored

    api = Api(token)
    assert api.get("/sources").status_code == 200
    assert ApiToken.objects.get(pk=row.pk).last_used_at is not None

    listed = api_token_command("list").stdout
    assert re.search(rf"^{prefix}\totto\tci-deploy\tactive\t", listed, re.MULTILINE)
    assert token.split("_", 2)[2] not in listed

    api_token_command("revoke", prefix)
    assert api.get("/sources").status_code == 401
    assert "already revoked" in api_token_command("revoke", prefix, expect=1).stderr
    assert f"{prefix}\totto\tci-deploy\trevoked" in api_token_command("list").stdout
    assert "no user named" in api_token_command("create", "nobody", "--name", "x", expect=1).stderr


def test_expired_and_inactive_users_tokens_are_refused(people):
    expiring = issue_token("otto", "short-lived", "--expires-in", "1h")
    api = Api(expiring)
    assert api.get("/changes").status_code == 200
    ApiToken.objects.filter(prefix=expiring.split("_")[1]).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert api.get("/changes").status_code == 401

    live = Api(issue_token("pia"))
    assert live.get("/changes").status_code == 200
    User.objects.filter(username="pia").update(is_active=False)
    assert live.get("/changes").status_code == 401


def test_a_dashboard_session_reads_and_acts_only_with_the_csrf_token(people):
    browser = Client(enforce_csrf_checks=True)
    anonymous_post = browser.post("/api/rollouts/987654321/abort", "{}", content_type="application/json")
    assert anonymous_post.status_code == 401  # not a CSRF 403: there is no session to protect

    browser.force_login(people["approver"])
    assert browser.get("/api/sources").status_code == 200
    forged = browser.post("/api/rollouts/987654321/abort", "{}", content_type="application/json")
    assert forged.status_code == 403
    assert forged.json()["detail"] == "CSRF check Failed"

    secret = get_random_string(32)
    browser.cookies["csrftoken"] = secret
    genuine = browser.post(
        "/api/rollouts/987654321/abort",
        "{}",
        content_type="application/json",
        headers={"X-CSRFToken": secret},
    )
    assert genuine.status_code == 404  # past authentication and CSRF, into the use case

    # A preview is work on a worker, and a GET has no CSRF token: a link on another site must not start
    # one with the session's cookie. The session previews with the dashboard's form, a token here.
    previewed = browser.get("/api/sources/987654321/plan", {"revision": "refs/pull/1/head"})
    assert previewed.status_code == 403
    assert "API token" in previewed.json()["detail"]


def test_the_openapi_document_and_docs_need_a_caller(as_role, people):
    anonymous = Client()
    assert anonymous.get("/api/openapi.json").status_code == 401
    page = anonymous.get("/api/docs", headers={"Accept": "text/html"})
    assert page.status_code == 302
    assert page["Location"].startswith("/login/?next=/api/docs")

    document = as_role["viewer"].get("/openapi.json")
    assert document.status_code == 200
    assert document.json()["info"]["title"] == "Sluice API"
    browser = Client()
    browser.force_login(people["viewer"])
    assert browser.get("/api/docs").status_code == 200
    assert browser.get("/api/openapi.json").status_code == 200


def test_no_secret_appears_in_any_response(as_role, monkeypatch):
    secret = "s3cr3t-" + get_random_string(12)
    monkeypatch.setenv("SLUICE_TEST_GIT_TOKEN", secret)
    # A source from before URLs with credentials were refused, and a fetch error that quotes it.
    Source.objects.create(
        name="legacy",
        url=f"https://deploy:{secret}@git.example.com/org/config.git",
        credentials_ref="env:SLUICE_TEST_GIT_TOKEN",
        last_error=f"fetch https://deploy:{secret}@git.example.com/org/config.git: 503",
    )
    webhook_secret = webhook_secrets.webhook_secret_rotate(Source.objects.get(name="legacy"))
    viewer = as_role["viewer"]
    responses = [viewer.get(path) for path in ("/sources", "/sources/legacy", "/sources/legacy/revisions")]
    responses += [viewer.get("/openapi.json"), viewer.get("/rollouts"), viewer.get("/changes")]
    for response in responses:
        assert response.status_code == 200
        text = response.content.decode()
        assert secret not in text
        assert webhook_secret not in text
        assert "webhook" not in text.lower()  # not even the name of the encrypted field
        for client in as_role.values():
            assert client.token is None or client.token not in text
    detail = responses[1].json()
    assert detail["url"] == "https://deploy:***@git.example.com/org/config.git"
    assert detail["credentials_ref"] == "env:SLUICE_TEST_GIT_TOKEN"
    assert "***" in detail["last_error"]


def test_messages_quoting_a_token_are_redacted_as_the_pages_redact_them(as_role, paused):
    """Errors quote what they were given: an analysis URL a repository wrote, with its token in the query."""
    leaked = "GET https://checks.example.com/verify?token=s3cr3t&private_token=glpat-leak answered 500"
    # Azure Functions' key: a name ``redact`` does not know. The query goes whole.
    url = "https://checks.example.com/verify?code=s3cr3t"
    Source.objects.filter(pk=paused.source.pk).update(last_error=leaked)
    steps = [*paused.rollout.steps, {"analysis": {"http": {"url": url}}}]
    Rollout.objects.filter(pk=paused.rollout.pk).update(message=leaked, abort_reason=leaked, steps=steps)
    RolloutEvent.objects.create(rollout=paused.rollout, kind="failed", message=leaked)
    revision = paused.rollout.revision
    revision.errors = [{"file": "sluice.yaml", "line": 3, "field": "rollout", "message": leaked}]
    revision.save(update_fields=["errors"])
    name, rollout = paused.source.name, paused.rollout.pk
    viewer = as_role["viewer"]
    paths = [
        "/sources",
        f"/sources/{name}",
        f"/sources/{name}/revisions",
        "/rollouts",
        f"/rollouts/{rollout}",
    ]
    for path in paths:
        response = viewer.get(path)
        assert response.status_code == 200, path
        text = response.content.decode()
        assert "s3cr3t" not in text and "glpat-leak" not in text, path
    detail = viewer.get(f"/rollouts/{rollout}").json()
    assert "token=***&private_token=***" in detail["message"]
    assert (
        detail["step_definitions"][-1]["analysis"]["http"]["url"]
        == "https://checks.example.com/verify?\u2026"
    )


# -- the change log: filters and pages ----------------------------------------------------------


def test_changes_filter_by_every_field_and_page_newest_first(
    as_role, repo, make_namespaces, make_source, sync
):
    targets = make_namespaces("a", "b", "c")
    repo.write_all(
        {
            "sluice.yaml": policy(targets),
            "configmaps/app.yaml": configmap("app", {"VERSION": "1"}),
            "configmaps/feature.yaml": configmap("feature", {"ON": "no"}),
        }
    )
    v1 = repo.commit("v1")
    source = make_source()
    sync(source)
    repo.write("configmaps/app.yaml", configmap("app", {"VERSION": "2"}))
    v2 = repo.commit("v2")
    sync(source)
    api = as_role["viewer"]

    def query(**params: Any) -> dict[str, Any]:
        response = api.get("/changes", source=source.name, **params)
        assert response.status_code == 200, (params, response.content)
        return response.json()

    everything = query(limit=200)
    assert everything["count"] == 9
    ats = [c["at"] for c in everything["items"]]
    assert ats == sorted(ats, reverse=True)
    assert [c["commit"] for c in everything["items"][:3]] == [v2] * 3

    assert {c["commit"] for c in query(commit=v2[:8])["items"]} == {v2}
    assert query(commit=v2[:8].upper())["count"] == 3
    assert query(commit=v1)["count"] == 6
    assert query(namespace=targets[0])["count"] == 3
    assert query(name="feature")["count"] == 3
    assert query(action="update")["count"] == 3
    assert query(action="create", namespace=targets[2], name="app")["count"] == 1
    assert query(actor="sluice")["count"] == 9
    assert query(actor="otto")["count"] == 0
    assert api.get("/changes", source="another").json()["count"] == 0

    first_v2 = min(c["at"] for c in everything["items"] if c["commit"] == v2)
    assert {c["commit"] for c in query(since=first_v2, limit=200)["items"]} == {v2}
    assert {c["commit"] for c in query(until=first_v2, limit=200)["items"]} == {v1}
    naive = first_v2.replace("Z", "").split("+")[0]
    assert query(since=naive)["count"] == 3  # a time without an offset is UTC

    pages = [query(limit=4, offset=offset) for offset in (0, 4, 8)]
    assert [len(p["items"]) for p in pages] == [4, 4, 1]
    assert {(p["count"], p["limit"]) for p in pages} == {(9, 4)}
    assert [c["id"] for p in pages for c in p["items"]] == [c["id"] for c in everything["items"]]
    assert query(offset=9)["items"] == []

    for bad in ({"limit": 0}, {"limit": 201}, {"offset": -1}, {"action": "explode"}, {"commit": "xyz"}):
        assert api.get("/changes", **bad).status_code == 422, bad
    assert api.get("/changes", since="yesterday").status_code == 422


# -- query counts ----------------------------------------------------------------------------


def seed(count: int, user: User, start: int = 0) -> list[Source]:
    """Sources with a revision, a paused rollout with an approval, a managed object and a change each."""
    sources = []
    for i in range(start, start + count):
        source = Source.objects.create(name=f"seeded-{i:03d}", url="file:///nowhere.git")
        commit = f"{i:040x}"
        revision = Revision.objects.create(
            source=source, commit=commit, outcome="valid", summary={"update": 1}
        )
        rollout = Rollout.objects.create(
            source=source,
            revision=revision,
            phase="Paused",
            waiting_for="approval",
            steps=[{"setWeight": 50}],
        )
        Approval.objects.create(
            rollout=rollout, commit=commit, step_index=0, content_hash="h", user=user, username=user.username
        )
        ManagedObject.objects.create(
            source=source, namespace="ns", name=f"app-{i}", commit=commit, content_hash="h"
        )
        intent = ApplyIntent.objects.create(
            rollout=rollout, source=source, namespace="ns", name=f"app-{i}", action="update", commit=commit
        )
        Change.objects.create(
            intent=intent,
            source=source,
            rollout=rollout,
            commit=commit,
            namespace="ns",
            name=f"app-{i}",
            action="update",
            actor="sluice",
            result="ok",
        )
        sources.append(source)
    return sources


def test_list_endpoints_run_a_fixed_number_of_queries(as_role, people):
    api = as_role["viewer"]
    first = seed(3, people["approver"])[0]
    for i in range(2):
        Revision.objects.create(source=first, commit=f"{i:x}".rjust(40, "f"))
    lists = ["/sources", "/rollouts", "/changes", f"/sources/{first.name}/revisions"]

    def measure() -> dict[str, tuple[int, int]]:
        counts = {}
        for path in lists:
            with CaptureQueriesContext(connection) as queries:
                response = api.get(path, limit=200)
            assert response.status_code == 200, response.content
            counts[path] = (len(queries), response.json()["count"])
        return counts

    api.get("/sources")  # the token's first use records last_used_at
    few = measure()
    seed(27, people["approver"], start=3)
    for i in range(27):
        Revision.objects.create(source=first, commit=f"{i:x}".rjust(40, "e"))
    many = measure()

    assert {path: rows for path, (_, rows) in few.items()} == {
        "/sources": 3,
        "/rollouts": 3,
        "/changes": 3,
        f"/sources/{first.name}/revisions": 3,
    }
    assert {path: rows for path, (_, rows) in many.items()} == {
        "/sources": 30,
        "/rollouts": 30,
        "/changes": 30,
        f"/sources/{first.name}/revisions": 30,
    }
    assert {path: n for path, (n, _) in many.items()} == {path: n for path, (n, _) in few.items()}
    assert max(n for n, _ in many.values()) <= 12


def test_a_form_posted_to_the_api_is_refused_as_a_body_it_cannot_read_not_a_500(db):
    """The NUL check parsed every posted form, the API's too, consuming the stream its parser then read:
    ``curl -F name=x`` to any endpoint was a 500. A form is the API's to refuse."""
    User.objects.create_user("ada-admin", password="x").groups.add(Group.objects.get(name="admin"))
    admin = Api(issue_token("ada-admin")).client
    for body in ({"name": "x"}, {"name": "x\x00"}):
        answer = admin.post(
            "/api/sources", body
        )  # multipart, as curl -F sends it (the test client's default)
        assert 400 <= answer.status_code < 500, (body, answer.status_code, answer.content[:200])


def test_lists_and_polled_pages_never_read_a_sources_stored_plan(as_role, people):
    """A source's last plan runs to megabytes (500 items and their diffs). The rollout list read it once
    per row (200 rows, one plan: 840 MiB from PostgreSQL, decoded 200 times), and so did the rollout page
    that polls every second, the freezes every page and pass asks, and the source list."""
    from gitops import selectors
    from gitops.models import Freeze

    api = as_role["viewer"]
    sources = seed(3, people["approver"])
    Source.objects.update(last_plan={"items": [{"diff": "x" * 1000}]}, consumer_map={"ns/app": ["web"]})
    Freeze.objects.create(
        source=sources[0], until=timezone.now() + timedelta(hours=1), reason="r", created_by="otto"
    )
    rollout = Rollout.objects.filter(source=sources[0]).get()
    page = Client()
    page.force_login(people["viewer"])
    api.get("/sources")  # the token's first use records last_used_at

    asked = {
        "/api/sources": lambda: api.get("/sources", limit=200),
        "/api/rollouts": lambda: api.get("/rollouts", limit=200),
        "/api/rollouts/ID": lambda: api.get(f"/rollouts/{rollout.pk}"),
        "rollout page": lambda: page.get(f"/rollouts/{rollout.pk}/", HTTP_HX_REQUEST="true"),
        "freezes in force": lambda: list(selectors.freezes_in_force(timezone.now())),
    }
    for what, ask in asked.items():
        with CaptureQueriesContext(connection) as queries:
            answer = ask()
        assert getattr(answer, "status_code", 200) == 200, what
        read = [q["sql"] for q in queries if '"last_plan"' in q["sql"] or '"consumer_map"' in q["sql"]]
        assert read == [], f"{what} read a source's plan or consumer map: {read[0][:300]}"


def test_rollouts_that_forbid_self_approval_are_listed_in_a_fixed_number_of_queries(as_role, people):
    """Each active rollout that forbids self-approval counted its gate's approvals with a query of its
    own (before 2026-12-07: a page of 200 was 200 queries more). An author's approval does not count."""
    api = as_role["viewer"]
    approver = people["approver"]

    def measure() -> tuple[dict[str, int], dict[str, Any]]:
        counts, bodies = {}, {}
        for path in ("/rollouts", "/sources"):
            with CaptureQueriesContext(connection) as queries:
                response = api.get(path, limit=200)
            assert response.status_code == 200, response.content
            counts[path], bodies[path] = len(queries), response.json()
        return counts, bodies

    api.get("/sources")  # the token's first use records last_used_at
    seed(2, approver)
    Rollout.objects.update(forbid_self_approval=True)
    few, _ = measure()
    seed(20, approver, start=2)
    Rollout.objects.update(forbid_self_approval=True)
    authored = Rollout.objects.order_by("id").first()
    Revision.objects.filter(pk=authored.revision_id).update(author_email=" OTTO@example.com")
    many, bodies = measure()

    assert few == many, (few, many)
    approvals = {item["id"]: item["approvals"] for item in bodies["/rollouts"]["items"]}
    assert approvals.pop(authored.pk) == 0, "the author's own approval"
    assert set(approvals.values()) == {1}, approvals
    listed = {row["name"]: row["active_rollout"]["approvals"] for row in bodies["/sources"]["items"]}
    assert listed[authored.source.name] == 0 and sum(listed.values()) == 21, listed


# -- the consumers of a ConfigMap step (issue 12) -----------------------------------------------


def consumer_states(count: int) -> list[dict[str, Any]]:
    """What the worker stores while a wave's consumers roll out: every health, a pinned one, and (from
    seven on) an Argo Rollout that refers to a Deployment."""
    healths = [
        ("healthy", "2/2 available"),
        ("progressing", "updating 1/2"),
        ("failed", "ProgressDeadlineExceeded: x"),
    ]
    return [
        {
            "cluster": "default",
            "kind": "Rollout" if index % 7 == 6 else ("Deployment", "StatefulSet", "DaemonSet")[index % 3],
            "namespace": f"team-{index % 4}",
            "name": f"web-{index}",
            "restarted": index % 5 != 0,
            "restartable": index % 5 != 0 and index % 7 != 6,
            "refers_to": "web-0" if index % 7 == 6 else "",
            "health": healths[index % 3][0],
            "detail": healths[index % 3][1],
        }
        for index in range(count)
    ]


def test_rollouts_and_sources_carry_their_consumers_in_a_fixed_number_of_queries(as_role, people):
    (source,) = seed(1, people["approver"])
    rollout = Rollout.objects.get(source=source)
    Rollout.objects.filter(pk=rollout.pk).update(
        consumers="restart",
        health_timeout_seconds=90,
        waiting_for="consumers",
        consumer_states=consumer_states(1),
    )
    map_time = timezone.now()
    Source.objects.filter(pk=source.pk).update(
        consumer_map={"team-0/Deployment/web-0": ["app"]}, consumer_map_at=map_time
    )
    viewer = as_role["viewer"]
    paths = [f"/rollouts/{rollout.pk}", "/rollouts", f"/sources/{source.name}", "/sources"]

    def measure() -> tuple[dict[str, int], dict[str, Any]]:
        counts, bodies = {}, {}
        for path in paths:
            with CaptureQueriesContext(connection) as queries:
                response = viewer.get(path)
            assert response.status_code == 200, response.content
            counts[path], bodies[path] = len(queries), response.json()
        return counts, bodies

    viewer.get("/sources")  # the token's first use records last_used_at
    few, bodies = measure()
    detail = bodies[f"/rollouts/{rollout.pk}"]
    assert (detail["consumers"], detail["health_timeout_seconds"], detail["waiting_for"]) == (
        "restart",
        90,
        "consumers",
    )
    assert detail["consumer_states"] == consumer_states(1)
    assert bodies["/rollouts"]["items"][0]["consumer_states"] == consumer_states(1)
    source_detail = bodies[f"/sources/{source.name}"]
    assert source_detail["consumer_map"] == {"team-0/Deployment/web-0": ["app"]}
    assert source_detail["consumer_map_at"].startswith(map_time.isoformat()[:19])
    assert source_detail["active_rollout"]["consumer_states"] == consumer_states(1)

    Rollout.objects.filter(pk=rollout.pk).update(consumer_states=consumer_states(150))
    Source.objects.filter(pk=source.pk).update(
        consumer_map={f"team-{i % 4}/Deployment/web-{i}": ["app", "nginx"] for i in range(150)}
    )
    many, bodies = measure()
    assert few == many, "the number of queries must not grow with the number of consumers"
    assert bodies[f"/rollouts/{rollout.pk}"]["consumer_states"] == consumer_states(150)
    assert len(bodies[f"/sources/{source.name}"]["consumer_map"]) == 150

    # A rollout from before issue 12, and a source nobody has looked at yet.
    (older,) = seed(1, people["approver"], start=1)
    entry = viewer.get(f"/rollouts/{Rollout.objects.get(source=older).pk}").json()
    assert (entry["consumers"], entry["health_timeout_seconds"], entry["consumer_states"]) == (
        "ignore",
        300,
        [],
    )
    unknown = viewer.get(f"/sources/{older.name}").json()
    assert (unknown["consumer_map"], unknown["consumer_map_at"]) == ({}, None)


def test_the_openapi_document_names_the_consumer_vocabulary(as_role):
    schemas = as_role["viewer"].get("/openapi.json").json()["components"]["schemas"]
    state = schemas["ConsumerStateOut"]["properties"]
    assert set(state) == {
        "cluster",
        "kind",
        "namespace",
        "name",
        "restarted",
        "restartable",
        "refers_to",
        "health",
        "detail",
    }
    assert schemas["Health"]["enum"] == ["healthy", "progressing", "failed"]
    assert schemas["WorkloadKind"]["enum"] == ["Deployment", "StatefulSet", "DaemonSet", "Rollout"]
    assert schemas["ConsumerMode"]["enum"] == ["ignore", "watch", "restart"]
    assert {"consumers", "health_timeout_seconds", "consumer_states"} <= set(
        schemas["RolloutOut"]["properties"]
    )
    assert {"consumer_map", "consumer_map_at"} <= set(schemas["SourceDetailOut"]["properties"])


# -- the OpenAPI contract ------------------------------------------------------------------


def test_schemathesis_finds_no_server_error_and_no_contract_breach(as_role, paused, celery_worker):
    """Schemathesis generates requests from /api/openapi.json and sends them to the WSGI app in-process,
    as an approver; actions run for real (their syncs go to the worker and are waited for)."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given
    from hypothesis import settings as hypothesis_settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    from sluice.wsgi import application

    # Consumers in every state, so that their schema is checked against real answers too.
    Rollout.objects.filter(pk=paused.rollout.pk).update(consumer_states=consumer_states(6))
    Source.objects.filter(pk=paused.source.pk).update(
        consumer_map={f"{paused.targets[0]}/Deployment/web": ["app"]}, consumer_map_at=timezone.now()
    )
    auth = {"Authorization": f"Bearer {as_role['approver'].token}"}
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", application, headers=auth)
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    operations = [result.ok() for result in schema.get_all_operations()]
    assert sorted(f"{op.method.upper()} {op.path}" for op in operations) == sorted(
        [f"{method.upper()} /api" + operation_of(path) for method, path in ENDPOINTS] + FREEZE_OPERATIONS
    )

    conformance = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    known = {"name": paused.source.name, "rollout_id": paused.rollout.pk}
    statuses: Counter[tuple[str, int]] = Counter()
    task_ids: list[str] = []

    def run(operation, strategy, checks, examples: int) -> None:
        @given(case=strategy)
        @hypothesis_settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case) -> None:
            response = case.call_and_validate(headers=auth, checks=checks)
            statuses[(operation.path, response.status_code)] += 1
            if response.status_code == 202 and operation.path.endswith("/sync"):
                task_ids.append(response.json()["task_id"])

        check()

    for operation in operations:
        examples = 25 if operation.method.upper() == "GET" else 10
        run(operation, operation.as_strategy(), conformance, examples)
        pinned = {name: value for name, value in known.items() if "{" + name + "}" in operation.path}
        if pinned:
            run(operation, operation.as_strategy(path_parameters=pinned), conformance, examples)
        negative = operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE)
        run(operation, negative, [not_a_server_error, status_code_conformance, content_type_conformance], 10)

    # Real objects were reached, not only 404s and 422s.
    assert statuses[("/api/sources/{name}", 200)]
    assert statuses[("/api/rollouts/{rollout_id}", 200)]
    assert statuses[("/api/changes", 200)]
    assert statuses[("/api/sources/{name}/sync", 202)]
    for task_id in task_ids:
        AsyncResult(task_id).get(timeout=120, propagate=False)
    wait_until_idle(celery_worker.hostname, {paused.source.pk})


def wait_until_idle(hostname: str, source_ids: set[int], timeout: float = 120) -> None:
    """Until the worker has nothing running, reserved or scheduled for these sources (promote, abort and
    retry queue reconciles whose task ids the API does not return)."""
    from gitops.celery import app

    def busy_with(tasks: dict[str, list[dict[str, Any]]] | None) -> bool:
        for task in (tasks or {}).get(hostname, []):
            request = task.get("request", task)
            # schedule sends a sync's arguments as keywords; a test may send them positionally.
            source_id = (request.get("kwargs") or {}).get("source_id")
            if source_id is None and request.get("args"):
                source_id = request["args"][0]
            if source_id in source_ids:
                return True
        return False

    def idle() -> bool:
        inspect = app.control.inspect(destination=[hostname], timeout=1)
        return not any(
            busy_with(tasks) for tasks in (inspect.active(), inspect.reserved(), inspect.scheduled())
        )

    poll(idle, timeout=timeout, interval=0.2, what="the worker to finish the API's syncs")


def test_a_decision_stands_when_the_broker_refuses_its_sync_and_a_sync_asked_for_is_a_503(
    as_role, paused, monkeypatch
):
    """The broker refused the task a promote queues, after the approval was stored: the API answered
    Django's HTML 500, and the caller's retry was refused as already approved. The decision stands, the
    source's poll is made due (beat's first sweep the broker takes runs it), and the answer is the
    promote's. A sync someone asks for, whose task id is the answer, is a 503 with Retry-After."""
    from django.utils import timezone

    from tests.broker import refuse_sends

    tried = refuse_sends(monkeypatch)
    approver = as_role["approver"]
    promoted = approver.post(f"/rollouts/{paused.rollout.pk}/promote", {"comment": "go"})
    assert promoted.status_code == 200, promoted.content
    assert tried and tried[0]["rollouts_only"] is True
    assert Approval.objects.filter(rollout=paused.rollout).count() == 1
    source = Source.objects.get(pk=paused.source.pk)
    assert source.next_poll_at <= timezone.now() and source.sync_requested_at is not None

    refused = approver.post(f"/sources/{source.name}/sync")
    assert refused.status_code == 503, refused.content
    assert "could not be queued" in refused.json()["detail"] and refused["Retry-After"]
