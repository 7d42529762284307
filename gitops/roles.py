"""Roles are Django groups: viewer (read-only), approver (promote, abort, retry), admin (manage sources)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, Permission

VIEWER, APPROVER, ADMIN = "viewer", "approver", "admin"
ROLES = (VIEWER, APPROVER, ADMIN)

_VIEW = [
    "gitops.view_source",
    "gitops.view_revision",
    "gitops.view_rollout",
    "gitops.view_change",
    "gitops.view_approval",
    "gitops.view_rolloutevent",
    "gitops.view_managedobject",
    "gitops.view_freeze",
    "gitops.view_syncwindow",
]
# Freezes and sync windows: set and lifted by administrators, who alone may promote through them.
_GATES = [
    "gitops.add_freeze",
    "gitops.change_freeze",
    "gitops.override_freeze",
    "gitops.add_syncwindow",
    "gitops.delete_syncwindow",
]
ROLE_PERMISSIONS: dict[str, list[str]] = {
    VIEWER: _VIEW,
    APPROVER: [*_VIEW, "gitops.approve_rollout"],
    ADMIN: [
        *_VIEW,
        "gitops.approve_rollout",
        "gitops.add_source",
        "gitops.change_source",
        "gitops.delete_source",
        *_GATES,
    ],
}


def ensure_roles(**_: Any) -> None:
    """Creates the role groups with exactly their permissions; safe to run again (post_migrate)."""
    for role, names in ROLE_PERMISSIONS.items():
        group, _created = Group.objects.get_or_create(name=role)
        permissions = []
        for name in names:
            app_label, codename = name.split(".")
            permission = Permission.objects.filter(
                content_type__app_label=app_label, codename=codename
            ).first()
            if permission is not None:
                permissions.append(permission)
        group.permissions.set(permissions)


def make_new_users_viewers(sender: Any, instance: Any, created: bool, **_: Any) -> None:
    """Every new account starts as a viewer: read-only until someone grants more."""
    if created:
        group = Group.objects.filter(name=VIEWER).first()
        if group is not None:
            instance.groups.add(group)
