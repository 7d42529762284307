"""Key-level differences between two contents, after kopf's diff items. Pure."""

from __future__ import annotations

import base64
import difflib
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

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
        shown_old, shown_new = _readable(old), _readable(new)
        if shown_old == shown_new:  # JSON that differs in its spacing or key order only: the text itself
            shown_old, shown_new = old, new
        old_lines = shown_old.splitlines(keepends=True) if old else []
        new_lines = shown_new.splitlines(keepends=True) if new else []
        names = (f"{self.field}/{self.key} (live)", f"{self.field}/{self.key} (git)")
        lines: Iterable[str]
        if old_lines and new_lines:
            lines = _unified_lines(old_lines, new_lines, *names)
        else:
            lines = _one_sided(old_lines, new_lines, *names)
        # A last line without its newline is marked, as git and diff do: "-y" and "+y" said nothing.
        return "".join(line if line.endswith("\n") else line + NO_NEWLINE for line in lines)


NO_NEWLINE = "\n\\ No newline at end of file\n"


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
    object of a cold apply), without its matcher: one hunk of every line, each marked."""
    if not old_lines and not new_lines:
        return []
    count = len(old_lines) or len(new_lines)
    span = f"1,{count}" if count > 1 else "1"
    hunk = f"@@ -{span} +0,0 @@\n" if old_lines else f"@@ -0,0 +{span} @@\n"
    mark = "-" if old_lines else "+"
    return [f"--- {fromfile}\n", f"+++ {tofile}\n", hunk, *(mark + line for line in old_lines or new_lines)]


# A live value is anybody's text, and the unified text is derived for a drifted object on every pass
# and for a change on every view. The lines both sides begin and end with are set aside first (an
# ordinary change is a few lines in the middle of a file). difflib's matcher then runs on the rest
# only when it is at most this many lines on one side times the other: its cost grows with that
# product and with repeated lines (20,000 blank lines against a file with 100 took 11 s, every other
# line of an 8,000-line file edited over 5 s; at 1,000 by 1,000, the worst shapes tried took
# 0.07 s). A larger middle is shown as all of one side replaced by all of the other: a correct
# diff, found in linear time.
MATCHED_LINES_PRODUCT = 1_000_000
CONTEXT_LINES = 3  # as ``difflib.unified_diff`` and ``diff -u``
Opcode = tuple[Literal["replace", "delete", "insert", "equal"], int, int, int, int]


def _unified_lines(old_lines: list[str], new_lines: list[str], fromfile: str, tofile: str) -> list[str]:
    """``difflib.unified_diff``'s lines, from ``_opcodes``; none when the sides are equal."""
    opcodes = _opcodes(old_lines, new_lines)
    if all(tag == "equal" for tag, *_ in opcodes):
        return []
    lines = [f"--- {fromfile}\n", f"+++ {tofile}\n"]
    for group in _GivenOpcodes(opcodes).get_grouped_opcodes(CONTEXT_LINES):
        first, last = group[0], group[-1]
        lines.append(f"@@ -{_range(first[1], last[2])} +{_range(first[3], last[4])} @@\n")
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                lines.extend(" " + line for line in old_lines[i1:i2])
                continue
            lines.extend("-" + line for line in old_lines[i1:i2])
            lines.extend("+" + line for line in new_lines[j1:j2])
    return lines


def _opcodes(old: list[str], new: list[str]) -> list[Opcode]:
    """How ``new`` differs from ``old``, as ``SequenceMatcher.get_opcodes`` says it, within bounds."""
    prefix = 0
    while prefix < min(len(old), len(new)) and old[prefix] == new[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(len(old), len(new)) - prefix and old[-1 - suffix] == new[-1 - suffix]:
        suffix += 1
    old_end, new_end = len(old) - suffix, len(new) - suffix
    middle_old, middle_new = old[prefix:old_end], new[prefix:new_end]
    codes: list[Opcode] = [("equal", 0, prefix, 0, prefix)] if prefix else []
    if middle_old and middle_new and len(middle_old) * len(middle_new) <= MATCHED_LINES_PRODUCT:
        matched = difflib.SequenceMatcher(None, middle_old, middle_new).get_opcodes()
        codes += [
            (tag, i1 + prefix, i2 + prefix, j1 + prefix, j2 + prefix) for tag, i1, i2, j1, j2 in matched
        ]
    elif middle_old or middle_new:
        tag: Literal["replace", "delete", "insert"] = (
            "replace" if middle_old and middle_new else "delete" if middle_old else "insert"
        )
        codes.append((tag, prefix, old_end, prefix, new_end))
    if suffix:
        codes.append(("equal", old_end, len(old), new_end, len(new)))
    return codes


class _GivenOpcodes(difflib.SequenceMatcher[str]):
    """A matcher that reports the opcodes it is given: difflib groups them into hunks with context."""

    def __init__(self, opcodes: list[Opcode]) -> None:
        super().__init__(None, [], [])
        self._given = opcodes

    def get_opcodes(self) -> list[Opcode]:
        return list(self._given)


def _range(start: int, stop: int) -> str:
    """A hunk's range as unified diffs write it (``difflib._format_range_unified``)."""
    beginning, length = start + 1, stop - start
    if length == 1:
        return str(beginning)
    return f"{beginning - 1 if not length else beginning},{length}"


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
