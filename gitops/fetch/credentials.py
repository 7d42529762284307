"""Where a source's Git credentials live, by reference: never stored, never logged."""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from gitops.cluster.clients import credential_files
from gitops.errors import PermanentError

DEFAULT_USERNAME = "x-access-token"
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


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
        if self.token is not None and (not self.token or CONTROL_CHARACTERS.search(self.token)):
            # A newline would let the token inject a second HTTP header.
            raise ValueError("the token is empty or contains control characters")
        if ":" in self.username or CONTROL_CHARACTERS.search(self.username):
            raise ValueError(f"invalid username {self.username!r} for Basic authentication")

    def __repr__(self) -> str:
        token = None if self.token is None else "***"
        return f"Credentials(token={token!r}, username={self.username!r}, ssh_key_file={self.ssh_key_file!r})"


ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}\Z")

# What Sluice itself runs with. A source's credentials are sent to whatever host its URL names, so a
# reference to one of these (set by anyone with the admin role) would hand the platform's secrets to
# any Git server: the key that signs sessions, the database, the broker, cloud identities.
PLATFORM_VARIABLES = frozenset(
    {
        "SECRET_KEY",
        "SECRET_KEY_FALLBACKS",
        "DATABASE_URL",
        "CELERY_BROKER_URL",
        "CELERY_RESULT_BACKEND",
        "REDIS_URL",
        "SLUICE_METRICS_TOKEN",
        "PGPASSWORD",
        "POSTGRES_PASSWORD",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AZURE_CLIENT_SECRET",
    }
)
# The pod's own identities (the Kubernetes service account, EKS, Azure and GKE workload identity),
# under both names of the run directory, and the kernel's views of processes.
_IDENTITY_DIRECTORIES = ("kubernetes.io", "eks.amazonaws.com", "azure", "gke")
PLATFORM_PATHS = (
    *(f"{run}/secrets/{name}" for run in ("/run", "/var/run") for name in _IDENTITY_DIRECTORIES),
    "/proc",
    "/sys",
)


@dataclass(frozen=True)
class CredentialScope:
    """Where an operator lets sources' credentials come from (``SLUICE_CREDENTIALS_ENV_PREFIX``,
    ``SLUICE_CREDENTIALS_DIRS``); empty: anywhere but the platform's own secrets."""

    env_prefix: str = ""
    directories: tuple[str, ...] = ()
    # The clusters' kubeconfigs and the files they name (``clients.credential_files``), resolved.
    cluster_files: frozenset[str] = frozenset()

    def problem(self, kind: str, target: str) -> str | None:
        """Why the variable or file ``target`` may not hold a source's credentials, or None. A file is
        judged by where it really is (links followed, as far as they exist here), against directories
        resolved the same way: ``/var/run`` is a link to ``/run`` on most systems."""
        if kind == "env":
            if target in PLATFORM_VARIABLES:
                return f"environment variable {target} holds Sluice's own configuration, not a Git credential"
            if self.env_prefix and not target.startswith(self.env_prefix):
                return f"credentials' variables start with {self.env_prefix} (SLUICE_CREDENTIALS_ENV_PREFIX)"
            return None
        path = _resolved(target)
        if any(_within(path, platform) for platform in _platform_paths()):
            return (
                f"{target} is the platform's own (a service-account token, the kernel), not a Git credential"
            )
        if path in self.cluster_files:
            # A tokenFile a kubeconfig names is a single line, as a Git token is: refused by where it is.
            return (
                f"{target} holds a cluster's credentials (a kubeconfig, or a file one names), "
                "not a Git credential"
            )
        if self.directories and not any(_within(path, _resolved(d)) for d in self.directories):
            return f"credential files live under {', '.join(self.directories)} (SLUICE_CREDENTIALS_DIRS)"
        return None


def _resolved(path: str) -> str:
    # "//proc" is "/proc" to the kernel, but normpath and realpath keep the two leading slashes.
    return os.path.realpath("/" + path.lstrip("/"))


@functools.cache
def _platform_paths() -> tuple[str, ...]:
    return tuple({*PLATFORM_PATHS, *(_resolved(path) for path in PLATFORM_PATHS)})


def configured_scope(reference: str | None = None) -> CredentialScope:
    """The operator's ``SLUICE_CREDENTIALS_ENV_PREFIX`` and ``SLUICE_CREDENTIALS_DIRS`` (Django settings),
    and the clusters' credential files. ``reference``: the one to be judged, when known: the registry is
    read (one query) only for a file's, so a pass of a source without credentials asks nothing more."""
    files = reference is None or reference.strip().startswith(("file:", "ssh-key:"))
    return CredentialScope(
        env_prefix=getattr(settings, "SLUICE_CREDENTIALS_ENV_PREFIX", ""),
        directories=tuple(getattr(settings, "SLUICE_CREDENTIALS_DIRS", ())),
        cluster_files=frozenset(_resolved(path) for path in credential_files()) if files else frozenset(),
    )


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def reference_problem(reference: str, scope: CredentialScope = CredentialScope()) -> str | None:
    """Why ``reference`` is not a credentials reference a source may have, or None. Its form is checked,
    and whether ``scope`` allows its variable or file (which are the worker's, not the caller's: they
    are read only when used); a value that is no reference is never echoed: it may be a token pasted
    in by mistake."""
    if not reference:
        return None
    kind, separator, target = reference.partition(":")
    if separator and kind == "env" and ENV_NAME.match(target):
        return scope.problem(kind, target)
    if (
        separator
        and kind in ("file", "ssh-key")
        and target.startswith("/")
        and not CONTROL_CHARACTERS.search(target)
    ):
        return scope.problem(kind, target)
    return (
        "not a credentials reference (not shown, it may be a secret); "
        "expected env:VAR, file:/path or ssh-key:/path"
    )


def resolve_credentials(
    reference: str, *, username: str = DEFAULT_USERNAME, scope: CredentialScope = CredentialScope()
) -> Credentials | None:
    """Reference forms: "" -> None; "env:VAR" (token in env var VAR); "file:/path" (token in a file);
    "ssh-key:/path" (private key file). Unknown form, missing variable/file, or one ``scope`` does not
    allow (a file by the path it really is, symbolic links followed) -> PermanentError naming the
    reference (never the secret)."""
    reference = reference.strip()
    if not reference:
        return None
    kind, separator, target = reference.partition(":")
    if (
        separator
        and target
        and kind in ("env", "file", "ssh-key")
        and (problem := scope.problem(kind, target))
    ):
        raise PermanentError(f"credentials {reference!r}: {problem}")
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
    if CONTROL_CHARACTERS.search(token):
        raise PermanentError(f"credentials {reference!r}: the token contains control characters")
    return Credentials(token=token, username=username)
