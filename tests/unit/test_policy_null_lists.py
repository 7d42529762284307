"""A key of sluice.yaml written with nothing after it (YAML null, e.g. every entry commented out).

It was taken as left out and given its default: a list of clusters lost a cluster, the targets became
the default cluster's ``default`` namespace and the steps a single ``setWeight: 100``, so that with
prune on the dropped targets were emptied at once, without an error.
"""

import pytest

from gitops.desired.errors import RevisionRejected
from gitops.desired.policy import Pause, SetWeight, load_policy
from gitops.desired.revision import load_revision
from gitops.desired.scope import AdminScope

NULL = "not null (nothing follows the key)"
COMMENTED_CLUSTER = """targets:
  - cluster: canary
    namespaces: [team-a]
  - cluster: prod
    namespaces:
      # - team-a
      # - team-b
prune: true
"""


def errors_of(text: str) -> list[str]:
    return [str(error) for error in load_policy(text.encode())[1]]


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "targets: [{cluster: prod, namespaces: }]\n",
            f"sluice.yaml:1: targets[0].namespaces: must list at least one namespace, {NULL}",
        ),
        (
            COMMENTED_CLUSTER,
            f"sluice.yaml:5: targets[1].namespaces: must list at least one namespace, {NULL}",
        ),
        (
            "targets: {namespaces: }\n",
            f"sluice.yaml:1: targets.namespaces: must list at least one namespace, {NULL}",
        ),
        (
            "targets:\n  # namespaces: [team-a]\nprune: true\n",
            "sluice.yaml:1: targets: must be a non-empty list of {cluster, namespaces}, or a mapping with "
            f"namespaces, {NULL}",
        ),
        (
            "targets:\n  - {cluster: canary, namespaces: [team-a]}\n  -\n  # cluster: prod\n",
            "sluice.yaml:3: targets[1]: must be a mapping with cluster and namespaces, "
            "not null (nothing follows the '-')",
        ),
        (
            "rollout: {steps: }\n",
            f"sluice.yaml:1: rollout.steps: must be a non-empty list of steps, {NULL}",
        ),
        (
            "rollout:\n  steps:\n    # - setWeight: 10\n    # - pause: {}\n",
            f"sluice.yaml:2: rollout.steps: must be a non-empty list of steps, {NULL}",
        ),
        ("rollout:\n  # steps: [{setWeight: 10}]\n", f"sluice.yaml:1: rollout: must be a mapping, {NULL}"),
        ("flags:\n  # namespace: flags\n", f"sluice.yaml:1: flags: must be a mapping, {NULL}"),
    ],
)
def test_a_key_with_nothing_after_it_is_an_error_naming_line_and_field(text, expected):
    assert errors_of(text) == [expected]


def test_a_cluster_whose_namespaces_are_commented_out_rejects_the_revision():
    files = {
        "sluice.yaml": COMMENTED_CLUSTER.encode(),
        "configmaps/a.yaml": b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: v}\n",
    }
    with pytest.raises(RevisionRejected) as caught:
        load_revision(
            {path: path for path in files},
            lambda ids: {i: files[i] for i in ids},
            scope=AdminScope.of(["*/*"], []),
        )
    assert [str(error) for error in caught.value.errors] == [
        f"sluice.yaml:5: targets[1].namespaces: must list at least one namespace, {NULL}"
    ]


def test_keys_left_out_still_take_their_defaults():
    policy, errors = load_policy(b"prune: true\n")
    assert errors == []
    assert policy.target_pairs == (("default", "default"),)
    assert policy.rollout.steps == (SetWeight(100),)
    assert policy.flags_namespace == "default"
    assert policy.approvals.required == 1


def test_a_null_whose_default_only_narrows_is_taken_as_left_out():
    """``allowedNamespaces:`` and ``approvals:`` with every entry commented out: their defaults allow no
    more and gate no less than what the entries said, so a revision valid before an upgrade stays valid
    (rejected, its active rollout would be rolled back at the first pass after it)."""
    policy, errors = load_policy(
        b"targets: {namespaces: [app]}\nallowedNamespaces:\n  # - team-*\napprovals:\n"
    )
    assert errors == []
    assert policy.approvals.required == 1


def test_a_pause_with_nothing_after_it_waits_for_a_promotion_as_pause_braces_does():
    # Nothing in a pause is a pause without a duration, however it is written; and that default holds
    # the rollout rather than dropping anything from it.
    steps = {}
    for pause in ("{}", "", "null"):
        policy, errors = load_policy(
            f"rollout:\n  steps:\n    - setWeight: 10\n    - pause: {pause}\n".encode()
        )
        assert errors == []
        steps[pause] = policy.rollout.steps
    assert set(steps.values()) == {(SetWeight(10), Pause(None), SetWeight(100))}


def test_a_null_flags_namespace_or_self_approval_rule_is_an_error_not_the_default():
    """``flags: {namespace: }`` took the first target namespace, moving the flag sets (and with prune,
    removing them where they were); ``forbidSelfApproval:`` took false, weakening the gate."""
    flags = errors_of("targets: {namespaces: [app]}\nflags:\n  namespace:\n")
    assert flags == [f"sluice.yaml:3: flags.namespace: must be a namespace name, {NULL}"]
    approvals = errors_of("targets: {namespaces: [app]}\napprovals:\n  forbidSelfApproval:\n")
    assert approvals == [f"sluice.yaml:3: approvals.forbidSelfApproval: must be true or false, {NULL}"]
