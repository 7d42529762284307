"""The rollout lifecycle: choose, drive step by step, pause, analyse, promote, abort, roll back, retry.

``drive`` runs inside a source's reconcile, under its lock. ``promote``,
``abort`` and ``retry`` only record a decision in the database (checked,
audited) and queue a reconcile, so one code path moves rollouts and touches
the cluster. Transitions are compare-and-swap updates on (phase, step).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.utils import timezone

from gitops import apply, notifiers
from gitops import content as content_module
from gitops.content import Content, Provenance, live_content, live_provenance
from gitops.desired.policy import Analysis, Pause, SetWeight, steps_from_json
from gitops.desired.revision import DesiredState, flag_set_key, unstamped
from gitops.desired.scope import AdminScope
from gitops.errors import PermanentError
from gitops.models import (
    ApplyIntent,
    Approval,
    Change,
    Revision,
    Rollout,
    RolloutEvent,
    Source,
    VerifiedEmail,
)
from gitops.plan import Plan, PlanMemo, plan
from gitops.rollout.analysis import run_analysis
from gitops.rollout.engine import desired_at_weight, desired_hash, held_keys, with_approval_gate

log = logging.getLogger(__name__)
SYSTEM_ACTOR = "sluice"
APPROVE_PERMISSION = "gitops.approve_rollout"


class RolloutError(PermanentError):
    """A rollout action that cannot be done in the rollout's current state."""


@dataclass
class StepOutcome:
    outcome: str  # applied, unchanged, paused, completed, aborted, failed, queued, superseded
    summary: dict[str, int]
    failures: list[str]


# -- choosing which rollout a reconcile drives ---------------------------------------


def choose(
    source: Source,
    head: Revision,
    head_desired: DesiredState,
    *,
    commit_identities: Callable[[], Sequence[str]] = list,
) -> tuple[Rollout, str]:
    """The rollout this reconcile moves, and a note (``queued`` when the head waits).

    ``commit_identities`` gives the authors and committers of the commits a new
    rollout would bring; it is asked only when one starts.
    """
    active = Rollout.objects.filter(source=source, phase__in=Rollout.ACTIVE_PHASES).order_by("-id").first()
    if active is not None and (active.revision_id == head.pk or active.abort_requested_by):
        return active, ""
    if active is not None:
        if head_desired.policy.rollout.on_new_revision == "queue":
            Revision.objects.filter(pk=head.pk, outcome=Revision.Outcome.VALID).update(
                outcome=Revision.Outcome.QUEUED
            )
            return active, "queued"
        rollback(
            active,
            actor=SYSTEM_ACTOR,
            reason=f"superseded by {head.commit[:12]}",
            phase=Rollout.Phase.SUPERSEDED,
        )
    latest = Rollout.objects.filter(source=source, revision=head).order_by("-id").first()
    if latest is not None and latest.phase != Rollout.Phase.SUPERSEDED:
        return latest, ""
    return start(source, head, head_desired, actor=SYSTEM_ACTOR, commit_identities=commit_identities()), ""


def start(
    source: Source,
    revision: Revision,
    desired: DesiredState,
    *,
    actor: str,
    commit_identities: Sequence[str] = (),
) -> Rollout:
    policy = desired.policy
    # The administrator's floor comes on top of whatever the repository asks for.
    floor = source.required_approvals
    steps = with_approval_gate(policy.rollout.steps) if floor else policy.rollout.steps
    rollout = Rollout.objects.create(
        source=source,
        revision=revision,
        phase=Rollout.Phase.PROGRESSING,
        steps=[step.as_json() for step in steps],
        approvals_required=max(policy.approvals.required, floor),
        forbid_self_approval=policy.approvals.forbid_self_approval or floor > 0,
        commit_identities=sorted({identity.lower() for identity in commit_identities}),
        content_hash=desired_hash(desired),
        created_by=actor,
    )
    Revision.objects.filter(pk=revision.pk).exclude(outcome=Revision.Outcome.REJECTED).update(
        outcome=Revision.Outcome.VALID
    )
    event(
        rollout,
        "started",
        actor=actor,
        message=f"rollout of {revision.commit[:12]} in {len(rollout.steps)} steps",
    )
    return rollout


# -- driving -----------------------------------------------------------------------


def drive(rollout: Rollout, desired: DesiredState, *, actor: str, retry_failed: bool = False) -> StepOutcome:
    """Moves the rollout as far as it can go now: until a pause, an end, or a failure."""
    outcome = StepOutcome("unchanged", {}, [])
    steps = steps_from_json(rollout.steps)
    while True:
        rollout.refresh_from_db()
        if rollout.abort_requested_by and rollout.is_active:
            rollback(
                rollout,
                actor=rollout.abort_requested_by,
                reason=rollout.abort_reason or "aborted",
                phase=Rollout.Phase.ABORTED,
            )
            outcome.outcome = "aborted"
            return outcome
        if rollout.phase == Rollout.Phase.COMPLETED:
            # Keep the finished revision in place: drift, self-heal, prune.
            result = apply_weight(
                rollout, desired, 100, max(len(steps) - 1, 0), actor, retry_failed=retry_failed
            )
            _merge(outcome, result)
            return outcome
        if not rollout.is_active:
            outcome.outcome = rollout.phase.lower()
            return outcome
        if rollout.phase == Rollout.Phase.PAUSED:
            if not _pause_is_over(rollout):
                outcome.outcome = "failed" if outcome.failures else "paused"
                return outcome
            continue
        if rollout.step_index >= len(steps):
            _complete(rollout)
            outcome.outcome = "applied" if outcome.outcome == "applied" else "completed"
            return outcome
        step = steps[rollout.step_index]
        if isinstance(step, SetWeight):
            step_actor = rollout.promoted_by or actor
            result = apply_weight(rollout, desired, step.weight, rollout.step_index, step_actor)
            _merge(outcome, result)
            if result.failures:
                transition(
                    rollout,
                    phase=Rollout.Phase.FAILED,
                    finished_at=timezone.now(),
                    message="; ".join(result.failures[:5]),
                )
                event(rollout, "failed", actor=step_actor, message="; ".join(result.failures[:5]))
                outcome.outcome = "failed"
                return outcome
            transition(
                rollout, weight=step.weight, step_index=rollout.step_index + 1, promoted_by="", message=""
            )
            event(
                rollout,
                "step",
                actor=step_actor,
                step=rollout.step_index - 1,
                weight=step.weight,
                message=f"setWeight {step.weight}: " + _counts(result.summary),
                data=result.summary,
            )
        elif isinstance(step, Pause):
            _pause(rollout, step)
        elif isinstance(step, Analysis) and not _analyse(rollout, step):
            outcome.outcome = "aborted" if rollout.phase == Rollout.Phase.ABORTED else "paused"
            return outcome


def _merge(outcome: StepOutcome, result: StepOutcome) -> None:
    for action, count in result.summary.items():
        outcome.summary[action] = outcome.summary.get(action, 0) + count
    outcome.failures.extend(result.failures)
    if result.outcome == "applied":
        outcome.outcome = "applied"
    if result.failures:
        outcome.outcome = "failed"


def transition(rollout: Rollout, **changes: Any) -> bool:
    """Compare-and-swap on (phase, step): False when someone moved the rollout meanwhile."""
    changes.setdefault("updated_at", timezone.now())
    moved = Rollout.objects.filter(pk=rollout.pk, phase=rollout.phase, step_index=rollout.step_index).update(
        **changes
    )
    if moved:
        for name, value in changes.items():
            setattr(rollout, name, value)
    return bool(moved)


def event(
    rollout: Rollout,
    kind: str,
    *,
    actor: str = SYSTEM_ACTOR,
    step: int | None = None,
    weight: int | None = None,
    message: str = "",
    data: dict[str, Any] | None = None,
) -> None:
    RolloutEvent.objects.create(
        rollout=rollout,
        kind=kind,
        step_index=rollout.step_index if step is None else step,
        weight=rollout.weight if weight is None else weight,
        actor=actor,
        message=message,
        data=data or {},
    )
    notifiers.emit(
        kind,
        source=rollout.source,
        subject=f"rollouts/{rollout.pk}",
        data={
            "rollout": rollout.pk,
            "revision": rollout.revision.commit,
            "phase": rollout.phase,
            "step": rollout.step_index if step is None else step,
            "weight": rollout.weight if weight is None else weight,
            "actor": actor,
            "message": message,
        },
    )
    log.info(
        "rollout %s source=%s commit=%s %s step=%s: %s",
        rollout.pk,
        rollout.source.name,
        rollout.revision.commit,
        kind,
        rollout.step_index,
        message,
    )


def _counts(summary: dict[str, int]) -> str:
    return ", ".join(f"{n} {action}" for action, n in sorted(summary.items())) or "nothing to change"


def _pause_is_over(rollout: Rollout) -> bool:
    """Ends a timed pause or an analysis back-off whose time has come."""
    if rollout.waiting_for not in (Rollout.Waiting.TIMER, Rollout.Waiting.ANALYSIS):
        return False
    if rollout.pause_until is None or rollout.pause_until > timezone.now():
        return False
    # A timer moves past its step; an analysis back-off runs the same check again.
    timer = rollout.waiting_for == Rollout.Waiting.TIMER
    next_step = rollout.step_index + 1 if timer else rollout.step_index
    resumed = transition(
        rollout, phase=Rollout.Phase.PROGRESSING, waiting_for="", pause_until=None, step_index=next_step
    )
    if resumed:
        event(rollout, "resumed", message="timed pause over" if timer else "running the analysis again")
    return resumed


def _pause(rollout: Rollout, step: Pause) -> None:
    if step.seconds is None:
        transition(
            rollout, phase=Rollout.Phase.PAUSED, waiting_for=Rollout.Waiting.APPROVAL, pause_until=None
        )
        needed = rollout.approvals_required
        event(rollout, "paused", message=f"waiting for {needed} approval{'s' if needed > 1 else ''}")
        return
    until = timezone.now() + timedelta(seconds=step.seconds)
    transition(rollout, phase=Rollout.Phase.PAUSED, waiting_for=Rollout.Waiting.TIMER, pause_until=until)
    event(rollout, "paused", message=f"timed pause of {step.seconds}s, until {until.isoformat()}")
    _wake_at(rollout, until)


def _wake_at(rollout: Rollout, when: Any) -> None:
    # Beat's sweep also resumes due rollouts, so a worker restart loses nothing;
    # the ETA task only makes resuming prompt.
    from gitops.tasks import sync_source  # noqa: PLC0415 - tasks imports this module

    source_id = rollout.source_id
    transaction.on_commit(lambda: sync_source.apply_async((source_id,), eta=when))


def _analyse(rollout: Rollout, step: Analysis) -> bool:
    """Runs the check; True when the rollout goes on now."""
    payload = {
        "source": rollout.source.name,
        "rollout": rollout.pk,
        "revision": rollout.revision.commit,
        "step": rollout.step_index,
        "weight": rollout.weight,
    }
    source = rollout.source
    result = run_analysis(
        step, payload, AdminScope.of(source.allowed_namespaces, source.analysis_url_prefixes)
    )
    failures = 0 if result.passed else rollout.analysis_failures + 1
    event(rollout, "analysis", message=result.detail, data={"passed": result.passed, "failures": failures})
    if result.passed:
        transition(rollout, step_index=rollout.step_index + 1, analysis_failures=0)
        return True
    if failures >= step.failure_limit:
        transition(rollout, analysis_failures=failures)
        rollback(
            rollout,
            actor=SYSTEM_ACTOR,
            reason=f"analysis failed: {result.detail}",
            phase=Rollout.Phase.ABORTED,
        )
        return False
    until = timezone.now() + timedelta(seconds=step.interval_seconds)
    transition(
        rollout,
        phase=Rollout.Phase.PAUSED,
        waiting_for=Rollout.Waiting.ANALYSIS,
        pause_until=until,
        analysis_failures=failures,
    )
    _wake_at(rollout, until)
    return False


def _complete(rollout: Rollout) -> None:
    now = timezone.now()
    if transition(rollout, phase=Rollout.Phase.COMPLETED, finished_at=now, waiting_for="", message=""):
        Revision.objects.filter(pk=rollout.revision_id).update(outcome=Revision.Outcome.APPLIED)
        event(rollout, "completed", message="all targets have the new content")


# -- applying one weight -------------------------------------------------------------


def apply_weight(
    rollout: Rollout,
    desired: DesiredState,
    weight: int,
    step_index: int,
    actor: str,
    *,
    retry_failed: bool = False,
) -> StepOutcome:
    source = rollout.source
    live = apply.live_objects(source, desired)
    weighted = desired_at_weight(desired, weight, flag_baselines(rollout, desired, live))
    current = plan(
        weighted,
        live,
        source=source.name,
        commit=rollout.revision.commit,
        managed=apply.managed_keys(source),
        held=held_keys(desired, weight),
        prune_allowed=weight >= 100,
        memo=plan_memo(source),
    )
    intents = apply.write_intents(
        source, rollout, current, actor=actor, step_index=step_index, weight=weight, retry_failed=retry_failed
    )
    failures = apply.execute_intents(intents)
    applied = {(i.namespace, i.name) for i in intents if i.status == ApplyIntent.Status.DONE}
    Source.objects.filter(pk=source.pk).update(
        last_plan=plan_snapshot(current, weight=weight, applied=applied)
    )
    return StepOutcome("applied" if intents else "unchanged", current.summary(), failures)


_plan_memos: dict[int, PlanMemo] = {}


def plan_memo(source: Source) -> PlanMemo:
    """One memo per source and worker process."""
    return _plan_memos.setdefault(source.pk, PlanMemo())


def plan_snapshot(current: Plan, *, weight: int, applied: set[Any]) -> dict[str, Any]:
    """What pages show as the current plan: what still differs from Git after this step, key by key."""
    pending = [item for item in current.items if item.action.value != "unchanged" and item.key not in applied]
    summary: dict[str, int] = {}
    for item in pending:
        summary[item.action.value] = summary.get(item.action.value, 0) + 1
    if applied:
        summary["applied"] = len(applied)
    return {
        "commit": current.commit,
        "weight": weight,
        "computed_at": timezone.now().isoformat(),
        "summary": summary,
        "items": [item.as_dict() for item in pending],
    }


def flag_baselines(
    rollout: Rollout, desired: DesiredState, live: dict[str, list[dict[str, Any]]]
) -> dict[tuple[str, str], dict[str, Any] | None]:
    """Each flag set as published before this rollout touched it: the old side of its canary."""
    flag_objects = [obj for obj in desired.objects if obj.flag_set is not None]
    if not flag_objects:
        return {}
    first_intents: dict[tuple[str, str], ApplyIntent] = {}
    for intent in rollout.intents.exclude(action=Change.Action.ROLLBACK).order_by("id"):
        first_intents.setdefault((intent.namespace, intent.name), intent)
    live_index = {(ns, obj["metadata"]["name"]): obj for ns, objects in live.items() for obj in objects}
    baselines: dict[tuple[str, str], dict[str, Any] | None] = {}
    for obj in flag_objects:
        data: dict[str, str] | None
        if obj.key in first_intents:
            before = first_intents[obj.key].before
            data = (before or {}).get("data") if before is not None else None
        else:
            live_object = live_index.get(obj.key)
            data = live_object.get("data") if live_object is not None else None
        document = (data or {}).get(flag_set_key(obj.name))
        try:
            baselines[obj.key] = unstamped(json.loads(document)) if document else None
        except ValueError:
            baselines[obj.key] = None
    return baselines


# -- rolling back ---------------------------------------------------------------------


def rollback(rollout: Rollout, *, actor: str, reason: str, phase: str) -> list[str]:
    """Restores every target this rollout changed to exactly what it held before, then ends it."""
    first_intents: dict[tuple[str, str], ApplyIntent] = {}
    for intent in rollout.intents.filter(status=ApplyIntent.Status.DONE).exclude(
        action=Change.Action.ROLLBACK
    ):
        first_intents.setdefault((intent.namespace, intent.name), intent)
    failures: list[str] = []
    if first_intents:
        namespaces = sorted({key[0] for key in first_intents})
        cluster = apply.get_cluster()
        live_index = {
            (ns, obj["metadata"]["name"]): obj for ns in namespaces for obj in cluster.list_configmaps(ns)
        }
        restores = [
            restore
            for key, first in sorted(first_intents.items())
            if (restore := _restore_intent(rollout, first, live_index.get(key), actor)) is not None
        ]
        with transaction.atomic():
            created = ApplyIntent.objects.bulk_create(restores)
        failures = apply.execute_intents(created)
    now = timezone.now()
    message = reason + (
        f"; rollback failed for {len(failures)}: " + "; ".join(failures[:3]) if failures else ""
    )
    Rollout.objects.filter(pk=rollout.pk).update(
        phase=Rollout.Phase.FAILED if failures else phase,
        waiting_for="",
        pause_until=None,
        finished_at=now,
        updated_at=now,
        message=message,
    )
    rollout.refresh_from_db()
    event(rollout, "rolled-back" if not failures else "rollback-failed", actor=actor, message=message)
    return failures


def _restore_intent(
    rollout: Rollout, first: ApplyIntent, live: dict[str, Any] | None, actor: str
) -> ApplyIntent | None:
    baseline = Content.from_dict(first.before) if first.before is not None else None
    current = live_content(live) if live is not None else None
    if baseline is None and live is None:
        return None
    if baseline is not None and live is not None:
        _, live_commit, live_hash = live_provenance(live)
        if (
            live_content(live, desired_labels=baseline.labels, desired_annotations=baseline.annotations)
            == baseline
            and live_commit == first.before_commit
            and live_hash == first.before_content_hash
        ):
            return None  # already as it was: a rollback run again changes nothing
    manifest = None
    if baseline is not None:
        manifest = content_module.manifest(
            first.namespace,
            first.name,
            baseline,
            Provenance(
                source=rollout.source.name,
                commit=first.before_commit,
                content_hash=first.before_content_hash,
                origin=first.origin,
                kind=(first.manifest or {})
                .get("metadata", {})
                .get("labels", {})
                .get("sluice.dev/kind", "configmap"),
            ),
        )
    return ApplyIntent(
        rollout=rollout,
        source=rollout.source,
        step_index=rollout.step_index,
        weight=rollout.weight,
        namespace=first.namespace,
        name=first.name,
        action=Change.Action.ROLLBACK,
        commit=first.before_commit or rollout.revision.commit,
        manifest=manifest,
        before=current.as_dict() if current is not None else None,
        after=baseline.as_dict() if baseline is not None else None,
        before_hash=current.hash if current is not None else "",
        after_hash=baseline.hash if baseline is not None else "",
        diff=[d.as_dict() for d in _diff(current, baseline)],
        force=True,
        recreate=bool(live and live.get("immutable")) and baseline is not None,
        origin=first.origin,
        actor=actor,
    )


def _diff(old: Content | None, new: Content | None) -> list[Any]:
    from gitops.plan import diff_content  # noqa: PLC0415 - keeps the import list short

    return diff_content(old, new)


# -- decisions by people ----------------------------------------------------------------


def _check_permission(user: User) -> None:
    if not user.is_active or not user.has_perm(APPROVE_PERMISSION):
        raise PermissionDenied(f"{user.get_username()} may not promote, abort or retry rollouts")


def user_named(username: str) -> User:
    model = get_user_model()
    try:
        user: User = model.objects.get(**{model.USERNAME_FIELD: username})
    except model.DoesNotExist as exc:
        raise RolloutError(f"no user named {username!r}") from exc
    return user


def promote(rollout_id: int, *, user: User, full: bool = False, comment: str = "") -> Rollout:
    """Approves the gate the rollout waits at; with enough approvers it goes on (``full``: to 100%)."""
    _check_permission(user)
    username = user.get_username()
    with transaction.atomic():
        rollout = Rollout.objects.select_for_update().select_related("revision", "source").get(pk=rollout_id)
        if not rollout.is_active or rollout.abort_requested_by:
            raise RolloutError(
                f"rollout {rollout.pk} is {rollout.phase.lower()}; there is nothing to promote"
            )
        at_gate = rollout.phase == Rollout.Phase.PAUSED and rollout.waiting_for == Rollout.Waiting.APPROVAL
        if not at_gate and not full:
            raise RolloutError(
                f"rollout {rollout.pk} is not waiting for approval ({rollout.phase.lower()}"
                + (f", waiting for {rollout.waiting_for}" if rollout.waiting_for else "")
                + "); use --full to go to 100% now"
            )
        if rollout.forbid_self_approval:
            _check_not_an_author(rollout, user)
        gate = rollout.step_index
        try:
            with transaction.atomic():
                Approval.objects.create(
                    rollout=rollout,
                    commit=rollout.revision.commit,
                    step_index=gate,
                    content_hash=rollout.content_hash,
                    user=user,
                    username=username,
                    comment=comment,
                )
        except IntegrityError as exc:
            raise RolloutError(f"{username} already approved step {gate} of rollout {rollout.pk}") from exc
        approvers = Approval.objects.filter(rollout=rollout, step_index=gate).count()
        needed = rollout.approvals_required
        event(
            rollout,
            "approved",
            actor=username,
            message=comment or f"approval {approvers} of {needed}",
            data={"full": full, "approvals": approvers},
        )
        if approvers < needed:
            Rollout.objects.filter(pk=rollout.pk).update(message=f"{approvers} of {needed} approvals")
            rollout.refresh_from_db()
            return rollout
        changes: dict[str, Any] = {
            "phase": Rollout.Phase.PROGRESSING,
            "waiting_for": "",
            "pause_until": None,
            "promoted_by": username,
            "message": "",
            "updated_at": timezone.now(),
        }
        next_step = gate + 1 if at_gate else gate
        if full:
            changes["steps"] = [*rollout.steps[:next_step], SetWeight(100).as_json()]
        changes["step_index"] = next_step
        Rollout.objects.filter(pk=rollout.pk).update(**changes)
        event(rollout, "promoted", actor=username, message="to 100%" if full else f"past step {gate}")
        _queue_reconcile(rollout.source, actor=username)
    rollout.refresh_from_db()
    return rollout


def _check_not_an_author(rollout: Rollout, user: User) -> None:
    """Nobody who wrote or committed a commit of the rollout approves it, by an email an admin verified.

    A commit's emails are whatever its pusher typed, and so is a user's own
    email field; only an address an administrator verified identifies a person.
    """
    username = user.get_username()
    verified = VerifiedEmail.objects.filter(user=user).values_list("email", flat=True).first()
    if not verified:
        raise PermissionDenied(
            f"{username} has no verified email, and this rollout forbids self-approval; an administrator "
            "verifies one with `gitops verify-email`"
        )
    authors = set(rollout.commit_identities) or {rollout.revision.author_email.strip().lower()}
    if verified.strip().lower() in authors:
        raise PermissionDenied(
            f"{username} wrote or committed a commit that rollout {rollout.pk} brings and may not approve it"
        )


def verify_email(user: User, email: str, *, verified_by: str) -> VerifiedEmail:
    """Records that an administrator confirmed ``email`` is ``user``'s."""
    verified = VerifiedEmail.objects.filter(user=user).first() or VerifiedEmail(user=user)
    verified.email = email.strip().lower()
    verified.verified_by = verified_by
    verified.verified_at = timezone.now()
    verified.full_clean()
    verified.save()
    return verified


def abort(rollout_id: int, *, user: User, reason: str = "") -> Rollout:
    """Asks for a rollback; the source's next reconcile (queued now) restores every target."""
    _check_permission(user)
    username = user.get_username()
    with transaction.atomic():
        marked = Rollout.objects.filter(
            pk=rollout_id, phase__in=Rollout.ACTIVE_PHASES, abort_requested_by=""
        ).update(
            abort_requested_by=username,
            abort_reason=reason or f"aborted by {username}",
            updated_at=timezone.now(),
        )
        rollout = Rollout.objects.select_related("source", "revision").get(pk=rollout_id)
        if not marked:
            state = "already being aborted" if rollout.abort_requested_by else rollout.phase.lower()
            raise RolloutError(f"rollout {rollout.pk} is {state}; only an active rollout can be aborted")
        event(rollout, "abort-requested", actor=username, message=reason)
        _queue_reconcile(rollout.source, actor=username)
    return rollout


def retry(rollout_id: int, *, user: User) -> Rollout:
    """Runs an aborted or failed revision again from step 0, with fresh approvals."""
    _check_permission(user)
    username = user.get_username()
    with transaction.atomic():
        rollout = Rollout.objects.select_for_update().select_related("source", "revision").get(pk=rollout_id)
        if rollout.phase not in (Rollout.Phase.ABORTED, Rollout.Phase.FAILED):
            raise RolloutError(
                f"rollout {rollout.pk} is {rollout.phase.lower()}; only an aborted or failed one is retried"
            )
        source = rollout.source
        if source.last_commit and source.last_commit != rollout.revision.commit:
            raise RolloutError(
                f"{source.name} has moved on to {source.last_commit[:12]}; retry that revision instead"
            )
        if Rollout.objects.filter(source=source, phase__in=Rollout.ACTIVE_PHASES).exists():
            raise RolloutError(f"{source.name} already has an active rollout")
        again = Rollout.objects.create(
            source=source,
            revision=rollout.revision,
            steps=rollout.steps,
            approvals_required=rollout.approvals_required,
            forbid_self_approval=rollout.forbid_self_approval,
            commit_identities=rollout.commit_identities,
            content_hash=rollout.content_hash,
            created_by=username,
        )
        event(again, "started", actor=username, message=f"retry of rollout {rollout.pk}")
        _queue_reconcile(source, actor=username)
    return again


def _queue_reconcile(source: Source, *, actor: str) -> None:
    from gitops.services import enqueue_sync  # noqa: PLC0415 - services imports this module

    enqueue_sync(source, actor=actor)
