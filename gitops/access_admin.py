"""People's access, as administrators change it: the role a user holds, and the email the self-approval
check trusts as theirs. Each change leaves a row in the access trail (``AccessAudit``): who, through
what, and the values before and after."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone

from gitops.models import VerifiedEmail
from gitops.record.audit import Actor, access_audit_record
from gitops.roles import ROLES
from gitops.vocabulary import AccessAuditAction

if TYPE_CHECKING:
    from django.contrib.auth.models import User


@dataclass(frozen=True)
class RoleGrant:
    """What granting did: the user's Sluice roles before and after (sorted role names)."""

    before: tuple[str, ...]
    after: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return self.before != self.after


def user_roles(user: User) -> tuple[str, ...]:
    return tuple(sorted(user.groups.filter(name__in=ROLES).values_list("name", flat=True)))


def user_role_grant(user: User, role: str, *, actor: Actor) -> RoleGrant:
    """Gives the user this one role and takes Sluice's others away (groups add up, so granting viewer to
    an approver would have left the approver's permissions in place). A grant that changes nothing
    leaves no row; one that does records the roles before and after."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    with transaction.atomic():
        # The user's row locked: two grants at once each record what the other left.
        type(user).objects.select_for_update().filter(pk=user.pk).exists()
        before = user_roles(user)
        user.groups.remove(*Group.objects.filter(name__in=ROLES).exclude(name=role))
        user.groups.add(Group.objects.get(name=role))
        grant = RoleGrant(before=before, after=user_roles(user))
        if grant.changed:
            access_audit_record(
                user.get_username(),
                AccessAuditAction.GRANT,
                actor,
                before={"roles": list(grant.before)},
                after={"roles": list(grant.after)},
            )
    return grant


def user_email_verify(user: User, email: str, *, actor: Actor) -> VerifiedEmail:
    """Records that an administrator confirmed ``email`` is ``user``'s: the only email the self-approval
    check trusts, so replacing it is as much a change of access as a role is, and is recorded."""
    with transaction.atomic():
        verified = VerifiedEmail.objects.select_for_update().filter(user=user).first() or VerifiedEmail(
            user=user
        )
        before = verified.email or None
        verified.email = email.strip().lower()
        verified.verified_by = actor.name[:150]
        verified.verified_at = timezone.now()
        verified.full_clean()
        verified.save()
        access_audit_record(
            user.get_username(),
            AccessAuditAction.VERIFY_EMAIL,
            actor,
            before={"email": before} if before else None,
            after={"email": verified.email},
        )
    return verified
