"""Freezes and sync windows as administrators set them: freeze, unfreeze, add and remove windows.

What a gate means is decided in one pure place, ``gitops.windows.change_gate``;
``gitops.selectors.rules_now`` loads what it needs. This module records who
changed what, and wakes the sources a lifted freeze or a removed window lets
go. The CLI, the dashboard and the API call these; each checks the caller's
permission when given a user.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from gitops import schedule
from gitops.errors import PermanentError
from gitops.models import Freeze, Source, SyncWindow
from gitops.vocabulary import SYSTEM_ACTOR
from gitops.windows import WindowError, parse_duration, window_rule

MANAGE_FREEZES = "gitops.add_freeze"
MANAGE_WINDOWS = "gitops.add_syncwindow"
OVERRIDE = "gitops.override_freeze"
MAX_FREEZE = timedelta(days=366)
MAX_REASON = 2000
CLI_ACTOR = "cli"


class FreezeError(PermanentError):
    """A freeze or window that cannot be set as asked; names the field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


# -- freezes --------------------------------------------------------------------------------------


def _actor(user: User | None, by: str, permission: str, what: str) -> str:
    """Who acts: a user (refused without ``permission``), or the CLI's ``by`` (it runs on the server)."""
    if user is None:
        return (by or CLI_ACTOR)[:150]
    if not user.is_active or not user.has_perm(permission):
        raise PermissionDenied(f"{user.get_username()} may not {what}")
    return user.get_username()


def freeze_set(
    source: Source | None, *, until: datetime, reason: str, user: User | None = None, by: str = ""
) -> Freeze:
    """Freezes one source (or every source, ``source`` None) until ``until``, for ``reason``."""
    actor = _actor(user, by, MANAGE_FREEZES, "freeze sources")
    now = timezone.now()
    reason = reason.strip()
    if timezone.is_naive(until):
        raise FreezeError("until", "give a time zone (e.g. 2026-12-24T18:00Z)")
    try:
        # PostgreSQL keeps offsets up to 15:59; Python's reach 23:59, and one past PostgreSQL's was a 500.
        until = until.astimezone(UTC)
    except OverflowError:
        raise FreezeError("until", "out of the range of dates") from None
    if until <= now:
        raise FreezeError("until", "must lie in the future")
    if until - now > MAX_FREEZE:
        raise FreezeError("until", "at most a year ahead")
    if not reason or len(reason) > MAX_REASON or "\x00" in reason:
        raise FreezeError("reason", f"say why, in at most {MAX_REASON} characters")
    return Freeze.objects.create(source=source, until=until, reason=reason, created_by=actor)


def freeze_lift(
    source: Source | None, *, user: User | None = None, by: str = "", freeze_id: int | None = None
) -> list[Freeze]:
    """Lifts the freezes of ``source`` (None: every freeze), or only the one ``freeze_id`` names (a row of
    the freezes page: its every-source row lifted the single sources' freezes too), and wakes the sources
    they held."""
    actor = _actor(user, by, MANAGE_FREEZES, "unfreeze sources")
    now = timezone.now()
    in_force = Freeze.objects.filter(lifted_at__isnull=True, until__gt=now)
    if freeze_id is not None:
        in_force = in_force.filter(pk=freeze_id)
    elif source is not None:
        in_force = in_force.filter(source=source)
    with transaction.atomic():
        lifted = list(in_force.select_for_update(of=("self",)).select_related("source"))
        Freeze.objects.filter(pk__in=[f.pk for f in lifted]).update(lifted_by=actor, lifted_at=now)
        for freeze in lifted:
            freeze.lifted_by, freeze.lifted_at = actor, now
        _wake(lifted)
    return lifted


def every_source_frozen() -> Freeze | None:
    """The freeze of every source in force now, if any (the one that lasts longest)."""
    return (
        Freeze.objects.filter(source__isnull=True, lifted_at__isnull=True, until__gt=timezone.now())
        .order_by("-until")
        .first()
    )


def _wake(lifted: Sequence[Freeze]) -> None:
    """Queues a sync of each source a lifted freeze held, so a waiting commit or pause goes on now."""
    if not lifted:
        return
    if any(freeze.source_id is None for freeze in lifted):
        woken: Iterable[int] = Source.objects.values_list("pk", flat=True)
    else:
        woken = {freeze.source_id for freeze in lifted if freeze.source_id is not None}
    for source_id in woken:
        schedule.source_sync_once(source_id, actor=SYSTEM_ACTOR)


def parse_until(text: str, *, now: datetime | None = None) -> datetime:
    """``8h``/``3d`` from now, an ISO time with a zone (``2026-12-24T18:00Z``), or a date (midnight UTC)."""
    now = now or timezone.now()
    text = text.strip()
    if text and text[-1] in "smhd" and text[0].isdigit():
        try:
            return now + parse_duration(text, field_name="until")
        except WindowError as exc:
            raise FreezeError("until", exc.message) from exc
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise FreezeError(
            "until", f"{text[:50]!r} is not a time like 2026-12-24T18:00Z, a date, or 8h / 3d from now"
        ) from exc
    if timezone.is_naive(moment):
        if len(text) > 10:
            raise FreezeError("until", "give a time zone (e.g. 2026-12-24T18:00Z)")
        moment = moment.replace(tzinfo=UTC)
    return moment


# -- sync windows ----------------------------------------------------------------------------------


def window_add(
    *,
    kind: str,
    schedule_text: str,
    duration: timedelta,
    sources: Sequence[str],
    manual_sync: bool = False,
    time_zone: str = "UTC",
    user: User | None = None,
    by: str = "",
) -> SyncWindow:
    actor = _actor(user, by, MANAGE_WINDOWS, "manage sync windows")
    try:
        rule = window_rule(
            kind=kind,
            schedule=schedule_text,
            duration=duration,
            sources=sources,
            manual_sync=manual_sync,
            time_zone=time_zone,
        )
    except WindowError as exc:
        raise FreezeError(exc.field, exc.message) from exc
    return SyncWindow.objects.create(
        kind=rule.kind,
        schedule=rule.schedule,
        duration=rule.duration,
        time_zone=rule.time_zone,
        sources=list(rule.sources),
        manual_sync=rule.manual_sync,
        created_by=actor,
    )


def window_remove(window_id: int, *, user: User | None = None, by: str = "") -> SyncWindow:
    """Removes a window (its row stays, marked removed, for the audit trail); wakes what it held."""
    actor = _actor(user, by, "gitops.delete_syncwindow", "manage sync windows")
    with transaction.atomic():
        window = SyncWindow.objects.select_for_update().filter(pk=window_id, removed_at__isnull=True).first()
        if window is None:
            raise FreezeError("id", f"no sync window {window_id}")
        window.removed_by, window.removed_at = actor, timezone.now()
        window.save(update_fields=["removed_by", "removed_at"])
        rule = window.as_rule()
        for source_id, name in Source.objects.values_list("pk", "name"):
            if rule.matches(name):
                schedule.source_sync_once(source_id, actor=SYSTEM_ACTOR)
    return window
