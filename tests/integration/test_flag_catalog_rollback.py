"""The flag catalog after a rollback: the Flags page and /api/flags list what the clusters serve again.

Until 2026-12-07 a rollback left the catalog as the rollout's last step wrote it: below 100% rows that
said a flag was being removed, or named the rolled-back rollout (0%, "rolled back") while every user had
the old definition; at 100% the flags the rollout removed were gone from the page, although the rollback
had put them back in the cluster.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from types import SimpleNamespace

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from gitops import cluster_admin
from gitops.models import PublishedFlag, Rollout
from gitops.record.audit import Actor
from gitops.rollout import decisions
from tests.clusters import FlakyKubeconfig
from tests.gitrepo import policy
from tests.rollouts import rollout_of, wait_for
from tests.workers import poll

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
        "kill-switch": {"state": "DISABLED", "variants": ON_OFF, "defaultVariant": "on"},
    }
}
PROMO = {"flags": {"spring-sale": {"state": "ENABLED", "variants": ON_OFF, "defaultVariant": "off"}}}
# What a row says of its flag, beside which rollout brought it: the page's columns and the stale marking.
NOT_COMPARED = ("id", "recorded_at", "rollout_id")


@pytest.fixture
def published_v1(repo, make_namespaces, make_source, sync):
    """Makes a source whose first commit published flags/checkout.json and flags/promo.json (prune on)."""

    def publish(**source_options) -> SimpleNamespace:
        app, flags_ns = make_namespaces("app", "flags")
        repo.write_all(
            {
                "sluice.yaml": policy([app], flags={"namespace": flags_ns}, prune=True),
                "flags/checkout.json": json.dumps(CHECKOUT),
                "flags/promo.json": json.dumps(PROMO),
            }
        )
        v1 = repo.commit("v1: checkout and promo flags")
        source = make_source(**source_options)
        assert sync(source)["outcome"] == "applied"
        first = rollout_of(source)
        return SimpleNamespace(source=source, v1=v1, v1_rollout=first, app=app, flags_ns=flags_ns)

    return publish


def commit_v2(repo, shop: SimpleNamespace, steps: list[dict]) -> str:
    """A rollout that changes a flag (split by the canary), changes another's type (held until 100),
    removes one, adds one, and drops the promo flag set."""
    changed = copy.deepcopy(CHECKOUT)
    changed["flags"]["new-checkout"]["targeting"] = {"fractional": [["on", 60], ["off", 40]]}
    changed["flags"]["banner"] = {"state": "ENABLED", "variants": ON_OFF, "defaultVariant": "on"}
    del changed["flags"]["beta"]
    changed["flags"]["fresh"] = {"state": "ENABLED", "variants": ON_OFF, "defaultVariant": "on"}
    flags = {"namespace": shop.flags_ns}
    repo.write_all(
        {
            "sluice.yaml": policy([shop.app], flags=flags, prune=True, rollout={"steps": steps}),
            "flags/checkout.json": json.dumps(changed),
        }
    )
    repo.remove("flags/promo.json")
    return repo.commit("v2: a wider checkout, a switch for a banner, beta and the spring sale go")


def catalog(source) -> dict[tuple[str, str], dict]:
    """The source's catalog rows by (flag set, key)."""
    rows = PublishedFlag.objects.filter(source=source).values()
    return {(row["flag_set"], row["key"]): row for row in rows}


def served(row: dict) -> dict:
    """What a row says is served. Its variants as a set: a restored definition is read back from the
    cluster, where Sluice wrote the flag set's JSON with its keys sorted, not in Git's order."""
    kept = {field: value for field, value in row.items() if field not in NOT_COMPARED}
    kept["variants"] = sorted(str(kept.get("variants", "")).split(" · "))
    return kept


def naming(source, rollout: Rollout) -> list[tuple[str, str]]:
    """The flags whose row still names ``rollout`` (as bringing it, or as holding it back until 100)."""
    return [
        flag for flag, row in catalog(source).items() if rollout.pk in (row["rollout_id"], row["held_by_id"])
    ]


def assert_listed_as_before(shop: SimpleNamespace, before: dict, rolled_back: Rollout) -> None:
    """The catalog once ``rolled_back`` is rolled back: every flag as v1 published it, for every user."""
    # Written with the rollout's end, in one transaction: the deadline is only a guard.
    poll(lambda: not naming(shop.source, rolled_back), timeout=30, what="no row naming the rollout any more")
    after = catalog(shop.source)
    assert set(after) == set(before), "the flag the rollout added went; those it removed came back"
    for flag, row in after.items():
        # Same definition, same last change (the change-log entry of v1 that published it), same cluster.
        assert served(row) == served(before[flag]), flag
        assert row["changed_commit"] == shop.v1, flag
        assert row["rollout_id"] in (None, shop.v1_rollout.pk), flag


def assert_every_user_has_each_flag(source, people) -> None:
    client = Client()
    client.force_login(people["viewer"])
    listed = client.get("/api/flags", {"source": source.name}).json()["items"]
    assert {(item["share_percent"], item["removed"]) for item in listed} == {(100, False)}, listed
    page = client.get(reverse("dashboard:flags"), {"source": source.name}).content.decode()
    rows = re.findall(r'<tr data-flag="[^"]*"(.*?)</tr>', page, flags=re.S)
    assert len(rows) == len(listed)
    for row in rows:
        assert 'data-share="100"' in row and "rolled back" not in row and "removed in Git" not in row, row


def test_an_abort_below_100_lists_every_flag_as_the_clusters_serve_it_again(repo, published_v1, sync, people):
    shop = published_v1()
    before = catalog(shop.source)
    commit_v2(repo, shop, [{"setWeight": 25}, {"pause": {}}, {"setWeight": 100}])
    sync(shop.source)
    paused = wait_for(shop.source, phase="Paused", waiting_for="approval", weight=25)
    during = catalog(shop.source)
    # What the page said while the canary ran: the rows the rollback has to mend.
    assert during[("checkout", "beta")]["removed"] and during[("promo", "spring-sale")]["removed"]
    assert during[("checkout", "new-checkout")]["rollout_id"] == paused.pk
    assert during[("checkout", "fresh")]["rollout_id"] == paused.pk
    assert during[("checkout", "banner")]["held_by_id"] == paused.pk, "held until 100: its type changes"

    decisions.rollout_abort(paused.pk, user=people["approver"], reason="not now")
    aborted = wait_for(shop.source, phase="Aborted")

    assert_listed_as_before(shop, before, aborted)
    assert_every_user_has_each_flag(shop.source, people)


def test_an_abort_after_the_change_log_was_archived_still_names_each_flags_last_publication(
    repo, published_v1, sync, people, tmp_path
):
    """The archive kept only the rows of rollouts under way; the catalog reads a flag set's last
    publication, an older rollout's row, when a rollback restores it: archived, every restored flag said
    "not published yet", with no time to tell it stale by (before 2026-12-07). Each object's newest row
    stays in the log."""
    from datetime import timedelta

    from django.utils import timezone

    from gitops.retention import archive_changes

    shop = published_v1()
    before = catalog(shop.source)
    commit_v2(repo, shop, [{"setWeight": 25}, {"pause": {}}, {"setWeight": 100}])
    sync(shop.source)
    paused = wait_for(shop.source, phase="Paused", waiting_for="approval", weight=25)
    archive_changes(timezone.now() + timedelta(days=1), tmp_path / "archived.jsonl")

    decisions.rollout_abort(paused.pk, user=people["approver"], reason="not now")
    aborted = wait_for(shop.source, phase="Aborted")

    assert_listed_as_before(shop, before, aborted)


def test_an_abort_at_100_brings_back_the_flags_the_rollout_removed(repo, published_v1, sync, people, cluster):
    shop = published_v1()
    before = catalog(shop.source)
    commit_v2(repo, shop, [{"setWeight": 100}, {"pause": {}}])
    sync(shop.source)
    paused = wait_for(shop.source, phase="Paused", waiting_for="approval", weight=100)
    during = catalog(shop.source)
    assert ("checkout", "beta") not in during and ("promo", "spring-sale") not in during, "gone at 100"
    assert cluster.get_configmap(shop.flags_ns, "promo") is None, "pruned at 100"

    decisions.rollout_abort(paused.pk, user=people["approver"], reason="the switch breaks the banner")
    aborted = wait_for(shop.source, phase="Aborted")

    assert cluster.get_configmap(shop.flags_ns, "promo") is not None, "the rollback put the set back"
    assert_listed_as_before(shop, before, aborted)
    assert_every_user_has_each_flag(shop.source, people)


def test_a_failing_analysis_after_100_rolls_the_catalog_back_too(
    repo, published_v1, sync, people, analysis_endpoint
):
    shop = published_v1(analysis_url_prefixes=[analysis_endpoint.url])
    before = catalog(shop.source)
    analysis_endpoint.status = 503
    analysis = {"http": {"url": analysis_endpoint.url}, "failureLimit": 1}
    commit_v2(repo, shop, [{"setWeight": 100}, {"analysis": analysis}])

    assert sync(shop.source)["outcome"] == "aborted"

    aborted = rollout_of(shop.source)
    assert aborted.phase == "Aborted" and "analysis failed" in aborted.message
    assert_listed_as_before(shop, before, aborted)
    assert_every_user_has_each_flag(shop.source, people)


def test_a_rollback_of_a_rollout_that_wrote_no_flag_set_never_asks_the_catalog(paused_rollout):
    from gitops.rollout.rollback import rollout_rollback

    rollout = Rollout.objects.select_related("source", "revision").get(pk=paused_rollout.pk)
    with CaptureQueriesContext(connection) as captured:
        rollout_rollback(rollout, actor="otto", reason="ConfigMaps only", phase=Rollout.Phase.ABORTED)

    assert Rollout.objects.get(pk=rollout.pk).phase == Rollout.Phase.ABORTED
    catalog_queries = [query["sql"] for query in captured.captured_queries if "publishedflag" in query["sql"]]
    assert catalog_queries == []


FLAKY = "flaky"  # member cluster member-2, registered through a kubeconfig the test silences


def flaky_cluster(stack, tmp_path) -> FlakyKubeconfig:
    """Registers FLAKY, as tests/integration/test_clusters.py's ``Fleet.flaky`` does: member-2 through a
    kubeconfig of its own, which ``silence()`` points at a closed port and ``answer()`` at member-2 again."""
    kubeconfig = FlakyKubeconfig(tmp_path / f"{FLAKY}.kubeconfig", stack["KUBECONFIG"], "member-2")
    cluster_admin.cluster_add(name=FLAKY, kubeconfig=str(kubeconfig.path), actor=Actor.command_line("tests"))
    return kubeconfig


def as_recorded(source) -> dict[tuple[str, str], dict]:
    """The source's catalog rows by (flag set, key), with which rollout each names: all but the row's id
    and the time it was written."""
    return {
        flag: {field: value for field, value in row.items() if field not in ("id", "recorded_at")}
        for flag, row in catalog(source).items()
    }


def test_an_abort_while_the_flag_sets_cluster_is_silent_leaves_its_rows_as_the_rollout_left_them(
    repo, make_source, sync, people, stack, cluster_for, tmp_path
):
    """The rollout's only cluster wrote its canary of the flag set, then stopped answering, and the
    rollout was aborted: that cluster is owed its rollback and still serves the rollout's content, so
    the catalog keeps the set's rows as the rollout left them (its keys count for other sources). Before
    2026-12-07 (9ec1a97) the rollback rewrote them to the definitions from before the rollout, which no
    cluster served.

    Once the cluster answers, the owed rollback restores the flag set there and lists it as it was (it
    left the rows as the abort had, listing what no cluster served any more, until 2026-12-07)."""
    flaky = flaky_cluster(stack, tmp_path)
    member = cluster_for("member-2")  # the same cluster, read through the stack's own kubeconfig
    namespace = f"t{uuid.uuid4().hex[:8]}"
    member.create_namespace(namespace)
    switch = {"state": "ENABLED", "variants": ON_OFF, "defaultVariant": "off"}
    switched_on = {**switch, "defaultVariant": "on"}

    def publish(flags: dict, message: str, steps=None) -> str:
        document: dict = {
            "targets": [{"cluster": FLAKY, "namespaces": [namespace]}],
            "flags": {"namespace": namespace},
        }
        if steps:
            document["rollout"] = {"steps": steps}
        repo.write_all({"sluice.yaml": document, "flags/checkout.json": json.dumps({"flags": flags})})
        return repo.commit(message)

    def published() -> dict:
        return member.get_configmap(namespace, "checkout")["data"]

    publish({"new-checkout": switch, "beta": switch}, "v1")
    source = make_source(name=f"shop-{uuid.uuid4().hex[:6]}", allowed_namespaces=["t*", f"{FLAKY}/t*"])
    first = sync(source)
    assert first["outcome"] == "applied", first["errors"]
    before = as_recorded(source)
    assert set(before) == {("checkout", "new-checkout"), ("checkout", "beta")}
    v1_published = published()

    # v2 turns new-checkout on, removes beta and adds fresh: at 25% its canary is written in flaky.
    steps = [{"setWeight": 25}, {"pause": {}}]
    publish({"new-checkout": switched_on, "fresh": switched_on}, "v2: on, beta goes, fresh comes", steps)
    sync(source)
    paused = wait_for(source, phase="Paused", waiting_for="approval", weight=25)
    canary = json.loads(published()["checkout.flagd.json"])
    assert canary["metadata"]["sluiceCanaryWeight"] == 25, "the rollout's canary is published in flaky"
    during = as_recorded(source)
    assert during[("checkout", "new-checkout")]["rollout_id"] == paused.pk
    assert during[("checkout", "new-checkout")]["default_variant"] == "on"
    assert during[("checkout", "fresh")]["rollout_id"] == paused.pk
    assert during[("checkout", "beta")]["removed"] and during[("checkout", "beta")]["rollout_id"] == paused.pk

    flaky.silence()
    decisions.rollout_abort(paused.pk, user=people["approver"], reason="not now")
    aborted = wait_for(source, phase="Aborted", of=paused)

    assert aborted.rollback_pending_clusters == [FLAKY]
    assert "rollback owed on flaky" in aborted.message
    assert json.loads(published()["checkout.flagd.json"]) == canary, "flaky still serves the canary"
    # Written with the rollout's end, in one transaction: read once it is Aborted.
    after = as_recorded(source)
    assert after == during, "the rows stay as the rollout left them"
    changed = ("checkout", "new-checkout")
    assert after[changed]["definition_hash"] != before[changed]["definition_hash"], "not rewritten to v1's"
    assert ("checkout", "fresh") in after and after[("checkout", "beta")]["removed"]

    flaky.answer()  # the owed rollback is retried by itself, and restores flaky
    poll(
        lambda: Rollout.objects.get(pk=aborted.pk).rollback_pending_clusters == [],
        timeout=120,
        what="the owed rollback of flaky",
    )
    assert published() == v1_published, "flaky serves v1 again"
    # The owed rollback, once done, lists the flag set as flaky serves it again: v1's, for everyone.
    restored = as_recorded(source)
    assert set(restored) == set(before), "fresh went, beta came back"
    for flag, row in restored.items():
        assert served(row) == served(before[flag]), flag
        assert row["rollout_id"] != aborted.pk and not row["removed"], flag
