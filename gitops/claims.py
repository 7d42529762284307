"""Claims made one compare-and-swap at a time, kept when the database fails partway.

Beat's sweeps claim rows one by one (a due poll, a due rollout, a lost removal, an overdue
notification), each claim committing on its own, and then send a task for each claimed row. A sweep
that raised at the first database error lost the claims already made: a due poll moved an interval
on with nothing queued, a sync marked queued with no task behind it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TypeVar

from django.db import DatabaseError

log = logging.getLogger(__name__)
Claimed = TypeVar("Claimed")


def each_claimed(candidates: Iterable[Claimed], claim: Callable[[Claimed], bool], what: str) -> list[Claimed]:
    """The candidates ``claim`` claims, in order. A database error ends the loop and returns the claims
    already made, for the sweep to send (or give back); the rest wait for the next sweep."""
    claimed: list[Claimed] = []
    for candidate in candidates:
        try:
            if claim(candidate):
                claimed.append(candidate)
        except DatabaseError:
            log.exception("the sweep stopped claiming %s; the %d claimed are sent", what, len(claimed))
            break
    return claimed
