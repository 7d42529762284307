"""One bare mirror per source: ``GitMirror.fetch`` brings one branch of a remote into a
private ref of a bare repository; the other methods read files at a commit straight
from the object store, so there is no working tree that a concurrent fetch could
change under a reader.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import TypeVar

from gitops.desired.limits import MAX_RECORD_BYTES, MAX_SKIPPED_ENTRIES
from gitops.errors import GitopsError, PermanentError, TemporaryError
from gitops.fetch.credentials import Credentials
from gitops.fetch.git import (
    AUTHENTICATION_FAILED,
    DEFAULT_MAX_FETCH_BYTES,
    DEFAULT_MAX_GIT_MEMORY,
    LOCAL_TIMEOUT,
    MIRROR_REF_PREFIX,
    OUT_OF_MEMORY,
    REDIRECTED,
    CatFileBatch,
    GitInvocation,
    GitRun,
    Interrupted,
    base_env,
    build_fetch_invocation,
    check_object_id,
    check_url,
    classify_git_error,
    git_at,
    memory_bounded,
    normalize_branch,
    redirect_target,
    run,
    stderr_summary,
)
from gitops.fetch.objects import Commit, ObjectStore, Unreadable
from gitops.fetch.refs import (
    PREVIEW_READ_SECONDS,
    PREVIEW_REF_PREFIX,
    PreviewRef,
    RequestedRevision,
    RevisionNotFound,
)
from gitops.redaction import url_without_query
from gitops.vocabulary import MORE_COMMITS_THAN_READ

logger = logging.getLogger("gitops.fetch")

OBJECT_FORMATS = ("sha1", "sha256")
_MISMATCHED_FORMAT = re.compile(r"mismatched algorithms: client \w+; server (\w+)")
# What git says when the remote has no such ref, or will not hand out such a commit.
_NOT_ON_REMOTE = re.compile(r"couldn't find remote ref|not our ref|unadvertised object|no such remote ref")
# Tree entries of regular files (and executable ones); symlinks are 120000, submodules 160000.
_FILE_MODES = (b"100644 ", b"100755 ")
# What a tree entry of each mode (as git prints it: canonical) is, in the words errors use.
_ENTRY_KINDS = {
    b"100644": "a file",
    b"100755": "a file",
    b"120000": "a symlink",
    b"160000": "a submodule",
    b"040000": "a directory",
}
_OBJECT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_Answer = TypeVar("_Answer")


@dataclass(frozen=True)
class _CommitFacts:
    parents: tuple[str, ...]
    identities: frozenset[str]  # author and committer emails, lower case


# git's automatic maintenance (gc once loose objects or packs pile up) runs after one fetch in this
# many, at random: a push adds a handful of objects, and gc is due only after thousands. By chance
# rather than by a count, so that it still runs in processes that restart before any count is reached.
FETCHES_PER_MAINTENANCE = 32


def _identity(email: str) -> str | None:
    """An author's or committer's address as the no-self-approval check compares it; None when there is
    none, or when it is longer than an address can be (git cut it, or a pusher wrote megabytes)."""
    email = email.strip().lower()
    return email if email and len(email) <= MAX_EMAIL_LENGTH else None


def _maintenance_due() -> bool:
    return random.randrange(FETCHES_PER_MAINTENANCE) == 0  # noqa: S311 - a schedule, not a secret


# What a fetch read of each new tip, process-wide (a commit id names the same commit forever): a push of
# one commit on top of the last rollout's is judged from here, without asking git again.
_COMMIT_FACTS: dict[tuple[str, str], _CommitFacts] = {}  # by (mirror, commit id)
_COMMIT_FACTS_KEPT = 4096


# --- the mirror ------------------------------------------------------------------------------------


class ObjectNotFoundError(PermanentError):
    """A commit or blob is not in the mirror (never fetched, or the mirror was recreated)."""


@dataclass(frozen=True)
class TreeFile:
    blob: str  # the blob's sha
    size: int  # in bytes, from the tree listing: known before the blob is read


@dataclass(frozen=True)
class FetchResult:
    commit: str  # full sha of the branch tip after fetch (40 hex digits, 64 for SHA-256)
    previous: str | None  # tip before this fetch (None on first fetch)
    forced: bool  # True when previous is not an ancestor of commit (a force push)

    @property
    def changed(self) -> bool:
        return self.commit != self.previous


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    author_name: str
    author_email: str
    message: str
    committed_at: datetime  # tz-aware UTC

    def __post_init__(self) -> None:
        # A pusher writes the message: past this it is cut wherever it goes (the revision's row, a
        # preview's answer, pages), as a message of hundreds of MB once was whole.
        if len(self.message) > MESSAGE_LENGTH:
            object.__setattr__(self, "message", self.message[: MESSAGE_LENGTH - 1] + "…")


MESSAGE_LENGTH = 64 * 1024
# A commit object past this is refused before it is read: its message is a pusher's, and a commit of
# hundreds of MB would otherwise be read whole into the worker (libgit2 or git's output) to be cut.
MAX_COMMIT_BYTES = 1024 * 1024
MAX_EMAIL_LENGTH = 254  # RFC 5321's bound on a forward path, less its angle brackets
IDENTITY_COLUMNS = MAX_EMAIL_LENGTH + 2  # git pads to it, or cuts with "..": either way longer than an email


GC_PID_STALE_SECONDS = 12 * 3600  # git gc's own rule for a gc.pid whose process is gone
# A fetch of the followed branch is stopped past this (``GitMirror.fetch``'s timeout; no setting changes
# it). A preview's fetch holds no source lock, so what it sweeps may be such a fetch's for this long.
FETCH_TIMEOUT = 120.0
# A preview ref whose name gives no times (an older Sluice's) is over once its file is this old.
UNTIMED_PREVIEW_REF_SECONDS = 3600


class FetchTooLarge(PermanentError):
    def __init__(self, where: str, bound: int, *, server_messages: bool = False) -> None:
        if server_messages:  # a server streaming `remote:` lines, not the branch, reached the bound
            super().__init__(
                f"fetching {where} stopped at {bound:,} bytes of the Git server's messages, Sluice's bound "
                "on what one fetch writes (SLUICE_MAX_FETCH_BYTES): the server says more than any fetch "
                "needs; ask whoever runs it"
            )
            return
        super().__init__(
            f"fetching {where} stopped at {bound:,} bytes, Sluice's bound on one fetch "
            "(SLUICE_MAX_FETCH_BYTES): the branch brings more than that; make the repository smaller, "
            "or ask an administrator to raise the bound"
        )


class FetchOutOfMemory(PermanentError):
    def __init__(self, where: str, bound: int) -> None:
        super().__init__(
            f"fetching {where} stopped at {bound:,} bytes of git's memory, Sluice's bound on what git may "
            "allocate (SLUICE_MAX_GIT_MEMORY): what the branch brings expands past it (deltas, or a "
            "compressed object, far larger than the bytes sent); make the repository smaller, or ask an "
            "administrator to raise the bound"
        )


class CommitTooLarge(PermanentError):
    def __init__(self, commit: str, size: int) -> None:
        super().__init__(
            f"commit {commit} is {size:,} bytes: Sluice reads a commit object of at most {MAX_COMMIT_BYTES:,}"
            " (its message, most likely, is far too long); push a commit on top of it"
        )


class GitMirror:
    """One bare mirror per source at `path`. Fetches incrementally and reads files at a commit straight
    from the object store (no working tree, so nothing can race).

    One instance is not thread-safe: it keeps a ``git cat-file --batch-command`` process open.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_fetch_bytes: int = DEFAULT_MAX_FETCH_BYTES,
        max_git_memory: int = DEFAULT_MAX_GIT_MEMORY,
        ssh_known_hosts: str = "",
    ) -> None:
        self.path = Path(path)
        self.ssh_known_hosts = ssh_known_hosts  # the host keys ssh checks (empty: ssh's default files)
        self.max_fetch_bytes = max_fetch_bytes  # what one fetch may write (0: unbounded)
        self.max_git_memory = max_git_memory  # what git may allocate fetching or maintaining (0: unbounded)
        self._cat_file: CatFileBatch | None = None
        self._objects = ObjectStore(self.path)  # commits, sizes and blobs without a git process
        self._tips: dict[str, CommitInfo] = {}  # commits a fetch of this instance read (``commit_info``)

    def __enter__(self) -> GitMirror:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._objects.close()
        if self._cat_file is not None:
            self._cat_file.close()
            self._cat_file = None

    def fetch(
        self,
        url: str,
        branch: str,
        credentials: Credentials | None = None,
        *,
        timeout: float = FETCH_TIMEOUT,
        interrupted: Callable[[], bool] | None = None,
    ) -> FetchResult:
        """Brings ``branch`` of ``url`` into the mirror. ``interrupted`` is asked every second while git
        runs; git is stopped as soon as it says so (``FetchInterrupted``), as at ``timeout``."""
        check_url(url)
        branch = normalize_branch(branch)
        where = f"branch {branch!r} of {url_without_query(url)}"
        started, began = time.monotonic(), time.time()
        invocation = build_fetch_invocation(
            self.path,
            url,
            branch,
            credentials,
            max_bytes=self.max_fetch_bytes,
            max_memory=self.max_git_memory,
            ssh_known_hosts=self.ssh_known_hosts,
        )
        self._ensure_initialized()
        maintenance = _maintenance_due()
        # A worker killed mid-preview left its ref (and its fetch's files) for the next fetch to find.
        if self.sweep_stale_previews() or maintenance:
            self.sweep_temporary_objects(older_than=timeout)  # a worker killed mid-fetch left them
        ref = f"{MIRROR_REF_PREFIX}{branch}"
        previous = self._read_ref(ref)
        completed = self._run_fetch(invocation, where, timeout, interrupted)
        if completed.returncode != 0:
            self._refuse_overfull(where, since=began, completed=completed)
            stderr = completed.stderr.decode("utf-8", "replace")
            server_format = _MISMATCHED_FORMAT.search(stderr)
            if server_format and self._recreate_with_format(server_format.group(1)):
                # The repository uses other object ids (SHA-256): a mirror of its kind takes it.
                return self.fetch(url, branch, credentials, timeout=timeout, interrupted=interrupted)
            error, reason = _fetch_error(
                where, stderr, completed.returncode, invocation, credentials, url=url
            )
            logger.info("fetch of %s failed after %.2fs: %s", where, time.monotonic() - started, reason)
            raise error
        current = self._read_ref(ref)
        if previous is not None and current == previous:
            logger.info("fetched %s: %s unchanged in %.2fs", where, previous, time.monotonic() - started)
            return FetchResult(commit=previous, previous=previous, forced=False)
        if maintenance:
            self._maintain()
        return self._fetched_tip(ref, where, previous, current, started)

    def _fetched_tip(
        self, ref: str, where: str, previous: str | None, current: str | None, started: float
    ) -> FetchResult:
        """What a fetch that moved ``ref`` brought: its new tip, recorded, and whether it was forced."""
        tip = self._tip(ref)
        if tip is None:
            raise TemporaryError(f"fetching {where} left no {ref}")
        info, parents = tip
        commit = info.sha
        if current != commit:
            # The branch names an annotated tag: the ref keeps the commit, which the next fetch compares.
            self._local(git_at(self.path, "update-ref", ref, commit))
        self._tips[commit] = info
        # A push of commits on top of the old tip has it as a parent: git is asked only otherwise.
        forced = (
            previous is not None
            and previous != commit
            and previous not in parents
            and not self._is_ancestor(previous, commit)
        )
        logger.info(
            "fetched %s: %s -> %s%s in %.2fs",
            where,
            previous or "(new)",
            commit,
            " (forced update)" if forced else "",
            time.monotonic() - started,
        )
        return FetchResult(commit=commit, previous=previous, forced=forced)

    @contextmanager
    def held_revision(
        self, url: str, requested: RequestedRevision, credentials: Credentials | None, *, timeout: float
    ) -> Iterator[str]:
        """The commit ``requested`` names, for as long as the caller reads it (a preview).

        A commit the mirror holds is read as it is. Anything else is fetched into a ref of its own under
        ``refs/sluice/previews/``, deleted on the way out, so previews leave no ref behind and the
        followed branch's ref never moves; ``timeout`` bounds the fetch. The ref is written before the
        fetch begins, named for when and until when (``PreviewRef``): a sweep on another worker spares
        what this preview fetches, and a ref a killed worker left goes at the next preview or fetch.
        """
        check_url(url)
        self._ensure_initialized()
        if self.sweep_stale_previews():
            # What those previews' fetches left too; a fetch of the branch may be writing its own meanwhile.
            self.sweep_temporary_objects(older_than=max(timeout, FETCH_TIMEOUT))
        if requested.is_commit and (known := self._resolve(requested.text)) is not None:
            yield known
            return
        if requested.is_commit and not requested.is_full_commit:
            raise RevisionNotFound(
                f"commit {requested.text} is not in Sluice's copy of the repository; "
                "give its full SHA to fetch it from the remote"
            )
        local_ref = PreviewRef.new(time.time(), timeout + PREVIEW_READ_SECONDS).name
        self._hold_preview_ref(local_ref)
        try:
            yield self._fetch_into(url, requested, local_ref, credentials, timeout=timeout)
        finally:
            self._local(git_at(self.path, "update-ref", "-d", local_ref))

    def _hold_preview_ref(self, ref: str) -> None:
        """Writes a preview's ``ref`` before its fetch, so that from then on every sweep of this mirror knows
        since when it is fetching. It names the empty tree, which git knows without storing it (nothing
        is written into the object store), and which the fetch's forced refspec replaces."""
        tree = self._local(git_at(self.path, "hash-object", "-t", "tree", "--stdin"))  # in either format
        empty = tree.stdout.decode("ascii", "replace").strip()
        held = self._local(git_at(self.path, "update-ref", ref, empty)) if tree.returncode == 0 else tree
        if held.returncode != 0:
            why = stderr_summary(held.stderr.decode("utf-8", "replace"), ())
            raise TemporaryError(f"cannot write {ref} in the mirror at {self.path}: {why}")

    def _fetch_into(
        self,
        url: str,
        requested: RequestedRevision,
        local_ref: str,
        credentials: Credentials | None,
        *,
        timeout: float,
    ) -> str:
        where = f"{requested.text} of {url_without_query(url)}"
        invocation = build_fetch_invocation(
            self.path,
            url,
            "",
            credentials,
            refspec=requested.refspec(local_ref),
            max_bytes=self.max_fetch_bytes,
            max_memory=self.max_git_memory,
            ssh_known_hosts=self.ssh_known_hosts,
        )
        started = time.time()
        try:
            completed = run(invocation, timeout=timeout)
        except subprocess.TimeoutExpired:
            # Older than any fetch may run only: previews hold no source lock, and a fetch of the branch
            # (FETCH_TIMEOUT, longer than a preview's by default) may be writing its own pack meanwhile,
            # untouched for as long as git resolves its deltas. This preview's files go at a later sweep.
            self.sweep_temporary_objects(older_than=max(timeout, FETCH_TIMEOUT))
            raise TemporaryError(f"fetching {where} timed out after {timeout:g}s") from None
        if completed.returncode != 0:
            self._refuse_overfull(where, since=started, completed=completed, locked=False)
            stderr = completed.stderr.decode("utf-8", "replace")
            server_format = _MISMATCHED_FORMAT.search(stderr)
            if server_format and self._recreate_with_format(server_format.group(1)):
                self._hold_preview_ref(local_ref)  # the mirror started again without it
                return self._fetch_into(url, requested, local_ref, credentials, timeout=timeout)
            if _NOT_ON_REMOTE.search(stderr.lower()):
                raise RevisionNotFound(f"the remote {url_without_query(url)} has no {requested.text}")
            error, reason = classify_git_error(stderr, completed.returncode)
            raise error(f"cannot fetch {where}: {reason} ({stderr_summary(stderr, invocation.secrets)})")
        commit = self._resolve(local_ref)
        if commit is None:
            raise RevisionNotFound(f"{where} is not a commit")
        logger.info("fetched %s for a preview: %s", where, commit)
        return commit

    def list_files(self, commit: str, subpath: str = "") -> dict[str, str]:
        """Every blob under ``subpath`` at ``commit`` -> its blob sha; keys relative to ``subpath``, with "/"
        separators; symlinks and submodules skipped."""
        return {path: entry.blob for path, entry in self.list_tree(commit, subpath).items()}

    def list_tree(
        self,
        commit: str,
        subpath: str = "",
        *,
        paths: Sequence[str] = (),
        max_entries: int | None = None,
        files_only: Collection[str] = (),
    ) -> dict[str, TreeFile]:
        """Like ``list_files``, with each blob's size, so that limits apply before any blob is read.

        ``paths`` (relative to ``subpath``) restricts the listing to those files and directories, so a
        huge tree elsewhere in the repository is never listed. With ``max_entries``, git is stopped
        after that many files: a hostile tree of millions of files costs what ``max_entries`` do, and
        a caller that asks for one more than it accepts can tell a cut listing from a complete one.
        Directories, symlinks and submodules are dropped as git prints them; past
        ``MAX_SKIPPED_ENTRIES`` of them, TooManySkippedEntries is raised. A path of ``files_only``
        (relative to ``subpath``) that is one of them raises NotARegularFile instead of being dropped.

        What the commit holds decides the other errors of content (RepositoryShapeError): ``subpath``
        gone (SourcePathMissing), or not a directory (SourcePathNotADirectory).
        """
        commit = check_object_id(commit, "commit")
        subpath = _normalize_subpath(subpath)
        self._require_mirror()
        invocation = git_at(
            # -t: directories are records too, bounded like symlinks and submodules; without it, a tree
            # of empty trees (billions of directories in a few pages of objects) printed nothing and ran
            # until the time limit, on every poll.
            self.path,
            "--literal-pathspecs",
            "ls-tree",
            "-r",
            "-t",
            "-l",
            "-z",
            f"{commit}:{subpath}",
            "--",
            *paths,
        )
        kept = frozenset(name.encode("utf-8", "surrogateescape") for name in files_only)
        records, returncode, stderr, stopped = self._local_records(
            invocation, max_files=max_entries, max_skipped=MAX_SKIPPED_ENTRIES, kept=kept
        )
        returncode = 0 if stopped else returncode
        if returncode != 0:
            self._require_commit(commit)
            raise self._unlisted(commit, subpath, stderr)
        files: dict[str, TreeFile] = {}
        for record in records:
            meta, _, name = record.partition(b"\t")
            mode, kind, sha, size = meta.split()
            # surrogateescape keeps a name that is not UTF-8 round-trippable.
            path = name.decode("utf-8", "surrogateescape")
            # Symlinks are blobs too, but their content is a path, not a file.
            if kind == b"blob" and mode != b"120000":
                files[path] = TreeFile(sha.decode("ascii"), int(size))
            elif name in kept:
                raise NotARegularFile(path, _entry_kind(mode))
        return files

    def _unlisted(self, commit: str, subpath: str, stderr: str) -> PermanentError:
        """Why ``subpath`` could not be listed at ``commit``, a commit the mirror holds. The entry the commit
        has there decides, read from git's listing of that one entry (git's wording of the failure is not
        matched): none, or one that is not a directory, is the pushed content's doing. Anything else
        (git failing to answer, a directory it could not list) is the mirror's or git's, as before."""
        if subpath:
            # One entry: git reads only the trees on the way to it, whatever the commit holds elsewhere.
            answer = self._local(
                git_at(self.path, "--literal-pathspecs", "ls-tree", "-z", commit, "--", subpath)
            )
            entry = answer.stdout.split(b"\0", 1)[0]
            if answer.returncode == 0 and not entry:
                return SourcePathMissing(subpath, commit)
            mode = entry.partition(b" ")[0]
            if answer.returncode == 0 and mode != b"040000":
                return SourcePathNotADirectory(subpath, commit, _entry_kind(mode))
        return PermanentError(f"cannot list {subpath!r} at commit {commit}: {stderr_summary(stderr, ())}")

    def tree_changes(
        self, old: str, new: str, subpath: str = "", *, paths: Sequence[str] = (), max_changes: int
    ) -> dict[str, TreeFile | None] | None:
        """What changed under ``subpath`` from commit ``old`` to ``new``: each changed path (relative to
        ``subpath``, restricted to ``paths`` as ``list_tree`` is) -> its file at ``new``, or None when it
        is gone or no longer a regular file. None when git cannot compare the two (``old`` pruned, the
        directory new) or when ``max_changes`` or more paths changed: list the whole tree then.

        Read in process (libgit2's object database, ``ObjectStore.tree_changes``) up to a bounded number of
        tree entries; past that, or for what libgit2 cannot read, one git process whatever the tree's
        size: ``diff-tree``, whose records carry each path's new mode and blob; the blobs' sizes come
        from libgit2 or the mirror's ``cat-file`` process. No path is ever on a command line, so no
        repository can make one too long.
        """
        old, new = check_object_id(old, "commit"), check_object_id(new, "commit")
        subpath = _normalize_subpath(subpath)
        self._require_mirror()
        if self._objects.usable:
            try:
                found = self._objects.tree_changes(
                    old, new, subpath, paths=paths, max_changes=max_changes, max_path=MAX_RECORD_BYTES
                )
            except Unreadable as exc:
                logger.info("comparing %s and %s with git: %s", old, new, exc)
            else:
                return None if found is None else self._sized(found)
        invocation = git_at(
            self.path, "--literal-pathspecs", "diff-tree", "-r", "-z", "--no-renames", "--raw",
            f"{old}:{subpath}", f"{new}:{subpath}", "--", *paths,
        )  # fmt: skip
        try:
            records, returncode, _, stopped = self._local_records(
                invocation, max_files=max_changes, counted=b":", timeout=COMPARE_TIMEOUT
            )
        except OverlongTreeEntry:
            return None  # the whole tree's listing refuses it, and says where
        except GitTookTooLong:
            # diff-tree prints only once it has compared everything: a tree of empty trees (billions of
            # directories, no file) kept it busy, on every poll, until the time limit. The whole tree's
            # listing is bounded as it goes, and refuses such a tree.
            logger.info(
                "comparing %s and %s took git longer than %gs: listing the tree", old, new, COMPARE_TIMEOUT
            )
            return None
        if stopped or returncode != 0 or len(records) % 2:
            return None  # stopped at max_changes, or git could not compare them
        changed: dict[str, str | None] = {}
        for meta, name in zip(records[::2], records[1::2], strict=True):
            # ":<old mode> <new mode> <old blob> <new blob> <status>"; a gone file's new mode is 000000.
            _, new_mode, _, new_blob, _ = meta.split(b" ")
            regular = new_mode in (b"100644", b"100755")
            changed[name.decode("utf-8", "surrogateescape")] = new_blob.decode("ascii") if regular else None
        return self._sized(changed)

    def _sized(self, changed: dict[str, str | None]) -> dict[str, TreeFile | None]:
        sizes = self._blob_sizes({blob for blob in changed.values() if blob is not None})
        return {
            path: TreeFile(blob, sizes[blob]) if blob is not None else None for path, blob in changed.items()
        }

    def _blob_sizes(self, blobs: Iterable[str]) -> dict[str, int]:
        """Each blob's size in bytes (nothing is read): from libgit2 in process, else from the mirror's
        ``cat-file`` process."""
        wanted = sorted(blobs)
        if not wanted:
            return {}
        answers = self._in_process(self._objects.kind_and_size, wanted) or self._batch().sizes(wanted)
        sizes: dict[str, int] = {}
        for blob, answer in zip(wanted, answers, strict=True):
            if answer is None or answer[0] != "blob":
                raise ObjectNotFoundError(f"{blob} is not a blob in the mirror at {self.path}")
            sizes[blob] = answer[1]
        return sizes

    def _in_process(self, ask: Callable[[str], _Answer], object_ids: Sequence[str]) -> list[_Answer] | None:
        """``ask`` of each object through libgit2, or None when it cannot answer (git is asked then)."""
        if not self._objects.usable:
            return None
        try:
            return [ask(object_id) for object_id in object_ids]
        except Unreadable as exc:
            logger.info("libgit2 cannot read the mirror at %s (%s): asking git", self.path, exc)
            return None

    def _batch(self) -> CatFileBatch:
        """The mirror's one ``cat-file`` process, started again if it died."""
        if self._cat_file is None or not self._cat_file.alive:
            if self._cat_file is not None:
                self._cat_file.close()
            self._cat_file = CatFileBatch(self.path)
        return self._cat_file

    def read_blob(self, sha: str) -> bytes:
        return self.read_blobs([sha])[sha]

    def read_blobs(self, shas: Iterable[str]) -> dict[str, bytes]:
        """The content of each blob, keyed by the sha as given."""
        wanted = {sha: check_object_id(sha, "blob sha") for sha in shas}
        if not wanted:
            return {}
        self._require_mirror()
        object_ids = list(wanted.values())
        found = self._in_process(self._objects.read, object_ids) or self._batch().read(object_ids)
        contents: dict[str, bytes] = {}
        for (sha, object_id), answer in zip(wanted.items(), found, strict=True):
            if answer is None:
                raise ObjectNotFoundError(f"blob {sha} is not in the mirror at {self.path}")
            kind, data = answer
            if kind != "blob":
                raise NotABlob(object_id, kind)
            contents[sha] = data
        return contents

    def commit_info(self, commit: str) -> CommitInfo:
        # git's own formatting: GitPython's object parser (no longer used) assumes
        # 40-hex ids and cannot read SHA-256 repositories.
        object_id = check_object_id(commit, "commit")
        if (known := self._tips.get(object_id)) is not None:
            return known
        self._require_mirror()
        found = self._in_process(self._objects.kind_and_size, [object_id])
        if found is None:
            kind = self._local(git_at(self.path, "cat-file", "-t", object_id))
            type_name = kind.stdout.decode("ascii", "replace").strip() if kind.returncode == 0 else None
        else:
            type_name = found[0][0] if found[0] is not None else None
        if type_name is None:
            raise ObjectNotFoundError(f"commit {commit} is not in the mirror at {self.path}")
        if type_name != "commit":
            raise PermanentError(f"{commit} is a {type_name}, not a commit")
        tip = self._tip(object_id)
        if tip is None:
            raise ObjectNotFoundError(f"commit {commit} is not in the mirror at {self.path}")
        return tip[0]

    def commit_identities(
        self,
        commit: str,
        *,
        since: str | None = None,
        limit: int = 1000,
        range_limit: int = 10_000,
        path: str = "",
    ) -> set[str]:
        """Author and committer emails (lower case) of commits reachable from ``commit`` but not ``since``
        that touch ``path`` (the source's directory; "" the whole tree): a commit elsewhere in a monorepo
        changes nothing the rollout brings.

        Without ``since`` (a first rollout), bounded to the newest ``limit`` commits: a long history is
        judged by its recent authors. A range from ``since`` (or the whole history, when the mirror lost
        ``since``) is read up to ``range_limit`` commits, and one longer holds MORE_COMMITS_THAN_READ:
        not every author is known.
        """
        commit = check_object_id(commit, "commit")
        facts = _COMMIT_FACTS.get((str(self.path), commit))
        if since and facts is not None and facts.parents == (since,) and limit >= 1:
            return set(facts.identities)  # the one commit reachable from ``commit`` and not ``since``
        revisions = [commit]
        if since and since != commit:
            revisions.append(f"^{check_object_id(since, 'commit')}")

        def emails_of(count: int, *wanted: str) -> subprocess.CompletedProcess[bytes]:
            # Each email cut by git to a bound: a commit behind the tip (whose size nothing checked) may
            # name an author of megabytes, and all of this output is read into the worker.
            cut = f"%<({IDENTITY_COLUMNS},trunc)"
            log_format = f"--format={cut}%ae%x00{cut}%ce"
            scope = [f":(literal){path}"] if path else []
            return self._local(
                git_at(self.path, "log", f"--max-count={count}", log_format, *wanted, "--", *scope)
            )

        ranged = len(revisions) > 1
        # One commit past the bound tells a range that is longer than what is read.
        completed = emails_of(range_limit + 1 if ranged else limit, *revisions)
        if completed.returncode != 0 and ranged:
            # ``since`` is not in the mirror (a force push pruned it): the directory's whole history is the
            # range, read as far as a range is, and marked when longer: a force push that lost the base
            # could otherwise bury a commit past the newest ``limit``.
            completed = emails_of(range_limit + 1, commit)
        if completed.returncode != 0:
            self._require_commit(commit)
            raise PermanentError(f"cannot list the commits of {commit}")
        lines = completed.stdout.decode("utf-8", "replace").splitlines()
        identities: set[str] = set()
        for line in lines[:range_limit] if ranged else lines:
            identities.update(filter(None, map(_identity, line.split("\0"))))
        if ranged and len(lines) > range_limit:
            identities.add(MORE_COMMITS_THAN_READ)
        return identities

    def _run_fetch(
        self, invocation: GitInvocation, where: str, timeout: float, interrupted: Callable[[], bool] | None
    ) -> GitRun:
        try:
            return run(invocation, timeout=timeout, interrupted=interrupted)
        except subprocess.TimeoutExpired:
            logger.info("fetch of %s timed out after %.1fs", where, timeout)
            # git was killed: what it was writing stays until git's own prune (two weeks), and a pusher
            # whose pack never arrives in time would fill the disk a poll at a time.
            self.sweep_temporary_objects(older_than=0)
            raise TemporaryError(f"fetching {where} timed out after {timeout:g}s") from None
        except Interrupted:
            logger.info("fetch of %s stopped: its caller has something more urgent to do", where)
            self.sweep_temporary_objects(older_than=0)
            raise FetchInterrupted(f"fetching {where} was stopped for something more urgent") from None

    def sweep_temporary_objects(self, *, older_than: float) -> int:
        """Deletes the temporary objects and packs git writes before it moves them into place
        (``objects/??/tmp_obj_*``, ``objects/pack/tmp_*``) not written for ``older_than`` seconds; returns
        how many. A fetch killed at its timeout leaves them. The source's lock keeps other fetches of
        the branch away; previews hold no lock, so nothing written since a preview that may still run
        began is swept (its ref's name says when, ``PreviewRef``), whatever ``older_than``. Nothing is
        swept while git's maintenance holds ``gc.pid``."""
        if self._maintenance_running():
            return 0  # git's maintenance runs (its own session, not killed with the fetch): its files too
        deadline = time.time() - older_than
        unheld = self._outside_live_previews()
        swept = self._remove_temporary(lambda found: found.st_mtime <= deadline and unheld(found))
        if swept:
            logger.info("removed %d temporary object files a stopped git left in %s", swept, self.path)
        return swept

    def _outside_live_previews(self) -> Callable[[os.stat_result], bool]:
        """Whether a temporary file cannot be a running preview's: written before the earliest preview
        whose ref says it may still run began (1s early, for coarse clocks). The refs are listed when
        the first file is asked about, so a mirror without temporary files costs no git process; a
        preview whose ref came after that listing writes after it too, and callers spare files written
        after their sweep began (a preview writes its ref before its fetch starts)."""
        earliest: list[float] = []

        def unheld(found: os.stat_result) -> bool:
            if not earliest:
                now, refs = time.time(), self._preview_refs()
                # Refs that cannot be listed may name a live preview: every file is spared, this time.
                began = (ref.began for ref in refs or () if ref.live(now) and ref.began is not None)
                earliest.append(min(began, default=math.inf) if refs is not None else -math.inf)
            return found.st_mtime < earliest[0] - 1

        return unheld

    def sweep_stale_previews(self) -> int:
        """Deletes the refs of previews that are over: a worker killed between a preview's fetch and its
        cleanup left its ref, and with it all it fetched. Over is past the time its name gives, which
        covers its fetch and its plan (``PREVIEW_READ_SECONDS``), so that a preview on another worker keeps
        its ref while it reads; a name without times is over once its ref file is
        UNTIMED_PREVIEW_REF_SECONDS old (or packed). Returns how many went. Objects only they reached are
        left to git's gc, which prunes them once unreachable for two weeks (gc.pruneExpire). While there
        is no preview ref, this runs no git process: it looks at the ref files."""
        if not self._has_preview_refs():
            return 0
        now = time.time()
        stale = [ref.name for ref in self._preview_refs() or () if not self._preview_may_run(ref, now)]
        if not stale:
            return 0
        # One transaction; deleting a ref another sweep deleted first is no failure.
        commands = "".join(f"delete {name}\n" for name in stale).encode()
        try:
            completed = run(git_at(self.path, "update-ref", "--stdin"), timeout=LOCAL_TIMEOUT, input=commands)
        except subprocess.TimeoutExpired:
            logger.warning("deleting %d stale preview refs in %s timed out", len(stale), self.path)
            return 0  # housekeeping: the fetch or preview that asked goes on, and the next one tries again
        if completed.returncode != 0:
            why = stderr_summary(completed.stderr.decode("utf-8", "replace"), ())
            logger.warning("cannot delete %d stale preview refs in %s: %s", len(stale), self.path, why)
            return 0
        logger.info(
            "deleted %d preview refs left by previews that did not finish in %s", len(stale), self.path
        )
        return len(stale)

    def _preview_may_run(self, ref: PreviewRef, now: float) -> bool:
        if ref.began is not None:
            return ref.live(now)
        try:  # git's gc packs refs, and deletes their files: one packed is long done
            written = (self.path / ref.name).stat().st_mtime
        except OSError:
            return False
        return now - written < UNTIMED_PREVIEW_REF_SECONDS

    def _preview_refs(self) -> list[PreviewRef] | None:
        """The preview refs, or None when git could not list them."""
        try:
            listed = self._local(git_at(self.path, "for-each-ref", "--format=%(refname)", PREVIEW_REF_PREFIX))
        except TemporaryError:
            return None
        if listed.returncode != 0:
            return None
        return [
            PreviewRef.parse(name) for name in listed.stdout.decode("utf-8", "replace").splitlines() if name
        ]

    def _has_preview_refs(self) -> bool:
        """Whether the mirror may hold a preview ref, from its ref files (no git process): a loose ref
        under ``refs/sluice/previews/``, or one in ``packed-refs``; a reftable store always may."""
        if (self.path / "reftable").is_dir():
            return True
        try:
            with os.scandir(self.path / PREVIEW_REF_PREFIX) as entries:
                if next(entries, None) is not None:
                    return True
        except OSError:
            pass  # no such directory: git removes it with its last ref
        try:
            return f" {PREVIEW_REF_PREFIX}".encode() in (self.path / "packed-refs").read_bytes()
        except OSError:
            return False

    def _refuse_overfull(self, where: str, *, since: float, completed: GitRun, locked: bool = True) -> None:
        """Raises FetchTooLarge when a fetch that failed was stopped at ``max_fetch_bytes``: a temporary
        file it wrote since ``since`` has that size (the kernel let it grow no further; removed), or
        what it said on stderr does (the Git server's messages). ``locked``: the fetch holds the source's
        lock, so the temporary files written since it began are its own (a preview's are not)."""
        self._refuse_out_of_memory(where, since=since, completed=completed, locked=locked)
        bound = self.max_fetch_bytes
        if bound <= 0:
            return
        if completed.stderr_bytes >= bound:
            if locked:  # what it began to write, but a running preview's; a preview's go later
                self._remove_written_since(since)
            logger.warning("fetch of %s stopped at %d bytes of the server's messages", where, bound)
            raise FetchTooLarge(where, bound, server_messages=True)
        if self._remove_temporary(lambda found: found.st_size >= bound and found.st_mtime >= since - 1):
            logger.warning("fetch of %s stopped at %d bytes (SLUICE_MAX_FETCH_BYTES)", where, bound)
            raise FetchTooLarge(where, bound)

    def _refuse_out_of_memory(self, where: str, *, since: float, completed: GitRun, locked: bool) -> None:
        """Raises FetchOutOfMemory when git, held to ``max_git_memory``, said an allocation failed. What it
        began to write goes as for a fetch stopped by the server's messages: a locked fetch's now (a running
        preview's spared), a preview's at a later sweep."""
        bound = self.max_git_memory
        if bound <= 0 or not OUT_OF_MEMORY.search(completed.stderr.decode("utf-8", "replace")):
            return
        if locked:
            self._remove_written_since(since)
        logger.warning(
            "fetch of %s stopped at %d bytes of git's memory (SLUICE_MAX_GIT_MEMORY)",
            where,
            bound,
        )
        raise FetchOutOfMemory(where, bound)

    def _remove_written_since(self, since: float) -> None:
        """Removes the temporary files a locked fetch that began at ``since`` wrote, sparing a running
        preview's. Written by now: a preview whose ref the sweep lists too late writes after this."""
        if self._maintenance_running():
            return  # git's maintenance, detached by an earlier fetch, writes its own: they go at a sweep
        unheld, now = self._outside_live_previews(), time.time()
        self._remove_temporary(lambda found: since - 1 <= found.st_mtime <= now and unheld(found))

    def _remove_temporary(self, chosen: Callable[[os.stat_result], bool]) -> int:
        swept = 0
        objects = self.path / "objects"
        for directory in (objects / "pack", *objects.glob("[0-9a-f][0-9a-f]")):
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                if not entry.name.startswith("tmp_"):
                    continue
                try:
                    if chosen(entry.stat(follow_symlinks=False)):
                        os.unlink(entry.path)
                        swept += 1
                except OSError:
                    continue  # gone already, or moved into place meanwhile
        return swept

    def _maintenance_running(self) -> bool:
        """Whether git's maintenance holds ``gc.pid``; git itself ignores one older than 12 hours (its
        process was killed), and so does the sweep."""
        try:
            return (self.path / "gc.pid").stat().st_mtime > time.time() - GC_PID_STALE_SECONDS
        except OSError:
            return False

    def _maintain(self) -> None:
        """git's automatic maintenance (gc once loose objects or packs pile up), run apart from the fetch
        so that it is not bounded by what one fetch may write (its memory is bounded as the fetch's is);
        a failure is logged, never raised."""
        try:
            maintenance = git_at(self.path, "maintenance", "run", "--auto", "--quiet")
            completed = run(memory_bounded(maintenance, self.max_git_memory), timeout=LOCAL_TIMEOUT)
        except subprocess.TimeoutExpired:
            logger.warning("git maintenance of %s took longer than %gs", self.path, LOCAL_TIMEOUT)
            return
        if completed.returncode != 0:
            stderr = completed.stderr.decode("utf-8", "replace")
            logger.warning("git maintenance of %s failed: %s", self.path, stderr_summary(stderr, ()))

    # --- internals ---

    def _recreate_with_format(self, object_format: str) -> bool:
        """Starts the mirror again with ``object_format``; False when it already has it (nothing to gain)."""
        if object_format not in OBJECT_FORMATS or self._object_format() == object_format:
            return False
        logger.warning("recreating the mirror at %s for %s object ids", self.path, object_format)
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self._ensure_initialized(object_format)
        return True

    def _object_format(self) -> str:
        completed = self._local(git_at(self.path, "rev-parse", "--show-object-format"))
        return completed.stdout.decode("ascii", "replace").strip() or "sha1"

    def _ensure_initialized(self, object_format: str = "sha1") -> None:
        if (self.path / "HEAD").is_file():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Two processes initialising at once is harmless: git init only adds what is missing.
        completed = run(
            GitInvocation(
                ["git", "init", "--bare", "--quiet", f"--object-format={object_format}", str(self.path)],
                base_env(),
            ),
            timeout=LOCAL_TIMEOUT,
        )
        if completed.returncode != 0:
            stderr = completed.stderr.decode("utf-8", "replace")
            raise PermanentError(f"cannot create the mirror at {self.path}: {stderr_summary(stderr, ())}")

    def _require_mirror(self) -> None:
        if not (self.path / "HEAD").is_file():
            raise ObjectNotFoundError(f"no mirror at {self.path}; fetch first")

    def _require_commit(self, commit: str) -> None:
        exists = self._local(git_at(self.path, "cat-file", "-e", f"{commit}^{{commit}}"))
        if exists.returncode != 0:
            raise ObjectNotFoundError(f"commit {commit} is not in the mirror at {self.path}")

    def _local_records(
        self,
        invocation: GitInvocation,
        *,
        max_files: int | None,
        counted: bytes | tuple[bytes, ...] = _FILE_MODES,
        max_skipped: int | None = None,
        timeout: float | None = None,
        kept: Collection[bytes] = (),
    ) -> tuple[list[bytes], int, str, bool]:
        """The records ``git ls-tree -z`` (or ``diff-tree -z``) prints, read as they come; git is stopped
        once ``max_files`` records starting with ``counted`` are read. Returns the records, the exit code,
        stderr, and whether git was stopped (then the records are cut). ``max_skipped`` and ``kept``: as
        ``_read_records`` takes them."""
        timed_out = threading.Event()
        with tempfile.TemporaryFile() as stderr:
            process = subprocess.Popen(
                invocation.argv,
                env=invocation.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )

            def stop() -> None:
                timed_out.set()
                process.kill()

            limit = LOCAL_TIMEOUT if timeout is None else timeout
            timer = threading.Timer(limit, stop)
            timer.start()
            try:
                records, stopped = _read_records(
                    process, max_files, counted, max_skipped=max_skipped, kept=kept
                )
            finally:
                timer.cancel()
                if process.poll() is None:
                    process.kill()
                returncode = process.wait()
            if timed_out.is_set():
                raise GitTookTooLong(f"git took longer than {limit:g}s reading {self.path}")
            stderr.seek(0)
            message = stderr.read(64 * 1024).decode("utf-8", "replace")
        return records, returncode, message, stopped

    def _local(self, invocation: GitInvocation) -> subprocess.CompletedProcess[bytes]:
        try:
            return run(invocation, timeout=LOCAL_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise TemporaryError(f"git took longer than {LOCAL_TIMEOUT:g}s reading {self.path}") from None

    def _read_ref(self, ref: str) -> str | None:
        """The commit id ``ref`` holds, read from the mirror's ref files as git stores them (a loose ref,
        else ``packed-refs``) without starting git; git is asked when the files do not say."""
        try:
            text = (self.path / ref).read_text("ascii").strip()
        except (OSError, UnicodeDecodeError):
            text = self._packed_ref(ref)
        if text and _OBJECT_ID.fullmatch(text):
            return text
        return self._resolve(ref)  # a symbolic ref, another ref store, or no such ref

    def _packed_ref(self, ref: str) -> str:
        try:
            lines = (self.path / "packed-refs").read_bytes().splitlines()
        except OSError:
            return ""
        suffix = f" {ref}".encode()
        found = next((line.partition(b" ")[0] for line in lines if line.endswith(suffix)), b"")
        return found.decode("ascii", "replace")

    def _tip(self, ref: str) -> tuple[CommitInfo, tuple[str, ...]] | None:
        """The commit ``ref`` points at and its parents: read by libgit2 in process, else by one call
        to git; None without one."""
        self._refuse_oversized(ref)
        commit = self._objects.commit(ref) or self._commit_by_git(ref)
        if commit is None:
            return None
        message = commit.message
        info = CommitInfo(
            sha=commit.sha,
            author_name=commit.author_name,
            author_email=commit.author_email,
            message=message.rstrip("\n") + "\n" if message.strip() else "",
            committed_at=_committed_at(commit.committed_at),
        )
        if len(_COMMIT_FACTS) >= _COMMIT_FACTS_KEPT:
            _COMMIT_FACTS.clear()
        emails = set(filter(None, map(_identity, (commit.author_email, commit.committer_email))))
        _COMMIT_FACTS[(str(self.path), info.sha)] = _CommitFacts(commit.parents, frozenset(emails))
        return info, commit.parents

    def _refuse_oversized(self, ref: str) -> None:
        """Raises ``CommitTooLarge`` for a commit past ``MAX_COMMIT_BYTES``, before anything reads it:
        libgit2 tells its size from the object's header; git is asked when libgit2 cannot tell."""
        size = self._objects.commit_size(ref)
        if size is None:
            completed = self._local(git_at(self.path, "cat-file", "-s", f"{ref}^{{commit}}"))
            text = completed.stdout.decode("ascii", "replace").strip()
            size = int(text) if completed.returncode == 0 and text.isdigit() else 0  # none: asked below
        if size > MAX_COMMIT_BYTES:
            raise CommitTooLarge(self._resolve(ref) or ref, size)  # the commit, a tag peeled

    def _commit_by_git(self, ref: str) -> Commit | None:
        completed = self._local(
            git_at(
                self.path,
                "log",
                "-1",
                "--no-show-signature",
                "--format=%H%x00%P%x00%an%x00%ae%x00%ct%x00%ce%x00%B",
                f"{ref}^{{commit}}",
                "--",
            )
        )
        if completed.returncode != 0:
            return None
        sha, parents, author_name, author_email, timestamp, committer_email, message = (
            completed.stdout.decode("utf-8", "replace").split("\0", 6)
        )
        return Commit(
            sha=sha.strip(),
            parents=tuple(parents.split()),
            author_name=author_name,
            author_email=author_email,
            committed_at=int(timestamp) if timestamp.isdigit() else 0,  # git prints none for a broken date
            committer_email=committer_email,
            message=message.removesuffix("\n"),  # the line end ``--format`` puts after each commit
        )

    def directory_tree(self, commit: str, path: str) -> str | None:
        """The id of the tree ``path`` ("": the root) names at ``commit``: two commits with one id hold that
        directory byte for byte. None when the mirror lacks the commit or the commit the directory."""
        commit = check_object_id(commit, "commit")
        spec = f"{commit}:{path}" if path else f"{commit}^{{tree}}"
        completed = self._local(
            git_at(self.path, "rev-parse", "--verify", "--quiet", "--end-of-options", spec)
        )
        if completed.returncode != 0:
            return None
        return completed.stdout.decode("ascii").strip() or None

    def _resolve(self, ref: str) -> str | None:
        completed = self._local(git_at(self.path, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"))
        if completed.returncode != 0:
            return None
        return completed.stdout.decode("ascii").strip()

    def _is_ancestor(self, ancestor: str, descendant: str) -> bool:
        completed = self._local(git_at(self.path, "merge-base", "--is-ancestor", ancestor, descendant))
        # Exit 1 means "not an ancestor"; anything else (the old tip pruned, say)
        # leaves the ancestry unproven, which counts as a forced update too.
        return completed.returncode == 0


def _fetch_error(
    where: str,
    stderr: str,
    returncode: int,
    invocation: GitInvocation,
    credentials: Credentials | None,
    *,
    url: str,
) -> tuple[GitopsError, str]:
    """What a failed fetch raises, and its reason in a few words (for the log)."""
    error, reason = classify_git_error(stderr, returncode)
    if reason == AUTHENTICATION_FAILED:
        # git's own words ("could not read Username") hide which of the two it was.
        reason += " (credentials rejected)" if credentials else " (credentials needed, none given)"
    elif reason == REDIRECTED and (target := redirect_target(url, credentials)):
        # git does not say where (a GitLab project named without .git, a renamed repository).
        reason += f": it points to {target}"
    return error(f"cannot fetch {where}: {reason} ({stderr_summary(stderr, invocation.secrets)})"), reason


def _committed_at(timestamp: int) -> datetime:
    """A commit's date; the epoch for one past what a datetime holds (year 10000 on): a pusher writes
    it, and it must not make every fetch of the branch fail."""
    try:
        return datetime.fromtimestamp(timestamp, tz=UTC)
    except (ValueError, OverflowError, OSError):
        return datetime.fromtimestamp(0, tz=UTC)


class FetchInterrupted(TemporaryError):
    """A fetch stopped because its caller asked (``GitMirror.fetch``'s ``interrupted``)."""


class GitTookTooLong(TemporaryError):
    """A local git read ran past its time limit, and was stopped."""


class TooManySkippedEntries(PermanentError):
    """A tree lists more directories, symlinks and submodules than Sluice will skip over: three small
    trees that point at each other, ending in 1,000 submodules (or in the empty tree), list 10⁹ entries
    from a 100 KB repository."""

    def __init__(self, bound: int, example: str) -> None:
        super().__init__(f"more than {bound:,} directories, symlinks and submodules where Sluice reads files")
        self.bound = bound
        self.example = example


# How long git may compare two trees before the whole tree is listed instead: a comparison worth having
# takes milliseconds (one file changed among 10,000 does).
COMPARE_TIMEOUT = 5.0


class OverlongTreeEntry(PermanentError):
    """A tree names a file whose path is longer than any listing record Sluice reads."""

    def __init__(self, example: str) -> None:
        super().__init__(f"a path in the tree is longer than {MAX_RECORD_BYTES:,} bytes")
        self.example = example


class RepositoryShapeError(PermanentError):
    """What a commit holds is not shaped as Sluice reads it. A repository's content is a pusher's, and
    untrusted: the revision is rejected, naming where, rather than fetched again and again as a
    PermanentError of Git or of the mirror is. Each kind says where in its own attributes."""


class SourcePathMissing(RepositoryShapeError):
    """The source's path (``path``, from the repository's root) is not in the commit."""

    def __init__(self, path: str, commit: str) -> None:
        super().__init__(f"{path!r} does not exist at commit {commit}")
        self.path = path


class SourcePathNotADirectory(RepositoryShapeError):
    """The source's path is ``kind`` ("a file", "a symlink", "a submodule") in the commit."""

    def __init__(self, path: str, commit: str, kind: str) -> None:
        super().__init__(f"{path!r} is not a directory at commit {commit}: it is {kind}")
        self.path = path
        self.kind = kind


class NotARegularFile(RepositoryShapeError):
    """A path the caller reads as a file (``list_tree``'s ``files_only``) is ``kind``: "a symlink",
    "a submodule" or "a directory"."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(f"{path!r} is {kind}, not a regular file")
        self.path = path
        self.kind = kind


class NotABlob(RepositoryShapeError):
    """A tree entry with a file's mode names an object that is not a blob (a tree, a commit): git writes
    no such tree, but a pushed pack can hold one, as fetches do not check. Only ``object_id`` is known
    here: the caller, which listed the tree, knows the path."""

    def __init__(self, object_id: str, kind: str) -> None:
        super().__init__(f"{object_id} is a {kind}, not a blob")
        self.object_id = object_id
        self.kind = kind


def _read_records(
    process: subprocess.Popen[bytes],
    max_files: int | None,
    counted: bytes | tuple[bytes, ...] = _FILE_MODES,
    *,
    max_skipped: int | None = None,
    kept: Collection[bytes] = (),
) -> tuple[list[bytes], bool]:
    """``ls-tree`` records up to the one listing file number ``max_files``, and whether git had more
    (then the rest is left unread). Only regular files count: symlinks and submodules, which the
    listing skips, must not make a cut listing look complete. With ``max_skipped``, the records that
    do not count are dropped as they come (but those whose path is in ``kept``: the caller refuses
    them), and past that many of them TooManySkippedEntries is raised. A record longer than
    MAX_RECORD_BYTES raises OverlongTreeEntry."""
    if process.stdout is None:
        raise RuntimeError("git was started without a stdout pipe")
    records: list[bytes] = []
    files = skipped = 0
    pending = b""
    while chunk := os.read(process.stdout.fileno(), 64 * 1024):
        *complete, pending = (pending + chunk).split(b"\0")
        if len(pending) > MAX_RECORD_BYTES:  # each read would copy and search it again: quadratic
            raise OverlongTreeEntry(pending.partition(b"\t")[2][:100].decode("utf-8", "replace"))
        for record in complete:
            if max_files is not None and files == max_files:
                return records, True
            if max_skipped is None or record.startswith(counted):
                records.append(record)
                files += record.startswith(counted)
                continue
            if kept and record.partition(b"\t")[2] in kept:
                records.append(record)
                continue
            skipped += 1
            if skipped > max_skipped:
                name = record.partition(b"\t")[2].decode("utf-8", "surrogateescape")
                raise TooManySkippedEntries(max_skipped, name)
    return records, False


def _entry_kind(mode: bytes) -> str:
    """What a tree entry of ``mode`` is, as errors name it ("a symlink")."""
    return _ENTRY_KINDS.get(mode, f"an entry of mode {mode.decode('ascii', 'replace')}")


def _normalize_subpath(subpath: str) -> str:
    parts = [part for part in PurePosixPath(subpath.strip()).parts if part not in ("/", ".")]
    if ".." in parts:
        raise PermanentError(f"path {subpath!r} leaves the repository")
    return "/".join(parts)
