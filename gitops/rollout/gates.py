"""What a rollout waits at: timed pauses, approval gates, analysis checks; timers live in the database."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from gitops import schedule
from gitops.desired.policy import Analysis, Pause
from gitops.models import Rollout
from gitops.record.events import rollout_event
from gitops.rollout.analysis import run_analysis
from gitops.rollout.rollback import rollout_rollback
from gitops.rollout.state import SYSTEM_ACTOR, transition
from gitops.vocabulary import RolloutEventKind, Waiting


def pause_is_over(rollout: Rollout) -> bool:
    """Ends a timed pause or an analysis back-off whose time has come."""
    if rollout.waiting_for not in (Waiting.TIMER, Waiting.ANALYSIS):
        return False
    if rollout.pause_until is None or rollout.pause_until > timezone.now():
        return False
    # A timer moves past its step; an analysis back-off runs the same check again.
    timer = rollout.waiting_for == Waiting.TIMER
    next_step = rollout.step_index + 1 if timer else rollout.step_index
    resumed = transition(
        rollout,
        phase=Rollout.Phase.PROGRESSING,
        waiting_for=Waiting.NOTHING,
        pause_until=None,
        step_index=next_step,
    )
    if resumed:
        message = "timed pause over" if timer else "running the analysis again"
        rollout_event(rollout, RolloutEventKind.RESUMED, message=message)
    return resumed


def pause(rollout: Rollout, step: Pause) -> None:
    if step.seconds is None:
        transition(rollout, phase=Rollout.Phase.PAUSED, waiting_for=Waiting.APPROVAL, pause_until=None)
        needed = rollout.approvals_required
        message = f"waiting for {needed} approval{'s' if needed > 1 else ''}"
        rollout_event(rollout, RolloutEventKind.PAUSED, message=message)
        return
    until = timezone.now() + timedelta(seconds=step.seconds)
    transition(rollout, phase=Rollout.Phase.PAUSED, waiting_for=Waiting.TIMER, pause_until=until)
    rollout_event(
        rollout, RolloutEventKind.PAUSED, message=f"timed pause of {step.seconds}s, until {until.isoformat()}"
    )
    # Beat's sweep also resumes due rollouts, so a worker restart loses nothing; this only makes it prompt.
    schedule.source_sync_at(rollout.source_id, until)


def analyse(rollout: Rollout, step: Analysis) -> bool:
    """Runs the check; True when the rollout goes on now."""
    payload = {
        "source": rollout.source.name,
        "rollout": rollout.pk,
        "revision": rollout.revision.commit,
        "step": rollout.step_index,
        "weight": rollout.weight,
    }
    result = run_analysis(step, payload, rollout.source.scope)
    failures = 0 if result.passed else rollout.analysis_failures + 1
    data = {"passed": result.passed, "failures": failures}
    rollout_event(rollout, RolloutEventKind.ANALYSIS, message=result.detail, data=data)
    if result.passed:
        transition(rollout, step_index=rollout.step_index + 1, analysis_failures=0)
        return True
    if failures >= step.failure_limit:
        transition(rollout, analysis_failures=failures)
        reason = f"analysis failed: {result.detail}"
        rollout_rollback(rollout, actor=SYSTEM_ACTOR, reason=reason, phase=Rollout.Phase.ABORTED)
        return False
    until = timezone.now() + timedelta(seconds=step.interval_seconds)
    transition(
        rollout,
        phase=Rollout.Phase.PAUSED,
        waiting_for=Waiting.ANALYSIS,
        pause_until=until,
        analysis_failures=failures,
    )
    schedule.source_sync_at(rollout.source_id, until)
    return False
