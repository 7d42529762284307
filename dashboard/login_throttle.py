"""Login throttling beyond one username at one address (django-axes' ``AXES_HANDLER``).

django-axes locks a username at an address after ``AXES_FAILURE_LIMIT`` failures. Alone, that leaves
two guessing patterns unbounded: one address trying a few passwords against every username (password
spraying), and many addresses trying one username (an administrator's account, guessed from a botnet
or from an IPv6 /48's 65,536 /64s). So an address is also locked after
``SLUICE_LOGIN_ADDRESS_FAILURE_LIMIT`` failures for any usernames, and a username after
``SLUICE_LOGIN_USERNAME_FAILURE_LIMIT`` failures from any addresses, within the same cool-off (0 turns
either off).

Both are counted from the failures django-axes keeps per username and address, not as lockout
parameters of its own: a successful login resets only that username's failures at that address
(``AXES_RESET_ON_SUCCESS``). As parameters, one attacker's login to an account of their own would have
wiped every failure their address had counted against other accounts.
"""

from __future__ import annotations

from typing import Any

from axes.attempts import get_cool_off_threshold
from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_client_username, get_failure_limit
from axes.models import AccessAttempt
from django.conf import settings
from django.db.models import QuerySet, Sum
from django.http import HttpRequest


class LoginThrottle(AxesDatabaseHandler):  # type: ignore[misc]
    """django-axes' database handler, whose failure count is the highest of three, each scaled to
    ``AXES_FAILURE_LIMIT``: the username at the address (django-axes' own), the address for any
    username, the username from any address. Scaled down (floor), so each locks at its own limit."""

    def get_failures(self, request: HttpRequest, credentials: dict[str, Any] | None = None) -> int:
        counted = [int(super().get_failures(request, credentials))]
        limit = int(get_failure_limit(request, credentials))
        recent = AccessAttempt.objects.filter(attempt_time__gte=get_cool_off_threshold(request))
        address = getattr(request, "axes_ip_address", None)
        address_limit = int(settings.SLUICE_LOGIN_ADDRESS_FAILURE_LIMIT)
        if address and address_limit:
            counted.append(_failures(recent.filter(ip_address=address)) * limit // address_limit)
        username = get_client_username(request, credentials)
        username_limit = int(settings.SLUICE_LOGIN_USERNAME_FAILURE_LIMIT)
        if username and username_limit:
            counted.append(_failures(recent.filter(username=username)) * limit // username_limit)
        return max(counted)


def _failures(attempts: QuerySet[AccessAttempt]) -> int:
    return int(attempts.aggregate(total=Sum("failures_since_start"))["total"] or 0)
