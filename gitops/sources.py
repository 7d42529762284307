"""The Git side of the reconciler: one bare mirror per source.

``GitMirror.fetch`` brings one branch of a remote into a private ref of a bare
repository; the other methods read files at a commit straight from the object
store, so there is no working tree that a concurrent fetch could change under a
reader.

Tokens never reach argv, URLs or messages: git gets them through environment
variables of the one process that needs them, and everything git prints is
redacted before it goes into an exception or a log line.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import IO

from gitops.errors import GitopsError, PermanentError, TemporaryError

logger = logging.getLogger("gitops.sources")

DEFAULT_USERNAME = "x-access-token"
MIRROR_REF_PREFIX = "refs/sluice/heads/"
# Local reads of the object store; only a wedged disk makes them this slow.
LOCAL_TIMEOUT = 60.0

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
OBJECT_FORMATS = ("sha1", "sha256")
_MISMATCHED_FORMAT = re.compile(r"mismatched algorithms: client \w+; server (\w+)")
# Tree entries of regular files (and executable ones); symlinks are 120000, submodules 160000.
_FILE_MODES = (b"100644 ", b"100755 ")
_OBJECT_ID = re.compile(r"[0-9a-fA-F]{4,64}")
# Userinfo runs from "://" to the last "@" before the path; a greedy class that
# stops at "/", whitespace and quotes finds it in URLs and inside git's messages.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*)://(?P<userinfo>[^\s/?#'\"]*)@")
_HTTP_SCHEMES = frozenset({"http", "https"})
_SSH_SCHEMES = frozenset({"ssh", "git+ssh", "ssh+git"})
_SCP_LIKE = re.compile(r"^(?:[^@/:\s]+@)?[^/:\s]+:(?!//)")


@dataclass(frozen=True)
class Credentials:
    """An HTTPS token (username defaults to "x-access-token" like GitHub/Gitea accept;
    GitLab accepts "oauth2") or an SSH private key file."""

    token: str | None = None
    username: str = DEFAULT_USERNAME
    ssh_key_file: str | None = None

    def __post_init__(self) -> None:
        if self.token is not None and self.ssh_key_file is not None:
            raise ValueError("credentials hold a token or an SSH key file, not both")
        if self.token is not None and (not self.token or _CONTROL_CHARACTERS.search(self.token)):
            # A newline would let the token inject a second HTTP header.
            raise ValueError("the token is empty or contains control characters")
        if ":" in self.username or _CONTROL_CHARACTERS.search(self.username):
            raise ValueError(f"invalid username {self.username!r} for Basic authentication")

    def __repr__(self) -> str:
        token = None if self.token is None else "***"
        return f"Credentials(token={token!r}, username={self.username!r}, ssh_key_file={self.ssh_key_file!r})"


def resolve_credentials(reference: str, *, username: str = DEFAULT_USERNAME) -> Credentials | None:
    """Reference forms: "" -> None; "env:VAR" (token in env var VAR); "file:/path" (token in a file);
    "ssh-key:/path" (private key file). Unknown form or missing variable/file -> PermanentError
    naming the reference (never the secret)."""
    reference = reference.strip()
    if not reference:
        return None
    kind, separator, target = reference.partition(":")
    if separator and target:
        if kind == "env":
            token = os.environ.get(target)
            if token is None:
                raise PermanentError(f"credentials {reference!r}: environment variable {target} is not set")
            return _token_credentials(reference, token.strip(), username)
        if kind == "file":
            try:
                token = Path(target).read_text(encoding="utf-8")
            except OSError as exc:
                raise PermanentError(
                    f"credentials {reference!r}: cannot read {target}: {exc.strerror}"
                ) from None
            except UnicodeDecodeError:
                raise PermanentError(f"credentials {reference!r}: {target} is not UTF-8 text") from None
            return _token_credentials(reference, token.strip(), username)
        if kind == "ssh-key":
            if not os.access(target, os.R_OK) or not Path(target).is_file():
                raise PermanentError(f"credentials {reference!r}: no readable SSH key file at {target}")
            return Credentials(ssh_key_file=target, username=username)
    # An unknown form may well be a token pasted in by mistake, so only a short
    # scheme-like prefix is worth echoing.
    prefix = kind if separator and re.fullmatch(r"[a-z][a-z0-9-]{0,15}", kind) else None
    shown = f"of form {prefix!r}:" if prefix else "(not shown, it may be a secret)"
    raise PermanentError(
        f"unknown credentials reference {shown}; expected env:VAR, file:/path or ssh-key:/path"
    )


def _token_credentials(reference: str, token: str, username: str) -> Credentials:
    if not token:
        raise PermanentError(f"credentials {reference!r}: the token is empty")
    if _CONTROL_CHARACTERS.search(token):
        raise PermanentError(f"credentials {reference!r}: the token contains control characters")
    return Credentials(token=token, username=username)


def redact_url(url: str) -> str:
    """https://user:secret@host/x.git -> https://user:***@host/x.git ;
    https://token@host -> https://***@host ; scp-like and file URLs unchanged."""
    return _URL_USERINFO.sub(_redact_userinfo, url)


def _redact_userinfo(match: re.Match[str]) -> str:
    scheme, userinfo = match["scheme"], match["userinfo"]
    user, has_password, _ = userinfo.partition(":")
    if has_password:
        return f"{scheme}://{user}:***@"
    # Over HTTP a lone user part is where tokens usually go; over SSH it is just a login.
    if scheme.lower() in _HTTP_SCHEMES:
        return f"{scheme}://***@"
    return match[0]


def _redact(text: str, secrets: Iterable[str] = ()) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return redact_url(text)


# --- what went wrong ------------------------------------------------------------------------------------

AUTHENTICATION_FAILED = "authentication failed"

# Searched in order against git's lower-cased stderr; the first match wins. The
# permanent causes come first because git often follows them with a generic line
# ("could not read from remote repository", "the remote end hung up") that alone
# would look like a network failure.
GIT_ERROR_RULES: tuple[tuple[str, type[GitopsError], str], ...] = (
    (r"couldn't find remote ref", PermanentError, "branch not found on the remote"),
    (
        r"repository .*not found|does not appear to be a git repository|could not be found"
        r"|returned error: 404",
        PermanentError,
        "repository not found",
    ),
    (
        r"authentication failed|could not read (username|password)|terminal prompts disabled"
        r"|permission denied \(|access denied|returned error: 40[13]|host key verification failed",
        PermanentError,
        AUTHENTICATION_FAILED,
    ),
    (
        r"certificate problem|certificate verify failed|certificate verification failed",
        PermanentError,
        "the server's TLS certificate was rejected",
    ),
    (
        r"unable to find remote helper|'remote-[^']*' is not a git command|protocol .*is not supported"
        r"|unsupported protocol"
        r"|bad/illegal format|port number|invalid (url|port)|not a valid (ref|branch)|invalid refspec",
        PermanentError,
        "malformed URL or branch",
    ),
    (
        r"(could not|cannot|unable to) (lock|update local) ref|\.lock': file exists",
        TemporaryError,
        "another git process was updating the mirror",
    ),
    (r"timed out|timeout", TemporaryError, "network timeout"),
    (
        r"connection refused|connection reset|failed to connect|couldn't connect|network is unreachable"
        r"|no route to host|could not resolve host|temporary failure in name resolution",
        TemporaryError,
        "network error",
    ),
    (
        r"remote end hung up|early eof|rpc failed|unexpected disconnect|broken pipe|transfer closed"
        r"|returned error: (429|5\d\d)|\bssl|openssl|\btls|gnutls",
        TemporaryError,
        "the connection broke off",
    ),
)
_COMPILED_RULES = tuple((re.compile(pattern), error, reason) for pattern, error, reason in GIT_ERROR_RULES)
_USAGE_ERROR = 129


def classify_git_error(stderr: str, returncode: int) -> tuple[type[GitopsError], str]:
    """The error class and a short reason for a failed git command."""
    text = stderr.lower()
    for pattern, error, reason in _COMPILED_RULES:
        if pattern.search(text):
            return error, reason
    if returncode == _USAGE_ERROR:
        return PermanentError, "git rejected the command line"
    # Killed by a signal or an unforeseen message: worth another try, and the
    # message stays visible to the operator if it keeps failing.
    return TemporaryError, f"git failed with exit code {returncode}"


def _stderr_summary(stderr: str, secrets: Iterable[str], limit: int = 500) -> str:
    lines = [line.strip() for line in stderr.splitlines()]
    meaningful = [line for line in lines if line and not line.startswith("hint:")]
    return _redact(" | ".join(meaningful), secrets)[-limit:]


# --- running git ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GitInvocation:
    """A git command line and its environment; ``secrets`` are redacted from whatever git prints."""

    argv: list[str]
    env: dict[str, str]
    secrets: tuple[str, ...] = ()


def _base_env() -> dict[str, str]:
    # Inherited GIT_* variables (GIT_DIR from a hook, GIT_TRACE*, GIT_CONFIG_*) would
    # redirect or log these commands, so none pass through.
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    env.pop("LANGUAGE", None)
    env.update(
        LC_ALL="C",  # classify_git_error matches git's English messages
        GIT_TERMINAL_PROMPT="0",
        GIT_ASKPASS="",  # empty, unlike unset, also skips core.askPass and SSH_ASKPASS
    )
    return env


def _with_config(env: dict[str, str], config: Sequence[tuple[str, str]]) -> dict[str, str]:
    env["GIT_CONFIG_COUNT"] = str(len(config))
    for index, (key, value) in enumerate(config):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env


def _is_ssh_url(url: str) -> bool:
    scheme, separator, _ = url.partition("://")
    if separator:
        return scheme.lower() in _SSH_SCHEMES
    return bool(_SCP_LIKE.match(url))


def _url_scheme(url: str) -> str:
    scheme, separator, _ = url.partition("://")
    return scheme.lower() if separator else ""


def _origin(url: str) -> str:
    """scheme://host[:port] of an http(s) URL, for scoping the auth header to that server."""
    scheme, _, rest = url.partition("://")
    host = re.split(r"[/?#]", rest, maxsplit=1)[0]
    return f"{scheme.lower()}://{host.lower()}"


def _check_url(url: str) -> None:
    if not url or url != url.strip() or _CONTROL_CHARACTERS.search(url) or url.startswith("-"):
        raise PermanentError(f"malformed repository URL {redact_url(url)!r}")
    if "::" in url.split("://", 1)[0]:
        # "<transport>::<address>" runs a remote helper; ext:: would run any command.
        raise PermanentError(f"remote helper URLs are not allowed: {redact_url(url)!r}")
    if _url_scheme(url) in _HTTP_SCHEMES and _URL_USERINFO.match(url):
        raise PermanentError(
            f"repository URL {redact_url(url)!r} embeds credentials; use a credentials reference instead"
        )


def _normalize_branch(branch: str) -> str:
    branch = branch.strip().removeprefix("refs/heads/")
    if not branch or branch.startswith("-") or _CONTROL_CHARACTERS.search(branch):
        raise PermanentError(f"invalid branch name {branch!r}")
    checked = subprocess.run(
        ["git", "check-ref-format", f"refs/heads/{branch}"],
        env=_base_env(),
        capture_output=True,
        check=False,
        timeout=LOCAL_TIMEOUT,
    )
    if checked.returncode != 0:
        raise PermanentError(f"invalid branch name {branch!r}")
    return branch


def build_fetch_invocation(
    git_dir: Path, url: str, branch: str, credentials: Credentials | None
) -> GitInvocation:
    """The ``git fetch`` of one branch into the mirror's private ref (no validation of url or branch)."""
    config: list[tuple[str, str]] = [
        # Only the token given here may authenticate, never one a helper stored for the host.
        ("credential.helper", ""),
        ("protocol.ext.allow", "never"),
    ]
    env = _base_env()
    secrets: tuple[str, ...] = ()
    ssh_options = ["-o", "BatchMode=yes"]  # never wait for a passphrase or a host key confirmation
    if credentials is not None and credentials.token is not None:
        if _url_scheme(url) not in _HTTP_SCHEMES:
            raise PermanentError(f"a token needs an http(s) URL, not {redact_url(url)!r}")
        if _url_scheme(url) == "http":
            logger.warning("sending a token over plain HTTP to %s", _origin(url))
        basic = base64.b64encode(f"{credentials.username}:{credentials.token}".encode()).decode("ascii")
        # Scoped to the origin so that a redirect to another host does not carry it.
        config.append((f"http.{_origin(url)}/.extraHeader", f"Authorization: Basic {basic}"))
        secrets = (credentials.token, basic)
    if credentials is not None and credentials.ssh_key_file is not None:
        if not _is_ssh_url(url):
            raise PermanentError(f"an SSH key needs an SSH URL, not {redact_url(url)!r}")
        ssh_options = ["-i", credentials.ssh_key_file, "-o", "IdentitiesOnly=yes", *ssh_options]
    if _is_ssh_url(url):
        env["GIT_SSH_COMMAND"] = shlex.join(["ssh", *ssh_options])
    argv = [
        "git",
        f"--git-dir={git_dir}",
        "fetch",
        "--quiet",
        "--no-tags",
        "--no-recurse-submodules",
        # We read our own ref afterwards; a FETCH_HEAD left by an earlier or a
        # concurrent fetch must not be mistaken for this one's result.
        "--no-write-fetch-head",
        "--end-of-options",
        url,
        f"+refs/heads/{branch}:{MIRROR_REF_PREFIX}{branch}",
    ]
    return GitInvocation(argv=argv, env=_with_config(env, config), secrets=secrets)


def _run(invocation: GitInvocation, *, timeout: float) -> subprocess.CompletedProcess[bytes]:
    try:
        # A session of its own: git has no terminal to prompt on, and a timeout
        # can kill the helpers it started (git-remote-https, ssh) along with it.
        process = subprocess.Popen(
            invocation.argv,
            env=invocation.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise PermanentError("the git executable was not found") from None
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # it may have finished in the meantime
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(invocation.argv, process.returncode, stdout, stderr)


def _git(git_dir: Path, *args: str) -> GitInvocation:
    return GitInvocation(argv=["git", f"--git-dir={git_dir}", *args], env=_base_env())


def _check_object_id(value: str, what: str) -> str:
    if not _OBJECT_ID.fullmatch(value):
        raise ValueError(f"{what} must be a hexadecimal object id, not {value!r}")
    return value.lower()


class _CatFileBatch:
    """A persistent ``git cat-file --batch`` with pipelined requests.

    Asking for one object at a time costs a round trip each (about 0.9s for
    10,000 blobs); a thread writes all the requests while the caller reads the
    answers, which costs one. The thread is needed because git stops reading
    requests once the answers fill the pipe that nobody would be draining yet.
    """

    def __init__(self, git_dir: Path) -> None:
        self._process = subprocess.Popen(
            ["git", f"--git-dir={git_dir}", "cat-file", "--batch"],
            env=_base_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def read(self, object_ids: Sequence[str]) -> list[tuple[str, bytes] | None]:
        """(type, content) of each object in order, None for a missing one."""
        stdin, stdout = self._process.stdin, self._process.stdout
        if stdin is None or stdout is None:
            raise RuntimeError("cat-file was started without pipes")
        requests = "".join(f"{object_id}\n" for object_id in object_ids).encode("ascii")
        write_error: list[OSError] = []

        def write() -> None:
            try:
                stdin.write(requests)
                stdin.flush()
            except OSError as exc:
                write_error.append(exc)

        writer = threading.Thread(target=write, name="cat-file-requests", daemon=True)
        writer.start()
        try:
            answers = [self._read_answer(stdout) for _ in object_ids]
        except BaseException:
            # Requests and answers are out of step now, and the writer may be blocked
            # on a full pipe: only a dead process releases it.
            self._process.kill()
            raise
        finally:
            writer.join()
        if write_error:
            raise TemporaryError(f"git cat-file stopped reading requests: {write_error[0]}")
        return answers

    def _read_answer(self, stdout: IO[bytes]) -> tuple[str, bytes] | None:
        header = stdout.readline().split()
        if len(header) == 2:  # "<name> missing" or "<name> ambiguous"
            return None
        if len(header) != 3:
            raise TemporaryError(f"git cat-file stopped answering (exit code {self._process.poll()})")
        size = int(header[2])
        content = stdout.read(size)
        if len(content) != size or stdout.read(1) != b"\n":
            raise TemporaryError("git cat-file answered with a truncated object")
        return header[1].decode("ascii"), content

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def close(self) -> None:
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()


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


class GitMirror:
    """One bare mirror per source at `path`. Fetches incrementally and reads files at a commit straight
    from the object store (no working tree, so nothing can race).

    One instance is not thread-safe: it keeps a ``git cat-file --batch`` process open.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._cat_file: _CatFileBatch | None = None

    def __enter__(self) -> GitMirror:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._cat_file is not None:
            self._cat_file.close()
            self._cat_file = None

    def fetch(
        self, url: str, branch: str, credentials: Credentials | None = None, *, timeout: float = 120
    ) -> FetchResult:
        _check_url(url)
        branch = _normalize_branch(branch)
        where = f"branch {branch!r} of {redact_url(url)}"
        started = time.monotonic()
        invocation = build_fetch_invocation(self.path, url, branch, credentials)
        self._ensure_initialized()
        ref = f"{MIRROR_REF_PREFIX}{branch}"
        previous = self._resolve(ref)
        try:
            completed = _run(invocation, timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.info("fetch of %s timed out after %.1fs", where, timeout)
            raise TemporaryError(f"fetching {where} timed out after {timeout:g}s") from None
        if completed.returncode != 0:
            stderr = completed.stderr.decode("utf-8", "replace")
            server_format = _MISMATCHED_FORMAT.search(stderr)
            if server_format and self._recreate_with_format(server_format.group(1)):
                # The repository uses other object ids (SHA-256): a mirror of its kind takes it.
                return self.fetch(url, branch, credentials, timeout=timeout)
            error, reason = classify_git_error(stderr, completed.returncode)
            detail = _stderr_summary(stderr, invocation.secrets)
            if reason == AUTHENTICATION_FAILED:
                # git's own words ("could not read Username") hide which of the two it was.
                reason += " (credentials rejected)" if credentials else " (credentials needed, none given)"
            logger.info("fetch of %s failed after %.2fs: %s", where, time.monotonic() - started, reason)
            raise error(f"cannot fetch {where}: {reason} ({detail})")
        commit = self._resolve(ref)
        if commit is None:
            raise TemporaryError(f"fetching {where} left no {ref}")
        forced = previous is not None and previous != commit and not self._is_ancestor(previous, commit)
        logger.info(
            "fetched %s: %s -> %s%s in %.2fs",
            where,
            previous or "(new)",
            commit,
            " (forced update)" if forced else "",
            time.monotonic() - started,
        )
        return FetchResult(commit=commit, previous=previous, forced=forced)

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
    ) -> dict[str, TreeFile]:
        """Like ``list_files``, with each blob's size, so that limits apply before any blob is read.

        ``paths`` (relative to ``subpath``) restricts the listing to those files and directories, so a
        huge tree elsewhere in the repository is never listed. With ``max_entries``, git is stopped
        after that many files: a hostile tree of millions of files costs what ``max_entries`` do, and
        a caller that asks for one more than it accepts can tell a cut listing from a complete one.
        """
        commit = _check_object_id(commit, "commit")
        subpath = _normalize_subpath(subpath)
        self._require_mirror()
        invocation = _git(self.path, "ls-tree", "-r", "-l", "-z", f"{commit}:{subpath}", "--", *paths)
        records, returncode, stderr = self._local_records(invocation, max_files=max_entries)
        if returncode != 0:
            self._require_commit(commit)
            if "not a tree object" in stderr:
                raise PermanentError(f"{subpath!r} is not a directory at commit {commit}")
            raise PermanentError(f"{subpath!r} does not exist at commit {commit}")
        files: dict[str, TreeFile] = {}
        for record in records:
            meta, _, name = record.partition(b"\t")
            mode, kind, sha, size = meta.split()
            # Symlinks are blobs too, but their content is a path, not a file.
            if kind == b"blob" and mode != b"120000":
                # surrogateescape keeps a name that is not UTF-8 round-trippable.
                files[name.decode("utf-8", "surrogateescape")] = TreeFile(sha.decode("ascii"), int(size))
        return files

    def read_blob(self, sha: str) -> bytes:
        return self.read_blobs([sha])[sha]

    def read_blobs(self, shas: Iterable[str]) -> dict[str, bytes]:
        """The content of each blob, keyed by the sha as given."""
        wanted = {sha: _check_object_id(sha, "blob sha") for sha in shas}
        if not wanted:
            return {}
        self._require_mirror()
        if self._cat_file is None or not self._cat_file.alive:
            if self._cat_file is not None:
                self._cat_file.close()
            self._cat_file = _CatFileBatch(self.path)
        found = self._cat_file.read(list(wanted.values()))
        contents: dict[str, bytes] = {}
        for (sha, object_id), answer in zip(wanted.items(), found, strict=True):
            if answer is None:
                raise ObjectNotFoundError(f"blob {sha} is not in the mirror at {self.path}")
            kind, data = answer
            if kind != "blob":
                raise PermanentError(f"{object_id} is a {kind}, not a blob")
            contents[sha] = data
        return contents

    def commit_info(self, commit: str) -> CommitInfo:
        # git's own formatting: GitPython's object parser (no longer used) assumes
        # 40-hex ids and cannot read SHA-256 repositories.
        object_id = _check_object_id(commit, "commit")
        self._require_mirror()
        kind = self._local(_git(self.path, "cat-file", "-t", object_id))
        if kind.returncode != 0:
            raise ObjectNotFoundError(f"commit {commit} is not in the mirror at {self.path}")
        if (type_name := kind.stdout.decode("ascii", "replace").strip()) != "commit":
            raise PermanentError(f"{commit} is a {type_name}, not a commit")
        completed = self._local(
            _git(
                self.path,
                "log",
                "-1",
                "--no-show-signature",
                "--format=%H%x00%an%x00%ae%x00%ct%x00%B",
                object_id,
            )
        )
        if completed.returncode != 0:
            raise ObjectNotFoundError(f"commit {commit} is not in the mirror at {self.path}")
        full_sha, author_name, author_email, timestamp, message = completed.stdout.decode(
            "utf-8", "replace"
        ).split("\0", 4)
        return CommitInfo(
            sha=full_sha.strip(),
            author_name=author_name,
            author_email=author_email,
            message=message.rstrip("\n") + "\n" if message.strip() else "",
            committed_at=datetime.fromtimestamp(int(timestamp), tz=UTC),
        )

    def commit_identities(self, commit: str, *, since: str | None = None, limit: int = 1000) -> set[str]:
        """Author and committer emails (lower case) of commits reachable from ``commit`` but not ``since``.

        Bounded to the newest ``limit`` commits: a first rollout of a long history
        is judged by its recent authors.
        """
        commit = _check_object_id(commit, "commit")
        revisions = [commit]
        if (
            since
            and since != commit
            and self._local(_git(self.path, "cat-file", "-e", since)).returncode == 0
        ):
            revisions.append(f"^{_check_object_id(since, 'commit')}")
        completed = self._local(
            _git(self.path, "log", f"--max-count={limit}", "--format=%ae%x00%ce", *revisions, "--")
        )
        if completed.returncode != 0:
            self._require_commit(commit)
            raise PermanentError(f"cannot list the commits of {commit}")
        identities: set[str] = set()
        for line in completed.stdout.decode("utf-8", "replace").splitlines():
            identities.update(email.strip().lower() for email in line.split("\0") if email.strip())
        return identities

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
        completed = self._local(_git(self.path, "rev-parse", "--show-object-format"))
        return completed.stdout.decode("ascii", "replace").strip() or "sha1"

    def _ensure_initialized(self, object_format: str = "sha1") -> None:
        if (self.path / "HEAD").is_file():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Two processes initialising at once is harmless: git init only adds what is missing.
        completed = _run(
            GitInvocation(
                ["git", "init", "--bare", "--quiet", f"--object-format={object_format}", str(self.path)],
                _base_env(),
            ),
            timeout=LOCAL_TIMEOUT,
        )
        if completed.returncode != 0:
            stderr = completed.stderr.decode("utf-8", "replace")
            raise PermanentError(f"cannot create the mirror at {self.path}: {_stderr_summary(stderr, ())}")

    def _require_mirror(self) -> None:
        if not (self.path / "HEAD").is_file():
            raise ObjectNotFoundError(f"no mirror at {self.path}; fetch first")

    def _require_commit(self, commit: str) -> None:
        exists = self._local(_git(self.path, "cat-file", "-e", f"{commit}^{{commit}}"))
        if exists.returncode != 0:
            raise ObjectNotFoundError(f"commit {commit} is not in the mirror at {self.path}")

    def _local_records(
        self, invocation: GitInvocation, *, max_files: int | None
    ) -> tuple[list[bytes], int, str]:
        """The records ``git ls-tree -z`` prints, read as they come; git is stopped once ``max_files``
        files are listed. Returns the records, the exit code (0 when stopped) and stderr."""
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

            timer = threading.Timer(LOCAL_TIMEOUT, stop)
            timer.start()
            try:
                records, stopped = _read_records(process, max_files)
            finally:
                timer.cancel()
                if process.poll() is None:
                    process.kill()
                returncode = process.wait()
            if timed_out.is_set():
                raise TemporaryError(f"git took longer than {LOCAL_TIMEOUT:g}s reading {self.path}")
            stderr.seek(0)
            message = stderr.read(64 * 1024).decode("utf-8", "replace")
        return records, 0 if stopped else returncode, message

    def _local(self, invocation: GitInvocation) -> subprocess.CompletedProcess[bytes]:
        try:
            return _run(invocation, timeout=LOCAL_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise TemporaryError(f"git took longer than {LOCAL_TIMEOUT:g}s reading {self.path}") from None

    def _resolve(self, ref: str) -> str | None:
        completed = self._local(_git(self.path, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"))
        if completed.returncode != 0:
            return None
        return completed.stdout.decode("ascii").strip()

    def _is_ancestor(self, ancestor: str, descendant: str) -> bool:
        completed = self._local(_git(self.path, "merge-base", "--is-ancestor", ancestor, descendant))
        # Exit 1 means "not an ancestor"; anything else (the old tip pruned, say)
        # leaves the ancestry unproven, which counts as a forced update too.
        return completed.returncode == 0


def _read_records(process: subprocess.Popen[bytes], max_files: int | None) -> tuple[list[bytes], bool]:
    """``ls-tree`` records up to the one listing file number ``max_files``, and whether git had more
    (then the rest is left unread). Only regular files count: symlinks and submodules, which the
    listing skips, must not make a cut listing look complete."""
    if process.stdout is None:
        raise RuntimeError("git was started without a stdout pipe")
    records: list[bytes] = []
    files = 0
    pending = b""
    while chunk := os.read(process.stdout.fileno(), 64 * 1024):
        *complete, pending = (pending + chunk).split(b"\0")
        for record in complete:
            if max_files is not None and files == max_files:
                return records, True
            records.append(record)
            files += record.startswith(_FILE_MODES)
    return records, False


def _normalize_subpath(subpath: str) -> str:
    parts = [part for part in PurePosixPath(subpath.strip()).parts if part not in ("/", ".")]
    if ".." in parts:
        raise PermanentError(f"path {subpath!r} leaves the repository")
    return "/".join(parts)
