"""Freezes and sync windows in the dashboard, the JSON API and the CLI: roles, CSRF, audit rows, banners."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from dashboard.models import ApiToken
from gitops import freezes
from gitops.models import Approval, Freeze, RolloutEvent, SyncWindow
from gitops.windows import parse_duration
from tests.rollouts import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin(people) -> User:
    created = User.objects.create_user("ines", email="ines@example.com", password="x")
    created.groups.add(Group.objects.get(name="admin"))
    return User.objects.get(pk=created.pk)


def client_for(user=None, *, enforce_csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=enforce_csrf)
    if user is not None:
        client.force_login(user)
    return client


def freeze_form(source: str = "", until: str = "8h", reason: str = "release freeze") -> dict[str, str]:
    return {"source": source, "until": until, "reason": reason}


WINDOW_FORM = {"kind": "deny", "schedule": "0 9 * * 1-5", "duration": "8h", "sources": "shop-*, billing"}


# -- the dashboard --------------------------------------------------------------------------


def test_every_role_reads_the_page_and_only_an_admin_sees_the_forms(people, admin, make_source):
    make_source(name="shop")
    page = reverse("dashboard:windows")
    assert client_for().get(page).status_code == 302, "login first"
    for role in ("viewer", "approver"):
        body = client_for(people[role]).get(page).content.decode()
        assert "Freezes and sync windows" in body
        assert 'id="freeze-form"' not in body and 'id="window-form"' not in body, role
    body = client_for(admin).get(page).content.decode()
    assert 'id="freeze-form"' in body and 'id="window-form"' in body
    assert '<label for="freeze-until">' in body and '<label for="window-schedule">' in body


def test_only_an_admin_freezes_unfreezes_and_manages_windows(people, admin, make_source):
    source = make_source(name="shop")
    actions = [
        (reverse("dashboard:freeze"), freeze_form("shop")),
        (reverse("dashboard:unfreeze"), {"source": "shop"}),
        (reverse("dashboard:window-add"), WINDOW_FORM),
        (reverse("dashboard:window-remove", args=[1]), {}),
    ]
    for role in ("viewer", "approver"):
        for url, form in actions:
            assert client_for(people[role]).post(url, form).status_code == 403, (role, url)
    assert not Freeze.objects.exists() and not SyncWindow.objects.exists()

    client = client_for(admin)
    response = client.post(
        reverse("dashboard:freeze"), {**freeze_form("shop"), "next": f"/sources/{source.name}/"}
    )
    assert response.status_code == 302 and response["Location"] == f"/sources/{source.name}/"
    frozen = Freeze.objects.get()
    assert (frozen.source, frozen.created_by, frozen.reason) == (source, "ines", "release freeze")
    assert timedelta(hours=7, minutes=59) < frozen.until - timezone.now() <= timedelta(hours=8)

    assert client.post(reverse("dashboard:unfreeze"), {"source": "shop"}).status_code == 302
    frozen.refresh_from_db()
    assert (frozen.lifted_by, frozen.lifted_at is not None) == ("ines", True), "the audit row stays"

    assert client.post(reverse("dashboard:window-add"), WINDOW_FORM).status_code == 302
    window = SyncWindow.objects.get()
    assert (window.kind, window.sources, window.created_by) == ("deny", ["shop-*", "billing"], "ines")
    assert client.post(reverse("dashboard:window-remove", args=[window.pk])).status_code == 302
    window.refresh_from_db()
    assert (window.removed_by, window.removed_at is not None) == ("ines", True)


def test_a_rows_unfreeze_lifts_that_freeze_alone(admin, make_source):
    """The every-source row's Unfreeze lifted every freeze in force: another admin's freeze of a single
    source went with it, unasked. A row's button lifts its own freeze."""
    make_source(name="shop")
    client = client_for(admin)
    for scope in ("", "shop"):
        assert client.post(reverse("dashboard:freeze"), freeze_form(scope)).status_code == 302
    everything, shop = Freeze.objects.order_by("id")
    assert everything.source is None and shop.source.name == "shop"
    page = client.get(reverse("dashboard:windows")).content.decode()
    assert f'name="freeze" value="{everything.pk}"' in page

    response = client.post(reverse("dashboard:unfreeze"), {"freeze": everything.pk}, follow=True)
    assert "Lifted the freeze of every source." in response.content.decode()
    everything.refresh_from_db(), shop.refresh_from_db()
    assert everything.lifted_at is not None and shop.lifted_at is None, "the shop's freeze stays"


def test_the_forms_need_the_csrf_token(admin, make_source):
    make_source(name="shop")
    strict = client_for(admin, enforce_csrf=True)
    assert strict.post(reverse("dashboard:freeze"), freeze_form("shop")).status_code == 403
    assert strict.post(reverse("dashboard:window-add"), WINDOW_FORM).status_code == 403
    assert not Freeze.objects.exists() and not SyncWindow.objects.exists()


def test_bad_input_is_shown_next_to_its_field_and_nothing_is_saved(admin, make_source):
    make_source(name="shop")
    client = client_for(admin)
    response = client.post(reverse("dashboard:freeze"), freeze_form("shop", until="yesterday-ish", reason=""))
    assert response.status_code == 400
    body = response.content.decode()
    assert "is not a time like 2026-12-24T18:00Z" in body
    assert body.index("is not a time like") > body.index('id="freeze-until"'), "below the field"
    past = client.post(reverse("dashboard:freeze"), freeze_form("shop", until="2020-01-01T00:00Z"))
    assert "must lie in the future" in past.content.decode()
    bad_window = client.post(reverse("dashboard:window-add"), {**WINDOW_FORM, "schedule": "every monday"})
    assert bad_window.status_code == 400
    assert "is not a cron schedule of five fields" in bad_window.content.decode()
    bad_zone = client.post(reverse("dashboard:window-add"), {**WINDOW_FORM, "time_zone": "Mars/Base"})
    assert "is not a known time zone" in bad_zone.content.decode()
    assert not Freeze.objects.exists() and not SyncWindow.objects.exists()


def test_the_banner_shows_on_every_page_while_a_freeze_holds(people, make_source):
    source = make_source(name="shop")
    client = client_for(people["viewer"])
    pages = [reverse("dashboard:overview"), reverse("dashboard:changes"), reverse("dashboard:windows")]
    for page in pages:
        assert 'id="freeze-banner"' not in client.get(page).content.decode()
    freezes.freeze_set(None, until=timezone.now() + timedelta(days=2), reason="holidays", by="ines")
    for page in [*pages, reverse("dashboard:source", args=["shop"])]:
        body = client.get(page).content.decode()
        assert 'id="freeze-banner"' in body, page
        assert "Every source" in body and "holidays" in body
    source_page = client.get(reverse("dashboard:source", args=[source.name])).content.decode()
    assert 'id="held-reason"' in source_page
    assert "frozen until" in source_page and "(every source): holidays" in source_page
    assert 'id="unfreeze"' not in source_page, "a viewer gets no buttons"


def test_the_source_page_says_why_a_window_holds_it_and_offers_the_admin_freeze_buttons(admin, make_source):
    source = make_source(name="shop")
    freezes.window_add(
        kind="deny",
        schedule_text="* * * * *",
        duration=parse_duration("1h"),
        sources=["sh*"],
        manual_sync=True,
    )
    body = client_for(admin).get(reverse("dashboard:source", args=[source.name])).content.decode()
    assert "in a sync window that denies changes until" in body
    assert "a manual sync may go out" in body
    assert 'id="freeze"' in body and 'id="unfreeze"' not in body
    freezes.freeze_set(source, until=timezone.now() + timedelta(hours=1), reason="incident", by="ines")
    body = client_for(admin).get(reverse("dashboard:source", args=[source.name])).content.decode()
    assert 'id="unfreeze"' in body


def test_the_rollout_page_says_why_it_waits_and_asks_an_admin_for_an_override(paused_rollout, people, admin):
    freezes.freeze_set(None, until=timezone.now() + timedelta(hours=1), reason="change freeze", by="ines")
    page = reverse("dashboard:rollout", args=[paused_rollout.pk])
    approver_page = client_for(people["approver"]).get(page).content.decode()
    assert 'id="held"' in approver_page and "change freeze" in approver_page
    assert "only an administrator may promote" in approver_page
    assert 'id="promote-override"' not in approver_page
    admin_page = client_for(admin).get(page).content.decode()
    assert 'id="promote-override"' in admin_page

    promote = reverse("dashboard:rollout-action", args=[paused_rollout.pk, "promote"])
    client_for(people["approver"]).post(promote, {"comment": "go"})
    client_for(admin).post(promote, {"comment": "go"})
    assert not Approval.objects.filter(rollout=paused_rollout).exists(), "no override reason, no promote"
    client_for(admin).post(promote, {"comment": "go", "override": "hotfix INC-9"})
    override = RolloutEvent.objects.get(rollout=paused_rollout, kind="override")
    assert (override.actor, override.data["reason"]) == ("ines", "hotfix INC-9")
    wait_for(paused_rollout.source, phase="Completed", timeout=60)  # the override let the last step go
    windows_page = client_for(people["viewer"]).get(reverse("dashboard:windows")).content.decode()
    assert "hotfix INC-9" in windows_page, "overrides are listed on the Freezes page"


# -- the JSON API ---------------------------------------------------------------------------


class Api:
    def __init__(self, user: User) -> None:
        _, token = ApiToken.objects.issue(user, name="tests")
        self.client = Client(headers={"Authorization": f"Bearer {token}"})

    def get(self, path: str):
        return self.client.get("/api" + path)

    def post(self, path: str, body: dict):
        return self.client.post("/api" + path, data=json.dumps(body), content_type="application/json")

    def delete(self, path: str):
        return self.client.delete("/api" + path)


def test_the_api_reads_for_viewers_and_acts_for_admins(people, admin, make_source):
    source = make_source(name="shop")
    viewer, approver, boss = Api(people["viewer"]), Api(people["approver"]), Api(admin)
    until = (timezone.now() + timedelta(hours=3)).isoformat()
    body = {"source": "shop", "until": until, "reason": "incident 12"}
    for caller in (viewer, approver):
        assert caller.post("/freezes", body).status_code == 403
        # The role is checked before the source is looked up: a 403, not a 404, for a name that is no source.
        assert caller.post("/freezes", {**body, "source": "nope"}).status_code == 403
        assert caller.post("/freezes/lift", {"source": "nope"}).status_code == 403
        assert (
            caller.post("/windows", {"kind": "deny", "schedule": "0 9 * * *", "duration": "1h"}).status_code
            == 403
        )
        # The role before the body's meaning: a bad duration was a 400 for anyone.
        bad_duration = {"kind": "deny", "schedule": "0 9 * * *", "duration": "forever"}
        assert caller.post("/windows", bad_duration).status_code == 403
    assert viewer.get("/freezes").json() == []

    created = boss.post("/freezes", body)
    assert created.status_code == 201, created.content
    assert created.json()["source"] == "shop" and created.json()["created_by"] == "ines"
    assert [f["reason"] for f in viewer.get("/freezes").json()] == ["incident 12"]
    gate = viewer.get(f"/sources/{source.name}").json()["gate"]
    assert (gate["state"], gate["automatic"], gate["manual"]) == ("frozen", False, False)
    assert gate["reason"].endswith("by ines (shop): incident 12")

    both = boss.post("/freezes", {**body, "all": True})
    assert both.status_code == 400 and "not both" in both.json()["detail"]
    past = boss.post("/freezes", {**body, "until": "2020-01-01T00:00:00Z"})
    assert past.status_code == 400 and past.json()["detail"] == "until: must lie in the future"
    # An offset past PostgreSQL's 15:59 was a 500: the time is kept in UTC.
    far_offset = (timezone.now() + timedelta(days=2)).replace(microsecond=0)
    at_plus_20 = far_offset.astimezone(timezone.get_fixed_timezone(20 * 60)).isoformat()
    frozen = boss.post("/freezes", {**body, "reason": "far east", "until": at_plus_20})
    assert frozen.status_code == 201, frozen.content
    assert Freeze.objects.get(reason="far east").until == far_offset
    Freeze.objects.filter(reason="far east").delete()  # the rest of the test lifts one freeze
    assert boss.post("/freezes", {**body, "untill": until}).status_code == 422, "a misspelt field"
    # A time without its offset was taken as UTC: another moment than meant, east or west of it.
    naive = (timezone.now() + timedelta(hours=3)).replace(tzinfo=None).isoformat()
    refused = boss.post("/freezes", {**body, "until": naive})
    assert (refused.status_code, refused.json()["detail"]) == (
        400,
        "until: give a time zone (e.g. 2026-12-24T18:00Z)",
    )
    assert boss.post("/freezes", {**body, "source": "nope"}).status_code == 404

    lifted = boss.post("/freezes/lift", {"source": "shop"})
    assert [f["lifted_by"] for f in lifted.json()] == ["ines"]
    assert viewer.get(f"/sources/{source.name}").json()["gate"]["state"] == "open"

    window = boss.post(
        "/windows", {"kind": "allow", "schedule": "0 22 * * *", "duration": "1h", "manual_sync": True}
    )
    assert window.status_code == 201, window.content
    listed = viewer.get("/windows").json()
    assert [(w["kind"], w["sources"], w["manual_sync"]) for w in listed] == [("allow", ["*"], True)]
    bad = boss.post("/windows", {"kind": "allow", "schedule": "0 22 * *", "duration": "1h"})
    assert bad.status_code == 400 and bad.json()["detail"].startswith("schedule: ")
    assert viewer.delete(f"/windows/{window.json()['id']}").status_code == 403
    assert boss.delete(f"/windows/{window.json()['id']}").status_code == 204
    assert boss.delete(f"/windows/{window.json()['id']}").status_code == 404
    assert viewer.get("/windows").json() == []


# -- the command line -----------------------------------------------------------------------


def gitops(*args: str) -> str:
    out = io.StringIO()
    call_command("gitops", *args, stdout=out)
    return out.getvalue()


def test_the_cli_freezes_unfreezes_and_manages_windows(make_source):
    source = make_source(name="shop")
    said = gitops("freeze", "shop", "--until", "2h", "--reason", "deploy of the database", "--user", "ines")
    assert said.startswith("froze shop until ") and said.strip().endswith(": deploy of the database")
    assert "held: frozen until " in gitops("status", "shop")
    status = json.loads(gitops("status", "shop", "--json"))
    assert status["gate"]["state"] == "frozen"
    gitops("freeze", "--all", "--until", "30d", "--reason", "holidays")
    # Named as every other command names its actor: --by, else cli: and the account (it was "cli").
    assert Freeze.objects.get(source=None).created_by.startswith("cli:")
    assert Freeze.objects.get(source=source).created_by == "ines", "--user, the older name of --by"

    with pytest.raises(CommandError, match="until: must lie in the future"):
        gitops("freeze", "shop", "--until", "2020-01-01", "--reason", "x")
    with pytest.raises(CommandError, match="no source named 'nope'"):
        gitops("freeze", "nope", "--until", "2h", "--reason", "x")
    frozen = json.loads(gitops("freezes", "--json"))
    assert [(f["source"], f["all_sources"]) for f in frozen] == [("shop", False), (None, True)]
    assert frozen[0]["created_by"] == "ines"
    assert "every source" in gitops("freezes") and "by ines: deploy of the database" in gitops("freezes")
    assert "lifted freeze" in gitops("unfreeze", "shop", "--by", "otto")
    assert Freeze.objects.filter(source=source, lifted_by="otto").exists()
    # Still held, by the every-source freeze: it said "no freeze in force on shop" (before 2026-12-07).
    said = gitops("unfreeze", "shop")
    assert "no freeze of shop alone; it is held by the freeze of every source" in said
    assert "gitops unfreeze --all lifts it" in said
    assert "every source" in gitops("unfreeze", "--all")
    assert "no freeze in force" in gitops("unfreeze", "--all")
    assert gitops("freezes").strip() == "no freeze in force"

    added = gitops("window", "add", "--kind", "deny", "--schedule", "0 9 * * 1-5", "--duration", "8h",
                   "--source", "shop", "--manual-sync")  # fmt: skip
    assert added.startswith("added sync window ")
    listed = gitops("window", "list")
    assert "deny window '0 9 * * 1-5' (8h) for shop, manual sync allowed" in listed
    entries = json.loads(gitops("window", "list", "--json"))
    assert [(e["kind"], e["sources"], e["manual_sync"]) for e in entries] == [("deny", ["shop"], True)]
    with pytest.raises(CommandError, match="schedule: "):
        gitops("window", "add", "--kind", "allow", "--schedule", "61 * * * *", "--duration", "1h")
    with pytest.raises(CommandError, match="is not a duration"):
        gitops("window", "add", "--kind", "allow", "--schedule", "0 * * * *", "--duration", "soon")
    assert "removed sync window" in gitops("window", "remove", str(entries[0]["id"]))
    assert "no sync windows" in gitops("window", "list")
