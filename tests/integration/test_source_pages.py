"""The source administration pages: only admins reach them, every POST is CSRF-checked, errors show next to
their field, each change leaves an audit row, and a delete runs as a removal with a page of its own."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from gitops import source_admin
from gitops.models import Change, Source, SourceAudit, SourceRemoval, masked_url
from tests.gitrepo import configmap, policy
from tests.workers import poll

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin(people) -> User:
    user = User.objects.create_user("ada-admin", password="x")
    user.groups.add(Group.objects.get(name="admin"))
    return User.objects.get(pk=user.pk)


def client_for(user, *, enforce_csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=enforce_csrf)
    client.force_login(user)
    return client


def form_data(repo_url: str, **overrides) -> dict[str, str]:
    data = {
        "name": "shop",
        "url": repo_url,
        "branch": "main",
        "path": "",
        "poll_interval": "60s",
        "credentials_ref": "",
        "allowed_namespaces": "t*\n",
        "analysis_url_prefixes": "",
        "required_approvals": "0",
        "commit_url_template": "",
        "notify_urls": "",
    }
    data.update(overrides)
    return data


def admin_posts(source_name: str) -> list[tuple[str, dict[str, str]]]:
    return [
        (
            reverse("dashboard:source-create"),
            {"name": "other", "url": "file:///x", "allowed_namespaces": "t*"},
        ),
        (reverse("dashboard:source-edit", args=[source_name]), {"branch": "release"}),
        (reverse("dashboard:source-suspend", args=[source_name]), {}),
        (reverse("dashboard:source-resume", args=[source_name]), {}),
        (
            reverse("dashboard:source-delete", args=[source_name]),
            {"objects": "prune", "confirm": source_name},
        ),
    ]


def test_viewers_and_approvers_get_403_and_see_no_buttons(repo, people, admin):
    source = source_admin.source_add(name="shop", url=repo.url, allowed_namespaces=["t*"])
    source_admin.source_suspend(source)
    pages = [
        reverse("dashboard:source-create"),
        reverse("dashboard:source-edit", args=["shop"]),
        reverse("dashboard:source-delete", args=["shop"]),
    ]
    for role in ("viewer", "approver"):
        client = client_for(people[role])
        for page in pages:
            assert client.get(page).status_code == 403, (role, page)
        for url, data in admin_posts("shop"):
            assert client.post(url, data).status_code == 403, (role, url)
        source_page = client.get(reverse("dashboard:source", args=["shop"])).content.decode()
        assert 'id="suspended-banner"' in source_page, "everyone sees that it is suspended"
        for button in ('id="edit-source"', 'id="resume-source"', 'id="delete-source-link"'):
            assert button not in source_page, (role, button)
        assert 'id="add-source"' not in client.get(reverse("dashboard:overview")).content.decode()
    assert list(Source.objects.values_list("name", "branch", "suspended")) == [("shop", "main", True)]
    assert list(SourceAudit.objects.values_list("action", flat=True).order_by("id")) == ["create", "suspend"]
    assert not SourceRemoval.objects.exists()

    client = client_for(admin)
    source_page = client.get(reverse("dashboard:source", args=["shop"])).content.decode()
    for button in ('id="edit-source"', 'id="resume-source"', 'id="delete-source-link"'):
        assert button in source_page
    assert 'id="add-source"' in client.get(reverse("dashboard:overview")).content.decode()
    for page in pages:
        assert client.get(page).status_code == 200, page


def test_every_post_needs_a_csrf_token(repo, admin):
    source_admin.source_add(name="shop", url=repo.url, allowed_namespaces=["t*"])
    client = client_for(admin, enforce_csrf=True)
    for url, data in admin_posts("shop"):
        assert client.post(url, data).status_code == 403, url
    assert list(Source.objects.values_list("name", "branch", "suspended")) == [("shop", "main", False)]
    assert SourceAudit.objects.count() == 1
    assert not SourceRemoval.objects.exists()


def test_an_admin_adds_a_source_and_its_first_sync_runs(repo, make_namespaces, admin, celery_worker, cluster):
    (namespace,) = make_namespaces("app")
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"v": "1"})})
    repo.commit()
    client = client_for(admin)

    response = client.post(
        reverse("dashboard:source-create"),
        form_data(repo.url, poll_interval="5m", credentials_ref="env:SHOP_TOKEN", required_approvals="1"),
    )

    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard:source", args=["shop"])
    source = Source.objects.get(name="shop")
    assert (source.poll_interval.total_seconds(), source.credentials_ref, source.required_approvals) == (
        300,
        "env:SHOP_TOKEN",
        1,
    )
    audit = SourceAudit.objects.get(source=source)
    assert (audit.action, audit.actor, audit.via) == ("create", "ada-admin", "dashboard")
    # The first sync is queued at once; the token's variable is the worker's, and it has none.
    poll(lambda: Source.objects.get(pk=source.pk).last_error, timeout=60, what="the first sync to run")
    assert "SHOP_TOKEN is not set" in Source.objects.get(pk=source.pk).last_error

    client.post(reverse("dashboard:source-edit", args=["shop"]), form_data(repo.url, credentials_ref=""))
    page = client.get(reverse("dashboard:source", args=["shop"])).content.decode()
    assert 'data-action="update"' in page and "<code>credentials_ref</code>: env:SHOP_TOKEN → none" in page
    client.post(reverse("dashboard:source-sync", args=["shop"]))
    poll(lambda: cluster.get_configmap(namespace, "app"), timeout=60, what="the sync after the fix")


def test_problems_show_next_to_their_field_and_nothing_is_stored(repo, admin):
    client = client_for(admin)
    response = client.post(
        reverse("dashboard:source-create"),
        form_data(
            "https://deploy:hunter2@git.example.com/x.git",
            name="Shop",
            poll_interval="soon",
            allowed_namespaces="",
            credentials_ref="ghp_abcdefghijklmnopqrstuvwxyz",
            required_approvals="42",
            commit_url_template="javascript:alert(1)",
        ),
    )
    assert response.status_code == 200
    page = response.content.decode()
    # Form-level problems (a duration, a required field) first: the service is not called with those.
    assert 'id="id_poll_interval_errors"' in page and "is not a duration" in page
    assert 'id="id_allowed_namespaces_errors"' in page
    response = client.post(
        reverse("dashboard:source-create"),
        form_data(
            "https://deploy:hunter2@git.example.com/x.git",
            name="Shop",
            credentials_ref="ghp_abcdefghijklmnopqrstuvwxyz",
            required_approvals="42",
            commit_url_template="javascript:alert(1)",
        ),
    )
    page = response.content.decode()
    for field, words in [
        ("name", "not a valid source name"),
        ("url", "must not contain credentials"),
        ("credentials_ref", "not shown, it may be a secret"),
        ("required_approvals", "from 0 to 10"),
        ("commit_url_template", "must contain {commit}"),
    ]:
        errors = page.split(f'id="id_{field}_errors"')[1].split("</ul>")[0]
        assert words in errors, field
    # A refused reference may be a pasted token: it is not written back into the form (a page can be
    # cached, shared or shown on a screen), while the other fields keep what the admin typed.
    assert "ghp_abcdefghijklmnopqrstuvwxyz" not in page
    assert 'value="javascript:alert(1)"' in page
    assert "hunter2" not in page.split('id="id_url_errors"')[1].split("</ul>")[0]
    assert not Source.objects.exists() and not SourceAudit.objects.exists()


def test_an_admin_edits_suspends_resumes_and_each_leaves_an_audit_row(repo, admin, celery_worker):
    source = source_admin.source_add(name="shop", url=repo.url, allowed_namespaces=["t*"])
    client = client_for(admin)

    assert client.get(reverse("dashboard:source-edit", args=["shop"])).content.decode().count("t*") >= 1
    edited = client.post(
        reverse("dashboard:source-edit", args=["shop"]),
        form_data(
            repo.url, allowed_namespaces="team-*\ncanary", notify_urls="https://hooks.example.com/T0/secret"
        ),
    )
    assert edited.status_code == 302
    client.post(reverse("dashboard:source-suspend", args=["shop"]))
    page = client.get(reverse("dashboard:source", args=["shop"])).content.decode()
    assert 'id="suspended-banner"' in page and 'id="resume-source"' in page
    assert "state-suspended" in client.get(reverse("dashboard:overview")).content.decode()
    assert (
        "shop is resumed"
        in client.post(reverse("dashboard:source-resume", args=["shop"]), follow=True).content.decode()
    )
    again = client.post(reverse("dashboard:source-resume", args=["shop"]), follow=True).content.decode()
    assert "shop is not suspended: nothing changed." in again, "a second click queues nothing"
    assert "a sync is queued" not in again

    rows = list(SourceAudit.objects.filter(source=source).order_by("id"))
    assert [(row.action, row.actor, row.via) for row in rows] == [
        ("create", "sluice", "cli"),
        ("update", "ada-admin", "dashboard"),
        ("suspend", "ada-admin", "dashboard"),
        ("resume", "ada-admin", "dashboard"),
    ]
    assert rows[1].changed == ["allowed_namespaces", "notify_urls"]
    assert rows[1].after["allowed_namespaces"] == ["team-*", "canary"]
    assert "secret" not in str(rows[1].after["notify_urls"]), "a URL's path may be a token: masked"
    assert Source.objects.get(pk=source.pk).notify_urls == ["https://hooks.example.com/T0/secret"]
    assert not Source.objects.get(pk=source.pk).suspended


def test_the_edit_form_shows_notification_urls_masked_and_keeps_a_masked_line_as_its_url(repo, admin):
    # Another admin must not read the token in a chat webhook's path off the form.
    hook = "https://hooks.example.com/T0/secret-path"
    source = source_admin.source_add(name="shop", url=repo.url, allowed_namespaces=["t*"], notify_urls=[hook])
    client = client_for(admin)
    form = client.get(reverse("dashboard:source-edit", args=["shop"])).content.decode()
    assert "secret-path" not in form
    masked = masked_url(hook)
    assert masked in form
    # Sent back as shown, with one URL added: the masked line keeps its URL.
    added = "https://other.example.com/notify"
    saved = client.post(
        reverse("dashboard:source-edit", args=["shop"]), form_data(repo.url, notify_urls=f"{masked}\n{added}")
    )
    assert saved.status_code == 302
    assert Source.objects.get(pk=source.pk).notify_urls == [hook, added]


def test_a_legacy_url_with_credentials_is_shown_to_nobody_and_its_fix_leaves_none_in_the_audit_trail(
    repo, admin, people
):
    """A source stored before credentials in URLs were refused: the source page showed a token in the
    query to every viewer, the edit form the password to admins, and the admin's fix wrote the old URL
    whole into the append-only audit trail every viewer reads."""
    legacy = "https://deploy:hunter2@git.example.com/x.git?private_token=GLPAT-SECRET-9&code=AZ-KEY"
    source = source_admin.source_add(name="shop", url=repo.url, allowed_namespaces=["t*"])
    Source.objects.filter(pk=source.pk).update(url=legacy)
    viewer = User.objects.create_user("vic-viewer", password="x")
    viewer.groups.add(Group.objects.get(name="viewer"))
    page = client_for(viewer).get(reverse("dashboard:source", args=["shop"])).content.decode()
    form = client_for(admin).get(reverse("dashboard:source-edit", args=["shop"])).content.decode()
    for text in (page, form):
        assert "hunter2" not in text and "GLPAT-SECRET-9" not in text and "AZ-KEY" not in text
    assert "https://deploy:***@git.example.com/x.git?\u2026" in page

    # The form sent back as shown, another field changed: the URL is left as it is, not refused.
    shown = "https://deploy:***@git.example.com/x.git?\u2026"
    kept = client_for(admin).post(
        reverse("dashboard:source-edit", args=["shop"]), form_data(shown, branch="release")
    )
    assert kept.status_code == 302, kept.content.decode()[:2000]
    assert Source.objects.filter(pk=source.pk).values_list("url", "branch").get() == (legacy, "release")

    source_admin.source_update(Source.objects.get(pk=source.pk), url=repo.url)

    assert Source.objects.get(pk=source.pk).url == repo.url
    for audit in SourceAudit.objects.filter(source=source):
        stored = repr((audit.before, audit.after))
        assert "hunter2" not in stored and "GLPAT-SECRET-9" not in stored and "AZ-KEY" not in stored


def test_a_repository_url_with_any_query_is_refused(repo):
    """A token may go under any name in a query (``?code=``); the name-based check let those through."""
    with pytest.raises(source_admin.SourceSettingsError, match="must not contain credentials") as refused:
        source_admin.source_add(
            name="shop", url="https://git.example.com/x.git?code=AZ-KEY", allowed_namespaces=["t*"]
        )
    assert "AZ-KEY" not in str(refused.value)


def test_delete_asks_keep_or_prune_and_is_refused_while_a_rollout_is_active(paused_rollout, admin):
    name = paused_rollout.source.name
    client = client_for(admin)
    page = client.get(reverse("dashboard:source-delete", args=[name])).content.decode()
    assert 'id="active-rollout"' in page

    typo = client.post(
        reverse("dashboard:source-delete", args=[name]), {"objects": "keep", "confirm": "shop"}
    )
    assert f"type {name} to confirm" in typo.content.decode()
    missing = client.post(reverse("dashboard:source-delete", args=[name]), {"confirm": name})
    assert "This field is required" in missing.content.decode().split('id="field-objects"')[1]
    refused = client.post(
        reverse("dashboard:source-delete", args=[name]), {"objects": "keep", "confirm": name}
    )
    assert refused.status_code == 200
    assert "abort it first" in refused.content.decode()
    assert not SourceRemoval.objects.exists()
    assert Source.objects.filter(name=name).exists()


def test_a_delete_from_the_page_runs_as_a_removal_with_a_status_page(
    repo, make_namespaces, make_source, sync, admin, people, cluster
):
    targets = make_namespaces("a", "b")
    repo.write_all({"sluice.yaml": policy(targets), "configmaps/app.yaml": configmap("app", {"v": "1"})})
    repo.commit()
    source = make_source()
    sync(source)
    client = client_for(admin)

    response = client.post(
        reverse("dashboard:source-delete", args=[source.name]), {"objects": "prune", "confirm": source.name}
    )

    removal = SourceRemoval.objects.get(source_id=source.pk)
    assert response["Location"] == reverse("dashboard:removal", args=[removal.pk])
    viewer = client_for(people["viewer"])
    poll(
        lambda: (
            'data-status="done"'
            in viewer.get(reverse("dashboard:removal", args=[removal.pk])).content.decode()
        ),
        timeout=90,
        what="the removal page to say done",
    )
    page = viewer.get(reverse("dashboard:removal", args=[removal.pk])).content.decode()
    assert "2 of 2 objects pruned" in page
    assert page.count("<td>delete</td>") == 2
    assert [cluster.get_configmap(ns, "app") for ns in targets] == [None, None]
    assert Change.objects.filter(intent__removal=removal, actor="ada-admin").count() == 2
    assert client.get(reverse("dashboard:source", args=[source.name])).status_code == 404
    assert f'data-source="{source.name}"' not in viewer.get(reverse("dashboard:overview")).content.decode()


def test_the_source_page_stays_within_its_query_budget(repo, admin, people):
    source = source_admin.source_add(name="shop", url=repo.url, allowed_namespaces=["t*"])
    for index in range(30):
        source_admin.source_update(source, poll_interval=__import__("datetime").timedelta(seconds=10 + index))
    client = client_for(admin)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(reverse("dashboard:source", args=["shop"])).status_code == 200
    assert len(queries) <= 20, [query["sql"][:80] for query in queries]
    with CaptureQueriesContext(connection) as queries:
        assert client.get(reverse("dashboard:source-status", args=["shop"])).status_code == 200
    assert len(queries) <= 8


def test_a_source_added_while_the_broker_refuses_its_first_sync_is_kept_and_said_so(repo, admin, monkeypatch):
    """The source was added, then the first sync's send raised: a bare 500, or, through the page's
    refused-task message, the empty form again, whose second try said the name was taken (before
    2026-12-07). It lands on the source's page, which says the first poll runs it."""
    from tests.broker import refuse_sends

    refuse_sends(monkeypatch)
    client = client_for(admin)
    added = client.post(reverse("dashboard:source-create"), form_data(repo.url), follow=True)

    assert added.redirect_chain[-1][0] == reverse("dashboard:source", args=["shop"])
    assert "its first sync could not be queued" in added.content.decode()
    assert Source.objects.filter(name="shop").exists()
