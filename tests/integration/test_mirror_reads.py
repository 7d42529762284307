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


def test_an_identity_longer_than_an_email_is_neither_read_whole_nor_kept(mirrored):
    """A commit behind the tip is not size-checked: its author may be megabytes long. git cuts each
    email before the worker reads it, and what no address can be is nobody's identity."""
    repo, mirror = mirrored
    base = mirror.fetch(repo.url, "main").commit
    tree = git(mirror.path, "rev-parse", "refs/sluice/heads/main^{tree}")
    giant = "a" * 2_000_000 + "@example.com"

    def commit_of(parent: str, author: str, committer: str = IDENT) -> str:
        body = f"tree {tree}\nparent {parent}\nauthor {author}\ncommitter {committer}\n\nmessage\n"
        return raw_commit(mirror.path, body.encode())

    behind = commit_of(base, f"X <{giant}> 1700000000 +0000")
    tip = commit_of(behind, "Bo <Bo@Example.com> 1700000001 +0000")
    edge = "b" * (254 - len("@example.com")) + "@example.com"  # as long as an address may be
    over = "c" + edge
    at_edge = commit_of(tip, f"E <{edge}> 1700000002 +0000", f"O <{over}> 1700000002 +0000")
    read: list[int] = []
    local = mirror._local

    def measured(*args, **kwargs):
        completed = local(*args, **kwargs)
        read.append(len(completed.stdout or b""))
        return completed

    mirror._local = measured
    assert mirror.commit_identities(tip, since=base) == {"bo@example.com", "ada@example.com"}
    assert max(read) < 2_000, "git cut the author before the worker read it"
    assert mirror.commit_identities(at_edge, since=tip) == {edge}
    mirror._local = local
    mirror._tip(at_edge)  # the tip's own identities, as a one-commit push reads them
    assert mirror.commit_identities(at_edge, since=tip) == {edge}


def test_a_path_longer_than_a_record_is_refused_before_it_is_buffered(mirrored):
    """git allows a path of any length: a tree naming one of megabytes compresses to a few KB. Each read
    of the listing copied and searched the partial record again (8 s for 32 MiB, on every poll)."""
    import time

    from gitops.desired.errors import RevisionRejected
    from gitops.desired.limits import Limits
    from gitops.fetch.mirror import MAX_RECORD_BYTES, OverlongTreeEntry
    from gitops.fetch.revisions import READ_PATHS, _listing

    _, mirror = mirrored
    base = git(mirror.path, "rev-parse", "refs/sluice/heads/main")
    blob = git(mirror.path, "hash-object", "-w", "--stdin", stdin=b"a: 1\n")
    name = "n" * (4 * 1024 * 1024)
    inner = git(mirror.path, "mktree", "--missing", stdin=f"100644 blob {blob}\t{name}\n".encode())
    root = git(mirror.path, "mktree", "--missing", stdin=f"040000 tree {inner}\tconfigmaps\n".encode())
    commit = raw_commit(
        mirror.path, f"tree {root}\nparent {base}\nauthor {IDENT}\ncommitter {IDENT}\n\nx\n".encode()
    )

    started = time.process_time()
    with pytest.raises(OverlongTreeEntry, match=f"longer than {MAX_RECORD_BYTES:,} bytes"):
        mirror.list_tree(commit, "", paths=READ_PATHS, max_entries=100)
    with pytest.raises(RevisionRejected) as rejected:
        _listing(mirror, commit, "", Limits())
    assert mirror.tree_changes(base, commit, "", paths=READ_PATHS, max_changes=100) is None
    assert time.process_time() - started < 2
    (error,) = rejected.value.errors
    assert error.file.startswith("configmaps/nnnn") and "rename it" in error.message


def test_a_fetch_killed_at_its_timeout_leaves_no_temporary_objects(mirrored):
    """A server that never finishes sending its pack: git is killed at the timeout, and the temporary
    files it was writing would stay for git's two-week prune, one set a poll."""
    import socket
    import threading

    from gitops.errors import TemporaryError

    _, mirror = mirrored
    objects = mirror.path / "objects"
    (objects / "9d").mkdir(exist_ok=True)
    left = [objects / "pack" / "tmp_pack_Ab12Cd", objects / "9d" / "tmp_obj_Xy34Zw"]
    for path in left:
        path.write_bytes(b"\0" * 4096)

    def real_objects() -> list[Path]:
        return sorted(
            path for path in objects.rglob("*") if path.is_file() and not path.name.startswith("tmp_")
        )

    kept = real_objects()
    assert kept, "the mirror's own objects"

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True).start()
    try:
        with pytest.raises(TemporaryError, match="timed out"):
            mirror.fetch(f"http://127.0.0.1:{server.getsockname()[1]}/repo.git", "main", timeout=1)
    finally:
        server.close()
        for connection in accepted:
            connection.close()
    assert not any(path.exists() for path in left)
    assert real_objects() == kept
    assert mirror.sweep_temporary_objects(older_than=0) == 0


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


def _tree(repo: Path, entries: list[tuple[str, str, str]]) -> str:
    """A tree object written exactly as given, its entries in this order (``--literally``)."""
    body = b"".join(f"{mode} {name}".encode() + b"\0" + bytes.fromhex(sha) for mode, name, sha in entries)
    return git(repo, "hash-object", "-t", "tree", "-w", "--literally", "--stdin", stdin=body)


def test_a_tree_out_of_gits_order_is_compared_by_git_not_read_otherwise(mirrored, monkeypatch):
    """git walks two trees in step: an unsorted one (which a fetch accepts) reads differently there, so
    its comparison is git's, never one of its own that could disagree."""
    from gitops.fetch import objects
    from gitops.fetch.revisions import READ_PATHS

    _, mirror = mirrored
    base = git(mirror.path, "rev-parse", "refs/sluice/heads/main")
    a = git(mirror.path, "hash-object", "-w", "--stdin", stdin=b"a: 1\n")
    b = git(mirror.path, "hash-object", "-w", "--stdin", stdin=b"b: 2\n")
    commits = []
    for order in (
        [("100644", "a.yaml", a), ("100644", "b.yaml", b)],
        [("100644", "b.yaml", b), ("100644", "a.yaml", a)],
    ):
        root = _tree(mirror.path, [("40000", "configmaps", _tree(mirror.path, order))])
        commits.append(
            raw_commit(
                mirror.path, f"tree {root}\nparent {base}\nauthor {IDENT}\ncommitter {IDENT}\n\nx\n".encode()
            )
        )
    refused = []
    real = objects.ObjectStore.tree_changes

    def spied(self, *args, **kwargs):
        try:
            return real(self, *args, **kwargs)
        except objects.Unreadable as exc:
            refused.append(str(exc))
            raise

    monkeypatch.setattr(objects.ObjectStore, "tree_changes", spied)
    found = mirror.tree_changes(commits[0], commits[1], "", paths=READ_PATHS, max_changes=100)
    assert len(refused) == 1 and "read otherwise" in refused[0]

    def by_git(self, *args, **kwargs):
        raise objects.Unreadable("compared by git in this test")

    monkeypatch.setattr(objects.ObjectStore, "tree_changes", by_git)
    assert found == mirror.tree_changes(commits[0], commits[1], "", paths=READ_PATHS, max_changes=100)


@pytest.mark.parametrize("paths", [("configmaps/",), ("./configmaps",), ("configmaps//a.yaml",), ("",)])
def test_a_pathspec_git_would_normalize_is_compared_by_git(mirrored, paths):
    from gitops.fetch import objects

    repo, mirror = mirrored
    base = git(mirror.path, "rev-parse", "refs/sluice/heads/main")
    repo.write("configmaps/a.yaml", "a: 2\n")
    repo.git("commit", "--quiet", "-am", "second")
    repo.git("push", "--quiet", "origin", "HEAD:refs/heads/main")
    head = mirror.fetch(repo.url, "main").commit
    with pytest.raises(objects.Unreadable, match="pathspec"):
        mirror._objects.tree_changes(base, head, "", paths=paths, max_changes=100, max_path=1000)
    mirror.tree_changes(base, head, "", paths=paths, max_changes=100)  # git answers, whatever it says


def test_a_range_longer_than_is_read_is_marked_not_cut_silently(mirrored):
    """The range since the last rollout was cut to its newest 1,000 commits without a word: the author
    of a commit buried under filler was never among the rollout's identities. Only commits of the
    source's directory count: elsewhere in a monorepo they change nothing the rollout brings."""
    from gitops.vocabulary import MORE_COMMITS_THAN_READ

    repo, mirror = mirrored
    base = mirror.fetch(repo.url, "main").commit
    repo.write("configmaps/b.yaml", "b: 1\n")
    repo.commit("buried", author=("Mallory", "mallory@example.com"))
    for number in range(3):
        repo.write("configmaps/a.yaml", f"a: {number}\n")
        repo.commit(f"filler {number}")
    repo.write("elsewhere/x.yaml", "x: 1\n")
    repo.commit("another team's", author=("Otto", "otto@example.com"))
    tip = mirror.fetch(repo.url, "main").commit

    assert MORE_COMMITS_THAN_READ in mirror.commit_identities(
        tip, since=base, range_limit=3, path="configmaps"
    )
    read = mirror.commit_identities(tip, since=base, range_limit=4, path="configmaps")
    assert read == {"mallory@example.com", "ada@example.com"}, "the directory's four, not otto's"
    assert MORE_COMMITS_THAN_READ in mirror.commit_identities(tip, since=base, range_limit=4)


def test_no_author_email_reads_as_the_marker_of_a_range_longer_than_was_read(mirrored):
    """The marker was "*", an email git accepts: any pusher could make a rollout unapprovable."""
    from gitops.vocabulary import MORE_COMMITS_THAN_READ

    repo, mirror = mirrored
    base = mirror.fetch(repo.url, "main").commit
    repo.commit("odd", author=("Eve", "*"))
    repo.commit("odder", author=("Eve", "more commits than were read"))
    tip = mirror.fetch(repo.url, "main").commit
    assert MORE_COMMITS_THAN_READ not in mirror.commit_identities(tip, since=base)


def test_a_base_the_mirror_lost_reads_the_directorys_history_as_far_as_a_range_and_marks_it(mirrored):
    """A force push that pruned the last rollout's commit made the range the newest 1,000 commits, with
    nothing said: a commit buried past them went unseen, the very burial the range's mark closes."""
    from gitops.vocabulary import MORE_COMMITS_THAN_READ

    repo, mirror = mirrored
    for number in range(3):
        repo.write("configmaps/a.yaml", f"a: {number}\n")
        repo.commit(f"change {number}")
    tip = mirror.fetch(repo.url, "main").commit
    lost = "0" * 40  # not in the mirror

    assert MORE_COMMITS_THAN_READ in mirror.commit_identities(
        tip, since=lost, range_limit=2, path="configmaps"
    )
    assert MORE_COMMITS_THAN_READ not in mirror.commit_identities(
        tip, since=lost, range_limit=4, path="configmaps"
    )
