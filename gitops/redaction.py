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
    # An Authorization header under any scheme (GitHub's "token", Bearer, Basic), as a header line, a
    # quoted key of a dict or JSON, or a name=value; the scheme word stays, its credential goes.
    # Proxy-Authorization and X-Authorization too (a "-" may come before the name). Any scheme word
    # stays (SSWS, Bot, OAuth, AWS, SharedKey...), and what follows it goes.
    re.compile(r"(?i)(?<!\w)(authorization[\"']?\s*[:=]\s*[\"']?(?:[a-z][\w-]*+\s+)?)[^\s\"',;}]+"),
    # A name=value pair (a query string, a form, a log line): the value goes when the name ends in a
    # secret's word (token, access_token, private_token, client_secret, api_key ...). The name is
    # taken whole and only where a run of name characters starts, so a long run is scanned once.
    re.compile(r"(?<![\w-])([\w-]++)=([^\s&]+)"),
    re.compile(r"\bsluice_[0-9a-f]{8}_\S+"),
    # A bearer token on its own ("... Bearer eyJ..."), long enough not to be a word of prose.
    # A token has a digit or a symbol, or is long: "bearer authentication failed" is prose.
    re.compile(r"(?i)(?<![\w-])(bearer\s+)(?:(?=[\w~+/=-]*[\d~+/=_.-])[\w.~+/=-]{8,}|[\w.~+/=-]{20,})"),
    # A quoted key and its quoted value (a dict's or JSON's): the value goes when the key names a secret.
    # The value runs to its own closing quote, over the other quote and escaped ones (Python's repr of a
    # string holding an apostrophe is double-quoted).
    re.compile(r"([\"'])([\w-]{1,100})\1(\s*:\s*)([\"'])((?:(?!\4)[^\n\\]|\\.)*)\4"),
    # A header line or a YAML field whose name is a secret's: "PRIVATE-TOKEN: ...", "X-Api-Key: ...", a
    # kubeconfig's "token:" or "client-key-data:". Only where the name starts a line, or follows
    # whitespace, and only a value of 8 characters or more: "data.DB_PASSWORD: must be a string" stays.
    # A value quoted or not; one with a digit or a symbol, or long: "private_key: Required value" is prose.
    re.compile(
        r"(?im)(?:^|(?<=\s))([\w-]{1,100})(:[ \t]*[\"']?)"
        r"((?=[^\s\"'}]*[\d+/=_.,;-])[^\s\"'}]{8,}|[^\s\"'}]{16,})"
    ),
    # name%3Dvalue: a form body encoded once more.
    re.compile(r"(?<![\w-])([\w-]++)%3[dD]((?:(?!%26)[^\s&])+)"),
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
    # Over HTTP a lone user part is where tokens usually go (git+https too); over SSH it is just a login.
    if scheme.lower().rpartition("+")[2] in HTTP_SCHEMES:
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


# Words every secret name holds one of (SECRET_NAMES, "sig" and "-key-data" included): a text without any
# has no name's value to hide.
_SECRET_WORDS = ("token", "secret", "passw", "passphrase", "apikey", "key", "signature", "credential", "sig")


def _secret_name(name: str) -> bool:
    lowered = name.lower()
    return lowered.endswith(SECRET_NAMES) or lowered == "sig" or lowered.endswith(("_sig", "-sig"))


def _hide_secret_value(match: re.Match[str]) -> str:
    name = match[1]
    return f"{name}=***" if _secret_name(name) else match[0]


def _hide_quoted_value(match: re.Match[str]) -> str:
    quote, name, colon, value_quote = match[1], match[2], match[3], match[4]
    return f"{quote}{name}{quote}{colon}{value_quote}***{value_quote}" if _secret_name(name) else match[0]


def _hide_field_value(match: re.Match[str]) -> str:
    name = match[1]
    secret = _secret_name(name) or name.lower().endswith("-key-data")
    return f"{name}{match[2]}***" if secret else match[0]


def _hide_encoded_value(match: re.Match[str]) -> str:
    name = match[1]
    return f"{name}%3D***" if _secret_name(name) else match[0]


def url_without_query(url: str) -> str:
    """A URL a repository gave (an analysis step's) as pages, the API, events, logs and notifications
    name it: credentials redacted, and the query shown as "?…", since it carries secrets under any
    name (Azure Functions' ``?code=``, ``?key=``, ``?auth=``) that ``redact`` cannot tell from others."""
    base, query, _ = url.partition("?")
    return redact(base.partition("#")[0]) + ("?…" if query else "")


def redact(text: str) -> str:
    """A message with URL credentials, authorization headers, tokens and passwords replaced by ***."""
    text = redact_url(text)
    # Each pattern runs only where its words are in the text: logs and pages redact every message, and
    # most name no secret at all (a third of the cost of running them all).
    lowered = text.lower()
    if "authorization" in lowered:
        text = SECRET_PATTERNS[0].sub(r"\1***", text)
    if "sluice_" in text:
        text = SECRET_PATTERNS[2].sub("sluice_***", text)
    if "bearer" in lowered:
        text = SECRET_PATTERNS[3].sub(r"\1***", text)
    if not any(word in lowered for word in _SECRET_WORDS):
        return text
    if "=" in text:
        text = SECRET_PATTERNS[1].sub(_hide_secret_value, text)
    if ":" in text:
        text = SECRET_PATTERNS[4].sub(_hide_quoted_value, text)
        text = SECRET_PATTERNS[5].sub(_hide_field_value, text)
    if "%3" in text:
        text = SECRET_PATTERNS[6].sub(_hide_encoded_value, text)
    return text
