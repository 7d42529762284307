"""``python manage.py api-token``: tokens for the JSON API.

api-token create USERNAME --name NAME [--expires-in 90d]   prints the token, once
api-token list [--user USERNAME]                            never prints tokens
api-token revoke PREFIX
"""

from __future__ import annotations

import re
from argparse import ArgumentParser, ArgumentTypeError
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from dashboard.models import TOKEN_PREFIX, ApiToken

DURATION = re.compile(r"^(\d+)([mhd])$")
UNITS = {"m": 60, "h": 3600, "d": 86400}


# A token that never expires is one made without --expires-in; past this, a date is out of range.
LONGEST = timedelta(days=100 * 365)


def duration(text: str) -> timedelta:
    match = DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ArgumentTypeError(f"{text!r} is not a duration like 30m, 12h or 90d")
    seconds = int(match.group(1)) * UNITS[match.group(2)]
    if seconds > LONGEST.total_seconds():
        raise ArgumentTypeError(f"{text!r} is longer than 100 years: leave --expires-in out instead")
    return timedelta(seconds=seconds)


class Command(BaseCommand):
    help = "Create, list and revoke API tokens. A token acts as its user, with that user's role."

    def add_arguments(self, parser: ArgumentParser) -> None:
        commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

        create = commands.add_parser("create", help="create a token and print it once")
        create.add_argument("username")
        create.add_argument("--name", required=True, help="what the token is for, e.g. ci-deploy")
        create.add_argument("--expires-in", type=duration, default=None, help="e.g. 30m, 12h, 90d")

        listing = commands.add_parser("list", help="list tokens (never the tokens themselves)")
        listing.add_argument("--user", default=None)

        revoke = commands.add_parser("revoke", help="revoke a token by its prefix")
        revoke.add_argument("prefix", help=f"the 8 characters after '{TOKEN_PREFIX}_'")

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, "handle_" + options["command"])(options)

    def handle_create(self, options: dict[str, Any]) -> None:
        model = get_user_model()
        try:
            user = model.objects.get(**{model.USERNAME_FIELD: options["username"]})
        except model.DoesNotExist as exc:
            raise CommandError(f"no user named {options['username']!r}") from exc
        name = options["name"].strip()
        if not name or len(name) > 100:
            raise CommandError("--name must be 1 to 100 characters")
        expires_in: timedelta | None = options["expires_in"]
        expires_at = timezone.now() + expires_in if expires_in else None
        row, token = ApiToken.objects.issue(user, name=name, expires_at=expires_at)
        self.stderr.write(
            f"created token {row.prefix} ({name}) for {user.get_username()}"
            + (f", expires {expires_at.isoformat()}" if expires_at else "")
            + ". It is shown only now; store it safely."
        )
        # The token alone on stdout, so scripts can capture it.
        self.stdout.write(token)

    def handle_list(self, options: dict[str, Any]) -> None:
        tokens = ApiToken.objects.select_related("user").order_by("created_at", "id")
        if options["user"]:
            tokens = tokens.filter(**{"user__" + get_user_model().USERNAME_FIELD: options["user"]})
        now = timezone.now()
        for row in tokens:
            self.stdout.write(
                "\t".join(
                    [
                        row.prefix,
                        row.user.get_username(),
                        row.name,
                        row.state(now),
                        f"created {row.created_at.isoformat()}",
                        f"last used {row.last_used_at.isoformat() if row.last_used_at else 'never'}",
                        f"expires {row.expires_at.isoformat() if row.expires_at else 'never'}",
                    ]
                )
            )

    def handle_revoke(self, options: dict[str, Any]) -> None:
        prefix = options["prefix"].strip()
        prefix = prefix.removeprefix(TOKEN_PREFIX + "_").split("_")[0]
        revoked = ApiToken.objects.filter(prefix=prefix, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if not revoked:
            if ApiToken.objects.filter(prefix=prefix).exists():
                raise CommandError(f"token {prefix} is already revoked")
            raise CommandError(f"no token with prefix {prefix!r}")
        self.stdout.write(f"revoked token {prefix}")
