"""Where a source's Git credentials live, by reference: never stored, never logged."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

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


def reference_problem(reference: str) -> str | None:
    """Why ``reference`` is not the form of a credentials reference, or None. Only its form is checked
    (the variable or file is the worker's, not the caller's), and a value that is no reference is never
    echoed: it may be a token pasted in by mistake."""
    if not reference:
        return None
    kind, separator, target = reference.partition(":")
    if separator and kind == "env" and ENV_NAME.match(target):
        return None
    if (
        separator
        and kind in ("file", "ssh-key")
        and target.startswith("/")
        and not CONTROL_CHARACTERS.search(target)
    ):
        return None
    return (
        "not a credentials reference (not shown, it may be a secret); "
        "expected env:VAR, file:/path or ssh-key:/path"
    )


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
    if CONTROL_CHARACTERS.search(token):
        raise PermanentError(f"credentials {reference!r}: the token contains control characters")
    return Credentials(token=token, username=username)
