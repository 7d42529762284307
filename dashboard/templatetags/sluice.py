from __future__ import annotations

from functools import cache
from typing import Any

from django import template
from django.urls import reverse
from django.utils.html import format_html

from gitops import selectors
from gitops.redaction import redact

register = template.Library()
NAME_SLOT = "name-slot"


@cache
def _source_url_pattern() -> str:
    return reverse("dashboard:source", args=[NAME_SLOT])


@register.filter
def redacted(text: object) -> str:
    """Messages as the API shows them: URL credentials, tokens and passwords as ***. Errors quote
    what they were given (a Git URL, an analysis URL from a repository), and pages are read by all."""
    return redact(str(text)) if text else ""


@register.filter
def source_url(name: str) -> str:
    """The source page's address: ``{% url %}`` resolves the whole URLconf each time, a cost per table row."""
    return _source_url_pattern().replace(NAME_SLOT, str(name), 1)


@register.simple_tag
def commit_link(source: Any, commit: str) -> str:
    """The short hash, linked to the Git host's page when the source has a URL template."""
    short = commit[:12]
    template_url = getattr(source, "commit_url_template", "")
    if template_url and "{commit}" in template_url:
        return format_html(
            '<a class="commit" href="{}" title="{}">{}</a>',
            template_url.replace("{commit}", commit),
            commit,
            short,
        )
    return format_html('<code class="commit" title="{}">{}</code>', commit, short)


@register.filter
def step_label(step: dict[str, Any]) -> str:
    if "setWeight" in step:
        return f"setWeight {step['setWeight']}"
    if "pause" in step:
        duration = step["pause"].get("duration")
        return f"pause {duration}s" if duration is not None else "pause until promoted"
    return "analysis"


@register.filter
def first_line(text: str) -> str:
    return (text or "").splitlines()[0] if text else ""


@register.filter
def seconds_label(seconds: int) -> str:
    """A duration as sluice.yaml writes it: 300 -> "5m", 90 -> "90s", 3600 -> "1h"."""
    value = int(seconds or 0)
    for unit, size in (("h", 3600), ("m", 60)):
        if value and value % size == 0:
            return f"{value // size}{unit}"
    return f"{value}s"


BANNER_FREEZES = 5


@register.inclusion_tag("dashboard/_freeze_banner.html")
def freeze_banner() -> dict[str, Any]:
    """The freezes in force, on every page (the first few; the Freezes page lists them all): one query."""
    shown = selectors.freezes_in_force(limit=BANNER_FREEZES + 1)
    return {"freezes": shown[:BANNER_FREEZES], "more": len(shown) > BANNER_FREEZES}
