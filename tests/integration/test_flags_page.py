"""The Flags page against real syncs: every published flag, staleness, filters, CSV, roles, rollouts."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from gitops.models import Change, PublishedFlag
from gitops.rollout import decisions
from gitops.selectors import FLAGS_PAGE
from tests.gitrepo import GitRepo, policy
from tests.rollouts import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

ON_OFF = {"on": True, "off": False}
CHECKOUT = {
    "flags": {
        "new-checkout": {
            "state": "ENABLED",
            "variants": ON_OFF,
            "defaultVariant": "off",
            "targeting": {"fractional": [["on", 20], ["off", 80]]},
        },
        "beta": {
            "state": "ENABLED",
            "variants": ON_OFF,
            "defaultVariant": "off",
            "targeting": {"if": [{"ends_with": [{"var": "email"}, "@corp.example"]}, "on", "off"]},
        },
        "banner": {
            "state": "ENABLED",
            "variants": {"blue": "blue", "green": "green"},
            "defaultVariant": "blue",
        },
        "kill-switch": {
            "state": "DISABLED",
            "variants": ON_OFF,
            "defaultVariant": "on",
            "targeting": {"if": [{"==": [{"var": "plan"}, "pro"]}, "off", "on"]},
        },
        "=1+1": {"state": "ENABLED", "variants": ON_OFF, "defaultVariant": "on"},
    }
}
SEARCH = {
    "flags": {
        "ranking": {
            "state": "ENABLED",
            "variants": {"bm25": "bm25", "vector": "vector"},
            "defaultVariant": "bm25",
            "targeting": {"fractional": [["vector", 50], ["bm25", 50]]},
        }
    }
}


def client_for(user: User | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def rows_of(html: str) -> dict[str, str]:
    """Each flag row of the page, by flag key."""
    return dict(re.findall(r'<tr data-flag="([^"]*)"(.*?)</tr>', html, flags=re.S))


@pytest.fixture
def two_sources(repo, make_namespaces, make_source, sync, tmp_path):
    """``shop`` publishes flags/checkout.json, ``search`` publishes flags/search.json; both synced."""
    app, flags_ns, search_ns = make_namespaces("app", "flags", "search")
    repo.write_all(
        {
            "sluice.yaml": policy([app], flags={"namespace": flags_ns}),
            "flags/checkout.json": json.dumps(CHECKOUT),
        }
    )
    shop_commit = repo.commit("shop flags")
    shop = make_source(
        name=f"shop-{flags_ns}", commit_url_template="https://git.example.com/shop/commit/{commit}"
    )
    other = GitRepo(tmp_path / "search-repo")
    other.write_all({"sluice.yaml": policy([search_ns]), "flags/search.json": json.dumps(SEARCH)})
    search_commit = other.commit("search flags")
    search = make_source(name=f"search-{search_ns}", url=other.url)
    assert sync(shop)["outcome"] == "applied"
    assert sync(search)["outcome"] == "applied"
    return {
        "shop": shop,
        "search": search,
        "shop_commit": shop_commit,
        "search_commit": search_commit,
        "flags_ns": flags_ns,
        "app": app,
        "repo": repo,
    }


def test_every_published_flag_is_listed_with_what_it_does_and_the_commit_that_changed_it(two_sources, people):
    page = client_for(people["viewer"]).get(reverse("dashboard:flags"))
    assert page.status_code == 200
    html = page.content.decode()
    rows = rows_of(html)
    assert set(rows) == {"new-checkout", "beta", "banner", "kill-switch", "=1+1", "ranking"}

    checkout = rows["new-checkout"]
    assert two_sources["shop"].name in checkout
    assert f"{two_sources['flags_ns']}/checkout" in checkout
    assert "ENABLED" in checkout
    assert "on: true · off: false" in checkout
    assert "default: off" in checkout
    assert "fractional 20/80 (on/off) on targetingKey" in checkout
    assert 'data-share="100"' in checkout
    commit = two_sources["shop_commit"]
    assert f'href="https://git.example.com/shop/commit/{commit}"' in checkout
    assert f"commit={commit}" in checkout, "the commit links to its change-log entries"
    logged = Change.objects.filter(source=two_sources["shop"], name="checkout").get()
    assert logged.commit == commit
    assert timezone.localtime(logged.at).strftime("%Y-%m-%d %H:%M") in checkout

    assert "if email ends_with &quot;@corp.example&quot; → on; else off" in rows["beta"]
    assert "fractional 50/50 (vector/bm25) on targetingKey" in rows["ranking"]
    assert two_sources["search_commit"][:12] in rows["ranking"]
    # Stale: one variant to everyone (no targeting; DISABLED serves the code default).
    assert 'data-stale="yes"' in rows["banner"] and "serves one variant to everyone" in rows["banner"]
    assert 'data-stale="yes"' in rows["kill-switch"] and "DISABLED" in rows["kill-switch"]
    for fresh in ("new-checkout", "beta", "ranking"):
        assert 'data-stale="no"' in rows[fresh], fresh
    assert "Stale: <strong>3</strong>" in html  # banner, kill-switch and =1+1
    assert 'id="bucketing-caveat"' in html
    assert "@openfeature/flagd-core 4.0.1" in html and "CBOR encoding of the canary&#x27;s key" in html


def test_flags_unchanged_for_longer_than_the_setting_are_stale(two_sources, people, monkeypatch, settings):
    settings.SLUICE_STALE_FLAG_DAYS = 30
    client = client_for(people["viewer"])
    later = timezone.now() + timedelta(days=31)
    # The page's clock only, 31 days on (sessions and everything else keep the real one).
    clock = SimpleNamespace(now=lambda: later, localtime=timezone.localtime)
    monkeypatch.setattr("dashboard.flags.timezone", clock)
    rows = rows_of(client.get(reverse("dashboard:flags")).content.decode())
    assert all('data-stale="yes"' in row for row in rows.values())
    assert "unchanged for over 30 days" in rows["new-checkout"]
    assert "serves one variant" not in rows["new-checkout"]
    settings.SLUICE_STALE_FLAG_DAYS = 40
    rows = rows_of(client.get(reverse("dashboard:flags")).content.decode())
    assert 'data-stale="no"' in rows["new-checkout"]


def test_filters_by_source_cluster_staleness_and_key(two_sources, people):
    client = client_for(people["viewer"])
    url = reverse("dashboard:flags")

    def keys(**query) -> set[str]:
        return set(rows_of(client.get(url, query).content.decode()))

    assert keys(source=two_sources["search"].name) == {"ranking"}
    assert keys(source=two_sources["shop"].name, stale="stale") == {"banner", "kill-switch", "=1+1"}
    assert keys(stale="fresh") == {"new-checkout", "beta", "ranking"}
    assert keys(cluster="default") == keys()
    assert keys(cluster="member-1") == set(), "the change log carries only the default cluster here"
    assert keys(key="check") == {"new-checkout"}
    assert keys(stale="nonsense") == keys(), "an unknown value filters nothing"
    html = client.get(url).content.decode()
    for control in ("flag-source", "flag-cluster", "flag-stale", "flag-key"):
        assert f'<label for="{control}">' in html and f'id="{control}"' in html, control


def test_the_csv_export_has_every_matching_flag_and_quotes_formulas(two_sources, people):
    response = client_for(people["viewer"]).get(reverse("dashboard:flags"), {"format": "csv"})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv"
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    by_key = {row["key"]: row for row in rows}
    assert set(by_key) == {"new-checkout", "beta", "banner", "kill-switch", "'=1+1", "ranking"}
    assert by_key["banner"]["stale"] == "yes"
    assert by_key["banner"]["stale_reasons"] == "serves one variant to everyone"
    assert by_key["new-checkout"]["stale"] == "no"
    assert by_key["new-checkout"]["targeting"] == "fractional 20/80 (on/off) on targetingKey"
    assert by_key["new-checkout"]["changed_commit"] == two_sources["shop_commit"]
    assert by_key["new-checkout"]["share_percent"] == "100"
    only_stale = client_for(people["viewer"]).get(
        reverse("dashboard:flags"), {"format": "csv", "stale": "stale"}
    )
    stale_rows = list(csv.DictReader(io.StringIO(b"".join(only_stale.streaming_content).decode())))
    assert {row["key"] for row in stale_rows} == {"banner", "kill-switch", "'=1+1"}
    assert "X-Sluice-Export-Truncated" not in response and 'filename="sluice-flags.csv"' in str(
        response["Content-Disposition"]
    )


def test_a_flags_export_cut_at_its_limit_says_so(two_sources, people, monkeypatch):
    """The export stopped at its limit and looked whole."""
    from gitops import selectors

    monkeypatch.setattr(selectors, "FLAG_EXPORT_LIMIT", 2)
    response = client_for(people["viewer"]).get(reverse("dashboard:flags"), {"format": "csv"})
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == 2
    assert response["X-Sluice-Export-Truncated"] == "2"
    assert 'filename="sluice-flags-first-2.csv"' in response["Content-Disposition"]


def test_every_role_reads_the_page_and_others_do_not(two_sources, people):
    anonymous = client_for(None).get(reverse("dashboard:flags"))
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/login/?next=")
    admin = User.objects.create_user("root-admin", password="x")
    admin.groups.set([Group.objects.get(name="admin")])
    for user in (*people.values(), admin):
        assert client_for(user).get(reverse("dashboard:flags")).status_code == 200, user.username
    nobody = User.objects.create_user("no-role", password="x")
    nobody.groups.clear()
    assert client_for(User.objects.get(pk=nobody.pk)).get(reverse("dashboard:flags")).status_code == 403
    assert client_for(people["viewer"]).post(reverse("dashboard:flags")).status_code == 405, (
        "a read-only page"
    )
    nav = client_for(people["viewer"]).get(reverse("dashboard:overview")).content.decode()
    assert f'href="{reverse("dashboard:flags")}"' in nav


def test_the_page_runs_a_few_queries_whatever_the_number_of_flags(
    repo, make_namespaces, make_source, sync, people
):
    app, flags_ns = make_namespaces("app", "flags")
    many = {
        "flags": {
            f"flag-{index:03d}": {"state": "ENABLED", "variants": ON_OFF, "defaultVariant": "off"}
            for index in range(FLAGS_PAGE + 30)
        }
    }
    repo.write_all(
        {"sluice.yaml": policy([app], flags={"namespace": flags_ns}), "flags/many.json": json.dumps(many)}
    )
    repo.commit("many flags")
    sync(make_source())
    client = client_for(people["viewer"])
    with CaptureQueriesContext(connection) as first_page:
        first = client.get(reverse("dashboard:flags"))
    first_keys = list(rows_of(first.content.decode()))
    assert first_keys == [f"flag-{index:03d}" for index in range(FLAGS_PAGE)]
    more = re.search(r'id="more-flags" href="\?after=([A-Za-z0-9_-]+)"', first.content.decode())
    assert more, "a next page follows"
    last_of_first = PublishedFlag.objects.get(key=f"flag-{FLAGS_PAGE - 1:03d}")
    by_id = client.get(reverse("dashboard:flags"), {"after": str(last_of_first.pk)})  # a link from before
    assert next(iter(rows_of(by_id.content.decode()))) == f"flag-{FLAGS_PAGE:03d}"
    # The row the page ended on goes before the next page is asked (removed at 100, rolled back): the
    # next page began at the first again, its rows shown twice (before 2026-12-07).
    last_of_first.delete()
    with CaptureQueriesContext(connection) as second_page:
        second = client.get(reverse("dashboard:flags"), {"after": more.group(1)})
    second_keys = list(rows_of(second.content.decode()))
    assert second_keys == [f"flag-{index:03d}" for index in range(FLAGS_PAGE, FLAGS_PAGE + 30)]
    assert 'id="more-flags"' not in second.content.decode()
    # Session and user, the page (and the row after which it starts), counts, filter choices.
    assert len(first_page) <= 10, [q["sql"] for q in first_page.captured_queries]
    assert len(second_page) <= len(first_page) + 1


def test_a_flag_rollout_shows_its_share_the_new_commit_and_removed_flags(two_sources, people, sync):
    repo, shop = two_sources["repo"], two_sources["shop"]
    changed = json.loads(json.dumps(CHECKOUT))
    changed["flags"]["new-checkout"]["targeting"] = {"fractional": [["on", 60], ["off", 40]]}
    del changed["flags"]["beta"]
    steps = [{"setWeight": 25}, {"pause": {}}, {"setWeight": 100}]
    flags = {"namespace": two_sources["flags_ns"]}
    repo.write_all(
        {
            "sluice.yaml": policy([two_sources["app"]], flags=flags, rollout={"steps": steps}),
            "flags/checkout.json": json.dumps(changed),
        }
    )
    v2 = repo.commit("v2: 60% get the new checkout, beta goes")
    sync(shop)
    paused = wait_for(shop, phase="Paused", waiting_for="approval", weight=25)
    client = client_for(people["viewer"])
    rows = rows_of(client.get(reverse("dashboard:flags"), {"source": shop.name}).content.decode())
    assert "fractional 60/40 (on/off) on targetingKey" in rows["new-checkout"]
    assert f'href="/rollouts/{paused.pk}/"' in rows["new-checkout"] and "at 25%" in rows["new-checkout"]
    assert 'data-share="25"' in rows["new-checkout"]
    assert "changes at 100%" not in rows["new-checkout"], "a flag the canary splits changes step by step"
    assert v2[:12] in rows["new-checkout"], "changed by the commit the canary publishes"
    assert "removed in Git" in rows["beta"] and 'data-share="25"' in rows["beta"]
    assert 'data-share="100"' in rows["banner"] and two_sources["shop_commit"][:12] in rows["banner"]
    catalog = PublishedFlag.objects.get(source=shop, key="new-checkout")
    first = Change.objects.filter(rollout=paused, name="checkout").order_by("id").first()
    assert (catalog.changed_commit, catalog.changed_at) == (v2, first.at)

    decisions.rollout_promote(paused.pk, user=people["approver"])
    wait_for(shop, phase="Completed")
    rows = rows_of(client.get(reverse("dashboard:flags"), {"source": shop.name}).content.decode())
    assert "beta" not in rows, "a removed flag leaves the page when its rollout completes"
    assert 'data-share="100"' in rows["new-checkout"] and "Completed" in rows["new-checkout"]

    again = json.loads(json.dumps(changed))
    again["flags"]["banner"]["defaultVariant"] = "green"
    repo.write("flags/checkout.json", json.dumps(again))
    repo.commit("v3: green banner")
    sync(shop)
    third = wait_for(shop, phase="Paused", waiting_for="approval", weight=25)
    decisions.rollout_abort(third.pk, user=people["approver"], reason="not now")
    wait_for(shop, phase="Aborted")
    rows = rows_of(client.get(reverse("dashboard:flags"), {"source": shop.name}).content.decode())
    # The rollback put the blue banner back for everyone (it said 0%, "rolled back", until 2026-12-07).
    assert 'data-share="100"' in rows["banner"] and "default: blue" in rows["banner"]
    assert "rolled back" not in rows["banner"] and f'href="/rollouts/{third.pk}/"' not in rows["banner"]
    assert 'data-share="100"' in rows["new-checkout"], (
        "a flag the aborted rollout did not change is untouched"
    )


def record_step_again(rollout, *, weight: int) -> None:
    """The catalog as the step at ``weight`` records it, from what the clusters publish now."""
    from gitops.fetch.revisions import revision_desired_state, revision_fetch
    from gitops.rollout.engine import desired_at_weight
    from gitops.rollout.flag_catalog import flag_catalog_record
    from gitops.rollout.step import flag_baselines, live_state

    rollout.refresh_from_db()
    revision_fetch(rollout.source)  # into this process's mirror
    desired = revision_desired_state(rollout.source, rollout.revision)
    live = live_state(rollout.source, desired)
    baselines = flag_baselines(rollout, desired, live.index())
    weighted = desired_at_weight(desired, weight, baselines, rollout.flag_population)
    flag_catalog_record(rollout, desired, weight, baselines, weighted)


def test_a_flag_whose_variants_change_type_is_shown_as_everyone_has_it_until_100(two_sources, people, sync):
    # Such a flag cannot be served mixed (the application reads it as one type): everyone keeps the old
    # definition until 100, and the page says so rather than the rollout's share of the new one.
    repo, shop = two_sources["repo"], two_sources["shop"]
    # Another flag of the set changes first (no canary): the banner's row must keep its own commit.
    earlier = json.loads(json.dumps(CHECKOUT))
    earlier["flags"]["kill-switch"]["state"] = "ENABLED"
    repo.write("flags/checkout.json", json.dumps(earlier))
    v1_5 = repo.commit("v1.5: the kill switch is on")
    assert sync(shop)["outcome"] == "applied"
    changed = json.loads(json.dumps(earlier))
    changed["flags"]["banner"] = {"state": "ENABLED", "variants": ON_OFF, "defaultVariant": "on"}
    changed["flags"]["new-checkout"]["targeting"] = {"fractional": [["on", 60], ["off", 40]]}
    steps = [{"setWeight": 25}, {"pause": {}}, {"setWeight": 100}]
    flags = {"namespace": two_sources["flags_ns"]}
    repo.write_all(
        {
            "sluice.yaml": policy([two_sources["app"]], flags=flags, rollout={"steps": steps}),
            "flags/checkout.json": json.dumps(changed),
        }
    )
    v2 = repo.commit("v2: the banner becomes a switch")
    sync(shop)
    paused = wait_for(shop, phase="Paused", waiting_for="approval", weight=25)
    client = client_for(people["viewer"])
    rows = rows_of(client.get(reverse("dashboard:flags"), {"source": shop.name}).content.decode())
    assert 'data-share="100"' in rows["banner"] and two_sources["shop_commit"][:12] in rows["banner"]
    assert "blue" in rows["banner"], "the definition everyone is served"
    # An on-call approver sees which flags flip for everyone at once when the rollout reaches 100%.
    assert "changes at 100%" in rows["banner"] and f'href="/rollouts/{paused.pk}/"' in rows["banner"]
    assert "changes at 100%" not in rows["new-checkout"]
    assert 'data-share="25"' in rows["new-checkout"], "a flag the canary splits shows its share"
    listed = client.get("/api/flags", {"source": shop.name}).json()
    banner = next(flag for flag in listed["items"] if flag["key"] == "banner")
    assert (banner["share_percent"], banner["default_variant"]) == (100, "blue"), banner
    assert banner["changed_commit"] == two_sources["shop_commit"]
    assert banner["changes_at_full"] == paused.pk
    checkout = next(flag for flag in listed["items"] if flag["key"] == "new-checkout")
    assert checkout["changes_at_full"] is None
    exported = client.get(reverse("dashboard:flags"), {"format": "csv"})
    by_key = {
        row["key"]: row for row in csv.DictReader(io.StringIO(b"".join(exported.streaming_content).decode()))
    }
    assert (
        by_key["banner"]["changes_at_full"] == str(paused.pk)
        and by_key["new-checkout"]["changes_at_full"] == ""
    )
    # A row written again mid-rollout (lost, or the catalog started now) names the last publication of
    # its flag set before the rollout: not the canary's own.
    PublishedFlag.objects.filter(source=shop, key="banner").delete()
    record_step_again(paused, weight=25)
    again = PublishedFlag.objects.get(source=shop, key="banner")
    assert (again.default_variant, again.rollout_id, again.held_by_id) == ("blue", None, paused.pk)
    assert again.changed_commit == v1_5, "not the canary's own publication"

    decisions.rollout_promote(paused.pk, user=people["approver"])
    wait_for(shop, phase="Completed")
    rows = rows_of(client.get(reverse("dashboard:flags"), {"source": shop.name}).content.decode())
    assert 'data-share="100"' in rows["banner"] and "Completed" in rows["banner"]
    assert "changes at 100%" not in rows["banner"]
    flipped = PublishedFlag.objects.get(source=shop, key="banner")
    assert flipped.default_variant == "on"
    published = Change.objects.filter(rollout=paused, name="checkout").order_by("id")
    assert published.count() >= 2, "published at 25% and again at 100%"
    # It changed for everyone at the publication at 100%, not at the canary's first (which held it).
    assert (flipped.changed_commit, flipped.changed_at) == (v2, published.last().at)
    checkout = PublishedFlag.objects.get(source=shop, key="new-checkout")
    assert checkout.changed_at == published.first().at, "a split flag changed with the first step"
    # Lost at 100 (or written by a release before the marker): what the rollout held is worked out again.
    PublishedFlag.objects.filter(source=shop, key="banner").delete()
    record_step_again(paused, weight=100)
    rebuilt = PublishedFlag.objects.get(source=shop, key="banner")
    assert (rebuilt.changed_at, rebuilt.held_by_id) == (published.last().at, paused.pk)
    assert (
        client.get("/api/flags", {"source": shop.name, "key": "banner"}).json()["items"][0]["changes_at_full"]
        is None
    )


def test_flags_the_canary_does_not_split_show_who_has_them(two_sources, people, sync):
    # The page showed the rollout's share for these: a change both sides serve alike reaches everyone at
    # the first step, and a flag moving to another flag set of the namespace reaches nobody before 100.
    repo, shop = two_sources["repo"], two_sources["shop"]
    changed = json.loads(json.dumps(CHECKOUT))
    changed["flags"]["beta"]["metadata"] = {"owner": "growth"}
    promo = {"flags": {"banner": changed["flags"].pop("banner")}}
    changed["flags"]["new-checkout"]["targeting"] = {"fractional": [["on", 60], ["off", 40]]}
    steps = [{"setWeight": 25}, {"pause": {}}, {"setWeight": 100}]
    flags = {"namespace": two_sources["flags_ns"]}
    repo.write_all(
        {
            "sluice.yaml": policy([two_sources["app"]], flags=flags, rollout={"steps": steps}),
            "flags/checkout.json": json.dumps(changed),
            "flags/promo.json": json.dumps(promo),
        }
    )
    v2 = repo.commit("v2: the banner moves to the promo set; beta gets an owner")
    sync(shop)
    paused = wait_for(shop, phase="Paused", waiting_for="approval", weight=25)
    client = client_for(people["viewer"])
    page = client.get(reverse("dashboard:flags"), {"source": shop.name}).content.decode()
    moving = re.findall(r'<tr data-flag="banner"(.*?)</tr>', page, flags=re.S)
    assert len(moving) == 2, "listed in the set it leaves and in the set it joins"
    leaving, joining = sorted(moving, key=lambda row: "removed in Git" not in row)
    for row in (leaving, joining):
        assert 'data-share="0"' in row and "changes at 100%" in row, row
        assert f'href="/rollouts/{paused.pk}/"' in row
    assert "everyone keeps it until 100%" in leaving
    assert "nobody until 100%" in joining and "not published yet" in joining
    rows = rows_of(page)
    assert 'data-share="100"' in rows["beta"] and "the canary does not split it" in rows["beta"]
    assert v2[:12] in rows["beta"], "changed for everyone by the canary's first publication"
    assert 'data-share="25"' in rows["new-checkout"] and "changes at 100%" not in rows["new-checkout"]
    listed = client.get("/api/flags", {"source": shop.name, "key": "banner"}).json()["items"]
    assert sorted((flag["share_percent"], flag["changes_at_full"]) for flag in listed) == [(0, paused.pk)] * 2
    exported = client.get(reverse("dashboard:flags"), {"format": "csv", "source": shop.name})
    exported_rows = list(csv.DictReader(io.StringIO(b"".join(exported.streaming_content).decode())))
    shares = sorted((row["key"], row["share_percent"], row["changes_at_full"]) for row in exported_rows)
    assert ("beta", "100", "") in shares and shares.count(("banner", "0", str(paused.pk))) == 2, shares
    # The page's record settles: a pass that changes nothing writes nothing.
    before = list(PublishedFlag.objects.filter(source=shop).order_by("id").values())
    record_step_again(paused, weight=25)
    assert list(PublishedFlag.objects.filter(source=shop).order_by("id").values()) == before

    decisions.rollout_promote(paused.pk, user=people["approver"])
    wait_for(shop, phase="Completed")
    rows = rows_of(client.get(reverse("dashboard:flags"), {"source": shop.name}).content.decode())
    assert 'data-share="100"' in rows["banner"] and "changes at 100%" not in rows["banner"]
    joined = PublishedFlag.objects.get(source=shop, key="banner")
    assert joined.flag_set == "promo"
    at_full = Change.objects.filter(rollout=paused, name="promo", weight=100).order_by("id").first()
    assert (joined.changed_commit, joined.changed_at) == (v2, at_full.at), "changed for everyone at 100"
    # The catalog written again at 100 (another row lost) keeps that time, not the canary's first.
    PublishedFlag.objects.filter(source=shop, key="beta").delete()
    record_step_again(paused, weight=100)
    assert PublishedFlag.objects.get(source=shop, key="banner").changed_at == at_full.at


def test_a_pass_that_changes_nothing_costs_one_query_and_a_lost_row_comes_back(two_sources):
    from gitops.fetch.revisions import revision_desired_state, revision_fetch
    from gitops.models import Rollout
    from gitops.rollout.flag_catalog import flag_catalog_record

    shop = two_sources["shop"]
    rollout = Rollout.objects.filter(source=shop).latest("id")
    head, _ = revision_fetch(shop)
    desired = revision_desired_state(shop, head)
    catalog = list(PublishedFlag.objects.filter(source=shop).order_by("id").values())
    with CaptureQueriesContext(connection) as queries:
        flag_catalog_record(rollout, desired, 100)
    assert len(queries) == 1, [q["sql"] for q in queries.captured_queries]
    assert list(PublishedFlag.objects.filter(source=shop).order_by("id").values()) == catalog

    PublishedFlag.objects.filter(source=shop, key="beta").delete()
    flag_catalog_record(rollout, desired, 100)
    beta = PublishedFlag.objects.get(source=shop, key="beta")
    first = Change.objects.get(source=shop, name="checkout")
    assert (beta.changed_commit, beta.changed_at, beta.rollout_id) == (first.commit, first.at, rollout.pk)
    assert beta.targeting == 'if email ends_with "@corp.example" → on; else off'


def test_the_api_lists_flags_with_the_same_filters(two_sources, people):
    api = client_for(people["viewer"])
    listed = api.get("/api/flags").json()
    assert listed["count"] == 6
    by_key = {item["key"]: item for item in listed["items"]}
    checkout = by_key["new-checkout"]
    assert checkout["source"] == two_sources["shop"].name
    assert (checkout["flag_set"], checkout["state"]) == ("checkout", "ENABLED")
    assert checkout["default_variant"] == "off"
    assert checkout["targeting"] == "fractional 20/80 (on/off) on targetingKey"
    assert (checkout["share_percent"], checkout["rollout_phase"]) == (100, "Completed")
    assert checkout["changed_commit"] == two_sources["shop_commit"]
    assert (checkout["stale"], checkout["stale_reasons"]) == (False, [])
    assert by_key["banner"]["stale_reasons"] == ["serves one variant to everyone"]
    stale = api.get("/api/flags", {"stale": "true"}).json()
    assert {item["key"] for item in stale["items"]} == {"banner", "kill-switch", "=1+1"}
    assert api.get("/api/flags", {"source": two_sources["search"].name}).json()["count"] == 1
    assert api.get("/api/flags", {"limit": 2, "offset": 4}).json()["items"] == listed["items"][4:6]
    assert client_for(None).get("/api/flags").status_code == 401


def test_an_after_that_names_no_place_shows_the_first_page(people):
    """JSON nested a thousand deep (a RecursionError) and a lone surrogate (which the database driver
    cannot send) were server errors."""
    import base64

    client = client_for(people["viewer"])
    first = client.get(reverse("dashboard:flags"))
    for odd in ("[" * 1000, '["\\ud800", "", "", "", "", 1]', '["a", "b", "c", "d", "e", true]', "{}"):
        text = base64.urlsafe_b64encode(odd.encode()).decode().rstrip("=")
        response = client.get(reverse("dashboard:flags"), {"after": text})
        assert response.status_code == 200, (odd[:20], response.status_code)
        assert list(rows_of(response.content.decode())) == list(rows_of(first.content.decode()))
