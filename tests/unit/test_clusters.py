"""Many clusters in the pure core: policy targets, scope globs CLUSTER/NAMESPACE, waves across
(cluster, namespace) pairs, and a plan that never guesses about a cluster it could not read."""

from __future__ import annotations

import hashlib
import json

import pytest

from gitops.desired.content import Content
from gitops.desired.errors import RevisionRejected
from gitops.desired.policy import Target, load_policy
from gitops.desired.revision import DesiredState, load_revision
from gitops.desired.scope import AdminScope, scope_glob_problem
from gitops.plan import Action, plan
from gitops.plan.provenance import Provenance, manifest
from gitops.rollout.engine import desired_at_weight, desired_hash, held_keys

FLEET = ("default", "canary-eu", "prod-eu", "prod-us")
POLICY = b"""targets:
  - cluster: canary-eu
    namespaces: [team-a]
  - cluster: prod-eu
    namespaces: [team-a, team-b]
flags:
  namespace: flags
"""
APP = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  V: '1'\n"
PINNED = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: pinned\n  namespace: team-b\ndata:\n  V: '1'\n"
FLAGS = (
    b'{"flags": {"f": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}}}'
)


def load(files: dict[str, bytes], scope: AdminScope) -> DesiredState:
    return load_revision({path: path for path in files}, lambda ids: {i: files[i] for i in ids}, scope=scope)


def rejected(files: dict[str, bytes], scope: AdminScope) -> list[str]:
    with pytest.raises(RevisionRejected) as raised:
        load(files, scope)
    return [str(error) for error in raised.value.errors]


def fleet_scope(*globs: str, known: tuple[str, ...] = FLEET) -> AdminScope:
    return AdminScope.of(globs, [], known_clusters=known)


# -- sluice.yaml targets -------------------------------------------------------------------


def test_targets_list_clusters_and_their_namespaces_in_order():
    policy, errors = load_policy(POLICY)
    assert errors == []
    assert policy.targets == (Target("canary-eu", ("team-a",)), Target("prod-eu", ("team-a", "team-b")))
    assert policy.target_pairs == (("canary-eu", "team-a"), ("prod-eu", "team-a"), ("prod-eu", "team-b"))
    assert policy.allowed_namespaces == ("team-a", "team-b", "flags")


def test_the_mapping_form_means_the_default_cluster():
    policy, errors = load_policy(b"targets:\n  namespaces: [a, b]\n", default_cluster="local")
    assert errors == []
    assert policy.target_pairs == (("local", "a"), ("local", "b"))
    assert load_policy(None, default_cluster="local")[0].target_pairs == (("local", "default"),)


@pytest.mark.parametrize(
    "text, expected",
    [
        (b"targets: []\n", "sluice.yaml:1: targets: must be a non-empty list of {cluster, namespaces}"),
        (b"targets:\n  - namespaces: [a]\n", "sluice.yaml:2: targets[0].cluster: a cluster name is required"),
        (b"targets:\n  - cluster: x\n", "sluice.yaml:2: targets[0]: namespaces are required"),
        (
            b"targets:\n  - cluster: Prod_EU\n    namespaces: [a]\n",
            "sluice.yaml:2: targets[0].cluster: 'Prod_EU' is not a valid cluster name",
        ),
        (
            b"targets:\n  - cluster: x\n    namespaces: [a]\n  - cluster: x\n    namespaces: [b]\n",
            "sluice.yaml:4: targets[1].cluster: cluster 'x' is listed twice",
        ),
        (
            b"targets:\n  - cluster: x\n    namespaces: []\n",
            "sluice.yaml:3: targets[0].namespaces: must list at least one namespace",
        ),
        (
            b"targets:\n  - cluster: x\n    namespace: [a]\n",
            "sluice.yaml:3: targets[0].namespace: unknown field 'namespace'; did you mean 'namespaces'?",
        ),
        (
            b"allowedNamespaces: [a]\ntargets:\n  - cluster: x\n    namespaces: [a, b]\n",
            "sluice.yaml:4: targets[0].namespaces[1]: namespace 'b' is not in allowedNamespaces",
        ),
    ],
)
def test_bad_targets_name_file_line_and_field(text, expected):
    _, errors = load_policy(text)
    assert any(str(error).startswith(expected) for error in errors), [str(e) for e in errors]


def test_an_unknown_cluster_and_a_cluster_outside_scope_are_refused_with_their_line():
    files = {"sluice.yaml": POLICY, "configmaps/app.yaml": APP}
    errors = rejected(files, fleet_scope("canary-eu/*", known=("default", "canary-eu")))
    assert errors[0].startswith("sluice.yaml:4: targets[1].cluster: cluster 'prod-eu' is not registered")
    assert "gitops add-cluster" in errors[0]

    errors = rejected(files, fleet_scope("canary-*/team-*", "flags"))
    assert errors[0] == (
        "sluice.yaml:4: targets[1].cluster: cluster 'prod-eu' is outside the clusters this source may "
        "manage (canary-*/team-*, flags)"
    )


def test_a_manifest_with_its_own_namespace_goes_there_in_every_target_cluster():
    state = load({"sluice.yaml": POLICY, "configmaps/pinned.yaml": PINNED}, fleet_scope("*-eu/team-*"))
    assert [(o.cluster, o.namespace, o.rank) for o in state.objects] == [
        ("canary-eu", "team-b", 0),
        ("prod-eu", "team-b", 1),
    ]


def test_flag_sets_are_published_to_the_flags_namespace_of_every_target_cluster():
    state = load({"sluice.yaml": POLICY, "flags/checkout.json": FLAGS}, fleet_scope("*-eu/flags"))
    assert [(o.cluster, o.namespace, o.name, o.kind) for o in state.objects] == [
        ("canary-eu", "flags", "checkout", "flagset"),
        ("prod-eu", "flags", "checkout", "flagset"),
    ]


# -- administrator scope: CLUSTER/NAMESPACE globs ---------------------------------------------------


@pytest.mark.parametrize(
    "cluster, namespace, allowed",
    [
        ("default", "team-a", True),  # a glob without a slash means the default cluster
        ("prod-eu", "team-a", True),
        ("prod-us", "team-z", True),
        ("prod-eu", "kube-system", False),
        ("canary-eu", "team-a", False),
        ("default", "kube-system", False),
    ],
)
def test_scope_globs_take_the_form_cluster_slash_namespace(cluster, namespace, allowed):
    scope = AdminScope.of(["team-*", "prod-*/team-*"], [])
    assert (scope.namespace_problem(namespace, cluster) is None) is allowed


def test_a_namespace_outside_scope_in_another_cluster_names_the_cluster():
    scope = AdminScope.of(["team-*", "prod-*/team-*"], [], default_cluster="local")
    assert scope.namespace_problem("team-a") is None
    assert scope.namespace_problem("team-a", "local") is None
    assert scope.namespace_problem("ops", "prod-eu") == (
        "namespace 'ops' in cluster 'prod-eu' is outside the namespaces this source may manage "
        "(team-*, prod-*/team-*)"
    )
    assert scope.cluster_problem("prod-eu") is None
    assert "outside the clusters" in (scope.cluster_problem("canary-eu") or "")


@pytest.mark.parametrize(
    "glob, problem",
    [
        ("team-*", None),
        ("prod-*/team-*", None),
        ("*/*", None),
        ("a/b/c", "one '/' at most"),
        ("/team-a", "one '/' at most"),
        ("Prod/team-a", "not a cluster name or glob"),
        ("prod/Team", "not a namespace name or glob"),
        ("prod-*-eu/team-[a-c]", None),
        # An administrator's globs are not bounded as a repository's are: no pusher writes them.
        ("*-canary-*", None),
        ("prod-*-*/team-*-*-x", None),
        ("prod/[a-z][a-z][a-z][a-z][a-z]x", None),
        ("prod/team-[a*]", "each '[' opens a class of letters, digits and '-' closed by ']'"),
    ],
)
def test_scope_glob_problems(glob, problem):
    found = scope_glob_problem(glob)
    assert (found is None) if problem is None else (problem in (found or "")), found


# -- waves across (cluster, namespace) pairs --------------------------------------------------------


def three_cluster_state() -> DesiredState:
    policy = (
        b"targets:\n"
        b"  - {cluster: default, namespaces: [shop]}\n"
        b"  - {cluster: member-1, namespaces: [shop]}\n"
        b"  - {cluster: member-2, namespaces: [shop]}\n"
    )
    scope = fleet_scope("*/shop", known=("default", "member-1", "member-2"))
    return load({"sluice.yaml": policy, "configmaps/app.yaml": APP}, scope)


@pytest.mark.parametrize(
    "weight, new_content_in",
    [
        (0, []),
        (1, ["default"]),
        (33, ["default"]),
        (34, ["default", "member-1"]),
        (66, ["default", "member-1"]),
        (67, ["default", "member-1", "member-2"]),
        (100, ["default", "member-1", "member-2"]),
    ],
)
def test_a_weight_puts_new_content_on_the_first_targets_cluster_by_cluster(weight, new_content_in):
    state = three_cluster_state()
    held = held_keys(state, weight)
    assert [o.cluster for o in state.objects if o.key not in held] == new_content_in


def test_every_target_cluster_gets_the_same_canary_flag_set():
    policy = (
        b"targets:\n"
        b"  - {cluster: default, namespaces: [flags]}\n"
        b"  - {cluster: member-1, namespaces: [flags]}\n"
    )
    scope = fleet_scope("*/flags", known=("default", "member-1"))
    state = load({"sluice.yaml": policy, "flags/f.json": FLAGS}, scope)
    old = {
        "flags": {"f": {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}}
    }
    weighted = desired_at_weight(state, 25, {obj.key: old for obj in state.objects})
    canaries = [obj.content.data for obj in weighted.objects]
    assert len(canaries) == 2
    assert canaries[0] == canaries[1]
    assert '"sluiceCanaryWeight": 25' in next(iter(canaries[0].values()))


def test_the_approved_content_hash_covers_the_clusters():
    state = three_cluster_state()
    fewer = DesiredState(state.policy, state.objects[:2])
    assert desired_hash(state) != desired_hash(fewer)


def test_the_approved_content_hash_is_the_one_approvals_were_recorded_under():
    """The hash is stored with every approval: its formula (a JSON array per object, in key order) must
    not change, or an upgrade would make pending approvals approve nothing."""
    state = three_cluster_state()
    digest = hashlib.sha256()
    for obj in sorted(state.objects, key=lambda o: o.key):
        digest.update(json.dumps([obj.cluster, obj.namespace, obj.name, obj.content.hash]).encode())
    assert desired_hash(state) == digest.hexdigest()[:32]


# -- a plan never guesses about a cluster it could not read ----------------------------------------


def test_objects_of_an_unreachable_cluster_are_reported_not_created_nor_pruned():
    state = three_cluster_state()
    default_app = next(o for o in state.objects if o.cluster == "default")
    live_default = manifest(
        "shop", "app", Content(data={"V": "0"}), Provenance("shop-config", "a" * 40, "h", "x")
    )
    result = plan(
        state,
        {("default", "shop"): [live_default], ("member-1", "shop"): []},
        source="shop-config",
        commit="b" * 40,
        managed=frozenset({default_app.key, ("member-2", "shop", "gone")}),
        unreachable={"member-2": "kube-apiserver unreachable: connection refused"},
    )
    actions = {item.cluster: item.action for item in result.items}
    assert actions == {"default": Action.UPDATE, "member-1": Action.CREATE, "member-2": Action.UNREACHABLE}
    down = next(item for item in result.items if item.cluster == "member-2")
    assert down.reason == "cluster member-2 is unreachable: kube-apiserver unreachable: connection refused"
    assert down.after is None  # nothing would be applied there
    assert result.summary() == {"update": 1, "create": 1, "unreachable": 1}
    assert result.items[0].as_dict()["cluster"] == "default"


def test_a_wave_needs_only_the_clusters_it_writes_to_an_unchanged_flag_set_needs_none():
    """A ConfigMap's commit at 10% of three clusters writes to the first: the third, down, is not needed
    yet. A flag set the commit leaves as it is goes out as Git has it and needs no cluster either; every
    cluster with any flag set was needed at every wave. A flag set that changes has a canary in every
    cluster at every weight, and needs each."""
    from gitops.rollout.step import needed

    flag = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}
    files = {
        "sluice.yaml": json.dumps(
            {
                "targets": [{"cluster": c, "namespaces": ["app"]} for c in ("c1", "c2", "c3")],
                "flags": {"namespace": "flags"},
            }
        ).encode(),
        "configmaps/web.yaml": b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\ndata: {V: '2'}\n",
        "flags/f.json": json.dumps({"flags": {"f": flag}}).encode(),
    }
    desired = load_revision({path: path for path in files}, lambda ids: {i: files[i] for i in ids})
    held = held_keys(desired, 10)
    flag_sets = [obj for obj in desired.objects if obj.flag_set is not None]
    down = {"c3": "unreachable"}

    unchanged = desired_at_weight(desired, 10, {obj.key: obj.flag_set.document for obj in flag_sets}, "seed")
    assert needed(unchanged, held, down, 10) == {}
    assert needed(unchanged, frozenset(), down, 10) == down, "a wave that writes there needs it"
    changed = desired_at_weight(desired, 10, {obj.key: None for obj in flag_sets}, "seed")
    assert needed(changed, held, down, 10) == down, "a flag set with a canary there needs it"
    assert needed(unchanged, held, down, 100) == down
