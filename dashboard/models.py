"""API tokens for automation: each acts as its user, with that user's permissions.

A token is ``sluice_<prefix>_<secret>``. Only the prefix (to find the row and to
name the token in listings) and a SHA-256 hash of the whole token are stored;
the token itself is shown once, when it is created. The secret has 256 bits of
entropy, so a fast hash is enough: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from typing import ClassVar

from django.conf import settings
from django.contrib.auth.models import User
from django.db import models
from django.utils import timezone

TOKEN_PREFIX = "sluice"  # noqa: S105 - the label every token starts with, not a secret
PREFIX_BYTES = 4  # 8 hex characters: enough to tell tokens apart, useless to an attacker
SECRET_BYTES = 32
# last_used_at is written at most this often per token, so a busy script does not write on every call.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def split_token(token: str) -> str | None:
    """The prefix of a well-formed token, or None."""
    label, _, rest = token.partition("_")
    prefix, _, secret = rest.partition("_")
    if label != TOKEN_PREFIX or len(prefix) != 2 * PREFIX_BYTES or not secret:
        return None
    if any(c not in "0123456789abcdef" for c in prefix):
        return None
    return prefix


class ApiTokenQuerySet(models.QuerySet["ApiToken"]):
    def issue(self, user: User, *, name: str, expires_at: datetime | None = None) -> tuple[ApiToken, str]:
        """Creates a token for ``user``; returns the row and the token, which is never stored."""
        while True:
            prefix = secrets.token_hex(PREFIX_BYTES)
            if not self.filter(prefix=prefix).exists():
                break
        token = f"{TOKEN_PREFIX}_{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
        row = self.create(
            user=user, name=name, prefix=prefix, token_hash=hash_token(token), expires_at=expires_at
        )
        return row, token

    def authenticate(self, token: str) -> ApiToken | None:
        """The live row for ``token``, its user loaded; None when unknown, revoked, expired or inactive."""
        prefix = split_token(token)
        if prefix is None:
            return None
        row = self.select_related("user").filter(prefix=prefix).first()
        # Compare the hashes whatever happened, in constant time.
        expected = row.token_hash if row is not None else hash_token("")
        if not hmac.compare_digest(expected, hash_token(token)) or row is None:
            return None
        now = timezone.now()
        if not row.is_live(now) or not row.user.is_active:
            return None
        if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
            self.filter(pk=row.pk).update(last_used_at=now)
            row.last_used_at = now
        return row


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="what the token is for, e.g. ci-deploy")
    prefix = models.CharField(max_length=16, unique=True, help_text="the visible start of the token")
    token_hash = models.CharField(max_length=64, help_text="SHA-256 of the token, hex; never the token")
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering: ClassVar[list[str]] = ["-created_at", "-id"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({TOKEN_PREFIX}_{self.prefix}_…)"

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def is_live(self, now: datetime | None = None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def state(self, now: datetime | None = None) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if not self.is_live(now):
            return "expired"
        return "active"
