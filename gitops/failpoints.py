"""Failpoints: named places where a test can hold a worker still, to kill it at an exact moment.

Off unless ``SLUICE_FAILPOINTS`` names them (``name=seconds,...``); crash tests
use them to kill a real worker between two writes (say, a ConfigMap applied and
its consumers not yet restarted) and check that the next pass finishes the job
exactly once. After etcd's gofail.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)


def _configured() -> dict[str, float]:
    points: dict[str, float] = {}
    for entry in os.environ.get("SLUICE_FAILPOINTS", "").split(","):
        name, _, seconds = entry.partition("=")
        if name.strip():
            points[name.strip()] = float(seconds or 0)
    return points


def failpoint(name: str) -> None:
    """Waits here as long as ``SLUICE_FAILPOINTS`` says for ``name``; does nothing otherwise."""
    seconds = _configured().get(name)
    if seconds is not None:
        log.warning("failpoint %s: holding for %ss", name, seconds)
        time.sleep(seconds)
