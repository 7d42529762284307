"""Secrets Sluice must keep (webhook secrets), encrypted at rest with keys derived from SECRET_KEY.

HMAC verification needs the secret itself, so it cannot be hashed like a
password. Encryption uses SECRET_KEY; decryption also accepts every key in
SECRET_KEY_FALLBACKS, so a rotated SECRET_KEY keeps stored secrets readable
(``cryptography``'s MultiFernet). Re-encryption rewrites them under the new
key (`gitops reencrypt-secrets`), after which the old one can leave SECRET_KEY_FALLBACKS.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

from gitops.errors import PermanentError


def _fernet_for(secret_key: str) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"sluice-webhook-secrets", info=b"v1").derive(
        secret_key.encode()
    )
    return Fernet(base64.urlsafe_b64encode(key))


def _keys() -> list[str]:
    fallbacks: Iterable[str] = getattr(settings, "SECRET_KEY_FALLBACKS", ())
    return [settings.SECRET_KEY, *fallbacks]


def _fernet() -> MultiFernet:
    # The first key encrypts; every one of them decrypts.
    return MultiFernet([_fernet_for(key) for key in _keys()])


def encrypt(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode()


def decrypt(token: str) -> str:
    if not token:
        return ""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise PermanentError(
            "the stored webhook secret cannot be read: it was encrypted with a SECRET_KEY that is "
            "neither SECRET_KEY nor in SECRET_KEY_FALLBACKS"
        ) from exc


def reencrypt(token: str) -> str:
    """The same secret encrypted under the current SECRET_KEY; raises PermanentError if unreadable."""
    try:
        return _fernet().rotate(token.encode()).decode()
    except InvalidToken as exc:
        raise PermanentError("the stored webhook secret cannot be read with any configured key") from exc


def generate() -> str:
    return secrets.token_urlsafe(32)
