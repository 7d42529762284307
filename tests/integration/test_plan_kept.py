"""A stored plan keeps its first objects and their diffs while they fit; the counts stay exact, and the
source page and the API say what was not kept."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from gitops import freezes, reconcile
from gitops.models import Source
from gitops.plan import shown
from tests.gitrepo import configmap, policy
from tests.integration.test_api import Api, issue_token

pytestmark = pytest.mark.django_db(transaction=True)

LARGE = "line\n" * 20_000  # 100,000 characters


def test_a_held_plan_keeps_its_first_objects_and_cuts_a_diff_too_large_to_carry(
    repo, make_namespaces, make_source, people, monkeypatch
):
    (namespace,) = make_namespaces("a")
    names = ["a-big", "b", "c", "d", "e"]

    def commit(version: str) -> None:
        files = {"sluice.yaml": policy([namespace])}
        for name in names:
            value = LARGE + version if name == "a-big" else version
            files[f"configmaps/{name}.yaml"] = configmap(name, {"v": value})
        repo.write_all(files)
        repo.commit(f"v{version}")

    commit("1")
    source = make_source()
    reconcile.source_sync(source.pk)  # in this process, so the limits below apply to it
    freezes.freeze_set(source, until=timezone.now() + timedelta(hours=1), reason="hold", by="ines")
    commit("2")
    monkeypatch.setattr(shown, "ITEMS_SHOWN", 3)
    monkeypatch.setattr(shown, "DIFF_CHARACTERS_SHOWN", 150_000)
    reconcile.source_sync(source.pk)

    plan = Source.objects.get(pk=source.pk).last_plan
    assert plan["summary"] == {"update": 5}
    assert (plan["items_total"], [item["name"] for item in plan["items"]]) == (5, ["a-big", "b", "c"])
    big, small = plan["items"][0], plan["items"][1]
    assert (big["diff"], big["diff_cut"], big["diff_keys"]) == ([], True, 1)
    assert [(d["key"], d["old"], d["new"]) for d in small["diff"]] == [("v", "1", "2")]

    viewer = Api(issue_token(people["viewer"].username))
    answer = viewer.get(f"/sources/{source.name}/plan").json()
    assert (answer["items_total"], len(answer["items"])) == (5, 3)
    assert (answer["items"][0]["diff_cut"], answer["items"][0]["diff_keys"]) == (True, 1)
    assert answer["items"][1]["diff_cut"] is False

    page = Client()
    page.force_login(people["viewer"])
    text = page.get(f"/sources/{source.name}/").content.decode()
    assert "And 2 more objects differ from Git, not kept with the plan" in text
    assert f"1 key differs; too large to show with the rest: <code>gitops diff {source.name}</code>" in text
    # A source not reconciled yet has no plan, said so (the count once made its empty plan a list).
    fresh = make_source(name="fresh")
    text = page.get(f"/sources/{fresh.name}/").content.decode()
    assert "No plan yet: the source has not been reconciled." in text
    assert 'class="plan-item' not in text
