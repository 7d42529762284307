"""Read-only queries shared by the CLI, the dashboard and the API."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.fields.json import KeyTransform
from django.db.models.functions import Coalesce, Lower, Trim
from django.utils import timezone

from gitops.desired.errors import ValidationError
from gitops.desired.flag_keys import PublishedElsewhere, claimed_elsewhere
from gitops.models import (
    Approval,
    Change,
    Freeze,
    ManagedObject,
    PublishedFlag,
    Revision,
    Rollout,
    RolloutObjectCount,
    Source,
    SyncWindow,
    VerifiedEmail,
)
from gitops.plan import drift_count, out_of_sync
from gitops.plan.diff import readable_diff
from gitops.prepared import PreparedSelect
from gitops.redaction import redact, url_without_query
from gitops.vocabulary import MORE_COMMITS_THAN_READ, FlagReach, Staleness, StaleReason
from gitops.windows import FreezeRule, Gate, WindowRule, change_gate


def source_status(source: Source) -> dict[str, Any]:
    latest = source.revisions.order_by("-fetched_at", "-id").first()
    applied = source.revisions.filter(outcome=Revision.Outcome.APPLIED).order_by("-fetched_at", "-id").first()
    active = with_approval_count(
        Rollout.objects.filter(source=source, phase__in=Rollout.ACTIVE_PHASES).select_related("revision")
    ).first()
    summary = (latest.summary if latest else {}) or {}
    return {
        "name": source.name,
        "url": url_without_query(source.url),
        "branch": source.branch,
        "path": source.path,
        "poll_interval_seconds": int(source.poll_interval.total_seconds()),
        # Flux's suspend: polls, pushes and timers leave it alone; a sync someone asks for runs.
        "suspended": source.suspended,
        "suspended_at": _iso(source.suspended_at),
        "suspended_by": source.suspended_by,
        "last_fetched_at": _iso(source.last_fetched_at),
        "last_synced_at": _iso(source.last_synced_at),
        "commit": source.last_commit,
        "applied_commit": applied.commit if applied else "",
        "revision": _revision(latest) if latest else None,
        "managed_objects": ManagedObject.objects.filter(source=source).count(),
        "drift": drift_count(summary),
        "conflicts": summary.get("conflict", 0),
        "active_rollout": rollout_status(active) if active else None,
        # Ended rollouts whose rollback some cluster has not answered yet.
        "rollbacks_owed": [
            rollout_status(owing)
            for owing in with_approval_count(
                Rollout.objects.filter(source=source).exclude(rollback_pending_clusters=[])
            )
            .select_related("revision", "source")
            .order_by("-id")[:20]
        ],
        "target_clusters": list(source.target_clusters or []),
        # Which workloads read which of the source's ConfigMaps, as the worker last saw them.
        "consumer_map": dict(source.consumer_map or {}),
        "consumer_map_at": _iso(source.consumer_map_at),
        "last_error": redact(source.last_error),
        # A failing source backs off: how many failures in a row, and when it tries again.
        "consecutive_failures": source.consecutive_failures,
        "next_try_at": _iso(source.next_poll_at),
        # A freeze or a sync window that holds the source's changes back now, and why.
        "gate": source_gate(source).as_dict(),
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
        "errors": [redact(str(ValidationError.from_dict(e))) for e in revision.errors],
        "force_pushed_over": revision.force_pushed_over,
        "summary": revision.summary,
    }


def rollout_for_status(rollout_id: int) -> Rollout:
    """A rollout as ``rollout_status`` reads it: its source, revision and approval count in one query."""
    return with_approval_count(Rollout.objects.select_related("source", "revision").defer("flag_claims")).get(
        pk=rollout_id
    )


def with_approval_count(rollouts: QuerySet[Rollout]) -> QuerySet[Rollout]:
    """``rollouts``, each with the approvals at the step it is at that count (``approval_count``: of
    people who may approve now, as the gate counts them), in the same query: what ``rollout_status``
    reads, for a list without a query per rollout."""
    # A subquery, not an aggregate: a list that takes each source's newest (DISTINCT ON) cannot group.
    counted = (
        Approval.objects.filter(
            rollout_id=OuterRef("pk"), step_index=OuterRef("step_index"), user_id__in=approvers_now()
        )
        .order_by()
        .values("rollout_id")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return rollouts.annotate(approval_count=Coalesce(Subquery(counted), 0))


def approvers_now() -> QuerySet[Any]:
    """The ids of the users who may approve now: active, and holding ``approve_rollout`` (through a
    role's group, a permission of their own, or as a superuser)."""
    approve = Permission.objects.filter(codename="approve_rollout", content_type__app_label="gitops")
    may_approve = Q(is_superuser=True) | Q(user_permissions__in=approve) | Q(groups__permissions__in=approve)
    return get_user_model().objects.filter(may_approve, is_active=True).values("pk")


def rollout_approvals_counted(rollout: Rollout, gate: int) -> QuerySet[Approval]:
    """The gate's approvals that count: those of people who may approve now, so an approval given before
    its approver was deactivated or lost the role does not count towards a gate of several. Where the
    rollout forbids self-approval, only those of people with a verified email that no commit of the
    rollout names: an author's approval given before an administrator's floor forbade it does not
    count after."""
    approvals = Approval.objects.filter(rollout=rollout, step_index=gate, user_id__in=approvers_now())
    if not rollout.forbid_self_approval:
        return approvals
    authors = rollout_authors(rollout)
    if MORE_COMMITS_THAN_READ in authors:  # not every author is known: no approval is independent
        return approvals.none()
    independent = VerifiedEmail.objects.annotate(lowered=Lower(Trim("email"))).exclude(lowered__in=authors)
    return approvals.filter(user_id__in=independent.values("user_id"))


def rollout_authors(rollout: Rollout) -> set[str]:
    return set(rollout.commit_identities) or {rollout.revision.author_email.strip().lower()}


def strict_gates_count(rollouts: Sequence[Rollout]) -> None:
    """For a list: the gate's count of each active rollout that forbids self-approval, for all of them in
    one query (``strict_approval_count``, which ``_approvals_at_its_gate`` reads); it ran one query per
    such rollout (until 2026-12-07: a page of 200 was 200 more). Counted as ``rollout_approvals_counted``
    counts: approvers now whose verified email no commit of the rollout names."""
    strict = {r.pk: r for r in rollouts if r.forbid_self_approval and r.phase in Rollout.ACTIVE_PHASES}
    if not strict:
        return
    at_gates = Q()
    for rollout in strict.values():
        at_gates |= Q(rollout_id=rollout.pk, step_index=rollout.step_index)
    approvals = Approval.objects.filter(at_gates, user_id__in=approvers_now()).values_list(
        "rollout_id", "user__verified_email__email"
    )
    authors = {pk: rollout_authors(rollout) for pk, rollout in strict.items()}
    counts = dict.fromkeys(strict, 0)
    for rollout_id, email in approvals:
        # As SQL's LOWER(TRIM(email)) in rollout_approvals_counted: spaces only.
        known = MORE_COMMITS_THAN_READ not in authors[rollout_id]
        if known and email is not None and email.strip(" ").lower() not in authors[rollout_id]:
            counts[rollout_id] += 1
    for pk, rollout in strict.items():
        rollout.strict_approval_count = counts[pk]  # type: ignore[attr-defined]


def _approvals_at_its_gate(rollout: Rollout) -> int:
    """The approvals of the step the rollout is at, the ones ``approvals_required`` is about (every gate's
    together could not be compared with it), counted as the gate counts them: only people who may approve
    now, and not an author's where self-approval is forbidden. A list reads ``with_approval_count``'s.
    (Until 2026-12-07 a list counted every approval at the step: one given before its approver lost the
    role showed, where the gate did not count it.)"""
    strict = getattr(rollout, "strict_approval_count", None)
    if strict is not None:
        return int(strict)
    counted = getattr(rollout, "approval_count", None)
    if counted is None or (rollout.forbid_self_approval and rollout.phase in Rollout.ACTIVE_PHASES):
        return rollout_approvals_counted(rollout, rollout.step_index).count()
    return int(counted)


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
        "approvals": _approvals_at_its_gate(rollout),
        "approvals_required": rollout.approvals_required,
        "message": redact(rollout.message),
        "created_at": _iso(rollout.created_at),
        "finished_at": _iso(rollout.finished_at),
        # What a ConfigMap step does to the workloads that read it, and their state in the last wave.
        "consumers": rollout.consumers,
        "health_timeout_seconds": rollout.health_timeout_seconds,
        "consumer_states": [dict(state) for state in rollout.consumer_states or []],
        # Clusters an abort (or a failure) could not restore yet; restored as soon as they answer.
        "rollback_pending_clusters": list(rollout.rollback_pending_clusters or []),
        # The seed its flag canaries hash with each targeting key: one set of users for every flag.
        "flag_population": rollout.flag_population,
    }


def change_log(
    *,
    source: str | None = None,
    commit: str | None = None,
    namespace: str | None = None,
    name: str | None = None,
    action: str | None = None,
    actor: str | None = None,
    cluster: str | None = None,
    rollout: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[Change]:
    """The change log, newest first, narrowed by each filter given: the dashboard's, the API's and
    ``gitops log``'s (``until`` is exclusive)."""
    changes = Change.objects.select_related("source").order_by("-at", "-id")
    if rollout is not None:  # its steps, its rollback, and its heals: what its page counts
        changes = changes.filter(rollout_id=rollout)
    if source:
        # By id, not by a join on the name: then the (source, id) index serves a page of the log,
        # where the join made PostgreSQL walk the whole log newest first. A removed source's name
        # may be taken again, so every source ever called so is one of them.
        ids = list(Source.all_objects.filter(name=source).values_list("pk", flat=True))
        changes = changes.filter(source_id__in=ids)
    if cluster:
        changes = changes.filter(cluster=cluster)
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
    if since is not None:
        changes = changes.filter(at__gte=since)
    if until is not None:
        changes = changes.filter(at__lt=until)
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
        "error": redact(change.error) if change.error else "",  # rows logged before errors were redacted
        "before_hash": change.before_hash,
        "after_hash": change.after_hash,
    }
    if with_diff:
        entry["diff"] = readable_diff(change.diff)
    return entry


def changes_per_object(source: Source) -> dict[tuple[str, str, str], int]:
    rows = Change.objects.filter(source=source).values("cluster", "namespace", "name").annotate(n=Count("id"))
    return {(row["cluster"], row["namespace"], row["name"]): row["n"] for row in rows}


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


def source_row(source: Source) -> SourceRow:
    """One source's overview row (its state in one word, its latest revision and rollout), in three
    queries: the plan is read for its summary only."""
    summary = (
        Source.objects.filter(pk=source.pk)
        .annotate(plan_summary=KeyTransform("summary", "last_plan"))
        .values_list("plan_summary", flat=True)
        .first()
    ) or {}
    revision = source.revisions.defer("summary").order_by("-fetched_at", "-id").first()
    last = Rollout.objects.filter(source=source).select_related("revision").order_by("-id").first()
    active = last if last is not None and last.is_active else None
    source.last_plan = {"summary": summary}
    state = sync_state(source, revision, active, last)
    return SourceRow(source=source, state=state, revision=revision, active=active, drift=drift_count(summary))


ROLLOUT_TARGETS_SHOWN = 200


def rollout_targets(
    rollout: Rollout, *, limit: int = ROLLOUT_TARGETS_SHOWN
) -> tuple[list[dict[str, Any]], int]:
    """The objects the rollout changed (ConfigMaps, restarted workloads), each with its latest change:
    at most ``limit``, and the total.

    The total is the count the database keeps as it logs changes (``RolloutObjectCount``): counting
    the distinct objects of 20,000 entries on every view cost more than the page's 150 ms budget."""
    total = RolloutObjectCount.objects.filter(rollout=rollout).values_list("total", flat=True).first() or 0
    latest = (
        Change.objects.filter(rollout=rollout)
        .order_by("cluster", "namespace", "kind", "name", "-id")
        .distinct("cluster", "namespace", "kind", "name")
        .values(
            "cluster", "namespace", "kind", "name", "action", "step_index", "weight", "result", "at", "actor"
        )[:limit]
    )
    rows = [
        {
            "cluster": row["cluster"],
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


# -- freezes and sync windows: the gate of a source now ------------------------------------


@dataclass(frozen=True)
class Rules:
    """Every freeze in force and every sync window, loaded once: gates for many sources cost two queries."""

    freezes: tuple[FreezeRule, ...]
    windows: tuple[WindowRule, ...]
    at: datetime

    def gate(self, source: str) -> Gate:
        return change_gate(source, self.at, self.freezes, self.windows)


def _freezes_in_force_query(at: datetime) -> QuerySet[Freeze]:
    return (
        Freeze.objects.filter(lifted_at__isnull=True, until__gt=at)
        .select_related("source")
        .defer(*Source.related_bulk("source"))  # every pass and every page asks: names, not plans
        .order_by("until")
    )


# Every pass asks both (its change gate): compiled once.
_FREEZES_IN_FORCE: PreparedSelect[Freeze] = PreparedSelect(_freezes_in_force_query, datetime)
_WINDOWS_IN_FORCE: PreparedSelect[SyncWindow] = PreparedSelect(
    lambda: SyncWindow.objects.filter(removed_at__isnull=True).order_by("id")
)


def freezes_in_force(at: datetime | None = None, *, limit: int | None = None) -> list[Freeze]:
    at = at or timezone.now()
    if limit is not None:
        return list(_freezes_in_force_query(at)[:limit])
    return _FREEZES_IN_FORCE(at)


def windows_in_force() -> list[SyncWindow]:
    return _WINDOWS_IN_FORCE()


def rules_now(
    at: datetime | None = None,
    *,
    freezes: Sequence[Freeze] | None = None,
    windows: Sequence[SyncWindow] | None = None,
) -> Rules:
    """The freezes and windows in force at ``at``; a page that has read them already passes them in."""
    at = at or timezone.now()
    return Rules(
        freezes=tuple(freeze.as_rule() for freeze in (freezes_in_force(at) if freezes is None else freezes)),
        windows=tuple(window.as_rule() for window in (windows_in_force() if windows is None else windows)),
        at=at,
    )


def source_gate(source: Source, at: datetime | None = None) -> Gate:
    """May ``source``'s changes go out now? Automatic ones, and a person's sync."""
    return rules_now(at).gate(source.name)


def freeze_history(limit: int = 20) -> list[Freeze]:
    """Recent freezes that ended (lifted or run out), newest first."""
    ended = Q(lifted_at__isnull=False) | Q(until__lte=timezone.now())
    shown = Freeze.objects.filter(ended).select_related("source").defer(*Source.related_bulk("source"))
    return list(shown.order_by("-created_at", "-id")[:limit])


def freeze_as_dict(freeze: Freeze) -> dict[str, Any]:
    return {
        "id": freeze.pk,
        "source": freeze.source.name if freeze.source else None,
        "all_sources": freeze.source_id is None,
        "until": _iso(freeze.until),
        "reason": freeze.reason,
        "created_by": freeze.created_by,
        "created_at": _iso(freeze.created_at),
        "lifted_by": freeze.lifted_by,
        "lifted_at": _iso(freeze.lifted_at),
    }


def window_as_dict(window: SyncWindow, rules: Rules) -> dict[str, Any]:
    rule = window.as_rule()
    opened = rule.opened_at(rules.at)
    return {
        "id": window.pk,
        "kind": window.kind,
        "schedule": window.schedule,
        "duration_seconds": int(window.duration.total_seconds()),
        "time_zone": window.time_zone,
        "sources": list(window.sources or []),
        "manual_sync": window.manual_sync,
        "open_now": opened is not None,
        "opened_at": _iso(opened),
        "closes_at": _iso(opened + rule.duration) if opened else None,
        "next_opening": _iso(rule.next_opening(rules.at)),
        "created_by": window.created_by,
        "created_at": _iso(window.created_at),
    }


# -- flags ------------------------------------------------------------------------------

FLAGS_PAGE = 50
FLAG_EXPORT_LIMIT = 100_000
# The page's order, which its keyset pagination walks: a deep page costs what the first does.
FLAG_ORDER = ("source__name", "cluster", "namespace", "flag_set", "key", "id")
ROLLED_BACK_PHASES = (Rollout.Phase.ABORTED, Rollout.Phase.FAILED, Rollout.Phase.SUPERSEDED)


_FLAG_COLUMNS = (
    "source",
    "cluster",
    "namespace",
    "flag_set",
    "key",
    "state",
    "variants",
    "variant_count",
    "default_variant",
    "targeting",
    "serves_one_variant",
    "removed",
    "rollout",
    "held_by",
    "reach",
    "changed_commit",
    "changed_at",
)


@dataclass(frozen=True)
class FlagFilters:
    source: str = ""
    cluster: str = ""
    staleness: Staleness = Staleness.ANY
    key: str = ""  # part of the flag key


@dataclass(frozen=True)
class FlagRow:
    """One flag as the Flags page and its CSV show it."""

    flag: PublishedFlag
    stale_reasons: tuple[StaleReason, ...]
    share: int  # percent of users the flag's definition (or its removal) reaches

    @property
    def rollout(self) -> Rollout | None:
        return self.flag.rollout

    @property
    def stale_words(self) -> list[str]:
        return [
            f"unchanged for over {stale_days()} days" if reason is StaleReason.UNCHANGED else reason.value
            for reason in self.stale_reasons
        ]

    @property
    def rolling_out(self) -> bool:
        return self.flag.rollout is not None and self.flag.rollout.is_active

    @property
    def rolled_back(self) -> bool:
        rollout = self.flag.rollout
        return rollout is not None and rollout.phase in ROLLED_BACK_PHASES

    @property
    def changes_at_full(self) -> Rollout | None:
        """The running rollout that gives every user a new definition of this flag (or its removal) at once
        at 100%: its variants change type, and everyone has this one until then; or it moves between flag
        sets, and nobody has this row's change until then."""
        rollout = self.flag.rollout
        if self.flag.reach == FlagReach.AT_FULL and rollout is not None and rollout.is_active:
            return rollout
        held_by = self.flag.held_by
        before = self.flag.rollout_id != self.flag.held_by_id  # the row is not yet that rollout's
        return held_by if held_by is not None and held_by.is_active and before else None


def stale_days() -> int:
    return int(settings.SLUICE_STALE_FLAG_DAYS)


def stale_before(now: datetime) -> datetime:
    """Flags that last changed before this are stale (SLUICE_STALE_FLAG_DAYS)."""
    return now - timedelta(days=stale_days())


def _stale(now: datetime) -> Q:
    return Q(removed=False) & (Q(serves_one_variant=True) | Q(changed_at__lt=stale_before(now)))


def published_flags(filters: FlagFilters, *, now: datetime) -> QuerySet[PublishedFlag]:
    flags = PublishedFlag.objects.select_related("source", "rollout", "held_by").only(
        *_FLAG_COLUMNS,
        "source__name",
        "source__commit_url_template",
        "rollout__phase",
        "rollout__weight",
        "held_by__phase",
        "held_by__weight",
    )
    if filters.source:
        flags = flags.filter(source__name=filters.source)
    if filters.cluster:
        flags = flags.filter(cluster=filters.cluster)
    if filters.key:
        flags = flags.filter(key__icontains=filters.key)
    if filters.staleness is Staleness.STALE:
        flags = flags.filter(_stale(now))
    elif filters.staleness is Staleness.FRESH:
        flags = flags.exclude(_stale(now))
    return flags.order_by(*FLAG_ORDER)


FlagPlace = tuple[str, str, str, str, str, int]  # a flag's values of FLAG_ORDER: where a page ends


def flag_place(flag_id: int) -> FlagPlace | None:
    """Where the flag with id ``flag_id`` stands in FLAG_ORDER (None: no such flag now)."""
    found = PublishedFlag.objects.filter(pk=flag_id).values_list(*FLAG_ORDER).first()
    return cast(FlagPlace, tuple(found)) if found is not None else None


def flag_page(
    filters: FlagFilters, *, after: FlagPlace | None = None, now: datetime, limit: int = FLAGS_PAGE
) -> tuple[list[FlagRow], FlagPlace | None]:
    """One page of flags in FLAG_ORDER, after the place ``after``; and the place to continue after. A
    place, not a flag's id: the flag a page ended on may be deleted before the next is asked (removed at
    100, rolled back, its source deleted), and the next page then began at the first again."""
    flags = published_flags(filters, now=now)
    if after is not None:
        flags = flags.filter(_after(dict(zip(FLAG_ORDER, after, strict=True))))
    page = list(flags[: limit + 1])
    rows = [flag_row(flag, now=now) for flag in page[:limit]]
    if len(page) <= limit:
        return rows, None
    last = page[limit - 1]
    return rows, (last.source.name, last.cluster, last.namespace, last.flag_set, last.key, last.pk)


def _after(last: dict[str, Any]) -> Q:
    """Rows after ``last`` in FLAG_ORDER: (a > x) or (a = x and b > y) or ..."""
    condition = Q()
    equal = Q()
    for name, value in last.items():
        condition |= equal & Q(**{f"{name}__gt": value})
        equal &= Q(**{name: value})
    return condition


def flag_row(flag: PublishedFlag, *, now: datetime) -> FlagRow:
    rollout = flag.rollout
    return FlagRow(
        flag=flag,
        stale_reasons=stale_reasons(
            flag.serves_one_variant, flag.changed_at, flag.removed, stale_before(now)
        ),
        share=flag_share(
            rollout.phase if rollout else None,
            rollout.weight if rollout else 0,
            flag.changed_at,
            FlagReach(flag.reach),
        ),
    )


def stale_reasons(
    serves_one_variant: bool, changed_at: datetime | None, removed: bool, cutoff: datetime
) -> tuple[StaleReason, ...]:
    """Why a flag is stale (nothing: it is not); a flag that is being removed never is."""
    if removed:
        return ()
    reasons = [StaleReason.ONE_VARIANT] if serves_one_variant else []
    if changed_at is not None and changed_at < cutoff:
        reasons.append(StaleReason.UNCHANGED)
    return tuple(reasons)


def flag_share(
    phase: str | None, weight: int, changed_at: datetime | None, reach: FlagReach = FlagReach.SPLIT
) -> int:
    """The percent of users a flag's definition (or, for a removed flag, its removal) reaches now.

    ``phase`` and ``weight`` are those of the rollout that brought or brings it (None: no rollout);
    ``reach``: whether its canary splits it (``FlagReach``).
    """
    if phase is None:
        return 100  # recorded as Git has it, with no rollout of it running
    if phase in Rollout.ACTIVE_PHASES:
        # Not yet published (a step at weight 0, a flag set Git no longer has or a flag moving between
        # sets, before 100%).
        if changed_at is None or reach is FlagReach.AT_FULL:
            return 0
        return 100 if reach is FlagReach.AT_ONCE else weight
    return 100 if phase == Rollout.Phase.COMPLETED else 0  # otherwise rolled back


# What the CSV export reads of each flag: plain values, no model instances (20,000 rows at a time).
FLAG_EXPORT_FIELDS = (
    "source__name",
    "cluster",
    "namespace",
    "flag_set",
    "key",
    "state",
    "variants",
    "default_variant",
    "targeting",
    "rollout_id",
    "rollout__phase",
    "rollout__weight",
    "removed",
    "changed_commit",
    "changed_at",
    "serves_one_variant",
    "held_by_id",
    "held_by__phase",
    "reach",
)


def flag_export(filters: FlagFilters, *, now: datetime) -> Iterator[dict[str, Any]]:
    """Every matching flag (at most FLAG_EXPORT_LIMIT) as a plain record, read in chunks."""
    cutoff = stale_before(now)
    flags = published_flags(filters, now=now).values_list(*FLAG_EXPORT_FIELDS)[:FLAG_EXPORT_LIMIT]
    for values in flags.iterator(chunk_size=2000):
        record = dict(zip(FLAG_EXPORT_FIELDS, values, strict=True))
        phase, changed_at, reach = (
            record.pop("rollout__phase"),
            record["changed_at"],
            FlagReach(record.pop("reach")),
        )
        record["share"] = flag_share(phase, record.pop("rollout__weight") or 0, changed_at, reach)
        record["rollout_phase"] = phase or ""
        held_by, held_phase = record.pop("held_by_id"), record.pop("held_by__phase")
        changes_later = held_by and held_phase in Rollout.ACTIVE_PHASES and record["rollout_id"] != held_by
        moving = reach is FlagReach.AT_FULL and phase in Rollout.ACTIVE_PHASES
        record["changes_at_full"] = record["rollout_id"] if moving else held_by if changes_later else None
        record["stale_reasons"] = stale_reasons(
            record.pop("serves_one_variant"), changed_at, record["removed"], cutoff
        )
        yield record


def flag_counts(filters: FlagFilters, *, now: datetime) -> dict[str, int]:
    """How many flags match the filters, and how many of them are stale."""
    counted = (
        published_flags(filters, now=now)
        .order_by()
        .aggregate(total=Count("id"), stale=Count("id", filter=_stale(now)))
    )
    return {"total": counted["total"], "stale": counted["stale"]}


def flag_filter_choices() -> dict[str, list[str]]:
    """The sources and clusters the filters offer: those the catalog holds."""
    with_flags = PublishedFlag.objects.filter(source=OuterRef("pk"))
    sources = Source.objects.filter(Exists(with_flags)).order_by("name").values_list("name", flat=True)
    return {"sources": list(sources), "clusters": _distinct_clusters()}


# A loose index scan: one probe of published_flag_cluster per distinct cluster, where
# SELECT DISTINCT would read every row of the catalog.
_DISTINCT_CLUSTERS = """
    WITH RECURSIVE clusters AS (
        SELECT min(cluster) AS cluster FROM gitops_publishedflag
        UNION ALL
        SELECT (SELECT min(cluster) FROM gitops_publishedflag WHERE cluster > clusters.cluster)
        FROM clusters WHERE clusters.cluster IS NOT NULL
    )
    SELECT cluster FROM clusters WHERE cluster IS NOT NULL
"""


def _distinct_clusters() -> list[str]:
    """The clusters the catalog holds."""
    with connection.cursor() as cursor:
        cursor.execute(_DISTINCT_CLUSTERS)
        return [row[0] for row in cursor.fetchall()]


def flag_keys_published_by_others(
    source_id: int, places: Collection[tuple[str, str]], key_hashes: Collection[str]
) -> list[PublishedElsewhere]:
    """The flags other sources publish under one of ``key_hashes`` (``flag_key_hash``) into one of
    ``places``, (cluster, namespace) pairs: one statement, on the catalog's key index.

    Where a flag is published is where its source's inventory holds its flag set: the catalog keeps one
    row per flag, naming only the cluster of its first publication, and a flag set pruned or released
    (a source being deleted) is no longer served there by that source. A flag Git dropped counts until its
    row is gone (``removed``: the old side of its rollout is served it until 100%), a deleted source's
    never: its rows go with it.

    So do the keys another source's rollout under way claimed as it started (``Rollout.flag_claims``),
    before its first write reaches the catalog: two sources that start publishing one key about the same
    time are told apart by which rollout started first (``lifecycle.rollout_start``). A second statement,
    over the rollouts under way.
    """
    if not places or not key_hashes:
        return []
    claims = (
        Rollout.objects.filter(phase__in=Rollout.ACTIVE_PHASES, source__deleted_at__isnull=True)
        .exclude(source_id=source_id)
        .exclude(flag_claims=[])
        .order_by()
        .values_list("source__name", "pk", "flag_claims")
    )
    claimed = claimed_elsewhere(claims, places, key_hashes)
    rows = (
        PublishedFlag.objects.filter(
            namespace__in={namespace for _, namespace in places}, key_hash__in=set(key_hashes)
        )
        .exclude(source_id=source_id)
        .filter(
            source__deleted_at__isnull=True,
            source__managed_objects__kind="ConfigMap",
            source__managed_objects__cluster__in={cluster for cluster, _ in places},
            source__managed_objects__namespace=F("namespace"),
            source__managed_objects__name=F("flag_set"),
        )
        .values_list("source__name", "source__managed_objects__cluster", "namespace", "key", "removed")
    )
    # Clusters and namespaces are asked for apart: a pair of one cluster and another's namespace is not.
    return [PublishedElsewhere(*row) for row in rows if (row[1], row[2]) in places] + claimed


def rollout_read(rollout_id: int) -> Rollout | None:
    """One rollout as its page, the API and ``gitops rollout`` show it: its approvals and timeline read
    with it, its source without the bulky columns."""
    return (
        with_approval_count(
            Rollout.objects.select_related("source", "revision").defer(*Source.related_bulk("source"))
        )
        .prefetch_related("approvals", "events")
        .filter(pk=rollout_id)
        .first()
    )


def redacted_steps(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rollout steps as stored; an analysis URL loses any credentials it carries, in its userinfo, and
    its query, whatever its names (``?code=``)."""
    shown = []
    for step in steps:
        analysis = step.get("analysis")
        http = analysis.get("http") if isinstance(analysis, dict) else None
        if isinstance(analysis, dict) and isinstance(http, dict) and isinstance(http.get("url"), str):
            http = {**http, "url": url_without_query(http["url"])}
            shown.append({**step, "analysis": {**analysis, "http": http}})
        else:
            shown.append(step)
    return shown


def rollout_detail(rollout: Rollout) -> dict[str, Any]:
    revision = rollout.revision
    approvals = list(rollout.approvals.all())
    targets, targets_total = rollout_targets(rollout)
    return {
        "targets": targets,
        "targets_total": targets_total,
        **rollout_status(rollout),
        "message": redact(rollout.message),
        "revision": {
            "commit": revision.commit,
            "author_name": revision.author_name,
            "author_email": revision.author_email,
            "message": revision.message.splitlines()[0] if revision.message else "",
        },
        "created_by": rollout.created_by,
        "promoted_by": rollout.promoted_by,
        "abort_requested_by": rollout.abort_requested_by,
        "abort_reason": redact(rollout.abort_reason),
        "content_hash": rollout.content_hash,
        "forbid_self_approval": rollout.forbid_self_approval,
        "step_definitions": redacted_steps(rollout.steps),
        "approved_by": [
            {
                "username": approval.username,
                "step": approval.step_index,
                "commit": approval.commit,
                "content_hash": approval.content_hash,
                "comment": approval.comment,
                "at": approval.at,
            }
            for approval in approvals
        ],
        "events": [
            {
                "at": event.at,
                "kind": event.kind,
                "step": event.step_index,
                "weight": event.weight,
                "actor": event.actor,
                "message": redact(event.message),
                "data": event.data or {},
            }
            for event in rollout.events.all()
        ],
    }
