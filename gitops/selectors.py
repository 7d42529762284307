"""Read-only queries shared by the CLI, the dashboard and the API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Count, QuerySet
from django.db.models.fields.json import KeyTransform

from gitops.desired.errors import ValidationError
from gitops.models import Change, ManagedObject, Revision, Rollout, Source
from gitops.plan import drift_count, out_of_sync
from gitops.redaction import redact_url


def source_status(source: Source) -> dict[str, Any]:
    latest = source.revisions.order_by("-fetched_at", "-id").first()
    applied = source.revisions.filter(outcome=Revision.Outcome.APPLIED).order_by("-fetched_at", "-id").first()
    active = (
        Rollout.objects.filter(source=source, phase__in=Rollout.ACTIVE_PHASES)
        .select_related("revision")
        .first()
    )
    summary = (latest.summary if latest else {}) or {}
    return {
        "name": source.name,
        "url": redact_url(source.url),
        "branch": source.branch,
        "path": source.path,
        "poll_interval_seconds": int(source.poll_interval.total_seconds()),
        "last_fetched_at": _iso(source.last_fetched_at),
        "last_synced_at": _iso(source.last_synced_at),
        "commit": source.last_commit,
        "applied_commit": applied.commit if applied else "",
        "revision": _revision(latest) if latest else None,
        "managed_objects": ManagedObject.objects.filter(source=source).count(),
        "drift": drift_count(summary),
        "conflicts": summary.get("conflict", 0),
        "active_rollout": rollout_status(active) if active else None,
        # Which workloads read which of the source's ConfigMaps, as the worker last saw them.
        "consumer_map": dict(source.consumer_map or {}),
        "consumer_map_at": _iso(source.consumer_map_at),
        "last_error": source.last_error,
        # A failing source backs off: how many failures in a row, and when it tries again.
        "consecutive_failures": source.consecutive_failures,
        "next_try_at": _iso(source.next_poll_at),
        "scope": {
            "namespaces": source.allowed_namespaces,
            "analysis_url_prefixes": source.analysis_url_prefixes,
            "required_approvals": source.required_approvals,
        },
    }


def _revision(revision: Revision) -> dict[str, Any]:
    return {
        "commit": revision.commit,
        "author": revision.author_email,
        "message": revision.message.splitlines()[0] if revision.message else "",
        "outcome": revision.outcome,
        "errors": [str(ValidationError.from_dict(e)) for e in revision.errors],
        "force_pushed_over": revision.force_pushed_over,
        "summary": revision.summary,
    }


def rollout_status(rollout: Rollout) -> dict[str, Any]:
    return {
        "id": rollout.pk,
        "source": rollout.source.name,
        "commit": rollout.revision.commit,
        "phase": rollout.phase,
        "step": rollout.step_index,
        "steps": len(rollout.steps),
        "weight": rollout.weight,
        "waiting_for": rollout.waiting_for,
        "pause_until": _iso(rollout.pause_until),
        "approvals": rollout.approvals.count(),
        "approvals_required": rollout.approvals_required,
        "message": rollout.message,
        "created_at": _iso(rollout.created_at),
        "finished_at": _iso(rollout.finished_at),
        # What a ConfigMap step does to the workloads that read it, and their state in the last wave.
        "consumers": rollout.consumers,
        "health_timeout_seconds": rollout.health_timeout_seconds,
        "consumer_states": [dict(state) for state in rollout.consumer_states or []],
    }


def change_log(
    *,
    source: str | None = None,
    commit: str | None = None,
    namespace: str | None = None,
    name: str | None = None,
    action: str | None = None,
    actor: str | None = None,
) -> QuerySet[Change]:
    changes = Change.objects.select_related("source").order_by("-at", "-id")
    if source:
        changes = changes.filter(source__name=source)
    if commit:
        changes = changes.filter(commit__startswith=commit.lower())
    if namespace:
        changes = changes.filter(namespace=namespace)
    if name:
        changes = changes.filter(name=name)
    if action:
        changes = changes.filter(action=action)
    if actor:
        changes = changes.filter(actor=actor)
    return changes


def change_as_dict(change: Change, *, with_diff: bool = True) -> dict[str, Any]:
    entry = {
        "id": change.pk,
        "at": _iso(change.at),
        "source": change.source.name,
        "commit": change.commit,
        "cluster": change.cluster,
        "namespace": change.namespace,
        "kind": change.kind,
        "name": change.name,
        "action": change.action,
        "actor": change.actor,
        "step": change.step_index,
        "weight": change.weight,
        "result": change.result,
        "error": change.error,
        "before_hash": change.before_hash,
        "after_hash": change.after_hash,
    }
    if with_diff:
        entry["diff"] = change.diff
    return entry


def changes_per_object(source: Source) -> dict[tuple[str, str], int]:
    rows = Change.objects.filter(source=source).values("namespace", "name").annotate(n=Count("id"))
    return {(row["namespace"], row["name"]): row["n"] for row in rows}


def _iso(value: Any) -> str | None:
    return value.isoformat() if value else None


# -- dashboard ------------------------------------------------------------------------

SYNC_STATES = ("Synced", "OutOfSync", "Progressing", "Paused", "Degraded", "Error")


@dataclass(frozen=True)
class SourceRow:
    source: Source
    state: str
    revision: Revision | None
    active: Rollout | None
    drift: int

    @property
    def errors(self) -> list[ValidationError]:
        if self.revision is None or self.revision.outcome != Revision.Outcome.REJECTED:
            return []
        return [ValidationError.from_dict(e) for e in self.revision.errors]


def sync_state(
    source: Source, revision: Revision | None, active: Rollout | None, last: Rollout | None
) -> str:
    """One word for a source, as Argo CD users expect it."""
    if (revision is not None and revision.outcome == Revision.Outcome.REJECTED) or source.last_error:
        return "Error"
    if active is not None:
        return "Paused" if active.phase == Rollout.Phase.PAUSED else "Progressing"
    if last is not None and last.phase in (Rollout.Phase.ABORTED, Rollout.Phase.FAILED):
        return "Degraded"
    summary = (source.last_plan or {}).get("summary", {})
    if revision is None or last is None or out_of_sync(summary):
        return "OutOfSync"
    return "Synced"


OVERVIEW_PAGE = 100


def overview_rows(*, search: str = "", page: int = 1) -> tuple[list[SourceRow], int]:
    """One page of sources with their state, in a fixed number of queries; and how many sources match."""
    matching = Source.objects.order_by("name")
    if search:
        matching = matching.filter(name__icontains=search)
    total = matching.count()
    start = (max(page, 1) - 1) * OVERVIEW_PAGE
    # Only the plan's summary is needed here, not every item of every plan.
    sources = list(
        matching.defer("last_plan").annotate(plan_summary=KeyTransform("summary", "last_plan"))[
            start : start + OVERVIEW_PAGE
        ]
    )
    ids = [source.pk for source in sources]
    latest_revisions = {
        r.source_id: r
        for r in Revision.objects.filter(source_id__in=ids)
        .defer("summary")
        .order_by("source_id", "-fetched_at", "-id")
        .distinct("source_id")
    }
    latest_rollouts = {
        r.source_id: r
        for r in Rollout.objects.filter(source_id__in=ids)
        .select_related("revision")
        .only(
            "id",
            "source_id",
            "phase",
            "step_index",
            "weight",
            "waiting_for",
            "steps",
            "revision__commit",
        )
        .order_by("source_id", "-id")
        .distinct("source_id")
    }
    rows = []
    for source in sources:
        last = latest_rollouts.get(source.pk)
        active = last if last is not None and last.is_active else None
        summary = getattr(source, "plan_summary", None) or {}
        source.last_plan = {"summary": summary}
        rows.append(
            SourceRow(
                source=source,
                state=sync_state(source, latest_revisions.get(source.pk), active, last),
                revision=latest_revisions.get(source.pk),
                active=active,
                drift=drift_count(summary),
            )
        )
    return rows, total


ROLLOUT_TARGETS_SHOWN = 200


def rollout_targets(
    rollout: Rollout, *, limit: int = ROLLOUT_TARGETS_SHOWN
) -> tuple[list[dict[str, Any]], int]:
    """The objects the rollout changed (ConfigMaps, restarted workloads), each with its latest change:
    at most ``limit``, and the total."""
    changes = Change.objects.filter(rollout=rollout)
    total = changes.values("namespace", "kind", "name").distinct().count()
    latest = (
        changes.order_by("namespace", "kind", "name", "-id")
        .distinct("namespace", "kind", "name")
        .values("namespace", "kind", "name", "action", "step_index", "weight", "result", "at", "actor")[
            :limit
        ]
    )
    rows = [
        {
            "namespace": row["namespace"],
            "kind": row["kind"],
            "name": row["name"],
            "action": row["action"],
            "step": row["step_index"],
            "weight": row["weight"],
            "result": row["result"],
            "at": row["at"],
            "actor": row["actor"],
        }
        for row in latest
    ]
    return rows, total
