"""A rollout's move and its timeline's line (with the notification it sends) commit together.

A worker killed between the two left a rollout paused, gated or moved on that no later pass announced:
the next pass finds it where the lost one left it, so approvers who rely on notifications were never
told. The crash is an exception thrown where the line is written, in a pass run here.
"""

from __future__ import annotations

import pytest

from gitops.models import Rollout, RolloutEvent
from tests.gitrepo import configmap, policy
from tests.inprocess import applied_in_process, passes_run_here
from tests.rollouts import rollout_of

pytestmark = pytest.mark.django_db(transaction=True)


class WorkerKilled(BaseException):
    """What a SIGKILL is to the pass: nothing after it runs."""


def applied_here(repo, make_namespaces, make_source, monkeypatch):
    passes_run_here(monkeypatch)
    return applied_in_process(repo, make_namespaces, make_source)


def killed_once_at(monkeypatch, module, kind: str) -> list[str]:
    """``module.rollout_event`` throws once, for ``kind``: the worker dies as it writes that line."""
    real = module.rollout_event
    killed: list[str] = []

    def event(rollout, event_kind, **options):
        if event_kind == kind and not killed:
            killed.append(kind)
            raise WorkerKilled(kind)
        return real(rollout, event_kind, **options)

    monkeypatch.setattr(module, "rollout_event", event)
    return killed


@pytest.mark.parametrize(
    "pause, waiting_for", [({}, "approval"), ({"duration": "1h"}, "timer")], ids=["approval", "timer"]
)
def test_a_pause_is_announced_though_the_worker_died_as_it_paused(
    repo, make_namespaces, make_source, monkeypatch, pause, waiting_for
):
    from gitops import reconcile
    from gitops.rollout import gates

    canary, rest, source = applied_here(repo, make_namespaces, make_source, monkeypatch)
    steps = [{"setWeight": 50}, {"pause": pause}]
    repo.write_all(
        {
            "sluice.yaml": policy([canary, rest], rollout={"steps": steps}),
            "configmaps/app.yaml": configmap("app", {"v": "2"}),
        }
    )
    repo.commit("v2")
    killed = killed_once_at(monkeypatch, gates, "paused")
    with pytest.raises(WorkerKilled):
        reconcile.source_sync(source.pk)
    assert killed == ["paused"]

    reconcile.source_sync(source.pk)

    paused = rollout_of(source)
    assert (paused.phase, paused.waiting_for) == ("Paused", waiting_for)
    assert RolloutEvent.objects.filter(rollout=paused, kind="paused").count() == 1, "announced once"
    assert RolloutEvent.objects.filter(rollout=paused, kind="step").count() == 1


def test_a_step_is_told_once_though_the_worker_died_as_it_told_it(
    repo, make_namespaces, make_source, monkeypatch
):
    from gitops import reconcile
    from gitops.rollout import lifecycle

    canary, rest, source = applied_here(repo, make_namespaces, make_source, monkeypatch)
    steps = [{"setWeight": 50}, {"pause": {}}]
    repo.write_all(
        {
            "sluice.yaml": policy([canary, rest], rollout={"steps": steps}),
            "configmaps/app.yaml": configmap("app", {"v": "2"}),
        }
    )
    repo.commit("v2")
    killed_once_at(monkeypatch, lifecycle, "step")
    with pytest.raises(WorkerKilled):
        reconcile.source_sync(source.pk)

    reconcile.source_sync(source.pk)

    paused = Rollout.objects.get(pk=rollout_of(source).pk)
    assert (paused.phase, paused.step_index) == ("Paused", 1)
    assert RolloutEvent.objects.filter(rollout=paused, kind="step").count() == 1


def v2_with_an_analysis(repo, make_namespaces, make_source, monkeypatch, analysis_endpoint):
    """v1 applied by a pass run here; v2 committed, its steps 50%, an analysis, then a pause."""
    from gitops import reconcile

    passes_run_here(monkeypatch)
    canary, rest = make_namespaces("canary", "rest")
    repo.write_all(
        {"sluice.yaml": policy([canary, rest]), "configmaps/app.yaml": configmap("app", {"v": "1"})}
    )
    repo.commit("v1")
    source = make_source(analysis_url_prefixes=[analysis_endpoint.url])
    reconcile.source_sync(source.pk)
    steps = [{"setWeight": 50}, {"analysis": {"http": {"url": analysis_endpoint.url}}}, {"pause": {}}]
    repo.write_all(
        {
            "sluice.yaml": policy([canary, rest], rollout={"steps": steps}),
            "configmaps/app.yaml": configmap("app", {"v": "2"}),
        }
    )
    repo.commit("v2")
    return canary, rest, source


def test_an_analysis_is_told_once_though_the_worker_died_as_it_moved_on(
    repo, make_namespaces, make_source, monkeypatch, analysis_endpoint
):
    """The check's line was written before the move it makes: a worker killed between the two left a
    line for a check that counted for nothing, and the retry ran the check again and wrote a second."""
    from gitops import reconcile
    from gitops.rollout import gates

    _, _, source = v2_with_an_analysis(repo, make_namespaces, make_source, monkeypatch, analysis_endpoint)
    real, killed = gates.transition, []

    def transition(rollout, **changes):
        if "analysis_failures" in changes and not killed:  # the move after the check
            killed.append(rollout.pk)
            raise WorkerKilled("analysis")
        return real(rollout, **changes)

    monkeypatch.setattr(gates, "transition", transition)
    with pytest.raises(WorkerKilled):
        reconcile.source_sync(source.pk)
    assert len(analysis_endpoint.received) == 1
    assert not RolloutEvent.objects.filter(kind="analysis").exists(), "the line went with its move"

    reconcile.source_sync(source.pk)

    rollout = rollout_of(source)
    assert (rollout.phase, rollout.waiting_for) == ("Paused", "approval")
    assert len(analysis_endpoint.received) == 2, "the check ran again: its first run counted for nothing"
    assert RolloutEvent.objects.filter(rollout=rollout, kind="analysis").count() == 1


def test_an_abort_asked_during_an_analysis_is_carried_out_in_the_same_pass(
    repo, make_namespaces, make_source, monkeypatch, analysis_endpoint, cluster
):
    """The check's move failed its compare-and-swap (the abort changed the rollout), and the pass
    reported a pause: the abort waited for the pass it had queued."""
    from gitops import reconcile
    from gitops.rollout import gates

    canary, rest, source = v2_with_an_analysis(
        repo, make_namespaces, make_source, monkeypatch, analysis_endpoint
    )
    real = gates.run_analysis

    def checked_while_someone_aborts(*args, **kwargs):
        answer = real(*args, **kwargs)
        # A person's abort lands while the check runs (what rollout_abort stores).
        Rollout.objects.filter(source=source, phase="Progressing").update(
            abort_requested_by="vera", abort_reason="bad canary"
        )
        return answer

    monkeypatch.setattr(gates, "run_analysis", checked_while_someone_aborts)
    result = reconcile.source_sync(source.pk)

    rollout = rollout_of(source)
    assert (result.outcome, rollout.phase) == ("aborted", "Aborted"), result
    assert [cluster.get_configmap(ns, "app")["data"]["v"] for ns in (canary, rest)] == ["1", "1"]
    assert not RolloutEvent.objects.filter(rollout=rollout, kind="analysis").exists()
