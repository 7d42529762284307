"""A commit whose tree is not shaped as Sluice reads it is a rejected revision, not a failing Git host.

Repository content is a pusher's: the source's path gone or made a file, symlink or submodule, a
``sluice.yaml`` that is a symlink, submodule or directory, or a file's tree entry naming a tree, must
each reject the revision with an error naming the path, as any invalid file does. Before, the first
escaped as a PermanentError (no rejection recorded, the source backed off as if Git were failing), the
second validated the revision under the default policy without a word, and the third named no file.
Real git, in a temporary bare repository read as the mirror, without a database.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings

from gitops import caches
from gitops.desired.errors import RevisionRejected, ValidationError
from gitops.desired.revision import READ_PATHS, DesiredState
from gitops.errors import PermanentError
from gitops.fetch import revisions
from gitops.fetch.mirror import (
    GitMirror,
    NotABlob,
    NotARegularFile,
    ObjectNotFoundError,
    RepositoryShapeError,
    SourcePathMissing,
    SourcePathNotADirectory,
)
from gitops.fetch.objects import ObjectStore
from gitops.models import Revision, Source

POLICY = b"targets:\n  namespaces: [team-a]\nallowedNamespaces: ['team-*']\nprune: true\n"
APP = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  LOG_LEVEL: info\n"
GITLINK = "1" * 40  # a submodule's commit, never in the repository (as a submodule's is not)
SOURCE_ID = 990_001  # the per-process caches are keyed by it: dropped after each test
KNOWN = frozenset({settings.SLUICE_CLUSTER_NAME})

Entry = tuple[str, str]  # (mode, object id)
Rejections = list[RevisionRejected]
Makes = Callable[["Repo"], Entry]


GOOD = {"sluice.yaml": POLICY}
# commit-tree needs an identity, and nothing of the user's configuration may change what git writes.
GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Ada",
    "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Ada",
    "GIT_COMMITTER_EMAIL": "ada@example.com",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str, stdin: bytes = b"") -> str:
    done = subprocess.run(
        ["git", f"--git-dir={repo}", *args], input=stdin, capture_output=True, check=True, env=GIT_ENV
    )
    return done.stdout.decode().strip()


class Repo:
    """A bare repository written with git's plumbing, so that any tree can be made, one git would not."""

    def __init__(self, path: Path) -> None:
        subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True, env=GIT_ENV)
        self.path = path

    def blob(self, content: bytes) -> Entry:
        return "100644", git(self.path, "hash-object", "-w", "--stdin", stdin=content)

    def link(self, target: str) -> Entry:
        return "120000", git(self.path, "hash-object", "-w", "--stdin", stdin=target.encode())

    def tree(self, entries: dict[str, Entry | bytes]) -> Entry:
        """A directory of ``entries`` (bytes: a regular file), written as git writes one."""
        lines = []
        for name, entry in entries.items():
            mode, object_id = self.blob(entry) if isinstance(entry, bytes) else entry
            kind = {"040000": "tree", "160000": "commit"}.get(mode, "blob")
            lines.append(f"{mode} {kind} {object_id}\t{name}\n")
        return "040000", git(self.path, "mktree", "--missing", stdin="".join(lines).encode())

    def raw_tree(self, entries: dict[str, Entry]) -> Entry:
        """A tree object as given, modes unchecked: git's own commands refuse a mode that lies."""
        # Git's order: by name, a directory's as if it ended in "/" (none here are directories).
        body = b"".join(
            f"{int(mode, 8):o} {name}".encode() + b"\0" + bytes.fromhex(object_id)
            for name, (mode, object_id) in sorted(entries.items())
        )
        return "040000", git(
            self.path, "hash-object", "-w", "-t", "tree", "--literally", "--stdin", stdin=body
        )

    def commit(self, root: Entry, *parents: str) -> str:
        return git(
            self.path, "commit-tree", "-m", "change", *(arg for p in parents for arg in ("-p", p)), root[1]
        )


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "mirror.git")


@pytest.fixture(params=["libgit2", "git"])
def loaded(
    repo: Repo, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[Rejections]:
    """``revision_desired_state`` reading ``repo`` as the source's mirror; the rejections it records.
    Blobs are read and trees compared in process (libgit2) or, where it cannot, by git: both ways."""
    if request.param == "git":
        monkeypatch.setattr(ObjectStore, "usable", property(lambda self: False))
    rejected: Rejections = []
    monkeypatch.setattr(revisions, "mirror_for", lambda source: GitMirror(repo.path))
    monkeypatch.setattr(revisions, "revision_reject", lambda source, revision, found: rejected.append(found))
    monkeypatch.setattr(revisions, "known_cluster_names", lambda: KNOWN)  # previews ask the database
    caches.drop(SOURCE_ID)
    yield rejected
    caches.drop(SOURCE_ID)


def source(path: str = "deploy") -> Source:
    return Source(
        pk=SOURCE_ID,
        name="shapes",
        url="file:///nowhere",
        path=path,
        allowed_namespaces=["team-*", "default"],  # "default": where the default policy writes
        target_clusters=[settings.SLUICE_CLUSTER_NAME],
    )


def desired_state(commit: str, path: str = "deploy") -> DesiredState | None:
    # Valid already: a revision found valid writes its row, and this test has no database.
    revision = Revision(pk=1, commit=commit, outcome=Revision.Outcome.VALID)
    return revisions.revision_desired_state(source(path), revision, known_clusters=KNOWN)


def only_error(rejected: Rejections) -> ValidationError:
    (found,) = rejected
    (error,) = found.errors
    return error


def deploy_with(repo: Repo, entries: dict[str, Entry | bytes]) -> str:
    """A commit whose ``deploy/`` directory holds ``entries``, next to a README."""
    return repo.commit(repo.tree({"README.md": b"hello\n", "deploy": repo.tree(entries)}))


def good_deploy(repo: Repo) -> dict[str, Entry | bytes]:
    return {**GOOD, "configmaps": repo.tree({"app.yaml": APP})}


# -- the source's path -----------------------------------------------------------------------------


def test_a_valid_commit_loads_with_its_policy(repo: Repo, loaded: Rejections) -> None:
    desired = desired_state(deploy_with(repo, good_deploy(repo)))
    assert desired is not None and desired.policy.prune
    assert loaded == []


@pytest.mark.parametrize(
    ("deploy", "kind"),
    [
        (lambda repo: repo.blob(b"not a directory\n"), "a file"),
        (lambda repo: repo.link("elsewhere"), "a symlink"),
        (lambda repo: ("160000", GITLINK), "a submodule"),
    ],
    ids=["file", "symlink", "submodule"],
)
def test_a_source_path_that_is_not_a_directory_rejects_the_revision_naming_it(
    repo: Repo, loaded: Rejections, deploy: Makes, kind: str
) -> None:
    """It escaped revision_desired_state as a PermanentError: outside reconcile's try block, so the
    revision was never rejected, and the source backed off as if its Git host failed."""
    commit = repo.commit(repo.tree({"README.md": b"hello\n", "deploy": deploy(repo)}))

    assert desired_state(commit) is None
    error = only_error(loaded)
    assert (error.file, error.line, error.field) == ("deploy", None, "")
    assert error.message.startswith(f"the source's path is {kind} in this commit, not a directory; ")
    assert str(error).startswith(f"deploy: the source's path is {kind} in this commit, not a directory")


@pytest.mark.parametrize("path", ["elsewhere", "deploy/nested", "README.md/below"])
def test_a_source_path_gone_from_the_commit_rejects_the_revision(
    repo: Repo, loaded: Rejections, path: str
) -> None:
    commit = deploy_with(repo, good_deploy(repo))

    assert desired_state(commit, path) is None
    error = only_error(loaded)
    assert (error.file, error.line, error.field) == (path, None, "")
    assert error.message.startswith("the source's path does not exist in this commit; ")


def test_the_source_path_gone_after_a_valid_commit_is_rejected_too(repo: Repo, loaded: Rejections) -> None:
    """The incremental load compares the two trees first: a side without the path lists the whole tree."""
    before = deploy_with(repo, good_deploy(repo))
    assert desired_state(before) is not None
    after = repo.commit(repo.tree({"README.md": b"hello\n", "moved": repo.tree(good_deploy(repo))}), before)

    assert desired_state(after) is None
    assert only_error(loaded).message.startswith("the source's path does not exist in this commit")


def test_the_mirror_tells_which_shape_and_keeps_its_old_words(repo: Repo) -> None:
    commit = repo.commit(
        repo.tree({"README.md": b"hello\n", "link": repo.link("README.md"), "sub": ("160000", GITLINK)})
    )
    with GitMirror(repo.path) as mirror:
        with pytest.raises(SourcePathMissing, match="does not exist") as missing:
            mirror.list_tree(commit, "nope")
        assert missing.value.path == "nope"
        for path, kind in (("README.md", "a file"), ("link", "a symlink"), ("sub", "a submodule")):
            with pytest.raises(SourcePathNotADirectory, match="not a directory") as found:
                mirror.list_tree(commit, f"./{path}/")  # as an administrator may write it
            assert (found.value.path, found.value.kind) == (path, kind)
        # Still PermanentErrors to any caller that knows no better (the API's previews, the CLI).
        assert issubclass(RepositoryShapeError, PermanentError)


# -- a Git failure is not the content's doing ------------------------------------------------------


def test_a_broken_mirror_is_still_a_git_failure_not_a_rejection(repo: Repo, loaded: Rejections) -> None:
    """A directory git cannot read (its tree object gone from the mirror) is no pusher's doing: it fails
    as before, so the source backs off and says why, and no revision is rejected for it."""
    deploy = repo.tree(good_deploy(repo))
    commit = repo.commit(repo.tree({"README.md": b"hello\n", "deploy": deploy}))
    (repo.path / "objects" / deploy[1][:2] / deploy[1][2:]).unlink()

    with pytest.raises(PermanentError) as failed:
        desired_state(commit)
    assert not isinstance(failed.value, RepositoryShapeError)
    assert "cannot list 'deploy'" in str(failed.value)
    assert loaded == []


def test_an_unknown_commit_is_still_a_git_failure(repo: Repo, loaded: Rejections) -> None:
    deploy_with(repo, good_deploy(repo))
    with pytest.raises(ObjectNotFoundError):
        desired_state("2" * 40)
    assert loaded == []


# -- sluice.yaml -----------------------------------------------------------------------------------


POLICY_SHAPES: dict[str, tuple[Makes, str]] = {
    "symlink": (lambda repo: repo.link("../policy.yaml"), "a symlink"),
    "submodule": (lambda repo: ("160000", GITLINK), "a submodule"),
    "directory": (lambda repo: repo.tree({"x.yaml": POLICY}), "a directory"),
    "empty directory": (lambda repo: repo.tree({}), "a directory"),
}


@pytest.mark.parametrize("shape", POLICY_SHAPES)
def test_a_policy_file_that_is_not_a_regular_file_rejects_the_revision(
    repo: Repo, loaded: Rejections, shape: str
) -> None:
    """It was skipped like any symlink, and the revision validated under the default policy (one step of
    100%, no approvals, prune off, the default target), without a word."""
    make, kind = POLICY_SHAPES[shape]
    commit = deploy_with(repo, {"sluice.yaml": make(repo), "configmaps": repo.tree({"app.yaml": APP})})

    assert desired_state(commit) is None
    error = only_error(loaded)
    assert str(error) == f"sluice.yaml: {kind}; Sluice reads regular files only"


@pytest.mark.parametrize("had_policy", [True, False], ids=["policy-replaced", "policy-added"])
@pytest.mark.parametrize("shape", ["symlink", "submodule", "directory"])
def test_after_a_valid_commit_too(repo: Repo, loaded: Rejections, shape: str, had_policy: bool) -> None:
    """The incremental load (what changed since the last valid revision) lists the whole tree once the
    policy changes: a symlink or submodule there counts as the file changed (gone as a file); a directory
    shows only the files in it, and those send it to the whole listing too."""
    make, kind = POLICY_SHAPES[shape]
    configmaps = repo.tree({"app.yaml": APP})
    before = deploy_with(repo, {**(GOOD if had_policy else {}), "configmaps": configmaps})
    assert desired_state(before) is not None
    after = deploy_with(repo, {"sluice.yaml": make(repo), "configmaps": configmaps})

    assert desired_state(after) is None
    assert str(only_error(loaded)) == f"sluice.yaml: {kind}; Sluice reads regular files only"


def test_a_preview_rejects_it_as_a_sync_does(repo: Repo, loaded: Rejections) -> None:
    commit = deploy_with(repo, {"sluice.yaml": repo.link("x"), "configmaps": repo.tree({"app.yaml": APP})})
    with GitMirror(repo.path) as mirror, pytest.raises(RevisionRejected) as rejected:
        revisions._load(mirror, source(), commit)
    assert [str(error) for error in rejected.value.errors] == [
        "sluice.yaml: a symlink; Sluice reads regular files only"
    ]


def test_other_symlinks_are_still_skipped(repo: Repo, loaded: Rejections) -> None:
    """Only the policy file: a symlink among the manifests (one named sluice.yaml too) is left out, as
    the README says, and the revision is valid."""
    commit = deploy_with(
        repo,
        {
            **GOOD,
            "configmaps": repo.tree(
                {"app.yaml": APP, "link.yaml": repo.link("app.yaml"), "sluice.yaml": repo.link("../x")}
            ),
            "flags": repo.link("configmaps"),
        },
    )
    desired = desired_state(commit)
    assert desired is not None and desired.policy.prune
    assert loaded == []
    with GitMirror(repo.path) as mirror:
        listed = mirror.list_tree(commit, "deploy", paths=READ_PATHS, files_only=("sluice.yaml",))
    assert sorted(listed) == ["configmaps/app.yaml", "sluice.yaml"]


def test_the_listing_refuses_only_the_paths_it_is_told_to(repo: Repo) -> None:
    commit = deploy_with(repo, {"sluice.yaml": repo.link("x")})
    with GitMirror(repo.path) as mirror:
        assert mirror.list_tree(commit, "deploy", paths=READ_PATHS) == {}
        with pytest.raises(NotARegularFile) as refused:
            mirror.list_tree(commit, "deploy", paths=READ_PATHS, files_only=("sluice.yaml",))
    assert (refused.value.path, refused.value.kind) == ("sluice.yaml", "a symlink")


# -- a file's entry naming a tree ------------------------------------------------------------------


def test_a_file_entry_that_names_a_tree_rejects_the_revision_naming_the_file(
    repo: Repo, loaded: Rejections
) -> None:
    """``100644 bad.yaml`` naming a tree object: git lists it as a file, and reading it failed with
    "<sha> is a tree, not a blob", a PermanentError that named no file and rejected nothing."""
    inner = repo.tree({"x.yaml": APP})
    configmaps = repo.raw_tree({"app.yaml": repo.blob(APP), "bad.yaml": ("100644", inner[1])})
    commit = deploy_with(repo, {**GOOD, "configmaps": configmaps})

    assert desired_state(commit) is None
    error = only_error(loaded)
    assert (error.file, error.line, error.field) == ("configmaps/bad.yaml", None, "")
    assert f"its object {inner[1]} is a tree, not a file's content" in error.message
    with GitMirror(repo.path) as mirror, pytest.raises(NotABlob, match=f"{inner[1]} is a tree, not a blob"):
        mirror.read_blobs([inner[1]])


# -- a rejected revision asked again ---------------------------------------------------------------


def test_a_rejected_revision_asked_again_under_the_same_scope_is_not_read_again(
    repo: Repo, loaded: Rejections, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every poll and push asks for the head until someone pushes a fix: a crafted rejected head cost
    seconds of CPU each time, listed, read and validated again. Asked again as rejected, under the same
    scope, it is answered from what this process found; under another scope it is read again."""
    commit = deploy_with(repo, {**GOOD, "configmaps": repo.tree({"app.yaml": b"kind: Pod\n"})})
    listings: list[str] = []
    real_listing = revisions._listing
    monkeypatch.setattr(
        revisions,
        "_listing",
        lambda mirror, at, *rest: listings.append(at) or real_listing(mirror, at, *rest),
    )
    assert desired_state(commit) is None
    rejected = Revision(pk=1, commit=commit, outcome=Revision.Outcome.REJECTED)

    assert revisions.revision_desired_state(source(), rejected, known_clusters=KNOWN) is None
    assert len(listings) == 1 and len(loaded) == 1, "answered from the first rejection"
    wider = frozenset({*KNOWN, "member-1"})
    assert revisions.revision_desired_state(source(), rejected, known_clusters=wider) is None
    assert len(listings) == 2, "another scope: read again"
