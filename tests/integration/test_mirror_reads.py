"""A mirror's commits and blobs read in process (libgit2) answer exactly as git's processes did.

Real repositories and real ``git``: each commit, including hand-made objects git would never write
itself, reads the same through ``ObjectStore`` as through ``git log``; where libgit2 cannot tell
(another encoding, a signature it will not parse, SHA-256 ids), git is asked and the pass goes on.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gitops.errors import PermanentError
from gitops.fetch import GitMirror
from gitops.fetch.git import CatFileBatch
from gitops.fetch.mirror import ObjectNotFoundError
from gitops.fetch.objects import ObjectStore
from tests.gitrepo import GitRepo

TREE_LINE = "tree {tree}\n"
IDENT = "Ada Lovelace <ada@example.com> 1700000000 +0100"


def git(repo: Path, *args: str, stdin: bytes | None = None) -> str:
    done = subprocess.run(["git", f"--git-dir={repo}", *args], input=stdin, capture_output=True, check=True)
    return done.stdout.decode().strip()


def raw_commit(repo: Path, body: bytes) -> str:
    """Writes a commit object exactly as given (``--literally``: git's own checks skipped)."""
    return git(repo, "hash-object", "-t", "commit", "-w", "--literally", "--stdin", stdin=body)


@pytest.fixture
def mirrored(tmp_path):
    """A remote with one commit, fetched into a mirror: (repo, mirror, the mirror's object dir)."""
    repo = GitRepo(tmp_path / "repo")
    repo.write("configmaps/a.yaml", "a: 1\n")
    repo.git("add", "--all")
    repo.git("commit", "--quiet", "-m", "first")
    repo.git("push", "--quiet", "origin", "HEAD:refs/heads/main")
    mirror = GitMirror(tmp_path / "mirror.git")
    mirror.fetch(repo.url, "main")
    yield repo, mirror
    mirror.close()


def crafted_commits(mirror: GitMirror) -> dict[str, str]:
    """Commit objects written straight into the mirror, each an edge of the format."""
    path = mirror.path
    tree = git(path, "rev-parse", "refs/sluice/heads/main^{tree}")
    parent = git(path, "rev-parse", "refs/sluice/heads/main")
    head = f"tree {tree}\nparent {parent}\n"
    signature = "gpgsig -----BEGIN PGP SIGNATURE-----\n \n abc\n -----END PGP SIGNATURE-----\n"
    bodies = {
        "plain": f"{head}author {IDENT}\ncommitter {IDENT}\n\nsubject\n\nbody\n",
        "leading blank lines": f"{head}author {IDENT}\ncommitter {IDENT}\n\n\n\nsubject\n",
        "crlf and no final newline": f"{head}author {IDENT}\ncommitter {IDENT}\n\nsubject\r\nbody",
        "empty message": f"{head}author {IDENT}\ncommitter {IDENT}\n\n",
        "unicode": f"{head}author Zoë Ærø <zoe@example.com> 1 +0000\ncommitter {IDENT}\n\nÜber ✓\n",
        "signed": f"{head}author {IDENT}\ncommitter {IDENT}\n{signature}\nsigned\n",
        "two parents": f"{head}parent {parent}\nauthor {IDENT}\ncommitter C <c@x> 5 -0700\n\nmerge\n",
        "root": f"tree {tree}\nauthor {IDENT}\ncommitter {IDENT}\n\nroot\n",
        "latin-1": f"{head}author {IDENT}\ncommitter {IDENT}\nencoding ISO-8859-1\n\n",
        "odd identity": f"{head}author no email here 17 +0000\ncommitter {IDENT}\n\nodd\n",
        "a NUL in the message": f"{head}author {IDENT}\ncommitter {IDENT}\n\nbefore\0after\n",
        "two emails": f"{head}author Alice <alice@corp> <x@y> 1 +0000\ncommitter {IDENT}\n\nx\n",
        "a bracket in the email": f"{head}author A <a>b@c> 1 +0000\ncommitter {IDENT}\n\nx\n",
        "blanks around": f"{head}author  Lead <  a@b  > 1 +0000\ncommitter {IDENT}\n\nx\n",
        "two authors": f"{head}author {IDENT}\nauthor B <b@x> 9 +0000\ncommitter {IDENT}\n\nx\n",
        "no date": f"{head}author {IDENT}\ncommitter C <c@x>\n\nx\n",
        "a parent after the committer": (
            f"tree {tree}\nauthor {IDENT}\ncommitter {IDENT}\nparent {parent}\n\nx\n"
        ),
        "a NUL in another header": (
            f"{head}author {IDENT}\ncommitter {IDENT}\nx y\0author M <m@evil> 5 +0000\n\nx\n"
        ),
        "a date past year 9999": f"{head}author {IDENT}\ncommitter C <c@x> 999999999999 +0000\n\nx\n",
    }
    made = {name: raw_commit(path, body.encode()) for name, body in bodies.items()}
    latin = f"{head}author M\xfcller <m@x> 3 +0000\ncommitter {IDENT}\nencoding ISO-8859-1\n\nGr\xfc\xdfe\n"
    made["latin-1"] = raw_commit(path, latin.encode("latin-1"))
    made["invalid utf-8"] = raw_commit(
        path,
        head.encode() + b"author Bad \xff\xfe <b@x> 4 +0000\ncommitter " + IDENT.encode() + b"\n\n\xffmsg\n",
    )
    return made


READ_IN_PROCESS = {
    "plain",
    "leading blank lines",
    "crlf and no final newline",
    "empty message",
    "unicode",
    "signed",
    "two parents",
    "root",
    "invalid utf-8",
    "a NUL in the message",
    "a date past year 9999",
}


def test_each_commit_reads_as_git_log_prints_it(mirrored):
    """What libgit2 answers is git's reading exactly; whatever is not plainly formed goes to git."""
    _, mirror = mirrored
    answered = set()
    for name, commit in crafted_commits(mirror).items():
        by_git = mirror._commit_by_git(commit)
        assert by_git is not None, name
        store = ObjectStore(mirror.path)
        by_libgit2 = store.commit(commit)
        store.close()
        if by_libgit2 is not None:
            answered.add(name)
            assert by_libgit2 == by_git, name
        info, parents = mirror._tip(commit)
        assert (info.sha, parents, info.author_email) == (by_git.sha, by_git.parents, by_git.author_email)
    assert answered == READ_IN_PROCESS


def test_a_parent_line_out_of_place_is_no_parent_as_for_git(mirrored):
    """git reads parents only right after the tree: a root commit with a stray ``parent`` line replaces
    the branch, and must be seen as a force push."""
    _, mirror = mirrored
    _, parents = mirror._tip(crafted_commits(mirror)["a parent after the committer"])
    assert parents == ()


def test_a_date_no_datetime_holds_is_the_epoch_not_a_failed_fetch(mirrored):
    _, mirror = mirrored
    info, _ = mirror._tip(crafted_commits(mirror)["a date past year 9999"])
    assert info.committed_at.year == 1970


def test_a_nul_in_a_message_is_cut_as_git_cuts_it(mirrored):
    """PostgreSQL refuses a NUL in text: a message keeping one would fail every pass of its source."""
    _, mirror = mirrored
    info, _ = mirror._tip(crafted_commits(mirror)["a NUL in the message"])
    assert info.message == "before\n"


def test_a_commit_in_another_encoding_is_left_to_git(mirrored):
    _, mirror = mirrored
    latin = crafted_commits(mirror)["latin-1"]
    store = ObjectStore(mirror.path)
    assert store.commit(latin) is None
    store.close()
    info, _ = mirror._tip(latin)
    assert info.author_name == "Müller"  # git log converted it to UTF-8
    assert info.message == "Grüße\n"


def test_a_push_reads_its_commit_and_files_without_starting_git(mirrored, monkeypatch):
    repo, mirror = mirrored
    mirror.commit_info(mirror.fetch(repo.url, "main").commit)  # the store is open before the push
    repo.write("configmaps/a.yaml", "a: 2\n")
    repo.git("commit", "--quiet", "-am", "second")
    repo.git("push", "--quiet", "origin", "HEAD:refs/heads/main")

    def no_git(*args, **kwargs):
        raise AssertionError("a git process was started")

    fetched = mirror.fetch(repo.url, "main")  # the fetch itself is git's
    monkeypatch.setattr(mirror, "_local", no_git)
    monkeypatch.setattr(CatFileBatch, "__init__", no_git)
    info, parents = mirror._tip(fetched.commit)  # read again, not from the fetch's memo
    assert info.message == "second\n"
    assert parents == (fetched.previous,)
    blob = git(mirror.path, "rev-parse", f"{fetched.commit}:configmaps/a.yaml")
    assert mirror.read_blobs([blob]) == {blob: b"a: 2\n"}
    assert mirror._blob_sizes([blob]) == {blob: 5}


def test_a_commit_too_large_to_read_is_refused_before_it_is_read(mirrored, monkeypatch):
    """A pusher writes the message: a commit of many MB is refused from its size alone, whether libgit2
    or git would read it, and one just under the bound is read, its message cut."""
    from gitops.fetch.mirror import MAX_COMMIT_BYTES, MESSAGE_LENGTH, CommitTooLarge

    _, mirror = mirrored
    tree = git(mirror.path, "rev-parse", "refs/sluice/heads/main^{tree}")
    head = f"tree {tree}\nauthor {IDENT}\ncommitter {IDENT}\n\n"
    huge = raw_commit(mirror.path, (head + "x" * (MAX_COMMIT_BYTES + 1) + "\n").encode())
    fits = raw_commit(mirror.path, (head + "y" * (MAX_COMMIT_BYTES - len(head) - 1) + "\n").encode())

    def unread(*args, **kwargs):
        raise AssertionError("the commit was read")

    with monkeypatch.context() as patched:
        patched.setattr(mirror._objects, "commit", unread)
        patched.setattr(mirror, "_commit_by_git", unread)
        with pytest.raises(CommitTooLarge, match=f"commit {huge} is 1,048,7"):
            mirror._tip(huge)
        git(mirror.path, "update-ref", "refs/sluice/heads/huge", huge)
        with pytest.raises(CommitTooLarge, match=f"commit {huge} is"):
            mirror._tip("refs/sluice/heads/huge")  # the mirror's ref, named by its commit
        patched.setattr(mirror._objects, "commit_size", lambda revision: None)  # libgit2 cannot tell
        with pytest.raises(CommitTooLarge):
            mirror._tip(huge)
    info, _ = mirror._tip(fits)
    assert len(info.message) == MESSAGE_LENGTH and info.message.endswith("…")


def test_missing_and_wrong_objects_are_refused_as_before(mirrored):
    _, mirror = mirrored
    tree = git(mirror.path, "rev-parse", "refs/sluice/heads/main^{tree}")
    with pytest.raises(PermanentError, match="is a tree, not a blob"):
        mirror.read_blobs([tree])
    with pytest.raises(ObjectNotFoundError):
        mirror.read_blobs(["0" * 40])
    with pytest.raises(ObjectNotFoundError):
        mirror._blob_sizes([tree])
    with pytest.raises(PermanentError, match="is a tree, not a commit"):
        mirror.commit_info(tree)
    with pytest.raises(ObjectNotFoundError):
        mirror.commit_info("1" * 40)
    assert mirror._tip("refs/sluice/heads/nothing") is None


def test_a_sha256_mirror_is_read_by_git(tmp_path):
    repo = GitRepo(tmp_path / "repo", object_format="sha256")
    repo.write("a.yaml", "a: 1\n")
    repo.git("add", "--all")
    repo.git("commit", "--quiet", "-m", "first")
    repo.git("push", "--quiet", "origin", "HEAD:refs/heads/main")
    with GitMirror(tmp_path / "mirror.git") as mirror:
        fetched = mirror.fetch(repo.url, "main")
        store = ObjectStore(mirror.path)
        assert not store.usable
        store.close()
        assert len(fetched.commit) == 64
        assert mirror.commit_info(fetched.commit).message == "first\n"
        blob = git(mirror.path, "rev-parse", f"{fetched.commit}:a.yaml")
        assert mirror.read_blobs([blob]) == {blob: b"a: 1\n"}
