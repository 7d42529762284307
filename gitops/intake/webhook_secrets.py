"""A source's webhook secret: set, rotated and re-encrypted; stored encrypted, shown once, never logged."""

from __future__ import annotations

from gitops import secrets as encryption
from gitops.errors import PermanentError
from gitops.models import Source


def webhook_secret_set(source: Source, secret: str) -> None:
    if len(secret) < 16:
        raise PermanentError("a webhook secret needs at least 16 characters")
    Source.objects.filter(pk=source.pk).update(webhook_secret_encrypted=encryption.encrypt(secret))


def webhook_secret_rotate(source: Source) -> str:
    """A new random secret, stored encrypted and returned once for the user to copy."""
    secret = encryption.generate()
    webhook_secret_set(source, secret)
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
