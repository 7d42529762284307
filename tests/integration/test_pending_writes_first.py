"""A step tried again and again while its cluster answers reads but refuses writes: the intent the first
try left pending is finished before the object is planned again, so the change is applied and logged
once when the cluster takes writes again."""

from __future__ import annotations

import pytest

from gitops.models import ApplyIntent, Change
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
    repo, namespace, make_source, cluster, settings, monkeypatch
):
    """Every pass outlasts the few seconds a process leaves a cluster that failed alone
    (``clients.recently_unreachable``: a slow fetch or validation), so each try reads the cluster again.
    Before, each try wrote one more pending intent for the object, and the cluster's recovery applied
    them all side by side, logging one change once per try. The cluster's refusal is the one part
    stood in for: an apiserver answering 503 to writes only (a failing admission webhook, say)."""
    from gitops import reconcile, schedule
    from gitops.cluster import apply, clients
    from gitops.errors import TemporaryError

    # Every pass runs here: a wake sent to a worker would apply there, where writes are not refused.
    monkeypatch.setattr(schedule, "_send", lambda *args, **kwargs: "")
    settings.SLUICE_CLUSTER_RETRY_SECONDS = 0  # the step waiting for the cluster is taken at each pass
    commit_version(repo, namespace, "1")
    source = make_source()
    assert reconcile.source_sync(source.pk).outcome == "applied"
    v2 = commit_version(repo, namespace, "2")

    def refuse_writes(client, intents, **kwargs):
        raise TemporaryError("kube-apiserver answered 503 Service Unavailable")

    real_apply = apply.intents_apply
    monkeypatch.setattr(apply, "intents_apply", refuse_writes)
    monkeypatch.setattr(clients, "recently_unreachable", lambda name: None)
    first = reconcile.source_sync(source.pk)
    assert first.rollout is not None and "503 Service Unavailable" in str(first.rollout), first.rollout
    for _ in range(TRIES - 1):
        # The pending write is tried first and refused again: its cluster, the only one, counts as one
        # that does not answer, and the pass fails (and backs off) with the cluster's own words.
        with pytest.raises(TemporaryError, match="503 Service Unavailable"):
            reconcile.source_sync(source.pk)

    intents = ApplyIntent.objects.filter(source=source, namespace=namespace, name="app", commit=v2)
    assert version(cluster, namespace) == "1"
    assert list(intents.values_list("status", flat=True)) == ["pending"], "one intent, however many tries"

    monkeypatch.setattr(apply, "intents_apply", real_apply)  # the cluster takes writes again
    result = reconcile.source_sync(source.pk)

    assert version(cluster, namespace) == "2"
    assert result.summary.get("resumed") == 1, result.summary
    logged = Change.objects.filter(source=source, namespace=namespace, name="app", commit=v2)
    assert logged.count() == 1, "one change, logged once however many times the step was tried"
    assert logged.get().intent_id == intents.get().pk
    assert not ApplyIntent.objects.filter(source=source, status="pending").exists()
    assert reconcile.source_sync(source.pk).outcome in ("unchanged", "completed")
