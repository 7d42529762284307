"""Decisions by people: promote, abort, retry, waive an owed rollback. Checked, audited, stored; a
reconcile carries them out.

These only record a decision in the database and queue the source's reconcile,
so one code path (``lifecycle.rollout_drive``) moves rollouts and touches the
cluster. The CLI, the dashboard and the API all call these.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from gitops import freezes, schedule, selectors
from gitops.desired.flag_keys import claim_places, claims_taken, taken_by
from gitops.desired.policy import SetWeight, steps_from_json
from gitops.errors import PermanentError
from gitops.locks import flag_keys_lock, sources_locked
from gitops.models import ApplyIntent, Approval, Rollout, Source, VerifiedEmail, copied
from gitops.record.events import rollout_event
from gitops.rollout.engine import with_approval_gate
from gitops.vocabulary import MORE_COMMITS_THAN_READ, RolloutEventKind, Waiting

APPROVE_PERMISSION = "gitops.approve_rollout"
WAIVE_PERMISSION = "gitops.change_source"  # administrators: the cluster keeps what it holds


class RolloutError(PermanentError):
    """A rollout action that cannot be done in the rollout's current state."""


def user_named(username: str) -> User:
    model = get_user_model()
    try:
        user: User = model.objects.get(**{model.USERNAME_FIELD: username})
    except model.DoesNotExist as exc:
        raise RolloutError(f"no user named {username!r}") from exc
    return user


def rollout_promote(
    rollout_id: int,
    *,
    user: User,
    full: bool = False,
    comment: str = "",
    override: str = "",
    at_step: int | None = None,
) -> Rollout:
    """Approves the gate the rollout waits at; with enough approvers it goes on (``full``: to 100%).

    While a freeze or a closed sync window holds the source, only an
    administrator promotes, giving an ``override`` reason that is recorded.
    ``at_step``: the step the approver saw (a page's button, an API client); a promote sent twice (a
    double click, a client retrying after a lost answer) must not release the gate after it too.
    """
    _check_permission(user)
    with transaction.atomic():
        # The rollout's row alone: locking its source's too (the join's default) deadlocked with a pass
        # logging changes, whose transaction holds key-share locks on both rows until it commits.
        rollout = (
            Rollout.objects.select_for_update(of=("self",), no_key=True)
            .select_related("revision", "source")
            .get(pk=rollout_id)
        )
        if at_step is not None and at_step != rollout.step_index:
            raise RolloutError(
                # The numbers the page, `gitops status` and --step show and take (the steps done), not
                # one more: "moved on to step 3 since step 1" read as a promote two steps late.
                f"rollout {rollout.pk} has moved on to step {rollout.step_index} since step "
                f"{at_step} was shown; look at it again before promoting"
            )
        at_gate = _check_promotable(rollout, full=full)
        if rollout.forbid_self_approval:
            _check_not_an_author(rollout, user)
        override, holds = _check_override(rollout, user, override)
        approvers = _approve(rollout, user, full=full, comment=comment)
        if approvers < rollout.approvals_required:
            message = f"{approvers} of {rollout.approvals_required} approvals"
            Rollout.objects.filter(pk=rollout.pk).update(message=message)
        else:
            # Skipping the later gates takes as many approvers who asked for it as a gate takes approvals.
            wanted_full = (
                selectors.rollout_approvals_counted(rollout, rollout.step_index).filter(full=True).count()
            )
            full_release = full and wanted_full >= rollout.approvals_required
            if at_gate or full_release:
                _release(
                    rollout,
                    user.get_username(),
                    at_gate=at_gate,
                    full=full_release,
                    override=override,
                    holds=holds,
                )
            else:  # asked to skip ahead between gates: only as many full approvals do that
                message = f"{wanted_full} of {rollout.approvals_required} approvals to go to 100%"
                Rollout.objects.filter(pk=rollout.pk).update(message=message)
    rollout.reload()
    return rollout


def _check_promotable(rollout: Rollout, *, full: bool) -> bool:
    """Refuses a promote the rollout's state does not allow; whether it waits at an approval gate."""
    if not rollout.is_active or rollout.abort_requested_by:
        raise RolloutError(f"rollout {rollout.pk} is {rollout.phase.lower()}; there is nothing to promote")
    at_gate = rollout.phase == Rollout.Phase.PAUSED and rollout.waiting_for == Waiting.APPROVAL
    if not at_gate and not full:
        raise RolloutError(
            f"rollout {rollout.pk} is not waiting for approval ({rollout.phase.lower()}"
            + (f", waiting for {rollout.waiting_for}" if rollout.waiting_for else "")
            + "); use --full to go to 100% now"
        )
    return at_gate


def _check_override(rollout: Rollout, user: User, reason: str) -> tuple[str, str]:
    """The override reason when a freeze or a closed sync window holds the source ("" when none does),
    and what holds it (``Gate.holds``).

    Only an administrator promotes through one, and says why; the override is
    recorded on the rollout's timeline (and so in the audit trail) before the approval.
    """
    gate = selectors.source_gate(rollout.source)
    if gate.automatic:
        return "", ""
    name, username = rollout.source.name, user.get_username()
    if not user.has_perm(freezes.OVERRIDE):
        raise PermissionDenied(
            f"{name} is {gate.reason}; only an administrator may promote now, with an override reason"
        )
    reason = reason.strip()
    if not reason:
        raise RolloutError(f"{name} is {gate.reason}; promoting through it needs an override reason")
    rollout_event(
        rollout,
        RolloutEventKind.OVERRIDE,
        actor=username,
        message=f"{reason} (overriding: {gate.reason})",
        data={"reason": reason, "gate": gate.as_dict()},
    )
    return reason, gate.holds


def _approve(rollout: Rollout, user: User, *, full: bool, comment: str) -> int:
    """Records one person's approval of the current gate; how many distinct approvers it has now."""
    username, gate = user.get_username(), rollout.step_index
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
                full=full,
            )
    except IntegrityError as exc:
        raise RolloutError(f"{username} already approved step {gate} of rollout {rollout.pk}") from exc
    approvers = selectors.rollout_approvals_counted(rollout, gate).count()
    rollout_event(
        rollout,
        RolloutEventKind.APPROVED,
        actor=username,
        message=comment or f"approval {approvers} of {rollout.approvals_required}",
        data={"full": full, "approvals": approvers},
    )
    return approvers


def _release(
    rollout: Rollout, username: str, *, at_gate: bool, full: bool, override: str = "", holds: str = ""
) -> None:
    gate = rollout.step_index
    next_step = gate + 1 if at_gate else gate
    changes: dict[str, Any] = {
        "phase": Rollout.Phase.PROGRESSING,
        "waiting_for": Waiting.NOTHING,
        "pause_until": None,
        "promoted_by": username,
        "message": "",
        "updated_at": timezone.now(),
        "step_index": next_step,
    }
    if full:
        changes["steps"] = [*rollout.steps[:next_step], SetWeight(100).as_json()]
        changes["version"] = F("version") + 1  # a worker mid-step must not step past the new 100%
    Rollout.objects.filter(pk=rollout.pk).update(**changes)
    message = "to 100%" if full else f"past step {gate}"
    if override:
        message += f", overriding the hold: {override}"
    # An override marks the release, so the steps it lets go run while the source is held by what held it
    # then: a freeze set after it holds them again.
    data = {"override": override, "holds": holds} if override else None
    rollout_event(rollout, RolloutEventKind.PROMOTED, actor=username, message=message, data=data)
    schedule.source_sync(rollout.source_id, actor=username, rollouts_only=True)


def rollout_abort(rollout_id: int, *, user: User, reason: str = "") -> Rollout:
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
        rollout_event(rollout, RolloutEventKind.ABORT_REQUESTED, actor=username, message=reason)
        schedule.source_sync(rollout.source_id, actor=username, rollouts_only=True)
    return rollout


def rollout_retry(rollout_id: int, *, user: User) -> Rollout:
    """Runs an aborted or failed revision again from step 0, with fresh approvals. Under the source's
    reconcile lock: a pass that had just fetched a new commit and found no active rollout would
    otherwise start one beside the retry's, and only the newer would ever be driven."""
    _check_permission(user)
    source = Rollout.objects.select_related("source").get(pk=rollout_id).source
    with decision_locks([source]):
        return _rollout_retried(rollout_id, username=user.get_username())


def _rollout_retried(rollout_id: int, *, username: str) -> Rollout:
    source_id = Rollout.objects.values_list("source_id", flat=True).get(pk=rollout_id)
    with transaction.atomic():
        # The source's row first, as an administrator's edit takes it: one who raises the approval floor
        # meanwhile either committed first (the floor is read here) or waits, and then gates the retry
        # as a rollout under way (``source_admin._gate_active_rollouts``).
        source = Source.all_objects.select_for_update(no_key=True).get(pk=source_id)
        rollout = (
            Rollout.objects.select_for_update(of=("self",), no_key=True)
            .select_related("revision")
            .get(pk=rollout_id)
        )
        rollout.source = source
        if source.deleted_at is not None:
            raise RolloutError(f"{source.name} was removed; its rollouts are not retried")
        if rollout.phase not in (Rollout.Phase.ABORTED, Rollout.Phase.FAILED):
            raise RolloutError(
                f"rollout {rollout.pk} is {rollout.phase.lower()}; only an aborted or failed one is retried"
            )
        if rollout.rollback_pending_clusters:
            # Its owed rollback would take back what the retry writes there (the same commit's stamp).
            owed = ", ".join(rollout.rollback_pending_clusters)
            raise RolloutError(f"rollout {rollout.pk} still owes {owed} its rollback; retry once it is done")
        if not source.last_commit:  # moved to another repository or branch, not fetched since
            raise RolloutError(
                f"{source.name} follows another repository or branch since; its next pass fetches it"
            )
        if source.last_commit not in (rollout.revision.commit, rollout.stands_for):
            raise RolloutError(
                f"{source.name} has moved on to {source.last_commit[:12]}; retry that revision instead"
            )
        if newer := Rollout.objects.filter(source=source, pk__gt=rollout.pk).order_by("pk").first():
            # A retry sent twice (an answer lost, a stale page's button) ran the revision again at step 0.
            raise RolloutError(
                f"rollout {newer.pk} came after rollout {rollout.pk}; retry that one if need be"
            )
        if rollout.directory_moved(source):
            where = source.path or "the repository's root"
            raise RolloutError(
                f"{source.name} moved to another directory since ({where}): "
                "its next pass starts, or takes up again, the rollout of what that directory holds"
            )
        if Rollout.objects.filter(source=source, phase__in=Rollout.ACTIVE_PHASES).exists():
            raise RolloutError(f"{source.name} already has an active rollout")
        _flag_keys_still_free(source, rollout)
        repeated = copied(rollout, Rollout.REPEATED_FIELDS)
        # Its own steps, not the ones a promote to 100% cut short: the analyses and gates run again.
        repeated["steps"] = rollout.planned_steps or rollout.steps
        repeated = gated(source, repeated)
        again = Rollout.objects.create(
            **repeated, planned_steps=repeated["steps"], path=source.path, created_by=username
        )
        rollout_event(
            again, RolloutEventKind.STARTED, actor=username, message=f"retry of rollout {rollout.pk}"
        )
        schedule.source_sync(source.pk, actor=username, rollouts_only=True)
    return again


def _flag_keys_still_free(source: Source, rollout: Rollout) -> None:
    """Raises RolloutError when another source published, or started a rollout that publishes, one of the
    rollout's flag keys where it published it, since it ended (its rollback took them out). The retry
    claims them again as it starts (its ``flag_claims``, copied), under the lock every such start takes."""
    claims = rollout.flag_claims
    if not claims:
        return
    flag_keys_lock()
    places, hashes = claim_places(claims)
    taken = claims_taken(claims, selectors.flag_keys_published_by_others(source.pk, places, hashes))
    if taken:
        first = min(taken, key=lambda other: (other.key, other.source, other.cluster, other.rollout or 0))
        more = len({other.key for other in taken}) - 1
        verb = taken_by(first.source, f"{first.cluster}/{first.namespace}", first.rollout)
        raise RolloutError(
            f"the flag {first.key!r} is {verb} since rollout {rollout.pk} ended"
            + (f" (and {more:,} more of its flags)" if more else "")
            + ": a retry would publish it beside theirs; retry once they take it out"
        )


def rollout_rollback_waive(rollout_id: int, *, cluster: str, user: User, reason: str) -> Rollout:
    """Lets ``cluster`` off the rollback the ended rollout still owes it, for good: for a cluster that
    is gone and will not answer again, or one an administrator restored by other means. Whatever the
    rollout wrote there stays; its changes never applied there are dropped. Administrators only, with
    a reason, recorded in the rollout's timeline (and sent as a notification).

    It waits (a little) for a pass of the source under way: one retrying that cluster's rollback
    would otherwise restore it after all."""
    waive_permission_check(user)
    source = Rollout.objects.select_related("source").get(pk=rollout_id).source
    with decision_locks([source]):
        return rollback_waive(rollout_id, cluster=cluster, actor=user.get_username(), reason=reason)


def rollback_waive(rollout_id: int, *, cluster: str, actor: str, reason: str) -> Rollout:
    """``rollout_rollback_waive`` for a caller that checked who asks and holds the source's reconcile
    lock (``cluster_admin.cluster_forget``)."""
    cluster, reason = cluster.strip(), reason.strip()
    if not reason:
        raise RolloutError("say why the rollback is waived (--reason): it is recorded")
    username = actor
    with transaction.atomic():
        rollout = (
            Rollout.objects.select_for_update(of=("self",), no_key=True)
            .select_related("source", "revision")
            .get(pk=rollout_id)
        )
        owed = list(rollout.rollback_pending_clusters)
        if cluster not in owed:
            listed = ", ".join(owed) or "none"
            raise RolloutError(f"rollout {rollout.pk} owes {cluster!r} no rollback (owed on: {listed})")
        left = [name for name in owed if name != cluster]
        Rollout.objects.filter(pk=rollout.pk).update(
            rollback_pending_clusters=left,
            pause_until=rollout.pause_until if left else None,
            updated_at=timezone.now(),
        )
        # What it never got to apply there is not applied later either (``intents_pending``).
        ApplyIntent.drop_pending(rollout.intents.filter(cluster=cluster))
        rollout.reload()
        rollout_event(
            rollout,
            RolloutEventKind.ROLLBACK_WAIVED,
            actor=username,
            message=f"rollback on {cluster} waived by {username}: {reason}",
            data={"cluster": cluster, "pending_clusters": left},
        )
    return rollout


@contextmanager
def decision_locks(sources: list[Source]) -> Iterator[None]:
    """Holds the sources' reconcile locks for a person's decision, waiting a little for passes under
    way (``SourceBusy`` past that); then queues what pushes or polls asked for meanwhile."""
    try:
        with sources_locked(sources):
            yield
    finally:
        schedule.syncs_requested_meanwhile([source.pk for source in sources])


def waive_permission_check(user: User) -> None:
    if not user.is_active or not user.has_perm(WAIVE_PERMISSION):
        raise PermissionDenied(f"{user.get_username()} may not waive a rollback: administrators only")


def gated(source: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """A rollout's steps and approvals under the source's approval floor as it is now (maybe raised)."""
    floor = source.required_approvals
    if not floor:
        return fields
    steps = with_approval_gate(steps_from_json(fields["steps"]))
    return {
        **fields,
        "steps": [step.as_json() for step in steps],
        "approvals_required": max(fields["approvals_required"], floor),
        "forbid_self_approval": True,
    }


def _check_permission(user: User) -> None:
    if not user.is_active or not user.has_perm(APPROVE_PERMISSION):
        raise PermissionDenied(f"{user.get_username()} may not promote, abort or retry rollouts")


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
    authors = selectors.rollout_authors(rollout)
    if MORE_COMMITS_THAN_READ in authors:
        raise PermissionDenied(
            f"rollout {rollout.pk} brings more commits of its directory since the last completed rollout "
            f"than were read for their authors (SLUICE_SELF_APPROVAL_RANGE_COMMITS): who wrote them cannot "
            "all be told, and it forbids self-approval, so nobody may approve it. An administrator may raise "
            "that setting; the next rollout (a new commit) reads its range again"
        )
    if verified.strip().lower() in authors:
        raise PermissionDenied(
            f"{username} wrote or committed a commit that rollout {rollout.pk} brings and may not approve it"
        )
