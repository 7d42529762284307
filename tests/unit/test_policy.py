import fnmatch
import itertools
import re
import time
import tracemalloc

import pytest

from gitops.desired.errors import RevisionRejected
from gitops.desired.policy import Policy, glob_expression, load_policy
from gitops.desired.revision import load_revision
from gitops.desired.scope import AdminScope


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


def test_globs_that_cost_more_than_one_pass_over_a_namespace_are_refused_where_they_are_written():
    policy = (
        "allowedNamespaces:\n  - team-*\n  - '*-canary-*'\n  - '[a-z][a-z][a-z][a-z][a-z]-eu'\n  - 'x[a'\n"
        "  - '*a*b*'\n"
    )
    _, errors = load(policy)
    assert [str(error) for error in errors] == [
        "sluice.yaml:4: allowedNamespaces[2]: '[a-z][a-z][a-z][a-z][a-z]-eu' holds 5 classes [...]: a glob "
        "holds at most 4, as each glob is matched against every namespace a revision names",
        "sluice.yaml:5: allowedNamespaces[3]: 'x[a': each '[' opens a class of letters, digits and '-' "
        "closed by ']', like [a-c]",
        "sluice.yaml:6: allowedNamespaces[4]: '*a*b*' holds 3 '*': a glob holds at most 2, as each glob "
        "is matched against every namespace a revision names",
    ]
    # Two "*" are matched by backtracking: a few are cheap, a list of them is not.
    many = "allowedNamespaces:\n" + "".join(f"  - '*-{index}-*'\n" for index in range(18))
    _, errors = load(many)
    assert [(error.line, error.field) for error in errors] == [
        (18, "allowedNamespaces[16]"),
        (19, "allowedNamespaces[17]"),
    ]
    assert errors[0].message == "'*-16-*': at most 16 globs of the list may hold two '*'"


GLOBS = ["*", "team-*", "*-eu", "a*b", "t?am-*", "*[a-c]x", "[ab]*[0-9]", "a?*?", "*[z-a]", "x]*", "a*[b-]"]
NAMES = ["", "a", "ab", "team-a", "tam-eu", "team-eu", "bx", "cx", "a-b", "ax0", "b9", "aab", "x]y", "a-"]


def test_a_glob_is_matched_as_fnmatch_matches_it():
    for glob, name in itertools.product(GLOBS, NAMES):
        assert bool(re.match(glob_expression(glob), name)) == fnmatch.fnmatchcase(name, glob), (glob, name)
    for globs in itertools.combinations(GLOBS, 3):
        policy = Policy(allowed_namespaces=globs)
        for name in NAMES:
            assert policy.allows(name) == any(fnmatch.fnmatchcase(name, glob) for glob in globs)


def test_a_glob_of_one_star_costs_one_pass_over_each_namespace():
    # fnmatch tried the part after "*" at every place of the name: 1,000 globs of "*", 40 classes [a-z]
    # and "b000" took 9 ms a namespace, and of "*", 57 "a" and "000" 2 ms, for each namespace named.
    globs = tuple(f"*[a-z][a-z][a-z][a-z]{'a' * 50}b{index:03d}" for index in range(1_000))
    policy = Policy(allowed_namespaces=globs)
    names = [f"{'a' * 55}{index:08d}" for index in range(2_000)]
    # CPU time of this thread, not wall time: a busy machine (the integration tests beside this one in
    # `make test`) made 0.7 s of work take 1.8 s. Even CPU time grows on a saturated machine (1.56 s
    # beside two integration sessions: caches shared with them). The quadratic matching took 18 s.
    started = time.thread_time()
    assert not any(policy.allows(name) for name in names)
    assert time.thread_time() - started < 5


def test_namespaces_refused_by_many_long_globs_cost_little_memory_each():
    # Each refusal quoted the whole list (1,000 globs of 250 characters) and was kept for its namespace:
    # 20,000 namespaces held 4.9 GB.
    globs = [f"{'x' * 247}{index:03d}" for index in range(1_000)]
    policy = "allowedNamespaces:\n" + "".join(f"  - {glob}\n" for glob in globs)
    manifests = "---\n".join(
        f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: a, namespace: ns-{index:05d}}}\n"
        for index in range(2_000)
    )
    files = {"sluice.yaml": policy.encode(), "configmaps/a.yaml": manifests.encode()}
    tracemalloc.start()
    try:
        with pytest.raises(RevisionRejected) as caught:
            load_revision(
                {path: path for path in files},
                lambda ids: {i: files[i] for i in ids},
                scope=AdminScope.of(["*"], []),
            )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * 1024 * 1024
    first = caught.value.errors[0].message
    assert first.startswith(
        f"namespace 'ns-00000' is not allowed by sluice.yaml (allowedNamespaces: {globs[0]}, "
    )
    assert first.endswith(f"{globs[4]} and 995 more)")


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("90", 90), ("30s", 30), ("5m", 300), ("1h30m", 5400), ("2h15m30s", 8130), ("1d", 86400), (600, 600)],
)
def test_a_pause_takes_durations_as_argo_rollouts_writes_them(written, seconds):
    """Argo Rollouts reads a pause's duration with Go's ParseDuration: 1h30m was valid there and refused
    here (one amount only), while a maintenance window took it."""
    policy, errors = load(f"rollout:\n  steps:\n    - setWeight: 10\n    - pause: {{duration: {written}}}\n")
    assert errors == []
    assert policy.rollout.steps[1].seconds == seconds


@pytest.mark.parametrize("written", ["30m1h", "5m5m", "1h 30m", "1.5h", "8d", "-5s", "soon"])
def test_a_pause_refuses_what_is_no_duration_or_over_a_week_at_its_line(written):
    _, errors = load(f"rollout:\n  steps:\n    - setWeight: 10\n    - pause: {{duration: {written}}}\n")
    assert [str(error) for error in errors] == [
        "sluice.yaml:4: rollout.steps[1].pause.duration: must be a duration like 30s, 5m, 1h or 1h30m"
        " (at most 7 days)"
    ]


def test_an_argo_failure_limit_of_zero_is_refused_with_what_it_means_here():
    """Argo Rollouts' failureLimit counts the failures tolerated (0 aborts at the first); Sluice's counts
    the failures that abort. The 0 an Argo user writes was refused with no word of the difference."""
    analysis = "{analysis: {http: {url: 'https://checks.example.com/ok'}, failureLimit: 0}}"
    _, errors = load(f"rollout:\n  steps:\n    - setWeight: 10\n    - {analysis}\n")
    assert len(errors) == 1
    said = str(errors[0])
    assert "rollout.steps[1].analysis.failureLimit: must be a whole number from 1 to 10" in said
    assert "Argo Rollouts' failureLimit: 0, abort at the first failure, is failureLimit: 1 here" in said
    _, errors = load(f"rollout:\n  steps:\n    - setWeight: 10\n    - {analysis.replace('0}}', '11}}')}\n")
    assert "Argo" not in str(errors[0])
