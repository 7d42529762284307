"""Weighted canary rollouts on the real stack, driven by real workers."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.test import Client
from django.utils import timezone

from gitops import selectors
from gitops.models import Approval, Change, Revision, Rollout, RolloutEvent, Source
from gitops.rollout import decisions
from gitops.rollout.decisions import RolloutError
from tests.admission import updates_denied
from tests.gitrepo import configmap, policy
from tests.rollouts import rollout_of, wait_for
from tests.workers import poll, running_beat

pytestmark = pytest.mark.django_db(transaction=True)


def data_of(cluster, namespace: str, name: str = "app") -> dict | None:
    live = cluster.get_configmap(namespace, name)
    return None if live is None else live.get("data")


def versions(cluster, namespaces: list[str], name: str = "app") -> list[str | None]:
    return [(data_of(cluster, ns, name) or {}).get("VERSION") for ns in namespaces]


def start_rollout(
    repo,
    make_source,
    sync,
    namespaces,
    steps,
    *,
    approvals=None,
    extra_files=None,
    source_options=None,
    **policy_extra,
):
    """v1 goes out in one step; v2 comes with the rollout policy and changes VERSION."""
    repo.write_all(
        {"sluice.yaml": policy(namespaces), "configmaps/app.yaml": configmap("app", {"VERSION": "1"})}
    )
    repo.write_all(extra_files or {})
    v1 = repo.commit("v1")
    source = make_source(**(source_options or {}))
    assert sync(source)["outcome"] == "applied"
    rollout_policy = policy(
        namespaces,
        rollout={"steps": steps, **policy_extra},
        **({"approvals": approvals} if approvals else {}),
    )
    repo.write_all({"sluice.yaml": rollout_policy, "configmaps/app.yaml": configmap("app", {"VERSION": "2"})})
    v2 = repo.commit("v2")
    return source, v1, v2


def v1_applied_v2_committed(repo, make_namespaces, make_source, sync):
    """A source whose v1 is applied in one namespace and whose v2 is committed, not synced: (source,
    [namespace])."""
    targets = make_namespaces("app")
    repo.write_all(
        {"sluice.yaml": policy(targets), "configmaps/app.yaml": configmap("app", {"VERSION": "1"})}
    )
    repo.commit("v1")
    source = make_source()
    assert sync(source)["outcome"] == "applied"
    repo.write("configmaps/app.yaml", configmap("app", {"VERSION": "2"}))
    repo.commit("v2")
    return source, targets


def started_and_aborted(repo, make_source, sync, namespaces, people):
    """``start_rollout`` at 50% with a gate after it, then aborted: (source, v2, the aborted rollout)."""
    source, _v1, v2 = start_rollout(repo, make_source, sync, namespaces, [{"setWeight": 50}, {"pause": {}}])
    sync(source)
    paused = wait_for(source, phase="Paused", waiting_for="approval")
    decisions.rollout_abort(paused.pk, user=people["approver"])
    wait_for(source, phase="Aborted")
    return source, v2, paused


def test_a_configmap_rollout_goes_through_every_kind_of_step(
    repo, make_namespaces, make_source, sync, cluster, analysis_endpoint, people
):
    targets = make_namespaces("canary", "team-a", "team-b", "team-c")
    steps = [
        {"setWeight": 25},
        {"pause": {"duration": "2s"}},
        {"setWeight": 50},
        {"analysis": {"http": {"url": analysis_endpoint.url, "timeoutSeconds": 5}, "failureLimit": 1}},
        {"pause": {}},
        {"setWeight": 100},
    ]
    source, _v1, v2 = start_rollout(
        repo,
        make_source,
        sync,
        targets,
        steps,
        source_options={"analysis_url_prefixes": [analysis_endpoint.url]},
    )

    result = sync(source)

    assert result["outcome"] == "paused"
    assert result["rollout"]["waiting_for"] == "timer"
    # By the log, not the cluster: the 2 s pause may be over, and the next step out, by the time it is read.
    first_step = Change.objects.filter(source=source, commit=v2, weight=25).values_list(
        "namespace", flat=True
    )
    assert list(first_step) == [targets[0]], "the first listed target is the canary"

    # The timed pause ends by itself; the analysis passes; the rollout waits for approval.
    paused = wait_for(source, phase="Paused", waiting_for="approval")
    assert (paused.step_index, paused.weight) == (4, 50)
    assert versions(cluster, targets) == ["2", "2", "1", "1"]
    assert analysis_endpoint.received == [
        {"source": source.name, "rollout": paused.pk, "revision": v2, "step": 3, "weight": 50}
    ]

    decisions.rollout_promote(paused.pk, user=people["approver"], comment="canary looks healthy")
    done = wait_for(source, phase="Completed")

    assert done.weight == 100
    assert versions(cluster, targets) == ["2", "2", "2", "2"]
    assert Revision.objects.get(source=source, commit=v2).outcome == "applied"
    changes = list(Change.objects.filter(source=source, commit=v2).order_by("id"))
    assert [(c.namespace, c.step_index, c.weight, c.actor, c.action) for c in changes] == [
        (targets[0], 0, 25, "sluice", "update"),
        (targets[1], 2, 50, "sluice", "update"),
        (targets[2], 5, 100, "otto", "update"),
        (targets[3], 5, 100, "otto", "update"),
    ]
    approval = Approval.objects.get(rollout=done)
    assert (approval.commit, approval.step_index, approval.username, approval.comment) == (
        v2,
        4,
        "otto",
        "canary looks healthy",
    )
    assert approval.content_hash == done.content_hash != ""
    kinds = list(RolloutEvent.objects.filter(rollout=done).values_list("kind", flat=True))
    assert kinds == [
        "started",
        "step",
        "paused",
        "resumed",
        "step",
        "analysis",
        "paused",
        "approved",
        "promoted",
        "step",
        "completed",
    ]


def test_promote_needs_the_role_distinct_approvers_and_not_the_author(
    repo, make_namespaces, make_source, sync, cluster, people
):
    targets = make_namespaces("canary", "rest")
    source, _, _v2 = start_rollout(
        repo,
        make_source,
        sync,
        targets,
        [{"setWeight": 50}, {"pause": {}}],
        approvals={"required": 2, "forbidSelfApproval": True},
    )
    sync(source)
    paused = wait_for(source, phase="Paused", waiting_for="approval")

    with pytest.raises(PermissionDenied, match="vera may not promote"):
        decisions.rollout_promote(paused.pk, user=people["viewer"])
    with pytest.raises(PermissionDenied, match="ada wrote or committed a commit"):
        decisions.rollout_promote(paused.pk, user=people["author"])

    assert decisions.rollout_promote(paused.pk, user=people["approver"]).message == "1 of 2 approvals"
    with pytest.raises(RolloutError, match="otto already approved step 1"):
        decisions.rollout_promote(paused.pk, user=people["approver"])
    assert rollout_of(source).phase == "Paused"
    assert versions(cluster, targets) == ["2", "1"]

    decisions.rollout_promote(paused.pk, user=people["second_approver"])
    wait_for(source, phase="Completed")
    assert versions(cluster, targets) == ["2", "2"]
    assert Approval.objects.filter(rollout=paused).count() == 2
    with pytest.raises(RolloutError, match="completed; there is nothing to promote"):
        decisions.rollout_promote(paused.pk, user=people["second_approver"])


def test_a_rollouts_approvals_are_those_of_the_gate_it_waits_at(
    repo, make_namespaces, make_source, sync, people
):
    """``approvals`` is compared with ``approvals_required``: every gate's together (it was) said "2 of 2"
    at a second gate nobody had approved yet."""
    targets = make_namespaces("canary", "middle", "rest")
    steps = [{"setWeight": 34}, {"pause": {}}, {"setWeight": 67}, {"pause": {}}]
    source, _, _v2 = start_rollout(repo, make_source, sync, targets, steps, approvals={"required": 2})
    sync(source)
    first = wait_for(source, phase="Paused", waiting_for="approval")

    def shown() -> list[tuple[int, int, int]]:
        # As a pass's answer reads it, and as the API's list does (approvals prefetched).
        one = selectors.rollout_status(selectors.rollout_for_status(first.pk))
        listed = selectors.rollout_status(Rollout.objects.prefetch_related("approvals").get(pk=first.pk))
        return [(each["step"], each["approvals"], each["approvals_required"]) for each in (one, listed)]

    decisions.rollout_promote(first.pk, user=people["approver"])
    assert shown() == [(1, 1, 2)] * 2
    decisions.rollout_promote(first.pk, user=people["second_approver"])
    # Paused, not only at step 3: the step index is written a few commits before the gate's pause.
    wait_for(source, phase="Paused", waiting_for="approval", step_index=3)
    assert shown() == [(3, 0, 2)] * 2
    decisions.rollout_promote(first.pk, user=people["approver"])
    assert shown() == [(3, 1, 2)] * 2


def test_an_authors_approval_given_before_a_floor_forbade_it_does_not_count_after(
    repo, make_namespaces, make_source, sync, cluster, people
):
    """The repository asks for two approvals and allows self-approval; the author approves. Then an
    administrator sets a floor, which forbids self-approval: one more approver does not release the
    gate, for the author's approval no longer counts. Before, it did."""
    from gitops import source_admin

    targets = make_namespaces("canary", "rest")
    source, _, _v2 = start_rollout(
        repo, make_source, sync, targets, [{"setWeight": 50}, {"pause": {}}], approvals={"required": 2}
    )
    sync(source)
    paused = wait_for(source, phase="Paused", waiting_for="approval")
    assert decisions.rollout_promote(paused.pk, user=people["author"]).message == "1 of 2 approvals"

    source_admin.source_update_scope(source, required_approvals=2)
    assert decisions.rollout_promote(paused.pk, user=people["approver"]).message == "1 of 2 approvals"
    assert rollout_of(source).phase == "Paused"
    assert versions(cluster, targets) == ["2", "1"]
    # The status counts as the gate does: 1 of 2, not the two approvals given.
    status = selectors.rollout_status(selectors.rollout_for_status(paused.pk))
    assert (status["approvals"], status["approvals_required"]) == (1, 2)

    decisions.rollout_promote(paused.pk, user=people["second_approver"])
    wait_for(source, phase="Completed")
    assert versions(cluster, targets) == ["2", "2"]


@pytest.mark.parametrize("revoked", ["deactivated", "role taken away"])
def test_an_approval_whose_approver_may_no_longer_approve_does_not_count(
    repo, make_namespaces, make_source, sync, cluster, people, revoked
):
    """A gate of two approvals: one approver approves, then is deactivated (the only way to remove an
    account that approved) or loses the role. A second approver's approval does not release the gate:
    the first no longer counts. Before, it did, and a revoked account's approval still opened a
    two-person gate."""
    from django.contrib.auth.models import User

    targets = make_namespaces("canary", "rest")
    source, _, _v2 = start_rollout(
        repo, make_source, sync, targets, [{"setWeight": 50}, {"pause": {}}], approvals={"required": 2}
    )
    sync(source)
    paused = wait_for(source, phase="Paused", waiting_for="approval")
    assert decisions.rollout_promote(paused.pk, user=people["approver"]).message == "1 of 2 approvals"
    if revoked == "deactivated":
        User.objects.filter(pk=people["approver"].pk).update(is_active=False)
    else:
        people["approver"].groups.clear()

    assert decisions.rollout_promote(paused.pk, user=people["second_approver"]).message == "1 of 2 approvals"
    assert rollout_of(source).phase == "Paused"
    assert versions(cluster, targets) == ["2", "1"]
    status = selectors.rollout_status(selectors.rollout_for_status(paused.pk))
    assert (status["approvals"], status["approvals_required"]) == (1, 2), "shown as the gate counts"
    # So does every other reader: the API's rollout, its list, the sources' active rollout, the CLI's.
    api = Client()
    api.force_login(people["viewer"])
    shown = [
        api.get(f"/api/rollouts/{paused.pk}").json(),
        api.get("/api/rollouts", {"source": source.name}).json()["items"][0],
        api.get(f"/api/sources/{source.name}").json()["active_rollout"],
        next(row for row in api.get("/api/sources").json()["items"] if row["name"] == source.name)[
            "active_rollout"
        ],
        selectors.source_status(source)["active_rollout"],
    ]
    assert [(each["approvals"], each["approvals_required"]) for each in shown] == [(1, 2)] * 5

    decisions.rollout_promote(paused.pk, user=people["author"])
    wait_for(source, phase="Completed")


def test_an_approval_never_carries_over_to_another_revision(
    repo, make_namespaces, make_source, sync, cluster, people
):
    targets = make_namespaces("canary", "rest")
    source, _, _v2 = start_rollout(
        repo, make_source, sync, targets, [{"setWeight": 50}, {"pause": {}}], approvals={"required": 2}
    )
    sync(source)
    first = wait_for(source, phase="Paused", waiting_for="approval")
    decisions.rollout_promote(first.pk, user=people["approver"])

    repo.write("configmaps/app.yaml", configmap("app", {"VERSION": "3"}))
    v3 = repo.commit("v3")
    sync(source)
    second = wait_for(source, phase="Paused", waiting_for="approval")

    assert second.pk != first.pk
    assert second.revision.commit == v3
    assert Rollout.objects.get(pk=first.pk).phase == "Superseded"
    assert not Approval.objects.filter(rollout=second).exists()
    assert decisions.rollout_promote(second.pk, user=people["approver"]).message == "1 of 2 approvals"


def test_a_timed_pause_resumes_after_the_worker_restarts(
    repo, make_namespaces, make_source, sync, cluster, celery_worker, worker_env, tmp_path
):
    targets = make_namespaces("canary", "rest")
    source, _, _ = start_rollout(
        repo,
        make_source,
        sync,
        targets,
        [{"setWeight": 50}, {"pause": {"duration": "4s"}}, {"setWeight": 100}],
    )
    assert sync(source)["rollout"]["waiting_for"] == "timer"

    # The worker holding the timer's ETA task dies; beat's sweep must pick the rollout up.
    celery_worker.kill()
    with running_beat(worker_env, tmp_path / "schedule", name="beat-rollout-timer"):
        celery_worker.start()
        wait_for(source, phase="Completed", timeout=60)
    assert versions(cluster, targets) == ["2", "2"]


def test_a_failing_analysis_aborts_and_rolls_back(
    repo, make_namespaces, make_source, sync, cluster, analysis_endpoint
):
    targets = make_namespaces("canary", "team-a", "team-b", "team-c")
    analysis_endpoint.status = 503
    source, v1, _ = start_rollout(
        repo,
        make_source,
        sync,
        targets,
        [{"setWeight": 50}, {"analysis": {"http": {"url": analysis_endpoint.url}, "failureLimit": 1}}],
        source_options={"analysis_url_prefixes": [analysis_endpoint.url]},
    )

    result = sync(source)

    assert result["outcome"] == "aborted"
    aborted = rollout_of(source)
    assert aborted.phase == "Aborted"
    assert "analysis failed: HTTP 503" in aborted.message
    assert versions(cluster, targets) == ["1", "1", "1", "1"]
    assert all(
        cluster.get_configmap(ns, "app")["metadata"]["annotations"]["sluice.dev/commit"] == v1
        for ns in targets
    )
    rollbacks = Change.objects.filter(source=source, action="rollback")
    assert sorted(c.namespace for c in rollbacks) == sorted(targets[:2])
    assert {c.actor for c in rollbacks} == {"sluice"}
    # Nothing restarts the aborted revision by itself.
    assert sync(source)["outcome"] == "aborted"
    assert versions(cluster, targets) == ["1", "1", "1", "1"]


def test_a_failing_analysis_whose_rollback_the_cluster_refuses_fails_the_sync_and_says_why(
    repo, make_namespaces, make_source, sync, cluster, analysis_endpoint, kube_client, core_api
):
    """The analysis fails for good and the rollback's restore is refused (here by an admission policy):
    the rollout ends Failed, and the sync says so with the refusal. Before, the sync reported "paused",
    a success, with no error, and the source's last error was cleared."""
    from django.utils import timezone

    canary, rest = make_namespaces("canary", "rest")
    analysis_endpoint.status = 503
    analysis = {"analysis": {"http": {"url": analysis_endpoint.url}, "failureLimit": 1}}
    source, _, _ = start_rollout(
        repo,
        make_source,
        sync,
        [canary, rest],
        [{"setWeight": 50}, {"pause": {"duration": "1h"}}, analysis],
        source_options={"analysis_url_prefixes": [analysis_endpoint.url]},
    )
    assert sync(source)["outcome"] == "paused"
    with version_1_retired(kube_client(), core_api, canary):
        Rollout.objects.filter(source=source).update(pause_until=timezone.now())
        result = sync(source)

    failed = rollout_of(source)
    assert failed.phase == "Failed" and "analysis failed: HTTP 503" in failed.message, failed.message
    assert result["outcome"] == "failed", result
    assert any("VERSION 1 is retired here" in error for error in result["errors"]), result["errors"]
    assert "VERSION 1 is retired here" in Source.objects.get(pk=source.pk).last_error
    assert versions(cluster, [canary, rest]) == ["2", "1"]


def test_a_superseded_rollouts_refused_restore_is_among_the_syncs_errors(
    repo, make_namespaces, make_source, sync, cluster, kube_client, core_api
):
    """A new commit supersedes a rollout at its gate, and the cluster refuses to restore the canary. The
    superseded rollout ends Failed, and the sync that started the new rollout says why, as an abort's
    sync does. Before, only the worker's log and the old rollout's message said it: the sync reported
    "paused" with no error, and the source showed none."""
    canary, rest = make_namespaces("canary", "rest")
    source, _, _ = start_rollout(repo, make_source, sync, [canary, rest], [{"setWeight": 50}, {"pause": {}}])
    assert sync(source)["outcome"] == "paused"
    superseded = rollout_of(source)
    repo.write("configmaps/app.yaml", configmap("app", {"VERSION": "3"}))
    repo.commit("v3")
    with version_1_retired(kube_client(), core_api, canary):
        result = sync(source)

    superseded.refresh_from_db()
    assert superseded.phase == "Failed" and "VERSION 1 is retired here" in superseded.message
    assert rollout_of(source).pk != superseded.pk
    assert any("VERSION 1 is retired here" in error for error in result["errors"]), result
    assert "VERSION 1 is retired here" in Source.objects.get(pk=source.pk).last_error
    assert versions(cluster, [canary, rest]) == ["3", "1"]


def version_1_retired(api_client, core_api, namespace: str):
    """The cluster refuses, for good, any update of a ConfigMap there to VERSION 1 (a restore of v1)."""
    return updates_denied(
        api_client,
        namespace,
        expression="!has(object.data) || !('VERSION' in object.data) || object.data.VERSION != '1'",
        message="VERSION 1 is retired here",
        denied=lambda: _update_denied(core_api, namespace, "1"),
    )


def _update_denied(core_api, namespace: str, version: str) -> bool:
    """Whether the apiserver refuses an update of app in ``namespace`` to ``version`` (a dry run)."""
    from kubernetes.client.exceptions import ApiException

    try:
        core_api.patch_namespaced_config_map("app", namespace, {"data": {"VERSION": version}}, dry_run="All")
    except ApiException:
        return True
    return False


def test_an_immutable_configmap_whose_replacement_the_cluster_refuses_is_put_back_by_the_rollback(
    repo, make_namespaces, make_source, sync, cluster, kube_client, core_api
):
    """An immutable ConfigMap changes by delete and create. The cluster refused the create, for good,
    after the delete had gone through: the change failed, the rollout rolled back, and the rollback
    left out the failed change, so the object stayed deleted until a new commit."""
    from kubernetes.client.exceptions import ApiException

    (namespace,) = make_namespaces("a")
    repo.write_all(
        {
            "sluice.yaml": policy([namespace]),
            "configmaps/frozen.yaml": configmap("frozen", {"VERSION": "1"}, immutable=True),
        }
    )
    repo.commit("v1")
    source = make_source()
    assert sync(source)["outcome"] == "applied"

    def create_denied() -> bool:
        probe = {"metadata": {"name": f"probe-{namespace}"}, "data": {"VERSION": "2"}}
        try:
            core_api.create_namespaced_config_map(namespace, probe, dry_run="All")
        except ApiException:
            return True
        return False

    with updates_denied(
        kube_client(),
        namespace,
        expression="!has(object.data) || !('VERSION' in object.data) || object.data.VERSION != '2'",
        message="VERSION 2 may not be created here",
        denied=create_denied,
        operations=("CREATE",),
    ):
        steps = [{"setWeight": 100}, {"pause": {}}]
        repo.write_all({"sluice.yaml": policy([namespace], rollout={"steps": steps})})
        repo.write("configmaps/frozen.yaml", configmap("frozen", {"VERSION": "2"}, immutable=True))
        repo.commit("v2")
        sync(source)
        failed = wait_for(source, phase="Failed")

    assert "VERSION 2 may not be created here" in failed.message
    assert f"{namespace}/frozen (configmaps/frozen.yaml): " in failed.message, "the file to edit is named"
    restored = cluster.get_configmap(namespace, "frozen")
    assert restored is not None, "the replacement's delete went through: the rollback puts it back"
    assert (restored["data"], restored.get("immutable")) == ({"VERSION": "1"}, True)


def test_an_abort_whose_restore_the_cluster_refuses_fails_the_sync_and_says_why(
    repo, make_namespaces, make_source, sync, cluster, kube_client, core_api, people
):
    """A person's abort is carried out first thing in a pass; a restore the cluster refused was among
    the pass's errors only until the rollout's own outcome replaced them, so the sync reported no error
    and cleared the source's last one."""
    canary, rest = make_namespaces("canary", "rest")
    source, _, _ = start_rollout(repo, make_source, sync, [canary, rest], [{"setWeight": 50}, {"pause": {}}])
    assert sync(source)["outcome"] == "paused"
    paused = rollout_of(source)
    with version_1_retired(kube_client(), core_api, canary):
        Rollout.objects.filter(pk=paused.pk).update(abort_requested_by="otto", abort_reason="bad canary")
        result = sync(source)

    assert rollout_of(source).phase == "Failed"
    assert result["outcome"] == "failed", result
    assert any("VERSION 1 is retired here" in error for error in result["errors"]), result["errors"]
    assert "VERSION 1 is retired here" in Source.objects.get(pk=source.pk).last_error


def test_an_abort_asked_after_the_worker_read_the_rollout_is_not_swallowed_by_its_next_move(
    repo, make_namespaces, make_source, sync, cluster, people
):
    """The worker's compare-and-swap covers the abort: a completion (or any move) computed from a rollout
    read before someone asked for an abort must fail, or the rollout ends Completed and nothing rolls back."""
    from gitops.rollout.state import transition

    targets = make_namespaces("canary", "rest")
    source, _, _ = start_rollout(repo, make_source, sync, targets, [{"setWeight": 50}, {"pause": {}}])
    assert sync(source)["outcome"] == "paused"
    read_by_the_worker = rollout_of(source)
    with transaction.atomic():  # the abort's pass is queued on commit: the stack's worker waits for it
        decisions.rollout_abort(read_by_the_worker.pk, user=people["approver"])

        assert not transition(read_by_the_worker, phase=Rollout.Phase.COMPLETED, step_index=2)
        assert rollout_of(source).phase == "Paused"
    poll(lambda: rollout_of(source).phase == "Aborted", timeout=60, what="the abort's rollback")
    assert versions(cluster, targets) == ["1", "1"]


def test_a_retry_runs_the_revisions_own_steps_not_the_ones_a_promote_to_100_cut(
    repo, make_namespaces, make_source, sync, people
):
    """A promote to 100% rewrites the rollout's steps (its analysis and later gates gone); a retry of
    that rollout, failed or aborted afterwards, must run the revision's steps again, with fresh approvals."""
    targets = make_namespaces("canary", "rest")
    steps = [{"setWeight": 50}, {"pause": {}}, {"setWeight": 75}, {"pause": {}}]
    source, _, _ = start_rollout(repo, make_source, sync, targets, steps)
    assert sync(source)["outcome"] == "paused"
    rollout = rollout_of(source)
    planned = list(rollout.steps)
    assert rollout.planned_steps == planned
    # As `promote --full` at the first gate leaves them (the worker then fails at 100%, say).
    Rollout.objects.filter(pk=rollout.pk).update(steps=[*planned[:2], {"setWeight": 100}])
    decisions.rollout_abort(rollout.pk, user=people["approver"])
    wait_for(source, phase="Aborted")

    again = decisions.rollout_retry(rollout.pk, user=people["approver"])

    assert again.steps == planned and again.planned_steps == planned
    # Its flag canaries reach the users the failed try reached first, not new ones.
    assert again.flag_population == rollout.flag_population != ""
    assert wait_for(source, phase="Paused", waiting_for="approval").weight == 50


def test_a_floor_raised_while_a_retry_is_made_gates_the_retried_rollout(
    repo, make_namespaces, make_source, sync, people, monkeypatch
):
    """An administrator raises the source's approval floor while an approver's retry is being made.
    Either the retry reads the raised floor, or the administrator's edit waits for it and then gates it
    as a rollout under way. Before, the retry read the source without its lock: the edit found no
    rollout under way to gate, and the retry took the floor it had read (none)."""
    import threading

    from django.db import connection

    from gitops import source_admin

    source, _v2, aborted = started_and_aborted(
        repo, make_source, sync, make_namespaces("canary", "rest"), people
    )
    raised: list[Exception] = []
    backend: list[int] = []  # the administrator's database session

    def raise_the_floor() -> None:
        try:
            connection.ensure_connection()
            backend.append(connection.connection.info.backend_pid)
            source_admin.source_update_scope(Source.objects.get(pk=source.pk), required_approvals=2)
        except Exception as exc:  # the test reports whatever ended it
            raised.append(exc)
        finally:
            connection.close()  # this thread's

    def waits_for_a_lock() -> bool:
        if not backend:
            return False
        with connection.cursor() as cursor:  # that session, not any other on the shared server
            cursor.execute("SELECT cardinality(pg_blocking_pids(%s)) > 0", [backend[0]])
            return bool(cursor.fetchone()[0])

    administrator = threading.Thread(target=raise_the_floor)
    real_copied = decisions.copied

    def copied_while_the_floor_is_raised(*args, **kwargs):
        administrator.start()
        poll(
            lambda: not administrator.is_alive() or waits_for_a_lock(),
            timeout=30,
            what="the administrator's edit to finish, or to wait for the retry's lock",
        )
        return real_copied(*args, **kwargs)

    monkeypatch.setattr(decisions, "copied", copied_while_the_floor_is_raised)
    again = decisions.rollout_retry(aborted.pk, user=people["approver"])
    administrator.join(timeout=30)

    assert not administrator.is_alive() and raised == []
    again.refresh_from_db()
    assert (again.approvals_required, again.forbid_self_approval) == (2, True)


def test_an_owed_rollback_logs_a_restore_an_interrupted_try_applied_and_never_logged(
    repo, make_namespaces, make_source, sync, cluster
):
    """A rollback's batch that took effect in part before its cluster stopped answering (or the worker
    died) leaves applied restores pending, and the rollout ends owing the cluster. When the owed
    rollback runs, those targets already hold what they held before: their restores must still be
    logged, once, or the change log misses a change the cluster got."""
    from django.utils import timezone

    from gitops.cluster.apply import intents_apply_everywhere
    from gitops.cluster.live import live_configmaps
    from gitops.models import ApplyIntent, Source
    from gitops.rollout.rollback import rollbacks_owed_finish

    targets = make_namespaces("canary", "rest")
    source, _, _ = start_rollout(repo, make_source, sync, targets, [{"setWeight": 100}, {"pause": {}}])
    assert sync(source)["outcome"] == "paused"
    rollout = rollout_of(source)
    firsts = sorted(rollout.intents.filter(name="app"), key=lambda intent: targets.index(intent.namespace))
    live = live_configmaps({(first.cluster, first.namespace) for first in firsts}).index()
    restores = [
        ApplyIntent.restoring(rollout, first, live[(first.cluster, first.namespace, "app")], actor="sluice")
        for first in firsts
    ]
    interrupted = ApplyIntent.objects.bulk_create(restores)
    intents_apply_everywhere(interrupted[:1])  # the first took effect; the second never went out
    Rollout.objects.filter(pk=rollout.pk).update(
        phase=Rollout.Phase.ABORTED, finished_at=timezone.now(), rollback_pending_clusters=[firsts[0].cluster]
    )
    assert versions(cluster, targets) == ["1", "2"]

    rollbacks_owed_finish(Source.objects.get(pk=source.pk))

    assert versions(cluster, targets) == ["1", "1"]
    logged = Change.objects.filter(source=source, action="rollback", name="app")
    assert sorted(change.namespace for change in logged) == sorted(targets), "each restore logged once"
    assert [change.after["data"]["VERSION"] for change in logged] == ["1", "1"]
    assert Rollout.objects.get(pk=rollout.pk).rollback_pending_clusters == []
    statuses = set(
        ApplyIntent.objects.filter(pk__in=[i.pk for i in interrupted]).values_list("status", flat=True)
    )
    assert statuses == {"done", "dropped"}, "the first try's applied restore logged, its unsent one dropped"


def test_a_rollbacks_log_leaves_out_a_key_someone_added_which_it_leaves_in_place(
    repo, make_namespaces, make_source, sync, cluster, people
):
    """A restore applies Sluice's fields back and leaves another manager's keys: the log said a key
    added by hand during the rollout was removed, and it stayed."""
    targets = make_namespaces("canary", "rest")
    source, _v1, _v2 = start_rollout(repo, make_source, sync, targets, [{"setWeight": 50}, {"pause": {}}])
    sync(source)
    paused = wait_for(source, phase="Paused", waiting_for="approval")
    canary = targets[0]
    cluster.apply_configmap(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "app", "namespace": canary},
            "data": {"EXTRA": "added by hand"},
        },
        field_manager="kubectl-edit",
    )
    decisions.rollout_abort(paused.pk, user=people["approver"])
    wait_for(source, phase="Aborted")

    assert data_of(cluster, canary) == {"VERSION": "1", "EXTRA": "added by hand"}
    (rollback,) = Change.objects.filter(source=source, action="rollback", namespace=canary)
    assert {(entry["op"], entry["key"]) for entry in rollback.diff} == {("change", "VERSION")}


def test_an_abort_restores_a_key_someone_moved_by_hand_to_binary_data(
    repo, make_namespaces, make_source, sync, cluster, people
):
    """The apiserver refuses an object holding a key in both data and binaryData: the rollback's restore
    of a key moved by hand was refused at every pass, and the rollback stayed owed for good."""
    (namespace,) = make_namespaces("a")
    names = ("app", "api")  # two: restores that would go out as one batch
    repo.write_all({"sluice.yaml": policy([namespace])})
    for name in names:
        repo.write(f"configmaps/{name}.yaml", configmap(name, {"MODE": "safe"}))
    repo.commit("v1")
    source = make_source()
    assert sync(source)["outcome"] == "applied"
    steps = [{"setWeight": 100}, {"pause": {}}]
    repo.write_all({"sluice.yaml": policy([namespace], rollout={"steps": steps})})
    for name in names:
        repo.write(f"configmaps/{name}.yaml", configmap(name, {"MODE": "fast"}))
    repo.commit("v2")
    sync(source)
    paused = wait_for(source, phase="Paused", waiting_for="approval")
    moved = base64.b64encode(b"fast").decode()
    for name in names:
        cluster.merge_configmap_keys(
            namespace, name, data={"MODE": None}, binary_data={"MODE": moved}, field_manager="kubectl-edit"
        )

    decisions.rollout_abort(paused.pk, user=people["approver"], reason="fast is slow")

    aborted = wait_for(source, phase="Aborted")
    assert aborted.rollback_pending_clusters == [], "nothing of the rollback is owed"
    for name in names:
        live = cluster.get_configmap(namespace, name)
        assert (live.get("data"), live.get("binaryData")) == ({"MODE": "safe"}, None), live
    assert not Change.objects.filter(source=source, action="rollback", result="error").exists()


def test_an_abort_leaves_alone_what_someone_took_over_during_the_rollout(
    repo, make_namespaces, make_source, sync, cluster, core_api, people
):
    """The README's way to keep an object is to take Sluice's labels off it. Taken over while the
    rollout ran, an object the rollout created was deleted by its abort, and one it changed was
    taken back, Sluice's labels forced on again. Now both are left as they are, and said so; the
    objects nobody took over are restored as before."""
    (namespace,) = make_namespaces("a")
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"V": "1"})})
    repo.write("configmaps/kept.yaml", configmap("kept", {"V": "1"}))
    repo.commit("v1")
    source = make_source()
    assert sync(source)["outcome"] == "applied"
    repo.write_all(
        {"sluice.yaml": policy([namespace], rollout={"steps": [{"setWeight": 100}, {"pause": {}}]})}
    )
    for name in ("app", "kept"):
        repo.write(f"configmaps/{name}.yaml", configmap(name, {"V": "2"}))
    repo.write("configmaps/created.yaml", configmap("created", {"V": "2"}))
    repo.commit("v2")
    sync(source)
    paused = wait_for(source, phase="Paused", waiting_for="approval")
    unlabelled = {"metadata": {"labels": {"sluice.dev/source": None, "app.kubernetes.io/managed-by": None}}}
    for name in ("kept", "created"):
        core_api.patch_namespaced_config_map(name, namespace, unlabelled)

    decisions.rollout_abort(paused.pk, user=people["approver"], reason="v2 is slow")

    aborted = wait_for(source, phase="Aborted")
    assert cluster.get_configmap(namespace, "app")["data"] == {"V": "1"}, "nobody took it: restored"
    for name in ("kept", "created"):
        live = cluster.get_configmap(namespace, name)
        assert live is not None and live["data"] == {"V": "2"}, f"{name}: left as it was taken over"
        assert "sluice.dev/source" not in (live["metadata"].get("labels") or {})
    assert "taken over during the rollout" in aborted.message
    assert f"default/{namespace}/created" in aborted.message


def test_an_object_taken_over_between_the_rollbacks_read_and_its_delete_is_left_alone(
    repo, make_namespaces, make_source, sync, cluster, monkeypatch
):
    """Another source took over an object the rollout created after the rollback listed it as this
    source's: Sluice refused its own delete (the object is no longer the source's), and the rollout ended
    Failed, "rollback failed". It is left alone now, as one the rollback's read found taken over is."""
    from gitops.desired.content import SOURCE_LABEL
    from gitops.rollout import rollback
    from tests.takeover import taking_over_first

    (namespace,) = make_namespaces("a")
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"V": "1"})})
    repo.commit("v1")
    source = make_source()
    assert sync(source)["outcome"] == "applied"
    repo.write_all(
        {
            "sluice.yaml": policy([namespace], rollout={"steps": [{"setWeight": 100}, {"pause": {}}]}),
            "configmaps/app.yaml": configmap("app", {"V": "2"}),
            "configmaps/created.yaml": configmap("created", {"V": "2"}),
        }
    )
    repo.commit("v2")
    sync(source)
    paused = wait_for(source, phase="Paused", waiting_for="approval")
    batches: list[list[str]] = []
    execute = taking_over_first(rollback.intents_execute, cluster, namespace, "created", batches)
    monkeypatch.setattr(rollback, "intents_execute", execute)
    rollout = Rollout.objects.select_related("source", "revision").get(pk=paused.pk)

    failures = rollback.rollout_rollback(
        rollout, actor="otto", reason="v2 is slow", phase=Rollout.Phase.ABORTED
    )

    assert batches == [["app", "created"]], "the rollback's read saw both as the source's"
    assert failures == []
    rollout.refresh_from_db()
    assert rollout.phase == "Aborted", rollout.message
    assert f"taken over during the rollout: default/{namespace}/created" in rollout.message
    assert "rollback failed" not in rollout.message
    assert cluster.get_configmap(namespace, "app")["data"] == {"V": "1"}, "restored"
    taken = cluster.get_configmap(namespace, "created")
    assert taken["metadata"]["labels"][SOURCE_LABEL] == "someone-else" and taken["data"] == {"V": "b"}
    refused = Change.objects.get(rollout=rollout, action="rollback", name="created")
    assert refused.result != "ok" and "it is now source someone-else's" in refused.error


def test_abort_restores_the_exact_previous_contents_and_retry_runs_again(
    repo, make_namespaces, make_source, sync, cluster, people
):
    targets = make_namespaces("canary", "rest")
    logo = base64.b64encode(bytes(range(64))).decode()
    repo.write_all(
        {
            "sluice.yaml": policy(targets),
            "configmaps/app.yaml": configmap(
                "app", {"VERSION": "1", "conf": "a\nb\n"}, binaryData={"logo.png": logo}
            ),
        }
    )
    repo.commit("v1")
    source = make_source()
    sync(source)
    before = {ns: cluster.get_configmap(ns, "app") for ns in targets}

    new_logo = base64.b64encode(b"new logo").decode()
    repo.write_all(
        {
            "sluice.yaml": policy(targets, rollout={"steps": [{"setWeight": 100}, {"pause": {}}]}),
            "configmaps/app.yaml": configmap(
                "app", {"VERSION": "2", "added": "x"}, binaryData={"logo.png": new_logo}
            ),
            "configmaps/new.yaml": configmap("brand-new", {"k": "v"}),
        }
    )
    repo.commit("v2")
    sync(source)
    paused = wait_for(source, phase="Paused", waiting_for="approval")
    assert versions(cluster, targets) == ["2", "2"]
    created = {cluster.get_configmap(ns, "brand-new")["metadata"]["uid"] for ns in targets}
    assert len(created) == 2

    with pytest.raises(PermissionDenied):
        decisions.rollout_abort(paused.pk, user=people["viewer"])
    decisions.rollout_abort(paused.pk, user=people["approver"], reason="errors in the canary")
    aborted = wait_for(source, phase="Aborted")

    for ns in targets:
        restored = cluster.get_configmap(ns, "app")
        assert restored["data"] == before[ns]["data"]
        assert restored["binaryData"] == before[ns]["binaryData"] == {"logo.png": logo}
        assert restored["metadata"]["labels"] == before[ns]["metadata"]["labels"]
        assert restored["metadata"]["annotations"] == before[ns]["metadata"]["annotations"]
        assert cluster.get_configmap(ns, "brand-new") is None, "an object the rollout created is removed"
    rollbacks = Change.objects.filter(source=source, action="rollback")
    assert rollbacks.count() == 4
    assert {c.actor for c in rollbacks} == {"otto"}
    # The deletes of what the rollout created went out on the condition of the rollback's read (the
    # objects it created, at the version read), with no read before each, as a prune does.
    deletes = [change for change in rollbacks if change.name == "brand-new"]
    assert {change.intent.live_uid for change in deletes} == created
    assert all(change.intent.live_version.isdigit() and change.after is None for change in deletes)
    restores = [change for change in rollbacks if change.name == "app"]
    assert not any(change.intent.live_uid for change in restores), "an apply has no condition"
    assert aborted.message == "errors in the canary"
    with pytest.raises(RolloutError, match="aborted; only an active rollout"):
        decisions.rollout_abort(paused.pk, user=people["approver"])

    again = decisions.rollout_retry(aborted.pk, user=people["approver"])
    resumed = wait_for(source, phase="Paused", waiting_for="approval")
    assert resumed.pk == again.pk
    assert versions(cluster, targets) == ["2", "2"]
    decisions.rollout_promote(again.pk, user=people["approver"])
    wait_for(source, phase="Completed")


def test_a_new_commit_supersedes_a_running_rollout(repo, make_namespaces, make_source, sync, cluster):
    targets = make_namespaces("canary", "team-a", "team-b", "team-c")
    steps = [{"setWeight": 25}, {"setWeight": 50}, {"pause": {}}]
    source, v1, _v2 = start_rollout(repo, make_source, sync, targets, steps)
    sync(source)
    first = wait_for(source, phase="Paused", waiting_for="approval")
    assert versions(cluster, targets) == ["2", "2", "1", "1"]

    repo.write("configmaps/app.yaml", configmap("app", {"VERSION": "3"}))
    v3 = repo.commit("v3")
    sync(source)

    second = wait_for(source, phase="Paused", waiting_for="approval")
    assert Rollout.objects.get(pk=first.pk).phase == "Superseded"
    assert second.revision.commit == v3
    # Between the two, targets hold the last completed revision; the new canaries get v3.
    assert versions(cluster, targets) == ["3", "3", "1", "1"]
    superseded = Change.objects.filter(rollout=first, action="rollback")
    assert sorted(c.namespace for c in superseded) == sorted(targets[:2])
    assert {c.commit for c in superseded} == {v1}


def monorepo_rollout_paused(repo, make_namespaces, make_source, sync, cluster):
    """A source reading ``team-a/`` of a monorepo, its v2 paused at 50% for an approval: (source, the
    rollout, its targets)."""
    targets = make_namespaces("canary", "rest")
    repo.write_all(
        {
            "team-a/sluice.yaml": policy(targets),
            "team-a/configmaps/app.yaml": configmap("app", {"VERSION": "1"}),
        }
    )
    repo.commit("v1")
    source = make_source(path="team-a")
    assert sync(source)["outcome"] == "applied"
    repo.write_all(
        {
            "team-a/sluice.yaml": policy(targets, rollout={"steps": [{"setWeight": 50}, {"pause": {}}]}),
            "team-a/configmaps/app.yaml": configmap("app", {"VERSION": "2"}),
        }
    )
    repo.commit("v2")
    sync(source)
    paused = wait_for(source, phase="Paused", waiting_for="approval")
    assert versions(cluster, targets) == ["2", "1"]
    return source, paused, targets


def test_another_teams_commit_in_a_monorepo_neither_supersedes_nor_repeats_a_rollout(
    repo, make_namespaces, make_source, sync, cluster, people
):
    """Every tip of the branch is a revision, and a rollout not of the head was superseded: another
    team's commit elsewhere in the monorepo restored the canaries, restarted their consumers and started
    the same content again at step 0, its approvals lost; after a completed rollout, it sent the same
    content through every gate again. A head whose directory is byte for byte the rollout's is its."""
    source, paused, targets = monorepo_rollout_paused(repo, make_namespaces, make_source, sync, cluster)
    repo.write("team-b/configmaps/theirs.yaml", configmap("theirs", {"K": "v"}))
    elsewhere = repo.commit("team-b: their own change")
    sync(source)

    assert Rollout.objects.get(pk=paused.pk).phase == "Paused"
    assert Rollout.objects.filter(source=source).count() == 2, "v1's and v2's: none started of the same"
    assert not Change.objects.filter(rollout=paused, action="rollback").exists()
    assert versions(cluster, targets) == ["2", "1"]

    decisions.rollout_promote(paused.pk, user=people["approver"])
    wait_for(source, phase="Completed")
    assert versions(cluster, targets) == ["2", "2"]
    repo.write("team-b/configmaps/theirs.yaml", configmap("theirs", {"K": "w"}))
    later = repo.commit("team-b: again")
    assert sync(source)["outcome"] in ("unchanged", "completed")
    assert Rollout.objects.filter(source=source).count() == 2, "no rollout of the same content again"
    assert Revision.objects.get(source=source, commit=later).outcome == "applied"
    assert elsewhere != later


def test_an_aborted_rollout_is_not_run_again_by_a_commit_elsewhere_and_is_retried_once(
    repo, make_namespaces, make_source, sync, cluster, people
):
    """An approver aborts a bad revision; a teammate's commit elsewhere in the monorepo started a rollout
    of the same bad content, with nobody asking. The head stands with the aborted rollout; a retry of it
    is still allowed, once: a retry sent again (an answer lost, a stale page's button) is refused."""
    source, paused, targets = monorepo_rollout_paused(repo, make_namespaces, make_source, sync, cluster)
    decisions.rollout_abort(paused.pk, user=people["approver"])
    aborted = wait_for(source, phase="Aborted")
    repo.write("team-b/notes.txt", "their notes")
    repo.commit("team-b: notes")
    sync(source)

    assert Rollout.objects.filter(source=source).count() == 2, "the aborted content is not started again"
    assert versions(cluster, targets) == ["1", "1"]
    again = decisions.rollout_retry(aborted.pk, user=people["approver"])
    resumed = wait_for(source, phase="Paused", waiting_for="approval")
    assert resumed.pk == again.pk and versions(cluster, targets) == ["2", "1"]
    with pytest.raises(RolloutError, match=f"rollout {again.pk} came after rollout {aborted.pk}"):
        decisions.rollout_retry(aborted.pk, user=people["approver"])


def test_a_retry_after_a_commit_elsewhere_during_a_freeze_is_of_the_aborted_content(
    repo, make_namespaces, make_source, sync, cluster, people
):
    """A held pass (a freeze, a closed window) fetches the head but chooses no rollout: the head a
    rollout stands for was not recorded, and a retry was refused as "moved on" to a head with no rollout."""
    from gitops import freezes

    source, paused, _targets = monorepo_rollout_paused(repo, make_namespaces, make_source, sync, cluster)
    decisions.rollout_abort(paused.pk, user=people["approver"])
    aborted = wait_for(source, phase="Aborted")
    freezes.freeze_set(None, until=timezone.now() + timedelta(hours=1), reason="holidays", by="ines")
    repo.write("team-b/notes.txt", "their notes")
    repo.commit("team-b: notes")
    assert sync(source)["outcome"] == "held"

    again = decisions.rollout_retry(aborted.pk, user=people["approver"])
    assert again.revision_id == aborted.revision_id


def test_a_new_commit_queues_behind_a_running_rollout(
    repo, make_namespaces, make_source, sync, cluster, people
):
    targets = make_namespaces("canary", "rest")
    source, _, _v2 = start_rollout(
        repo, make_source, sync, targets, [{"setWeight": 50}, {"pause": {}}], onNewRevision="queue"
    )
    sync(source)
    first = wait_for(source, phase="Paused", waiting_for="approval")

    repo.write("configmaps/app.yaml", configmap("app", {"VERSION": "3"}))
    v3 = repo.commit("v3")
    assert sync(source)["outcome"] == "queued"
    assert Revision.objects.get(source=source, commit=v3).outcome == "queued"
    assert rollout_of(source).pk == first.pk
    assert versions(cluster, targets) == ["2", "1"]

    decisions.rollout_promote(first.pk, user=people["approver"])
    poll(lambda: Rollout.objects.get(pk=first.pk).phase == "Completed", timeout=60, what="v2 to complete")
    sync(source)
    queued = wait_for(source, phase="Paused", waiting_for="approval")
    assert queued.revision.commit == v3
    assert versions(cluster, targets) == ["3", "2"]


def test_a_step_the_cluster_refuses_in_part_rolls_back_what_it_did_change(
    repo, make_namespaces, make_source, sync, cluster
):
    canary, rest = make_namespaces("canary", "rest")
    repo.write_all(
        {
            "sluice.yaml": policy([canary, rest], selfHeal=False),
            "configmaps/app.yaml": configmap("app", {"VERSION": "1"}),
            "configmaps/db.yaml": configmap("db", {"VERSION": "1"}),
        }
    )
    repo.commit("v1")
    source = make_source()
    assert sync(source)["outcome"] == "applied"
    # Someone else takes db's VERSION in the canary: a Git change of it conflicts there.
    edited = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "db", "namespace": canary}}
    cluster.apply_configmap({**edited, "data": {"VERSION": "hand"}}, field_manager="kubectl-edit", force=True)
    steps = [{"setWeight": 50}, {"pause": {}}, {"setWeight": 100}]
    repo.write_all(
        {
            "sluice.yaml": policy([canary, rest], selfHeal=False, rollout={"steps": steps}),
            "configmaps/app.yaml": configmap("app", {"VERSION": "2"}),
            "configmaps/db.yaml": configmap("db", {"VERSION": "2"}),
        }
    )
    repo.commit("v2")

    result = sync(source)

    assert result["outcome"] == "failed", result
    rollout = rollout_of(source)
    assert rollout.phase == "Failed"
    assert "step 0 failed" in rollout.message and "conflict" in rollout.message, "numbered as the page"
    assert rollout.events.filter(kind="failed", step_index=0).exists()
    # app went out to the canary in the step that failed; it is restored, as an abort would.
    assert versions(cluster, [canary, rest]) == ["1", "1"]
    assert versions(cluster, [canary, rest], name="db") == ["hand", "1"]
    kinds = list(RolloutEvent.objects.filter(rollout=rollout).order_by("id").values_list("kind", flat=True))
    assert kinds[-2:] == ["failed", "rolled-back"], kinds
    assert Change.objects.filter(source=source, action="rollback", namespace=canary, name="app").count() == 1


def test_a_rollback_owed_to_a_cluster_leaves_what_a_newer_rollout_wrote_there_alone(
    repo, make_namespaces, make_source, sync, cluster, people
):
    """A cluster that did not answer an abort is restored when it answers; by then the next commit's
    rollout may have written there, and its content is not put back to what came before the abort."""
    from gitops.rollout.rollback import rollbacks_owed_finish

    targets = make_namespaces("canary", "rest")
    source, _v2, aborted = started_and_aborted(repo, make_source, sync, targets, people)
    repo.write_all(
        {"sluice.yaml": policy(targets), "configmaps/app.yaml": configmap("app", {"VERSION": "3"})}
    )
    v3 = repo.commit("v3")
    sync(source)
    assert versions(cluster, targets) == ["3", "3"]
    # As if the default cluster had not answered the abort's rollback, which is now due.
    Rollout.objects.filter(pk=aborted.pk).update(rollback_pending_clusters=["default"], pause_until=None)

    rollbacks_owed_finish(source)

    assert versions(cluster, targets) == ["3", "3"], "the owed rollback put back what came before v2"
    assert cluster.get_configmap(targets[0], "app")["metadata"]["annotations"]["sluice.dev/commit"] == v3
    assert Rollout.objects.get(pk=aborted.pk).rollback_pending_clusters == []


def test_a_rollback_owed_to_a_cluster_does_not_bring_back_what_a_newer_rollout_deleted(
    repo, make_namespaces, make_source, sync, cluster, people
):
    from gitops.rollout.rollback import rollbacks_owed_finish

    targets = make_namespaces("canary", "rest")
    source, _v2, aborted = started_and_aborted(repo, make_source, sync, targets, people)
    repo.write_all(
        {"sluice.yaml": policy(targets, prune=True), "configmaps/db.yaml": configmap("db", {"V": "1"})}
    )
    repo.remove("configmaps/app.yaml")
    repo.commit("v3 drops app")
    sync(source)
    assert versions(cluster, targets) == [None, None], "v3 pruned app"
    Rollout.objects.filter(pk=aborted.pk).update(rollback_pending_clusters=["default"], pause_until=None)

    rollbacks_owed_finish(source)

    assert versions(cluster, targets) == [None, None], "the owed rollback brought back what v3 deleted"
    assert Rollout.objects.get(pk=aborted.pk).rollback_pending_clusters == []


def test_a_rollback_owed_to_a_cluster_leaves_a_later_rollout_of_the_same_commit_alone(
    repo, make_namespaces, make_source, sync, cluster, people
):
    """The branch moves back to the commit whose rollout was aborted, and a new rollout of it
    completes. Both rollouts stamp the objects with the same commit, so the change history, not the
    stamp, says the content is no longer the aborted rollout's to take back."""
    from gitops.rollout.rollback import rollbacks_owed_finish

    targets = make_namespaces("canary", "rest")
    source, v2, aborted = started_and_aborted(repo, make_source, sync, targets, people)
    assert versions(cluster, targets) == ["1", "1"]
    repo.write("configmaps/app.yaml", configmap("app", {"VERSION": "3"}))
    repo.commit("v3")
    sync(source)
    wait_for(source, phase="Paused", waiting_for="approval")
    promoted = rollout_of(source)
    decisions.rollout_promote(promoted.pk, user=people["approver"], full=True)
    wait_for(source, phase="Completed")
    repo.git("reset", "--hard", v2)
    repo.push(force=True)  # back to the aborted commit: it goes out anew, through its steps
    sync(source)
    again = wait_for(source, phase="Paused", waiting_for="approval")
    assert again.pk != aborted.pk and again.revision.commit == v2
    decisions.rollout_promote(again.pk, user=people["approver"], full=True)
    wait_for(source, phase="Completed")
    assert versions(cluster, targets) == ["2", "2"]
    # As if the default cluster had not answered the abort's rollback, which is now due.
    Rollout.objects.filter(pk=aborted.pk).update(rollback_pending_clusters=["default"], pause_until=None)
    logged = Change.objects.filter(rollout=aborted).count()

    rollbacks_owed_finish(source)

    assert versions(cluster, targets) == ["2", "2"], "the owed rollback took back the later rollout's content"
    assert Change.objects.filter(rollout=aborted).count() == logged
    assert Rollout.objects.get(pk=aborted.pk).rollback_pending_clusters == []


def test_a_push_that_finds_the_source_held_by_a_persons_decision_is_synced_once_it_is_done(
    repo, make_namespaces, make_source, sync, cluster
):
    """A waiver or a forgotten cluster holds the source's reconcile lock. A push meanwhile finds the
    source busy and leaves only its request, which a worker's pass would run when it ends, and a
    person's decision must run too: the push is not lost until the next poll."""
    from django.utils import timezone

    from gitops import schedule
    from gitops.models import Source
    from gitops.rollout.decisions import decision_locks

    source, targets = v1_applied_v2_committed(repo, make_namespaces, make_source, sync)
    asked = timezone.now()

    with decision_locks([source]):
        schedule.source_sync(source.pk, actor="push", wait_if_busy=False, automatic=True)  # as a push
        poll(
            lambda: (Source.objects.get(pk=source.pk).sync_requested_at or asked) > asked,
            timeout=30,
            what="the push's sync to find the source held",
        )
        assert versions(cluster, targets) == ["1"]

    poll(lambda: versions(cluster, targets) == ["2"], timeout=30, what="the push to be synced after all")


def test_a_request_left_for_a_pass_whose_worker_died_is_queued_by_beats_sweep(
    repo, make_namespaces, make_source, sync, cluster
):
    """A push finds the source's lock held and leaves its request for the holder. The holder's worker
    dies (its session ends later, taking the lock with it) and never runs it: the push waited for the
    next poll, and later pushes, finding a sync marked queued, queued nothing. Beat's sweep queues a
    request that old with nothing holding the source."""
    from datetime import timedelta

    import psycopg
    from django.db import connection
    from django.db.models import F
    from django.utils import timezone

    from gitops import polling, schedule, tasks
    from gitops.locks import LOCK_CLASS, source_lock_held

    source, targets = v1_applied_v2_committed(repo, make_namespaces, make_source, sync)
    asked = timezone.now()

    with psycopg.connect(**{**connection.get_connection_params(), "autocommit": True}) as dying:
        dying.execute("SELECT pg_advisory_lock(%s, %s)", [LOCK_CLASS, source.pk])
        schedule.source_sync_once(source.pk, actor="push", backing_off=False)
        poll(
            lambda: (Source.objects.get(pk=source.pk).sync_requested_at or asked) > asked,
            timeout=30,
            what="the push's sync to find the source held",
        )
    # The holder's backend gives its lock up as it exits, which a busy server does a moment later.
    poll(lambda: not source_lock_held(source.pk), timeout=10, what="the dying pass's lock to go")
    assert Source.objects.get(pk=source.pk).sync_queued, "a later push queues nothing"
    assert polling.sources_claim_orphaned_requests() == [], "the holder may still run it"
    Source.objects.filter(pk=source.pk).update(
        sync_requested_at=F("sync_requested_at") - timedelta(seconds=31)
    )
    assert source.pk in tasks.poll_sources.apply().get()
    poll(lambda: versions(cluster, targets) == ["2"], timeout=30, what="the push to be synced after all")
    assert polling.sources_claim_orphaned_requests() == []


# Alone under pytest -n 2: it bounds a wait by the wall clock, which the other session slows.
@pytest.mark.exclusive
def test_a_persons_decision_gets_the_source_between_passes_that_follow_one_another(repo, make_source):
    """Under a stream of pushes, a worker's passes follow one another with next to no gap between them
    (each tries the lock again as soon as it lets it go). A waiver or a forgotten cluster waits in the
    lock's queue: the pass that ends hands it the lock, and the next pass's try fails meanwhile."""
    import threading
    import time

    import psycopg
    from django.db import connection

    from gitops.locks import LOCK_CLASS, sources_locked

    source = make_source()
    worker = psycopg.connect(**{**connection.get_connection_params(), "autocommit": True})
    stop, passes, refused = threading.Event(), [0], [0]

    def passes_back_to_back() -> None:  # as source_sync's loop does, 50 ms a pass
        while not stop.is_set():
            if worker.execute("SELECT pg_try_advisory_lock(%s, %s)", [LOCK_CLASS, source.pk]).fetchone()[0]:
                passes[0] += 1
                stop.wait(0.05)
                worker.execute("SELECT pg_advisory_unlock(%s, %s)", [LOCK_CLASS, source.pk])
            else:
                refused[0] += 1
                stop.wait(0.01)

    running = threading.Thread(target=passes_back_to_back, daemon=True)
    running.start()
    try:
        poll(lambda: passes[0] >= 3, timeout=10, what="the passes to be under way")
        started = time.monotonic()
        with sources_locked([source], wait=5):
            waited = time.monotonic() - started
            during = passes[0]
            poll(lambda: refused[0] > 0, timeout=5, what="the next pass to find the source held")
            assert passes[0] == during, "a pass ran while the decision held the lock"
        assert waited < 1, f"the decision waited {waited:.2f}s for a 50 ms pass"
        poll(lambda: passes[0] > during, timeout=5, what="the passes to go on once the decision is done")
    finally:
        stop.set()
        running.join(timeout=5)
        worker.close()


def test_waiting_for_a_sources_lock_leaves_the_callers_transaction_as_it_was(repo, make_source):
    """The wait's lock_timeout is the savepoint's own: a caller inside a transaction keeps its timeout
    once the lock is taken, and keeps a usable transaction when the wait runs out."""
    import psycopg
    from django.db import connection, transaction

    from gitops.locks import LOCK_CLASS, SourceBusy, sources_locked

    source = make_source()

    def lock_timeout() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SHOW lock_timeout")
            return cursor.fetchone()[0]

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '7s'")
        with sources_locked([source], wait=5):
            assert lock_timeout() == "7s"
        assert lock_timeout() == "7s"

    holder = psycopg.connect(**{**connection.get_connection_params(), "autocommit": True})
    try:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", [LOCK_CLASS, source.pk])
        with transaction.atomic():
            with pytest.raises(SourceBusy), sources_locked([source], wait=0.2):
                pass
            assert lock_timeout() == "0"  # the transaction goes on, its own setting unchanged
    finally:
        holder.close()


def test_a_promote_waits_for_a_pass_logging_changes_and_never_deadlocks_with_it(paused_rollout, people):
    """A pass logs its changes and its inventory in one transaction, whose foreign keys hold key-share
    locks on the rollout's and the source's rows until it commits. A promote that locked the source's
    row too (the join's default) waited for the pass while holding the rollout's, and the pass then
    waited for the rollout's: PostgreSQL ended one of them (an approver saw a 500). It locks the
    rollout's row alone."""
    import threading

    import psycopg
    from django.db import connection

    rollout = paused_rollout
    errors: list[Exception] = []

    def promote() -> None:
        try:
            decisions.rollout_promote(rollout.pk, user=people["approver"])
        except Exception as exc:  # the test reports whatever ended it
            errors.append(exc)
        finally:
            connection.close()  # this thread's

    def promote_waits_for_a_lock() -> bool:
        with connection.cursor() as cursor:
            # A lock awaited in this database: the server is shared with a parallel session's.
            cursor.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
            )
            return bool(cursor.fetchone()[0])

    with psycopg.connect(**connection.get_connection_params()) as logging_pass:
        # As a pass's change-log rows do, by their foreign keys: first the source's row...
        logging_pass.execute("SELECT 1 FROM gitops_source WHERE id = %s FOR KEY SHARE", [rollout.source_id])
        approver = threading.Thread(target=promote)
        approver.start()
        poll(
            lambda: not approver.is_alive() or promote_waits_for_a_lock(),
            timeout=30,
            what="the promote to finish, or to wait for a lock",
        )
        # ... then the rollout's. Had the promote locked the source's row, this would deadlock.
        logging_pass.execute("SELECT 1 FROM gitops_rollout WHERE id = %s FOR KEY SHARE", [rollout.pk])
        logging_pass.commit()
    approver.join(timeout=30)

    assert not approver.is_alive() and errors == []
    assert Approval.objects.filter(rollout=rollout).count() == 1


def test_a_sweep_of_a_suspended_source_carries_out_its_owed_work_but_moves_no_timer(
    repo, make_namespaces, make_source, sync, cluster
):
    """Suspended means no timer moves a rollout. Beat's sweep still runs a pass on a suspended source
    (an owed rollback, an abort), and that pass drove the active rollout on: a timed pause that ran out
    went on to the next weight, with nobody asking."""
    from django.utils import timezone

    from gitops import source_admin

    canary, rest = make_namespaces("canary", "rest")
    steps = [{"setWeight": 50}, {"pause": {"duration": "1h"}}, {"setWeight": 100}]
    source, _v1, _v2 = start_rollout(repo, make_source, sync, [canary, rest], steps)
    sync(source)
    timed = wait_for(source, phase="Paused", waiting_for="timer")
    source_admin.source_suspend(source)
    Rollout.objects.filter(pk=timed.pk).update(pause_until=timezone.now())  # the hour is over

    result = sync(source, rollouts_only=True)  # as beat's sweep sends it, through the worker

    held = Rollout.objects.get(pk=timed.pk)
    assert (held.phase, held.step_index, held.weight) == ("Paused", 1, 50), result
    assert versions(cluster, [canary, rest]) == ["2", "1"]
    source_admin.source_resume(source)  # resuming lets it go on
    wait_for(source, phase="Completed")
    assert versions(cluster, [canary, rest]) == ["2", "2"]


def test_an_abort_leaves_a_hand_edit_that_self_heal_took_back_during_the_rollout_taken_back(
    repo, make_namespaces, make_source, sync, cluster, core_api, people
):
    """Someone edits a ConfigMap the commit does not change while the rollout waits at its gate; the next
    step heals it. The abort restored every object to what it held before the rollout's first write to
    it, the heal's included: the hand edit came back, stamped as Git's, and stayed."""
    first, second, third = make_namespaces("first", "second", "third")
    targets = [first, second, third]
    other = configmap("other", {"K": "git"})
    repo.write_all(
        {
            "sluice.yaml": policy(targets, selfHeal=True),
            "configmaps/app.yaml": configmap("app", {"VERSION": "1"}),
            "configmaps/other.yaml": other,
        }
    )
    repo.commit("v1")
    source = make_source()
    assert sync(source)["outcome"] == "applied"
    steps = [{"setWeight": 34}, {"pause": {}}, {"setWeight": 67}, {"pause": {}}]
    repo.write_all(
        {
            "sluice.yaml": policy(targets, selfHeal=True, rollout={"steps": steps}),
            "configmaps/app.yaml": configmap("app", {"VERSION": "2"}),
        }
    )
    repo.commit("v2")
    sync(source)
    paused = wait_for(source, phase="Paused", waiting_for="approval")
    core_api.patch_namespaced_config_map("other", first, {"data": {"K": "hand"}})
    decisions.rollout_promote(paused.pk, user=people["approver"])
    wait_for(source, phase="Paused", waiting_for="approval", weight=67)
    assert cluster.get_configmap(first, "other")["data"] == {"K": "git"}, "healed"
    assert paused.intents.filter(action="self-heal", namespace=first, name="other").exists()

    decisions.rollout_abort(paused.pk, user=people["approver"])
    wait_for(source, phase="Aborted")

    assert cluster.get_configmap(first, "other")["data"] == {"K": "git"}, "the heal is not taken back"
    assert cluster.get_configmap(first, "app")["data"] == {"VERSION": "1"}, "the rollout's own write is"


def test_an_abort_asked_while_a_new_commit_supersedes_the_rollout_ends_it_aborted_in_its_askers_name(
    repo, make_namespaces, make_source, sync, cluster, people, monkeypatch
):
    """The pass read the rollout before the abort was stored and decided to supersede it; the abort came
    in between. The rollback carried out the person's abort, yet ended Superseded in Sluice's name and
    with its reason (before 2026-12-07), so `gitops abort` said "superseded" and exited 1."""
    from gitops.rollout import lifecycle
    from tests.passes import HeldPass

    targets = make_namespaces("a", "b")
    canary = {"steps": [{"setWeight": 50}, {"pause": {}}]}
    repo.write_all(
        {
            "sluice.yaml": policy(targets, rollout=canary),
            "configmaps/app.yaml": configmap("app", {"VERSION": "1"}),
        }
    )
    repo.commit("v1")
    source = make_source()
    sync(source)
    first = wait_for(source, phase="Paused", waiting_for="approval")
    repo.write("configmaps/app.yaml", configmap("app", {"VERSION": "2"}))
    repo.commit("v2")

    with HeldPass(monkeypatch, source, before="rollout_rollback", within=lifecycle) as held:
        decisions.rollout_abort(first.pk, user=people["approver"], reason="page 7")
    assert held.error is None, held.error

    first.refresh_from_db()
    assert first.phase == "Aborted", first.phase
    ended = RolloutEvent.objects.filter(rollout=first, kind="rolled-back").get()
    assert ended.actor == people["approver"].get_username()
    assert ended.message.startswith("page 7")


def test_a_step_the_cluster_refuses_after_a_person_asked_to_abort_ends_the_pass_aborted(
    repo, make_namespaces, make_source, sync, cluster, kube_client, core_api, people, monkeypatch
):
    """The abort is stored while the step applies, and the cluster refuses the step's write: the rollback
    carries out the person's abort (the rollout ends Aborted, in their name), yet the pass answered
    "failed" (the sync's result, the reconcile metric's outcome) until 2026-12-07."""
    from contextlib import ExitStack

    from gitops import reconcile
    from gitops.rollout import lifecycle

    targets = make_namespaces("canary", "rest")
    source, _, _ = start_rollout(repo, make_source, sync, targets, [{"setWeight": 50}, {"pause": {}}])
    real_apply = lifecycle.weight_apply

    def abort_then_apply(rollout, *args, **kwargs):
        decisions.rollout_abort(rollout.pk, user=people["approver"], reason="page 9")
        return real_apply(rollout, *args, **kwargs)

    monkeypatch.setattr(lifecycle, "weight_apply", abort_then_apply)
    not_2 = "!has(object.data) || !('VERSION' in object.data) || object.data.VERSION != '2'"
    with ExitStack() as denied:
        for namespace in targets:
            denied.enter_context(
                updates_denied(
                    kube_client(),
                    namespace,
                    expression=not_2,
                    message="VERSION 2 may not go out here",
                    denied=lambda namespace=namespace: _update_denied(core_api, namespace, "2"),
                )
            )
        # A person's sync: its answer is its own pass, not the one the abort's request runs after it.
        result = reconcile.source_sync(source.pk, manual=True)

    rollout = rollout_of(source)
    assert rollout.phase == "Aborted", (rollout.phase, rollout.message)
    assert result.outcome == "aborted", result
    assert any("VERSION 2 may not go out here" in error for error in result.errors), result.errors
    ended = RolloutEvent.objects.filter(rollout=rollout, kind="rolled-back").get()
    assert (ended.actor, ended.message[:6]) == (people["approver"].get_username(), "page 9")
    assert versions(cluster, targets) == ["1", "1"]


def test_a_rollback_leaves_a_key_another_manager_holds_at_its_value_and_in_its_hands(
    repo, make_namespaces, make_source, sync, cluster, people
):
    """An injector's key (a rotated CA bundle) on a ConfigMap Sluice manages: the restore force-applied
    the whole old data, putting the key back to its stale value and making Sluice its only owner, so the
    next commit's apply deleted it. Keys the rollout wrote are still put back."""
    from gitops.plan.provenance import owned_keys

    (namespace,) = targets = make_namespaces("app")
    source, _v1, _v2 = start_rollout(repo, make_source, sync, targets, [{"setWeight": 100}, {"pause": {}}])
    # The injector writes its key after v1 went out, before v2's rollout reads the object.
    cluster.merge_configmap_keys(
        namespace, "app", data={"ca.crt": "old"}, binary_data={}, field_manager="injector"
    )
    sync(source)
    paused = wait_for(source, phase="Paused", waiting_for="approval")
    assert cluster.get_configmap(namespace, "app")["data"] == {"VERSION": "2", "ca.crt": "old"}
    cluster.merge_configmap_keys(
        namespace, "app", data={"ca.crt": "rotated"}, binary_data={}, field_manager="injector"
    )

    decisions.rollout_abort(paused.pk, user=people["approver"])
    wait_for(source, phase="Aborted")

    live = cluster.get_configmap(namespace, "app")
    assert live["data"] == {"VERSION": "1", "ca.crt": "rotated"}, "the rollout's key restored, not theirs"
    assert "ca.crt" not in owned_keys(live, "sluice")["data"], "Sluice did not take the key over"
    restore = Change.objects.get(source=source, action="rollback", namespace=namespace)
    assert [item["key"] for item in restore.diff] == ["VERSION"], "the log shows what the restore changed"


def test_a_rollout_back_to_an_older_commit_is_judged_by_its_author_and_its_committer(
    repo, make_namespaces, make_source, sync
):
    """A branch reset to a commit older than the last rollout's brings no commit since it: the rollout
    was judged by the head's author alone, and its committer could approve it."""
    targets = make_namespaces("app")
    repo.write_all({"sluice.yaml": policy(targets), "configmaps/app.yaml": configmap("app", {"V": "0"})})
    repo.git("add", "--all")
    repo.git("commit", "--quiet", "-m", "v0", "--author", "Eve <eve@example.com>")  # committed by Ada
    older = repo.head()
    repo.push()
    source = make_source()
    assert sync(source)["outcome"] == "applied"
    repo.write("configmaps/app.yaml", configmap("app", {"V": "1"}))
    repo.commit("v1")
    assert sync(source)["outcome"] == "applied"

    repo.git("reset", "--quiet", "--hard", older)
    repo.push(force=True)
    sync(source)

    back = Rollout.objects.filter(source=source, revision__commit=older).order_by("-id").first()
    assert back is not None and back.pk != Rollout.objects.filter(source=source).order_by("id").first().pk
    assert set(back.commit_identities) == {"eve@example.com", "ada@example.com"}


def test_a_range_longer_than_is_read_lets_nobody_approve_where_self_approval_is_forbidden(
    paused_rollout, people, monkeypatch
):
    """A range since the last rollout was read for its newest 1,000 commits only: a pusher could bury
    their own commit under filler and approve it. A range longer than what is read is marked, and
    refused where self-approval is forbidden."""
    from gitops.vocabulary import MORE_COMMITS_THAN_READ

    Approval.objects.create(
        rollout=paused_rollout,
        step_index=paused_rollout.step_index,
        user=people["approver"],
        username=people["approver"].username,
        commit=paused_rollout.revision.commit,
    )
    Rollout.objects.filter(pk=paused_rollout.pk).update(
        forbid_self_approval=True, commit_identities=[MORE_COMMITS_THAN_READ, "someone@example.com"]
    )
    rollout = Rollout.objects.get(pk=paused_rollout.pk)
    with pytest.raises(PermissionDenied, match="than were read for their authors"):
        decisions.rollout_promote(paused_rollout.pk, user=people["second_approver"])
    assert not selectors.rollout_approvals_counted(rollout, rollout.step_index).exists(), "none independent"
    selectors.strict_gates_count([rollout])
    assert rollout.strict_approval_count == 0
