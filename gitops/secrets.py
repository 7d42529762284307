"""Secrets Sluice must keep (webhook secrets), encrypted at rest with a key derived from SECRET_KEY.

HMAC verification needs the secret itself, so it cannot be hashed like a
password. Rotating SECRET_KEY makes stored webhook secrets unreadable: set them
again with ``gitops webhook-secret NAME --rotate``.
"""

from __future__ import annotations

import base64
import secrets

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

from gitops.errors import PermanentError


def _fernet() -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"sluice-webhook-secrets", info=b"v1").derive(
        settings.SECRET_KEY.encode()
    )
    return Fernet(base64.urlsafe_b64encode(key))


def encrypt(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode()


def decrypt(token: str) -> str:
    if not token:
        return ""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise PermanentError("the stored webhook secret cannot be read (was SECRET_KEY changed?)") from exc


def generate() -> str:
    return secrets.token_urlsafe(32)
