"""Freezes and recurring sync windows: may a source's changes go out at a given time? Pure.

One function, ``change_gate``, answers for one source at one moment, from the
freezes and the sync windows an administrator set. The reconcile, beat's sweep,
promotes and the pages all ask it, so they never disagree.

Sync windows follow Argo CD's (https://argo-cd.readthedocs.io, "Sync Windows"):

- a window opens each time its cron ``schedule`` fires (in its ``time_zone``)
  and stays open for its ``duration``;
- no window matching a source: changes go out whenever they come;
- an open ``deny`` window closes the source, whatever else is open (deny wins);
- if any ``allow`` window matches the source, it is closed outside all of them;
- ``manual_sync``: a person's sync may go out while the window closes the source
  (every open deny window, or every allow window outside which it is, must say so).

A freeze closes a source (or every source) until a time, for a reason; it lets
no sync through, manual or not. Nothing here stops an abort or a rollback.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from fnmatch import fnmatchcase
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from gitops.durations import duration_seconds

ALL_SOURCES = "*"
MAX_WINDOW_DURATION = timedelta(days=31)
MIN_WINDOW_DURATION = timedelta(minutes=1)
MAX_SOURCE_GLOBS = 100
# croniter's R (random) and H (hashed) fields, alone or with a range: R, H, R(0-29); not the r of "mar".
_RANDOM_FIELD = re.compile(r"(?<![a-z])[rh](?![a-z])", re.IGNORECASE)


class WindowKind(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class GateKind(StrEnum):
    """Why a source's changes may not go out now; ``OPEN`` when they may."""

    OPEN = "open"
    FROZEN = "frozen"
    DENY_WINDOW = "deny-window"  # an open deny window
    OUTSIDE_ALLOW = "outside-allow"  # allow windows match the source, and none is open


class WindowError(ValueError):
    """A sync window or a freeze an administrator asked for that cannot work, naming the field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class FreezeRule:
    """No change goes out for ``source`` (None: every source) before ``until``."""

    until: datetime
    reason: str
    source: str | None = None
    by: str = ""

    def covers(self, source: str, at: datetime) -> bool:
        return (self.source is None or self.source == source) and at < self.until


@dataclass(frozen=True)
class WindowRule:
    """A recurring window: ``kind`` for the sources matching ``sources`` (globs), from each cron firing."""

    kind: WindowKind
    schedule: str
    duration: timedelta
    sources: tuple[str, ...] = (ALL_SOURCES,)
    manual_sync: bool = False
    time_zone: str = "UTC"
    id: int | None = None

    def matches(self, source: str) -> bool:
        return any(fnmatchcase(source, pattern) for pattern in self.sources)

    def opened_at(self, at: datetime) -> datetime | None:
        """When the latest occurrence of this window covering ``at`` opened; None when it is closed then.

        Windows are open from each firing of their schedule, for ``duration``,
        end excluded; occurrences may overlap, and the latest ends last.
        """
        # Absolute time: a window of 8h that spans a change to summer time lasts 8 hours.
        # Cron counts whole seconds: from the next whole second back, a firing at ``at`` itself counts,
        # and one later in the same second (``at`` = 09:08:59.5, firing 09:09:00) does not.
        whole = at.replace(microsecond=0) + timedelta(seconds=1)
        start = _firing(self.schedule, whole.astimezone(ZoneInfo(self.time_zone)), -1)
        return start if start is not None and start <= at < start + self.duration else None

    def next_opening(self, at: datetime) -> datetime | None:
        """When this window next opens after ``at`` (None: its schedule never fires again)."""
        return _firing(self.schedule, at.astimezone(ZoneInfo(self.time_zone)), +1)

    def describe(self) -> str:
        sources = ", ".join(self.sources)
        label = f"{self.kind} window '{self.schedule}' ({_duration_label(self.duration)}"
        if self.time_zone != "UTC":
            label += f", {self.time_zone}"
        return label + f") for {sources}"


@dataclass(frozen=True)
class Gate:
    """Whether changes may go out for one source at one moment, and if not, why and until when."""

    kind: GateKind = GateKind.OPEN
    manual: bool = True  # a person's sync may go out (a window's manualSync)
    reason: str = ""  # for people: "frozen until 2026-12-24 18:00 UTC by ada: release freeze"
    until: datetime | None = None  # when it opens again, as far as is known now
    freeze: FreezeRule | None = None
    windows: tuple[WindowRule, ...] = field(default=())  # the windows that close it

    @property
    def automatic(self) -> bool:
        """Automatic syncs (polls, pushes) and automatic steps (timers, analysis) may go on."""
        return self.kind is GateKind.OPEN

    def allows(self, *, manual: bool) -> bool:
        return self.automatic or (manual and self.manual)

    @property
    def holds(self) -> str:
        """What holds, as one text that names it: the freeze (whose, until when, set by whom) or the windows
        that close it (by id; not until when, which a window firing often moves on every minute). An
        administrator's override releases this hold, not one set after it."""
        parts = [self.kind.value]
        if (freeze := self.freeze) is not None:
            parts.append(f"freeze {freeze.source or '*'} until {freeze.until.isoformat()} by {freeze.by}")
        parts.extend(f"window {window.id}" for window in self.windows)
        return "; ".join(parts)

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.kind.value,
            "automatic": self.automatic,
            "manual": self.allows(manual=True),
            "reason": self.reason,
            "until": self.until.isoformat() if self.until else None,
        }


OPEN = Gate()


def change_gate(
    source: str, at: datetime, freezes: Iterable[FreezeRule], windows: Iterable[WindowRule]
) -> Gate:
    """May ``source``'s changes go out at ``at``? Freezes first, then the sync windows that match it."""
    applying = [freeze for freeze in freezes if freeze.covers(source, at)]
    if applying:
        freeze = max(applying, key=lambda rule: rule.until)
        reason = _frozen_reason(freeze)
        return Gate(GateKind.FROZEN, manual=False, reason=reason, until=freeze.until, freeze=freeze)
    return _window_gate(source, at, [window for window in windows if window.matches(source)])


def _window_gate(source: str, at: datetime, matching: Sequence[WindowRule]) -> Gate:
    if not matching:
        return OPEN
    opened = {window: window.opened_at(at) for window in matching}
    open_since = {window: start for window, start in opened.items() if start is not None}
    denying = [window for window in open_since if window.kind is WindowKind.DENY]
    allows = [window for window in matching if window.kind is WindowKind.ALLOW]
    outside = bool(allows) and not any(window in open_since for window in allows)
    if denying:
        ends = max(open_since[window] + window.duration for window in denying)
        # Every window closing it must let a person's sync through: the allow windows, closed too, as well.
        closing = [*denying, *(allows if outside else [])]
        return Gate(
            GateKind.DENY_WINDOW,
            manual=all(window.manual_sync for window in closing),
            reason=f"in a sync window that denies changes until {_moment(ends)}: "
            + "; ".join(window.describe() for window in denying),
            until=ends,
            windows=tuple(denying),
        )
    if not outside:
        return OPEN
    openings = [opening for window in allows if (opening := window.next_opening(at)) is not None]
    opens = min(openings) if openings else None
    when = f"the next opens at {_moment(opens)}" if opens else "none of them opens again"
    return Gate(
        GateKind.OUTSIDE_ALLOW,
        manual=all(window.manual_sync for window in allows),
        reason=f"outside its sync windows; {when}: " + "; ".join(window.describe() for window in allows),
        until=opens,
        windows=tuple(allows),
    )


def _firing(schedule: str, start: datetime, direction: int) -> datetime | None:
    """The schedule's firing after (``+1``) or before (``-1``) ``start``, in UTC; None when there is none.

    A schedule with its hours given fires once in the hour a change back from summer time repeats, as
    cron does (croniter fires "30 2 * * *" at both 02:30s, so a window opened twice that night); one
    for every hour (``*``) fires in both. In the hour a change to summer time skips, croniter fires at
    the change, as cron does."""
    # As cron reads them: a job whose minute or hour starts with "*" ("*", "*/15") is a wildcard one.
    minute, hour = schedule.split(" ")[:2]
    every_hour = minute.startswith("*") or hour.startswith("*")
    try:
        moments = croniter(schedule, start)
        while True:
            found: datetime = moments.get_next(datetime) if direction > 0 else moments.get_prev(datetime)
            if every_hour or not _repeated_wall_time(found):
                return found.astimezone(UTC)
    except CroniterError:
        return None  # e.g. "0 0 30 2 *": February has no 30th


def _repeated_wall_time(moment: datetime) -> bool:
    """The second time a wall clock shows ``moment``'s time (the hour a change back from summer time
    repeats): the same wall time earlier that night was another moment."""
    local = moment.astimezone(UTC).astimezone(moment.tzinfo)  # from UTC: ``fold`` set for the second pass
    first = local.replace(fold=0)
    return local.fold == 1 and first.utcoffset() != local.utcoffset()


# -- checking what an administrator asks for -----------------------------------------------


# Names the tz database ships that are not one place's time: ``localtime`` is each host's own setting
# (the web, beat and the workers could disagree on whether a window is open), ``right/`` zones count
# leap seconds (27 s off), ``posix/`` and ``posixrules`` are aliases by another road, ``Factory`` no zone.
_HOST_DEPENDENT_ZONES = re.compile(r"\A(?:localtime|posixrules|Factory|right/.*|posix/.*)\Z")


def _check_time_zone(time_zone: str) -> None:
    if _HOST_DEPENDENT_ZONES.match(time_zone):
        problem = f"{time_zone!r} is not one place's time zone: name one (e.g. UTC, Europe/Berlin)"
        raise WindowError("time_zone", problem)
    try:
        ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        problem = f"{time_zone!r} is not a known time zone (e.g. UTC, Europe/Berlin)"
        raise WindowError("time_zone", problem) from exc


def window_rule(
    *,
    kind: str,
    schedule: str,
    duration: timedelta,
    sources: Sequence[str] = (ALL_SOURCES,),
    manual_sync: bool = False,
    time_zone: str = "UTC",
) -> WindowRule:
    """A checked window, or a ``WindowError`` naming the field that is wrong."""
    try:
        window_kind = WindowKind(kind)
    except ValueError as exc:
        raise WindowError("kind", f"{kind!r} is not allow or deny") from exc
    schedule = " ".join(schedule.split())
    if len(schedule.split(" ")) != 5 or not croniter.is_valid(schedule):
        raise WindowError(
            "schedule", f"{schedule!r} is not a cron schedule of five fields (minute hour day month weekday)"
        )
    if _RANDOM_FIELD.search(schedule):
        # croniter picks another moment each time it reads R: the window would open and close between
        # a pass, beat's sweep and a page.
        raise WindowError("schedule", f"{schedule!r} has a random (R) or hashed (H) field: name the time")
    if _firing(schedule, datetime.now(UTC), +1) is None:
        raise WindowError("schedule", f"{schedule!r} never fires")
    if not MIN_WINDOW_DURATION <= duration <= MAX_WINDOW_DURATION:
        raise WindowError("duration", "must be between 1m and 31d")
    _check_time_zone(time_zone)
    globs = tuple(dict.fromkeys(pattern.strip() for pattern in sources if pattern.strip()))
    if not globs:
        raise WindowError("sources", "name at least one source or glob ('*' for every source)")
    if any(not pattern.isprintable() for pattern in globs):
        raise WindowError("sources", "globs are printable text")
    if len(globs) > MAX_SOURCE_GLOBS or any(len(pattern) > 63 for pattern in globs):
        raise WindowError("sources", f"at most {MAX_SOURCE_GLOBS} globs of at most 63 characters")
    return WindowRule(window_kind, schedule, duration, globs, manual_sync, time_zone)


# Longer than any window (31 days) or freeze (a year ahead) may be: refused here, before a moment far
# past year 9999 is reached (``999999d999999d999999d`` raised OverflowError: a 500 on the freeze form).
MAX_PARSED_SECONDS = 10 * 366 * 86400


def parse_duration(text: str, *, field_name: str = "duration") -> timedelta:
    """``90s``, ``30m``, ``8h``, ``2d`` or a sum of them, largest first (``1h30m``): the policy file's
    grammar (``durations.duration_seconds``), each amount with its unit (a bare number is refused here)."""
    stripped = text.strip()
    if not stripped:
        raise WindowError(field_name, "empty; write a duration like 30m, 8h or 2d")
    seconds = None if stripped.isdigit() else duration_seconds(stripped)
    if seconds is None:
        raise WindowError(field_name, f"{text[:40]!r} is not a duration like 30m, 8h, 2d or 1h30m")
    if seconds > MAX_PARSED_SECONDS:
        raise WindowError(field_name, f"{text[:40]!r} is longer than ten years")
    return timedelta(seconds=seconds)


def _duration_label(duration: timedelta) -> str:
    seconds = int(duration.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


def _moment(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _frozen_reason(freeze: FreezeRule) -> str:
    scope = "every source" if freeze.source is None else freeze.source
    by = f" by {freeze.by}" if freeze.by else ""
    return f"frozen until {_moment(freeze.until)}{by} ({scope}): {freeze.reason}"
