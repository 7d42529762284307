"""Secrets out of text: credentials in URLs, tokens and passwords in messages. Pure.

Everything Sluice writes where people read it (logs, pages, the API, exceptions)
passes through here first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

HTTP_SCHEMES = frozenset({"http", "https"})
# Userinfo runs from "://" to the last "@" before the path; a greedy class that
# stops at "/", whitespace and quotes finds it in URLs and inside git's messages.
# A scheme starts only where a run of scheme characters starts (the lookbehind) and
# takes the whole run (possessive): with a word boundary instead, text like
# "a.a.a.a…" was scanned again from every letter, 4 s for 40,000 characters.
URL_USERINFO = re.compile(
    r"(?P<scheme>(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*+)://(?P<userinfo>[^\s/?#'\"]*)@"
)

# Secrets that may slip into a message: URL credentials are handled by redact_url.
SECRET_PATTERNS = (
    re.compile(r"(?i)(authorization:\s*(?:bearer|basic)\s+)\S+"),
    # A name=value pair (a query string, a form, a log line): the value goes when the name ends in a
    # secret's word (token, access_token, private_token, client_secret, api_key ...). The name is
    # taken whole and only where a run of name characters starts, so a long run is scanned once.
    re.compile(r"(?<![\w-])([\w-]++)=([^\s&]+)"),
    re.compile(r"\bsluice_[0-9a-f]{8}_\S+"),
)


def redact_url(url: str) -> str:
    """https://user:secret@host/x.git -> https://user:***@host/x.git ;
    https://token@host -> https://***@host ; scp-like and file URLs unchanged."""
    return URL_USERINFO.sub(_redact_userinfo, url)


def _redact_userinfo(match: re.Match[str]) -> str:
    scheme, userinfo = match["scheme"], match["userinfo"]
    user, has_password, _ = userinfo.partition(":")
    if has_password:
        return f"{scheme}://{user}:***@"
    # Over HTTP a lone user part is where tokens usually go; over SSH it is just a login.
    if scheme.lower() in HTTP_SCHEMES:
        return f"{scheme}://***@"
    return match[0]


def redact_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with each of ``secrets`` and any URL credentials replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return redact_url(text)


# Name endings: access_token, client_secret, AWS_SECRET_ACCESS_KEY, private_key, X-Amz-Signature,
# X-Amz-Credential, an Azure SAS's sig. A bare "key" is left alone: messages name ConfigMap keys.
SECRET_NAMES = (
    "token",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "apikey",
    "_key",
    "-key",
    "signature",
    "credential",
    "credentials",
)


def _secret_name(name: str) -> bool:
    lowered = name.lower()
    return lowered.endswith(SECRET_NAMES) or lowered == "sig" or lowered.endswith(("_sig", "-sig"))


def _hide_secret_value(match: re.Match[str]) -> str:
    name = match[1]
    return f"{name}=***" if _secret_name(name) else match[0]


def url_without_query(url: str) -> str:
    """A URL a repository gave (an analysis step's) as pages, the API, events, logs and notifications
    name it: credentials redacted, and the query shown as "?…", since it carries secrets under any
    name (Azure Functions' ``?code=``, ``?key=``, ``?auth=``) that ``redact`` cannot tell from others."""
    base, query, _ = url.partition("?")
    return redact(base.partition("#")[0]) + ("?…" if query else "")


def redact(text: str) -> str:
    """A message with URL credentials, authorization headers, tokens and passwords replaced by ***."""
    text = redact_url(text)
    text = SECRET_PATTERNS[0].sub(r"\1***", text)
    text = SECRET_PATTERNS[1].sub(_hide_secret_value, text)
    return SECRET_PATTERNS[2].sub("sluice_***", text)
