"""Running git for a mirror: command lines, environments, timeouts and what a failure means.

Tokens never reach argv, URLs or messages: git gets them through environment
variables of the one process that needs them, and everything git prints is
redacted before it goes into an exception or a log line.
"""

from __future__ import annotations

import base64
import contextlib
import functools
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
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from gitops.errors import GitopsError, PermanentError, TemporaryError
from gitops.fetch.credentials import CONTROL_CHARACTERS, Credentials
from gitops.outbound import redirect_of
from gitops.redaction import HTTP_SCHEMES, URL_USERINFO, redact_secrets, url_without_query

logger = logging.getLogger("gitops.fetch")

_Answer = TypeVar("_Answer")
_USAGE_ERROR = 129  # how git exits on an option it does not know

MIRROR_REF_PREFIX = "refs/sluice/heads/"
OBJECT_ID = re.compile(r"[0-9a-fA-F]{4,64}")
_SSH_SCHEMES = frozenset({"ssh", "git+ssh", "ssh+git"})
_SCP_LIKE = re.compile(r"^(?:[^@/:\s]+@)?[^/:\s]+:(?!//)")
# Local reads of the object store; only a wedged disk makes them this slow.
LOCAL_TIMEOUT = 60.0
# What one fetch may write (SLUICE_MAX_FETCH_BYTES): whoever can push chooses how much a fetch brings.
DEFAULT_MAX_FETCH_BYTES = 512 * 1024 * 1024
# What git may allocate while it fetches or maintains a mirror (SLUICE_MAX_GIT_MEMORY): a pack of a few
# kilobytes can hold deltas or a compressed blob that expand to gigabytes, and git inflates them in memory.
DEFAULT_MAX_GIT_MEMORY = 256 * 1024 * 1024
# Held to SLUICE_MAX_GIT_MEMORY, git streams a blob larger than 16 MiB to disk rather than holding it (its
# default is 512 MiB, which a small pack of zeros reaches; no file Sluice reads comes near 16 MiB), and
# resolves deltas on two threads: each thread's stack (8 MiB) counts against the bound, and index-pack
# would start up to 20 on a large machine, pack-objects one per core.
BOUNDED_MEMORY_CONFIG = (("core.bigFileThreshold", "16m"), ("pack.threads", "2"))
# What git itself says when an allocation fails (xmalloc, xmmap, a thread it cannot start), as when it
# reaches SLUICE_MAX_GIT_MEMORY: its own fatal or error lines only, never a Git server's (``remote:``).
OUT_OF_MEMORY = re.compile(
    r"^(?:fatal|error): (?:(?:\w+: )?out of memory\b|unable to create thread\b|.*: cannot allocate memory$)",
    re.IGNORECASE | re.MULTILINE,
)


# --- what went wrong ------------------------------------------------------------------------------------

AUTHENTICATION_FAILED = "authentication failed"
REDIRECTED = (
    "the Git server redirected the fetch elsewhere, which Sluice never follows: set the source's URL to "
    "where the repository is now"
)
# What looking up a redirect's target may take (``redirect_target``): a fetch that failed waits for it.
REDIRECT_LOOKUP_SECONDS = 10.0

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
    (r"returned error: 3\d\d", PermanentError, REDIRECTED),
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


def stderr_summary(stderr: str, secrets: Iterable[str], limit: int = 500) -> str:
    lines = [line.strip() for line in stderr.splitlines()]
    meaningful = [line for line in lines if line and not line.startswith("hint:")]
    return redact_secrets(" | ".join(meaningful), secrets)[-limit:]


# --- running git ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GitInvocation:
    """A git command line and its environment; ``secrets`` are redacted from whatever git prints."""

    argv: list[str]
    env: dict[str, str]
    secrets: tuple[str, ...] = ()


def base_env() -> dict[str, str]:
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


def check_url(url: str) -> None:
    if not url or url != url.strip() or CONTROL_CHARACTERS.search(url) or url.startswith("-"):
        raise PermanentError(f"malformed repository URL {url_without_query(url)!r}")
    if "::" in url.split("://", 1)[0]:
        # "<transport>::<address>" runs a remote helper; ext:: would run any command.
        raise PermanentError(f"remote helper URLs are not allowed: {url_without_query(url)!r}")
    if _url_scheme(url) in HTTP_SCHEMES and URL_USERINFO.match(url):
        raise PermanentError(
            f"repository URL {url_without_query(url)!r} embeds credentials;"
            " use a credentials reference instead"
        )


KNOWN_SCHEMES = frozenset({"http", "https", "git", "file", *_SSH_SCHEMES})


def repository_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a source's repository, or None; checked when a source is registered."""
    try:
        check_url(url)
    except PermanentError as exc:
        return str(exc)
    if _url_scheme(url) not in KNOWN_SCHEMES and not (_url_scheme(url) == "" and _SCP_LIKE.match(url)):
        shown = url_without_query(url)
        return f"{shown!r} is not a Git URL (https://, ssh://, git://, file:// or user@host:path)"
    return None


def normalize_branch(branch: str) -> str:
    branch = branch.strip().removeprefix("refs/heads/")
    if not branch or branch.startswith("-") or CONTROL_CHARACTERS.search(branch) or not _git_accepts(branch):
        raise PermanentError(f"invalid branch name {branch!r}")
    return branch


@functools.lru_cache(maxsize=1024)
def _git_accepts(branch: str) -> bool:
    """git's own verdict on a branch name; asked once per name and process, as every fetch checks it."""
    checked = subprocess.run(
        ["git", "check-ref-format", f"refs/heads/{branch}"],
        env=base_env(),
        capture_output=True,
        check=False,
        timeout=LOCAL_TIMEOUT,
    )
    return checked.returncode == 0


def _query_of(url: str) -> tuple[str, ...]:
    """git repeats the URL in its errors: a query (a source from before they were refused) may hold a
    token under any name, so it is kept from what is shown, as pages show the URL."""
    query = url.partition("?")[2].partition("#")[0]
    return (query,) if query else ()


def build_fetch_invocation(
    git_dir: Path,
    url: str,
    branch: str,
    credentials: Credentials | None,
    *,
    refspec: str | None = None,
    max_bytes: int = DEFAULT_MAX_FETCH_BYTES,
    max_memory: int = DEFAULT_MAX_GIT_MEMORY,
    ssh_known_hosts: str = "",
) -> GitInvocation:
    """The ``git fetch`` of one branch into the mirror's private ref (no validation of url or branch);
    with ``refspec``, of that instead (a preview's ref or commit, see gitops.fetch.refs).

    Only the source's own credentials authenticate: git reads no ``~/.gitconfig`` or ``~/.netrc`` of the
    worker's account (HOME is /dev/null to it), ssh no configuration file, default key or agent. A source
    without credentials would otherwise fetch with whatever the worker's account holds, past the
    references an administrator may name (SLUICE_CREDENTIALS_ENV_PREFIX, SLUICE_CREDENTIALS_DIRS). git
    follows no redirect: the server's answer could send the worker to any host. ``ssh_known_hosts``: the
    file of host keys ssh checks (SLUICE_SSH_KNOWN_HOSTS; empty: ssh's own default files).

    No file git writes may grow past ``max_bytes`` (0: unbounded): the kernel stops git there
    (``prlimit --fsize``, SIGXFSZ), and every fetch keeps what arrived as one pack, so that the bound
    holds for the whole fetch rather than for each loose object. git starts no maintenance of its own
    (it would inherit the bound). Each git process may allocate ``max_memory`` (``memory_bounded``)."""
    # Only the token given here may authenticate, never one a helper stored for the host.
    config = [
        ("credential.helper", ""),
        ("protocol.ext.allow", "never"),
        ("maintenance.auto", "false"),
        ("http.followRedirects", "false"),
    ]
    if max_bytes > 0:
        config.append(("fetch.unpackLimit", "1"))
    if max_memory > 0:
        config.extend(BOUNDED_MEMORY_CONFIG)
    env = _without_account_credentials(base_env())
    secrets = (*_query_of(url), *_token_header(url, credentials, config))
    if _is_ssh_url(url):
        env["GIT_SSH_COMMAND"] = shlex.join(["ssh", *_ssh_options(ssh_known_hosts, credentials)])
    elif credentials is not None and credentials.ssh_key_file is not None:
        raise PermanentError(f"an SSH key needs an SSH URL, not {url_without_query(url)!r}")
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
        refspec or f"+refs/heads/{branch}:{MIRROR_REF_PREFIX}{branch}",
    ]
    return GitInvocation(
        argv=_limited(argv, max_bytes, max_memory), env=_with_config(env, config), secrets=secrets
    )


def redirect_target(url: str, credentials: Credentials | None) -> str:
    """Where the Git server redirects ``url``'s first request, which git asked and does not say: a GET
    of the same ``info/refs`` with the same credentials, the redirect not followed. The repository's URL
    it names (the redirect's, less that path), or "" when it names none."""
    if _url_scheme(url) not in HTTP_SCHEMES or "?" in url:  # git asks another URL of one with a query
        return ""
    basic = _basic(credentials)
    headers = {"Authorization": f"Basic {basic}"} if basic else {}
    refs = f"{url.rstrip('/')}/info/refs?service=git-upload-pack"
    location = redirect_of(refs, headers=headers, timeout=REDIRECT_LOOKUP_SECONDS)
    if not location:
        return ""
    moved = urllib.parse.urljoin(refs, location)
    return url_without_query(moved.partition("/info/refs")[0] if "/info/refs" in moved else moved)


def _without_account_credentials(env: dict[str, str]) -> dict[str, str]:
    """``env`` without what would let git authenticate as the worker's account: curl reads
    ``$HOME/.netrc`` for any host it names, git ``$HOME/.gitconfig`` (a helper, a header, a URL rewrite);
    ssh's agent is ``SSH_AUTH_SOCK``. /etc/gitconfig, where an operator sets a CA bundle, still applies."""
    env = {key: value for key, value in env.items() if key not in ("SSH_AUTH_SOCK", "XDG_CONFIG_HOME")}
    env["HOME"] = os.devnull  # git and curl take a file under it for absent, as where none exists
    return env


def _token_header(
    url: str, credentials: Credentials | None, config: list[tuple[str, str]]
) -> tuple[str, ...]:
    """Adds the source's token to ``config`` as an Authorization header scoped to the URL's origin (a
    redirect to another host would not carry it); returns the texts to redact from what git says."""
    if credentials is None or credentials.token is None:
        return ()
    if _url_scheme(url) not in HTTP_SCHEMES:
        raise PermanentError(f"a token needs an http(s) URL, not {url_without_query(url)!r}")
    if _url_scheme(url) == "http":
        logger.warning("sending a token over plain HTTP to %s", _origin(url))
    basic = _basic(credentials)
    config.append((f"http.{_origin(url)}/.extraHeader", f"Authorization: Basic {basic}"))
    return (credentials.token, basic)


def _basic(credentials: Credentials | None) -> str:
    """The source's token as HTTP Basic credentials ("" without a token)."""
    if credentials is None or credentials.token is None:
        return ""
    return base64.b64encode(f"{credentials.username}:{credentials.token}".encode()).decode("ascii")


def _ssh_options(known_hosts: str, credentials: Credentials | None) -> list[str]:
    """ssh's options for a fetch: no configuration file (``-F /dev/null``: a ``Host`` block could add a
    key, a proxy or another host), no agent, no key but the source's own (none of ``~/.ssh/id_*``);
    never waits for a passphrase or a host key's confirmation."""
    options = ["-F", os.devnull, "-o", "BatchMode=yes", "-o", "IdentityAgent=none"]
    if known_hosts:
        # Quoted: ssh splits the value at spaces (a list of files) and expands % tokens in it.
        quoted = '"' + known_hosts.replace("%", "%%") + '"'
        options += ["-o", f"UserKnownHostsFile={quoted}", "-o", "StrictHostKeyChecking=yes"]
    if credentials is not None and credentials.ssh_key_file is not None:
        return [*options, "-i", credentials.ssh_key_file, "-o", "IdentitiesOnly=yes"]
    return [*options, "-o", "IdentityFile=none"]


def _limited(argv: list[str], max_bytes: int, max_memory: int) -> list[str]:
    """``argv`` under one ``prlimit`` for both bounds (0: that one off; both off, git alone)."""
    limits = [f"--data={max_memory}"] if max_memory > 0 else []
    if max_bytes > 0:
        # --core=0: git stopped at the bound dies of SIGXFSZ, whose default action would dump a core.
        limits += [f"--fsize={max_bytes}", "--core=0"]
    return [_prlimit(), *limits, "--", *argv] if limits else argv


def memory_bounded(invocation: GitInvocation, max_memory: int) -> GitInvocation:
    """``invocation`` with git (and each process it starts) held to ``max_memory`` bytes of data
    (``prlimit --data``: what it allocates, not the pack files it maps to read; 0: unbounded). Past it an
    allocation fails and git stops with "Out of memory" (``OUT_OF_MEMORY``) rather than taking the
    worker's memory (BOUNDED_MEMORY_CONFIG: a large blob that is no delta is streamed, not held). Each
    process git starts is held to it on its own."""
    if max_memory <= 0:
        return invocation
    env = dict(invocation.env)
    count = int(env.get("GIT_CONFIG_COUNT", "0"))
    for index, (key, value) in enumerate(BOUNDED_MEMORY_CONFIG, start=count):
        env[f"GIT_CONFIG_KEY_{index}"], env[f"GIT_CONFIG_VALUE_{index}"] = key, value
    env["GIT_CONFIG_COUNT"] = str(count + len(BOUNDED_MEMORY_CONFIG))
    argv = [_prlimit(), f"--data={max_memory}", "--", *invocation.argv]
    return GitInvocation(argv=argv, env=env, secrets=invocation.secrets)


@functools.cache
def _prlimit() -> str:
    found = shutil.which("prlimit")
    if found is None:
        raise PermanentError(
            "bounding a fetch needs prlimit (util-linux) on the worker's PATH: install it, or set "
            "SLUICE_MAX_FETCH_BYTES=0 and SLUICE_MAX_GIT_MEMORY=0 to fetch without a bound"
        )
    return found


class Interrupted(Exception):
    """``run`` stopped git because its caller asked it to (``interrupted``)."""


# How often a long git run asks whether it should stop: a fetch worth having is done well within it.
INTERRUPT_CHECK_SECONDS = 1.0


class GitRun(subprocess.CompletedProcess[bytes]):
    """A finished git run; ``stderr_bytes`` is how much it said on stderr, of which ``stderr`` keeps the
    end. Said up to a fetch's bound, git was stopped by it (the bound holds for its stderr file too)."""

    stderr_bytes: int = 0


def run(
    invocation: GitInvocation,
    *,
    timeout: float,
    input: bytes | None = None,
    interrupted: Callable[[], bool] | None = None,
) -> GitRun:
    """Runs git to its end, killed (with the helpers it started) past ``timeout`` seconds, raising
    ``subprocess.TimeoutExpired``; with ``interrupted``, asked every INTERRUPT_CHECK_SECONDS while git
    runs, and git is killed as soon as it says so, raising ``Interrupted``. Of what git says on stderr
    the last STDERR_KEPT bytes are kept: a Git server may stream ``remote:`` lines for the whole fetch,
    and they went into the worker's memory. (The file they go to is bounded as git's others are.)"""
    with tempfile.TemporaryFile() as said:
        completed = _run_to_end(invocation, timeout, input, interrupted, said)
        size = said.seek(0, os.SEEK_END)
        said.seek(max(0, size - STDERR_KEPT))
        tail = said.read()
    finished = GitRun(completed.args, completed.returncode, completed.stdout)
    finished.stderr = tail if size <= STDERR_KEPT else b"[...]" + tail
    finished.stderr_bytes = size
    return finished


# Enough for git's own last lines (its fatal error, whatever came before it).
STDERR_KEPT = 64 * 1024


def _run_to_end(
    invocation: GitInvocation,
    timeout: float,
    input: bytes | None,
    interrupted: Callable[[], bool] | None,
    said: IO[bytes],
) -> subprocess.CompletedProcess[bytes]:
    try:
        # A session of its own: git has no terminal to prompt on, and a timeout
        # can kill the helpers it started (git-remote-https, ssh) along with it.
        process = subprocess.Popen(
            invocation.argv,
            env=invocation.env,
            stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=said,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise PermanentError("the git executable was not found") from None
    deadline = time.monotonic() + timeout
    sending = input
    try:
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            wait = remaining if interrupted is None else min(remaining, INTERRUPT_CHECK_SECONDS)
            try:
                # Asked again after a timeout, communicate loses none of the output; the input was
                # taken by the first call (a second call with it would raise).
                stdout, stderr = process.communicate(sending, timeout=wait)
                return subprocess.CompletedProcess(invocation.argv, process.returncode, stdout, stderr)
            except subprocess.TimeoutExpired:
                sending = None
                if wait >= remaining:
                    raise
                if interrupted is not None and interrupted():
                    raise Interrupted() from None
    except BaseException:
        # Past the timeout, interrupted, or whatever the check raised (the database away): git and the
        # helpers it started must not go on writing into a mirror the next pass uses.
        _kill_session(process)
        raise


def _kill_session(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):  # it may have finished in the meantime
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


def git_at(git_dir: Path, *args: str) -> GitInvocation:
    return GitInvocation(argv=["git", f"--git-dir={git_dir}", *args], env=base_env())


def check_object_id(value: str, what: str) -> str:
    if not OBJECT_ID.fullmatch(value):
        raise ValueError(f"{what} must be a hexadecimal object id, not {value!r}")
    return value.lower()


class CatFileBatch:
    """A persistent ``git cat-file --batch-command`` (git 2.36 or later) with pipelined requests.

    One process answers both what an object is (``info``: type and size, so limits apply before a
    blob is read) and what it holds (``contents``). Asking for one object at a time costs a round
    trip each (about 0.9s for 10,000 blobs); a thread writes all the requests while the caller
    reads the answers, which costs one. The thread is needed because git stops reading requests
    once the answers fill the pipe that nobody would be draining yet.
    """

    def __init__(self, git_dir: Path) -> None:
        self._process = subprocess.Popen(
            ["git", f"--git-dir={git_dir}", "cat-file", "--batch-command"],
            env=base_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def read(self, object_ids: Sequence[str]) -> list[tuple[str, bytes] | None]:
        """(type, content) of each object in order, None for a missing one."""
        return self._exchange("contents", object_ids, self._read_answer)

    def sizes(self, object_ids: Sequence[str]) -> list[tuple[str, int] | None]:
        """(type, size in bytes) of each object in order, None for a missing one; nothing is read."""
        return self._exchange("info", object_ids, self._header)

    def _exchange(
        self, command: str, object_ids: Sequence[str], answer: Callable[[IO[bytes]], _Answer]
    ) -> list[_Answer]:
        stdin, stdout = self._process.stdin, self._process.stdout
        if stdin is None or stdout is None:
            raise RuntimeError("cat-file was started without pipes")
        requests = "".join(f"{command} {object_id}\n" for object_id in object_ids).encode("ascii")
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
            answers = [answer(stdout) for _ in object_ids]
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

    def _header(self, stdout: IO[bytes]) -> tuple[str, int] | None:
        line = stdout.readline()
        header = line.split()
        if len(header) == 2:  # "<name> missing" or "<name> ambiguous"
            return None
        if len(header) != 3 or not header[2].isdigit():
            exit_code = self._process.poll()
            if not line:  # the pipe closed: git has exited, or is about to
                with contextlib.suppress(subprocess.TimeoutExpired):
                    exit_code = self._process.wait(timeout=5)
            if exit_code == _USAGE_ERROR:
                raise PermanentError("git 2.36 or later is needed: it refused `cat-file --batch-command`")
            raise TemporaryError(f"git cat-file stopped answering (exit code {exit_code})")
        return header[1].decode("ascii"), int(header[2])

    def _read_answer(self, stdout: IO[bytes]) -> tuple[str, bytes] | None:
        header = self._header(stdout)
        if header is None:
            return None
        kind, size = header
        content = stdout.read(size)
        if len(content) != size or stdout.read(1) != b"\n":
            raise TemporaryError("git cat-file answered with a truncated object")
        return kind, content

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
