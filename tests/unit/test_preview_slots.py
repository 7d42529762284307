"""How long a preview holds its slot (gitops/schedule.py): as long as a worker may still be running it.

A preview may wait in the queue until its task expires, then fetch for as long as its fetch may take and
plan. A slot that ran out sooner let a second preview in while the first still ran: past the caps.
Redis is stood in for by the sorted sets the slot script keeps, with a clock the test moves on.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from gitops import schedule


class SlotSets:
    """Redis's answers to ``_TAKE_PREVIEW_SLOT``: a sorted set of task ids by deadline per key."""

    def __init__(self) -> None:
        self.sets: dict[str, dict[str, float]] = {}

    def eval(self, script: str, key_count: int, *args: Any) -> list[Any] | None:
        assert script == schedule._TAKE_PREVIEW_SLOT
        keys, (now, cap, deadline, task_id, _ttl, total_cap) = args[:key_count], args[key_count:]
        for key in keys:  # ZREMRANGEBYSCORE -inf now
            self.sets[key] = {task: score for task, score in self.sets.get(key, {}).items() if score > now}
        for index, (key, limit) in enumerate(zip(keys, (cap, total_cap), strict=True), start=1):
            if limit > 0 and len(self.sets[key]) >= limit:
                return [index, str(min(self.sets[key].values()))]
        for key in keys:
            self.sets[key][task_id] = deadline
        return None


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        return self.now


@pytest.fixture
def slots(monkeypatch, settings) -> tuple[SlotSets, Clock]:
    settings.SLUICE_PREVIEWS_PER_USER = 1
    settings.SLUICE_PREVIEWS_TOTAL = 0
    sets, clock = SlotSets(), Clock()
    monkeypatch.setattr(schedule, "redis_client", lambda: sets)
    monkeypatch.setattr(schedule, "time", clock)
    return sets, clock


def test_a_slot_is_held_while_a_preview_that_started_late_still_fetches_and_plans(slots, settings):
    _, clock = slots
    asked = clock.now
    schedule._preview_slot_take("vera", "first")

    # The first preview waited in the queue until just before its task expired, fetched for as long as
    # its fetch may take, and is reading the clusters for the plan, within their list deadline.
    clock.now = (
        asked
        + schedule.preview_deadline_seconds()
        - 1
        + settings.SLUICE_PREVIEW_TIMEOUT_SECONDS
        + settings.SLUICE_CLUSTER_LIST_DEADLINE
    )
    with pytest.raises(schedule.PreviewsBusy, match="vera already has 1"):
        schedule._preview_slot_take("vera", "second")

    clock.now = asked + 3600  # no worker can still run it: a worker that died does not hold it for ever
    schedule._preview_slot_take("vera", "second")


def test_the_slot_outlives_the_task_expiry_by_a_whole_fetch_and_plan(slots, settings, monkeypatch):
    sets, clock = slots
    sent: dict[str, Any] = {}

    class Broker:
        def send_task(self, name: str, **options: Any) -> None:
            sent.update(options)

    monkeypatch.setattr(schedule, "app", Broker())
    task_id = schedule.revision_preview(1, "refs/pull/7/head", actor="vera")

    held_until = sets.sets[schedule._preview_slots_key("vera")][task_id]
    run = settings.SLUICE_PREVIEW_TIMEOUT_SECONDS + settings.SLUICE_CLUSTER_LIST_DEADLINE
    assert held_until - clock.now >= sent["expires"] + run
    assert sent["expires"] == schedule.preview_deadline_seconds(), "the web waits as long as before"
