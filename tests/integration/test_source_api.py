"""Sources through the JSON API (admin role): create, change, suspend, resume and delete, with the same
checks as the command line, an audit row each, and the OpenAPI contract checked by schemathesis."""

from __future__ import annotations

from collections import Counter

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from gitops.models import Source, SourceAudit, SourceRemoval
from tests.gitrepo import configmap, policy
from tests.integration.test_api import Api, issue_token, wait_until_idle
from tests.workers import poll

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def api(people) -> dict[str, Api]:
    admin = User.objects.create_user("ada-admin", password="x")
    admin.groups.add(Group.objects.get(name="admin"))
    clients = {role: Api(issue_token(user.username)) for role, user in people.items()}
    clients["admin"] = Api(issue_token("ada-admin"))
    return clients


def body(repo_url: str, **overrides) -> dict:
    return {"name": "shop", "url": repo_url, "allowed_namespaces": ["t*"], **overrides}


def test_an_admin_creates_changes_suspends_resumes_and_deletes_a_source(
    api, repo, make_namespaces, celery_worker, cluster
):
    (namespace,) = make_namespaces("app")
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"v": "1"})})
    commit = repo.commit()
    admin = api["admin"]

    created = admin.post(
        "/sources", body(repo.url, poll_interval_seconds=300, notify_urls=["https://h.example/x"])
    )

    assert created.status_code == 201, created.content
    detail = created.json()
    assert (detail["name"], detail["poll_interval_seconds"], detail["suspended"]) == ("shop", 300, False)
    assert detail["notify_urls"][0].startswith("https://h.example/… #"), "masked"
    poll(lambda: cluster.get_configmap(namespace, "app"), timeout=60, what="the first sync the API queued")
    assert admin.get("/sources/shop").json()["commit"] == commit

    changed = admin.patch("/sources/shop", {"required_approvals": 2, "allowed_namespaces": ["t*", "team-*"]})
    assert changed.status_code == 200, changed.content
    assert (changed.json()["required_approvals"], changed.json()["allowed_namespaces"]) == (
        2,
        ["t*", "team-*"],
    )
    assert changed.json()["url"] == repo.url, "what is left out stays"
    # The masked URL read back, sent back with one more: the masked one keeps its URL.
    shown = changed.json()["notify_urls"]
    added = admin.patch("/sources/shop", {"notify_urls": [*shown, "https://other.example/y"]})
    assert added.status_code == 200, added.content
    assert Source.objects.get(name="shop").notify_urls == ["https://h.example/x", "https://other.example/y"]

    assert admin.post("/sources/shop/suspend").json()["suspended"] is True
    listed = api["viewer"].get("/sources").json()["items"][0]
    assert (listed["suspended"], listed["suspended_by"]) == (True, "ada-admin")
    assert admin.post("/sources/shop/resume").json()["suspended"] is False

    deleted = admin.delete("/sources/shop?objects=keep")
    assert deleted.status_code == 202, deleted.content
    removal = deleted.json()
    assert (removal["source"], removal["objects"], removal["status"], removal["via"]) == (
        "shop",
        "keep",
        "queued",
        "api",
    )
    done = poll(
        lambda: (
            (found := api["viewer"].get(f"/removals/{removal['id']}").json())["status"] == "done" and found
        ),
        timeout=90,
        what="the removal to finish",
    )
    assert (done["objects_total"], done["objects_done"], done["objects_failed"]) == (1, 1, 0)
    assert admin.get("/sources/shop").status_code == 404
    assert cluster.get_configmap(namespace, "app")["data"] == {"v": "1"}, "kept"
    source = Source.all_objects.get(name="shop")
    assert [
        (row.action, row.actor, row.via) for row in SourceAudit.objects.filter(source=source).order_by("id")
    ] == [
        ("create", "ada-admin", "api"),
        ("update", "ada-admin", "api"),
        ("update", "ada-admin", "api"),
        ("suspend", "ada-admin", "api"),
        ("resume", "ada-admin", "api"),
        ("delete", "ada-admin", "api"),
        ("deleted", "ada-admin", "api"),
    ]


def test_problems_are_a_422_by_field_and_roles_are_checked_first(api, repo):
    admin = api["admin"]
    refused = admin.post(
        "/sources",
        body(
            "https://u:hunter2@git.example.com/x.git",
            name="Shop",
            poll_interval_seconds=1,
            required_approvals=11,
        ),
    )
    assert refused.status_code == 422
    problems = {tuple(entry["loc"]): entry["msg"] for entry in refused.json()["detail"]}
    assert set(problems) == {
        ("body", "payload", field) for field in ("name", "url", "poll_interval_seconds", "required_approvals")
    }
    assert "hunter2" not in refused.content.decode()
    missing = admin.post("/sources", {})
    assert {entry["loc"][-1] for entry in missing.json()["detail"]} == {"name", "url", "allowed_namespaces"}
    assert not Source.objects.exists()

    assert admin.post("/sources", body(repo.url)).status_code == 201
    # A name another source has is valid input the current state refuses: a 409 (it was a 422), by field.
    taken = admin.post("/sources", body(repo.url))
    assert taken.status_code == 409, taken.content
    assert [(entry["loc"][-1], entry["msg"]) for entry in taken.json()["detail"]] == [
        ("name", "a source named 'shop' already exists")
    ]
    assert admin.patch("/sources/shop", {"allowed_namespaces": []}).status_code == 422
    assert admin.patch("/sources/nope", {"branch": "x"}).status_code == 404
    # A field the API does not know (the command line's name for it) was dropped: 200, nothing changed.
    unknown = admin.patch("/sources/shop", {"poll_interval": 60})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"][-1] == "poll_interval"
    assert admin.delete("/sources/shop?objects=maybe").status_code == 422
    assert admin.delete("/sources/shop").status_code == 422, "keep or prune must be chosen"

    for role in ("viewer", "approver"):
        caller = api[role]
        for method, path, payload in [
            ("post", "/sources", {}),
            ("patch", "/sources/shop", {"branch": "x"}),
            ("patch", "/sources/nope", {}),
            ("delete", "/sources/shop?objects=prune", None),
            ("post", "/sources/shop/suspend", None),
            ("post", "/sources/shop/resume", None),
        ]:
            response = (
                getattr(caller, method)(path, payload) if payload is not None else caller.call(method, path)
            )
            assert response.status_code == 403, (role, method, path, response.content)
    assert list(Source.objects.values_list("branch", "suspended")) == [("main", False)]
    assert not SourceRemoval.objects.exists()
    assert SourceAudit.objects.count() == 1


def test_a_delete_and_a_move_are_409_while_a_rollout_is_active(api, paused_rollout):
    source = paused_rollout.source
    response = api["admin"].delete(f"/sources/{source.name}?objects=prune")
    assert response.status_code == 409
    assert "abort it first" in response.json()["detail"]
    assert not SourceRemoval.objects.exists()
    # The Git location does not move under it: a 409 naming each field (the README's answer; was a 422).
    moved = api["admin"].patch(f"/sources/{source.name}", {"branch": "next", "path": "elsewhere"})
    assert moved.status_code == 409, moved.content
    assert {entry["loc"][-1] for entry in moved.json()["detail"]} == {"branch", "path"}
    assert "abort it or let it finish first" in moved.json()["detail"][0]["msg"]
    assert Source.objects.get(pk=source.pk).branch == source.branch


def test_a_session_needs_the_csrf_token_to_create(people, repo):
    admin = User.objects.create_user("ada-admin", password="x")
    admin.groups.add(Group.objects.get(name="admin"))
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(admin)
    for method, path in [
        ("post", "/api/sources"),
        ("patch", "/api/sources/shop"),
        ("delete", "/api/sources/shop?objects=keep"),
        ("post", "/api/sources/shop/suspend"),
    ]:
        response = getattr(browser, method)(path, data=body(repo.url), content_type="application/json")
        assert response.status_code == 403, (method, path, response.content)
    assert not Source.objects.exists()


def test_schemathesis_as_an_admin_finds_no_server_error_in_source_administration(
    api, paused_rollout, celery_worker
):
    """The source operations, generated from /api/openapi.json and sent as an admin: sources are really
    created, changed, suspended and deleted; nothing answers 5xx or outside the documented contract."""
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

    auth = {"Authorization": f"Bearer {api['admin'].token}"}
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", application, headers=auth)
    wanted = {
        ("POST", "/api/sources"),
        ("PATCH", "/api/sources/{name}"),
        ("DELETE", "/api/sources/{name}"),
        ("POST", "/api/sources/{name}/suspend"),
        ("POST", "/api/sources/{name}/resume"),
        ("GET", "/api/removals/{removal_id}"),
    }
    operations = [
        op
        for op in (result.ok() for result in schema.get_all_operations())
        if (op.method.upper(), op.path) in wanted
    ]
    assert {(op.method.upper(), op.path) for op in operations} == wanted
    conformance = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    statuses: Counter[tuple[str, str, int]] = Counter()

    def run(operation, strategy, checks) -> None:
        @given(case=strategy)
        @hypothesis_settings(
            max_examples=15,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case) -> None:
            response = case.call_and_validate(headers=auth, checks=checks)
            statuses[(operation.method.upper(), operation.path, response.status_code)] += 1

        check()

    # The documented example first, checked as the generated cases are: whether a generated body also
    # makes a source is up to the generator (its seed follows the schema), so it cannot be counted on.
    from dashboard.api import SourceIn

    create = next(op for op in operations if (op.method.upper(), op.path) == ("POST", "/api/sources"))
    example = SourceIn.model_config["json_schema_extra"]["examples"][0]
    created = create.Case(body=example).call_and_validate(headers=auth, checks=conformance)
    statuses[("POST", "/api/sources", created.status_code)] += 1
    known = {"name": paused_rollout.source.name}
    for operation in operations:
        run(operation, operation.as_strategy(), conformance)
        if "{name}" in operation.path:
            run(operation, operation.as_strategy(path_parameters=known), conformance)
        negative = operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE)
        run(operation, negative, [not_a_server_error, status_code_conformance, content_type_conformance])

    # The real source was reached: changed or refused for its active rollout, never a 5xx.
    assert statuses[("DELETE", "/api/sources/{name}", 409)], statuses
    assert statuses[("POST", "/api/sources/{name}/suspend", 200)], statuses
    assert any(code == 201 for (method, _, code) in statuses if method == "POST"), statuses
    for removal in SourceRemoval.objects.all():
        poll(lambda r=removal: not SourceRemoval.objects.get(pk=r.pk).is_active, timeout=120, what="removals")
    wait_until_idle(celery_worker.hostname, set(Source.all_objects.values_list("pk", flat=True)))


def test_a_source_created_while_the_broker_refuses_is_a_201_and_its_due_poll_syncs_it(api, repo, monkeypatch):
    """The source was created, then the first sync's send failed: the answer was a 503 "try again",
    and trying again met the name (a 409). It is a 201; its first poll is due from its creation."""
    from django.utils import timezone

    from tests.broker import refuse_sends

    tried = refuse_sends(monkeypatch)
    created = api["admin"].post("/sources", body(repo.url))
    assert created.status_code == 201, created.content
    source = Source.objects.get(name="shop")
    assert [task["source_id"] for task in tried] == [source.pk]
    assert source.next_poll_at <= timezone.now(), "beat's next sweep polls it"
