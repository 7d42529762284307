"""Reading a mirror's objects in process, through libgit2 (pygit2): a commit, a blob's size, a blob.

A push's pass used to start two ``git`` processes for this besides its fetch: ``git log -1`` for the
new tip and ``git cat-file --batch-command`` for the changed files' sizes and contents, each about
1.5 ms of CPU to start, and a thread to feed the second. libgit2 answers the same questions in
microseconds, in the worker.

It answers only what it reads exactly as git does, and says so by returning None: a mirror whose
object ids it cannot read (SHA-256), a commit whose message declares another encoding than UTF-8
(``git log`` converts it), an object it cannot parse (``git`` is more lenient with a malformed
signature). The caller then asks git, as it did before. Listing and comparing trees stay with git:
its processes stop after a bounded number of entries, so a hostile tree of millions of files costs
the worker nothing.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pygit2

logger = logging.getLogger("gitops.fetch")

# libgit2's object types (pygit2.enums.ObjectType) by name.
_KIND_NAMES = {1: "commit", 2: "tree", 3: "blob", 4: "tag"}
_UTF8 = frozenset({"utf-8", "utf8"})


@dataclass(frozen=True)
class Commit:
    """What ``git log -1 --format=%H%x00%P%x00%an%x00%ae%x00%ct%x00%ce%x00%B`` prints of a commit."""

    sha: str
    parents: tuple[str, ...]
    author_name: str
    author_email: str
    committed_at: int  # seconds since the epoch (the committer's date)
    committer_email: str
    message: str  # the raw message, after the headers' blank line


def _pygit2() -> ModuleType:
    """pygit2, imported where a mirror is first read: about 20 MiB that the web and the live cache,
    which read none, do not load."""
    return importlib.import_module("pygit2")


class ObjectStore:
    """A mirror's object database, opened on first use and closed with ``close``; not thread-safe."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._repository: pygit2.Repository | None = None
        self._git2 = _pygit2()
        self._unusable = False

    def close(self) -> None:
        if self._repository is not None:
            self._repository.free()  # its files and mapped packs, now rather than at collection
            self._repository = None
        self._unusable = False  # the mirror may be made again (``GitMirror._recreate_with_format``)

    def commit(self, revision: str) -> Commit | None:
        """The commit ``revision`` (an object id or a ref, a tag peeled) names, or None when libgit2
        cannot tell it as git would (git is asked then). Raises ``KeyError`` when there is none."""
        repository = self._open()
        if repository is None:
            return None
        try:
            commit = repository.revparse_single(f"{revision}^{{commit}}")
            if not isinstance(commit, self._git2.Commit):  # ``^{commit}`` peels to one, or fails
                return None
            if (commit.message_encoding or "utf-8").lower() not in _UTF8:
                return None
            raw = repository.odb.read(commit.id)[1]
            return Commit(
                sha=str(commit.id),
                parents=tuple(str(parent) for parent in commit.parent_ids),
                author_name=commit.author.raw_name.decode("utf-8", "replace"),
                author_email=commit.author.raw_email.decode("utf-8", "replace"),
                committed_at=commit.commit_time,
                committer_email=commit.committer.raw_email.decode("utf-8", "replace"),
                message=raw.partition(b"\n\n")[2].decode("utf-8", "replace"),
            )
        except KeyError:
            raise
        except (self._git2.GitError, ValueError, OverflowError) as exc:
            logger.info("libgit2 cannot read %s in %s (%s): asking git", revision, self._path, exc)
            return None

    def kind_and_size(self, object_id: str) -> tuple[str, int] | None:
        """The object's type name and size in bytes, its content not read; None when it is missing.
        Raises ``Unreadable`` when libgit2 cannot answer."""
        repository = self._require(object_id)
        try:
            kind, size = repository.odb.read_header(object_id)
        except KeyError:
            return None
        except (self._git2.GitError, ValueError) as exc:
            raise Unreadable(str(exc)) from exc
        return _KIND_NAMES.get(int(kind), str(kind)), int(size)

    def read(self, object_id: str) -> tuple[str, bytes] | None:
        """The object's type name and content; None when it is missing. Raises ``Unreadable``."""
        repository = self._require(object_id)
        try:
            kind, data = repository.odb.read(object_id)
        except KeyError:
            return None
        except (self._git2.GitError, ValueError) as exc:
            raise Unreadable(str(exc)) from exc
        return _KIND_NAMES.get(int(kind), str(kind)), bytes(data)

    @property
    def usable(self) -> bool:
        return self._open() is not None

    def _require(self, object_id: str) -> pygit2.Repository:
        if len(object_id) != self._git2.GIT_OID_HEXSZ:  # an abbreviated id: git resolves those
            raise Unreadable(f"{object_id} is not a full object id")
        repository = self._open()
        if repository is None:
            raise Unreadable(f"libgit2 cannot read the mirror at {self._path}")
        return repository

    def _open(self) -> pygit2.Repository | None:
        if self._repository is None and not self._unusable and (self._path / "HEAD").is_file():
            try:
                # The mirror itself, never a repository found above it.
                no_search = self._git2.enums.RepositoryOpenFlag.NO_SEARCH
                self._repository = self._git2.Repository(str(self._path), no_search)
            except (self._git2.GitError, ValueError) as exc:  # SHA-256 ids, or not a repository (yet)
                logger.info("libgit2 cannot open the mirror at %s (%s): git reads it", self._path, exc)
                self._unusable = True
        return self._repository


class Unreadable(Exception):
    """libgit2 could not read what git may: ask git."""
