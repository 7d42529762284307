"""Push webhooks from GitHub, GitLab, Gitea/Forgejo/Gogs and plain Git servers. Pure: no Django, no I/O.

The provider is told by its headers. Each is checked its own way, always in
constant time: GitHub, Gitea and the generic format sign the raw body with
HMAC-SHA256; GitLab sends the shared secret itself as a token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_BODY_BYTES = 1024 * 1024
SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?\Z")


class WebhookRejected(Exception):
    """The request is refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class PushEvent:
    provider: str
    event: str  # "push", or "ping" for GitHub's hello
    delivery_id: str
    ref: str = ""
    commit: str = ""

    @property
    def branch(self) -> str:
        return self.ref.removeprefix("refs/heads/") if self.ref.startswith("refs/heads/") else ""


def sign(secret: str, body: bytes) -> str:
    """``sha256=<hex>``: GitHub's and the generic format's signature of a body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _header(headers: Mapping[str, str], name: str) -> str:
    # Django exposes headers case-insensitively through request.headers; plain dicts are matched loosely.
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return ""


def _check_hmac(secret: str, body: bytes, signature: str, *, prefixed: bool) -> None:
    if not signature:
        raise WebhookRejected(401, "missing signature")
    expected = sign(secret, body)
    if not prefixed:
        expected = expected.removeprefix("sha256=")
    # compare_digest takes time independent of where the strings first differ.
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        raise WebhookRejected(401, "signature does not match")


def identify(headers: Mapping[str, str]) -> str:
    if _header(headers, "X-GitHub-Event"):
        return "github"
    if _header(headers, "X-Gitlab-Event"):
        return "gitlab"
    if (
        _header(headers, "X-Gitea-Event")
        or _header(headers, "X-Forgejo-Event")
        or _header(headers, "X-Gogs-Event")
    ):
        return "gitea"
    if _header(headers, "X-Sluice-Signature") or _header(headers, "X-Sluice-Event"):
        return "generic"
    raise WebhookRejected(400, "unknown sender: no GitHub, GitLab, Gitea or X-Sluice headers")


def verify(provider: str, headers: Mapping[str, str], body: bytes, secret: str) -> None:
    """Raises WebhookRejected(401) unless the request carries the source's secret."""
    if not secret:
        raise WebhookRejected(401, "no webhook secret is set for this source")
    if provider == "github":
        _check_hmac(secret, body, _header(headers, "X-Hub-Signature-256"), prefixed=True)
    elif provider == "gitea":
        signature = (
            _header(headers, "X-Gitea-Signature")
            or _header(headers, "X-Forgejo-Signature")
            or _header(headers, "X-Gogs-Signature")
        )
        _check_hmac(secret, body, signature, prefixed=False)
    elif provider == "gitlab":
        token = _header(headers, "X-Gitlab-Token")
        if not token:
            raise WebhookRejected(401, "missing X-Gitlab-Token")
        # As digests: compare_digest returns at once on a length mismatch, telling the secret's length.
        if not hmac.compare_digest(
            hashlib.sha256(token.encode()).digest(), hashlib.sha256(secret.encode()).digest()
        ):
            raise WebhookRejected(401, "token does not match")
    else:
        _check_hmac(secret, body, _header(headers, "X-Sluice-Signature"), prefixed=True)


def parse(provider: str, headers: Mapping[str, str], body: bytes) -> PushEvent:
    """The push in a verified request. Only call after ``verify``."""
    if provider == "github":
        event = _header(headers, "X-GitHub-Event")
        delivery = _header(headers, "X-GitHub-Delivery")
    elif provider == "gitlab":
        event = {"Push Hook": "push", "System Hook": "push"}.get(_header(headers, "X-Gitlab-Event"), "other")
        delivery = _header(headers, "X-Gitlab-Event-UUID") or _header(headers, "Idempotency-Key")
    elif provider == "gitea":
        event = (
            _header(headers, "X-Gitea-Event")
            or _header(headers, "X-Forgejo-Event")
            or _header(headers, "X-Gogs-Event")
        )
        delivery = (
            _header(headers, "X-Gitea-Delivery")
            or _header(headers, "X-Forgejo-Delivery")
            or _header(headers, "X-Gogs-Delivery")
        )
    else:
        event = _header(headers, "X-Sluice-Event") or "push"
        delivery = _header(headers, "X-Sluice-Delivery")
    try:
        payload: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise WebhookRejected(400, f"the body is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise WebhookRejected(400, "the body must be a JSON object")
    if event == "ping":
        return PushEvent(provider, "ping", delivery)
    if event != "push":
        return PushEvent(provider, event or "unknown", delivery)
    ref = payload.get("ref")
    commit = payload.get("after") or payload.get("checkout_sha") or ""
    if not isinstance(ref, str) or not ref.startswith("refs/"):
        raise WebhookRejected(400, "a push event needs a 'ref' like refs/heads/main")
    if not isinstance(commit, str) or not SHA.match(commit):
        raise WebhookRejected(400, "a push event needs 'after': the full commit hash")
    return PushEvent(provider, "push", delivery, ref=ref, commit=commit)
