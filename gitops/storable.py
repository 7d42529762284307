"""JSON text that PostgreSQL's jsonb takes, whatever a cluster held. Pure.

jsonb refuses U+0000 in a string ("unsupported Unicode escape sequence"), though
JSON, Kubernetes and the apiserver allow it. Git's content never holds one: validation
refuses it with its file and field. A live object can: anybody who may write to a
cluster can put U+0000 into a managed ConfigMap's value, and a plan, an intent or a
change-log entry records live content (``before``, the diff). A refused write failed
that pass, and every pass after it, so even self-heal could not repair the edit.

Such a character is recorded as U+FFFD, the replacement character, which says that
a character could not be kept. Only records change: what is applied to a cluster
comes from Git, and hashes are computed from the content as it was.
"""

from __future__ import annotations

import json
import re
from types import ModuleType
from typing import Any

_orjson: ModuleType | None
try:
    import orjson as _orjson
except ImportError:  # the offline validator (``sluice-validate``) is installed with PyYAML alone
    _orjson = None

REPLACEMENT_ESCAPE = "\\ufffd"
# How JSON writes U+0000: Python's encoder always escapes control characters. A compiled search
# scans a megabyte in 0.7 to 0.9 ms, against 1.2 to 1.3 ms for ``in`` (the intents' documents).
_NUL_ESCAPE = re.compile(r"\\u0000")
# A whole run of backslashes, then "u0000": the escape when the run is odd (its last backslash starts
# it); an even run is escaped backslashes followed by the text "u0000". The lookbehind starts a match
# only where a run starts and the possessive run never gives back a backslash: without them, a long
# run not followed by "u0000" was tried again from each of its backslashes, quadratic in its length
# (a value of 80,000 backslashes took 115 s; now a million take 18 ms).
_NUL_AFTER_BACKSLASHES = re.compile(r"(?<!\\)(\\++)u0000")


def jsonb_text(text: str) -> str:
    """``text``, JSON, with every U+0000 in its strings written as U+FFFD.

    JSON that holds none, which is all of Git's content, is returned as it is after one scan.
    """
    if _NUL_ESCAPE.search(text) is None:
        return text
    return _NUL_AFTER_BACKSLASHES.sub(_replace_escape, text)


def _replace_escape(match: re.Match[str]) -> str:
    run = match.group(1)
    return run[:-1] + REPLACEMENT_ESCAPE if len(run) % 2 else match.group(0)


def storable_text(text: str) -> str:
    """Plain text for a text column, which cannot hold U+0000 either."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


class JsonbEncoder(json.JSONEncoder):
    """The encoder of JSON fields whose values can come from a cluster."""

    def encode(self, o: Any) -> str:
        return jsonb_text(super().encode(o))


# What orjson would write differently from json or json refuses: left to json, so that either text is
# json's, or the same error is raised. orjson writes a datetime, a date, a time and a dataclass itself.
_JSON_TYPES_ONLY = _orjson.OPT_PASSTHROUGH_DATETIME | _orjson.OPT_PASSTHROUGH_DATACLASS if _orjson else 0
# The one ASCII character json's ``ensure_ascii`` escapes and orjson writes raw: DEL, which the
# apiserver's YAML parser refuses raw in an apply's body.
_DEL = b"\x7f"

# Where the two encoders still differ, for values no manifest or content holds (both are plain dicts,
# lists, strings and booleans built here): orjson writes an Enum by its value and a UUID as its text
# (json refuses both); it reads a dict or list subclass's own storage (json its ``items`` and
# iteration: an OrderedDict reordered by ``move_to_end`` comes out in another order); a float may be
# written in another form (1e-7 for json's 1e-07), and NaN or infinity as null.


def compact_json(value: Any) -> str:
    """``json.dumps(value, separators=(",", ":"))``: compact, ASCII (anything else escaped).

    Through orjson where that writes the same text, in about a tenth of json's CPU for a ConfigMap's
    manifest (a cold apply of 10,000 encodes 10,000 of them). orjson has no ASCII mode: a text with any
    character json escapes (beyond ASCII, or DEL) goes to json, as does a value orjson refuses (an
    integer outside 64 bits, a key that is not a string, a lone surrogate, a datetime or a dataclass).
    For the strings, integers, booleans, None, lists and dicts of a manifest the two texts are the same
    character for character (the differences that remain are listed above).
    """
    if _orjson is None:
        return json.dumps(value, separators=(",", ":"))
    try:
        encoded: bytes = _orjson.dumps(value, option=_JSON_TYPES_ONLY)
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(value, separators=(",", ":"))
    if not encoded.isascii() or _DEL in encoded:
        return json.dumps(value, separators=(",", ":"))
    return encoded.decode("ascii")


def sorted_json_utf8(value: Any) -> bytes:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()``, byte
    for byte: what a content hash is taken of, so that a hash stays what it was when it was stored
    (in the cluster's annotations and the change log).

    Through orjson (its UTF-8 is that text's, DEL and controls alike, its keys sorted in the same
    code-point order) for strings, integers within 64 bits, booleans, None, lists and dicts with
    string keys; what orjson refuses goes to json, which writes it or raises as before, as does
    everything where orjson is not installed (the offline validator needs PyYAML alone). A content
    holds only strings and a boolean (the differences that remain, for other values, are listed above).
    """
    if _orjson is not None:
        try:
            encoded: bytes = _orjson.dumps(value, option=_JSON_TYPES_ONLY | _orjson.OPT_SORT_KEYS)
        except TypeError:  # orjson.JSONEncodeError is one
            pass
        else:
            return encoded
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def json_value(text: bytes | str) -> Any:
    """``json.loads(text)``, through orjson (a third of json's CPU for a watch event) where it reads
    the text: the live cache decodes one event per object a cold apply creates, and a relist
    thousands of objects at once. What orjson refuses (NaN, a number past a double's range, a lone
    surrogate escape, a byte order mark, text that is not UTF-8) goes to json, which reads it or raises
    as before. An integer outside -2**63 to 2**64 - 1, which no ConfigMap or workload holds (their
    integers are int64), orjson reads as a float: not for custom resources, whose large float64 values
    Go may write as long integers.
    """
    if _orjson is not None:
        try:
            return _orjson.loads(text)
        except _orjson.JSONDecodeError:
            pass
    return json.loads(text)
