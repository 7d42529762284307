"""Previews against the real stack, for what the unit tests stand in for: a slot held in the real Redis for
as long as a preview may still run, and what a preview says it would change when the plan holds a
conflict (a ConfigMap that is not Sluice's), on the dashboard (through a real worker) and in
``gitops diff --revision``. The refs a killed preview leaves are tested with real git in
tests/unit/test_preview_leftovers.py."""

from __future__ import annotations

import time

import pytest

from tests.integration.test_preview import (  # noqa: F401 - fixtures
    Remote,
    gitops,
    logged_in,
    preview_answer,
    remote,
)

pytestmark = pytest.mark.django_db(transaction=True)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        return self.now


def test_a_preview_slot_stays_held_while_a_preview_that_started_late_still_runs(settings, monkeypatch):
    """A preview may wait in the queue until its task expires, then fetch and plan: its slot in Redis
    lasts that long, or a second preview gets in while it still runs, past the person's cap."""
    from gitops import schedule
    from gitops.celery import redis_client

    settings.SLUICE_PREVIEWS_PER_USER, settings.SLUICE_PREVIEWS_TOTAL = 1, 0
    clock = Clock()
    monkeypatch.setattr(schedule, "time", clock)
    actor = f"slow-{time.monotonic_ns()}"
    slots = redis_client()
    try:
        asked = clock.now
        schedule._preview_slot_take(actor, "started-at-its-expiry")
        clock.now = (
            asked
            + schedule.preview_deadline_seconds()
            - 1
            + settings.SLUICE_PREVIEW_TIMEOUT_SECONDS
            + settings.SLUICE_CLUSTER_LIST_DEADLINE
        )
        with pytest.raises(schedule.PreviewsBusy, match=f"{actor} already has 1"):
            schedule._preview_slot_take(actor, "a-second-one")
        assert slots.ttl(f"sluice:previews:{actor}") >= schedule.preview_slot_seconds() - 5

        clock.now = asked + schedule.preview_slot_seconds() + 1  # its worker died: the slot frees itself
        schedule._preview_slot_take(actor, "a-second-one")
    finally:
        slots.delete(f"sluice:previews:{actor}", "sluice:previews-all")


def foreign_extra(previewed: Remote, core_api) -> str:
    """The ConfigMap the pull request adds, made by someone else first in the first namespace."""
    namespace = previewed.targets[0]
    core_api.create_namespaced_config_map(namespace, {"metadata": {"name": "extra"}, "data": {"K": "theirs"}})
    return namespace


def test_the_dashboard_counts_a_conflict_apart_from_what_would_change(
    remote: Remote,  # noqa: F811 - the fixture imported above
    people,
    celery_worker,
    core_api,
):
    foreign_extra(remote, core_api)
    viewer = logged_in("vera")

    asked = viewer.post(f"/sources/{remote.source.name}/preview/", {"revision": "refs/pull/7/head"})

    fragment = " ".join(preview_answer(viewer, asked["Location"]).split())
    assert 'data-outcome="planned"' in fragment
    assert "Applying it now would change 3 objects: 2 update, 1 create." in fragment
    assert "Left alone: 1 conflict (not Sluice&#x27;s)." in fragment
    assert "would change 4" not in fragment


def test_gitops_diff_revision_counts_a_conflict_apart_from_what_would_change(
    gitops,  # noqa: F811 - the fixture imported above
    remote: Remote,  # noqa: F811
    core_api,
):
    foreign_extra(remote, core_api)

    printed = gitops("diff", remote.source.name, "--revision", "refs/pull/7/head")

    assert "would change 3 objects (1 create, 2 update); left alone: 1 conflict" in printed
    assert core_api.read_namespaced_config_map("extra", remote.targets[0]).data == {"K": "theirs"}
