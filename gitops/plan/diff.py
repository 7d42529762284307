"""Key-level differences between two contents, after kopf's diff items. Pure."""

from __future__ import annotations

import base64
import difflib
import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gitops.desired.content import Content


class DiffOp(StrEnum):
    ADD = "add"
    REMOVE = "remove"
    CHANGE = "change"


@dataclass(frozen=True, slots=True)
class DiffItem:
    """One key-level difference, after kopf's diff items."""

    op: DiffOp
    field: str  # "data", "binaryData", "labels", "annotations" or "immutable"
    key: str
    old: Any = None
    new: Any = None

    def as_dict(self, *, stored: bool = False) -> dict[str, Any]:
        """``stored=True`` is what the change log keeps: a key added or removed goes without its
        unified text, which ``readable_diff`` derives again when shown. That text is the whole value
        once more, for every object of a cold apply; cheap to derive (no matcher), unlike a change's."""
        result: dict[str, Any] = {"op": self.op, "field": self.field, "key": self.key}
        if self.field == "binaryData":
            result["old"] = summarize_binary(self.old)
            result["new"] = summarize_binary(self.new)
        else:
            result["old"] = self.old
            result["new"] = self.new
            text = None if stored and self.op is not DiffOp.CHANGE else self.unified()
            if text:
                result["unified"] = text
        return result

    def unified(self) -> str | None:
        """A unified text diff when either side spans lines; JSON is pretty-printed first."""
        if not isinstance(self.old, str | None) or not isinstance(self.new, str | None):
            return None
        old, new = self.old or "", self.new or ""
        if "\n" not in old.rstrip("\n") and "\n" not in new.rstrip("\n"):
            return None
        old_lines = _readable(old).splitlines(keepends=True) if old else []
        new_lines = _readable(new).splitlines(keepends=True) if new else []
        names = (f"{self.field}/{self.key} (live)", f"{self.field}/{self.key} (git)")
        lines: Iterable[str]
        if old_lines and new_lines and _matchable(old_lines, new_lines):
            lines = difflib.unified_diff(old_lines, new_lines, fromfile=names[0], tofile=names[1])
        else:
            lines = _one_sided(old_lines, new_lines, *names)
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def readable_diff(entries: Any) -> Any:
    """A stored key-level diff (``as_dict(stored=True)``'s entries) with each entry's unified text,
    as ``as_dict()`` gives it. Entries that have one (logged before it was left out), binary ones and
    anything not shaped like an entry are given back as they are."""
    if not isinstance(entries, list):
        return entries
    readable: list[Any] = []
    for entry in entries:
        if not isinstance(entry, dict) or "unified" in entry or entry.get("field") == "binaryData":
            readable.append(entry)
            continue
        try:
            op = DiffOp(str(entry.get("op")))
        except ValueError:
            readable.append(entry)
            continue
        text = DiffItem(
            op, str(entry.get("field")), str(entry.get("key")), entry.get("old"), entry.get("new")
        ).unified()
        readable.append({**entry, "unified": text} if text else entry)
    return readable


def _one_sided(old_lines: list[str], new_lines: list[str], fromfile: str, tofile: str) -> list[str]:
    """What ``difflib.unified_diff`` gives when one side is empty (a key added or removed: every
    object of a cold apply), without its matcher: one hunk of every line, each marked. With both
    sides, the same without matching: every old line removed, every new one added."""
    if not old_lines and not new_lines:
        return []
    hunk = f"@@ -{_span(len(old_lines))} +{_span(len(new_lines))} @@\n"
    return [
        f"--- {fromfile}\n",
        f"+++ {tofile}\n",
        hunk,
        *("-" + line for line in old_lines),
        *("+" + line for line in new_lines),
    ]


def _span(count: int) -> str:
    return "0,0" if not count else f"1,{count}" if count > 1 else "1"


# A live value is anybody's text, and the unified text is derived for a drifted object on every pass
# and for a change on every view. difflib's matcher costs about the number of pairs of equal lines
# across the two sides: 20,000 blank lines against a file with 100 of its 199 blank took 11 s. Past
# 50,000 pairs and four a line on average, the text says "all of it replaced" instead, which is
# linear: an ordinary change of a file has about one pair a line (60,000 lines: 0.06 s), and the
# worst at the bound measured 0.09 s (100,000 blank lines against 154 with 4).
MATCHED_LINE_PAIRS = 50_000
MATCHED_PAIRS_PER_LINE = 4


def _matchable(old_lines: list[str], new_lines: list[str]) -> bool:
    """Whether difflib may match the two sides: few pairs of equal lines across them."""
    counts = Counter(new_lines)
    pairs = sum(counts.get(line, 0) for line in old_lines)
    return pairs <= max(MATCHED_LINE_PAIRS, MATCHED_PAIRS_PER_LINE * (len(old_lines) + len(new_lines)))


# JSON is pretty-printed for its diff only up to this size and nesting: indentation grows with depth,
# and 80 KB of JSON nested 500 deep became 32 MB. Sluice's own flag documents are printed so already.
READABLE_JSON_CHARS = 256 * 1024
READABLE_JSON_DEPTH = 32


def _readable(text: str) -> str:
    stripped = text.lstrip()
    if not stripped.startswith(("{", "[")) or len(text) > READABLE_JSON_CHARS:
        return text
    try:
        value = json.loads(text)
        if not _nested_within(value, READABLE_JSON_DEPTH):
            return text
        # A lone surrogate escape ("\ud800") decodes into text that cannot be encoded: keep the escape.
        return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode().decode()
    except (ValueError, RecursionError):  # a live value can be anything: "[" 100,000 times
        return text


def _nested_within(value: Any, depth: int) -> bool:
    """Whether no list or mapping in ``value`` is nested more than ``depth`` deep (iteratively)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        current, level = pending.pop()
        children = (
            current.values() if isinstance(current, dict) else current if isinstance(current, list) else ()
        )
        for child in children:
            if isinstance(child, dict | list):
                if level >= depth:
                    return False
                pending.append((child, level + 1))
    return True


def summarize_binary(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        raw = base64.b64decode(value)
    except ValueError:
        return "<invalid base64>"
    return f"<{len(raw)} bytes, sha256:{hashlib.sha256(raw).hexdigest()[:12]}>"


def diff_content(old: Content | None, new: Content | None) -> list[DiffItem]:
    old = old or Content()
    new = new or Content()
    items: list[DiffItem] = []
    for field_name, before, after in (
        ("data", old.data, new.data),
        ("binaryData", old.binary_data, new.binary_data),
        ("labels", old.labels, new.labels),
        ("annotations", old.annotations, new.annotations),
    ):
        for key in sorted(before.keys() | after.keys()):
            if key not in before:
                items.append(DiffItem(DiffOp.ADD, field_name, key, None, after[key]))
            elif key not in after:
                items.append(DiffItem(DiffOp.REMOVE, field_name, key, before[key], None))
            elif before[key] != after[key]:
                items.append(DiffItem(DiffOp.CHANGE, field_name, key, before[key], after[key]))
    if bool(old.immutable) != bool(new.immutable):
        items.append(DiffItem(DiffOp.CHANGE, "immutable", "immutable", old.immutable, new.immutable))
    return items
