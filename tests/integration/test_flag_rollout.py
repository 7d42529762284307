"""A flag rollout checked with both real flagd evaluators, reading what Sluice published to the cluster."""

from __future__ import annotations

import json

import pytest
from django.conf import settings

from gitops.models import Change, PublishedFlag, Rollout
from gitops.rollout import decisions
from tests.flagd import EVALUATORS, KEYS, evaluate_all
from tests.gitrepo import policy
from tests.rollouts import rollout_of, wait_for
from tests.workers import ARTIFACTS

pytestmark = pytest.mark.django_db(transaction=True)

OLD = {
    "flags": {
        "new-checkout": {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"},
        "banner": {
            "state": "ENABLED",
            "variants": {"blue": "blue", "green": "green"},
            "defaultVariant": "blue",
        },
        "untouched": {"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "b"},
    }
}
NEW = {
    "flags": {
        # The default flips, for everyone.
        "new-checkout": {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "on"},
        # Targeting arrives, with its own fractional split.
        "banner": {
            "state": "ENABLED",
            "variants": {"blue": "blue", "green": "green", "red": "red"},
            "defaultVariant": "blue",
            "targeting": {"fractional": [["green", 50], ["red", 50]]},
        },
        "untouched": {"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "b"},
    }
}
WEIGHTS = (10, 50, 90)
# The flags that change, with the code default each is read with.
CHANGED_DEFAULTS = {"new-checkout": False, "banner": ""}


def published(cluster, namespace: str) -> str:
    return cluster.get_configmap(namespace, "checkout")["data"]["checkout.flagd.json"]


def flags_applied(repo, make_source, sync, app: str, flags_ns: str, document: dict):
    """A source whose first commit, the flag set ``document``, is applied; the source."""
    repo.write_all(
        {
            "sluice.yaml": policy([app], flags={"namespace": flags_ns}),
            "flags/checkout.json": json.dumps(document),
        }
    )
    repo.commit("v1")
    source = make_source()
    assert sync(source)["outcome"] == "applied"
    return source


def commit_canary(repo, app: str, flags_ns: str, document: dict, *, weight: int) -> None:
    """Commits ``document`` with a rollout of one weighted step and a pause."""
    steps = [{"setWeight": weight}, {"pause": {}}]
    repo.write_all(
        {
            "sluice.yaml": policy([app], flags={"namespace": flags_ns}, rollout={"steps": steps}),
            "flags/checkout.json": json.dumps(document),
        }
    )
    repo.commit("v2")


@pytest.mark.parametrize("evaluator", sorted(EVALUATORS))
def test_flag_changes_reach_a_sticky_growing_share_of_users(
    evaluator, repo, make_namespaces, make_source, sync, cluster, people, tmp_path
):
    """Each evaluator on its own sees the intended share at every step, and nobody loses the new result;
    and both changed flags send the same users to their new side (one population per rollout)."""
    serve = EVALUATORS[evaluator]
    app, flags_ns = make_namespaces("app", "flags")
    repo.write_all(
        {"sluice.yaml": policy([app], flags={"namespace": flags_ns}), "flags/checkout.json": json.dumps(OLD)}
    )
    v1 = repo.commit("v1")
    source = make_source()
    assert sync(source)["outcome"] == "applied"

    steps = []
    for weight in WEIGHTS:
        steps += [{"setWeight": weight}, {"pause": {}}]
    repo.write_all(
        {
            "sluice.yaml": policy([app], flags={"namespace": flags_ns}, rollout={"steps": steps}),
            "flags/checkout.json": json.dumps(NEW),
        }
    )
    v2 = repo.commit("v2")

    old_results = evaluate_all(OLD, CHANGED_DEFAULTS, tmp_path, evaluator)
    new_results = evaluate_all(NEW, {**CHANGED_DEFAULTS, "untouched": ""}, tmp_path, evaluator)
    untouched = new_results.pop("untouched")
    differing = {
        flag: {k for k in KEYS if old_results[flag][k] != new_results[flag][k]} for flag in old_results
    }
    assert len(differing["new-checkout"]) == 10_000
    assert len(differing["banner"]) == 10_000  # new targeting sends every key to green or red

    sync(source)
    measured: list[str] = [f"{serve.version()}:"]
    previous: dict[str, set[str]] = {flag: set() for flag in old_results}
    for weight in WEIGHTS:
        paused = wait_for(source, phase="Paused", waiting_for="approval", weight=weight)
        document = published(cluster, flags_ns)
        assert paused.flag_population and f"sluice-canary/{paused.flag_population}/" in document
        served_now = serve(document, tmp_path)
        on_new_side: dict[str, set[str]] = {}
        try:
            # Every flag of the published document in one pass of the evaluator.
            served_values = served_now.values_of({**CHANGED_DEFAULTS, "untouched": ""})
            for flag in CHANGED_DEFAULTS:
                served = served_values[flag]
                for key in KEYS:
                    assert served[key] in (old_results[flag][key], new_results[flag][key]), (flag, key)
                got_new = {k for k in differing[flag] if served[k] == new_results[flag][k]}
                share = 100 * len(got_new) / len(differing[flag])
                measured.append(f"{flag} at {weight}%: {share:.2f}% of 10,000 keys got the new result")
                assert abs(share - weight) <= 2, f"{flag} at {weight}%: {share:.2f}% got the new result"
                assert previous[flag] <= got_new, f"{flag}: users who had the new result lost it at {weight}%"
                previous[flag] = got_new
                on_new_side[flag] = got_new
            assert served_values["untouched"] == untouched
            apart = on_new_side["new-checkout"] ^ on_new_side["banner"]
            assert not apart, (
                f"at {weight}%: {len(apart)} keys have one flag's new result and not the other's"
            )
        finally:
            served_now.close()
        decisions.rollout_promote(paused.pk, user=people["approver"])

    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"flag-rollout-shares-{evaluator}.txt").write_text("\n".join(measured) + "\n")
    done = wait_for(source, phase="Completed")
    assert done.weight == 100
    final = json.loads(published(cluster, flags_ns))
    assert final["flags"] == NEW["flags"], "at 100% the published flag set is exactly Git's"
    assert final["metadata"] == {"sluiceCommit": v2, "sluiceSource": source.name}
    served_now = serve(published(cluster, flags_ns), tmp_path)
    try:
        details = served_now.details("new-checkout", False)
        assert details.value is True
        assert details.flag_metadata["sluiceCommit"] == v2, "every evaluation names the commit it came from"
    finally:
        served_now.close()
    assert v1 != v2


def _split_key(document: dict, flag: str):
    return document["flags"][flag]["targeting"]["if"][0]["and"][1]["==="][0]["fractional"][0]


def test_a_rollout_without_a_population_splits_each_flag_on_its_own_key(
    repo, make_namespaces, make_source, sync, cluster, people
):
    """A rollout row from before migration 0023 (or inserted by a worker of the release before) has
    the column's database default, "": its steps publish each flag's own split, the key it began with,
    and no seed's."""
    app, flags_ns = make_namespaces("app", "flags")
    source = flags_applied(repo, make_source, sync, app, flags_ns, OLD)
    steps = [{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}]
    repo.write_all(
        {
            "sluice.yaml": policy([app], flags={"namespace": flags_ns}, rollout={"steps": steps}),
            "flags/checkout.json": json.dumps(NEW),
        }
    )
    repo.commit("v2")
    sync(source)
    paused = wait_for(source, phase="Paused", waiting_for="approval", weight=10)
    seeded = json.loads(published(cluster, flags_ns))
    assert {json.dumps(_split_key(seeded, flag)) for flag in CHANGED_DEFAULTS} == {
        json.dumps({"cat": [f"sluice-canary/{paused.flag_population}/", {"var": "targetingKey"}]})
    }
    Rollout.objects.filter(pk=paused.pk).update(flag_population="")

    decisions.rollout_promote(paused.pk, user=people["approver"])

    wait_for(source, phase="Paused", waiting_for="approval", weight=50)
    per_flag = json.loads(published(cluster, flags_ns))
    for flag in CHANGED_DEFAULTS:
        assert _split_key(per_flag, flag) == {
            "cat": ["sluice-canary/", {"var": "$flagd.flagKey"}, "/", {"var": "targetingKey"}]
        }


def test_a_canary_too_large_for_its_configmap_fails_the_pass_with_why_and_applies_nothing(
    repo, make_namespaces, make_source, sync, cluster
):
    """A computed targeting is repeated once per variant in a canary: 1,000 variants of a 2 KB rule
    once made a worker build 2 MB per side (a review measured 534 MB from a 99 KB flag) before the
    apiserver refused the ConfigMap. Now the pass says so first."""
    app, flags_ns = make_namespaces("app", "flags")
    variants = {f"v{i}": f"value {i}" for i in range(1000)}
    targeting = {"cat": [{"var": "plan"}, *(f"-{i}" for i in range(300))]}
    old = {
        "flags": {
            "big": {"state": "ENABLED", "variants": variants, "defaultVariant": "v0", "targeting": targeting}
        }
    }
    source = flags_applied(repo, make_source, sync, app, flags_ns, old)
    before = published(cluster, flags_ns)
    new = json.loads(json.dumps(old))
    new["flags"]["big"]["variants"]["v1"] = "changed"
    commit_canary(repo, app, flags_ns, new, weight=50)

    result = sync(source)

    assert result["outcome"] == "failed", result
    assert "flag 'big'" in result["errors"][0] and "more than a ConfigMap holds" in result["errors"][0]
    assert published(cluster, flags_ns) == before
    failed = rollout_of(source)
    assert failed.phase == "Failed" and "more than a ConfigMap holds" in failed.message

    # The fix the message asks for goes out, even under onNewRevision: queue. Before, the refused
    # rollout stayed Progressing, failing every pass, and the fix was queued behind it for good.
    rollout = {"steps": [{"setWeight": 100}], "onNewRevision": "queue"}
    repo.write("sluice.yaml", policy([app], flags={"namespace": flags_ns}, rollout=rollout))
    repo.commit("v3: at once")
    assert sync(source)["outcome"] == "applied"
    assert json.loads(published(cluster, flags_ns))["flags"]["big"]["variants"]["v1"] == "changed"


def test_a_canary_from_a_published_flag_set_sluice_cannot_read_fails_with_why_and_applies_nothing(
    repo, make_namespaces, make_source, sync, cluster
):
    """The published flag set is one this Sluice does not read (a fractional weight of 12.5): an
    earlier release published it under other rules, or a hand edit under Sluice's field manager. A
    canary from it once started from no flags: nine users in ten got the code's defaults for every flag
    of the set. Now the pass says why, and publishes nothing."""
    app, flags_ns = make_namespaces("app", "flags")
    source = flags_applied(repo, make_source, sync, app, flags_ns, OLD)
    edited = json.loads(published(cluster, flags_ns))
    edited["flags"]["banner"]["targeting"] = {"fractional": [["blue", 12.5], ["green", 87.5]]}
    live = cluster.get_configmap(flags_ns, "checkout")
    data = {**live["data"], "checkout.flagd.json": json.dumps(edited)}
    # Still the source's: its labels and annotations kept (without them it is taken over, a conflict).
    kept = {key: live["metadata"].get(key) or {} for key in ("labels", "annotations")}
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "checkout", "namespace": flags_ns, **kept},
    }
    cluster.apply_configmap({**manifest, "data": data}, field_manager=settings.SLUICE_FIELD_MANAGER)
    before = published(cluster, flags_ns)
    commit_canary(repo, app, flags_ns, NEW, weight=10)

    result = sync(source)

    assert result["outcome"] == "failed", result
    assert f"published as {flags_ns}/checkout" in result["errors"][0], result["errors"]
    assert "setWeight 100" in result["errors"][0]
    assert published(cluster, flags_ns) == before
    assert rollout_of(source).phase == "Failed"


def test_a_flag_folded_from_a_dropped_flag_set_into_a_kept_one_switches_at_100_only(
    repo, make_namespaces, make_source, sync, cluster, people
):
    """A commit deletes flags/a.json and adds its flag to flags/b.json. a.json is pruned only at 100, so
    flagd serves its old definition to everyone until then; b.json's canary split the flag against "no
    flag", and whichever file flagd read last decided the flag for every user. Now b.json leaves the
    flag out until 100, as for a flag moving between two kept sets."""
    app, flags_ns = make_namespaces("app", "flags")
    theme = {"state": "ENABLED", "variants": {"light": "#fff", "dark": "#000"}, "defaultVariant": "light"}
    other = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}
    repo.write_all(
        {
            "sluice.yaml": policy([app], flags={"namespace": flags_ns}, prune=True),
            "flags/a.json": json.dumps({"flags": {"theme": theme}}),
            "flags/b.json": json.dumps({"flags": {"other": other}}),
        }
    )
    repo.commit("v1")
    source = make_source()
    assert sync(source)["outcome"] == "applied"
    steps = [{"setWeight": 10}, {"pause": {}}]
    repo.remove("flags/a.json")
    dark = {**theme, "defaultVariant": "dark"}
    repo.write_all(
        {
            "sluice.yaml": policy([app], flags={"namespace": flags_ns}, prune=True, rollout={"steps": steps}),
            "flags/b.json": json.dumps({"flags": {"other": other, "theme": dark}}),
        }
    )
    repo.commit("fold a.json into b.json")

    assert sync(source)["outcome"] == "paused"

    def document(name: str) -> dict:
        return json.loads(cluster.get_configmap(flags_ns, name)["data"][f"{name}.flagd.json"])

    assert document("a")["flags"]["theme"] == theme, "a.json, pruned at 100, serves the old theme to all"
    assert "theme" not in document("b")["flags"], "b.json adds it at 100, not split against no flag"

    decisions.rollout_promote(Rollout.objects.get(source=source, phase="Paused").pk, user=people["approver"])
    wait_for(source, phase="Completed")
    assert cluster.get_configmap(flags_ns, "a") is None, "pruned at 100"
    assert document("b")["flags"]["theme"] == dark


def test_a_canary_of_a_configmap_leaves_an_unchanged_flag_set_as_it_is(
    repo, make_namespaces, make_source, sync, cluster
):
    """A commit that changes a ConfigMap splits no flag: the flag set stays as published, unwritten, at
    every step. Before, each step stamped its weight into the flag set, rewriting it in every cluster
    and restarting whatever reads it (flagd itself) for a ConfigMap's change."""
    from tests.gitrepo import configmap

    app, flags_ns = make_namespaces("app", "flags")
    source = flags_applied(repo, make_source, sync, app, flags_ns, OLD)
    before = cluster.get_configmap(flags_ns, "checkout")
    steps = [{"setWeight": 50}, {"pause": {}}]
    repo.write_all(
        {
            "sluice.yaml": policy([app], flags={"namespace": flags_ns}, rollout={"steps": steps}),
            "configmaps/app.yaml": configmap("app", {"V": "2"}),
        }
    )
    repo.commit("v2: a ConfigMap")

    sync(source)

    wait_for(source, phase="Paused", waiting_for="approval", weight=50)
    after = cluster.get_configmap(flags_ns, "checkout")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], "not written"
    assert cluster.get_configmap(app, "app")["data"] == {"V": "2"}
    assert not Change.objects.filter(source=source, namespace=flags_ns, commit=repo.head()).exists()


def test_a_flag_set_someone_else_publishes_is_a_conflict_not_a_canarys_old_side(
    repo, make_namespaces, make_source, sync, cluster, core_api
):
    """A ConfigMap of the flag set's name that is not the source's (made by hand, here holding "{}") is
    reported as a conflict and never written. Read as the canary's old side, it failed every weighted
    rollout of the source ("restore it"), over an object that is not the source's to restore."""
    from tests.gitrepo import configmap

    app, flags_ns = make_namespaces("app", "flags")
    core_api.create_namespaced_config_map(
        flags_ns, {"metadata": {"name": "checkout"}, "data": {"checkout.flagd.json": "{}"}}
    )
    repo.write_all(
        {
            "sluice.yaml": policy([app], flags={"namespace": flags_ns}),
            "flags/checkout.json": json.dumps(OLD),
            "configmaps/app.yaml": configmap("app", {"V": "1"}),
        }
    )
    repo.commit("v1")
    source = make_source()
    sync(source)
    steps = [{"setWeight": 50}, {"pause": {}}]
    repo.write_all(
        {
            "sluice.yaml": policy([app], flags={"namespace": flags_ns}, rollout={"steps": steps}),
            "configmaps/app.yaml": configmap("app", {"V": "2"}),
        }
    )
    repo.commit("v2")

    result = sync(source)

    assert result["outcome"] == "paused", result
    assert result["summary"].get("conflict") == 1, result
    assert cluster.get_configmap(flags_ns, "checkout")["data"] == {"checkout.flagd.json": "{}"}
    assert cluster.get_configmap(app, "app")["data"] == {"V": "2"}
    # Nor is it listed as the source's on the Flags page: flagd serves the other one's flags there.
    assert not PublishedFlag.objects.filter(source=source).exists()


def test_a_healed_flag_set_carries_the_commit_the_source_applied_inside_it_too(
    repo, make_namespaces, make_source, sync, cluster
):
    """Whoever drifted a flag set also rewrote its commit, in the annotation and in the document's
    sluiceCommit: the heal stamped the inventory's commit on the annotation and left the forged one in
    the document, which flagd served with every evaluation, and the two disagreeing, healed again."""
    app, flags_ns = make_namespaces("app", "flags")
    repo.write_all(
        {
            "sluice.yaml": policy([app], flags={"namespace": flags_ns}, selfHeal=True),
            "flags/checkout.json": json.dumps(OLD),
        }
    )
    v1 = repo.commit("v1")
    source = make_source()
    assert sync(source)["outcome"] == "applied"
    forged = "f" * 40
    edited = json.loads(published(cluster, flags_ns))
    edited["metadata"]["sluiceCommit"] = forged
    edited["flags"]["added-by-hand"] = {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on"}
    live = cluster.get_configmap(flags_ns, "checkout")
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "checkout", "namespace": flags_ns, "annotations": {"sluice.dev/commit": forged}},
        "data": {**live["data"], "checkout.flagd.json": json.dumps(edited)},
    }
    cluster.apply_configmap(manifest, field_manager="kubectl-edit", force=True)

    assert sync(source)["summary"] == {"self-heal": 1}

    healed = json.loads(published(cluster, flags_ns))
    assert healed["metadata"]["sluiceCommit"] == v1 and "added-by-hand" not in healed["flags"]
    assert cluster.get_configmap(flags_ns, "checkout")["metadata"]["annotations"]["sluice.dev/commit"] == v1
    assert sync(source)["outcome"] == "unchanged", "healed once"
