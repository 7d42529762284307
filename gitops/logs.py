"""Log lines that say which source, commit and rollout they are about, in JSON or text, without secrets.

The reconcile sets the context once (contextvars); a filter copies it onto
every record, so lines from any module (sources, apply, rollouts) carry it.
"""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from gitops.redaction import redact

CONTEXT_FIELDS = ("source", "commit", "rollout")
_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("sluice_log_context", default={})  # noqa: B039 - never mutated; always replaced


@contextmanager
def log_context(**values: Any) -> Iterator[None]:
    """Adds fields to every log line written inside the block (and its callees)."""
    merged = {**_context.get(), **{k: str(v) for k, v in values.items() if v not in (None, "")}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def add_context(**values: Any) -> None:
    """Adds fields for the rest of the current context (e.g. the commit, once fetched)."""
    _context.set({**_context.get(), **{k: str(v) for k, v in values.items() if v not in (None, "")}})


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get()
        for name in CONTEXT_FIELDS:
            setattr(record, name, context.get(name, "-"))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, "-")
            if value != "-":
                entry[name] = value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Readable lines for development, with the same context and redaction."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(context)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = [
            f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS if getattr(record, name, "-") != "-"
        ]
        record.context = f" [{' '.join(fields)}]" if fields else ""
        return redact(super().format(record))
