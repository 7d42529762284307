"""What an administrator allowed a source: the repository's policy narrows it, never widens it."""

import time

import pytest

from gitops.desired.errors import RevisionRejected
from gitops.desired.revision import load_revision
from gitops.desired.scope import AdminScope, url_allowed, url_prefix_problem


class Repo:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def tree(self) -> dict[str, str]:
        return {path: f"{index:040x}" for index, path in enumerate(self.files)}

    def read_blobs(self, shas: list[str]) -> dict[str, bytes]:
        by_sha = {f"{index:040x}": content for index, content in enumerate(self.files.values())}
        return {sha: by_sha[sha] for sha in shas}


CONFIGMAP = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  v: '1'\n"


def rejected(files: dict[str, bytes], scope: AdminScope) -> list[str]:
    repo = Repo(files)
    with pytest.raises(RevisionRejected) as caught:
        load_revision(repo.tree(), repo.read_blobs, scope=scope)
    return [str(error) for error in caught.value.errors]


def test_a_repository_wildcard_does_not_reach_beyond_the_administrators_namespaces():
    policy = b"targets:\n  namespaces: [kube-system]\nallowedNamespaces: ['*']\n"
    errors = rejected({"sluice.yaml": policy, "configmaps/a.yaml": CONFIGMAP}, AdminScope.of(["team-*"], []))
    assert errors == [
        "sluice.yaml:2: targets.namespaces[0]: namespace 'kube-system' is outside the namespaces"
        " this source may manage (team-*)"
    ]


def test_a_source_without_allowed_namespaces_may_write_nowhere():
    policy = b"targets:\n  namespaces: [team-a]\n"
    errors = rejected({"sluice.yaml": policy, "configmaps/a.yaml": CONFIGMAP}, AdminScope.of([], []))
    assert "may not write to any namespace yet" in errors[0]
    assert errors[0].startswith("sluice.yaml:2: targets.namespaces[0]:")


def test_without_targets_each_configmap_says_the_default_namespace_is_outside_scope():
    errors = rejected({"configmaps/a.yaml": CONFIGMAP}, AdminScope.of(["team-*"], []))
    assert errors == [
        "configmaps/a.yaml:1: metadata.namespace: namespace 'default' is outside the namespaces"
        " this source may manage (team-*)"
    ]


def test_a_target_outside_scope_is_refused_where_sluice_yaml_lists_it_and_the_others_are_not():
    policy = b"targets:\n  - cluster: default\n    namespaces:\n      - team-a\n      - ops\n      - team-b\n"
    files = {"sluice.yaml": policy, "configmaps/a.yaml": CONFIGMAP}
    assert rejected(files, AdminScope.of(["team-*"], [])) == [
        "sluice.yaml:5: targets[0].namespaces[1]: namespace 'ops' is outside the namespaces"
        " this source may manage (team-*)"
    ]


def test_a_target_outside_allowed_namespaces_is_said_once_in_sluice_yaml():
    policy = b"targets:\n  namespaces: [team-a, ops]\nallowedNamespaces: [team-*]\n"
    errors = rejected({"sluice.yaml": policy, "configmaps/a.yaml": CONFIGMAP}, AdminScope.of(["*"], []))
    assert errors == ["sluice.yaml:2: targets.namespaces[1]: namespace 'ops' is not in allowedNamespaces"]


def test_targets_outside_scope_cost_one_error_each_not_one_per_configmap_and_target():
    # 10,000 ConfigMaps without a namespace and 1,000 such targets were 10,000,000 errors (39 s, 2.1 GB),
    # each at a ConfigMap's metadata.namespace, which it does not have.
    targets = "".join(f"  - ns-{index:04d}\n" for index in range(1_000))
    manifests = "---\n".join(
        f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: a{index}}}\n" for index in range(2_000)
    )
    files = {
        "sluice.yaml": f"targets:\n  namespaces:\n{targets}".encode(),
        "configmaps/a.yaml": manifests.encode(),
    }
    started = time.thread_time()  # CPU, not wall time: a busy machine stretches the latter
    with pytest.raises(RevisionRejected) as caught:
        load_revision(Repo(files).tree(), Repo(files).read_blobs, scope=AdminScope.of(["team-a"], []))
    # The quadratic errors took 39 s. Beside make test's integration sessions, CPU time grows too.
    assert time.thread_time() - started < 6
    assert str(caught.value) == "1000 validation error(s)"
    errors = caught.value.errors
    assert {error.file for error in errors} == {"sluice.yaml"}
    assert str(errors[0]) == (
        "sluice.yaml:3: targets.namespaces[0]: namespace 'ns-0000' is outside the namespaces"
        " this source may manage (team-a)"
    )
    assert errors[-1].message == "... and 900 more errors not shown"


def test_flag_set_namespaces_obey_the_administrators_list():
    policy = b"targets:\n  namespaces: [team-a]\nflags:\n  namespace: kube-public\nallowedNamespaces: ['*']\n"
    flags = b'{"flags": {"f": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"}}}'
    errors = rejected({"sluice.yaml": policy, "flags/f.json": flags}, AdminScope.of(["team-*"], []))
    assert errors == [
        "sluice.yaml: flags.namespace: namespace 'kube-public' is outside the namespaces this source may"
        " manage (team-*)"
    ]


ANALYSIS_POLICY = b"""targets:
  namespaces: [team-a]
rollout:
  steps:
    - setWeight: 50
    - analysis:
        http:
          url: http://169.254.169.254/latest/meta-data
"""


def test_analysis_urls_outside_the_administrators_prefixes_reject_the_revision_with_file_and_line():
    files = {"sluice.yaml": ANALYSIS_POLICY, "configmaps/a.yaml": CONFIGMAP}
    errors = rejected(files, AdminScope.of(["team-*"], ["https://checks.example.com/sluice/"]))
    assert errors == [
        "sluice.yaml:8: rollout.steps[1].analysis.http.url: 'http://169.254.169.254/latest/meta-data' is not"
        " under an analysis URL prefix this source may call (https://checks.example.com/sluice/)"
    ]
    errors = rejected(files, AdminScope.of(["team-*"], []))
    assert "may not call any analysis URL" in errors[0]


def test_a_refused_analysis_url_names_its_own_step_after_steps_that_failed_to_parse():
    """The field counted only the steps that parsed: after two bad ones it named steps[0] (before
    2026-12-07), the line right and the field wrong."""
    policy = ANALYSIS_POLICY.replace(
        b"    - setWeight: 50\n", b"    - setWeight: 200\n    - pause: {duration: 99y}\n"
    )
    errors = rejected({"sluice.yaml": policy}, AdminScope.of(["team-*"], ["https://checks.example.com/"]))
    refused = [error for error in errors if "analysis.http.url" in error]
    assert refused and refused[0].startswith("sluice.yaml:9: rollout.steps[2].analysis.http.url:"), errors


def test_a_refused_analysis_url_is_quoted_without_its_query_whatever_its_names():
    """The refusal reaches pages, the API, CloudEvents and logs: an Azure Functions ``?code=`` key,
    a name ``redact`` does not know, was quoted whole."""
    url = b"https://fn.example.net/api/gate?code=AZURE-FN-KEY-123#frag"
    files = {"sluice.yaml": ANALYSIS_POLICY.replace(b"http://169.254.169.254/latest/meta-data", url)}
    files["configmaps/a.yaml"] = CONFIGMAP
    (error,) = rejected(files, AdminScope.of(["team-*"], ["https://checks.example.com/"]))
    assert "AZURE-FN-KEY" not in error
    assert "'https://fn.example.net/api/gate?\u2026' is not under an analysis URL prefix" in error
    problem = AdminScope.of(["*"], ["https://ok/"]).analysis_url_problem("https://x/y?code=S3CRET")
    assert problem is not None and "S3CRET" not in problem


def test_an_allowed_analysis_url_loads():
    policy = ANALYSIS_POLICY.replace(
        b"http://169.254.169.254/latest/meta-data", b"http://checks:8080/v1/gate"
    )
    repo = Repo({"sluice.yaml": policy, "configmaps/a.yaml": CONFIGMAP})
    desired = load_revision(
        repo.tree(), repo.read_blobs, scope=AdminScope.of(["team-*"], ["http://checks:8080/v1"])
    )
    assert len(desired.objects) == 1


@pytest.mark.parametrize(
    "url, allowed",
    [
        ("https://checks.example.com/sluice/gate", True),
        ("https://checks.example.com/sluice/", True),
        ("https://CHECKS.example.com/sluice/gate?x=1", True),
        ("https://checks.example.com:443/sluice/gate", True),
        ("https://checks.example.com/sluice-admin", False),
        ("https://checks.example.com/other", False),
        ("https://checks.example.com.evil.test/sluice/gate", False),
        ("https://checks.example.com:8443/sluice/gate", False),
        ("http://checks.example.com/sluice/gate", False),
        ("https://user:pw@checks.example.com/sluice/gate", False),
        ("https://checks.example.com/sluice/../admin", False),
        ("https://checks.example.com/sluice/%2e%2e/admin", False),
        ("https://checks.example.com/sluice/%2fadmin", False),
        ("https://checks.example.com:99999/sluice/", False),
        ("file:///etc/passwd", False),
        ("https://checks.example.com/sluice/gate x", False),
        ("https://checks.example.com/sluice/gate\r\nHost: evil", False),
        ("https://checks.example.com:0/sluice/gate", False),
        ("https://checks.example.com/sluice/..;/admin", False),
        ("https://checks.example.com/sluice/%252e%252e/admin", False),
        # Checked, and sent (``outbound.post``), up to the first "#": what follows it is never sent.
        ("https://checks.example.com/sluice/#/../../admin#", True),
        ("https://checks.example.com/sluice/gate#section", True),
        ("https://checks.example.com/other#/sluice/gate", False),
    ],
)
def test_url_prefixes_compare_scheme_host_port_and_path(url, allowed):
    assert url_allowed(url, ["https://checks.example.com/sluice"]) is allowed


@pytest.mark.parametrize(
    "prefix, problem",
    [
        ("https://checks.example.com/", None),
        ("http://10.0.0.5:9090", None),
        ("ftp://checks.example.com/", "is not an http:// or https:// URL with a host"),
        ("https:///path", "is not an http:// or https:// URL with a host"),
        ("https://u:p@checks.example.com/", "must not carry credentials"),
        ("https://checks.example.com/?a=b", "must not have a query"),
    ],
)
def test_administrator_prefixes_are_checked(prefix, problem):
    found = url_prefix_problem(prefix)
    assert (found is None) if problem is None else (problem in (found or ""))
