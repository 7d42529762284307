"""Waiting on rollouts in tests, by polling the database with a deadline."""

from __future__ import annotations

from gitops.models import Rollout
from tests.workers import poll


def rollout_of(source) -> Rollout | None:
    return Rollout.objects.filter(source=source).order_by("-id").first()


def wait_for(source, *, timeout: float = 60, **expected) -> Rollout:
    def reached():
        current = rollout_of(source)
        return current if current and all(getattr(current, k) == v for k, v in expected.items()) else None

    return poll(reached, timeout=timeout, interval=0.1, what=f"rollout of {source.name} to reach {expected}")


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
