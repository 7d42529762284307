"""A tree no bigger than a few pages can hold billions of directories: listing it must cost what the
bounds allow, not git's time limit on every poll."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from gitops.fetch import mirror as mirror_module
from gitops.fetch.mirror import GitMirror, TooManySkippedEntries

READ = ("sluice.yaml", "configmaps", "flags")


def git(repo: Path, *args: str, stdin: str = "") -> str:
    done = subprocess.run(
        ["git", f"--git-dir={repo}", *args], input=stdin, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def tree_of_empty_trees(repo: Path, *, fan_out: int = 200, depth: int = 4) -> str:
    """``configmaps/`` as ``fan_out ** depth`` directories and not one file (28 KiB of objects)."""
    tree = git(repo, "mktree")  # the empty tree
    for _ in range(depth):
        tree = git(repo, "mktree", stdin="".join(f"040000 tree {tree}\td{i:03d}\n" for i in range(fan_out)))
    return git(repo, "mktree", stdin=f"040000 tree {tree}\tconfigmaps\n")


@pytest.fixture
def bombed(tmp_path: Path) -> tuple[Path, str, str]:
    """A bare repository: a commit with a small configmaps/ directory, then one with the bomb."""
    repo = tmp_path / "mirror.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    blob = git(repo, "hash-object", "-w", "--stdin", stdin="apiVersion: v1\n")
    small = git(repo, "mktree", stdin=f"100644 blob {blob}\tapp.yaml\n")
    before = git(
        repo, "commit-tree", "-m", "small", git(repo, "mktree", stdin=f"040000 tree {small}\tconfigmaps\n")
    )
    after = git(repo, "commit-tree", "-m", "bomb", "-p", before, tree_of_empty_trees(repo))
    return repo, before, after


def test_a_tree_of_empty_trees_is_refused_at_once_not_listed_until_gits_time_limit(bombed, monkeypatch):
    """``ls-tree -r`` prints nothing for a directory, so a tree of empty trees passed every bound on
    records and ran until the time limit (60 s), on every poll, never rejected. Directories are records
    now, bounded like the symlinks and submodules a listing skips."""
    repo, _, commit = bombed
    monkeypatch.setattr(mirror_module, "LOCAL_TIMEOUT", 20.0)
    started = time.monotonic()
    with GitMirror(repo) as mirror, pytest.raises(TooManySkippedEntries, match="directories"):
        mirror.list_tree(commit, paths=READ, max_entries=20_001)
    assert time.monotonic() - started < 10, "refused as soon as the bound is passed"


def test_the_changes_up_to_such_a_tree_are_not_listed_either(bombed, monkeypatch):
    """An incremental load asks git what changed first; git prints nothing until it has compared it all,
    so the comparison gives up after a few seconds, and the whole tree's listing (which refuses the tree)
    comes next. Before, it ran until git's time limit and failed as a temporary error, on every poll."""
    repo, before, after = bombed
    monkeypatch.setattr(mirror_module, "LOCAL_TIMEOUT", 20.0)
    started = time.monotonic()
    with GitMirror(repo) as mirror:
        assert mirror.tree_changes(before, after, paths=READ, max_changes=1_000) is None
    assert time.monotonic() - started < mirror_module.COMPARE_TIMEOUT + 5


def test_directories_do_not_count_among_a_listings_files(bombed):
    repo, before, _ = bombed
    with GitMirror(repo) as mirror:
        assert list(mirror.list_tree(before, paths=READ, max_entries=10)) == ["configmaps/app.yaml"]
