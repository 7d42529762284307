"""The pure parts of managing sources: the forms of settings, what the audit trail records, and the patch
that lets go of a kept object."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest

from gitops.cluster.client import _release_patch
from gitops.fetch.credentials import reference_problem
from gitops.fetch.git import repository_url_problem
from gitops.models import masked_url
from gitops.record.audit import changed_fields
from gitops.source_admin import SourceSettingsError, parse_interval


@pytest.mark.parametrize(
    "reference", ["", "env:GIT_TOKEN", "env:_x1", "file:/run/secrets/git", "ssh-key:/k/id"]
)
def test_credentials_references_of_the_right_form_pass(reference):
    assert reference_problem(reference) is None


@pytest.mark.parametrize(
    "reference",
    [
        "ghp_0123456789abcdefghijklmnopqrstuvwxyz",  # a pasted token
        "env:=",
        "env:1ABC",
        "env:A B",
        "file:relative/path",
        "ssh-key:~/.ssh/id",
        "file:/etc/passwd\nX",
        "vault:secret/git",
    ],
)
def test_anything_else_is_refused_without_being_echoed(reference):
    problem = reference_problem(reference)
    assert problem is not None and "expected env:VAR, file:/path or ssh-key:/path" in problem
    assert reference not in problem


@pytest.mark.parametrize(
    "url",
    [
        "https://git.example.com/team/repo.git",
        "ssh://git@git.example.com/team/repo.git",
        "git@github.com:org/repo.git",
        "file:///srv/git/repo.git",
        "git://git.example.com/repo.git",
    ],
)
def test_git_urls_pass(url):
    assert repository_url_problem(url) is None


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("htps://example.com/repo.git", "is not a Git URL"),
        ("/srv/git/repo.git", "is not a Git URL"),
        ("ext::sh -c touch% /tmp/pwned", "remote helper"),
        ("-upload-pack=touch", "malformed"),
        ("https://u:p@example.com/x.git", "embeds credentials"),
    ],
)
def test_other_urls_are_refused(url, words):
    assert words in (repository_url_problem(url) or "")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h", 3600), ("90", 90), (" 2m ", 120), ("1h30m", 5400), ("1d", 86400)],
)
def test_intervals_read_as_the_command_line_writes_them(text, seconds):
    assert parse_interval(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["soon", "5 m", "30m1h", "-5s", "", "9999999s", "999999999d999999999h"])
def test_other_intervals_are_a_problem_of_that_field(text):
    with pytest.raises(SourceSettingsError) as raised:
        parse_interval(text)
    assert list(raised.value.problems) == ["poll_interval"]
    assert str(raised.value).startswith("--interval: ")


def test_changed_fields_name_what_differs_in_order():
    before = {"url": "a", "branch": "main", "notify_urls": [], "suspended": False}
    after = {"url": "a", "branch": "release", "notify_urls": ["x"], "suspended": False}
    assert changed_fields(before, after) == ["branch", "notify_urls"]
    assert changed_fields(None, {"url": "a"}) == ["url"]
    assert changed_fields(before, before) == []


def test_a_masked_url_keeps_the_host_and_tells_urls_apart_without_their_path():
    first = masked_url("https://hooks.slack.example/services/T0/B0/s3cr3t")
    second = masked_url("https://hooks.slack.example/services/T0/B0/other")
    assert first.startswith("https://hooks.slack.example/… #")
    assert "s3cr3t" not in first and first != second
    assert "pw" not in masked_url("https://user:pw@hooks.example/x")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # The host was what came before the first "/": a query, a ";" or a "\\" kept the token in it.
        ("https://hooks.example.com?token=SECRET", "https://hooks.example.com/… #"),
        ("https://hooks.example.com;SECRET", "https://?/… #"),
        ("https://hooks.example.com\\SECRET", "https://?/… #"),
        ("https://u:SECRET@[::1]:8443/x", "https://[::1]:8443/… #"),
        ("https://hooks.example.com:SECRET/x", "https://?/… #"),
        ("SECRET-without-a-scheme", "?://?/… #"),
    ],
)
def test_a_masked_url_shows_only_a_host_a_parser_reads(url, shown):
    masked = masked_url(url)
    assert masked.startswith(shown) and "secret" not in masked.lower()


def test_a_masked_urls_fingerprint_is_keyed_so_a_viewer_cannot_test_guesses_of_its_token(settings):
    """Every viewer reads the fingerprint: a plain SHA-256 of the URL let them hash guesses of a short
    token (an ntfy topic) offline until one matched."""
    url = "https://ntfy.sh/deploys-42"
    masked = masked_url(url)
    assert not masked.endswith(hashlib.sha256(url.encode()).hexdigest()[:12])
    settings.SECRET_KEY = "another key, another fingerprint, 0123456789abcdef"
    assert masked_url(url) != masked


def test_the_release_patch_removes_only_sluices_keys_and_its_field_ownership():
    live = {
        "metadata": {
            "resourceVersion": "42",
            "labels": {"app.kubernetes.io/managed-by": "sluice", "sluice.dev/source": "shop", "team": "a"},
            "annotations": {"sluice.dev/commit": "abc", "note": "kept"},
            "managedFields": [
                {"manager": "sluice", "operation": "Apply"},
                {"manager": "kubectl-label", "operation": "Update"},
            ],
        }
    }
    patch = _release_patch(live, "sluice")
    assert patch[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "42"}
    assert {"op": "remove", "path": "/metadata/labels/sluice.dev~1source"} in patch
    assert {"op": "remove", "path": "/metadata/labels/app.kubernetes.io~1managed-by"} in patch
    assert {"op": "remove", "path": "/metadata/annotations/sluice.dev~1commit"} in patch
    assert not any(op.get("path", "").endswith(("/team", "/note")) for op in patch)
    assert patch[-1] == {
        "op": "replace",
        "path": "/metadata/managedFields",
        "value": [{"manager": "kubectl-label", "operation": "Update"}],
    }
    # With no other manager, a single empty entry clears managedFields (an empty list would keep them).
    alone = {"metadata": {"resourceVersion": "1", "managedFields": [{"manager": "sluice"}]}}
    assert _release_patch(alone, "sluice")[-1]["value"] == [{}]


def test_a_release_asks_the_fence_before_each_patch_and_uses_the_clusters_timeout():
    """A release reads the object again after a failed resourceVersion test and patches once more. The
    fence was asked once, before the first: a pass that lost its lock meanwhile released, after its
    fresh read, the object the next pass had just applied. The patch also took the default timeout,
    not the cluster's, which the takeover's wait is sized by."""
    from kubernetes.client.exceptions import ApiException

    from gitops.cluster.client import Cluster

    class RefusingCore:
        timeouts: list[object] = []

        def patch_namespaced_config_map(self, name, namespace, body, **options):
            self.timeouts.append(options["_request_timeout"])
            raise ApiException(status=422, reason="the resourceVersion test failed")

    class LockLost(Exception):
        pass

    cluster = Cluster.__new__(Cluster)
    cluster._core, cluster.timeout = RefusingCore(), (1.0, 2.0)
    versions = iter(["7", "8", "9"])  # moved each time: a failed test, not a refusal of the patch as it is
    cluster.get_configmap = lambda namespace, name: {"metadata": {"resourceVersion": next(versions)}}
    asked: list[int] = []

    def fence() -> None:
        asked.append(1)
        if len(asked) > 1:
            raise LockLost

    with pytest.raises(LockLost):
        cluster.release_configmap("team-a", "app", field_manager="sluice", fence=fence)

    assert RefusingCore.timeouts == [(1.0, 2.0)], "one patch, with the cluster's timeout"
