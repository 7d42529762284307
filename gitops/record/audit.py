"""The audit trail of sources: who changed what an administrator sets, from where, and the values before
and after. Append-only, like the change log; it never holds a secret (credentials are references)."""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gitops.models import AccessAudit, Source, SourceAudit
from gitops.vocabulary import AccessAuditAction, AuditVia, SourceAuditAction

if TYPE_CHECKING:
    from django.contrib.auth.models import User


@dataclass(frozen=True)
class Actor:
    """Who asks for a change to a source, and through what. A dashboard or API caller comes with their
    user, whose permissions the service checks; the command line is trusted like a shell on the server."""

    name: str
    via: AuditVia
    user: User | None = None

    @classmethod
    def of_user(cls, user: User, via: AuditVia) -> Actor:
        return cls(user.get_username(), via, user)

    @classmethod
    def command_line(cls, name: str = "") -> Actor:
        """``--by NAME`` when given, else the operating-system account that ran the command."""
        if name:
            return cls(name, AuditVia.CLI)
        try:
            account = getpass.getuser()
        except (KeyError, OSError):  # no name for this uid (a bare container)
            account = "unknown"
        return cls(f"cli:{account}", AuditVia.CLI)


def changed_fields(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    """The settings whose values differ, in the order settings are listed."""
    keys = list((before or {}).keys()) + [key for key in (after or {}) if key not in (before or {})]
    return [key for key in keys if (before or {}).get(key) != (after or {}).get(key)]


def audit_record(
    source: Source,
    action: SourceAuditAction,
    actor: Actor,
    *,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    message: str = "",
) -> SourceAudit:
    return SourceAudit.objects.create(
        source=source,
        source_name=source.name,
        action=action,
        actor=actor.name[:150],
        via=actor.via,
        before=before,
        after=after,
        changed=changed_fields(before, after),
        message=message,
    )


def access_audit_record(
    username: str,
    action: AccessAuditAction,
    actor: Actor,
    *,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> AccessAudit:
    """A row of the access trail: who changed ``username``'s roles or verified email, from what to what."""
    return AccessAudit.objects.create(
        username=username[:150],
        action=action,
        actor=actor.name[:150],
        via=actor.via,
        before=before,
        after=after,
    )
