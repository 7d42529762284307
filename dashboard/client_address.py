"""The address a request came from, for login throttling (django-axes' ``AXES_CLIENT_IP_CALLABLE``).

Behind proxies every request comes from the last proxy's address, so a lockout per username and
address would lock a username out for everyone. Each proxy that follows the usual convention appends
the address it was sent from to ``X-Forwarded-For``; with ``SLUICE_TRUSTED_PROXIES`` = N, the N-th
entry from the right is the client as the outermost trusted proxy saw it. Entries further left are
the client's own to write, and are never read.
"""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest


def client_address(request: HttpRequest) -> str | None:
    """``REMOTE_ADDR``, or behind ``SLUICE_TRUSTED_PROXIES`` proxies the address the outermost one was
    sent from. A header with fewer entries than there are proxies, or one that is not an address, is
    not believed: the request then counts as coming from ``REMOTE_ADDR``."""
    remote = request.META.get("REMOTE_ADDR")
    proxies = int(getattr(settings, "SLUICE_TRUSTED_PROXIES", 0))
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if proxies <= 0 or not forwarded:
        return remote
    entries = [entry.strip() for entry in forwarded.split(",")]
    if len(entries) < proxies:
        return remote
    candidate = entries[-proxies]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return remote
