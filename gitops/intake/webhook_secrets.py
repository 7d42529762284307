"""A source's webhook secret: set, rotated and re-encrypted; stored encrypted, shown once, never logged."""

from __future__ import annotations

from django.db import transaction

from gitops import secrets as encryption
from gitops.errors import PermanentError
from gitops.models import Source
from gitops.record.audit import Actor, audit_record
from gitops.vocabulary import SourceAuditAction


def webhook_secret_set(source: Source, secret: str, *, actor: Actor | None = None, how: str = "set") -> None:
    """Stores ``secret`` encrypted, with an audit row naming ``actor`` and ``how`` (never the secret):
    before 2026-12-07 nothing recorded who set or rotated a source's webhook secret."""
    if len(secret) < 16:
        raise PermanentError("a webhook secret needs at least 16 characters")
    with transaction.atomic():
        Source.objects.filter(pk=source.pk).update(webhook_secret_encrypted=encryption.encrypt(secret))
        if actor is not None:
            audit_record(
                source, SourceAuditAction.WEBHOOK_SECRET, actor, before=None, after=None, message=how
            )


def webhook_secret_rotate(source: Source, *, actor: Actor | None = None) -> str:
    """A new random secret, stored encrypted and returned once for the user to copy."""
    secret = encryption.generate()
    webhook_secret_set(source, secret, actor=actor, how="rotated")
    return secret


def webhook_secrets_reencrypt() -> tuple[int, list[str]]:
    """Re-encrypts every stored webhook secret under the current SECRET_KEY.

    Returns how many were rewritten and the names of sources whose secret no
    configured key can read (those need ``webhook-secret --rotate``).
    """
    rewritten, unreadable = 0, []
    for source in Source.objects.exclude(webhook_secret_encrypted="").only(
        "pk", "name", "webhook_secret_encrypted"
    ):
        try:
            token = encryption.reencrypt(source.webhook_secret_encrypted)
        except PermanentError:
            unreadable.append(source.name)
            continue
        rewritten += Source.objects.filter(
            pk=source.pk, webhook_secret_encrypted=source.webhook_secret_encrypted
        ).update(webhook_secret_encrypted=token)
    return rewritten, unreadable
