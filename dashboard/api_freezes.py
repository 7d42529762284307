"""The JSON API of freezes and sync windows: read them (viewers), set and lift them (administrators).

Mounted on the API in ``dashboard.api``; the same use cases as the CLI and the
pages (``gitops.freezes``), which check the caller's permission and record who acted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import HttpRequest
from ninja import Field, Router, Schema, Status
from ninja.errors import HttpError

from dashboard.api import (
    AUTH_ERRORS,
    NO_NUL,
    SOURCE_NAME,
    Body,
    ErrorOut,
    RolloutId,
    caller,
    require,
    source_or_404,
)
from gitops import freezes, selectors
from gitops.windows import WindowError, WindowKind, parse_duration

router = Router(tags=["freezes"])

WRITE_ERRORS: dict[int, Any] = {**AUTH_ERRORS, 400: ErrorOut, 404: ErrorOut}
WindowIdPath = RolloutId  # the same bounds: a positive bigint


class FreezeOut(Schema):
    id: int
    source: str | None = Field(description="null: every source")
    all_sources: bool
    until: datetime
    reason: str
    created_by: str
    created_at: datetime
    lifted_by: str
    lifted_at: datetime | None


class FreezeIn(Body):
    source: str | None = Field(
        None, max_length=63, pattern=SOURCE_NAME, description="the source; null with all=true"
    )
    all: bool = Field(False, description="freeze every source")
    # A time without an offset is refused (400, "until: give a time zone"), as the CLI and the page
    # refuse it: taken as UTC until 2026-12-07, it froze to another moment than meant east or west of it.
    until: datetime = Field(
        description="a time in the future with its offset or Z, at most a year ahead (ISO 8601)"
    )
    reason: str = Field(..., min_length=1, max_length=freezes.MAX_REASON, pattern=NO_NUL)


class LiftIn(Body):
    source: str | None = Field(None, max_length=63, pattern=SOURCE_NAME)
    all: bool = Field(False, description="lift every freeze")


class WindowOut(Schema):
    id: int
    kind: WindowKind
    schedule: str
    duration_seconds: int
    time_zone: str
    sources: list[str]
    manual_sync: bool
    open_now: bool
    opened_at: datetime | None
    closes_at: datetime | None
    next_opening: datetime | None = Field(description="null: its schedule never fires again")
    created_by: str
    created_at: datetime


class WindowIn(Body):
    kind: WindowKind
    schedule: str = Field(..., max_length=100, pattern=NO_NUL, description="cron, five fields: 0 22 * * *")
    duration: str = Field(..., max_length=20, pattern=NO_NUL, description="30m, 8h, 2d, 1h30m")
    sources: list[str] = Field(["*"], max_length=100, description="source names or globs")
    manual_sync: bool = False
    time_zone: str = Field("UTC", max_length=64, pattern=NO_NUL)


def _target(source: str | None, every: bool) -> Any:
    if every == (source is not None):
        raise HttpError(400, "name a source, or set all to true (not both)")
    return None if every else source_or_404(source or "")


def _refused(exc: freezes.FreezeError | WindowError) -> HttpError:
    return HttpError(400, str(exc))


@router.get("/freezes", response={200: list[FreezeOut], **AUTH_ERRORS})
def list_freezes(request: HttpRequest) -> list[dict[str, Any]]:
    """The freezes in force, the soonest to end first."""
    require(request, "gitops.view_freeze")
    return [selectors.freeze_as_dict(freeze) for freeze in selectors.freezes_in_force()]


@router.post("/freezes", response={201: FreezeOut, **WRITE_ERRORS})
def create_freeze(request: HttpRequest, body: FreezeIn) -> Status[dict[str, Any]]:
    """Freezes a source, or every source (administrators): nothing goes out by itself until ``until``."""
    user = require(request, freezes.MANAGE_FREEZES)  # before the source is looked up: no 404 for a viewer
    target = _target(body.source, body.all)
    try:
        freeze = freezes.freeze_set(target, until=body.until, reason=body.reason, user=user)
    except freezes.FreezeError as exc:
        raise _refused(exc) from exc
    return Status(201, selectors.freeze_as_dict(freeze))


@router.post("/freezes/lift", response={200: list[FreezeOut], **WRITE_ERRORS})
def lift_freezes(request: HttpRequest, body: LiftIn) -> list[dict[str, Any]]:
    """Lifts a source's freezes, or every freeze (administrators); returns what was lifted."""
    user = require(request, freezes.MANAGE_FREEZES)
    target = _target(body.source, body.all)
    return [selectors.freeze_as_dict(freeze) for freeze in freezes.freeze_lift(target, user=user)]


@router.get("/windows", response={200: list[WindowOut], **AUTH_ERRORS})
def list_windows(request: HttpRequest) -> list[dict[str, Any]]:
    """The sync windows in force, and whether each is open now."""
    require(request, "gitops.view_syncwindow")
    rules = selectors.rules_now()
    return [selectors.window_as_dict(window, rules) for window in selectors.windows_in_force()]


@router.post("/windows", response={201: WindowOut, **WRITE_ERRORS})
def create_window(request: HttpRequest, body: WindowIn) -> Status[dict[str, Any]]:
    """Adds a sync window (administrators)."""
    user = require(request, freezes.MANAGE_WINDOWS)  # before the duration is parsed: a 403, not a 400
    try:
        window = freezes.window_add(
            kind=body.kind.value,
            schedule_text=body.schedule,
            duration=parse_duration(body.duration),
            sources=body.sources,
            manual_sync=body.manual_sync,
            time_zone=body.time_zone,
            user=user,
        )
    except (freezes.FreezeError, WindowError) as exc:
        raise _refused(exc) from exc
    return Status(201, selectors.window_as_dict(window, selectors.rules_now()))


@router.delete("/windows/{window_id}", response={204: None, **WRITE_ERRORS})
def delete_window(request: HttpRequest, window_id: WindowIdPath) -> Status[None]:
    """Removes a sync window (administrators)."""
    user = caller(request)
    try:
        freezes.window_remove(window_id, user=user)
    except freezes.FreezeError as exc:
        raise HttpError(404, str(exc)) from exc
    return Status(204, None)
