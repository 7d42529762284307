"""A step tried again and again while its cluster answers reads but refuses writes: the intent the first
try left pending is finished before the object is planned again, so the change is applied and logged
once when the cluster takes writes again.

The cluster refuses writes as a real one does when its admission webhook is down (``tests.admission``):
it answers reads, and every ConfigMap write gets a 500."""

from __future__ import annotations

import pytest

from gitops.models import ApplyIntent, Change
from tests.admission import writes_refused
from tests.gitrepo import configmap, policy

pytestmark = pytest.mark.django_db(transaction=True)

TRIES = 3


def version(cluster, namespace: str) -> str | None:
    live = cluster.get_configmap(namespace, "app")
    return None if live is None else (live.get("data") or {}).get("VERSION")


def commit_version(repo, namespace: str, value: str) -> str:
    repo.write_all(
        {"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"VERSION": value})}
    )
    return repo.commit(f"v{value}")


def test_a_step_tried_while_its_cluster_refuses_writes_applies_and_logs_its_change_once(
    repo, namespace, make_source, cluster, kube_client, settings, monkeypatch
):
    """Every pass outlasts the few seconds a process leaves a cluster that failed alone
    (``clients.recently_unreachable``: a slow fetch or validation), so each try reads the cluster again.
    Before, each try wrote one more pending intent for the object, and the cluster's recovery applied
    them all side by side, logging one change once per try."""
    from gitops import reconcile, schedule
    from gitops.cluster import clients
    from gitops.errors import TemporaryError

    # Every pass runs here, so that each one is a try the test counts.
    monkeypatch.setattr(schedule, "_send", lambda *args, **kwargs: "")
    settings.SLUICE_CLUSTER_RETRY_SECONDS = 0  # the step waiting for the cluster is taken at each pass
    commit_version(repo, namespace, "1")
    source = make_source()
    assert reconcile.source_sync(source.pk).outcome == "applied"
    v2 = commit_version(repo, namespace, "2")

    monkeypatch.setattr(clients, "recently_unreachable", lambda name: None)
    with writes_refused(kube_client(), [namespace]):
        first = reconcile.source_sync(source.pk)
        assert first.rollout is not None and "failed calling webhook" in str(first.rollout), first.rollout
        for _ in range(TRIES - 1):
            # The pending write is tried first and refused again: its cluster, the only one, counts as
            # one that does not answer, and the pass fails (and backs off) with the cluster's own words.
            with pytest.raises(TemporaryError, match="failed calling webhook"):
                reconcile.source_sync(source.pk)

    intents = ApplyIntent.objects.filter(source=source, namespace=namespace, name="app", commit=v2)
    assert version(cluster, namespace) == "1"
    assert list(intents.values_list("status", flat=True)) == ["pending"], "one intent, however many tries"

    result = reconcile.source_sync(source.pk)  # the cluster takes writes again

    assert version(cluster, namespace) == "2"
    assert result.summary.get("resumed") == 1, result.summary
    logged = Change.objects.filter(source=source, namespace=namespace, name="app", commit=v2)
    assert logged.count() == 1, "one change, logged once however many times the step was tried"
    assert logged.get().intent_id == intents.get().pk
    assert not ApplyIntent.objects.filter(source=source, status="pending").exists()
    assert reconcile.source_sync(source.pk).outcome in ("unchanged", "completed")


def test_a_pending_write_to_a_namespace_an_administrator_took_out_of_scope_is_dropped_not_applied(
    repo, make_namespaces, make_source, cluster, kube_client, monkeypatch
):
    """A step's writes were left pending (the cluster refused them); then an administrator narrowed the
    source's scope. The write to the namespace no longer allowed is dropped unapplied, and logged
    nowhere; before, the next pass applied it first and only then rolled the rollout back."""
    from gitops import reconcile, schedule, source_admin
    from gitops.cluster import clients

    monkeypatch.setattr(schedule, "_send", lambda *args, **kwargs: "")
    # Not the earlier tests' refusals, which this process remembers for a few seconds.
    monkeypatch.setattr(clients, "recently_unreachable", lambda name: None)
    kept, narrowed = make_namespaces("kept", "narrowed")

    def commit(value: str) -> str:
        repo.write_all(
            {
                "sluice.yaml": policy([kept, narrowed]),
                "configmaps/app.yaml": configmap("app", {"VERSION": value}),
            }
        )
        return repo.commit(f"v{value}")

    commit("1")
    source = make_source()
    assert reconcile.source_sync(source.pk).outcome == "applied"
    v2 = commit("2")
    with writes_refused(kube_client(), [kept, narrowed]):
        reconcile.source_sync(source.pk)
    written = ApplyIntent.objects.filter(source=source, name="app", commit=v2)
    assert sorted(written.values_list("namespace", "status")) == [(kept, "pending"), (narrowed, "pending")]

    source_admin.source_update_scope(source, allowed_namespaces=[kept])
    reconcile.source_sync(source.pk)  # the cluster takes writes again

    assert written.get(namespace=narrowed).status == "dropped"
    assert version(cluster, narrowed) == "1"
    assert not Change.objects.filter(source=source, namespace=narrowed, commit=v2).exists(), (
        "a write outside the source's scope was applied"
    )
    assert not ApplyIntent.objects.filter(source=source, status="pending").exists()


def test_a_suspended_sources_decision_pass_says_which_cluster_refuses_its_writes(
    repo, namespace, make_source, kube_client, settings, monkeypatch
):
    """A pass that carries out decisions on a suspended source does not ask Git. When the cluster its
    rollout's step needs still refuses the writes left pending, the pass fails in the cluster's own
    words, and the source's last error says so; before, the worker's log alone said, wrongly, that the
    revision could not be read from the mirror."""
    from gitops import reconcile, schedule, source_admin
    from gitops.cluster import clients
    from gitops.models import Source

    monkeypatch.setattr(schedule, "_send", lambda *args, **kwargs: "")
    monkeypatch.setattr(clients, "recently_unreachable", lambda name: None)
    settings.SLUICE_CLUSTER_RETRY_SECONDS = 0
    commit_version(repo, namespace, "1")
    source = make_source()
    assert reconcile.source_sync(source.pk).outcome == "applied"
    commit_version(repo, namespace, "2")
    with writes_refused(kube_client(), [namespace]):
        reconcile.source_sync(source.pk)  # the step's write is left pending; the rollout waits
        source_admin.source_suspend(source)

        result = reconcile.source_sync(source.pk, rollouts_only=True, actor="otto")

    assert result.outcome == "failed", result
    assert any("failed calling webhook" in error for error in result.errors), result.errors
    assert "failed calling webhook" in Source.objects.get(pk=source.pk).last_error


def test_a_pending_write_refused_as_a_conflict_fails_its_step_rather_than_passing_it_over(
    repo, namespace, make_source, cluster, kube_client, settings, monkeypatch
):
    """A step's write was left pending (the cluster refused writes); meanwhile someone took the key by
    hand. The next pass finishes the write, which the cluster refuses as a conflict, and the step,
    taken again, fails on it as it would have at once: the rollout rolls back and says why. Before,
    the step left out a change once refused as a conflict (meant for a finished rollout's polls), so
    the rollout completed without it, the source showing no error."""
    from gitops import reconcile, schedule
    from gitops.cluster import clients
    from gitops.models import Rollout

    monkeypatch.setattr(schedule, "_send", lambda *args, **kwargs: "")
    monkeypatch.setattr(clients, "recently_unreachable", lambda name: None)
    settings.SLUICE_CLUSTER_RETRY_SECONDS = 0  # the step waiting for the cluster is taken at the next pass

    def commit(value: str) -> str:
        repo.write_all(
            {
                "sluice.yaml": policy([namespace], selfHeal=False),
                "configmaps/app.yaml": configmap("app", {"VERSION": value}),
            }
        )
        return repo.commit(f"v{value}")

    commit("1")
    source = make_source()
    assert reconcile.source_sync(source.pk).outcome == "applied"
    commit("2")
    with writes_refused(kube_client(), [namespace]):
        reconcile.source_sync(source.pk)
    edited = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app", "namespace": namespace}}
    cluster.apply_configmap({**edited, "data": {"VERSION": "hand"}}, field_manager="kubectl-edit", force=True)

    result = reconcile.source_sync(source.pk)

    rollout = Rollout.objects.filter(source=source).latest("pk")
    assert rollout.phase == "Failed", (rollout.phase, rollout.message)
    assert "conflict" in rollout.message
    assert result.outcome == "failed" and any("conflict" in error for error in result.errors), result
    assert version(cluster, namespace) == "hand", "never overwritten"
