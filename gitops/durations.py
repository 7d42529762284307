"""Durations as people write them in a policy file, on the command line and in forms. Pure.

One grammar everywhere: plain seconds (``30`` or ``"30"``), or one or more amounts each with its unit,
``s``, ``m``, ``h`` or ``d`` (``30s``, ``5m``, ``1h30m``, ``2d``), as Argo Rollouts' ``pause.duration``
and Go's ``time.ParseDuration`` read them (with days added, and without fractions or units under a
second). Before, a policy file's and an interval's grammar took one amount only, so ``1h30m``, valid in
Argo Rollouts, was refused there while a maintenance window took it.
"""

from __future__ import annotations

from typing import Any

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Nine digits are more than any bound a caller sets, in seconds; more would only cost time (or exceed
# Python's limit on converting long digit strings).
MAX_DIGITS = 9
EXAMPLES = "30s, 5m, 1h or 1h30m"


def duration_seconds(value: Any) -> int | None:
    """The seconds ``value`` names; None when it is not a duration (negative, empty, a bool, a unit
    unknown or repeated out of order)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if not isinstance(value, str):
        return None
    rest = value.strip()
    if rest.isdigit() and len(rest) <= MAX_DIGITS and rest.isascii():
        return int(rest)
    seconds, last_size = 0, None
    while rest:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        if not 0 < digits <= MAX_DIGITS or len(rest) == digits or rest[digits] not in UNITS:
            return None
        size = UNITS[rest[digits]]
        # Largest unit first, each once: "30m1h" or "5m5m" is a slip, not a duration.
        if last_size is not None and size >= last_size:
            return None
        seconds, last_size = seconds + int(rest[:digits]) * size, size
        rest = rest[digits + 1 :]
    return seconds if last_size is not None else None
