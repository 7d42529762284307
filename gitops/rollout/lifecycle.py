"""The rollout lifecycle: choose which rollout a reconcile moves, start one, and drive it step by step.

``rollout_drive`` runs inside a source's reconcile, under its lock, and is the
only code that moves a rollout and touches the cluster. People's decisions
(promote, abort, retry) are stored by ``decisions`` and carried out here.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

from django.db import transaction
from django.db.models import Q, QuerySet, Subquery
from django.utils import timezone

from gitops.desired.errors import RevisionRejected
from gitops.desired.flag_keys import FlagClaims, flag_claims, flag_keys
from gitops.desired.policy import (
    Analysis,
    ConsumerMode,
    OnNewRevision,
    Pause,
    SetWeight,
    Step,
    steps_from_json,
)
from gitops.desired.revision import DesiredState
from gitops.errors import TemporaryError
from gitops.failpoints import failpoint
from gitops.fetch.revisions import directory_unchanged, flag_keys_elsewhere
from gitops.locks import flag_keys_lock
from gitops.models import Revision, Rollout, RolloutEvent, Source
from gitops.prepared import PreparedSelect
from gitops.record.events import rollout_event
from gitops.redaction import url_without_query
from gitops.rollout.consumers import consumer_map_refresh, wave_gate_close, wave_gate_pass, wave_restart
from gitops.rollout.engine import desired_hash, largest_share, with_approval_gate
from gitops.rollout.flag_canary import CanaryRefused
from gitops.rollout.gates import analyse, pause, pause_is_over, wait_for_clusters
from gitops.rollout.rollback import rollback_decide, rollout_rollback
from gitops.rollout.state import StepOutcome, transition
from gitops.rollout.step import in_scope, weight_apply
from gitops.vocabulary import SYSTEM_ACTOR, Outcome, RolloutEventKind, Waiting
from gitops.windows import Gate

log = logging.getLogger("gitops.rollout")


def rollout_choose(
    source: Source,
    head: Revision,
    head_desired: DesiredState,
    *,
    commit_identities: Callable[[], Sequence[str]] = list,
    refusals: list[str] | None = None,
) -> tuple[Rollout, Outcome | None]:
    """The rollout this reconcile moves, and ``Outcome.QUEUED`` when the head waits behind it.

    ``commit_identities`` gives the authors and committers of the commits a new
    rollout would bring; it is asked only when one starts. Restores the cluster refused to a
    superseded rollout are added to ``refusals``: the pass reports them, whatever the new rollout does.
    """
    newest, active = _newest_and_active(source)
    identities = functools.cache(commit_identities)  # asked once, before a supersede's rollback
    if active is not None:
        kept = _active_kept(source, active, head, head_desired, refusals, identities=identities)
        if kept is not None:
            return kept
    # A rollout of the head is taken up again only while nothing came after it: a branch moved
    # back to an older commit goes out anew, through its steps and gates, never at once. So does the
    # head read from another directory (an administrator moved the source's --path): other content.
    of_head = newest if newest is not None and newest.revision_id == head.pk else None
    moved = of_head is not None and of_head.directory_moved(source)
    if of_head is not None and of_head.phase != Rollout.Phase.SUPERSEDED and not moved:
        return of_head, None
    if newest is not None and of_head is None and _stands_for_head(source, newest, head, head_desired):
        return newest, None
    why = ""
    if of_head is not None and moved:
        why = f": the source moved from {_directory(of_head.path)} to {_directory(source.path)}"
    return rollout_start(
        source, head, head_desired, actor=SYSTEM_ACTOR, commit_identities=identities(), why=why
    ), None


def _active_kept(
    source: Source,
    active: Rollout,
    head: Revision,
    head_desired: DesiredState,
    refusals: list[str] | None,
    *,
    identities: Callable[[], Sequence[str]],
) -> tuple[Rollout, Outcome | None] | None:
    """The active rollout, when it goes on (of the head, or rolling back), with ``Outcome.QUEUED`` when
    the head waits behind it; otherwise it is superseded (rolled back), and None. One of the head but
    read from another directory holds other content, which never goes out under its steps and gates:
    superseded, whatever the queue policy says."""
    of_head = active.revision_id == head.pk
    if (of_head and not active.directory_moved(source)) or active.abort_requested_by:
        return active, None
    if not of_head and _stands_for_head(source, active, head, head_desired):
        return active, None
    if not of_head and head_desired.policy.rollout.on_new_revision == OnNewRevision.QUEUE:
        Revision.objects.filter(pk=head.pk, outcome=Revision.Outcome.VALID).update(
            outcome=Revision.Outcome.QUEUED
        )
        return active, Outcome.QUEUED
    reason = f"superseded: the source moved to {_directory(source.path)}" if of_head else ""
    reason = reason or f"superseded by {head.commit[:12]}"
    # The head's rollout starts right after the rollback, its claim taken over from the rollout's with
    # nothing slow between (``git log`` of up to 1,000 commits), so no other source's start comes in.
    identities()
    own_claims = _head_claimed_while_rolling_back(source, active, head_desired, reason)
    refused = rollout_rollback(active, actor=SYSTEM_ACTOR, reason=reason, phase=Rollout.Phase.SUPERSEDED)
    if own_claims is not None:  # ended, its claims read by nobody; the head's rollout claims them next
        Rollout.objects.filter(pk=active.pk).update(flag_claims=own_claims)
    if refused:  # the superseded rollout ends Failed and says so; the worker's log and the pass too
        log.warning("rollout %s, superseded, could not restore: %s", active.pk, "; ".join(refused[:5]))
        if refusals is not None:
            refusals.extend(refused)
    return None


def rollout_holds_head(source: Source, rollout: Rollout, head: Revision, head_desired: DesiredState) -> bool:
    """Whether ``rollout`` holds the head's content: it is of the head, read from the source's directory,
    or of an earlier commit whose directory the head holds byte for byte (``directory_unchanged``), so
    the head's state, loaded already, drives it, where its own would be loaded again. Git
    is asked only when the content hashes agree: a commit that changes the content (nearly every new
    head) costs no process."""
    if rollout.revision_id == head.pk:
        return not rollout.directory_moved(source)
    return rollout.content_hash == head_desired.content_hash and directory_unchanged(source, head, rollout)


def rollout_note_head(source: Source, head: Revision, head_desired: DesiredState) -> None:
    """Records the head the newest rollout stands for while a freeze or a closed window keeps
    ``rollout_choose`` from running: a retry of a failed rollout, asked meanwhile after another team's
    commit elsewhere, was refused as "moved on" to a head with no rollout of its own."""
    # The newest alone, with its revision: not the source's row (its plan), read at every held poll.
    newest = (
        Rollout.objects.filter(source_id=source.pk)
        .select_related("revision")
        .defer("flag_claims")
        .order_by("-id")
        .first()
    )
    if newest is not None and newest.revision_id != head.pk and newest.stands_for != head.commit:
        _stands_for_head(source, newest, head, head_desired)


def _stands_for_head(source: Source, rollout: Rollout, head: Revision, head_desired: DesiredState) -> bool:
    """Whether a rollout of an earlier commit stands for the head: the head holds the source's directory
    byte for byte as the rollout's commit did (another team's commit in a monorepo, an empty commit). Its
    content is the rollout's, so it neither supersedes the rollout under way (restoring canaries and
    restarting consumers twice, approvals lost), nor queues, nor starts the same content again through
    every gate, nor runs an aborted or failed rollout's content again that nobody retried. A completed
    rollout's content is the head's too: the head is recorded as applied."""
    if rollout.phase == Rollout.Phase.SUPERSEDED or not rollout_holds_head(
        source, rollout, head, head_desired
    ):
        return False
    if rollout.stands_for != head.commit:
        Rollout.objects.filter(pk=rollout.pk).update(stands_for=head.commit)
        rollout.stands_for = head.commit
    if rollout.phase == Rollout.Phase.COMPLETED:
        Revision.objects.filter(pk=head.pk, outcome=Revision.Outcome.VALID).update(
            outcome=Revision.Outcome.APPLIED
        )
    return True


def _head_claimed_while_rolling_back(
    source: Source, active: Rollout, head_desired: DesiredState, reason: str
) -> FlagClaims | None:
    """The head's flag keys, free when the pass validated it, asked again before the rollback (a head
    rejected now leaves the rollout under way as it is, as a bad commit does), then claimed by the rollout
    rolled back until it ends: another source starting one of them during the rollback (its restores, its
    consumers' restarts) would otherwise leave the head rejected after it, the rollout under way rolled
    back for nothing. Claimed with the decision to roll back, in one transaction: a rollout left running
    (a crash between the two) would hold keys it never publishes. Returns the rollout's own claims, None
    when the head publishes no flag key."""
    keys = flag_keys(head_desired)
    if not keys.definitions:
        return None
    with transaction.atomic():
        flag_keys_lock()
        _flag_keys_free(source, head_desired)
        own: FlagClaims = Rollout.objects.values_list("flag_claims", flat=True).get(pk=active.pk)
        Rollout.objects.filter(pk=active.pk).update(flag_claims=[*own, *flag_claims(keys)])
        rollback_decide(active, actor=SYSTEM_ACTOR, reason=reason, phase=Rollout.Phase.SUPERSEDED)
    return own


def _directory(path: str | None) -> str:
    return f"directory {path}" if path else "the repository's root"


def _newest_and_active_query(source_id: int) -> QuerySet[Rollout]:
    rollouts = Rollout.objects.filter(source_id=source_id)
    newest_id = rollouts.order_by("-id").values("pk")[:1]
    return (
        rollouts.filter(Q(phase__in=Rollout.ACTIVE_PHASES) | Q(pk=Subquery(newest_id)))
        .select_related("source", "revision")
        # A pass never reads the claims (kept deferred through ``reload``): a large flag set's keys.
        .defer("flag_claims")
        .order_by("-id")[:2]
    )


_NEWEST_AND_ACTIVE: PreparedSelect[Rollout] = PreparedSelect(_newest_and_active_query, int)


def _newest_and_active(source: Source) -> tuple[Rollout | None, Rollout | None]:
    """The source's newest rollout and its newest active one (often the same), in one query: the
    newest comes first, and the next row, if the newest is not active, is the newest active one."""
    rows = _NEWEST_AND_ACTIVE(source.pk)
    active = next((rollout for rollout in rows if rollout.phase in Rollout.ACTIVE_PHASES), None)
    return (rows[0] if rows else None), active


def _floor_now(source: Source) -> int:
    """The source's approval floor as stored now. An administrator who raises it meanwhile either
    committed first (read here) or waits for this pass's transaction, then gates the rollout it started.
    Its scope is read in the same statement: the pass read the source before its fetch, and the new
    rollout's first weight checks its targets against the scope as it is now (``_outside_scope_now``).
    So is its directory: one moved since the pass read it (no rollout was under way to refuse the move)
    holds other content than the pass loaded, and no rollout starts of it (``SourceMovedMeanwhile``). So
    are its repository and branch: the commit the pass fetched is not what the source follows now."""
    floor, allowed, path, url, branch = (
        Source.objects.select_for_update(no_key=True)
        .values_list("required_approvals", "allowed_namespaces", "path", "url", "branch")
        .get(pk=source.pk)
    )
    if path != source.path:
        raise SourceMovedMeanwhile(
            f"{source.name} moved to {_directory(path)} while this pass read the one before; the next "
            "pass reads it"
        )
    if (url, branch) != (source.url, source.branch):
        raise SourceMovedMeanwhile(
            f"{source.name} moved to branch {branch!r} of {url_without_query(url)} while this pass fetched "
            f"from branch {source.branch!r} of {url_without_query(source.url)}; the next pass fetches it"
        )
    source.required_approvals, source.allowed_namespaces = floor, allowed
    return int(floor)


class FlagKeysTaken(RevisionRejected):
    """Another source published, or started a rollout that publishes, one of the revision's flag keys
    where it would publish it, after the pass validated it: no rollout starts, and the revision is
    rejected as validation would have rejected it."""


def _flag_keys_claimed(source: Source, desired: DesiredState) -> FlagClaims:
    """The new rollout's claim on its flag keys (``Rollout.flag_claims``), or FlagKeysTaken. Asked again
    here, under one lock for every source's rollout starts (``flag_keys_lock``, held until the rollout is
    committed), so that of two sources starting one key about the same time the second sees the first's
    claim: each had validated its revision before either's rollout existed, and both went out."""
    keys = flag_keys(desired)
    if not keys.definitions:
        return []
    flag_keys_lock()
    _flag_keys_free(source, desired)
    return flag_claims(keys)


def _flag_keys_free(source: Source, desired: DesiredState) -> None:
    """Raises FlagKeysTaken when another source publishes, or its rollout under way claimed, one of the
    revision's flag keys where the revision would publish it (as validation asks it)."""
    errors = flag_keys_elsewhere(source, desired)
    if errors:
        raise FlagKeysTaken(errors)


class SourceMovedMeanwhile(TemporaryError):
    """The source's directory, repository or branch changed between the pass's read of it and the start
    of a rollout."""


def rollout_start(
    source: Source,
    revision: Revision,
    desired: DesiredState,
    *,
    actor: str,
    commit_identities: Sequence[str] = (),
    why: str = "",
) -> Rollout:
    # The administrator's floor comes on top of whatever the repository asks for: as stored now, not as
    # the pass read it before its fetch and validation (``_floor_now``).
    # Started with its timeline's first line, or not at all.
    with transaction.atomic():
        floor = _floor_now(source)
        claims = _flag_keys_claimed(source, desired)
        rollout = _created(
            source,
            revision,
            desired,
            floor=floor,
            actor=actor,
            commit_identities=commit_identities,
            claims=claims,
        )
        if revision.outcome != Revision.Outcome.VALID:  # a queued one (a new one is made valid already)
            Revision.objects.filter(pk=revision.pk).exclude(outcome=Revision.Outcome.REJECTED).update(
                outcome=Revision.Outcome.VALID
            )
        message = f"rollout of {revision.commit[:12]} in {len(rollout.steps)} steps{why}"
        rollout_event(rollout, RolloutEventKind.STARTED, actor=actor, message=message)
    return rollout


def rollout_drive(
    rollout: Rollout,
    desired: DesiredState,
    *,
    actor: str,
    retry_failed: bool = False,
    held: Gate | None = None,
    gate_now: Callable[[], Gate | None] | None = None,
    fresh: bool = False,
) -> StepOutcome:
    """Moves the rollout as far as it can go now: until a pause, an end, or a failure.

    ``held`` (a freeze or a closed sync window) stops every automatic step: a
    timed pause that ran out waits, no weight is applied and no analysis runs,
    unless an administrator's override released the step. Aborts always go on.
    ``gate_now``: the gate as it stands, asked before each weight or analysis: a freeze set while the
    pass runs (a consumer gate's wait, a long apply, steps back to back) stops the steps after it.
    ``fresh``: the caller read the rollout (with its source and revision) a moment
    ago, so the first step does not read it again.
    """
    outcome = StepOutcome()
    stale = not fresh
    while True:
        if stale:
            rollout.reload()
        stale = True
        steps = steps_from_json(rollout.steps)  # an administrator may add a gate while it runs
        if gate_now is not None:  # a completed rollout's self-heal writes too
            held = gate_now()
        if _settled(rollout, desired, steps, outcome, actor=actor, retry_failed=retry_failed, held=held):
            return outcome
        # _settled may have read the rollout again (a pause or a consumer gate ended): its steps as stored
        # now, with any gate an administrator added meanwhile.
        step = steps_from_json(rollout.steps)[rollout.step_index]
        if gate_now is not None and isinstance(step, SetWeight | Analysis):
            held = gate_now()  # _settled may have waited on a consumer gate
        if held is not None and isinstance(step, SetWeight | Analysis) and not overridden(rollout, held):
            outcome.outcome = Outcome.HELD
            return outcome
        if not _take_step(rollout, step, desired, outcome, actor=actor):
            return outcome


def overridden(rollout: Rollout, held: Gate) -> bool:
    """Whether an administrator's promote through a freeze or closed window released the current steps
    from ``held``, what holds the source now.

    The release lasts until the next weight is applied (that clears ``promoted_by``),
    like any promote: the step it lets go is the one a promote lets go. It releases what held the
    source when it was given, not a freeze set or a window closed after it: a step that failed to go
    out (its clusters did not answer) went out later through a new incident's freeze nobody overrode.
    """
    if not rollout.promoted_by:
        return False
    latest = (
        RolloutEvent.objects.filter(rollout=rollout, kind=RolloutEventKind.PROMOTED)
        .order_by("-id")
        .values_list("data", flat=True)
        .first()
    )
    if not latest or not latest.get("override"):
        return False
    # Released before the hold was recorded with it (2026-12-07): as then, whatever holds.
    return "holds" not in latest or latest["holds"] == held.holds


def rollback_asked(rollout: Rollout) -> StepOutcome:
    """Carries out the rollback asked for (a person's abort) or decided (Sluice's, resumed after a crash),
    ending as it says; Failed, with why, when a restore was refused."""
    phase = rollout.decided_rollback_phase
    reason = rollout.abort_reason or "aborted"
    failures = rollout_rollback(rollout, actor=rollout.abort_requested_by, reason=reason, phase=phase)
    return StepOutcome(Outcome.FAILED if failures else Outcome(phase.lower()), failures=failures)


def _settled(
    rollout: Rollout,
    desired: DesiredState,
    steps: tuple[Step, ...],
    outcome: StepOutcome,
    *,
    actor: str,
    retry_failed: bool,
    held: Gate | None,
) -> bool:
    """Whether the rollout stops here: aborted, ended, waiting, or past its last step. Sets the outcome."""
    if rollout.abort_requested_by and rollout.is_active:
        asked = rollback_asked(rollout)
        outcome.outcome = asked.outcome
        outcome.failures.extend(asked.failures)
        return True
    if rollout.phase == Rollout.Phase.COMPLETED:
        if held is None:  # keep the finished revision in place: drift, self-heal, prune
            last = max(len(steps) - 1, 0)
            outcome.merge(weight_apply(rollout, desired, 100, last, actor, retry_failed=retry_failed))
        return True
    if not rollout.is_active:
        outcome.outcome = Outcome(rollout.phase.lower())
        return True
    if rollout.phase == Rollout.Phase.PAUSED and rollout.waiting_for == Waiting.CONSUMERS:
        opened = wave_gate_pass(rollout, outcome.failures)
        rollout.reload()
        if opened:  # on to the next step, or the end
            return _settled_again(
                rollout, desired, outcome, actor=actor, retry_failed=retry_failed, held=held
            )
        outcome.outcome = Outcome.PAUSED if rollout.is_active else Outcome(rollout.phase.lower())
        return True
    if rollout.phase == Rollout.Phase.PAUSED:
        # While held, a timer or an analysis back-off that ran out waits: beat's sweep leaves it alone too.
        if held is not None or not pause_is_over(rollout):
            outcome.outcome = Outcome.FAILED if outcome.failures else Outcome.PAUSED
            return True
        # The pause just ended: look again, as stored now (an administrator may have added a gate).
        rollout.reload()
        return _settled_again(rollout, desired, outcome, actor=actor, retry_failed=retry_failed, held=held)
    if rollout.step_index >= len(steps):
        _complete(rollout)
        outcome.outcome = Outcome.APPLIED if outcome.outcome is Outcome.APPLIED else Outcome.COMPLETED
        return True
    return False


def _settled_again(
    rollout: Rollout,
    desired: DesiredState,
    outcome: StepOutcome,
    *,
    actor: str,
    retry_failed: bool,
    held: Gate | None,
) -> bool:
    """``_settled`` of the rollout just read again, with its steps as stored now."""
    steps = steps_from_json(rollout.steps)
    return _settled(rollout, desired, steps, outcome, actor=actor, retry_failed=retry_failed, held=held)


def _take_step(
    rollout: Rollout, step: Step, desired: DesiredState, outcome: StepOutcome, *, actor: str
) -> bool:
    """Runs one step; False when the rollout stops (it failed, pauses, or its analysis did not pass)."""
    if isinstance(step, SetWeight):
        return _set_weight(rollout, step, desired, outcome, actor=actor)
    if isinstance(step, Pause):
        pause(rollout, step)
        return True
    if isinstance(step, Analysis) and not analyse(rollout, step, outcome.failures):
        # Paused for a retry, or rolled back: Aborted, or Failed when a restore was refused.
        outcome.outcome = Outcome.PAUSED if rollout.is_active else Outcome(rollout.phase.lower())
        return False
    return True


def _set_weight(
    rollout: Rollout, step: SetWeight, desired: DesiredState, outcome: StepOutcome, *, actor: str
) -> bool:
    step_actor = rollout.promoted_by or actor
    if _scope_narrowed(rollout, desired, outcome, step_actor):
        return False
    try:
        result = weight_apply(rollout, desired, step.weight, rollout.step_index, step_actor)
    except CanaryRefused as refused:
        # No canary of this step can be published, whatever the next pass does: the rollout fails and
        # rolls back what earlier steps published. Left Progressing, it failed every pass, and a fix
        # pushed under ``onNewRevision: queue`` waited behind it for good.
        outcome.failures.append(str(refused))
        _step_failed(rollout, outcome, [str(refused)], step_actor)
        return False
    failpoint("before-restart")
    if _abort_asked_meanwhile(rollout):
        # Asked while the step applied: rolled back now, its consumers never restarted onto content
        # that is taken back at once (restarted twice, before, on an abort in the middle of an incident).
        outcome.merge(result)
        asked = rollback_asked(rollout)
        outcome.outcome = asked.outcome
        outcome.failures.extend(asked.failures)
        return False
    return _restarted_and_moved(rollout, step, result, outcome, step_actor)


def _scope_narrowed(rollout: Rollout, desired: DesiredState, outcome: StepOutcome, actor: str) -> bool:
    """Whether an administrator narrowed the source's scope since this pass validated the revision (during
    its fetch, while an analysis ran, a consumer gate waited): the step would write where it is no longer
    allowed. It fails, and rolls back, as the next pass would fail the revision."""
    outside = _outside_scope_now(rollout.source, desired)
    if not outside:
        return False
    shown = ", ".join(f"{cluster}/{namespace}" for cluster, namespace in outside[:5])
    message = f"{shown} no longer in the source's scope (an administrator narrowed it)"
    outcome.failures.append(message)
    _step_failed(rollout, outcome, [message], actor)
    return True


def _restarted_and_moved(
    rollout: Rollout, step: SetWeight, result: StepOutcome, outcome: StepOutcome, step_actor: str
) -> bool:
    """After the step's applies: its consumers restarted, then the rollout held at their gate or moved on;
    False when it stops here (it failed, or waits for a cluster)."""
    consumers: list[dict[str, object]] = []
    # The wave's consumers restart once all of its clusters have it, and not for a step that rolls back
    # whole (a write refused): restarted onto the new content, they were restarted back at once.
    if not result.unreachable and not result.failures:
        wave = wave_restart(rollout, step_index=rollout.step_index, weight=step.weight, actor=step_actor)
        consumers = wave.states
        result.failures.extend(wave.failures)
        result.unreachable.update(wave.unreachable)
    outcome.merge(result)
    if result.failures:
        # A step the cluster refused in part rolls back whole, as a failed wave does: left as it was,
        # the targets it did change would keep the new content, and the next commit's rollout would
        # take that half-applied state as its baseline.
        _step_failed(rollout, outcome, result.failures, step_actor)
        return False
    if result.unreachable:
        wait_for_clusters(rollout, result.unreachable, weight=step.weight)
        outcome.outcome = Outcome.PAUSED
        return False
    if result.outcome is Outcome.APPLIED:
        consumer_map_refresh(rollout)
    # The step's line with the move it makes, or neither: a worker killed between them lost the line for
    # good (the next pass finds the rollout moved), or told the step twice (it takes the step again).
    with transaction.atomic():
        if consumers:
            _step_event(rollout, step, result, step_actor, step_index=rollout.step_index)
            if not wave_gate_close(rollout, consumers, weight=step.weight, actor=step_actor):
                transaction.set_rollback(True)  # moved meanwhile: the step's line goes with the gate
            return True
        if transition(
            rollout, weight=step.weight, step_index=rollout.step_index + 1, promoted_by="", message=""
        ):
            _step_event(rollout, step, result, step_actor, step_index=rollout.step_index - 1)
    return True  # moved, or someone rewrote the steps meanwhile: the loop reads them again


def _outside_scope_now(source: Source, desired: DesiredState) -> list[tuple[str, str]]:
    """The revision's targets the source's scope, as read with the rollout this turn, no longer allows."""
    targets = {(obj.cluster, obj.namespace) for obj in desired.objects}
    return sorted(targets - in_scope(source, targets))


def _step_failed(rollout: Rollout, outcome: StepOutcome, failures: list[str], actor: str) -> None:
    """The step's failure on the timeline, then the rollout's rollback, ending it Failed (Aborted when a
    person's abort was stored first)."""
    message = "; ".join(failures[:5])
    rollout_event(rollout, RolloutEventKind.FAILED, actor=actor, message=message)
    # Numbered as the page, `gitops status`, the timeline and a promote's --step number it (from 0): it
    # said "step 1 failed" for the step the page showed as step 0.
    reason = f"step {rollout.step_index} failed: {message}"
    outcome.failures.extend(
        rollout_rollback(rollout, actor=SYSTEM_ACTOR, reason=reason, phase=Rollout.Phase.FAILED)
    )
    # A person's abort stored first is what the rollback carried out: the rollout ends Aborted.
    aborted = rollout.phase == Rollout.Phase.ABORTED
    outcome.outcome = Outcome.ABORTED if aborted else Outcome.FAILED


def _abort_asked_meanwhile(rollout: Rollout) -> bool:
    """Whether a person's abort was stored since this pass read the rollout (one indexed read); the
    rollout is read again when so. Only a step that may restart asks (``consumers: restart``): any
    other has nothing to spare, and the next turn of the loop finds the abort."""
    if rollout.consumers != ConsumerMode.RESTART or rollout.abort_requested_by:
        return False
    if not Rollout.objects.filter(pk=rollout.pk).exclude(abort_requested_by="").exists():
        return False
    rollout.reload()
    return rollout.is_active


def _step_event(
    rollout: Rollout, step: SetWeight, result: StepOutcome, actor: str, *, step_index: int
) -> None:
    counts = ", ".join(f"{n} {action}" for action, n in sorted(result.summary.items())) or "nothing to change"
    rollout_event(
        rollout,
        RolloutEventKind.STEP,
        actor=actor,
        step=step_index,
        weight=step.weight,
        message=f"setWeight {step.weight}: {counts}",
        data=result.summary,
    )


def _complete(rollout: Rollout) -> None:
    now = timezone.now()
    # One transaction: a worker killed after the transition left the revision unapplied (the status and
    # the API showed the commit before as applied) and the completion unannounced, for good, since later
    # passes find the rollout completed. Rolled back, the next pass completes it again.
    with transaction.atomic():
        if transition(
            rollout, phase=Rollout.Phase.COMPLETED, finished_at=now, waiting_for=Waiting.NOTHING, message=""
        ):
            failpoint("completing")
            Revision.objects.filter(pk=rollout.revision_id).update(outcome=Revision.Outcome.APPLIED)
            rollout_event(rollout, RolloutEventKind.COMPLETED, message="all targets have the new content")


def _created(
    source: Source,
    revision: Revision,
    desired: DesiredState,
    *,
    floor: int,
    actor: str,
    commit_identities: Sequence[str],
    claims: FlagClaims,
) -> Rollout:
    """The new rollout's row, with the administrator's floor ``floor`` on top of the repository's."""
    policy = desired.policy
    steps = policy.rollout.steps
    if floor:
        steps = with_approval_gate(steps, functools.partial(largest_share, desired))
    planned = [step.as_json() for step in steps]
    return Rollout.objects.create(
        source=source,
        revision=revision,
        phase=Rollout.Phase.PROGRESSING,
        steps=planned,
        planned_steps=planned,
        approvals_required=max(policy.approvals.required, floor),
        consumers=policy.rollout.consumers,
        health_timeout_seconds=policy.rollout.health_timeout_seconds,
        forbid_self_approval=policy.approvals.forbid_self_approval or floor > 0,
        commit_identities=sorted({identity.lower() for identity in commit_identities}),
        content_hash=desired_hash(desired),
        path=source.path,
        flag_claims=claims,
        created_by=actor,
    )
