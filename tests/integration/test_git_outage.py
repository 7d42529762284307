"""Abort, timed pauses and analysis go on from stored state when Git does not answer (issue 10, section 3)."""

from __future__ import annotations

import shutil
import subprocess
from datetime import timedelta

import pytest
from django.utils import timezone

from gitops import polling
from gitops.models import Rollout, Source
from gitops.rollout import decisions
from tests.gitrepo import SilentGitServer, configmap, policy
from tests.rollouts import rollout_of, wait_for
from tests.workers import poll

pytestmark = pytest.mark.django_db(transaction=True)


def versions(cluster, namespaces: list[str]) -> list[str | None]:
    return [((cluster.get_configmap(ns, "app") or {}).get("data") or {}).get("V") for ns in namespaces]


def paused_at_half(repo, make_namespaces, make_source, sync, steps=None):
    targets = make_namespaces("canary", "rest")
    repo.write_all({"sluice.yaml": policy(targets), "configmaps/app.yaml": configmap("app", {"V": "1"})})
    repo.commit("v1")
    source = make_source()
    sync(source)
    steps = steps or [{"setWeight": 50}, {"pause": {}}]
    repo.write_all(
        {
            "sluice.yaml": policy(targets, rollout={"steps": steps}),
            "configmaps/app.yaml": configmap("app", {"V": "2"}),
        }
    )
    repo.commit("v2")
    sync(source)
    return source, targets


def break_remote(repo) -> None:
    shutil.rmtree(repo.remote)


def delete_branch(repo) -> None:
    subprocess.run(
        ["git", f"--git-dir={repo.remote}", "update-ref", "-d", f"refs/heads/{repo.branch}"], check=True
    )


def push_invalid_head(repo) -> None:
    repo.write(
        "configmaps/app.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\ndata: {V: 3}\n"
    )
    repo.commit("v3: not valid")


@pytest.mark.parametrize("git_trouble", [break_remote, delete_branch, push_invalid_head])
def test_abort_rolls_back_whatever_git_does(
    git_trouble, repo, make_namespaces, make_source, sync, cluster, people
):
    source, targets = paused_at_half(repo, make_namespaces, make_source, sync)
    paused = wait_for(source, phase="Paused", waiting_for="approval")
    assert versions(cluster, targets) == ["2", "1"]
    git_trouble(repo)

    decisions.rollout_abort(paused.pk, user=people["approver"], reason="incident")

    aborted = wait_for(source, phase="Aborted", timeout=60)
    assert aborted.message.startswith("incident")
    assert versions(cluster, targets) == ["1", "1"]


def test_a_timed_pause_ends_and_the_rollout_completes_while_git_is_down(
    repo, make_namespaces, make_source, sync, cluster, celery_worker
):
    source, targets = paused_at_half(
        repo, make_namespaces, make_source, sync, steps=[{"setWeight": 50}, {"pause": {"duration": "2s"}}]
    )
    assert rollout_of(source).waiting_for == "timer"
    break_remote(repo)

    # The ETA task that ends the pause finds Git gone and goes on from the mirror.
    wait_for(source, phase="Completed", timeout=60)
    assert versions(cluster, targets) == ["2", "2"]
    assert "does not appear to be a git repository" in Source.objects.get(pk=source.pk).last_error


def test_a_rollouts_own_wake_up_of_a_backing_off_source_goes_on_without_asking_git(
    repo, make_namespaces, make_source, sync, cluster, celery_worker
):
    """The wake-up at a timed pause's end (as a consumer gate's every slice) ran a full pass: a fetch of
    the host the source backs off from, retried twice, each failure counted and the back-off reset."""
    source, targets = paused_at_half(
        repo, make_namespaces, make_source, sync, steps=[{"setWeight": 50}, {"pause": {"duration": "3s"}}]
    )
    assert rollout_of(source).waiting_for == "timer"
    break_remote(repo)
    next_try = timezone.now() + timedelta(minutes=10)
    Source.objects.filter(pk=source.pk).update(consecutive_failures=1, next_poll_at=next_try)
    fetched_at = Source.objects.get(pk=source.pk).last_fetched_at

    wait_for(source, phase="Completed", timeout=60)
    assert versions(cluster, targets) == ["2", "2"]
    after = Source.objects.get(pk=source.pk)
    assert (after.consecutive_failures, after.next_poll_at) == (1, next_try), "Git was not asked"
    assert after.last_fetched_at == fetched_at


def test_a_failing_source_backs_off_visibly(make_source, sync):
    source = make_source(url="file:///nonexistent/repository.git")
    seen = []
    for _ in range(3):
        before = timezone.now()
        assert sync(source)["outcome"] == "failed"
        after = timezone.now()
        failing = Source.objects.get(pk=source.pk)
        # The worker reckons from when its pass ended, somewhere between the two.
        seen.append(
            (failing.consecutive_failures, failing.next_poll_at - before, failing.next_poll_at - after)
        )
    assert [failures for failures, _, _ in seen] == [1, 2, 3]
    # The poll interval (60 s), doubled per failure in a row.
    for (_, at_most, at_least), seconds in zip(seen, (60, 120, 240), strict=True):
        assert timedelta(seconds=seconds - 1) < at_most, at_most
        assert at_least <= timedelta(seconds=seconds + 1), at_least
    assert "repository not found" in failing.last_error or "does not appear" in failing.last_error


def test_beat_does_not_hammer_a_backing_off_source_with_a_due_rollout(
    repo, make_namespaces, make_source, sync, people
):
    source, _ = paused_at_half(repo, make_namespaces, make_source, sync)
    paused = wait_for(source, phase="Paused", waiting_for="approval")
    # A timer that ran out (an analysis back-off, say) waits for the source's next try.
    Rollout.objects.filter(pk=paused.pk).update(
        waiting_for="analysis", pause_until=timezone.now() - timedelta(seconds=1)
    )
    Source.objects.filter(pk=source.pk).update(
        consecutive_failures=3, next_poll_at=timezone.now() + timedelta(minutes=4), sync_queued=False
    )
    assert source.pk not in polling.sources_with_due_rollouts()

    Source.objects.filter(pk=source.pk).update(next_poll_at=timezone.now() - timedelta(seconds=1))
    assert source.pk in polling.sources_with_due_rollouts()
    # Queued once: the next sweep leaves it alone until that sync has started.
    assert source.pk not in polling.sources_with_due_rollouts()


def test_an_abort_of_a_source_backing_off_from_its_git_host_is_swept_at_once(
    repo, make_namespaces, make_source, sync, people
):
    # An abort needs nothing from Git: its source's back-off (up to an hour) must not hold it up.
    source, _ = paused_at_half(repo, make_namespaces, make_source, sync)
    paused = wait_for(source, phase="Paused", waiting_for="approval")
    Rollout.objects.filter(pk=paused.pk).update(abort_requested_by="otto")
    Source.objects.filter(pk=source.pk).update(
        consecutive_failures=3, next_poll_at=timezone.now() + timedelta(minutes=4), sync_queued=False
    )
    assert source.pk in polling.sources_with_due_rollouts()
    assert source.pk not in polling.sources_with_due_rollouts()  # queued once


def test_an_abort_swept_while_the_source_backs_off_does_not_ask_git_or_reset_its_back_off(
    repo, make_namespaces, make_source, sync
):
    source, _ = paused_at_half(repo, make_namespaces, make_source, sync)
    paused = wait_for(source, phase="Paused", waiting_for="approval")
    later = timezone.now() + timedelta(minutes=4)
    Source.objects.filter(pk=source.pk).update(
        url="file:///nonexistent/gone.git", consecutive_failures=3, next_poll_at=later, last_error="git down"
    )
    Rollout.objects.filter(pk=paused.pk).update(abort_requested_by="otto")

    result = sync(source, rollouts_only=True)  # beat's sweep of the abort

    assert result["outcome"] == "aborted", result
    backing = Source.objects.get(pk=source.pk)
    assert (backing.consecutive_failures, backing.last_error) == (3, "git down")
    assert abs((backing.next_poll_at - later).total_seconds()) < 1


def test_an_abort_stops_a_fetch_from_a_git_host_that_hangs_and_rolls_back_at_once(
    repo, make_namespaces, make_source, sync, cluster, people
):
    """A poll's pass holds the source's lock while its fetch waits on a Git host that never answers.
    An abort asked for meanwhile stops the fetch and is carried out within seconds. Before, it waited
    for the fetch's timeout (two minutes) while the canary kept the bad version."""
    from gitops.tasks import sync_source

    source, targets = paused_at_half(repo, make_namespaces, make_source, sync)
    paused = wait_for(source, phase="Paused", waiting_for="approval")
    host = SilentGitServer()  # a host behind a black hole: a fetch waits its whole timeout
    try:
        Source.objects.filter(pk=source.pk).update(url=host.url)
        sync_source.delay(source.pk, automatic=True, wait_if_busy=False)
        poll(lambda: host.connections, timeout=30, what="the poll's fetch to reach the Git host")

        decisions.rollout_abort(paused.pk, user=people["approver"], reason="incident")

        aborted = wait_for(source, phase="Aborted", timeout=30)
        assert aborted.message.startswith("incident")
        assert versions(cluster, targets) == ["1", "1"]
        poll(lambda: len(host.connections) >= 2, timeout=30, what="the fetch to be asked for again")
    finally:
        host.close()
