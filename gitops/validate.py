"""Validates a checkout of a source repository offline: ``python -m gitops.validate [PATH]``.

The same rules as a sync (``load_revision``, the same ``Limits``, the same file selection
and symlink rules), with no database, no cluster and no Django: a pre-commit hook or a CI
job runs it in a plain checkout. ``manage.py gitops validate`` calls ``run`` too.

Files are read from one of three places:

- the working tree (default): every regular file under PATH's ``sluice.yaml``,
  ``configmaps/`` and ``flags/``, as they are on disk;
- the index (``--staged``): what the next commit holds, through ``git write-tree``;
- a commit (``--git-ref REF``): through ``git ls-tree`` and ``git cat-file``, no mirror.

What an administrator allowed the source (namespaces, analysis URLs) is not known offline,
so it is not checked, and the output says so. Exit status: 0 valid, 1 invalid, 2 when
the checkout could not be read (no such directory, ref or git).

Imports nothing outside the standard library, PyYAML and ``gitops.desired``.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import os
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gitops.desired.errors import RevisionRejected, ValidationError, source_path_error
from gitops.desired.limits import DEFAULT_LIMITS, MAX_RECORD_BYTES, MAX_SKIPPED_ENTRIES, SETTINGS, Limits
from gitops.desired.revision import READ_PATHS, DesiredState, load_revision, shown_path

SCOPE_NOTE = "administrator scope not checked"
# Tree entries of regular files (and executable ones); symlinks are 120000, submodules 160000.
GIT_FILE_MODES = (b"100644", b"100755")
POLICY_FILE = "sluice.yaml"
# What a tree entry that is not a regular file is, in the words the sync's rejection uses.
_ENTRY_KINDS = {b"120000": "a symlink", b"160000": "a submodule", b"040000": "a directory"}


def _policy_not_a_file(kind: str) -> RevisionRejected:
    """A sync rejects a ``sluice.yaml`` that is a symlink, a submodule or a directory (skipped, it left the
    revision under the default policy): so does this, in the same words."""
    return RevisionRejected(
        [ValidationError(POLICY_FILE, None, "", f"{kind}; Sluice reads regular files only")]
    )


GIT_TIMEOUT_SECONDS = 120


class Writer(Protocol):
    def write(self, text: str, /) -> object: ...


class Exit(enum.IntEnum):
    VALID = 0
    INVALID = 1
    UNREADABLE = 2  # the checkout, the ref or git could not be read: nothing was validated


class CheckoutError(Exception):
    """The files could not be listed or read; not a verdict on their content."""


@dataclass(frozen=True)
class Checkout:
    """The files of one revision as the loader takes them: path -> blob id, sizes, and a reader."""

    files: Mapping[str, str]
    sizes: Mapping[str, int]
    read_blobs: Callable[[list[str]], Mapping[str, bytes]]
    described: str  # where the files came from, for the summary
    refused: tuple[ValidationError, ...] = ()  # why the listing was refused (then nothing is read)


@dataclass(frozen=True)
class Report:
    described: str
    errors: tuple[ValidationError, ...] = ()
    state: DesiredState | None = None

    @property
    def valid(self) -> bool:
        return self.state is not None and not self.errors

    def summary(self) -> str:
        if self.state is None:
            count = len(self.errors)
            return f"invalid: {count} error{'s' * (count != 1)} ({self.described}; {SCOPE_NOTE})"
        configmaps = [obj for obj in self.state.objects if obj.kind == "configmap"]
        namespaces = {obj.namespace for obj in configmaps}
        flag_sets = [obj for obj in self.state.objects if obj.kind == "flagset"]
        return (
            f"valid: {_counted(len(configmaps), 'ConfigMap')} in {_counted(len(namespaces), 'namespace')}, "
            f"{_counted(len(flag_sets), 'flag set')} ({self.described}; {SCOPE_NOTE})"
        )


def _counted(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'s' * (count != 1)}"


def validate(
    path: Path | str = ".",
    *,
    git_ref: str | None = None,
    staged: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> Report:
    """Validates the source rooted at ``path`` (a directory, like a source's ``--path``).

    Raises ``CheckoutError`` when the files cannot be read at all.
    """
    root = Path(path)
    if not root.is_dir():
        raise CheckoutError(f"{root} is not a directory")
    if git_ref is not None and staged:
        raise CheckoutError("--git-ref and --staged exclude each other")
    if git_ref is not None:
        checkout = git_checkout(root, git_ref, limits)
    elif staged:
        checkout = git_checkout(root, None, limits)
    elif (refused := _linked_path(root)) is not None:
        return Report(f"working tree of {root}", errors=(refused,))
    else:
        checkout = working_tree_checkout(root, limits)
    if checkout.refused:
        return Report(checkout.described, errors=checkout.refused)
    try:
        # No administrator offline: scope=None checks nothing against one.
        state = load_revision(
            checkout.files, checkout.read_blobs, sizes=checkout.sizes, limits=limits, scope=None
        )
    except RevisionRejected as rejected:
        return Report(checkout.described, errors=tuple(rejected.errors))
    return Report(checkout.described, state=state)


# -- the working tree ------------------------------------------------------------------------------


def working_tree_checkout(root: Path, limits: Limits) -> Checkout:
    """Regular files under ``root``'s read paths, listed as ``git ls-tree`` lists a commit.

    Symlinks (to files or directories) are skipped as the sync skips them, and so are
    nested repositories (a submodule is not part of the commit). The listing stops one file
    past ``max_files`` and sizes come from ``lstat``, so a file past a limit is never read.
    """
    files: dict[str, str] = {}
    sizes: dict[str, int] = {}
    described = f"working tree of {root}"
    try:
        for relative, size in _walk(root, READ_PATHS, limits.max_files + 1):
            files[relative] = relative  # a path is its own blob id here
            sizes[relative] = size
    except RevisionRejected as rejected:
        return Checkout({}, {}, lambda ids: {}, described, refused=tuple(rejected.errors))

    def read_blobs(ids: list[str]) -> dict[str, bytes]:
        contents = {}
        for relative in ids:
            try:
                with open(root / relative, "rb") as opened:
                    # Bounded even if the file grew after it was listed.
                    contents[relative] = opened.read(limits.max_file_bytes + 1)
            except OSError as error:
                raise CheckoutError(f"cannot read {relative}: {error.strerror}") from None
        return contents

    return Checkout(files, sizes, read_blobs, described)


def _walk(root: Path, names: Sequence[str], max_files: int) -> Iterator[tuple[str, int]]:
    """(relative path, size) of regular files under ``names`` in Git's tree order, at most ``max_files``."""
    count = 0
    pending = [(name, root / name) for name in sorted(names, key=_git_order_key, reverse=True)]
    while pending and count < max_files:
        relative, absolute = pending.pop()
        try:
            info = os.lstat(absolute)
        except FileNotFoundError:
            continue
        except OSError as error:
            raise CheckoutError(f"cannot read {relative}: {error.strerror}") from None
        nested = stat.S_ISDIR(info.st_mode) and (absolute / ".git").exists()
        if stat.S_ISREG(info.st_mode):
            count += 1
            yield relative, info.st_size
        elif relative == POLICY_FILE:
            kind = "a symlink" if stat.S_ISLNK(info.st_mode) else "a submodule" if nested else "a directory"
            raise _policy_not_a_file(kind)
        elif stat.S_ISDIR(info.st_mode) and not nested:
            pending.extend(_children(relative, absolute))


def _children(relative: str, absolute: Path) -> list[tuple[str, Path]]:
    """A directory's entries, last first (``_walk`` pops from the end), in Git's tree order."""
    try:
        entries = list(os.scandir(absolute))
    except OSError as error:
        raise CheckoutError(f"cannot list {relative}: {error.strerror}") from None
    entries.sort(key=lambda entry: _git_order_key(entry.name, entry.is_dir(follow_symlinks=False)))
    return [(f"{relative}/{entry.name}", Path(entry.path)) for entry in reversed(entries)]


def _git_order_key(name: str, is_dir: bool = False) -> bytes:
    # Git sorts a tree's entries by their bytes, a directory as if its name ended in "/".
    return os.fsencode(name) + (b"/" if is_dir else b"")


# -- the index or a commit, through git --------------------------------------------------------------


def git_checkout(root: Path, ref: str | None, limits: Limits) -> Checkout:
    """The files at ``ref`` (the index when None) under ``root``'s place in its repository."""
    top, prefix = _repository_of(root)
    if ref is None:
        # The index as a tree: exactly what `git commit` would record (and GIT_INDEX_FILE is
        # honoured, so a pre-commit hook of `git commit -a` sees that commit's index).
        tree = _git(top, "write-tree").decode("ascii").strip()
        described = f"staged files of {root}"
    else:
        tree = _resolve_tree(top, ref)
        described = f"{ref} of {root}"
    if (refused := _path_in_tree_problem(top, tree, prefix)) is not None:
        return Checkout({}, {}, lambda ids: {}, described, refused=(refused,))
    files: dict[str, str] = {}
    sizes: dict[str, int] = {}

    def read_blobs(ids: list[str]) -> dict[str, bytes]:
        return _cat_blobs(top, ids)

    try:
        with contextlib.closing(_listed_files(top, f"{tree}:{prefix}")) as listed:
            for meta, path in listed:
                files[path] = meta[2].decode("ascii")
                sizes[path] = int(meta[3])
                if len(files) > limits.max_files:
                    break  # one past the limit is enough to name the file that crosses it: git stops
    except RevisionRejected as rejected:
        return Checkout({}, {}, read_blobs, described, refused=tuple(rejected.errors))
    return Checkout(files, sizes, read_blobs, described)


def _listed_files(top: Path, tree: str) -> Generator[tuple[list[bytes], str], None, None]:
    """The regular files ``git ls-tree`` lists in ``tree`` where Sluice reads (each one's mode, type, blob
    id and size, and its path), read as git prints them: the caller stops git by stopping. As the
    worker's listing does, directories are records too (``-t``), and past MAX_SKIPPED_ENTRIES of them,
    symlinks and submodules, or a record past MAX_RECORD_BYTES, the listing is refused: a tree of a few
    pages can list billions, which the whole listing, buffered, held in memory until git's time limit."""
    skipped = 0
    # Run from the top: git reads pathspecs relative to the current directory.
    for record in _git_records(top, "ls-tree", "-r", "-t", "-l", "-z", tree, "--", *READ_PATHS):
        meta, _, name = record.partition(b"\t")
        fields = meta.split()
        path = name.decode("utf-8", "surrogateescape")
        if len(fields) == 4 and fields[0] in GIT_FILE_MODES and fields[1] == b"blob":
            yield fields, path
            continue
        if path == POLICY_FILE:
            raise _policy_not_a_file(_ENTRY_KINDS.get(fields[0], "not a regular file"))
        skipped += 1  # directories, symlinks and submodules, as the sync skips them
        if skipped > MAX_SKIPPED_ENTRIES:
            message = (
                f"more than {MAX_SKIPPED_ENTRIES:,} directories, symlinks and submodules where Sluice reads "
                "files; Sluice reads regular files only: remove them, or move them out of what it reads"
            )
            raise RevisionRejected([ValidationError(shown_path(path), None, "", message)])


def _git_records(root: Path, *args: str) -> Generator[bytes, None, None]:
    """The NUL-terminated records git prints, as it prints them; git is stopped when the caller stops
    reading, or at GIT_TIMEOUT_SECONDS."""
    timed_out = threading.Event()
    with tempfile.TemporaryFile() as stderr:
        try:
            process = subprocess.Popen(
                ["git", "-C", str(root), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        except FileNotFoundError:
            raise CheckoutError("git is not installed (needed for --git-ref and --staged)") from None

        def stop() -> None:
            timed_out.set()
            process.kill()

        timer = threading.Timer(GIT_TIMEOUT_SECONDS, stop)
        timer.start()
        try:
            yield from _records_of(process)
        finally:  # also when the caller stopped reading, or a record was refused
            timer.cancel()
            if process.poll() is None:
                process.kill()
            process.wait()
        if timed_out.is_set():
            raise CheckoutError(f"git {args[0]} took longer than {GIT_TIMEOUT_SECONDS}s")
        if process.returncode != 0:
            stderr.seek(0)
            message = stderr.read(64 * 1024).decode("utf-8", "replace").strip().splitlines()
            why = message[-1] if message else f"exit code {process.returncode}"
            raise CheckoutError(f"git {args[0]} failed in {root}: {why}")


def _records_of(process: subprocess.Popen[bytes]) -> Iterator[bytes]:
    if process.stdout is None:
        raise RuntimeError("git was started without a stdout pipe")
    pending = b""
    while chunk := os.read(process.stdout.fileno(), 64 * 1024):
        *complete, pending = (pending + chunk).split(b"\0")
        if len(pending) > MAX_RECORD_BYTES:  # each read would copy and search it again: quadratic
            name = pending.partition(b"\t")[2][:100].decode("utf-8", "surrogateescape")
            message = (
                f"a path in the tree is longer than {MAX_RECORD_BYTES:,} bytes: Sluice reads paths of at "
                "most 1,000 characters; rename it"
            )
            raise RevisionRejected([ValidationError(shown_path(name) + "…", None, "", message)])
        yield from complete


def _repository_of(root: Path) -> tuple[Path, str]:
    """The top of the work tree ``root`` is in, and ``root``'s path inside it ("" at the top) as written,
    symlinks unresolved: git's own prefix resolves them, and a source's path that is a symlink in the
    commit, which the worker refuses, was validated as the directory it points to (before 2026-12-07)."""
    top = Path(_git(root, "rev-parse", "--show-toplevel").decode("utf-8", "surrogateescape").rstrip("\n"))
    real_top = top.resolve()
    written = Path(os.path.abspath(root))
    for ancestor in (written, *written.parents):
        if ancestor.resolve() == real_top:
            relative = written.relative_to(ancestor).as_posix()
            return top, "" if relative == "." else relative + "/"
    prefix = _git(root, "rev-parse", "--show-prefix").decode("utf-8", "surrogateescape").rstrip("\n")
    return top, prefix


def _path_in_tree_problem(top: Path, tree: str, prefix: str) -> ValidationError | None:
    """The worker's refusal of a source path that is missing from ``tree``, or is not a directory there
    (a symlink, a file or a submodule), asked as the worker asks (``GitMirror._unlisted``); None when it
    is a directory."""
    path = prefix.strip("/")
    if not path:
        return None
    entry = _git(top, "--literal-pathspecs", "ls-tree", "-z", tree, "--", path).split(b"\0", 1)[0]
    if not entry:
        return source_path_error(shown_path(path), None)
    mode = entry.partition(b" ")[0]
    if mode != b"040000":
        kinds = {b"100644": "a file", b"100755": "a file", **_ENTRY_KINDS}
        return source_path_error(shown_path(path), kinds.get(mode, "not a directory"))
    return None


def _linked_path(root: Path) -> ValidationError | None:
    """In a working tree: the worker's refusal when ``root`` or a directory above it inside its repository
    is a symlink, which a commit records as one (the sync refuses a path through it)."""
    written = Path(os.path.abspath(root))
    for ancestor in (written, *written.parents):
        if (ancestor / ".git").exists():
            walked = ancestor
            for part in written.relative_to(ancestor).parts:
                walked = walked / part
                if walked.is_symlink():
                    return source_path_error(shown_path(walked.relative_to(ancestor).as_posix()), "a symlink")
            return None
    return None


def _resolve_tree(root: Path, ref: str) -> str:
    if ref.startswith("-"):
        raise CheckoutError(f"{ref!r} is not a ref")
    try:
        return _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{tree}}").decode("ascii").strip()
    except CheckoutError:
        raise CheckoutError(f"{ref!r} names no commit or tree in the repository at {root}") from None


def _git(root: Path, *args: str, stdin: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args],
            input=stdin,
            capture_output=True,
            check=False,
            timeout=GIT_TIMEOUT_SECONDS,
        )
    except FileNotFoundError:
        raise CheckoutError("git is not installed (needed for --git-ref and --staged)") from None
    except subprocess.TimeoutExpired:
        raise CheckoutError(f"git {args[0]} took longer than {GIT_TIMEOUT_SECONDS}s") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        why = message[-1] if message else f"exit code {done.returncode}"
        raise CheckoutError(f"git {args[0]} failed in {root}: {why}")
    return done.stdout


def _cat_blobs(root: Path, ids: list[str]) -> dict[str, bytes]:
    """Blob contents through one ``git cat-file --batch``; their sizes were checked from the listing."""
    output = _git(root, "cat-file", "--batch", stdin="".join(f"{blob}\n" for blob in ids).encode("ascii"))
    contents: dict[str, bytes] = {}
    position = 0
    for blob in ids:
        end = output.index(b"\n", position)
        header = output[position:end].split()
        if len(header) != 3 or header[1] != b"blob":
            raise CheckoutError(f"git cat-file could not read blob {blob}")
        size = int(header[2])
        contents[blob] = output[end + 1 : end + 1 + size]
        position = end + 1 + size + 1
    return contents


# -- the command line ---------------------------------------------------------------------------------


def limits_from_environment(environ: Mapping[str, str]) -> Limits:
    """The limits a server reads from the same ``SLUICE_MAX_*`` variables, defaults for the rest."""
    chosen: dict[str, int] = {}
    for name, variable in SETTINGS.items():
        text = environ.get(variable, "").strip()
        if not text:
            continue
        try:
            chosen[name] = int(text.replace("_", ""))
        except ValueError:
            raise CheckoutError(f"{variable} must be a whole number, not {text!r}") from None
    try:
        return Limits(**chosen)
    except ValueError as error:
        raise CheckoutError(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m gitops.validate`` and ``manage.py gitops validate``."""
    parser.add_argument(
        "path",
        nargs="?",
        default=".",
        help="the source's directory: the repository root, or its --path (default: the current directory)",
    )
    read = parser.add_mutually_exclusive_group()
    read.add_argument(
        "--git-ref", metavar="REF", help="validate the files committed at REF (a branch, tag or SHA)"
    )
    read.add_argument(
        "--staged", action="store_true", help="validate the files in Git's index: what the next commit holds"
    )


def run(
    path: str,
    *,
    git_ref: str | None = None,
    staged: bool = False,
    limits: Limits,
    stdout: Writer,
    stderr: Writer,
) -> Exit:
    """Validates and prints: errors one a line (``file:line: field: message``) and a summary line."""
    try:
        report = validate(path, git_ref=git_ref, staged=staged, limits=limits)
    except CheckoutError as unreadable:
        stderr.write(f"cannot validate: {unreadable}\n")
        return Exit.UNREADABLE
    if report.valid:
        stdout.write(report.summary() + "\n")
        return Exit.VALID
    for problem in report.errors:
        stdout.write(f"{problem}\n")
    stderr.write(report.summary() + "\n")
    return Exit.INVALID


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sluice-validate",
        description="Validate a Sluice source repository offline, with the rules a sync applies.",
    )
    add_arguments(parser)
    options = parser.parse_args(argv)
    try:
        limits = limits_from_environment(os.environ)
    except CheckoutError as error:
        sys.stderr.write(f"cannot validate: {error}\n")
        return Exit.UNREADABLE
    return run(
        options.path,
        git_ref=options.git_ref,
        staged=options.staged,
        limits=limits,
        stdout=sys.stdout,
        stderr=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
