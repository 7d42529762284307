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
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pygit2

logger = logging.getLogger("gitops.fetch")

# libgit2's object types (pygit2.enums.ObjectType) by name.
_KIND_NAMES = {1: "commit", 2: "tree", 3: "blob", 4: "tag"}
_HEX = re.compile(r"[0-9a-fA-F]+")
_UTF8 = frozenset({b"utf-8", b"utf8"})


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
    """pygit2, imported where a mirror is first opened: about 20 MiB that the web and the live cache,
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
        finds none or cannot tell it as git would: git is asked then, and is the judge of both.

        libgit2 finds the commit; its headers are read here from the raw object, and only when each
        is plainly formed (see ``_commit_of``): libgit2's own reading of an odd signature differs
        from git's, and these identities feed the no-self-approval check."""
        repository = self._open()
        if repository is None:
            return None
        try:
            found = repository.revparse_single(f"{revision}^{{commit}}")
            if not isinstance(found, self._git2.Commit):  # ``^{commit}`` peels to one, or fails
                return None
            raw = repository.odb.read(found.id)[1]
        except KeyError:
            return None
        except (self._git2.GitError, ValueError, OSError, MemoryError) as exc:
            logger.info("libgit2 cannot read %s in %s (%s): asking git", revision, self._path, exc)
            return None
        return _commit_of(str(found.id), bytes(raw))

    def commit_size(self, revision: str) -> int | None:
        """The size in bytes of the commit ``revision`` (a full object id, or a ref that names a commit
        directly) names, its content not read; None when libgit2 cannot tell so cheaply (a tag, a
        missing ref, a mirror it cannot open): git is asked then."""
        repository = self._open()
        if repository is None:
            return None
        try:
            if len(revision) == self._git2.GIT_OID_HEXSZ and _HEX.fullmatch(revision):
                object_id = self._git2.Oid(hex=revision)
            else:
                reference = repository.references.get(revision)
                if reference is None:
                    return None
                object_id = reference.resolve().target
            kind, size = repository.odb.read_header(object_id)
        except (KeyError, self._git2.GitError, ValueError, TypeError, OSError):
            return None
        return int(size) if _KIND_NAMES.get(int(kind)) == "commit" else None

    def kind_and_size(self, object_id: str) -> tuple[str, int] | None:
        """The object's type name and size in bytes, its content not read; None when it is missing.
        Raises ``Unreadable`` when libgit2 cannot answer."""
        found = self._ask("read_header", object_id)
        return None if found is None else (_KIND_NAMES.get(int(found[0]), str(found[0])), int(found[1]))

    def read(self, object_id: str) -> tuple[str, bytes] | None:
        """The object's type name and content; None when it is missing. Raises ``Unreadable``."""
        found = self._ask("read", object_id)
        return None if found is None else (_KIND_NAMES.get(int(found[0]), str(found[0])), bytes(found[1]))

    def _ask(self, method: str, object_id: str) -> tuple[Any, Any] | None:
        """``odb.<method>(object_id)``: None for a missing object, ``Unreadable`` for any other failure."""
        odb = self._require(object_id).odb
        try:
            answer: tuple[Any, Any] = getattr(odb, method)(object_id)
        except KeyError:
            return None
        except (self._git2.GitError, ValueError, OSError, MemoryError) as exc:
            raise Unreadable(str(exc)) from exc
        return answer

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
            except (self._git2.GitError, ValueError, OSError) as exc:  # SHA-256 ids, not a repository
                logger.info("libgit2 cannot open the mirror at %s (%s): git reads it", self._path, exc)
                self._unusable = True
        return self._repository


# A signature git and libgit2 read alike: a name without surrounding blanks, an email without blanks or
# brackets, a date and a zone. Anything else is left to git.
_IDENT = re.compile(
    rb"(?P<name>[^<>\s\x00](?:[^<>\n\x00]*[^<>\s\x00])?)"
    rb" <(?P<email>[^<>\s\x00]*)> (?P<time>\d{1,12}) [+-]\d{4}"
)
_PARENT = re.compile(rb"[0-9a-f]{40}")


def _commit_of(sha: str, raw: bytes) -> Commit | None:
    """A commit object's facts as ``git log`` prints them, or None when its headers are anything but
    plain: one author, one committer, each a plain signature; parents as ids; UTF-8. The message is
    what follows the headers' blank line, cut at a NUL as git's ``%B`` cuts it."""
    header, _, body = raw.partition(b"\n\n")
    if b"\x00" in header:  # git ends a header line at a NUL and reads on: leave such a commit to it
        return None
    lines = header.split(b"\n")
    if not lines[0].startswith(b"tree "):
        return None
    # Parents are the lines right after the tree: git takes no ``parent`` line anywhere else.
    count = next(
        (index for index, line in enumerate(lines[1:]) if not line.startswith(b"parent ")), len(lines) - 1
    )
    parents = [line.removeprefix(b"parent ") for line in lines[1 : 1 + count]]
    fields: dict[bytes, list[bytes]] = {}
    for line in lines[1 + count :]:
        if line.startswith(b" "):  # a continued header (a signature, a merged tag)
            continue
        key, _, value = line.partition(b" ")
        fields.setdefault(key, []).append(value)
    authors, committers = fields.get(b"author", []), fields.get(b"committer", [])
    if b"parent" in fields:
        return None
    encodings = fields.get(b"encoding", [b"utf-8"])
    if len(authors) != 1 or len(committers) != 1 or len(encodings) != 1:
        return None
    author, committer = _IDENT.fullmatch(authors[0]), _IDENT.fullmatch(committers[0])
    if author is None or committer is None or encodings[0].lower() not in _UTF8:
        return None
    if not all(_PARENT.fullmatch(parent) for parent in parents):
        return None
    return Commit(
        sha=sha,
        parents=tuple(parent.decode("ascii") for parent in parents),
        author_name=_text(author["name"]),
        author_email=_text(author["email"]),
        committed_at=int(committer["time"]),
        committer_email=_text(committer["email"]),
        message=_text(body.split(b"\x00", 1)[0]),
    )


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")  # as git log's output was read


class Unreadable(Exception):
    """libgit2 could not read what git may: ask git."""
