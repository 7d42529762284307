"""Which revisions a preview may ask for (gitops/fetch/refs.py): only refspecs Sluice builds reach git."""

from __future__ import annotations

import subprocess

import pytest

from gitops.fetch.refs import (
    ACCEPTED_FORMS,
    MAX_REVISION_LENGTH,
    InvalidRevision,
    RevisionKind,
    parse_revision,
)


@pytest.mark.parametrize(
    ("text", "kind", "normalised"),
    [
        ("refs/heads/main", RevisionKind.BRANCH, "refs/heads/main"),
        ("refs/heads/feature/new-checkout", RevisionKind.BRANCH, "refs/heads/feature/new-checkout"),
        ("refs/tags/v1.2.3", RevisionKind.TAG, "refs/tags/v1.2.3"),
        ("refs/pull/7/head", RevisionKind.PULL_REQUEST, "refs/pull/7/head"),
        ("refs/merge-requests/1234/head", RevisionKind.MERGE_REQUEST, "refs/merge-requests/1234/head"),
        ("  refs/pull/7/head\n", RevisionKind.PULL_REQUEST, "refs/pull/7/head"),
        ("3f2a9c1", RevisionKind.COMMIT, "3f2a9c1"),
        ("3F2A9C1D" * 5, RevisionKind.COMMIT, "3f2a9c1d" * 5),
        ("ab" * 32, RevisionKind.COMMIT, "ab" * 32),  # SHA-256
    ],
)
def test_the_accepted_forms(text: str, kind: RevisionKind, normalised: str):
    requested = parse_revision(text)
    assert (requested.kind, requested.text) == (kind, normalised)
    assert requested.refspec("refs/sluice/previews/x") == f"+{normalised}:refs/sluice/previews/x"


def test_only_a_full_commit_id_can_be_fetched_from_the_remote():
    assert parse_revision("a" * 40).is_full_commit
    assert parse_revision("a" * 64).is_full_commit
    assert not parse_revision("a" * 12).is_full_commit
    assert not parse_revision("refs/heads/main").is_full_commit


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "HEAD",
        "main~1",
        "refs/heads/main~1",
        "refs/heads/main^",
        "refs/heads/a..b",
        "refs/heads/.hidden",
        "refs/heads/x.lock",
        "refs/heads/x/",
        "refs/heads/x.",
        "refs/heads/",
        "refs/heads//x",
        "refs/heads/@{-1}",
        "refs/heads/a b",
        "refs/heads/a:b",
        "refs/heads/a*",
        "refs/heads/a\\b",
        "refs/heads/a\x00b",
        "refs/heads/a\nb",
        "refs/pull/7/merge",
        "refs/pull/07/head",
        "refs/pull/0/head",
        "refs/pull/x/head",
        "refs/pull/12345678901/head",
        "refs/merge-requests/7/merge",
        "refs/remotes/origin/main",
        "refs/sluice/heads/main",
        "refs/notes/commits",
        "+refs/heads/main:refs/heads/evil",
        "refs/heads/main:refs/sluice/heads/main",
        "--upload-pack=touch /tmp/x",
        "-o",
        "abc123",  # six hex digits: too short to name a commit
        "a" * 65,
        "g" * 40,
        "refs/heads/" + "a" * MAX_REVISION_LENGTH,
    ],
)
def test_anything_else_is_refused_before_git_runs(text: str):
    with pytest.raises(InvalidRevision) as refused:
        parse_revision(text)
    message = str(refused.value)
    assert len(message) < 600
    assert "\n" not in message and "\x00" not in message


def test_a_bare_name_gets_a_hint_and_other_refusals_list_the_accepted_forms():
    with pytest.raises(
        InvalidRevision, match=r"use refs/heads/main for a branch or refs/tags/main for a tag"
    ):
        parse_revision("main")
    with pytest.raises(InvalidRevision) as refused:
        parse_revision("refs/pull/7/merge")
    assert (
        str(refused.value)
        == f"'refs/pull/7/merge' is not a revision Sluice can preview: use {ACCEPTED_FORMS}"
    )


@pytest.mark.parametrize(
    "name",
    ["main", "feature/x", "release-1.2", "a.b/c_d", "x@y", "UPPER", "ü-nicode", "a/b/c/d/e/f", "-dash"],
)
def test_branch_names_git_accepts_are_accepted(name: str):
    checked = subprocess.run(["git", "check-ref-format", f"refs/heads/{name}"], check=False)
    assert checked.returncode == 0, name
    assert parse_revision(f"refs/heads/{name}").text == f"refs/heads/{name}"


@pytest.mark.parametrize(
    "name", ["a..b", ".x", "x.lock", "x/", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[", "a@{1}"]
)
def test_branch_names_git_refuses_are_refused(name: str):
    checked = subprocess.run(["git", "check-ref-format", f"refs/heads/{name}"], check=False)
    assert checked.returncode != 0, name
    with pytest.raises(InvalidRevision):
        parse_revision(f"refs/heads/{name}")
