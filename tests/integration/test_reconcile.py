"""Git -> validated desired state -> key-level diff -> server-side apply -> change log, on the real stack."""

from __future__ import annotations

import base64
import json

import pytest

from gitops import selectors
from gitops.models import ApplyIntent, Change, ManagedObject, Revision, Source
from tests.gitrepo import configmap, policy
from tests.workers import poll

pytestmark = pytest.mark.django_db(transaction=True)

NGINX_CONF = """server {
    listen 8080;
    location / {
        proxy_pass http://app:9000;
    }
}
"""

FLAGS = {
    "flags": {
        "new-checkout": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
        }
    }
}


def managed(cluster, namespace: str, name: str) -> dict:
    live = cluster.get_configmap(namespace, name)
    assert live is not None, f"{namespace}/{name} is missing"
    return live


def test_a_revision_is_applied_with_provenance_and_logged_with_its_commit(
    repo, make_namespaces, make_source, sync, cluster
):
    canary, team_a, flags_ns = make_namespaces("canary", "team-a", "flags")
    repo.write_all(
        {
            "sluice.yaml": policy([canary, team_a], flags={"namespace": flags_ns}),
            "configmaps/nginx.yaml": configmap("nginx", {"nginx.conf": NGINX_CONF}),
            "configmaps/only-canary.yaml": configmap("probe", {"enabled": "true"}, namespace=canary),
            "flags/checkout.json": json.dumps(FLAGS),
            "README.md": "ignored",
        }
    )
    first = repo.commit("initial config")
    source = make_source()

    result = sync(source)

    assert result["outcome"] == "applied", result
    assert result["summary"] == {"create": 4}
    for namespace in (canary, team_a):
        live = managed(cluster, namespace, "nginx")
        assert live["data"] == {"nginx.conf": NGINX_CONF}
        assert live["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "sluice"
        assert live["metadata"]["labels"]["sluice.dev/source"] == source.name
        assert live["metadata"]["annotations"]["sluice.dev/commit"] == first
        assert any(e["manager"] == "sluice" for e in live["metadata"]["managedFields"])
    assert managed(cluster, canary, "probe")["data"] == {"enabled": "true"}
    assert cluster.get_configmap(team_a, "probe") is None

    flag_set = json.loads(managed(cluster, flags_ns, "checkout")["data"]["checkout.flagd.json"])
    assert flag_set["flags"] == FLAGS["flags"]
    assert flag_set["metadata"]["sluiceCommit"] == first

    changes = list(Change.objects.filter(source=source).order_by("namespace", "name"))
    assert len(changes) == 4
    assert {(c.namespace, c.name, c.action, c.commit, c.actor, c.result) for c in changes} == {
        (canary, "nginx", "create", first, "sluice", "ok"),
        (team_a, "nginx", "create", first, "sluice", "ok"),
        (canary, "probe", "create", first, "sluice", "ok"),
        (flags_ns, "checkout", "create", first, "sluice", "ok"),
    }
    assert Revision.objects.get(source=source, commit=first).outcome == "applied"

    # Nothing changed: nothing is applied or logged.
    assert sync(source)["outcome"] == "unchanged"
    assert Change.objects.filter(source=source).count() == 4

    # One key changes: only that object is updated, key by key, and only its commit annotation moves.
    repo.write(
        "configmaps/nginx.yaml", configmap("nginx", {"nginx.conf": NGINX_CONF.replace("8080", "8081")})
    )
    second = repo.commit("listen on 8081")
    result = sync(source)
    assert result["summary"] == {"update": 2, "unchanged": 2}
    assert managed(cluster, team_a, "nginx")["metadata"]["annotations"]["sluice.dev/commit"] == second
    assert managed(cluster, canary, "probe")["metadata"]["annotations"]["sluice.dev/commit"] == first
    assert (
        json.loads(managed(cluster, flags_ns, "checkout")["data"]["checkout.flagd.json"])["metadata"][
            "sluiceCommit"
        ]
        == first
    ), "an unchanged flag set keeps the commit its content came from"
    update = Change.objects.get(source=source, commit=second, namespace=team_a)
    assert update.action == "update"
    assert [(d["op"], d["field"], d["key"]) for d in update.diff] == [("change", "data", "nginx.conf")]
    assert "-    listen 8080;" in update.diff[0]["unified"]
    assert "+    listen 8081;" in update.diff[0]["unified"]
    # A created object's added keys are stored without their text, which is shown all the same.
    created = Change.objects.get(source=source, commit=first, namespace=team_a, name="nginx")
    assert [entry.get("unified") for entry in created.diff if entry["key"] == "nginx.conf"] == [None]
    (shown,) = [entry for entry in selectors.change_as_dict(created)["diff"] if entry["key"] == "nginx.conf"]
    assert "+    listen 8080;" in shown["unified"]
    assert update.before["data"]["nginx.conf"] == NGINX_CONF


def _good_repo(repo, canary: str, team: str) -> None:
    repo.write_all(
        {
            "sluice.yaml": policy([canary, team], allowedNamespaces=[canary, team]),
            "configmaps/app.yaml": configmap("app", {"LOG_LEVEL": "info"}),
        }
    )


BAD_INPUTS = {
    "yaml syntax": (
        {"configmaps/broken.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [oops\n"},
        "configmaps/broken.yaml:5: YAML syntax error",
    ),
    "a secret": (
        {"configmaps/secret.yaml": {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}}},
        "configmaps/secret.yaml:2: kind: Secrets are never managed by Sluice",
    ),
    "a deployment": (
        {
            "configmaps/deploy.yaml": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "x"},
            }
        },
        "configmaps/deploy.yaml:2: kind: only v1 ConfigMap documents are allowed here, found apps/v1 Deploy",
    ),
    "defined twice": (
        {"configmaps/again.yaml": configmap("app", {"LOG_LEVEL": "debug"})},
        "is already defined in configmaps/again.yaml",
    ),
    "invalid name": (
        {"configmaps/bad-name.yaml": configmap("Bad_Name", {"a": "b"})},
        "configmaps/bad-name.yaml:4: metadata.name: 'Bad_Name' is not a valid object name",
    ),
    "invalid data key": (
        {"configmaps/bad-key.yaml": configmap("bad-key", {"no spaces": "b"})},
        "configmaps/bad-key.yaml:6: data[\"no spaces\"]: 'no spaces' is not a valid key",
    ),
    "non-string value": (
        {
            "configmaps/number.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: number\n"
            "data:\n  replicas: 3\n"
        },
        'configmaps/number.yaml:6: data.replicas: value must be a string, not a number; quote it: "3"',
    ),
    "invalid base64": (
        {"configmaps/bin.yaml": configmap("bin", binaryData={"logo.png": "not base64!"})},
        'configmaps/bin.yaml:6: binaryData["logo.png"]: value is not valid base64',
    ),
    "over 1 MiB": (
        {"configmaps/huge.yaml": configmap("huge", {"blob": "x" * (1024 * 1024)})},
        "a ConfigMap holds at most 1048576",
    ),
    "namespace not allowed": (
        {"configmaps/elsewhere.yaml": configmap("x", {"a": "b"}, namespace="kube-system")},
        "configmaps/elsewhere.yaml:1: metadata.namespace: namespace 'kube-system' is not allowed by",
    ),
    "unknown policy field": (
        {"sluice.yaml": {"targets": {"namespaces": ["default"]}, "selfHeel": True}},
        "sluice.yaml:4: selfHeel: unknown field 'selfHeel'; did you mean 'selfHeal'?",
    ),
    "flag default variant missing": (
        {
            "flags/bad.json": json.dumps(
                {"flags": {"f": {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "blue"}}}
            )
        },
        "flags/bad.json:1: flags.f.defaultVariant",
    ),
    "flag fractional variant missing": (
        {
            "flags/frac.yaml": {
                "flags": {
                    "color": {
                        "state": "ENABLED",
                        "variants": {"red": "red", "blue": "blue"},
                        "defaultVariant": "red",
                        "targeting": {"fractional": [["red", 50], ["green", 50]]},
                    }
                }
            }
        },
        "flags/frac.yaml",
    ),
    "flag mixed variant types": (
        {
            "flags/mixed.yaml": {
                "flags": {
                    "m": {"state": "ENABLED", "variants": {"a": True, "b": "yes"}, "defaultVariant": "a"}
                }
            }
        },
        "flags/mixed.yaml",
    ),
    "flag non-integer weight": (
        {
            "flags/weights.yaml": {
                "flags": {
                    "w": {
                        "state": "ENABLED",
                        "variants": {"a": "a", "b": "b"},
                        "defaultVariant": "a",
                        "targeting": {"fractional": [["a", 12.5], ["b", 87.5]]},
                    }
                }
            }
        },
        "flags/weights.yaml",
    ),
    "flag key twice": (
        {
            "flags/twice.json": '{"flags": {\n'
            '"f": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"},\n'
            '"f": {"state": "DISABLED", "variants": {"on": true}, "defaultVariant": "on"}}}'
        },
        "flags/twice.json:3: flags.f: duplicate key 'f'",
    ),
}


@pytest.mark.parametrize("files, expected", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_a_bad_revision_is_rejected_whole_and_applies_nothing(
    files, expected, repo, make_namespaces, make_source, sync, cluster
):
    canary, team = make_namespaces("canary", "team")
    _good_repo(repo, canary, team)
    good = repo.commit("good")
    source = make_source()
    assert sync(source)["outcome"] == "applied"
    before = {ns: cluster.list_configmaps(ns) for ns in (canary, team)}

    # The bad commit also carries a valid change, which must not go out either.
    repo.write("configmaps/app.yaml", configmap("app", {"LOG_LEVEL": "debug"}))
    repo.write_all(files)
    bad = repo.commit("bad")
    result = sync(source)

    assert result["outcome"] == "rejected"
    assert result["commit"] == bad
    assert any(expected in error for error in result["errors"]), result["errors"]
    after = {ns: cluster.list_configmaps(ns) for ns in (canary, team)}
    assert after == before, "a rejected revision must leave the cluster untouched"
    assert not Change.objects.filter(commit=bad).exists()
    revision = Revision.objects.get(source=source, commit=bad)
    assert revision.outcome == "rejected"
    assert revision.errors
    assert managed(cluster, canary, "app")["metadata"]["annotations"]["sluice.dev/commit"] == good


def _drift_setup(repo, make_namespaces, make_source, sync, *, self_heal: bool):
    (namespace,) = make_namespaces("app")
    repo.write_all(
        {
            "sluice.yaml": policy([namespace], selfHeal=self_heal),
            "configmaps/app.yaml": configmap("app", {"LOG_LEVEL": "info", "MODE": "safe"}),
        }
    )
    repo.commit()
    source = make_source()
    assert sync(source)["outcome"] == "applied"
    return namespace, source


def _edit_in_cluster(cluster, namespace: str) -> None:
    # Someone runs `kubectl edit` or `kubectl apply` with their own field manager.
    edited = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "app", "namespace": namespace},
        "data": {"LOG_LEVEL": "debug", "EXTRA": "added by hand"},
    }
    cluster.apply_configmap(edited, field_manager="kubectl-edit", force=True)


def test_drift_is_healed_and_logged_when_self_heal_is_on(repo, make_namespaces, make_source, sync, cluster):
    namespace, source = _drift_setup(repo, make_namespaces, make_source, sync, self_heal=True)
    commit = repo.head()
    _edit_in_cluster(cluster, namespace)

    result = sync(source)

    assert result["outcome"] == "applied"
    assert result["summary"] == {"self-heal": 1}
    live = managed(cluster, namespace, "app")
    assert live["data"] == {"LOG_LEVEL": "info", "MODE": "safe"}
    assert live["metadata"]["annotations"]["sluice.dev/commit"] == commit
    heal = Change.objects.get(source=source, action="self-heal")
    assert heal.commit == commit
    assert {(d["op"], d["key"]) for d in heal.diff} == {("change", "LOG_LEVEL"), ("remove", "EXTRA")}
    assert heal.before["data"]["EXTRA"] == "added by hand"
    assert sync(source)["outcome"] == "unchanged"


def test_a_heal_keeps_the_commit_the_source_applied_not_one_forged_on_the_object(
    repo, make_namespaces, make_source, sync, cluster
):
    """Whoever drifted the object rewrote its sluice.dev/commit to a well-formed hash Sluice never
    applied: the heal stamped it back, logged it and put it in the inventory. Now the commit is the one
    the inventory recorded."""
    from gitops.models import ManagedObject

    namespace, source = _drift_setup(repo, make_namespaces, make_source, sync, self_heal=True)
    commit = repo.head()
    forged = "f" * 40
    edited = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "app", "namespace": namespace, "annotations": {"sluice.dev/commit": forged}},
        "data": {"LOG_LEVEL": "debug", "MODE": "safe"},
    }
    cluster.apply_configmap(edited, field_manager="kubectl-edit", force=True)

    result = sync(source)

    assert result["summary"] == {"self-heal": 1}, result
    heal = Change.objects.get(source=source, action="self-heal")
    assert heal.commit == commit
    assert managed(cluster, namespace, "app")["metadata"]["annotations"]["sluice.dev/commit"] == commit
    assert ManagedObject.objects.get(source=source, name="app").commit == commit


@pytest.mark.parametrize(
    "labels",
    [
        {"sluice.dev/source": None, "app.kubernetes.io/managed-by": None},
        {"sluice.dev/source": "someone-else"},
    ],
    ids=["labels-removed", "another-source"],
)
def test_an_object_taken_over_and_then_dropped_from_git_leaves_the_inventory_and_the_cluster_alone(
    repo, make_namespaces, make_source, sync, cluster, core_api, labels
):
    """Removing Sluice's labels is the documented way to keep an object. Once Git drops it too, the
    source's inventory still held it: read at every pass and never reported. Now the pass forgets it,
    and prune leaves it where it is."""
    (namespace,) = make_namespaces("app")
    repo.write_all(
        {
            "sluice.yaml": policy([namespace], prune=True),
            "configmaps/app.yaml": configmap("app", {"V": "1"}),
            "configmaps/kept.yaml": configmap("kept", {"V": "1"}),
        }
    )
    repo.commit("v1")
    source = make_source()
    assert sync(source)["outcome"] == "applied"
    core_api.patch_namespaced_config_map("kept", namespace, {"metadata": {"labels": labels}})
    repo.remove("configmaps/kept.yaml")
    repo.commit("v2: kept is someone else's")

    assert sync(source)["summary"] == {"unchanged": 1, "released": 1}

    assert cluster.get_configmap(namespace, "kept")["data"] == {"V": "1"}, "taken over: not pruned"
    assert not ManagedObject.objects.filter(source=source, name="kept").exists()
    assert ManagedObject.objects.filter(source=source, name="app").exists()
    assert sync(source)["outcome"] == "unchanged"


def test_a_key_moved_by_hand_between_data_and_binary_data_is_healed_back(
    repo, make_namespaces, make_source, sync, cluster
):
    """The apiserver refuses an object holding a key in both data and binaryData: a heal's apply of a key
    someone moved to binaryData was refused at every pass, and the object never came back to Git's."""
    namespace, source = _drift_setup(repo, make_namespaces, make_source, sync, self_heal=True)
    moved = {"data": {"MODE": None}, "binaryData": {"MODE": base64.b64encode(b"safe").decode()}}
    cluster.merge_configmap_keys(
        namespace, "app", data=moved["data"], binary_data=moved["binaryData"], field_manager="kubectl-edit"
    )
    assert "MODE" not in managed(cluster, namespace, "app")["data"]

    result = sync(source)

    assert (result["outcome"], result["summary"], result["errors"]) == ("applied", {"self-heal": 1}, [])
    live = managed(cluster, namespace, "app")
    assert live["data"] == {"LOG_LEVEL": "info", "MODE": "safe"}
    assert not live.get("binaryData")
    assert sync(source)["outcome"] == "unchanged", "nothing left to heal"
    # Sluice is the key's one owner again: a later change to it, selfHeal off, is no conflict with itself.
    owners = [entry["manager"] for entry in live["metadata"]["managedFields"] if "MODE" in json.dumps(entry)]
    assert owners == ["sluice"], live["metadata"]["managedFields"]
    repo.write_all(
        {
            "sluice.yaml": policy([namespace], selfHeal=False),
            "configmaps/app.yaml": configmap("app", {"LOG_LEVEL": "info", "MODE": "fast"}),
        }
    )
    repo.commit("fast")
    assert (sync(source)["outcome"], managed(cluster, namespace, "app")["data"]["MODE"]) == (
        "applied",
        "fast",
    )


def test_without_self_heal_a_git_change_to_an_object_with_a_key_moved_by_hand_is_refused_saying_why(
    repo, make_namespaces, make_source, sync, cluster
):
    """selfHeal off leaves edits made in the cluster alone, and the apiserver refuses an object holding a
    key in both data and binaryData: the change is refused naming the key and what to do, not with the
    apiserver's 422, and nothing is sent."""
    namespace, source = _drift_setup(repo, make_namespaces, make_source, sync, self_heal=False)
    moved = base64.b64encode(b"safe").decode()
    cluster.merge_configmap_keys(
        namespace, "app", data={"MODE": None}, binary_data={"MODE": moved}, field_manager="kubectl-edit"
    )
    version = managed(cluster, namespace, "app")["metadata"]["resourceVersion"]
    repo.write("configmaps/app.yaml", configmap("app", {"LOG_LEVEL": "warn", "MODE": "safe"}))
    repo.commit("warn")

    result = sync(source)

    assert result["outcome"] == "failed", result
    (error,) = result["errors"]
    assert "'MODE' is in binaryData in the cluster, held there by another field manager" in error, error
    assert "selfHeal" in error
    assert managed(cluster, namespace, "app")["metadata"]["resourceVersion"] == version, "nothing was sent"


def test_an_update_forced_over_edits_in_the_cluster_removes_the_keys_added_by_hand_as_its_log_says(
    repo, make_namespaces, make_source, sync, cluster
):
    """With selfHeal on, a Git change to an object edited in the cluster is one forced update whose diff
    removes the key added by hand: it stayed (apply leaves another manager's keys), the change log said
    it went, and the next pass healed it in a second write."""
    namespace, source = _drift_setup(repo, make_namespaces, make_source, sync, self_heal=True)
    _edit_in_cluster(cluster, namespace)
    repo.write("configmaps/app.yaml", configmap("app", {"LOG_LEVEL": "warn", "MODE": "safe"}))
    commit = repo.commit("warn")

    result = sync(source)

    assert result["summary"] == {"update": 1}, result
    assert managed(cluster, namespace, "app")["data"] == {"LOG_LEVEL": "warn", "MODE": "safe"}
    update = Change.objects.get(source=source, commit=commit)
    assert ("remove", "EXTRA") in {(d["op"], d["key"]) for d in update.diff}
    assert sync(source)["outcome"] == "unchanged", "nothing left to heal"


def test_a_git_change_to_keys_another_manager_also_holds_goes_out_with_self_heal(
    repo, make_namespaces, make_source, sync, cluster
):
    """Someone server-side applies the same values under their own manager: no drift, but the next Git
    change to those keys was refused as a conflict at every commit, selfHeal or not."""
    namespace, source = _drift_setup(repo, make_namespaces, make_source, sync, self_heal=True)
    same = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "app", "namespace": namespace},
        "data": {"LOG_LEVEL": "info"},
    }
    cluster.apply_configmap(same, field_manager="ops")
    assert sync(source)["outcome"] == "unchanged"
    repo.write("configmaps/app.yaml", configmap("app", {"LOG_LEVEL": "warn", "MODE": "safe"}))
    repo.commit("warn")

    result = sync(source)

    assert (result["outcome"], result["summary"], result["errors"]) == ("applied", {"update": 1}, [])
    assert managed(cluster, namespace, "app")["data"] == {"LOG_LEVEL": "warn", "MODE": "safe"}


def _edit_with_nul_in_cluster(cluster, namespace: str, annotations: dict[str, str] | None = None) -> None:
    # The apiserver takes U+0000 in a value; PostgreSQL's jsonb takes no U+0000.
    edited = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "app", "namespace": namespace, "annotations": annotations or {}},
        "data": {"LOG_LEVEL": "de\u0000bug", "EXTRA": "added\u0000by hand"},
    }
    cluster.apply_configmap(edited, field_manager="kubectl-edit", force=True)


def test_drift_holding_nul_and_a_forged_commit_is_healed_and_logged(
    repo, make_namespaces, make_source, sync, cluster
):
    """Live content is not validated as Git's is: a U+0000 someone put into a managed object once
    failed every pass at the change log's write, so self-heal could never repair it."""
    namespace, source = _drift_setup(repo, make_namespaces, make_source, sync, self_heal=True)
    commit = repo.head()
    # Anything in Sluice's commit annotation: it once overflowed the column that keeps it.
    _edit_with_nul_in_cluster(cluster, namespace, {"sluice.dev/commit": "x\u0000" * 60})

    result = sync(source)

    assert result["outcome"] == "applied", result
    assert result["summary"] == {"self-heal": 1}
    live = managed(cluster, namespace, "app")
    assert live["data"] == {"LOG_LEVEL": "info", "MODE": "safe"}
    assert live["metadata"]["annotations"]["sluice.dev/commit"] == commit
    heal = Change.objects.get(source=source, action="self-heal")
    assert heal.commit == commit
    # Recorded with U+FFFD, the replacement character, where the cluster held U+0000.
    assert heal.before["data"]["LOG_LEVEL"] == "de\ufffdbug"
    assert {d["key"]: d.get("old") for d in heal.diff}["LOG_LEVEL"] == "de\ufffdbug"
    assert sync(source)["outcome"] == "unchanged"


def test_drift_holding_nul_is_reported_when_self_heal_is_off(
    repo, make_namespaces, make_source, sync, cluster
):
    namespace, source = _drift_setup(repo, make_namespaces, make_source, sync, self_heal=False)
    _edit_with_nul_in_cluster(cluster, namespace)

    result = sync(source)

    assert result["outcome"] == "unchanged", result["errors"]
    assert result["summary"] == {"drift": 1}
    assert managed(cluster, namespace, "app")["data"]["LOG_LEVEL"] == "de\u0000bug"
    assert Source.objects.get(pk=source.pk).last_plan


def _denied(core_api, namespace: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        core_api.patch_namespaced_config_map("app", namespace, {"data": {"PROBE": "1"}}, dry_run="All")
    except ApiException:
        return True
    return False


def test_a_refusal_that_quotes_nul_from_the_cluster_is_logged(
    repo, make_namespaces, make_source, sync, cluster, kube_client, core_api
):
    """An admission policy's message may quote the live object: its U+0000 once failed the write of
    the change log, so the intents stayed pending and every pass applied and failed again."""
    from kubernetes import client

    namespace, source = _drift_setup(repo, make_namespaces, make_source, sync, self_heal=True)
    _edit_with_nul_in_cluster(cluster, namespace)
    admission = client.AdmissionregistrationV1Api(kube_client())
    name = f"quote-old-{namespace}"
    admission.create_validating_admission_policy(
        {
            "metadata": {"name": name},
            "spec": {
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["UPDATE"],
                            "resources": ["configmaps"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": "!has(oldObject.data) || !('EXTRA' in oldObject.data)",
                        "messageExpression": "'not over ' + oldObject.data.LOG_LEVEL",
                    }
                ],
            },
        }
    )
    binding = {
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            },
        },
    }
    admission.create_validating_admission_policy_binding(binding)
    try:
        # The policy takes effect once the apiserver's informers have it: a dry run tells when.
        poll(lambda: _denied(core_api, namespace), timeout=30, what="the admission policy to take effect")
        result = sync(source)
    finally:
        admission.delete_validating_admission_policy_binding(name)
        admission.delete_validating_admission_policy(name)

    assert "not over de\ufffdbug" in result["errors"][0]
    refused = Change.objects.get(source=source, action="self-heal", result="error")
    assert "not over de\ufffdbug" in refused.error
    assert refused.before["data"]["LOG_LEVEL"] == "de\ufffdbug"
    assert not ApplyIntent.objects.filter(source=source, status="pending").exists()


def test_a_flag_document_nested_past_pythons_recursion_limit_in_the_cluster_is_healed(
    repo, make_namespaces, make_source, sync, cluster, client, people
):
    """Anybody who may edit the flags' ConfigMap can write any text there. JSON nested 100,000 deep
    (200 KB) once raised RecursionError, which no ``except ValueError`` caught, in the live cache's stamp,
    the plan's readable diff and the flag baselines: every pass failed, and so did the change's page."""
    (namespace, flags_ns) = make_namespaces("app", "flags")
    repo.write_all(
        {
            "sluice.yaml": policy([namespace], flags={"namespace": flags_ns}, selfHeal=True),
            "flags/checkout.json": json.dumps(FLAGS),
        }
    )
    repo.commit("flags")
    source = make_source()
    assert sync(source)["outcome"] == "applied"
    (published,) = cluster.list_configmaps(flags_ns)
    name, (key,) = published["metadata"]["name"], published["data"].keys()
    edited = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": flags_ns},
        "data": {key: "[" * 100_000},
    }
    cluster.apply_configmap(edited, field_manager="kubectl-edit", force=True)

    result = sync(source)

    assert result["outcome"] == "applied", result
    assert result["summary"] == {"self-heal": 1}
    assert json.loads(cluster.get_configmap(flags_ns, name)["data"][key])["flags"] == FLAGS["flags"]
    heal = Change.objects.get(source=source, action="self-heal")
    client.force_login(people["viewer"])
    shown = client.get("/api/changes", {"source": source.name, "action": "self-heal"})
    assert shown.status_code == 200
    assert [entry["id"] for entry in shown.json()["items"]] == [heal.pk]
    assert sync(source)["outcome"] == "unchanged"


def test_drift_is_reported_and_left_alone_when_self_heal_is_off(
    repo, make_namespaces, make_source, sync, cluster
):
    namespace, source = _drift_setup(repo, make_namespaces, make_source, sync, self_heal=False)
    _edit_in_cluster(cluster, namespace)

    result = sync(source)

    assert result["outcome"] == "unchanged"
    assert result["summary"] == {"drift": 1}
    assert managed(cluster, namespace, "app")["data"]["LOG_LEVEL"] == "debug"
    assert Change.objects.filter(source=source).count() == 1

    # A Git change on top of drift conflicts with the other field manager: reported, never overwritten.
    repo.write("configmaps/app.yaml", configmap("app", {"LOG_LEVEL": "warn", "MODE": "safe"}))
    repo.commit()
    result = sync(source)
    assert result["outcome"] == "failed"
    assert "conflict" in result["errors"][0]
    assert managed(cluster, namespace, "app")["data"]["LOG_LEVEL"] == "debug"
    refused = Change.objects.get(source=source, result="error")
    assert "conflict" in refused.error


def test_prune_deletes_only_what_the_source_applied(repo, make_namespaces, make_source, sync, cluster):
    (namespace,) = make_namespaces("app")
    repo.write_all(
        {
            "sluice.yaml": policy([namespace], prune=True),
            "configmaps/keep.yaml": configmap("keep", {"a": "1"}),
            "configmaps/drop.yaml": configmap("drop", {"b": "2"}),
        }
    )
    repo.commit()
    source = make_source()
    sync(source)
    cluster.apply_configmap(configmap("not-ours", {"c": "3"}, namespace=namespace), field_manager="someone")

    repo.remove("configmaps/drop.yaml")
    commit = repo.commit("drop one")
    result = sync(source)

    assert result["summary"] == {"delete": 1, "unchanged": 1}
    assert cluster.get_configmap(namespace, "drop") is None
    assert cluster.get_configmap(namespace, "keep") is not None
    assert cluster.get_configmap(namespace, "not-ours") is not None
    deletion = Change.objects.get(source=source, action="delete")
    assert (deletion.commit, deletion.name, deletion.before["data"]) == (commit, "drop", {"b": "2"})
    # Sent on the condition of the version the plan read as this source's (no read before the DELETE).
    assert deletion.intent.live_version.isdigit() and deletion.intent.live_uid, deletion.intent.live_version


def test_without_prune_a_removed_object_stays_and_is_reported(
    repo, make_namespaces, make_source, sync, cluster
):
    (namespace,) = make_namespaces("app")
    repo.write_all(
        {"sluice.yaml": policy([namespace]), "configmaps/drop.yaml": configmap("drop", {"b": "2"})}
    )
    repo.commit()
    source = make_source()
    sync(source)
    repo.remove("configmaps/drop.yaml")
    repo.commit()

    assert sync(source)["summary"] == {"orphan": 1}
    assert cluster.get_configmap(namespace, "drop") is not None


def test_an_object_sluice_does_not_manage_is_not_taken_over(
    repo, make_namespaces, make_source, sync, cluster
):
    (namespace,) = make_namespaces("app")
    cluster.apply_configmap(
        configmap("app", {"owner": "platform"}, namespace=namespace), field_manager="helm"
    )
    repo.write_all(
        {"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"owner": "git"})}
    )
    repo.commit()
    source = make_source()

    result = sync(source)

    assert result["summary"] == {"conflict": 1}
    assert managed(cluster, namespace, "app")["data"] == {"owner": "platform"}
    assert not Change.objects.filter(source=source).exists()


def test_an_immutable_configmap_is_replaced_when_its_content_changes(
    repo, make_namespaces, make_source, sync, cluster
):
    (namespace,) = make_namespaces("app")
    repo.write_all(
        {
            "sluice.yaml": policy([namespace]),
            "configmaps/frozen.yaml": configmap("frozen", {"v": "1"}, immutable=True),
        }
    )
    repo.commit()
    source = make_source()
    sync(source)
    first_uid = managed(cluster, namespace, "frozen")["metadata"]["uid"]

    repo.write("configmaps/frozen.yaml", configmap("frozen", {"v": "2"}, immutable=True))
    repo.commit()
    result = sync(source)

    assert result["summary"] == {"replace": 1}
    live = managed(cluster, namespace, "frozen")
    assert live["data"] == {"v": "2"}
    assert live["immutable"] is True
    assert live["metadata"]["uid"] != first_uid
    assert Change.objects.get(source=source, action="replace").before["data"] == {"v": "1"}


def test_binary_data_is_applied_and_summarised_in_the_diff(repo, make_namespaces, make_source, sync, cluster):
    (namespace,) = make_namespaces("app")
    payload = bytes(range(256))
    repo.write_all(
        {
            "sluice.yaml": policy([namespace]),
            "configmaps/bin.yaml": configmap("bin", binaryData={"blob": base64.b64encode(payload).decode()}),
        }
    )
    repo.commit()
    source = make_source()
    sync(source)

    assert base64.b64decode(managed(cluster, namespace, "bin")["binaryData"]["blob"]) == payload
    diff = Change.objects.get(source=source).diff
    assert diff[0]["new"].startswith("<256 bytes, sha256:")


def test_emoji_in_configmaps_and_flags_are_applied_logged_and_settled(
    repo, make_namespaces, make_source, sync, cluster
):
    """Characters beyond U+FFFF once made the apiserver refuse the whole apply (400): Python's JSON
    writes them as surrogate pair escapes, which its YAML parser does not read."""
    namespace, flags_ns = make_namespaces("app", "flags")
    banner = {
        "flags": {
            "banner": {
                "state": "ENABLED",
                "variants": {"party": "🎉 sale", "plain": "sale"},
                "defaultVariant": "party",
            }
        }
    }
    repo.write_all(
        {
            "sluice.yaml": policy([namespace], flags={"namespace": flags_ns}),
            "configmaps/motd.yaml": configmap("motd", {"MOTD": "deploy 🚀 done ✅", "LANG": "한국어"}),
            "flags/banner.json": json.dumps(banner, ensure_ascii=False),
            # As many tools write JSON: the emoji as a surrogate pair escape.
            "flags/escaped.json": json.dumps({"flags": {"rocket": {**banner["flags"]["banner"]}}}),
        }
    )
    repo.commit("emoji")
    source = make_source()

    assert sync(source)["outcome"] == "applied"
    assert managed(cluster, namespace, "motd")["data"] == {"MOTD": "deploy 🚀 done ✅", "LANG": "한국어"}
    published = {
        name: flag
        for obj in cluster.list_configmaps(flags_ns)
        for value in (obj.get("data") or {}).values()
        for name, flag in json.loads(value).get("flags", {}).items()
    }
    assert published["banner"]["variants"]["party"] == "🎉 sale"
    assert published["rocket"]["variants"]["party"] == "🎉 sale"
    created = Change.objects.get(source=source, name="motd")
    assert {d["key"]: d["new"] for d in created.diff}["MOTD"] == "deploy 🚀 done ✅"
    assert sync(source)["outcome"] == "unchanged"

    repo.write("configmaps/motd.yaml", configmap("motd", {"MOTD": "rolled back 🔙", "LANG": "한국어"}))
    repo.commit("another emoji")
    assert sync(source)["outcome"] == "applied"
    assert managed(cluster, namespace, "motd")["data"]["MOTD"] == "rolled back 🔙"


def test_a_force_push_is_detected_and_recorded(repo, make_namespaces, make_source, sync, cluster):
    (namespace,) = make_namespaces("app")
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"v": "1"})})
    base = repo.commit("base")
    repo.write("configmaps/app.yaml", configmap("app", {"v": "2"}))
    bad = repo.commit("oops")
    source = make_source()
    sync(source)

    repo.git("reset", "--quiet", "--hard", base)
    repo.write("configmaps/app.yaml", configmap("app", {"v": "3"}))
    rewritten = repo.commit("rewrite", push=False)
    repo.push(force=True)
    result = sync(source)

    assert result["forced_push"] is True
    assert Revision.objects.get(source=source, commit=rewritten).force_pushed_over == bad
    assert managed(cluster, namespace, "app")["data"] == {"v": "3"}


def test_a_temporary_git_failure_is_retried_with_backoff(make_source, celery_worker):
    from gitops.tasks import sync_source
    from tests.workers import poll

    unreachable = make_source(url="http://127.0.0.1:9/nothing-listens-here.git")
    queued = sync_source.delay(unreachable.pk)

    poll(lambda: queued.state == "RETRY", timeout=30, what="the task to be retried")
    last_error = Source.objects.get(pk=unreachable.pk).last_error
    assert "network error" in last_error
    assert "Failed to connect to 127.0.0.1 port 9" in last_error
    assert Revision.objects.filter(source=unreachable).count() == 0
    queued.revoke()


def test_a_listing_cut_at_max_files_is_rejected_even_behind_a_file_named_like_a_directory(
    repo, make_source, settings
):
    """The listing stops at max_files + 1 files. A file named ``configmaps`` is listed (it matches the
    directory's name) but is not in configmaps/, so counting only configmaps/ and flags/ let a cut
    listing pass: the files after the cut, sluice.yaml among them, went unread and unnoticed."""
    from gitops.fetch.revisions import revision_desired_state, revision_fetch

    settings.SLUICE_MAX_FILES = 5
    repo.write_all(
        {
            "configmaps": "a file where the directory would be\n",
            **{f"flags/f{index}.json": '{"flags": {}}' for index in range(5)},
            "sluice.yaml": policy(["tfoo"]),
        }
    )
    repo.commit("five flag files, a file named configmaps, and the policy listed last")
    source = make_source()
    head, _ = revision_fetch(source)

    assert revision_desired_state(source, head) is None
    head.refresh_from_db()
    assert head.outcome == "rejected"
    assert any("more than 5 files" in error["message"] for error in head.errors), head.errors


def test_a_commit_whose_source_path_became_a_file_is_rejected_not_a_git_failure(
    repo, make_namespaces, make_source, sync, cluster
):
    """A pusher replaced the source's directory with a file: the revision is rejected, naming the path,
    and the source does not back off. Before, every pass failed as if the Git host did, and the revision
    was never recorded as rejected."""
    from gitops.models import Revision, Source
    from tests.gitrepo import configmap, policy

    (namespace,) = make_namespaces("app")
    repo.write_all(
        {
            "deploy/sluice.yaml": policy([namespace]),
            "deploy/configmaps/app.yaml": configmap("app", {"V": "1"}),
        }
    )
    repo.commit("v1")
    source = make_source(path="deploy")
    assert sync(source)["outcome"] == "applied"
    repo.remove("deploy")
    repo.write("deploy", "not a directory any more\n")
    head = repo.commit("v2: deploy is a file")

    result = sync(source)

    assert result["outcome"] == "rejected", result
    assert result["errors"][0].startswith("deploy: the source's path is a file in this commit"), result
    assert Revision.objects.get(source=source, commit=head).outcome == "rejected"
    assert Source.objects.get(pk=source.pk).consecutive_failures == 0
    assert cluster.get_configmap(namespace, "app")["data"] == {"V": "1"}, "nothing touched"


def test_a_diff_of_a_head_rejected_under_a_scope_widened_since_plans_it_as_the_next_sync_applies_it(
    repo, make_namespaces, make_source, sync, cluster
):
    """The head was rejected for a namespace outside the source's scope; an administrator allowed it
    since. `gitops diff` showed the stored rejection; the next sync validates again and applies."""
    from gitops import source_admin
    from gitops.models import Source
    from gitops.preview import source_preview

    (namespace,) = make_namespaces("app")
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"V": "1"})})
    repo.commit("v1")
    source = make_source(allowed_namespaces=["nowhere"])
    assert sync(source)["outcome"] == "rejected"
    source_admin.source_update_scope(source, allowed_namespaces=["t*"])

    preview = source_preview(Source.objects.get(pk=source.pk))

    assert preview.plan is not None, "planned, not the stored rejection"
    assert [item.action.value for item in preview.plan.items] == ["create"]
    assert sync(source)["outcome"] == "applied"


def test_a_revision_is_marked_valid_only_over_an_answer_not_yet_given(make_source):
    """`gitops diff` validates without the source's lock: a new revision it read as pending, loaded for
    seconds, was written VALID over the APPLIED a pass had recorded meanwhile."""
    from gitops.fetch import revisions

    source = make_source()
    applied = Revision.objects.create(source=source, commit="a" * 40, outcome=Revision.Outcome.APPLIED)
    rejected = Revision.objects.create(
        source=source, commit="b" * 40, outcome=Revision.Outcome.REJECTED, errors=[{"file": "x"}]
    )
    revisions._VALID(applied.pk)
    revisions._VALID(rejected.pk)
    applied.refresh_from_db()
    rejected.refresh_from_db()
    assert applied.outcome == Revision.Outcome.APPLIED
    assert (rejected.outcome, rejected.errors) == (Revision.Outcome.VALID, [])
