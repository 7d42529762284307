"""Reading a mirror's objects in process, through libgit2 (pygit2): a commit, a blob's size, a blob.

A push's pass used to start two ``git`` processes for this besides its fetch: ``git log -1`` for the
new tip and ``git cat-file --batch-command`` for the changed files' sizes and contents, each about
1.5 ms of CPU to start, and a thread to feed the second. libgit2 answers the same questions in
microseconds, in the worker.

It answers only what it reads exactly as git does, and says so by returning None: a mirror whose
object ids it cannot read (SHA-256), a commit whose message declares another encoding than UTF-8
(``git log`` converts it), an object it cannot parse (``git`` is more lenient with a malformed
signature). The caller then asks git, as it did before.

A push's pass also compares its commit's tree with the last one's (``tree_changes``, what ``git
diff-tree`` answered in a process of its own, about 2 ms of CPU to start it and read it): read here up
to MAX_COMPARED_ENTRIES entries and MAX_COMPARED_BYTES of tree objects, each tree's size asked before
it is read, and left to git past either, whose process stops at the caller's cap. Listing a whole tree
stays with git: so a hostile tree of millions of files costs the worker a bounded read at most.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from collections.abc import Callable, Sequence
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

    def tree_changes(
        self, old: str, new: str, subpath: str, *, paths: Sequence[str], max_changes: int, max_path: int
    ) -> dict[str, str | None] | None:
        """What ``git diff-tree -r --no-renames old:subpath new:subpath -- paths`` reports, read here: each
        changed path -> its blob at ``new`` when it is a regular file there, else None (gone, a symlink, a
        submodule). None where git's answer is None to the caller too: a side without ``subpath`` as a
        directory, ``max_changes`` or more changes, a changed path longer than ``max_path`` bytes.

        Raises ``Unreadable`` (ask git) for what is not read here as git would read it: a mirror libgit2
        cannot open, a missing or odd object, trees past MAX_COMPARED_BYTES, MAX_COMPARED_ENTRIES or
        MAX_COMPARED_DEPTH. So a hostile tree costs the worker a bounded read, then git's process.
        """
        comparison = _TreeComparison(self._ask, paths, max_changes, max_path)
        roots = [comparison.subtree(self._tree_of(commit), subpath) for commit in (old, new)]
        if roots[0] is None or roots[1] is None:
            return None
        return comparison.changes(roots[0], roots[1])

    def _tree_of(self, commit: str) -> bytes:
        """The root tree's id of a commit object (its size asked first: only its first line is read)."""
        size = self._ask("read_header", commit)
        if size is None or _KIND_NAMES.get(int(size[0])) != "commit" or int(size[1]) > MAX_COMPARED_BYTES:
            raise Unreadable(f"{commit} is not a commit libgit2 reads here")
        found = self._ask("read", commit)
        header = _COMMIT_TREE.match(bytes(found[1][:46])) if found is not None else None
        if header is None:
            raise Unreadable(f"commit {commit} does not begin with its tree")
        return bytes.fromhex(header.group(1).decode("ascii"))

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


# git's canonical modes (its ``canon_mode``): what diff-tree compares and prints.
_TREE, _LINK, _GITLINK = 0o040000, 0o120000, 0o160000
_REGULAR, _EXECUTABLE = 0o100644, 0o100755
# A comparison in process reads at most this many bytes of tree objects (each one's size asked before
# it is read), this many entries and this deep; past any, git compares (its process stops at the
# caller's cap on changes, and its memory is not the worker's). The bytes decide where each is cheaper:
# Python reads a tree at about 1.6 µs an entry, and `git diff-tree` costs about 2.2 ms of CPU whatever
# the trees (two directories of 1,000 files, ~90 KB: 3.2 ms here against 2.2 ms by git).
MAX_COMPARED_BYTES = 32 * 1024
MAX_COMPARED_ENTRIES = 1_000
MAX_COMPARED_DEPTH = 64
Entry = tuple[int, bytes]  # (canonical mode, object id)
Asked = Callable[[str, str], "tuple[Any, Any] | None"]
_MODE = re.compile(rb"[0-7]{1,7}")
_COMMIT_TREE = re.compile(rb"tree ([0-9a-f]{40})\n")
_PLAIN_PATH = re.compile(r"[^/]+(?:/[^/]+)*")


def _canonical_mode(mode: int) -> int:
    kind = mode & 0o170000
    if kind == 0o100000:
        return _EXECUTABLE if mode & 0o100 else _REGULAR
    if kind in (_LINK, _TREE):
        return kind
    return _GITLINK


def _tree_entries(data: bytes, limit: int) -> dict[bytes, Entry]:
    """A raw tree object's entries, name -> (canonical mode, id), at most ``limit`` of them; ``Unreadable``
    for anything git would read otherwise: a malformed entry, and entries out of git's order (git walks
    two trees in step, so an unsorted one reads differently there)."""
    entries: dict[bytes, Entry] = {}
    at, end, last = 0, len(data), b""
    while at < end:
        space = data.find(b" ", at, at + 8)
        nul = data.find(b"\0", space + 1)
        if space < 0 or nul < 0 or nul + 21 > end or not _MODE.fullmatch(data, at, space):
            raise Unreadable("a tree object libgit2 read is not one git wrote")
        name, mode = data[space + 1 : nul], _canonical_mode(int(data[at:space], 8))
        order = name + b"/" if mode == _TREE else name  # git sorts a directory as its name and "/"
        if name in (b"", b".", b"..") or b"/" in name or order <= last:
            raise Unreadable(f"a tree entry git would refuse or read otherwise: {name[:100]!r}")
        if len(entries) == limit:
            raise Unreadable(f"trees of more than {MAX_COMPARED_ENTRIES:,} entries")
        entries[name], last = (mode, data[nul + 1 : nul + 21]), order
        at = nul + 21
    return entries


class _TreeComparison:
    """Two trees compared as ``git diff-tree -r --no-renames`` compares them, with literal pathspecs."""

    def __init__(self, ask: Asked, paths: Sequence[str], max_changes: int, max_path: int) -> None:
        self._ask = ask  # ``ObjectStore._ask``: None for a missing object, Unreadable for any other failure
        # git normalizes a pathspec ("./a", "a//b") and reads a trailing "/" as "a directory only": only
        # plain ones are matched here.
        if any(not _PLAIN_PATH.fullmatch(path) or {".", ".."} & set(path.split("/")) for path in paths):
            raise Unreadable(f"a pathspec git would normalize: {list(paths)!r}")
        self._paths = [os.fsencode(path) for path in paths]
        self._max_changes, self._max_path = max_changes, max_path
        self._entries_read = self._bytes_read = 0
        self.found: dict[bytes, bytes | None] = {}

    def subtree(self, root: bytes, subpath: str) -> bytes | None:
        """The tree at ``subpath`` under ``root``, or None when there is no directory there (git then
        cannot compare); its trees count against the comparison's bounds."""
        tree = root
        for name in subpath.split("/") if subpath else ():
            entry = self._entries(tree).get(os.fsencode(name))
            if entry is None or entry[0] != _TREE:
                return None
            tree = entry[1]
        return tree

    def changes(self, old: bytes, new: bytes) -> dict[str, str | None] | None:
        if not self._compare(old, new, b"", 0):
            return None
        return {
            path.decode("utf-8", "surrogateescape"): blob.hex() if blob is not None else None
            for path, blob in sorted(self.found.items())
        }

    def _compare(self, old: bytes | None, new: bytes | None, prefix: bytes, depth: int) -> bool:
        """Adds what changed between two trees (None: none there) under ``prefix``; False once git's
        answer would be None (too many changes, too long a path)."""
        if old == new:
            return True
        if depth > MAX_COMPARED_DEPTH:
            raise Unreadable(f"trees deeper than {MAX_COMPARED_DEPTH} levels")
        before, after = self._entries(old), self._entries(new)
        for name in before.keys() | after.keys():
            was, now = before.get(name), after.get(name)
            if was == now:
                continue
            path = prefix + name
            # A name may be a directory on one side and a file on the other: git reports both.
            old_tree, new_tree = (
                entry[1] if entry is not None and entry[0] == _TREE else None for entry in (was, now)
            )
            old_leaf, new_leaf = (
                entry if entry is not None and entry[0] != _TREE else None for entry in (was, now)
            )
            descend = (old_tree or new_tree) is not None and self._wanted(path, directory=True)
            if descend and not self._compare(old_tree, new_tree, path + b"/", depth + 1):
                return False
            leaf = (old_leaf or new_leaf) is not None and self._wanted(path, directory=False)
            if leaf and not self._change(path, new_leaf):
                return False
        return True

    def _change(self, path: bytes, now: Entry | None) -> bool:
        if len(self.found) + 1 >= self._max_changes or len(path) > self._max_path:
            return False
        self.found[path] = now[1] if now is not None and now[0] in (_REGULAR, _EXECUTABLE) else None
        return True

    def _wanted(self, path: bytes, *, directory: bool) -> bool:
        """Whether a pathspec takes the path (or, for a directory, anything under it)."""
        if not self._paths:
            return True
        return any(
            path == spec or path.startswith(spec + b"/") or (directory and spec.startswith(path + b"/"))
            for spec in self._paths
        )

    def _entries(self, tree: bytes | None) -> dict[bytes, Entry]:
        if tree is None:
            return {}
        header = self._ask("read_header", tree.hex())
        if header is None or _KIND_NAMES.get(int(header[0])) != "tree":
            raise Unreadable(f"{tree.hex()} is not a tree in the mirror")
        self._bytes_read += int(header[1])
        if self._bytes_read > MAX_COMPARED_BYTES:
            raise Unreadable(f"trees of more than {MAX_COMPARED_BYTES:,} bytes")
        found = self._ask("read", tree.hex())
        if found is None:
            raise Unreadable(f"tree {tree.hex()} is not in the mirror")
        entries = _tree_entries(bytes(found[1]), MAX_COMPARED_ENTRIES - self._entries_read)
        self._entries_read += len(entries)
        return entries


class Unreadable(Exception):
    """libgit2 could not read what git may: ask git."""
