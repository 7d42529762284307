"""GitMirror against real git repositories: local ones over file:// and one behind a real HTTP server.

None of these needs the stack; the HTTP server is ``git http-backend`` run as a
CGI script behind Basic authentication that accepts exactly one token.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from gitops.desired.revision import READ_PATHS
from gitops.errors import GitopsError, PermanentError, TemporaryError
from gitops.fetch import (
    MIRROR_REF_PREFIX,
    Credentials,
    FetchResult,
    GitMirror,
    ObjectNotFoundError,
    build_fetch_invocation,
)
from gitops.fetch.mirror import TreeFile
from gitops.fetch.objects import Unreadable

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Ada Lovelace",
    "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Sluice Tests",
    "GIT_COMMITTER_EMAIL": "tests@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def git(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    completed = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **GIT_IDENTITY, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return completed.stdout.strip()


@dataclass
class Upstream:
    """A repository to fetch from, changed by committing straight into it."""

    path: Path

    @classmethod
    def create(cls, path: Path) -> Upstream:
        path.mkdir(parents=True)
        git("init", "--quiet", "--initial-branch=main", cwd=path)
        return cls(path)

    @property
    def url(self) -> str:
        return self.path.as_uri()

    def commit(
        self, files: dict[str, str | bytes], message: str = "change", *, date: str | None = None
    ) -> str:
        for name, content in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content, encoding="utf-8")
        git("add", "--all", cwd=self.path)
        dates = {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date} if date else {}
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.path, env=dates)
        return self.head()

    def head(self, rev: str = "HEAD") -> str:
        return git("rev-parse", rev, cwd=self.path)


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    repo = Upstream.create(tmp_path / "upstream")
    repo.commit({"app/config.yaml": "replicas: 1\n", "README.md": "hello\n"}, "first")
    return repo


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[GitMirror]:
    with GitMirror(tmp_path / "mirrors" / "source-1") as opened:
        yield opened


# --- fetching ------------------------------------------------------------------------------------------


def test_first_fetch_creates_a_bare_mirror_with_only_the_private_ref(upstream, mirror):
    git("tag", "v1", cwd=upstream.path)
    git("branch", "other", cwd=upstream.path)

    result = mirror.fetch(upstream.url, "main")

    assert result.commit == upstream.head()
    assert result.previous is None
    assert result.forced is False
    assert git("rev-parse", "--is-bare-repository", cwd=mirror.path) == "true"
    # Neither tags nor other branches come along.
    refs = git("for-each-ref", "--format=%(refname)", cwd=mirror.path).splitlines()
    assert refs == [f"{MIRROR_REF_PREFIX}main"]


def test_an_incremental_fetch_reports_the_previous_tip(upstream, mirror):
    first = mirror.fetch(upstream.url, "main")
    new_head = upstream.commit({"app/config.yaml": "replicas: 2\n"}, "scale up")

    second = mirror.fetch(upstream.url, "main")

    assert second.previous == first.commit
    assert second.commit == new_head
    assert second.forced is False
    assert second.changed


def test_a_fetch_without_new_commits_changes_nothing(upstream, mirror):
    first = mirror.fetch(upstream.url, "main")

    again = mirror.fetch(upstream.url, "main")

    assert again.commit == again.previous == first.commit
    assert again.forced is False
    assert not again.changed


def test_a_force_push_is_detected(upstream, mirror):
    upstream.commit({"app/config.yaml": "replicas: 2\n"}, "to be rewritten")
    before = mirror.fetch(upstream.url, "main")
    git("reset", "--quiet", "--hard", "HEAD~1", cwd=upstream.path)
    rewritten = upstream.commit({"app/config.yaml": "replicas: 3\n"}, "rewritten")

    after = mirror.fetch(upstream.url, "main")

    assert after.previous == before.commit
    assert after.commit == rewritten
    assert after.forced is True


def test_a_fast_forward_of_several_commits_is_not_a_force_push(upstream, mirror):
    before = mirror.fetch(upstream.url, "main")
    upstream.commit({"app/config.yaml": "replicas: 2\n"}, "one")
    upstream.commit({"app/config.yaml": "replicas: 3\n"}, "two")  # the old tip is a grandparent

    after = mirror.fetch(upstream.url, "main")

    assert (after.previous, after.commit, after.forced) == (before.commit, upstream.head(), False)


def test_tips_are_read_from_packed_refs_too(upstream, mirror):
    """The mirror's refs are read from git's files; once git packs them, they are read from there."""
    first = mirror.fetch(upstream.url, "main")
    git("pack-refs", "--all", cwd=mirror.path)
    assert not (mirror.path / MIRROR_REF_PREFIX / "main").exists()

    assert mirror.fetch(upstream.url, "main") == FetchResult(first.commit, first.commit, False)
    git("pack-refs", "--all", cwd=mirror.path)
    new_head = upstream.commit({"README.md": "changed\n"}, "second")
    second = mirror.fetch(upstream.url, "main")
    assert (second.previous, second.commit, second.forced) == (first.commit, new_head, False)


def test_a_branch_that_names_an_annotated_tag_is_followed_by_its_commit(upstream, mirror):
    head = upstream.head()
    git("tag", "--annotate", "-m", "release", "v1", cwd=upstream.path)
    tag_object = upstream.head("refs/tags/v1")
    # git refuses to point a branch at a tag itself; a hand-edited (or a hostile) remote does not.
    (upstream.path / ".git" / "refs" / "heads" / "main").write_text(f"{tag_object}\n")

    first = mirror.fetch(upstream.url, "main")
    again = mirror.fetch(upstream.url, "main")

    assert first.commit == again.commit == head != tag_object
    assert (again.forced, mirror.commit_info(again.commit).sha) == (False, head)


def test_the_fetched_tip_comes_with_its_commit_info(upstream, mirror):
    head = upstream.commit({"README.md": "changed\n"}, "subject\n\nbody", date="2026-01-02T03:04:05Z")

    fetched = mirror.fetch(upstream.url, "main")

    info = mirror.commit_info(fetched.commit)
    with GitMirror(mirror.path) as fresh:  # what git log says when asked on its own
        assert fresh.commit_info(head) == info
    assert (info.sha, info.message) == (head, "subject\n\nbody\n")
    assert info.committed_at.isoformat() == "2026-01-02T03:04:05+00:00"


def test_a_commit_pushed_on_the_last_one_is_judged_as_git_log_judges_it_without_asking_git(
    upstream, mirror, monkeypatch
):
    first = mirror.fetch(upstream.url, "main").commit
    second = upstream.commit({"README.md": "one\n"}, "one")
    assert mirror.fetch(upstream.url, "main").commit == second
    upstream.commit({"README.md": "two\n"}, "two")
    fourth = upstream.commit({"README.md": "three\n"}, "three")
    assert mirror.fetch(upstream.url, "main").commit == fourth
    both = {"ada@example.com", "tests@example.com"}  # the author, and the committer

    with monkeypatch.context() as patched:
        patched.setattr(GitMirror, "_local", lambda *_: pytest.fail("git was asked for one commit"))
        assert mirror.commit_identities(second, since=first) == both

    # Two commits, or an unknown base: git log answers, as before, and agrees on the one commit.
    calls = []
    real_local = GitMirror._local
    monkeypatch.setattr(GitMirror, "_local", lambda self, call: calls.append(call) or real_local(self, call))
    assert mirror.commit_identities(fourth, since=second) == both
    monkeypatch.setattr("gitops.fetch.mirror._COMMIT_FACTS", {})
    with GitMirror(mirror.path) as fresh:
        assert fresh.commit_identities(second, since=first) == both
    assert len(calls) == 2


def test_a_stale_fetch_head_does_not_fool_the_fetch(upstream, mirror):
    old = mirror.fetch(upstream.url, "main").commit
    (mirror.path / "FETCH_HEAD").write_text(f"{old}\t\tbranch 'main' of somewhere\n")
    new_head = upstream.commit({"README.md": "changed\n"}, "second")

    result = mirror.fetch(upstream.url, "main")

    assert result.commit == new_head
    assert (mirror.path / "FETCH_HEAD").read_text().startswith(old)  # never written, never read


def test_branch_given_as_a_full_ref_is_accepted(upstream, mirror):
    assert mirror.fetch(upstream.url, "refs/heads/main").commit == upstream.head()


def test_a_fetch_is_logged_with_both_tips(upstream, mirror, caplog):
    with caplog.at_level(logging.INFO, logger="gitops.fetch"):
        result = mirror.fetch(upstream.url, "main")

    assert "branch 'main'" in caplog.text
    assert result.commit in caplog.text
    assert "(new)" in caplog.text


# --- fetch failures ------------------------------------------------------------------------------------


def test_a_missing_branch_is_permanent(upstream, mirror):
    with pytest.raises(PermanentError, match="branch not found") as raised:
        mirror.fetch(upstream.url, "does-not-exist")
    assert not isinstance(raised.value, TemporaryError)
    assert "does-not-exist" in str(raised.value)


def test_a_nonexistent_repository_is_permanent(tmp_path, mirror):
    with pytest.raises(PermanentError, match="repository not found"):
        mirror.fetch((tmp_path / "nowhere").as_uri(), "main")


@pytest.mark.parametrize("branch", ["", "two words", "bad..name", "-option", "trailing.lock"])
def test_an_invalid_branch_name_is_permanent(upstream, mirror, branch):
    with pytest.raises(PermanentError, match="invalid branch name"):
        mirror.fetch(upstream.url, branch)


def test_an_unknown_protocol_is_permanent(mirror):
    with pytest.raises(PermanentError, match="malformed URL"):
        mirror.fetch("htps://example.invalid/repo.git", "main")


def test_a_refused_connection_is_temporary(mirror):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port any more.
    with pytest.raises(TemporaryError, match="network error"):
        mirror.fetch(f"http://127.0.0.1:{port}/repo.git", "main")


def test_a_server_that_never_answers_times_out_as_temporary(mirror):
    # The kernel completes the handshake for the backlog, but nobody ever answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        with pytest.raises(TemporaryError, match="timed out after 1s"):
            mirror.fetch(f"http://127.0.0.1:{port}/repo.git", "main", timeout=1)


# --- reading ------------------------------------------------------------------------------------------


@pytest.fixture
def tree(upstream: Upstream) -> Upstream:
    upstream.commit(
        {
            "deploy/base/app.yaml": "kind: ConfigMap\n",
            "deploy/base/nested/deeper/flags.json": '{"flags": {}}\n',
            "deploy/overlays/prod/with space.yaml": "space: true\n",
            "deploy/overlays/prod/résumé-日本.yaml": "unicode: true\n",
            "deploy/binary.bin": bytes(range(256)),
        },
        "tree",
    )
    os.symlink("base/app.yaml", upstream.path / "deploy" / "link.yaml")
    # A submodule is a gitlink entry in the tree; adding one needs no second repository.
    git(
        "update-index", "--add", "--cacheinfo", f"160000,{upstream.head()},deploy/vendored", cwd=upstream.path
    )
    upstream.commit({}, "symlink and submodule")
    return upstream


def test_list_files_returns_every_blob_with_its_sha(tree, mirror):
    commit = mirror.fetch(tree.url, "main").commit

    files = mirror.list_files(commit)

    assert set(files) == {
        "README.md",
        "app/config.yaml",
        "deploy/base/app.yaml",
        "deploy/base/nested/deeper/flags.json",
        "deploy/overlays/prod/with space.yaml",
        "deploy/overlays/prod/résumé-日本.yaml",
        "deploy/binary.bin",
    }
    assert files["deploy/base/app.yaml"] == tree.head("HEAD:deploy/base/app.yaml")


@pytest.mark.parametrize("subpath", ["deploy", "deploy/", "/deploy", "./deploy"])
def test_list_files_under_a_subpath_is_relative_to_it(tree, mirror, subpath):
    commit = mirror.fetch(tree.url, "main").commit

    files = mirror.list_files(commit, subpath)

    assert set(files) == {
        "base/app.yaml",
        "base/nested/deeper/flags.json",
        "overlays/prod/with space.yaml",
        "overlays/prod/résumé-日本.yaml",
        "binary.bin",
    }


def test_list_files_of_a_nested_subpath(tree, mirror):
    commit = mirror.fetch(tree.url, "main").commit

    assert list(mirror.list_files(commit, "deploy/base/nested")) == ["deeper/flags.json"]


def test_list_files_of_a_missing_subpath_is_an_error_not_an_empty_tree(tree, mirror):
    commit = mirror.fetch(tree.url, "main").commit

    with pytest.raises(PermanentError, match="does not exist"):
        mirror.list_files(commit, "nope")
    with pytest.raises(PermanentError, match="not a directory"):
        mirror.list_files(commit, "README.md")
    with pytest.raises(PermanentError, match="leaves the repository"):
        mirror.list_files(commit, "deploy/../..")


def test_list_files_of_an_unknown_commit(tree, mirror):
    mirror.fetch(tree.url, "main")

    with pytest.raises(ObjectNotFoundError):
        mirror.list_files("0" * 40)


def _listing_changes(mirror: GitMirror, old: str, new: str, subpath: str, paths: tuple[str, ...]) -> dict:
    """What two whole listings say changed: what ``tree_changes`` must report without listing them."""
    before = mirror.list_tree(old, subpath, paths=paths)
    after = mirror.list_tree(new, subpath, paths=paths)
    return {
        path: after.get(path) for path in before.keys() | after.keys() if before.get(path) != after.get(path)
    }


@pytest.mark.parametrize("paths", [(), ("base", "overlays", "link.yaml")])
def test_tree_changes_are_what_two_whole_listings_differ_by(tree, mirror, paths):
    old = mirror.fetch(tree.url, "main").commit
    (tree.path / "deploy" / "binary.bin").unlink()  # gone
    (tree.path / "deploy" / "link.yaml").unlink()  # a symlink becomes a file
    (tree.path / "deploy" / "base" / "nested" / "deeper" / "flags.json").unlink()
    os.symlink("../app.yaml", tree.path / "deploy" / "base" / "nested" / "deeper" / "flags.json")  # and back
    tree.commit(
        {
            "deploy/base/app.yaml": "kind: ConfigMap\ndata: {}\n",  # changed
            "deploy/link.yaml": "now a file\n",
            "deploy/overlays/prod/*.yaml": "a name git would read as a pattern\n",  # new
            "deploy/overlays/-dash.yaml": "a name like an option\n",
            "README.md": "outside the subpath\n",
        },
        "many kinds of change",
    )
    new = mirror.fetch(tree.url, "main").commit

    changes = mirror.tree_changes(old, new, "deploy", paths=paths, max_changes=100)

    assert changes == _listing_changes(mirror, old, new, "deploy", paths)
    assert changes["base/app.yaml"] == TreeFile(tree.head("HEAD:deploy/base/app.yaml"), 25)
    assert changes["overlays/prod/*.yaml"] is not None
    assert changes["base/nested/deeper/flags.json"] is None  # a symlink is not a file Sluice reads
    assert mirror.tree_changes(old, old, "deploy", paths=paths, max_changes=100) == {}


def test_tree_changes_never_put_a_path_on_a_command_line(upstream, mirror):
    """A path longer than one argument may be (128 KiB on Linux): git stores it, and a change to it
    must be read as any other, not fail the pass before the whole tree could be loaded."""
    old = mirror.fetch(upstream.url, "main").commit
    content = b"kind: ConfigMap\n"
    blob = (
        subprocess.run(
            ["git", "hash-object", "-w", "--stdin"],
            input=content,
            cwd=upstream.path,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )
    long_path = "configmaps/" + "/".join(["d" * 200] * 700) + "/x.yaml"
    assert len(long_path) > 128 * 1024
    subprocess.run(
        ["git", "update-index", "--add", "--index-info"],
        input=f"100644 {blob}\t{long_path}\n".encode(),
        cwd=upstream.path,
        check=True,
    )
    git("commit", "--quiet", "-m", "a very long path", cwd=upstream.path)
    new = mirror.fetch(upstream.url, "main").commit

    changes = mirror.tree_changes(old, new, paths=("configmaps",), max_changes=10)

    assert changes == {long_path: TreeFile(blob, len(content))}


def test_tree_changes_give_up_past_the_cap_or_without_the_old_tree(tree, mirror):
    old = mirror.fetch(tree.url, "main").commit
    tree.commit({f"deploy/many/{index}.yaml": f"{index}\n" for index in range(20)}, "twenty files")
    new = mirror.fetch(tree.url, "main").commit

    assert len(mirror.tree_changes(old, new, "deploy", max_changes=21) or {}) == 20
    assert mirror.tree_changes(old, new, "deploy", max_changes=20) is None  # list the whole tree instead
    assert mirror.tree_changes(old, new, "deploy/many", max_changes=100) is None  # not a directory at old


def _by_git(mirror: GitMirror, *args, **kwargs):
    """``tree_changes`` as ``git diff-tree`` answers it: the comparison in process refused."""

    def refuse(*_args, **_kwargs):
        raise Unreadable("compared by git in this test")

    real, mirror._objects.tree_changes = mirror._objects.tree_changes, refuse
    try:
        return mirror.tree_changes(*args, **kwargs)
    finally:
        mirror._objects.tree_changes = real


def _random_history(upstream: Upstream, seed: int, commits: int) -> list[str]:
    """Commits of random files, directories, symlinks and executable bits under a few names that test
    git's order and pathspecs ("a" and "a.txt", "a0", a name a directory on one side, a file on the other)."""
    import random
    import shutil

    chance = random.Random(seed)  # noqa: S311 - a repeatable history, not a secret
    names = ["a", "b", "a.txt", "a0", "configmaps", "flags", "sluice.yaml", "x-y", "é"]
    made = []
    for _ in range(commits):
        for _ in range(chance.randint(1, 6)):
            target = upstream.path.joinpath(*(chance.choice(names) for _ in range(chance.randint(1, 4))))
            with contextlib.suppress(OSError):
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
                roll = chance.random()
                if roll < 0.6:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(str(chance.random()))
                    target.chmod(0o755 if chance.random() < 0.25 else 0o644)
                elif roll < 0.75:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink("somewhere", target)
        made.append(upstream.commit({}, "random change"))
    return made


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tree_changes_read_in_process_are_what_git_diff_tree_reports(upstream, mirror, seed):
    import random

    commits = _random_history(upstream, seed, 10)
    mirror.fetch(upstream.url, "main")
    chance = random.Random(seed)  # noqa: S311 - a repeatable history, not a secret
    answered = 0
    for _ in range(80):
        old, new = chance.choice(commits), chance.choice(commits)
        subpath = chance.choice(["", "a", "a/b", "configmaps"])
        paths = chance.choice([(), READ_PATHS, ("a",), ("a/b", "x-y"), ("a.txt",)])
        cap = chance.choice([3, 100])
        ours = mirror.tree_changes(old, new, subpath, paths=paths, max_changes=cap)
        theirs = _by_git(mirror, old, new, subpath, paths=paths, max_changes=cap)
        assert ours == theirs, (old, new, subpath, paths, cap)
        assert list(ours or {}) == list(theirs or {}), "in git's order"
        answered += ours is not None
    assert answered >= 10, "the histories compared some trees, not only refusals"


def test_tree_changes_start_no_git_process_for_small_trees(tree, mirror, monkeypatch):
    old = mirror.fetch(tree.url, "main").commit
    tree.commit({"deploy/base/app.yaml": "kind: ConfigMap\ndata: {}\n"}, "one file")
    new = mirror.fetch(tree.url, "main").commit
    blob = tree.head("HEAD:deploy/base/app.yaml")

    def no_process(*args, **kwargs):
        raise AssertionError(f"git was started: {args[0]}")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    changes = mirror.tree_changes(old, new, "deploy", paths=(), max_changes=10)
    assert changes == {"base/app.yaml": TreeFile(blob, 25)}


@pytest.mark.parametrize(("bound", "value"), [("MAX_COMPARED_ENTRIES", 20), ("MAX_COMPARED_BYTES", 400)])
def test_tree_changes_past_what_is_read_in_process_are_left_to_git(tree, mirror, monkeypatch, bound, value):
    from gitops.fetch import objects

    old = mirror.fetch(tree.url, "main").commit
    tree.commit({f"deploy/many/{index}.yaml": f"{index}\n" for index in range(30)}, "thirty files")
    new = mirror.fetch(tree.url, "main").commit
    expected = _by_git(mirror, old, new, "deploy", paths=(), max_changes=100)
    monkeypatch.setattr(objects, bound, value)
    started = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a[0]) or real_popen(*a, **k))

    assert mirror.tree_changes(old, new, "deploy", paths=(), max_changes=100) == expected
    assert len(expected or {}) == 30
    assert any("diff-tree" in argv for argv in started), "git compared them"


def test_read_blob_and_read_blobs_return_the_exact_bytes(tree, mirror):
    commit = mirror.fetch(tree.url, "main").commit
    files = mirror.list_files(commit, "deploy")

    assert mirror.read_blob(files["base/app.yaml"]) == b"kind: ConfigMap\n"
    contents = mirror.read_blobs(files.values())
    assert contents[files["binary.bin"]] == bytes(range(256))
    assert contents[files["overlays/prod/résumé-日本.yaml"]] == b"unicode: true\n"
    assert len(contents) == len(set(files.values()))
    assert mirror.read_blobs([]) == {}


def test_reads_see_objects_of_later_fetches(upstream, mirror):
    first = mirror.fetch(upstream.url, "main").commit
    assert mirror.read_blob(mirror.list_files(first)["README.md"]) == b"hello\n"  # starts cat-file
    second = upstream.commit({"README.md": "second\n"}, "second")

    mirror.fetch(upstream.url, "main")

    assert mirror.read_blob(mirror.list_files(second)["README.md"]) == b"second\n"


def test_a_missing_blob_is_reported_and_the_reader_recovers(upstream, mirror):
    commit = mirror.fetch(upstream.url, "main").commit
    readme = mirror.list_files(commit)["README.md"]

    with pytest.raises(ObjectNotFoundError, match="not in the mirror"):
        mirror.read_blobs([readme, "1" * 40])
    with pytest.raises(PermanentError, match="not a blob"):
        mirror.read_blob(commit)
    assert mirror.read_blob(readme) == b"hello\n"


def test_reading_before_any_fetch(mirror):
    with pytest.raises(ObjectNotFoundError, match="fetch first"):
        mirror.list_files("a" * 40)


def test_read_blobs_is_batched_for_many_files(tmp_path, mirror):
    many = Upstream.create(tmp_path / "many")
    many.commit({f"dir{i % 10}/file-{i}.yaml": f"value: {i}\n" for i in range(2000)}, "many")
    commit = mirror.fetch(many.url, "main").commit

    files = mirror.list_files(commit)
    contents = mirror.read_blobs(files.values())

    assert len(files) == 2000
    assert contents[files["dir7/file-1237.yaml"]] == b"value: 1237\n"


def test_commit_info(upstream, mirror):
    sha = upstream.commit(
        {"README.md": "again\n"}, "Scale the app\n\nBecause load.", date="2024-05-01T12:00:00+02:00"
    )
    mirror.fetch(upstream.url, "main")

    info = mirror.commit_info(sha)

    assert info.sha == sha
    assert info.author_name == "Ada Lovelace"
    assert info.author_email == "ada@example.com"
    assert info.message == "Scale the app\n\nBecause load.\n"
    assert info.committed_at == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert info.committed_at.utcoffset() is not None
    assert info.committed_at.tzinfo == UTC


def test_commit_info_of_a_short_sha_and_of_a_non_commit(upstream, mirror):
    sha = mirror.fetch(upstream.url, "main").commit

    assert mirror.commit_info(sha[:12]).sha == sha
    with pytest.raises(PermanentError, match="not a commit"):
        mirror.commit_info(mirror.list_files(sha)["README.md"])
    with pytest.raises(ObjectNotFoundError):
        mirror.commit_info("2" * 40)


# --- a real HTTP server with Basic authentication -----------------------------------------------------

TOKEN = "s3cr3t-t0ken-7f9c2e"


@dataclass
class GitHttpServer:
    """``git http-backend`` behind Basic auth; what it saw is recorded for the tests."""

    project_root: Path
    expected_authorization: str
    url: str = ""
    rejected: int = 0
    served: int = 0
    client_argvs: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record_client_processes(self) -> None:
        """While a request is served, its client is running: record every git process's argv."""
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                argv = cmdline.read_bytes()
                if b"git" in argv:
                    with self.lock:
                        self.client_argvs.append(argv)


def make_handler(state: GitHttpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 30  # a stuck client cannot hold a server thread for longer

        def do_GET(self) -> None:
            self.serve()

        def do_POST(self) -> None:
            self.serve()

        def log_message(self, format: str, *args: object) -> None:  # quiet: failures surface as assertions
            pass

        def serve(self) -> None:
            if self.headers.get("Authorization") != state.expected_authorization:
                with state.lock:
                    state.rejected += 1
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="sluice-test"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            state.record_client_processes()
            path, _, query = self.path.partition("?")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            env = {
                "PATH": os.environ["PATH"],
                "GIT_PROJECT_ROOT": str(state.project_root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "GATEWAY_INTERFACE": "CGI/1.1",
                "SERVER_PROTOCOL": "HTTP/1.0",
                "REQUEST_METHOD": self.command,
                "PATH_INFO": unquote(path),
                "QUERY_STRING": query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                "HTTP_GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                "REMOTE_USER": "x-access-token",
                "REMOTE_ADDR": self.client_address[0],
            }
            backend = subprocess.run(
                ["git", "http-backend"], input=body, env=env, capture_output=True, timeout=30, check=False
            )
            head, _, payload = backend.stdout.partition(b"\r\n\r\n")
            headers = [line.split(":", 1) for line in head.decode("latin-1").split("\r\n") if ":" in line]
            status = next((int(value.split()[0]) for name, value in headers if name.lower() == "status"), 200)
            with state.lock:
                state.served += 1
            self.send_response(status)
            for name, value in headers:
                if name.lower() != "status":
                    self.send_header(name, value.strip())
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


@pytest.fixture
def git_http_server(tmp_path: Path, upstream: Upstream) -> Iterator[GitHttpServer]:
    root = tmp_path / "served"
    root.mkdir()
    git("clone", "--quiet", "--bare", str(upstream.path), str(root / "repo.git"), cwd=tmp_path)
    basic = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    state = GitHttpServer(project_root=root, expected_authorization=f"Basic {basic}")
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_the_right_token_fetches_over_http(git_http_server, upstream, mirror):
    result = mirror.fetch(f"{git_http_server.url}/repo.git", "main", Credentials(token=TOKEN))

    assert result.commit == upstream.head()
    assert git_http_server.served >= 2  # the ref advertisement and the pack
    assert mirror.read_blob(mirror.list_files(result.commit)["README.md"]) == b"hello\n"


def test_the_token_is_never_in_the_argv_of_a_running_git(git_http_server, mirror):
    mirror.fetch(f"{git_http_server.url}/repo.git", "main", Credentials(token=TOKEN))

    # Recorded while the server answered, i.e. while git and git-remote-http were running.
    assert any(b"git-remote-http" in argv for argv in git_http_server.client_argvs)
    assert all(TOKEN.encode() not in argv for argv in git_http_server.client_argvs)


def test_the_invocation_passes_the_token_only_through_the_environment(tmp_path):
    invocation = build_fetch_invocation(
        tmp_path / "m", "https://git.example.com/org/repo.git", "main", Credentials(token=TOKEN)
    )

    assert not any(TOKEN in arg for arg in invocation.argv)
    basic = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    assert not any(basic in arg for arg in invocation.argv)
    headers = {
        invocation.env[f"GIT_CONFIG_KEY_{i}"]: invocation.env[f"GIT_CONFIG_VALUE_{i}"]
        for i in range(int(invocation.env["GIT_CONFIG_COUNT"]))
    }
    assert headers["http.https://git.example.com/.extraHeader"] == f"Authorization: Basic {basic}"
    assert invocation.env["GIT_TERMINAL_PROMPT"] == "0"


def test_a_wrong_token_is_permanent_and_never_shown(git_http_server, mirror, caplog):
    wrong = "wr0ng-t0ken-123456"
    with caplog.at_level(logging.DEBUG, logger="gitops.fetch"), pytest.raises(PermanentError) as raised:
        mirror.fetch(f"{git_http_server.url}/repo.git", "main", Credentials(token=wrong))

    message = str(raised.value)
    assert "authentication failed" in message
    assert wrong not in message
    assert base64.b64encode(f"x-access-token:{wrong}".encode()).decode() not in message
    assert wrong not in caplog.text
    assert wrong not in repr(raised.value)
    assert git_http_server.rejected >= 1


def test_a_redirect_is_never_followed(git_http_server, mirror):
    """A Git host (or whoever answers for it) that redirects the fetch sends the worker nowhere: git
    followed the first redirect to any host (the token's header, scoped to the source's origin, stayed
    behind), so the answer chose a host, an in-cluster service or a metadata address, that the worker
    asked (before 2026-12-07). The failure is permanent and says what to do."""

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", f"{git_http_server.url}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    redirector = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=redirector.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with pytest.raises(GitopsError) as raised:
            mirror.fetch(
                f"http://127.0.0.1:{redirector.server_address[1]}/repo.git", "main", Credentials(token=TOKEN)
            )
    finally:
        redirector.shutdown()
        redirector.server_close()
    assert git_http_server.rejected == 0 and git_http_server.served == 0, "the redirect was followed"
    assert isinstance(raised.value, PermanentError)
    assert "redirected the fetch elsewhere" in str(raised.value)
    # git does not say where: Sluice asks the same URL itself, following nothing, and names it.
    assert f"it points to {git_http_server.url}/repo.git " in str(raised.value)
    assert git_http_server.rejected == 0 and git_http_server.served == 0, "nothing asked of the other host"
    assert TOKEN not in str(raised.value)


def test_a_source_without_credentials_does_not_fetch_with_the_worker_accounts_netrc(
    git_http_server, mirror, tmp_path, monkeypatch
):
    """curl reads ~/.netrc for any host git asks: a source registered without credentials fetched with
    whatever the worker's account holds for its host, past the references an administrator may name
    (SLUICE_CREDENTIALS_ENV_PREFIX, SLUICE_CREDENTIALS_DIRS) (before 2026-12-07)."""
    home = tmp_path / "worker-home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text(f"machine 127.0.0.1 login x-access-token password {TOKEN}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(home))

    with pytest.raises(PermanentError, match="authentication failed"):
        mirror.fetch(f"{git_http_server.url}/repo.git", "main")
    assert git_http_server.served == 0


def test_no_credentials_is_permanent(git_http_server, mirror):
    with pytest.raises(PermanentError, match="authentication failed"):
        mirror.fetch(f"{git_http_server.url}/repo.git", "main")
    assert git_http_server.served == 0


def test_a_missing_repository_over_http_is_permanent(git_http_server, mirror):
    with pytest.raises(PermanentError, match="repository not found"):
        mirror.fetch(f"{git_http_server.url}/missing.git", "main", Credentials(token=TOKEN))


def test_credentials_in_the_url_are_refused(git_http_server, mirror):
    url = git_http_server.url.replace("http://", f"http://x-access-token:{TOKEN}@") + "/repo.git"

    with pytest.raises(PermanentError, match="embeds credentials") as raised:
        mirror.fetch(url, "main")
    assert TOKEN not in str(raised.value)
    assert git_http_server.served == git_http_server.rejected == 0
