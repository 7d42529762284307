"""The address a request came from, for login throttling (django-axes' ``AXES_CLIENT_IP_CALLABLE``).

Behind proxies every request comes from the last proxy's address, so a lockout per username and
address would lock a username out for everyone. Each proxy that follows the usual convention appends
the address it was sent from to ``X-Forwarded-For``; with ``SLUICE_TRUSTED_PROXIES`` = N (the entries
the proxies in front add: an Ingress 1, Google's load balancers 2), the N-th entry from the right is
the client as the outermost trusted proxy saw it. Entries further left are the client's own to write,
and are never read. With ``SLUICE_TRUSTED_PROXY_NETWORKS`` the header is believed only from a
connection out of those networks: a client that reaches the web around the proxies cannot name an
address of its choosing.

An IPv6 client is counted by its /64, the smallest network a provider hands one subscriber: a single
host can pick any of its 2^64 addresses, and counting each alone would give it a fresh set of tries
per address. An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``, a dual-stack socket's way of naming
an IPv4 client) counts as the IPv4 address it carries.
"""

from __future__ import annotations

import ipaddress
import logging
import re

from django.conf import settings
from django.http import HttpRequest

log = logging.getLogger(__name__)

# "198.51.100.7:5678" and "[2001:db8::1]:443": some proxies write the client's port too.
_WITH_PORT = re.compile(r"^\[(?P<bracketed>[^\]]+)\](?::\d+)?$|^(?P<v4>[0-9.]+):\d+$")


def client_address(request: HttpRequest) -> str | None:
    """``REMOTE_ADDR``, or behind ``SLUICE_TRUSTED_PROXIES`` proxies the address the outermost one was
    sent from. A header with fewer entries than that, one that is not an address, or one that came
    from outside ``SLUICE_TRUSTED_PROXY_NETWORKS`` (when set) is not believed: the request then counts
    as coming from ``REMOTE_ADDR``."""
    connected = request.META.get("REMOTE_ADDR")
    remote = _counted(connected)
    proxies = int(getattr(settings, "SLUICE_TRUSTED_PROXIES", 0))
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if proxies <= 0 or not forwarded or not _from_a_trusted_proxy(connected):
        return remote
    entries = [entry.strip() for entry in forwarded.split(",")]
    if len(entries) < proxies:
        return remote
    address = _address(entries[-proxies])
    if address is None:
        log.warning(
            "X-Forwarded-For entry %r is not an address: login throttling counts the proxy's",
            entries[-proxies][:64],
        )
        return remote
    return address


def _address(entry: str) -> str | None:
    """The address an X-Forwarded-For entry names, a port or brackets around it dropped, as counted."""
    if (matched := _WITH_PORT.match(entry)) is not None:
        entry = matched.group("bracketed") or matched.group("v4")
    try:
        return _as_counted(ipaddress.ip_address(entry))
    except ValueError:
        return None


def _counted(remote: str | None) -> str | None:
    """The connection's address as throttling counts it; left as it is when it is not an address."""
    try:
        return _as_counted(ipaddress.ip_address(remote or ""))
    except ValueError:
        return remote


def _as_counted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An IPv4 address itself; an IPv6 one as its /64's first address (a valid address, as the
    lockout table's column needs), or the IPv4 address it maps."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False).network_address)
    return str(address)


def _from_a_trusted_proxy(remote: str | None) -> bool:
    networks = getattr(settings, "SLUICE_TRUSTED_PROXY_NETWORKS", [])
    if not networks:
        return True
    try:
        connected = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    if isinstance(connected, ipaddress.IPv6Address) and connected.ipv4_mapped is not None:
        connected = connected.ipv4_mapped  # a dual-stack socket's name for an IPv4 proxy
    return any(connected in ipaddress.ip_network(network, strict=False) for network in networks)
