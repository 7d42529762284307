"""The Flags page: every flag every source publishes, with staleness, filters and a CSV export.

It reads the flag catalog the worker keeps (``PublishedFlag``), never the cluster
and never the change log, so a page costs a few indexed queries whatever the
history holds.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Iterator
from typing import Any, cast

from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_GET

from dashboard.spreadsheet import csv_cell
from dashboard.templatetags.sluice import commit_link
from gitops import selectors
from gitops.numerals import MAX_ROW_ID, whole_number
from gitops.vocabulary import FlagReach, Staleness

# What the page says about users who mix SDKs; tests/flagd.py checks both evaluators named here.
EVALUATORS_CHECKED = (
    (
        "flagd's Python core",
        "openfeature-flagd-core 2.x",
        'the CBOR encoding of the canary\'s key, "sluice-canary/" + the rollout\'s seed + "/" + targetingKey',
    ),
    ("flagd's JavaScript core", "@openfeature/flagd-core 4.0.1", "that key as a string"),
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
    "changes_at_full",
)


# Constant markup, no input in it.
STALE_CLASS = mark_safe(' class="flag-stale"')
REMOVED_BADGE = mark_safe('<div><span class="badge removed">removed in Git</span></div>')
NO_ROLLOUT = mark_safe('<span class="muted">none</span>')
NOT_PUBLISHED = mark_safe('<span class="muted">not published yet</span>')


def _lines(rows: list[selectors.FlagRow]) -> list[SafeString]:
    """The page's rows as HTML, made here: 50 rows of the template engine cost more than the budget allows."""
    urls: dict[tuple[str, Any], str] = {}

    def url(name: str, argument: Any) -> str:
        if (name, argument) not in urls:
            urls[(name, argument)] = reverse(name, args=[argument])
        return urls[(name, argument)]

    changes = reverse("dashboard:changes")
    lines = []
    for row in rows:
        flag = row.flag
        log = {"source": flag.source.name, "namespace": flag.namespace, "name": flag.flag_set}
        links = {
            "source": url("dashboard:source", flag.source.name),
            "rollout": url("dashboard:rollout", flag.rollout_id) if flag.rollout_id else "",
            "held_by": url("dashboard:rollout", flag.held_by_id) if flag.held_by_id else "",
            "changes": f"{changes}?{urlencode({**log, 'commit': flag.changed_commit})}",
        }
        lines.append(_row_html(row, links))
    return lines


# Flag keys are whatever a repository chose: the page shows at most this much of one (the CSV all).
MAX_KEY_CHARS = 200


def _shown(text: str, limit: int = MAX_KEY_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _row_html(row: selectors.FlagRow, links: dict[str, str]) -> SafeString:
    flag = row.flag
    key = _shown(flag.key)
    cluster = f" · cluster {flag.cluster}" if flag.cluster != "default" else ""
    where = f"{flag.namespace}/{flag.flag_set}{cluster}"
    return format_html(
        '<tr data-flag="{}" data-stale="{}"{}>'
        '<th scope="row"><code class="flag-key">{}</code>{}{}</th>'
        '<td data-label="Source"><a href="{}">{}</a><div class="muted">{}</div></td>'
        '<td data-label="State"><span class="state state-{}">{}</span></td>'
        '<td data-label="Variants">{}<div class="muted">default: {}</div></td>'
        '<td data-label="Targeting" class="targeting">{}</td><td data-label="Rollout">{}</td>{}'
        '<td data-label="Last changed">{}</td></tr>\n',
        key,
        "yes" if row.stale_reasons else "no",
        STALE_CLASS if row.stale_reasons else "",
        key,
        format_html(
            '<div><span class="badge stale">stale</span> <span class="muted stale-reasons">{}</span></div>',
            "; ".join(row.stale_words),
        )
        if row.stale_reasons
        else "",
        REMOVED_BADGE if flag.removed else "",
        links["source"],
        flag.source.name,
        where,
        flag.state.lower(),
        flag.state,
        flag.variants,
        flag.default_variant or "none (the code default)",
        flag.targeting,
        _rollout_html(row, links),
        _share_html(row),
        _changed_html(row, links["changes"]),
    )


def _rollout_html(row: selectors.FlagRow, links: dict[str, str]) -> SafeString:
    rollout = row.rollout
    if (later := row.changes_at_full) is not None:
        # Its variants change type, or it moves between flag sets: everyone switches at once at 100%.
        return format_html(
            '<a href="{}">#{}</a> <span class="badge changes-at-full">changes at 100%</span>'
            ' <span class="muted">now at {}%</span>',
            links["rollout"] if later.pk == row.flag.rollout_id else links["held_by"],
            later.pk,
            later.weight,
        )
    if rollout is None:
        return NO_ROLLOUT
    weight = format_html(' <span class="muted">at {}%</span>', rollout.weight) if row.rolling_out else ""
    return format_html(
        '<a href="{}">#{}</a> <span class="state state-{}">{}</span>{}',
        links["rollout"],
        rollout.pk,
        rollout.phase.lower(),
        rollout.phase,
        weight,
    )


def _share_html(row: selectors.FlagRow) -> SafeString:
    flag = row.flag
    note = ""
    if row.rolled_back:
        note = "rolled back: users keep the previous definition"
    elif row.rolling_out and flag.reach == FlagReach.AT_FULL:
        # It moves between flag sets (split on each side, flagd would give half the code default), or its
        # flag set was dropped and is served until the prune at 100.
        note = "everyone keeps it until 100%" if flag.removed else "nobody until 100%"
    elif row.rolling_out and flag.changed_at is None:
        note = "everyone keeps it until 100%" if flag.removed else "not published yet"
    elif row.changes_at_full is not None:
        note = "everyone, until the new definition replaces it for everyone at 100%"
    elif row.rolling_out and flag.reach == FlagReach.AT_ONCE:
        same = "removed for everyone at once" if flag.removed else "everyone at once"
        note = f"{same}: both definitions serve the same, so the canary does not split it"
    return format_html(
        '<td class="share" data-label="Users" data-share="{}"><progress max="100" value="{}"'
        ' aria-label="{}% of users on this definition of {}"></progress> {}%{}</td>',
        row.share,
        row.share,
        row.share,
        _shown(flag.key),
        row.share,
        format_html('<div class="muted">{}</div>', note) if note else "",
    )


def _changed_html(row: selectors.FlagRow, changes_link: str) -> SafeString:
    flag = row.flag
    if not flag.changed_commit or flag.changed_at is None:
        return NOT_PUBLISHED
    at = timezone.localtime(flag.changed_at)
    return format_html(
        '{}<div class="muted"><time datetime="{}">{}</time> · <a href="{}">change log</a></div>',
        commit_link(flag.source, flag.changed_commit),
        at.isoformat(),
        at.strftime("%Y-%m-%d %H:%M"),
        changes_link,
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


# A place is six short fields (names of at most 253 characters, a flag key of at most 256): far below this.
MAX_PLACE_TEXT = 8192


@login_required
@permission_required(["gitops.view_source", "gitops.view_change"], raise_exception=True)
@require_GET
def flag_list(request: HttpRequest) -> HttpResponse:
    filters = _filters(request)
    now = timezone.now()
    if request.GET.get("format") == "csv":
        return _export(filters, now=now)
    after = _place(request.GET.get("after", ""))
    rows, next_place = selectors.flag_page(filters, after=after, now=now)
    context = {
        "lines": _lines(rows),
        "filters": filters,
        "query": _query(filters),
        "next_after": _place_text(next_place) if next_place else "",
        "counts": selectors.flag_counts(filters, now=now),
        "choices": selectors.flag_filter_choices(),
        "staleness": [(Staleness.STALE, "stale only"), (Staleness.FRESH, "not stale")],
        "stale_days": selectors.stale_days(),
        "evaluators": EVALUATORS_CHECKED,
        "deep": bool(after),
    }
    return render(request, "dashboard/flags.html", context)


def _place_text(place: selectors.FlagPlace) -> str:
    """A page's end as the next page's ``after``: the place itself, as URL-safe base64 of its JSON."""
    return base64.urlsafe_b64encode(json.dumps(place, separators=(",", ":")).encode()).decode().rstrip("=")


def _place(text: str) -> selectors.FlagPlace | None:
    """The place ``after`` names; a flag's id (a link from before 2026-12-07) is looked up. Anything
    else is no place: the first page."""
    if (flag_id := whole_number(text)) is not None:
        return selectors.flag_place(flag_id)
    if not 0 < len(text) <= MAX_PLACE_TEXT:
        return None
    try:
        place = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: JSON nested 1,000 deep
        return None
    kinds = (str, str, str, str, str, int)
    if not (isinstance(place, list) and len(place) == len(kinds)):
        return None
    if not all(type(value) is kind for value, kind in zip(place, kinds, strict=True)):
        return None
    text_values = "".join(place[:5])
    if "\x00" in text_values or not 0 < place[5] <= MAX_ROW_ID:
        return None
    try:
        text_values.encode()
    except UnicodeEncodeError:  # a lone surrogate (\ud800), which the database driver cannot send
        return None
    return cast(selectors.FlagPlace, tuple(place))


def _export(filters: selectors.FlagFilters, *, now: Any) -> StreamingHttpResponse:
    """Every matching flag as CSV (at most FLAG_EXPORT_LIMIT), streamed in chunks of rows; an export cut
    there says so in its file's name and the ``X-Sluice-Export-Truncated`` header, as the change log's."""
    limit = selectors.FLAG_EXPORT_LIMIT
    truncated = selectors.published_flags(filters, now=now)[limit : limit + 1].exists()
    response = StreamingHttpResponse(
        _csv_chunks(selectors.flag_export(filters, now=now)), content_type="text/csv"
    )
    name = f"sluice-flags-first-{limit}" if truncated else "sluice-flags"
    response["Content-Disposition"] = f'attachment; filename="{name}.csv"'
    if truncated:
        response["X-Sluice-Export-Truncated"] = str(limit)
    return response


EXPORT_CHUNK_ROWS = 500


def _csv_chunks(records: Iterator[dict[str, Any]]) -> Iterator[str]:
    """The CSV text, EXPORT_CHUNK_ROWS rows a piece: a piece per row costs more than the rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    for index, record in enumerate(records, 1):
        writer.writerow(csv_cell(value) for value in _export_values(record))
        if index % EXPORT_CHUNK_ROWS == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _export_values(record: dict[str, Any]) -> list[Any]:
    changed_at = record["changed_at"]
    return [
        record["source__name"],
        record["cluster"],
        record["namespace"],
        record["flag_set"],
        record["key"],
        record["state"],
        record["variants"],
        record["default_variant"],
        record["targeting"],
        record["rollout_id"] or "",
        record["rollout_phase"],
        record["share"],
        "yes" if record["removed"] else "no",
        record["changed_commit"],
        changed_at.isoformat() if changed_at else "",
        "yes" if record["stale_reasons"] else "no",
        "; ".join(reason.value for reason in record["stale_reasons"]),
        record["changes_at_full"] or "",
    ]
