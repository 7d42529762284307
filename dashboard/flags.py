"""The Flags page: every flag every source publishes, with staleness, filters and a CSV export.

It reads the flag catalog the worker keeps (``PublishedFlag``), never the cluster
and never the change log, so a page costs a few indexed queries whatever the
history holds.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.http import urlencode
from django.views.decorators.http import require_GET

from gitops import selectors
from gitops.vocabulary import Staleness

# What the page says about users who mix SDKs; tests/flagd.py checks both evaluators named here.
EVALUATORS_CHECKED = (
    ("flagd's Python core", "openfeature-flagd-core 2.x", "the CBOR encoding of [flagKey, targetingKey]"),
    ("flagd's JavaScript core", "@openfeature/flagd-core 4.0.1", "the string flagKey + targetingKey"),
)
EXPORT_COLUMNS = (
    "source",
    "cluster",
    "namespace",
    "flag_set",
    "key",
    "state",
    "variants",
    "default_variant",
    "targeting",
    "rollout",
    "rollout_phase",
    "share_percent",
    "removed",
    "changed_commit",
    "changed_at",
    "stale",
    "stale_reasons",
)


def _filters(request: HttpRequest) -> selectors.FlagFilters:
    staleness = request.GET.get("stale", "")
    return selectors.FlagFilters(
        source=request.GET.get("source", "").strip()[:63],
        cluster=request.GET.get("cluster", "").strip()[:253],
        staleness=Staleness(staleness) if staleness in set(Staleness) else Staleness.ANY,
        key=request.GET.get("key", "").strip()[:200],
    )


def _query(filters: selectors.FlagFilters) -> str:
    values = {
        "source": filters.source,
        "cluster": filters.cluster,
        "stale": filters.staleness.value,
        "key": filters.key,
    }
    return urlencode({name: value for name, value in values.items() if value})


@login_required
@permission_required(["gitops.view_source", "gitops.view_change"], raise_exception=True)
@require_GET
def flag_list(request: HttpRequest) -> HttpResponse:
    filters = _filters(request)
    now = timezone.now()
    if request.GET.get("format") == "csv":
        return _export(filters, now=now)
    after = request.GET.get("after", "")
    rows, next_after = selectors.flag_page(filters, after=int(after) if after.isdigit() else None, now=now)
    context = {
        "rows": rows,
        "filters": filters,
        "query": _query(filters),
        "next_after": next_after,
        "counts": selectors.flag_counts(filters, now=now),
        "choices": selectors.flag_filter_choices(),
        "staleness": [(Staleness.STALE, "stale only"), (Staleness.FRESH, "not stale")],
        "stale_days": selectors.stale_days(),
        "evaluators": EVALUATORS_CHECKED,
        "deep": bool(after),
    }
    return render(request, "dashboard/flags.html", context)


def _export(filters: selectors.FlagFilters, *, now: Any) -> StreamingHttpResponse:
    """Every matching flag as CSV (at most FLAG_EXPORT_LIMIT), streamed a chunk of rows at a time."""
    flags = selectors.published_flags(filters, now=now)[: selectors.FLAG_EXPORT_LIMIT]
    rows = (selectors.flag_row(flag, now=now) for flag in flags.iterator(chunk_size=500))
    response = StreamingHttpResponse(_csv_lines(rows), content_type="text/csv")
    response["Content-Disposition"] = 'attachment; filename="sluice-flags.csv"'
    return response


def _csv_lines(rows: Iterator[selectors.FlagRow]) -> Iterator[str]:
    class Echo:
        def write(self, value: str) -> str:
            return value

    writer = csv.writer(Echo())
    yield writer.writerow(EXPORT_COLUMNS)
    for row in rows:
        flag, rollout = row.flag, row.flag.rollout
        yield writer.writerow(
            _cell(value)
            for value in [
                flag.source.name,
                flag.cluster,
                flag.namespace,
                flag.flag_set,
                flag.key,
                flag.state,
                flag.variants,
                flag.default_variant,
                flag.targeting,
                rollout.pk if rollout else "",
                rollout.phase if rollout else "",
                row.share,
                "yes" if flag.removed else "no",
                flag.changed_commit,
                flag.changed_at.isoformat() if flag.changed_at else "",
                "yes" if row.stale_reasons else "no",
                "; ".join(reason.value for reason in row.stale_reasons),
            ]
        )


# A spreadsheet runs a cell that starts with one of these as a formula; keys come from repositories.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """The value as a CSV cell; text a spreadsheet would run as a formula is quoted with a leading '."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
