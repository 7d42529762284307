"""A flag set the commit leaves as it is, edited by hand while its rollout is paused, on a real apiserver.

Each step read such a set's old side from the cluster again, so the edit became the next step's old side:
the step split the set between the edit and Git's flags and wrote that over the edit. Without selfHeal the
apiserver refused the write (kubectl-edit holds the key) and the rollout failed, for a set its commit does
not change; with selfHeal the users outside the canary got the hand-made flags from the rollout, and the
write's ``before`` pinned the edit as the set's old side for the rest of it. Now the edit is drift: left
alone and reported without selfHeal, healed for every user with it, as at any pass (``step.baselines_of``).
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import pytest

from gitops.models import Rollout, Source
from gitops.rollout import decisions
from tests.flagd import evaluate_all
from tests.gitrepo import policy
from tests.rollouts import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def boolean(default: str) -> dict[str, Any]:
    return {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": default}


CHECKOUT_V1 = {"flags": {"new-checkout": boolean("off")}}
CHECKOUT_V2 = {"flags": {"new-checkout": boolean("on")}}
# The set no commit here changes, and what someone makes of it by hand between two steps.
OTHER = {"flags": {"dark-mode": boolean("off"), "beta": boolean("off")}}
EDITED = {"flags": {"dark-mode": boolean("on"), "beta": boolean("off"), "by-hand": boolean("on")}}


def published(cluster, namespace: str, name: str) -> str:
    return cluster.get_configmap(namespace, name)["data"][f"{name}.flagd.json"]


def version_of(cluster, namespace: str, name: str) -> str:
    return cluster.get_configmap(namespace, name)["metadata"]["resourceVersion"]


def commit(repo, app: str, flags_ns: str, checkout: dict, *, steps: list | None = None, **extra) -> str:
    rollout = {"rollout": {"steps": steps}} if steps else {}
    repo.write_all(
        {
            "sluice.yaml": policy([app], flags={"namespace": flags_ns}, **rollout, **extra),
            "flags/checkout.json": json.dumps(checkout),
            "flags/other.json": json.dumps(OTHER),
        }
    )
    return repo.commit("flags")


def edit_by_hand(cluster, namespace: str) -> str:
    """``kubectl edit`` of other's document (its Sluice stamps kept, labels and annotations untouched);
    the version the apiserver stored."""
    key = "other.flagd.json"
    stamps = json.loads(published(cluster, namespace, "other"))["metadata"]
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "other", "namespace": namespace},
        "data": {key: json.dumps({**EDITED, "metadata": stamps})},
    }
    stored = cluster.apply_configmap(manifest, field_manager="kubectl-edit", force=True)
    return str(stored["metadata"]["resourceVersion"])


class Started(NamedTuple):
    source: Source
    paused: Rollout
    flags_ns: str
    checkout_v1: str  # checkout's ConfigMap text as v1 published it
    edited: str  # other's version once edited by hand


def started_and_edited(repo, make_namespaces, make_source, sync, cluster, steps: list, **extra) -> Started:
    """v1 applied; v2 (checkout.json changed, other.json not) paused at its first weight; then other
    edited by hand."""
    app, flags_ns = make_namespaces("app", "flags")
    commit(repo, app, flags_ns, CHECKOUT_V1, **extra)
    source = make_source()
    assert sync(source)["outcome"] == "applied"
    checkout_v1 = published(cluster, flags_ns, "checkout")
    commit(repo, app, flags_ns, CHECKOUT_V2, steps=steps, **extra)
    assert sync(source)["outcome"] == "paused"
    paused = wait_for(source, phase="Paused", waiting_for="approval", weight=10)
    return Started(source, paused, flags_ns, checkout_v1, edit_by_hand(cluster, flags_ns))


def test_without_self_heal_the_edit_is_drift_left_alone_and_the_rollout_goes_on(
    repo, make_namespaces, make_source, sync, cluster, people
):
    """Before, the step at 50 wrote a canary of the edit over it, which the apiserver refused: the
    rollout failed and rolled back. An abort leaves the edit as it is too: the rollout never wrote it."""
    steps = [{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}]
    source, paused, flags_ns, checkout_v1, edited = started_and_edited(
        repo, make_namespaces, make_source, sync, cluster, steps
    )

    decisions.rollout_promote(paused.pk, user=people["approver"])

    wait_for(source, of=paused, phase="Paused", waiting_for="approval", weight=50)
    assert version_of(cluster, flags_ns, "other") == edited, "the edit is not written over"
    assert json.loads(published(cluster, flags_ns, "other"))["flags"] == EDITED["flags"]
    assert "sluice-canary/" in published(cluster, flags_ns, "checkout")
    assert not paused.intents.filter(name="other").exists()
    assert Source.objects.get(pk=source.pk).last_plan["summary"].get("drift") == 1, "reported"

    decisions.rollout_abort(paused.pk, user=people["approver"])

    wait_for(source, of=paused, phase="Aborted")
    assert published(cluster, flags_ns, "checkout") == checkout_v1
    assert version_of(cluster, flags_ns, "other") == edited, "nothing of the rollout's to take back"


def test_with_self_heal_every_user_gets_gits_flags_back_at_the_next_step_and_no_split_after(
    repo, make_namespaces, make_source, sync, cluster, people, tmp_path
):
    """Before, the step at 50 published a canary of other whose old side was the edit: half the users
    got dark-mode on and a by-hand flag from the rollout itself, and so on at every later step. Checked
    with a real flagd evaluator over 10,000 targeting keys."""
    steps = [{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}]
    steps += [{"setWeight": 90}, {"pause": {}}]
    source, paused, flags_ns, _, _ = started_and_edited(
        repo, make_namespaces, make_source, sync, cluster, steps, selfHeal=True
    )

    decisions.rollout_promote(paused.pk, user=people["approver"])

    wait_for(source, of=paused, phase="Paused", waiting_for="approval", weight=50)
    # dark-mode is on in the edit and off in Git's set; by-hand is on in the edit, absent from Git's (the
    # code default): one user served the edit shows.
    defaults = {"dark-mode": True, "by-hand": False}
    served = evaluate_all(published(cluster, flags_ns, "other"), defaults, tmp_path)
    assert set(served["dark-mode"].values()) == {False}, "Git's dark-mode for every user"
    assert set(served["by-hand"].values()) == {False}, "the hand-made flag for nobody (the code default)"
    assert json.loads(published(cluster, flags_ns, "other"))["flags"] == OTHER["flags"]
    assert list(paused.intents.filter(name="other").values_list("action", flat=True)) == ["self-heal"]
    healed = version_of(cluster, flags_ns, "other")

    decisions.rollout_promote(paused.pk, user=people["approver"])

    wait_for(source, of=paused, phase="Paused", waiting_for="approval", weight=90)
    # The heal's ``before`` (the edit) is not the set's old side: a split of it would be written here.
    assert version_of(cluster, flags_ns, "other") == healed, "not written again"
    assert paused.intents.filter(name="other").count() == 1
    assert "sluice-canary/" in published(cluster, flags_ns, "checkout")
