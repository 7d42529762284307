import pytest

from gitops.desired.policy import load_policy


def load(text: str):
    return load_policy(text.encode())


def test_a_missing_policy_file_means_defaults():
    policy, errors = load_policy(None)
    assert errors == []
    assert policy.target_namespaces == ("default",)
    assert policy.allowed_namespaces == ("default",)
    assert (policy.prune, policy.self_heal, policy.flags_namespace) == (False, False, "default")


def test_the_documented_example_loads():
    policy, errors = load(
        """
targets:
  namespaces: [canary, team-a, team-b, team-c]
allowedNamespaces: ["canary", "team-*", "flags"]
prune: true
selfHeal: true
flags:
  namespace: flags
"""
    )
    assert errors == []
    assert policy.target_namespaces == ("canary", "team-a", "team-b", "team-c")
    assert policy.prune and policy.self_heal
    assert policy.flags_namespace == "flags"
    assert policy.allows("team-zeta")
    assert not policy.allows("kube-system")


def test_without_allowed_namespaces_only_targets_and_the_flags_namespace_are_allowed():
    policy, _ = load("targets: {namespaces: [a, b]}\nflags: {namespace: f}\n")
    assert policy.allowed_namespaces == ("a", "b", "f")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("selfheal: true\n", "sluice.yaml:1: selfheal: unknown field 'selfheal'; did you mean 'selfHeal'?"),
        ("prunne: true\n", "sluice.yaml:1: prunne: unknown field 'prunne'; did you mean 'prune'?"),
        (
            "targets:\n  namespace: [a]\n",
            "sluice.yaml:2: targets.namespace: unknown field 'namespace'; did you mean 'namespaces'?",
        ),
        ("prune: yes please\n", "sluice.yaml:1: prune: must be true or false, not a string"),
        (
            "targets: {namespaces: [Team_A]}\n",
            "sluice.yaml:1: targets.namespaces[0]: 'Team_A' is not a valid namespace name",
        ),
        (
            "targets: {namespaces: []}\n",
            "sluice.yaml:1: targets.namespaces: must list at least one namespace",
        ),
        ("targets: {namespaces: [a, a]}\n", "sluice.yaml:1: targets.namespaces[1]: 'a' is listed twice"),
        (
            "targets: {namespaces: [a, b]}\nallowedNamespaces: [a]\n",
            "sluice.yaml:1: targets.namespaces[1]: namespace 'b' is not in allowedNamespaces",
        ),
        ("- just\n- a list\n", "sluice.yaml:1: must be a mapping, not a list"),
        ("targets: [\n", "sluice.yaml:2: YAML syntax error"),
        ("zzz: 1\n", "unknown field 'zzz' (known fields: targets, allowedNamespaces, prune, selfHeal, flags"),
    ],
)
def test_policy_errors_name_line_and_field(text, expected):
    _, errors = load(text)
    assert any(expected in str(error) for error in errors), [str(e) for e in errors]
