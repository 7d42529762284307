"""Dashboard pages. Reads go through gitops.selectors; every action calls a gitops service.

Every page needs a login; every POST is CSRF-checked by Django's middleware and
checked for its permission here, on the server, whatever the page showed.
"""

from __future__ import annotations

import csv
import functools
import hmac
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from dashboard import freezes as freeze_views
from dashboard.consumers import CONSUMERS_SHOWN, PINNED_HINT, configmap_readers, consumers_by_target
from dashboard.sources import source_admin_context
from dashboard.spreadsheet import csv_cell
from gitops import cluster_admin, health, metrics, schedule, selectors
from gitops.consumers.workloads import KINDS as WORKLOAD_KINDS
from gitops.errors import GitopsError
from gitops.intake import receive
from gitops.intake.webhooks import MAX_BODY_BYTES
from gitops.models import Approval, Cluster, ManagedObject, Rollout, RolloutEvent, Source, WebhookDelivery
from gitops.numerals import whole_number
from gitops.redaction import url_without_query
from gitops.rollout import decisions
from gitops.vocabulary import ChangeAction

PAGE_SIZE = 50
EXPORT_LIMIT = 100_000
CHANGE_FILTERS = ("source", "cluster", "commit", "namespace", "name", "action", "actor")


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is alive. Touches nothing else, so a slow database never restarts web pods."""
    return JsonResponse({"status": "ok"})


def _has_metrics_token(request: HttpRequest) -> bool:
    token = getattr(settings, "SLUICE_METRICS_TOKEN", "")
    if not token:
        return False
    sent = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(sent.encode(), token.encode())


@require_GET
def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format. It names every source with its phase and drift, so a deployment answers
    only a caller with the SLUICE_METRICS_TOKEN bearer token, unless SLUICE_METRICS_PUBLIC=1 says
    anyone may read it (the default only for local runs: DEBUG or SLUICE_ALLOW_HTTP)."""
    if not metrics.metrics_allowed(request.headers.get("Authorization", "")):
        token_set = bool(getattr(settings, "SLUICE_METRICS_TOKEN", ""))
        refusal = (
            "unauthorized\n"
            if token_set
            else "unauthorized: set SLUICE_METRICS_TOKEN (or SLUICE_METRICS_PUBLIC=1)\n"
        )
        return HttpResponse(refusal, status=401, content_type="text/plain")
    payload, content_type = metrics.render()
    return HttpResponse(payload, content_type=content_type)


@csrf_exempt  # as the API's own views: a POST to a wrong path is a 404, not an HTML CSRF 403
def api_not_found(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"detail": "no API operation has this path; see /api/docs"}, status=404)


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Database, broker and kube-apiserver reachable; 503 names the one that is not. Each registered
    cluster is listed (``cluster:NAME``) without deciding readiness.

    Anyone (a load balancer) learns which check fails; only a user who may view sources or a
    caller with the metrics token learns why, since error texts describe internals, and the member
    clusters at all: they do not decide readiness, and each anonymous request probed every one of them
    (threads and connections for anyone to pile up) and listed their names. An account without a
    role, refused every page, counted as an insider until 2026-12-07.
    """
    insider = request.user.has_perm("gitops.view_source") or _has_metrics_token(request)
    # An anonymous caller gets an answer shared for a moment (``health.readiness_shared``).
    checks = health.readiness(members=True) if insider else health.readiness_shared()
    ready = health.ready(checks)
    if not insider:
        checks = {name: "ok" if result == "ok" else "failing" for name, result in checks.items()}
    return JsonResponse(
        {"status": "ready" if ready else "not ready", "checks": checks}, status=200 if ready else 503
    )


DELIVERIES_SHOWN, REJECTED_DELIVERIES_SHOWN = 20, 5


def _deliveries_shown(source: Source) -> list[WebhookDelivery]:
    """The latest verified deliveries, and a few rejected ones beside them: anyone may send those, and
    20 a minute of them (the rows kept) pushed the real ones off the page."""
    rejected = WebhookDelivery.Outcome.REJECTED
    recent = source.deliveries.order_by("-received_at", "-id")
    verified = list(recent.exclude(outcome=rejected)[:DELIVERIES_SHOWN])
    refused = list(recent.filter(outcome=rejected)[:REJECTED_DELIVERIES_SHOWN])
    return sorted([*verified, *refused], key=lambda shown: (shown.received_at, shown.pk), reverse=True)


def can_act(user: Any) -> bool:
    return bool(user.has_perm(decisions.APPROVE_PERMISSION))


def can_sync(user: Any) -> bool:
    return can_act(user) or bool(user.has_perm("gitops.change_source"))


# -- overview ----------------------------------------------------------------------


# Past any real fleet (100 sources a page): a larger page number reads as the first page.
MAX_PAGE = 1_000_000


@login_required
@permission_required("gitops.view_source", raise_exception=True)
def overview(request: HttpRequest) -> HttpResponse:
    search = request.GET.get("q", "").strip()[:100]
    page = whole_number(request.GET.get("page", ""), maximum=MAX_PAGE) or 1
    rows, total = selectors.overview_rows(search=search, page=page)
    pages = max(1, -(-total // selectors.OVERVIEW_PAGE))
    if page > pages:  # a page past the last (sources removed, a stale link): the last, not "no sources yet"
        page = pages
        rows, total = selectors.overview_rows(search=search, page=page)
        pages = max(1, -(-total // selectors.OVERVIEW_PAGE))
    context = {
        "rows": rows,
        "total": total,
        "search": search,
        "page": page,
        "pages": pages,
        "previous_page": page - 1 if page > 1 else None,
        "next_page": page + 1 if page < pages else None,
    }
    template = "dashboard/_sources.html" if request.headers.get("HX-Request") else "dashboard/overview.html"
    return render(request, template, context)


# -- source ---------------------------------------------------------------------------


@login_required
@permission_required("gitops.view_source", raise_exception=True)
def source_detail(request: HttpRequest, name: str) -> HttpResponse:
    source = get_object_or_404(Source, name=name)
    readers = configmap_readers(source.consumer_map or {})
    cluster = request.GET.get("cluster", "").strip()[:63]
    plan = dict(source.last_plan or {})
    items = plan.get("items") or []
    # A stored plan keeps its first items only (gitops.plan.shown): how many more there are.
    more = max(0, int(plan.get("items_total") or len(items)) - len(items))
    managed = ManagedObject.objects.filter(source=source).order_by("cluster", "namespace", "name")
    if cluster:
        items = [item for item in items if item.get("cluster") == cluster]
        managed = managed.filter(cluster=cluster)
    context = {
        "source": source,
        "url": url_without_query(source.url),
        "revisions": list(source.revisions.order_by("-fetched_at", "-id")[:20]),
        "plan": plan,
        "plan_items": items,
        "plan_more": more,
        "managed": list(managed[:500]),
        "cluster": cluster,
        "clusters": _cluster_names(source.target_clusters or []),
        "rollouts": list(source.rollouts.select_related("revision").order_by("-id")[:10]),
        "can_sync": can_sync(request.user),
        "deliveries": _deliveries_shown(source),
        "webhook_url": request.build_absolute_uri(reverse("dashboard:webhook", args=[source.name])),
        "has_webhook_secret": bool(source.webhook_secret_encrypted),
        "readers": readers[:CONSUMERS_SHOWN],
        "readers_total": len(readers),
        **freeze_views.source_gate_context(request, source),
        **source_admin_context(request, source),
    }
    return render(request, "dashboard/source.html", context)


@login_required
@require_POST
def source_sync(request: HttpRequest, name: str) -> HttpResponse:
    if not can_sync(request.user):
        raise PermissionDenied("you may not sync sources")
    source = get_object_or_404(Source, name=name)
    # A finished rollout's field conflicts sent again, once the other manager let go (as `gitops sync
    # --retry-failed`): they are not tried at every poll, as other refusals are.
    retry = request.POST.get("retry_failed") == "on"
    with transaction.atomic():
        schedule.source_sync(source.pk, actor=request.user.get_username(), manual=True, retry_failed=retry)
    messages.success(
        request, f"Sync of {source.name} queued" + (", retrying refused changes." if retry else ".")
    )
    if request.headers.get("HX-Request"):
        return render(request, "dashboard/_message_area.html")  # swapped in place of #messages
    return redirect("dashboard:source", name=source.name)


# -- rollout --------------------------------------------------------------------------


def _cluster_names(also: list[str]) -> list[str]:
    """The clusters a filter offers: the default one, the registered ones, and any others named."""
    return sorted({settings.SLUICE_CLUSTER_NAME, *Cluster.objects.values_list("name", flat=True), *also})


def _rollout_context(request: HttpRequest, rollout: Rollout) -> dict[str, Any]:
    now = timezone.now()
    targets, targets_total = selectors.rollout_targets(rollout)
    cluster = request.GET.get("cluster", "").strip()[:63]
    target_clusters = sorted({target["cluster"] for target in targets})
    shown = [target for target in targets if not cluster or target["cluster"] == cluster]
    waiting_for_consumers = (
        rollout.phase == Rollout.Phase.PAUSED and rollout.waiting_for == Rollout.Waiting.CONSUMERS
    )
    consumer_targets = consumers_by_target((rollout.consumer_states or [])[:CONSUMERS_SHOWN])
    return {
        "rollout": rollout,
        "source": rollout.source,
        "revision": rollout.revision,
        "steps": list(enumerate(rollout.steps)),
        "targets": shown,
        "targets_total": targets_total,
        # The rollout page groups the objects it changed by cluster, and filters on one.
        "target_groups": [
            (name, [target for target in shown if target["cluster"] == name])
            for name in target_clusters
            if any(target["cluster"] == name for target in shown)
        ],
        "target_clusters": target_clusters,
        "cluster": cluster,
        # Their data (a consumer gate's every workload state) is never shown: not read every second.
        "events": list(RolloutEvent.objects.filter(rollout=rollout).defer("data").order_by("at", "id")),
        "approvals": list(Approval.objects.filter(rollout=rollout).order_by("at")),
        # A timed pause resumes at pause_until; a consumer gate fails there instead (shown as a deadline).
        "seconds_left": max(0, int((rollout.pause_until - now).total_seconds()))
        if rollout.pause_until and rollout.phase == Rollout.Phase.PAUSED and not waiting_for_consumers
        else None,
        "waiting_for_consumers": waiting_for_consumers,
        "consumer_targets": consumer_targets,
        "consumers_total": len(rollout.consumer_states or []),
        "consumers_shown": CONSUMERS_SHOWN,
        "pinned_hint": PINNED_HINT,
        "can_act": can_act(request.user),
        "can_waive": request.user.has_perm(decisions.WAIVE_PERMISSION),
        "at_gate": rollout.phase == Rollout.Phase.PAUSED and rollout.waiting_for == Rollout.Waiting.APPROVAL,
        **freeze_views.rollout_gate_context(request, rollout),
    }


# The rollout page polls every second: its source's plan and consumer map are never shown there.
ROLLOUT_SHOWN = Rollout.objects.select_related("source", "revision").defer(*Source.related_bulk("source"))


ROLLOUTS_PAGE = 50
ACTIVE = "active"  # the phase filter's "still going": progressing or paused


@login_required
@permission_required("gitops.view_rollout", raise_exception=True)
@require_GET
def rollout_list(request: HttpRequest) -> HttpResponse:
    """Every source's rollouts, newest first, by phase and source: the paused ones waiting for an
    approver, or what failed overnight, without opening each source (``gitops rollouts --phase``)."""
    phase = request.GET.get("phase", "")
    source = request.GET.get("source", "").strip()[:63]
    # A deleted source's rollouts stay in its history (the change log), not here: its page is gone, and a
    # new source may have its name.
    found = selectors.with_approval_count(ROLLOUT_SHOWN.filter(source__deleted_at__isnull=True))
    if phase == ACTIVE:
        found = found.filter(phase__in=Rollout.ACTIVE_PHASES)
    elif phase in Rollout.Phase.values:
        found = found.filter(phase=phase)
    else:
        phase = ""
    if source:
        found = found.filter(source__name=source)
    before = whole_number(request.GET.get("before", ""))
    if before is not None:  # keyset pages, as the change log's
        found = found.filter(id__lt=before)
    page = list(found.order_by("-id")[: ROLLOUTS_PAGE + 1])
    has_more = len(page) > ROLLOUTS_PAGE
    page = page[:ROLLOUTS_PAGE]
    selectors.strict_gates_count(page)  # the approvals each gate counts, in one query for the page
    context = {
        "rollouts": [selectors.rollout_status(rollout) for rollout in page],
        "phase": phase,
        "source": source,
        "phases": [ACTIVE, *Rollout.Phase.values],
        "sources": list(Source.objects.order_by("name").values_list("name", flat=True)),
        "query": urlencode({key: value for key, value in (("phase", phase), ("source", source)) if value}),
        "next_before": page[-1].pk if has_more and page else None,
    }
    return render(request, "dashboard/rollouts.html", context)


@login_required
@permission_required("gitops.view_rollout", raise_exception=True)
def rollout_detail(request: HttpRequest, rollout_id: int) -> HttpResponse:
    rollout = get_object_or_404(ROLLOUT_SHOWN, pk=rollout_id)
    template = (
        "dashboard/_rollout_live.html" if request.headers.get("HX-Request") else "dashboard/rollout.html"
    )
    return render(request, template, _rollout_context(request, rollout))


@login_required
@require_POST
def rollout_action(request: HttpRequest, rollout_id: int, action: str) -> HttpResponse:
    """Promote, promote to 100%, abort, retry or waive an owed rollback: the same services as the CLI
    and the API."""
    user = request.user
    comment = request.POST.get("comment", "").strip()[:2000]
    override = request.POST.get("override", "").strip()[:2000]  # while a freeze or a window holds it
    shown = whole_number(request.POST.get("step", ""))  # the step the page showed: a double click stops there
    promote = functools.partial(decisions.rollout_promote, rollout_id, user=user)
    try:
        if action == "promote":
            promote(comment=comment, override=override, at_step=shown)
            messages.success(request, "Approval recorded.")
        elif action == "promote-full":
            promote(full=True, comment=comment, override=override, at_step=shown)
            messages.success(request, "Promotion to 100% recorded.")
        elif action == "abort":
            decisions.rollout_abort(rollout_id, user=user, reason=comment)  # type: ignore[arg-type]
            messages.success(request, "Abort requested: rolling back.")
        elif action == "retry":
            again = decisions.rollout_retry(rollout_id, user=user)  # type: ignore[arg-type]
            messages.success(request, f"Retried as rollout {again.pk}.")
            return _go_to_rollout(request, again.pk)
        elif action == "waive-rollback":
            cluster = request.POST.get("cluster", "")[:63]
            decisions.rollout_rollback_waive(rollout_id, cluster=cluster, user=user, reason=comment)  # type: ignore[arg-type]
            messages.success(request, f"Rollback on {cluster} waived.")
        else:
            return HttpResponse(status=404)
    except GitopsError as exc:
        messages.error(request, str(exc))
    except Rollout.DoesNotExist:
        raise Http404(f"no rollout {rollout_id}") from None
    if request.headers.get("HX-Request"):
        # htmx swaps the live block in place and the message into the page's message area (once:
        # the live block's polling never carries messages): the page is never reloaded.
        rollout = get_object_or_404(ROLLOUT_SHOWN, pk=rollout_id)
        return render(request, "dashboard/_rollout_action.html", _rollout_context(request, rollout))
    return redirect("dashboard:rollout", rollout_id=rollout_id)


def _go_to_rollout(request: HttpRequest, rollout_id: int) -> HttpResponse:
    if request.headers.get("HX-Request"):
        response = HttpResponse(status=204)
        response["HX-Redirect"] = reverse("dashboard:rollout", args=[rollout_id])
        return response
    return redirect("dashboard:rollout", rollout_id=rollout_id)


# -- clusters ---------------------------------------------------------------------------


@login_required
@permission_required("gitops.view_source", raise_exception=True)
def clusters(request: HttpRequest) -> HttpResponse:
    """Each cluster: reachability and version (asked now, bounded), the sources targeting it, its objects."""
    return render(request, "dashboard/clusters.html", {"clusters": cluster_admin.clusters_status()})


# -- change log -------------------------------------------------------------------------


class UnreadableFilter(ValueError):
    """A change-log filter that names no moment: the page says so rather than ignoring it."""


def _filtered_changes(request: HttpRequest) -> tuple[Any, dict[str, str]]:
    filters = {
        key: request.GET.get(key, "").strip() for key in (*CHANGE_FILTERS, "since", "until", "rollout")
    }
    rollout = whole_number(filters["rollout"]) if filters["rollout"] else None
    if filters["rollout"] and rollout is None:
        raise UnreadableFilter(f"rollout: {filters['rollout'][:40]!r} is not a rollout's number")
    changes = selectors.change_log(**{key: filters[key] or None for key in CHANGE_FILTERS}, rollout=rollout)
    since, until = _moment("since", filters["since"]), _moment("until", filters["until"], end_of_day=True)
    if since:
        changes = changes.filter(at__gte=since)
    if until:
        changes = changes.filter(at__lte=until)
    return changes, filters


def _moment(field: str, text: str, *, end_of_day: bool = False) -> datetime | None:
    if not text:
        return None
    try:  # parse_* answer None for text of another shape, and raise for 2026-02-30 or 25:00
        moment = parse_datetime(text)
        if moment is None and (day := parse_date(text)):
            moment = datetime.combine(day, datetime.max.time() if end_of_day else datetime.min.time())
        if moment is not None and timezone.is_naive(moment):
            moment = timezone.make_aware(moment)
        if moment is not None:  # PostgreSQL refuses offsets past 15:59, which ISO 8601 allows
            moment = moment.astimezone(UTC)
    except (ValueError, OverflowError):
        moment = None
    if moment is None:
        raise UnreadableFilter(
            f"{field}: {text[:40]!r} is not a date or a time (2026-12-24 or 2026-12-24T18:00Z)"
        )
    return moment


@login_required
@permission_required("gitops.view_change", raise_exception=True)
def change_log(request: HttpRequest) -> HttpResponse:
    try:
        changes, filters = _filtered_changes(request)
    except UnreadableFilter as exc:
        return HttpResponse(str(exc), status=400, content_type="text/plain; charset=utf-8")
    export = request.GET.get("format")
    if export in ("csv", "json"):
        return _export(changes, export, bodies=request.GET.get("bodies") == "1")
    # Keyset pagination: a deep page costs what the first one does.
    before = whole_number(request.GET.get("before", ""))
    if before is not None:
        changes = changes.filter(id__lt=before)
    # The page shows no content bodies; leave them (up to 1 MiB a row) in the database, and the source's
    # stored plan and consumers (megabytes), which the join otherwise brought once for every row.
    page = list(
        changes.order_by("-id")
        .select_related("source")
        .defer("before", "after", "diff", "source__last_plan", "source__consumer_map")[: PAGE_SIZE + 1]
    )
    has_more = len(page) > PAGE_SIZE
    page = page[:PAGE_SIZE]
    query = urlencode({key: value for key, value in filters.items() if value})
    context = {
        "changes": page,
        "filters": filters,
        "query": query,
        "next_before": page[-1].pk if has_more and page else None,
        "actions": [action.value for action in ChangeAction],
        "workload_kinds": WORKLOAD_KINDS,
        "sources": list(Source.objects.order_by("name").values_list("name", flat=True)),
        "clusters": _cluster_names([filters["cluster"]] if filters["cluster"] else []),
    }
    return render(request, "dashboard/changes.html", context)


EXPORT_COLUMNS = [
    "at",
    "source",
    "commit",
    "cluster",
    "namespace",
    "kind",
    "name",
    "action",
    "actor",
    "step",
    "weight",
    "result",
    "error",
    "before_hash",
    "after_hash",
]
# Rows fetched per round trip. Bodies (full before/after content, up to 1 MiB each) are
# only read when asked for, in smaller chunks, so an export's memory stays bounded.
EXPORT_CHUNK = 500
EXPORT_CHUNK_WITH_BODIES = 50


def _export_rows(changes: Any, *, bodies: bool) -> Iterator[dict[str, Any]]:
    # Of the source its name and link template only: its stored plan and consumers (megabytes) came
    # with every row.
    rows = changes.order_by("-id").select_related("source").defer("source__last_plan", "source__consumer_map")
    if not bodies:
        # The key-level diff holds old and new values too: as large as the bodies, and as private.
        rows = rows.defer("before", "after", "diff")
    chunk = EXPORT_CHUNK_WITH_BODIES if bodies else EXPORT_CHUNK
    for change in rows[:EXPORT_LIMIT].iterator(chunk_size=chunk):
        entry = selectors.change_as_dict(change, with_diff=bodies)
        if bodies:
            entry["before"], entry["after"] = change.before, change.after
        yield entry


def _export(changes: Any, kind: str, *, bodies: bool) -> StreamingHttpResponse:
    """Streams the change log as CSV or a JSON array, a chunk of rows at a time.

    At most EXPORT_LIMIT rows, the newest: an export cut there says so in its file's name and in the
    ``X-Sluice-Export-Truncated`` header (the row count), where before it looked whole and lacked every
    older entry. Narrow the filters (a date range) or page through the API for the rest."""
    entries = _export_rows(changes, bodies=bodies)
    truncated = changes.order_by("-id")[EXPORT_LIMIT : EXPORT_LIMIT + 1].exists()
    name = f"sluice-changes-newest-{EXPORT_LIMIT}" if truncated else "sluice-changes"
    if kind == "json":
        response = StreamingHttpResponse(_json_array(entries), content_type="application/json")
    else:
        response = StreamingHttpResponse(_csv_lines(entries, bodies=bodies), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="{name}.{kind}"'
    if truncated:
        response["X-Sluice-Export-Truncated"] = str(EXPORT_LIMIT)
    return response


def _json_array(entries: Iterator[dict[str, Any]]) -> Iterator[str]:
    yield "["
    for index, entry in enumerate(entries):
        yield ("," if index else "") + json.dumps(entry)
    yield "]"


def _csv_lines(entries: Iterator[dict[str, Any]], *, bodies: bool) -> Iterator[str]:
    class Echo:
        def write(self, value: str) -> str:
            return value

    writer = csv.writer(Echo())
    columns = [*EXPORT_COLUMNS, "before", "after"] if bodies else EXPORT_COLUMNS
    yield writer.writerow(columns)
    for entry in entries:
        # An actor is a username or a command line's --by, free text that may start with "=" or "@".
        yield writer.writerow(
            [
                json.dumps(entry[c]) if isinstance(entry[c], dict | list) else csv_cell(entry[c])
                for c in columns
            ]
        )


# -- webhooks -----------------------------------------------------------------------------


@csrf_exempt  # signed by the Git server instead; there is no browser session here
@require_POST
def git_webhook(request: HttpRequest, name: str) -> JsonResponse:
    declared = request.headers.get("Content-Length", "")
    if declared.isascii() and declared.isdigit() and whole_number(declared, maximum=MAX_BODY_BYTES) is None:
        return JsonResponse({"status": "rejected", "reason": "body too large"}, status=413)
    body = request.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        return JsonResponse({"status": "rejected", "reason": "body too large"}, status=413)
    answer = receive.webhook_receive(name, request.headers, body)
    response = JsonResponse(answer.body, status=answer.status)
    if answer.retry_after is not None:
        response["Retry-After"] = str(answer.retry_after)
    return response
