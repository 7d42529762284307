"""Key-level differences between two contents, after kopf's diff items. Pure."""

from __future__ import annotations

import base64
import difflib
import hashlib
import json
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
        if old_lines and new_lines:
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
    object of a cold apply), without its matcher: one hunk of every line, each marked."""
    if not old_lines and not new_lines:
        return []
    count = len(old_lines) or len(new_lines)
    span = f"1,{count}" if count > 1 else "1"
    hunk = f"@@ -{span} +0,0 @@\n" if old_lines else f"@@ -0,0 +{span} @@\n"
    mark = "-" if old_lines else "+"
    return [f"--- {fromfile}\n", f"+++ {tofile}\n", hunk, *(mark + line for line in old_lines or new_lines)]


def _readable(text: str) -> str:
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            return json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        except (ValueError, RecursionError):  # a live value can be anything: "[" 100,000 times
            return text
    return text


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
