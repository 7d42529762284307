"""GET /api/changes: the SQL a page and its count send, and the OpenAPI contract, without a database.

The SQL is compiled, or caught where Django would send it: what matters on a log of millions of rows
is its shape (an id range instead of an offset, a LIMIT under the count, no content columns).
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from django.db.models.sql.compiler import SQLCompiler
from django.db.models.sql.constants import SINGLE
from pydantic import ValidationError

from dashboard import api
from dashboard.api import ChangeFilters, ChangeQuery, PageIn


def page_sql(paging: PageIn, query: ChangeQuery) -> tuple[str, tuple[Any, ...]]:
    window = api.changes_window(api.changes_filtered(ChangeFilters(actor="sluice")), paging, query)
    sql, params = window.query.get_compiler("default").as_sql()
    return sql, tuple(params)


def test_a_page_by_before_is_an_id_range_newest_first_with_one_row_more():
    sql, params = page_sql(PageIn(limit=50, offset=0), ChangeQuery(before=1234))

    assert '"gitops_change"."id" < %s' in sql
    assert sql.endswith('ORDER BY "gitops_change"."id" DESC LIMIT 51')
    assert "OFFSET" not in sql
    assert params == ("sluice", 1234)


def test_an_offset_page_is_in_the_same_order_as_a_page_by_before():
    sql, _ = page_sql(PageIn(limit=20, offset=40), ChangeQuery())

    assert sql.endswith('ORDER BY "gitops_change"."id" DESC LIMIT 21 OFFSET 40')
    assert '"gitops_change"."id" <' not in sql


@pytest.mark.parametrize("diff", [True, False])
def test_a_page_reads_no_contents_and_of_its_source_only_the_name(diff):
    sql, _ = page_sql(PageIn(limit=50, offset=0), ChangeQuery(diff=diff))
    columns = sql.split(" FROM ", 1)[0]

    assert '"gitops_change"."before"' not in columns
    assert '"gitops_change"."after"' not in columns
    assert ('"gitops_change"."diff"' in columns) is diff
    source_columns = [c.strip() for c in columns.split(",") if '"gitops_source".' in c]
    assert source_columns == ['"gitops_source"."id"', '"gitops_source"."name"']


def counted(rows: int, offset: int) -> tuple[tuple[int, bool], list[tuple[str, tuple[Any, ...]]]]:
    """``changes_counted`` with the database answering ``rows``, and the SQL it was sent."""
    sent: list[tuple[str, tuple[Any, ...]]] = []

    def answer(compiler: SQLCompiler, result_type: str = "multi", *args: Any, **kwargs: Any) -> Any:
        sql, params = compiler.as_sql()
        sent.append((sql, tuple(params)))
        assert result_type == SINGLE
        return [rows]

    with mock.patch.object(SQLCompiler, "execute_sql", answer):
        result = api.changes_counted(api.changes_filtered(ChangeFilters(actor="sluice")), offset)
    return result, sent


def test_the_count_is_of_ids_in_a_limited_subquery(monkeypatch):
    monkeypatch.setattr(api, "CHANGE_COUNT_CAP", 100)
    _, sent = counted(7, offset=0)

    [(sql, params)] = sent
    assert sql.startswith("SELECT COUNT(*) FROM (SELECT ")
    assert sql.endswith(" LIMIT 101) subquery")
    assert "ORDER BY" not in sql
    assert '"gitops_source"' not in sql
    assert params == ("sluice",)


def test_the_count_stops_past_the_offset_and_says_when_it_did(monkeypatch):
    monkeypatch.setattr(api, "CHANGE_COUNT_CAP", 100)

    assert counted(7, offset=0)[0] == (7, True)
    assert counted(100, offset=0)[0] == (100, True)
    assert counted(101, offset=0)[0] == (100, False)
    # Past the offset: a client paging while offset < count still gets to the end.
    (count, exact), [(sql, _)] = counted(251, offset=150)
    assert (count, exact) == (250, False)
    assert sql.endswith(" LIMIT 251) subquery")


def test_before_and_diff_are_checked():
    assert ChangeQuery.model_validate({"before": "17", "diff": "false"}) == ChangeQuery(before=17, diff=False)
    assert ChangeQuery() == ChangeQuery(before=None, diff=True)
    for bad in ({"before": 0}, {"before": api.MAX_ID + 1}, {"before": "x"}, {"diff": "maybe"}):
        with pytest.raises(ValidationError):
            ChangeQuery.model_validate(bad)


def test_the_openapi_document_describes_before_diff_and_the_bounded_count():
    schema = api.api.get_openapi_schema()
    parameters = {p["name"]: p for p in schema["paths"]["/api/changes"]["get"]["parameters"]}
    assert {"limit", "offset", "before", "diff"} <= set(parameters)
    assert "next_before" in parameters["before"]["description"]
    assert parameters["diff"]["schema"]["default"] is True

    page = schema["components"]["schemas"]["ChangePage"]
    assert set(page["required"]) == {"items", "count", "count_exact", "limit", "offset", "next_before"}
    assert "10,000" in page["properties"]["count"]["description"]
    assert "lower bound" in page["properties"]["count_exact"]["description"]
    assert "null" in page["properties"]["next_before"]["description"]
    diff = schema["components"]["schemas"]["ChangeOut"]["properties"]["diff"]
    assert {"type": "null"} in diff["anyOf"]
    assert "diff" in schema["components"]["schemas"]["ChangeOut"]["required"]
