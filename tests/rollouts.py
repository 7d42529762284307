"""Waiting on rollouts in tests, by polling the database with a deadline."""

from __future__ import annotations

import time

from django.utils import timezone

from gitops.models import Rollout
from tests.workers import ARTIFACTS

# A rollout in one of these phases never moves again: a retry or a new commit makes a new rollout.
SETTLED = frozenset({"Completed", "Aborted", "Failed", "Superseded"})


def rollout_of(source) -> Rollout | None:
    return Rollout.objects.filter(source=source).order_by("-id").first()


def wait_for(source, *, timeout: float = 60, of: Rollout | None = None, **expected) -> Rollout:
    """The source's newest rollout once it has ``expected``. ``of``: the rollout the test is waiting on;
    the wait fails at once when that one settled otherwise (a wave rolled back, say). A wait that fails
    says where the rollout stood (``rollout_report``): the test's log may be all that is left of a run."""
    deadline = time.monotonic() + timeout
    while True:
        current = rollout_of(source)
        if current is not None and all(getattr(current, k) == v for k, v in expected.items()):
            return current
        settled = of is not None and current is not None and current.pk == of.pk and current.phase in SETTLED
        if settled or time.monotonic() >= deadline:
            why = f"rollout {of.pk} settled as {current.phase}" if settled else f"timed out after {timeout}s"
            raise AssertionError(
                f"{why} waiting for rollout of {source.name} to reach {expected}\n"
                + rollout_report(source, current, since=time.time() - timeout - 60)
            )
        time.sleep(0.1)


def rollout_report(source, rollout: Rollout | None, *, since: float = 0.0, events: int = 12) -> str:
    """Where a rollout stood: its state and latest events, the source's bookkeeping (a pass that failed
    for good backs it off, and no beat runs in these tests to take it up again), whether a pass holds it
    now, and the workers' log lines that name it (written since ``since``, a time.time())."""
    from gitops.locks import source_lock_held
    from gitops.models import ApplyIntent, PassClaim, Source

    now = timezone.now()
    lines: list[str] = []
    if rollout is None:
        lines.append("no rollout")
    else:
        until = f"{(rollout.pause_until - now).total_seconds():+.0f}s" if rollout.pause_until else "none"
        lines.append(
            f"rollout {rollout.pk}: phase={rollout.phase} waiting_for={rollout.waiting_for or '-'} "
            f"step={rollout.step_index}/{len(rollout.steps)} weight={rollout.weight} pause_until={until} "
            f"abort={rollout.abort_requested_by or '-'} "
            f"updated {(now - rollout.updated_at).total_seconds():.0f}s ago"
        )
        if rollout.message:
            lines.append(f"  message: {rollout.message[:500]}")
        lines.extend(
            f"  consumer {s.get('namespace')}/{s.get('name')}: {s.get('health')} {s.get('detail', '')}"
            for s in rollout.consumer_states
        )
        pending = ApplyIntent.objects.filter(rollout=rollout, status=ApplyIntent.Status.PENDING).count()
        lines.append(f"  intents pending: {pending}")
        lines.extend(
            f"  {e.at:%H:%M:%S.%f} {e.kind} step={e.step_index} w={e.weight} {e.actor}: {e.message[:300]}"
            for e in reversed(list(rollout.events.order_by("-id")[:events]))
        )
    fields = ("last_error", "consecutive_failures", "next_poll_at", "sync_requested_at", "sync_queued")
    bookkeeping = Source.all_objects.filter(pk=source.pk).values(*fields).first()
    lines.append(f"source {source.name} ({source.pk}): {bookkeeping}")
    claim = PassClaim.objects.filter(source_id=source.pk).values("holder", "alive_at").first()
    lines.append(f"  reconcile lock held now: {source_lock_held(source.pk)}; pass claim: {claim}")
    lines.extend(_worker_lines(source, since))
    return "\n".join(lines)


def _worker_lines(source, since: float, last: int = 40) -> list[str]:
    """The workers' log lines (test-artifacts/workers) that name the source: its passes, steps, failures
    and retries; the logs of a fresh clone's run go with the clone."""
    marks = (f'"{source.name}"', f"source={source.name} ", f"'{source.name}'", f"source {source.pk} ")
    found: list[str] = []
    for path in sorted((ARTIFACTS / "workers").glob("test-*.log")):
        if path.stat().st_mtime < since:
            continue
        with open(path, errors="replace") as log:
            found += [
                f"  {path.name}: {line.rstrip()[:400]}" for line in log if any(m in line for m in marks)
            ]
    return ["worker log lines:", *found[-last:]] if found else ["no worker log line names the source"]


def deny_window_letting_people_sync(*, by: str = "ines"):
    """A deny window open now, for two hours, over every source, that lets a person's sync through."""
    from gitops import freezes
    from gitops.windows import parse_duration

    return freezes.window_add(
        kind="deny",
        schedule_text="* * * * *",
        duration=parse_duration("2h"),
        sources=["*"],
        manual_sync=True,
        by=by,
    )
