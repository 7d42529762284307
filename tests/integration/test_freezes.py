"""Freezes and sync windows on the real stack: what is held, what goes on, and who may push through."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from gitops import access_admin, freezes, polling
from gitops.models import Approval, Change, Revision, Rollout, RolloutEvent, Source
from gitops.record.audit import Actor
from gitops.rollout import decisions
from gitops.rollout.decisions import RolloutError
from gitops.windows import parse_duration
from tests.gitrepo import configmap, policy
from tests.rollouts import deny_window_letting_people_sync, rollout_of, wait_for
from tests.workers import poll

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin(people) -> User:
    created = User.objects.create_user("ines", email="ines@example.com", password="x")
    created.groups.add(Group.objects.get(name="admin"))
    access_admin.user_email_verify(created, "ines@example.com", actor=Actor.command_line("admin"))
    return User.objects.get(pk=created.pk)


def version(cluster, namespace: str) -> str | None:
    live = cluster.get_configmap(namespace, "app")
    return None if live is None else (live.get("data") or {}).get("VERSION")


def first_commit(repo, make_source, sync, targets, **policy_extra):
    repo.write_all(
        {
            "sluice.yaml": policy(targets, **policy_extra),
            "configmaps/app.yaml": configmap("app", {"VERSION": "1"}),
        }
    )
    repo.commit("v1")
    source = make_source()
    assert sync(source)["outcome"] == "applied"
    return source


def second_commit(repo, targets, steps=None) -> str:
    extra = {"rollout": {"steps": steps}} if steps else {}
    repo.write_all(
        {"sluice.yaml": policy(targets, **extra), "configmaps/app.yaml": configmap("app", {"VERSION": "2"})}
    )
    return repo.commit("v2")


def freeze(source=None, hours: float = 2, reason: str = "release freeze"):
    until = timezone.now() + timedelta(hours=hours)
    return freezes.freeze_set(source, until=until, reason=reason, by="ines")


def test_a_frozen_source_fetches_and_plans_a_new_commit_but_applies_nothing_until_unfrozen(
    repo, make_namespaces, make_source, sync, cluster
):
    targets = make_namespaces("a", "b")
    source = first_commit(repo, make_source, sync, targets)
    freeze(source, reason="incident 42")
    v2 = second_commit(repo, targets)

    result = sync(source)  # a poll or a push: automatic
    assert result["outcome"] == "held"
    assert result["held"].startswith("frozen until ")
    assert result["held"].endswith("by ines (" + source.name + "): incident 42")
    assert [version(cluster, ns) for ns in targets] == ["1", "1"]
    assert not Change.objects.filter(source=source, commit=v2).exists()
    assert not Rollout.objects.filter(source=source, revision__commit=v2).exists(), "no rollout starts"
    assert Revision.objects.get(source=source, commit=v2).outcome == Revision.Outcome.VALID, "fetched"
    source.refresh_from_db()
    assert source.last_plan["commit"] == v2, "planned, so the pages show what waits"
    assert source.last_plan["held"] == result["held"]
    assert source.last_plan["summary"] == {"update": 2}
    assert sync(source, manual=True)["outcome"] == "held", "a freeze holds a person's sync too"

    lifted = freezes.freeze_lift(source, by="ines")
    assert [f.lifted_by for f in lifted] == ["ines"]
    # Lifting wakes the source: the held commit goes out without waiting for a poll.
    poll(
        lambda: Rollout.objects.filter(source=source, revision__commit=v2, phase="Completed").exists(),
        timeout=60,
        what="the held commit to go out",
    )
    assert [version(cluster, ns) for ns in targets] == ["2", "2"]


def test_a_freeze_of_every_source_holds_self_heal_too(repo, make_namespaces, make_source, sync, cluster):
    targets = make_namespaces("a")
    source = first_commit(repo, make_source, sync, targets, selfHeal=True)
    cluster.apply_configmap(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "app", "namespace": targets[0]},
            "data": {"VERSION": "edited by hand"},
        },
        field_manager="kubectl-edit",
        force=True,
    )
    everything = freeze(None, reason="holidays")
    assert sync(source)["outcome"] == "held"
    assert version(cluster, targets[0]) == "edited by hand", "nothing is changed, not even by self-heal"
    source.refresh_from_db()
    assert source.last_plan["summary"] == {"self-heal": 1}
    assert "(every source): holidays" in source.last_plan["held"]
    freezes.freeze_lift(None, by="ines")
    poll(lambda: version(cluster, targets[0]) == "1", timeout=60, what="self-heal after the freeze")
    everything.refresh_from_db()
    assert everything.lifted_at is not None


def test_a_timed_pause_waits_while_frozen_and_goes_on_after_unfreeze(
    repo, make_namespaces, make_source, sync, cluster
):
    targets = make_namespaces("a", "b")
    source = first_commit(repo, make_source, sync, targets)
    # Long enough for the freeze to come first on a busy machine; the pause's own wake-up then finds it.
    second_commit(repo, targets, [{"setWeight": 50}, {"pause": {"duration": "5s"}}, {"setWeight": 100}])
    assert sync(source)["outcome"] == "paused"
    paused = wait_for(source, phase="Paused", waiting_for="timer")
    freeze(source)
    poll(lambda: timezone.now() > paused.pause_until, timeout=15, what="the pause to run out")
    assert polling.sources_with_due_rollouts() == [], "beat's sweep leaves a held timer alone"

    assert sync(source)["outcome"] == "held"
    held = rollout_of(source)
    assert (held.phase, held.step_index, held.weight) == ("Paused", 1, 50)
    assert [version(cluster, ns) for ns in targets] == ["2", "1"]

    freezes.freeze_lift(source, by="ines")
    wait_for(source, phase="Completed", timeout=60)
    assert [version(cluster, ns) for ns in targets] == ["2", "2"]
    resumed = RolloutEvent.objects.get(rollout=held, kind="resumed")
    assert resumed.at > freezes.Freeze.objects.get(source=source).lifted_at


def test_a_promote_through_a_freeze_needs_an_administrator_who_records_an_override(
    paused_rollout, people, admin, cluster
):
    source = paused_rollout.source
    freeze(source, reason="black friday")

    with pytest.raises(PermissionDenied, match="only an administrator may promote now"):
        decisions.rollout_promote(paused_rollout.pk, user=people["approver"])
    with pytest.raises(RolloutError, match="needs an override reason"):
        decisions.rollout_promote(paused_rollout.pk, user=admin)
    assert not Approval.objects.filter(rollout=paused_rollout).exists()

    decisions.rollout_promote(paused_rollout.pk, user=admin, comment="ok", override="hotfix for INC-7")
    override = RolloutEvent.objects.get(rollout=paused_rollout, kind="override")
    assert override.actor == "ines"
    assert override.message.startswith("hotfix for INC-7 (overriding: frozen until ")
    assert override.data["reason"] == "hotfix for INC-7"
    assert override.data["gate"]["state"] == "frozen"
    assert Approval.objects.get(rollout=paused_rollout).username == "ines"
    # The step the override releases goes out while the freeze still holds.
    done = wait_for(source, phase="Completed", timeout=60)
    assert set(Change.objects.filter(rollout=done, step_index=2).values_list("actor", flat=True)) == {"ines"}
    assert freezes.Freeze.objects.get(source=source).lifted_at is None


def test_abort_and_rollback_work_while_frozen(paused_rollout, people, cluster):
    source = paused_rollout.source
    freeze(None, reason="everything frozen")
    decisions.rollout_abort(paused_rollout.pk, user=people["approver"], reason="bad canary")
    aborted = wait_for(source, phase="Aborted", timeout=60)
    assert Change.objects.filter(rollout=aborted, action="rollback").exists()
    namespace = Change.objects.filter(rollout=aborted, action="rollback").first().namespace
    assert (cluster.get_configmap(namespace, "app")["data"]) == {"V": "1"}


def test_a_deny_window_holds_automatic_syncs_and_lets_a_person_sync_when_manual_sync_is_allowed(
    repo, make_namespaces, make_source, sync, cluster
):
    targets = make_namespaces("a")
    source = first_commit(repo, make_source, sync, targets)
    two_hours = parse_duration("2h")
    always = freezes.window_add(
        kind="deny", schedule_text="* * * * *", duration=two_hours, sources=[source.name], by="ines"
    )
    v2 = second_commit(repo, targets)
    result = sync(source)
    assert result["outcome"] == "held"
    assert result["held"].startswith("in a sync window that denies changes until ")
    assert sync(source, manual=True)["outcome"] == "held", "manualSync is off"

    # The new window first: the removal wakes the source on the stack's worker, which must find it.
    deny_window_letting_people_sync()
    freezes.window_remove(always.pk, by="ines")
    assert sync(source)["outcome"] == "held"
    assert version(cluster, targets[0]) == "1"
    assert sync(source, manual=True)["outcome"] in ("applied", "completed")
    assert version(cluster, targets[0]) == "2"
    assert Change.objects.filter(source=source, commit=v2).exists()


def test_outside_every_allow_window_nothing_goes_out(repo, make_namespaces, make_source, sync, cluster):
    targets = make_namespaces("a")
    source = first_commit(repo, make_source, sync, targets)
    now = timezone.now()
    # An allow window that opened an hour ago for a minute: closed now.
    closed_hour = (now - timedelta(hours=1)).strftime("%M %H")
    freezes.window_add(
        kind="allow", schedule_text=f"{closed_hour} * * *", duration=parse_duration("1m"), sources=["*"]
    )
    second_commit(repo, targets)
    result = sync(source)
    assert result["outcome"] == "held"
    assert result["held"].startswith("outside its sync windows; the next opens at ")
    assert version(cluster, targets[0]) == "1"


def test_a_freeze_set_while_a_pass_runs_stops_the_steps_after_it(
    repo, make_namespaces, make_source, sync, cluster, monkeypatch
):
    """Steps back to back in one pass (or a consumer gate's wait, or a long apply): a freeze set after
    the first weight went out stops the next one, as it would at the next pass."""
    from gitops import reconcile
    from gitops.rollout import lifecycle

    targets = make_namespaces("a", "b")
    source = first_commit(repo, make_source, sync, targets)
    v2 = second_commit(repo, targets, steps=[{"setWeight": 50}, {"setWeight": 100}])
    monkeypatch.setattr(reconcile, "GATE_FRESH_SECONDS", 0.0)  # the freeze comes "more than a second" later
    real_apply = lifecycle.weight_apply

    def apply_then_freeze(rollout, desired, weight, *args, **kwargs):
        applied = real_apply(rollout, desired, weight, *args, **kwargs)
        if weight == 50:
            freeze(source, reason="incident 43")
        return applied

    monkeypatch.setattr(lifecycle, "weight_apply", apply_then_freeze)

    result = reconcile.source_sync(source.pk, automatic=True)

    assert result.outcome == "held", result
    assert result.held.startswith("frozen until ") and result.held.endswith("incident 43"), result.held
    assert sorted(version(cluster, ns) for ns in targets) == ["1", "2"], "half went out before the freeze"
    rollout = Rollout.objects.get(source=source, revision__commit=v2)
    assert rollout.is_active and rollout.step_index == 1, (rollout.phase, rollout.step_index)


def test_a_freeze_set_while_the_pass_fetches_keeps_a_new_commit_from_superseding_the_paused_rollout(
    repo, make_namespaces, make_source, sync, cluster, monkeypatch
):
    """The freeze comes while the pass fetches (or validates) the new commit: it read the gate before the
    fetch and, until 2026-12-07, not again before superseding the paused rollout (its rollback written to
    the clusters) and starting the new one."""
    from gitops import reconcile

    targets = make_namespaces("a", "b")
    source = first_commit(repo, make_source, sync, targets)
    v2 = second_commit(repo, targets, steps=[{"setWeight": 50}, {"pause": {}}])
    sync(source)
    paused = Rollout.objects.get(source=source, revision__commit=v2)
    assert paused.phase == "Paused", paused.phase
    repo.write("configmaps/app.yaml", configmap("app", {"VERSION": "3"}))
    v3 = repo.commit("v3")
    monkeypatch.setattr(reconcile, "GATE_FRESH_SECONDS", 0.0)  # the fetch took "more than a second"
    real_fetch = reconcile.revision_fetch

    def fetch_then_freeze(*args, **kwargs):
        fetched = real_fetch(*args, **kwargs)
        freeze(source, reason="incident 44")
        return fetched

    monkeypatch.setattr(reconcile, "revision_fetch", fetch_then_freeze)

    result = reconcile.source_sync(source.pk, automatic=True)

    assert result.outcome == "held", result
    assert result.held.endswith("incident 44"), result.held
    paused.refresh_from_db()
    assert paused.phase == "Paused", "not superseded: its rollback would have written to the clusters"
    assert not Rollout.objects.filter(source=source, revision__commit=v3).exists()
    assert sorted(version(cluster, ns) for ns in targets) == ["1", "2"], "the clusters as they were"


def test_a_floor_raised_over_a_held_retry_gates_it_before_its_first_step(
    repo, make_namespaces, make_source, sync, cluster, people
):
    """A retry made during a freeze waits before its first step. An administrator raises the approval
    floor meanwhile: the gate goes before that step, which nothing of has gone out. Before, it went after
    it, and the step went out unapproved as soon as the freeze was lifted."""
    from gitops import source_admin
    from gitops.models import Source
    from tests.integration.test_rollouts import started_and_aborted, versions

    targets = make_namespaces("canary", "rest")
    source, _v2, aborted = started_and_aborted(repo, make_source, sync, targets, people)
    assert versions(cluster, targets) == ["1", "1"]
    freeze(source, reason="incident 7")
    retried = decisions.rollout_retry(aborted.pk, user=people["approver"])
    assert sync(source)["outcome"] == "held"
    assert Rollout.objects.get(pk=retried.pk).step_index == 0

    source_admin.source_update_scope(Source.objects.get(pk=source.pk), required_approvals=2)
    freezes.freeze_lift(source, by="ines")

    gated = wait_for(source, phase="Paused", waiting_for="approval")
    assert gated.pk == retried.pk and gated.step_index == 0
    assert versions(cluster, targets) == ["1", "1"], "nothing went out before the approvals"


def test_a_floor_raised_while_a_pass_holds_the_source_gates_after_its_step_and_holds_off_the_next(
    repo, make_namespaces, make_source, sync, cluster, people, monkeypatch
):
    """The gate goes before a step only while no pass can start: the update holds the source's lock
    until the gate is committed (it only looked, so a pass starting in between applied the step before
    the gate). Where a pass holds the lock, the gate goes after the step that pass may be applying."""
    import psycopg
    from django.db import connection

    from gitops import source_admin
    from gitops.locks import LOCK_CLASS, source_lock_held
    from gitops.models import Source
    from tests.integration.test_rollouts import started_and_aborted, versions

    targets = make_namespaces("canary", "rest")
    source, _v2, aborted = started_and_aborted(repo, make_source, sync, targets, people)
    freeze(source, reason="incident 8")
    retried = decisions.rollout_retry(aborted.pk, user=people["approver"])
    assert sync(source)["outcome"] == "held"

    held_while_gating: list[bool] = []
    gate = source_admin._gate_active_rollouts

    def watched(gated_source, **options):
        held_while_gating.append(source_lock_held(gated_source.pk))
        gate(gated_source, **options)

    monkeypatch.setattr(source_admin, "_gate_active_rollouts", watched)
    with psycopg.connect(**{**connection.get_connection_params(), "autocommit": True}) as a_pass:
        a_pass.execute("SELECT pg_advisory_lock(%s, %s)", [LOCK_CLASS, source.pk])
        source_admin.source_update_scope(Source.objects.get(pk=source.pk), required_approvals=2)
        # Let go before closing: a closed connection's backend gives its locks up as it exits, which a
        # busy server does a moment later, and the next update would find the pass still there.
        a_pass.execute("SELECT pg_advisory_unlock(%s, %s)", [LOCK_CLASS, source.pk])
    held = Rollout.objects.get(pk=retried.pk)
    assert held.approvals_required == 2
    steps = [{"setWeight": 50}, {"pause": {}}, {"setWeight": 100}]
    assert held.steps == steps, "after the step the pass may be applying: a gate is there already"

    source_admin.source_update_scope(Source.objects.get(pk=source.pk), required_approvals=3)
    assert held_while_gating == [True, True], "no pass could start before the gate was committed"
    assert Rollout.objects.get(pk=retried.pk).steps == [{"pause": {}}, *steps]
    freezes.freeze_lift(source, by="ines")
    gated = wait_for(source, phase="Paused", waiting_for="approval")
    assert gated.pk == retried.pk and gated.step_index == 0
    assert versions(cluster, targets) == ["1", "1"]


def test_a_held_pass_polls_again_when_the_hold_ends_not_an_interval_later(
    repo, make_namespaces, make_source, sync, cluster
):
    """Nothing woke a source whose freeze ran out (rather than being lifted) or whose allow window
    opened: its next poll came an interval after the held pass, so with hourly polls a 30-minute window
    was missed every day, and the commit never went out."""
    targets = make_namespaces("a")
    source = first_commit(repo, make_source, sync, targets)
    Source.objects.filter(pk=source.pk).update(poll_interval=timedelta(hours=1))
    ends = freeze(source, hours=0.25).until
    second_commit(repo, targets)

    assert sync(source)["outcome"] == "held"

    next_poll_at = Source.objects.get(pk=source.pk).next_poll_at
    assert ends < next_poll_at <= ends + timedelta(seconds=2), "polled as the freeze runs out"
    freezes.freeze_lift(source, by="ines")
    far = freeze(source, hours=3)
    assert sync(source)["outcome"] == "held"
    next_poll_at = Source.objects.get(pk=source.pk).next_poll_at
    assert next_poll_at < far.until, "a hold longer than the interval keeps the poll interval"


def test_an_override_releases_the_freeze_it_overrode_not_one_set_after_it(
    paused_rollout, admin, sync, cluster, monkeypatch
):
    """An administrator promoted through freeze F1; the step did not go out then (its clusters did not
    answer, or no pass ran). F1 was lifted, and F2 set for a new incident: the step went out through F2,
    which nobody overrode."""
    from gitops import schedule, selectors
    from gitops.rollout.lifecycle import overridden

    source = paused_rollout.source
    freeze(source, reason="release freeze")
    monkeypatch.setattr(schedule, "source_sync", lambda *args, **kwargs: [])  # no pass runs the release now
    decisions.rollout_promote(paused_rollout.pk, user=admin, override="hotfix for INC-7")
    released = Rollout.objects.get(pk=paused_rollout.pk)
    assert released.promoted_by == "ines"
    assert overridden(released, selectors.source_gate(source)), "the freeze it overrode"

    freezes.freeze_lift(source, by="ines")
    freeze(source, reason="incident 8")
    monkeypatch.undo()

    assert not overridden(released, selectors.source_gate(source)), "a freeze set after it"
    assert sync(source)["outcome"] == "held"
    assert Rollout.objects.get(pk=paused_rollout.pk).weight == 50, "the step waits for the new freeze"


def test_a_persons_sync_delivered_long_after_it_was_asked_runs_as_an_automatic_one(
    repo, make_namespaces, make_source, sync, cluster
):
    """Redis hands a killed worker's task back only after its visibility timeout (an hour): a person's
    manual sync then went through a window that lets only people's syncs out, an hour after they asked,
    with whatever the head was by then."""
    import time

    from celery.result import AsyncResult

    from gitops import schedule

    targets = make_namespaces("a")
    source = first_commit(repo, make_source, sync, targets)
    deny_window_letting_people_sync()
    second_commit(repo, targets)
    asked = {"source_id": source.pk, "actor": "ada", "manual": True}

    def delivered(asked_at: float) -> dict:
        headers = {schedule.ASKED_AT_HEADER: asked_at}
        return AsyncResult(schedule._send(schedule.SYNC_TASK, kwargs=asked, headers=headers)).get(timeout=120)

    assert delivered(time.time() - 3600)["outcome"] == "held", "an hour late: automatic, held"
    assert [version(cluster, ns) for ns in targets] == ["1"]
    assert delivered(time.time())["outcome"] == "applied", "just asked: the person's sync goes through"


def test_a_hold_that_ended_while_the_pass_ran_has_the_next_poll_at_once(make_source):
    """The pass was held when it read the gate, and the hold ended before the pass did: its next poll
    came an interval later, as if the hold had not ended."""
    from gitops import reconcile

    source = make_source(poll_interval=timedelta(hours=1))
    ended = timezone.now() - timedelta(seconds=5)

    reconcile._finish(source, [], held_until=ended)

    next_poll_at = Source.objects.get(pk=source.pk).next_poll_at
    assert next_poll_at <= timezone.now() + timedelta(seconds=2)
