"""GET /api/changes on a long log: pages by ``before`` (an id), a count that stops at a cap, items
without their diffs, and a fixed number of queries per page whatever the log holds.

The rows are written straight to the database (as ``tests.history`` does): what is tested is how
the API reads the log, not how a reconcile writes it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from dashboard import api as api_module
from gitops.models import ApplyIntent, Change, Source
from tests import history
from tests.integration.test_api import Api, issue_token

pytestmark = pytest.mark.django_db(transaction=True)

CHANGE_TABLE = '"gitops_change"'


@pytest.fixture
def viewer(people) -> Api:
    client = Api(issue_token(people["viewer"].username))
    client.get("/sources")  # the token's first use records last_used_at: not part of what is measured
    return client


def source_named(name: str) -> Source:
    return Source.objects.create(name=name, url="file:///nowhere.git")


def logged(source: Source, count: int, *, value: str = "1\n") -> list[int]:
    """``count`` changes of ``source``, each a key changed from ``value`` to ``value`` + "2\\n"; their ids.

    Their times do not follow their ids (a worker's clock against the database's order), so that a
    page ordered by time would not agree with a page by ``before``."""
    rollout = history.rollout(source)
    now = timezone.now()
    diff = [{"op": "change", "field": "data", "key": "blob", "old": value, "new": value + "2\n"}]
    intents = ApplyIntent.objects.bulk_create(
        ApplyIntent(
            rollout=rollout,
            source=source,
            namespace="team-a",
            name=f"cm-{index}",
            action="update",
            commit=rollout.revision.commit,
            status=ApplyIntent.Status.DONE,
        )
        for index in range(count)
    )
    changes = Change.objects.bulk_create(
        Change(
            intent=intent,
            source=source,
            rollout=rollout,
            commit=rollout.revision.commit,
            namespace=intent.namespace,
            name=intent.name,
            action=Change.Action.UPDATE,
            diff=diff,
            actor="sluice",
            at=now - timedelta(seconds=(index * 7) % 5),
            result=Change.Result.OK,
        )
        for index, intent in enumerate(intents)
    )
    return [change.pk for change in changes]


def listed(api: Api, **params: Any) -> dict[str, Any]:
    response = api.get("/changes", **params)
    assert response.status_code == 200, (params, response.content)
    return response.json()


def walk(api: Api, **params: Any) -> list[dict[str, Any]]:
    """Every page of a walk by ``before``, from the newest."""
    pages = [listed(api, **params)]
    while pages[-1]["next_before"] is not None:
        assert len(pages) < 100, "the walk does not end"
        pages.append(listed(api, before=pages[-1]["next_before"], **params))
    return pages


def ids_of(pages: list[dict[str, Any]]) -> list[int]:
    return [item["id"] for page in pages for item in page["items"]]


def test_a_walk_by_before_lists_every_change_once_newest_first_by_id(viewer):
    shop, other = source_named("shop"), source_named("other")
    shops = logged(shop, 10)
    logged(other, 3)  # the other's ids among the shop's
    shops += logged(shop, 10)
    everything = sorted(Change.objects.values_list("pk", flat=True), reverse=True)

    pages = walk(viewer, source="shop", limit=5)
    assert [len(page["items"]) for page in pages] == [5, 5, 5, 5]
    assert ids_of(pages) == sorted(shops, reverse=True)
    # The next page begins below the last item; a last page that is full still says it is the last.
    last_ids = [page["items"][-1]["id"] for page in pages]
    assert [page["next_before"] for page in pages] == [*last_ids[:-1], None]
    assert {(page["count"], page["count_exact"], page["limit"], page["offset"]) for page in pages} == {
        (20, True, 5, 0)
    }
    # Pages by offset are in the same order: a client may go on by before from any of them.
    by_offset = [listed(viewer, source="shop", limit=5, offset=offset) for offset in (0, 5, 10, 15)]
    assert ids_of(by_offset) == ids_of(pages)
    assert [page["next_before"] for page in by_offset] == [page["next_before"] for page in pages]

    unfiltered = walk(viewer, limit=7)
    assert [len(page["items"]) for page in unfiltered] == [7, 7, 7, 2]
    assert ids_of(unfiltered) == everything

    below_the_oldest = listed(viewer, before=min(everything))
    assert below_the_oldest == {
        "items": [],
        "count": 23,  # the count is of what the filters match, before aside
        "count_exact": True,
        "limit": 50,
        "offset": 0,
        "next_before": None,
    }
    for bad in (0, -1, 2**63, "x"):
        assert viewer.get("/changes", before=bad).status_code == 422, bad


def test_changes_logged_during_a_walk_do_not_shift_it(viewer):
    shop = source_named("shop")
    logged(shop, 9)
    before_the_walk = sorted(Change.objects.values_list("pk", flat=True), reverse=True)

    first = listed(viewer, limit=4)
    logged(shop, 5)  # newer: above the walk, where an offset page would have shifted by 5
    rest = walk_from(viewer, first["next_before"], limit=4)

    assert ids_of([first, *rest]) == before_the_walk


def walk_from(api: Api, before: int, **params: Any) -> list[dict[str, Any]]:
    pages = [listed(api, before=before, **params)]
    while pages[-1]["next_before"] is not None:
        pages.append(listed(api, before=pages[-1]["next_before"], **params))
    return pages


def test_the_count_stops_at_the_cap_and_says_so(viewer, monkeypatch):
    monkeypatch.setattr(api_module, "CHANGE_COUNT_CAP", 5)
    ids = logged(source_named("shop"), 12)
    logged(source_named("other"), 3)
    shops = sorted(ids, reverse=True)

    # By default the count is exact, as it always was: a client may compute its pages from it.
    exact = listed(viewer, source="shop", limit=4)
    assert (exact["count"], exact["count_exact"]) == (12, True)
    first = listed(viewer, source="shop", limit=4, count="capped")
    assert (first["count"], first["count_exact"]) == (5, False)
    assert first["next_before"] == first["items"][-1]["id"]
    other = listed(viewer, source="other", count="capped")
    assert (other["count"], other["count_exact"], other["next_before"]) == (3, True, None)

    # Past the offset: a client that pages by offset while offset < count still reaches the end.
    seen, offset, counts = [], 0, []
    while True:
        page = listed(viewer, source="shop", limit=4, offset=offset, count="capped")
        seen += [item["id"] for item in page["items"]]
        counts.append((page["count"], page["count_exact"]))
        offset += 4
        if offset >= page["count"]:
            break
    assert seen == shops
    assert counts == [(5, False), (9, False), (12, True)]

    pages = walk(viewer, source="shop", limit=4, count="capped")
    assert ids_of(pages) == shops
    assert {(page["count"], page["count_exact"]) for page in pages} == {(5, False)}
    assert viewer.get("/changes", count="roughly").status_code == 422


def test_diff_false_leaves_each_diff_out_and_unread(viewer):
    large = "".join(f"line {n}\n" for n in range(8_000))  # about 80 KiB a side
    logged(source_named("shop"), 3, value=large)

    with CaptureQueriesContext(connection) as with_diffs:
        full = viewer.get("/changes", source="shop")
    with CaptureQueriesContext(connection) as without:
        bare = viewer.get("/changes", source="shop", diff="false")

    assert full.status_code == bare.status_code == 200
    full_items, bare_items = full.json()["items"], bare.json()["items"]
    # By default as before: every entry whole, its unified text too.
    for item in full_items:
        [entry] = item["diff"]
        assert (entry["op"], entry["field"], entry["key"]) == ("change", "data", "blob")
        assert (entry["old"], entry["new"]) == (large, large + "2\n")
        assert entry["unified"].endswith("+2\n")
    assert [item["diff"] for item in bare_items] == [None] * 3
    assert [{**item, "diff": None} for item in full_items] == bare_items
    assert len(bare.content) * 100 < len(full.content)
    assert page_reads(with_diffs) and all('"gitops_change"."diff"' in sql for sql in page_reads(with_diffs))
    assert page_reads(without) and not any('"gitops_change"."diff"' in sql for sql in page_reads(without))
    assert viewer.get("/changes", diff="maybe").status_code == 422


def page_reads(captured: CaptureQueriesContext) -> list[str]:
    """The statements that read rows of the change log (not the count)."""
    sqls = [query["sql"] for query in captured.captured_queries]
    return [sql for sql in sqls if CHANGE_TABLE in sql and "COUNT(" not in sql]


def measured(api: Api, **params: Any) -> list[str]:
    """The statements a page sends, but the token's last_used_at, written once a minute at most."""
    with CaptureQueriesContext(connection) as captured:
        page = listed(api, **params)
    assert page["items"]
    sqls = [query["sql"] for query in captured.captured_queries]
    return [sql for sql in sqls if not sql.startswith('UPDATE "dashboard_apitoken"')]


def test_a_page_runs_the_same_few_queries_however_long_the_log(viewer):
    shop = source_named("shop")
    ids = logged(shop, 3)
    few = {
        "first": measured(viewer, limit=50, count="capped"),
        "by before": measured(viewer, limit=50, before=max(ids), count="capped"),
        "filtered": measured(viewer, limit=50, source="shop", before=max(ids), count="capped"),
    }
    ids += logged(shop, 120)
    # A reconciled source keeps its last plan, diffs and all: a page needs only the source's name.
    Source.objects.filter(pk=shop.pk).update(last_plan={"items": [{"diff": "x" * 100_000}]})
    many = {
        "first": measured(viewer, limit=50, count="capped"),
        "by before": measured(viewer, limit=50, before=max(ids), count="capped"),
        "filtered": measured(viewer, limit=50, source="shop", before=max(ids), count="capped"),
    }

    assert {name: len(sqls) for name, sqls in many.items()} == {name: len(sqls) for name, sqls in few.items()}
    cap = api_module.CHANGE_COUNT_CAP
    for name, sqls in many.items():
        log_reads = [sql for sql in sqls if CHANGE_TABLE in sql]
        assert len(log_reads) == 2, (name, log_reads)  # the page and its count
        count, page = sorted(log_reads, key=lambda sql: "COUNT(" not in sql)
        assert count.startswith("SELECT COUNT(*) FROM (SELECT ") and f"LIMIT {cap + 1})" in count, count
        assert page.endswith('ORDER BY "gitops_change"."id" DESC LIMIT 51'), page  # no OFFSET
        for column in ('"gitops_change"."before"', '"gitops_change"."after"', "last_plan", "consumer_map"):
            assert column not in page, (name, column)
    assert listed(viewer, limit=1)["items"][0]["source"] == "shop"


def test_the_changes_page_reads_neither_contents_nor_the_sources_stored_plan(people):
    """The dashboard's Changes page joins each row's source for its name: the join brought the source's
    stored plan and consumers (megabytes) once for every row of the page."""
    from django.test import Client

    shop = source_named("shop")
    logged(shop, 3)
    Source.objects.filter(pk=shop.pk).update(last_plan={"items": [{"diff": "x" * 100_000}]})
    page = Client()
    page.force_login(people["viewer"])
    with CaptureQueriesContext(connection) as captured:
        response = page.get("/changes/")
    assert response.status_code == 200
    assert response.content.decode().count("cm-") >= 3
    read = [query["sql"] for query in captured.captured_queries if CHANGE_TABLE in query["sql"]]
    assert read
    for sql in read:
        for column in ('"gitops_change"."before"', '"gitops_change"."diff"', '"last_plan"', '"consumer_map"'):
            assert column not in sql, sql
