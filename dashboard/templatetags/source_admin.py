from __future__ import annotations

from typing import Any

from django import template

from gitops.redaction import url_without_query

register = template.Library()


@register.simple_tag
def audit_value(values: dict[str, Any] | None, field: str) -> str:
    """One setting as the settings history shows it; autoescaped by the template."""
    value = (values or {}).get(field)
    if field == "url" and isinstance(value, str):
        # Rows written before 2026-12-06 hold a URL's query (a token under any name) as it was.
        value = url_without_query(value)
    if value is None:
        return "—"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "none"
    if value == "":
        return "none"
    return str(value)


AUDIT_WORDS = {
    "create": "registered",
    "suspend": "automatic sync suspended",
    "resume": "automatic sync resumed",
    "delete": "deletion asked for",
    "deleted": "deleted",
    "webhook-secret": "webhook secret",  # with its message: "set" or "rotated"
}


@register.filter
def audit_summary(row: Any) -> str:
    """What an audit row other than an update did, in words."""
    words = AUDIT_WORDS.get(row.action, row.action)
    return f"{words}; {row.message}" if row.message else words
