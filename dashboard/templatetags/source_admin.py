from __future__ import annotations

from typing import Any

from django import template

register = template.Library()


@register.simple_tag
def audit_value(values: dict[str, Any] | None, field: str) -> str:
    """One setting as the settings history shows it; autoescaped by the template."""
    value = (values or {}).get(field)
    if value is None:
        return "—"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "none"
    if value == "":
        return "none"
    return str(value)
