"""What a rollout waits at: timed pauses, approval gates, analysis checks; timers live in the database."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from gitops import schedule
from gitops.desired.policy import Analysis, Pause
from gitops.failpoints import failpoint
from gitops.models import Rollout
from gitops.record.events import rollout_event
from gitops.rollout.analysis import run_analysis
from gitops.rollout.rollback import rollback_decide, rollout_rollback
from gitops.rollout.state import cluster_retry_delay, transition, unreachable_text
from gitops.vocabulary import SYSTEM_ACTOR, RolloutEventKind, Waiting


def pause_is_over(rollout: Rollout) -> bool:
    """Ends a timed pause, an analysis back-off or a wait for a cluster whose time has come."""
    if rollout.waiting_for not in (Waiting.TIMER, Waiting.ANALYSIS, Waiting.CLUSTER):
        return False
    if rollout.pause_until is None or rollout.pause_until > timezone.now():
        return False
    # A timer moves past its step; an analysis back-off runs the same check again, and a
    # step that waits for a cluster is taken again (what is applied already stays unchanged).
    timer = rollout.waiting_for == Waiting.TIMER
    next_step = rollout.step_index + 1 if timer else rollout.step_index
    cluster = rollout.waiting_for == Waiting.CLUSTER
    with transaction.atomic():  # the move with its timeline's line, or neither (see ``pause``)
        resumed = transition(
            rollout,
            phase=Rollout.Phase.PROGRESSING,
            waiting_for=Waiting.NOTHING,
            pause_until=None,
            step_index=next_step,
        )
        if resumed and not cluster:  # a cluster asked again every few seconds would flood the timeline
            message = "timed pause over" if timer else "running the analysis again"
            rollout_event(rollout, RolloutEventKind.RESUMED, message=message)
    return resumed


def wait_for_clusters(rollout: Rollout, unreachable: dict[str, str], *, weight: int) -> None:
    """Holds the step at clusters it needs and cannot reach: never skipped, tried again after a while.

    The timeline gets one ``paused`` event per reason, not one per try.
    """
    until = timezone.now() + cluster_retry_delay()
    names = ", ".join(sorted(unreachable))
    message = f"waiting for cluster {names} (setWeight {weight}): {unreachable_text(unreachable)}"
    repeated = rollout.message == message
    # A failed compare-and-swap (an abort, a promote meanwhile) moved nothing: nothing to tell or time.
    with transaction.atomic():  # the move with its timeline's line, or neither (see ``pause``)
        if not transition(
            rollout,
            phase=Rollout.Phase.PAUSED,
            waiting_for=Waiting.CLUSTER,
            pause_until=until,
            message=message,
        ):
            return
        if not repeated:
            rollout_event(
                rollout, RolloutEventKind.PAUSED, message=message, data={"clusters": sorted(unreachable)}
            )
    schedule.source_sync_at(rollout.source_id, until)


def pause(rollout: Rollout, step: Pause) -> None:
    """Pauses at the step: for approvals, or until its time. The pause and its timeline's line (with the
    notification that tells the approvers) commit together: a worker killed between them left a rollout
    paused that no later pass announced, and approvers who rely on notifications were never told."""
    if step.seconds is None:
        needed = rollout.approvals_required
        message = f"waiting for {needed} approval{'s' if needed > 1 else ''}"
        with transaction.atomic():
            if transition(
                rollout, phase=Rollout.Phase.PAUSED, waiting_for=Waiting.APPROVAL, pause_until=None
            ):
                rollout_event(rollout, RolloutEventKind.PAUSED, message=message)
        return
    until = timezone.now() + timedelta(seconds=step.seconds)
    with transaction.atomic():
        if not transition(rollout, phase=Rollout.Phase.PAUSED, waiting_for=Waiting.TIMER, pause_until=until):
            return
        message = f"timed pause of {step.seconds}s, until {until.isoformat()}"
        rollout_event(rollout, RolloutEventKind.PAUSED, message=message)
    # Beat's sweep also resumes due rollouts, so a worker restart loses nothing; this only makes it prompt.
    schedule.source_sync_at(rollout.source_id, until)


def analyse(rollout: Rollout, step: Analysis, refusals: list[str]) -> bool:
    """Runs the check; True when the rollout goes on now, or someone moved it meanwhile (the drive looks
    again). The restores its rollback (the check failed for good) was refused go into ``refusals``."""
    payload = {
        "source": rollout.source.name,
        "rollout": rollout.pk,
        "revision": rollout.revision.commit,
        "step": rollout.step_index,
        "weight": rollout.weight,
    }
    result = run_analysis(step, payload, rollout.source.scope)
    failures = 0 if result.passed else rollout.analysis_failures + 1
    until = timezone.now() + timedelta(seconds=step.interval_seconds)
    # The check's line and the move it makes commit together, or neither: a worker killed between them
    # left a line for a check that counted for nothing, and its retry ran the check and wrote it again.
    # Someone who moved the rollout meanwhile (an abort) takes the line back with the move.
    reason = f"analysis failed: {result.detail}"
    failed_for_good = not result.passed and failures >= step.failure_limit
    with transaction.atomic():
        data = {"passed": result.passed, "failures": failures}
        rollout_event(rollout, RolloutEventKind.ANALYSIS, message=result.detail, data=data)
        moved = _analysis_moved(rollout, step, result.passed, failures, until)
        if not moved:
            transaction.set_rollback(True)
        elif failed_for_good:
            # The decision to roll back commits with the failure that makes it: a worker killed between
            # the two left the rollout under way, and a check that passed on the next pass took it on.
            rollback_decide(rollout, actor=SYSTEM_ACTOR, reason=reason, phase=Rollout.Phase.ABORTED)
    if not moved:
        # Someone moved it during the check (an abort, a promote): the drive reads it again and goes on
        # from where they left it, so an abort is carried out in this pass, not the next.
        return True
    if result.passed:
        return True
    if failed_for_good:
        failpoint("after-analysis-failed")
        refusals.extend(
            rollout_rollback(rollout, actor=SYSTEM_ACTOR, reason=reason, phase=Rollout.Phase.ABORTED)
        )
        return False
    schedule.source_sync_at(rollout.source_id, until)
    return False


def _analysis_moved(rollout: Rollout, step: Analysis, passed: bool, failures: int, until: datetime) -> bool:
    """The rollout's move after its check: the next step, its failure counted before the rollback, or a
    pause until the next try. False when someone moved it meanwhile."""
    if passed:
        return transition(rollout, step_index=rollout.step_index + 1, analysis_failures=0)
    if failures >= step.failure_limit:
        return transition(rollout, analysis_failures=failures)
    return transition(
        rollout,
        phase=Rollout.Phase.PAUSED,
        waiting_for=Waiting.ANALYSIS,
        pause_until=until,
        analysis_failures=failures,
    )
