"""Failpoints: named places where a test can hold a worker still, to kill it at an exact moment.

Off unless ``SLUICE_FAILPOINTS`` names them (``name=seconds,...``); crash tests
use them to kill a real worker between two writes (say, a ConfigMap applied and
its consumers not yet restarted) and check that the next pass finishes the job
exactly once. After etcd's gofail.

A setting ``name=until:/some/path`` holds the worker until that file exists (at most
``UNTIL_LIMIT_SECONDS``): a test that must act while the worker is held (say, abort
between a step's apply and its restarts) lets it go on when it is done, not after a guess.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)


UNTIL_LIMIT_SECONDS = 120.0
_UNTIL = "until:"


def _configured() -> dict[str, str]:
    points: dict[str, str] = {}
    for entry in os.environ.get("SLUICE_FAILPOINTS", "").split(","):
        name, _, setting = entry.partition("=")
        if name.strip():
            points[name.strip()] = setting.strip()
    return points


def failpoint(name: str) -> None:
    """Waits here as long as ``SLUICE_FAILPOINTS`` says for ``name``; does nothing otherwise."""
    setting = _configured().get(name)
    if setting is None:
        return
    if setting.startswith(_UNTIL):
        _hold_until(name, setting.removeprefix(_UNTIL))
        return
    log.warning("failpoint %s: holding for %ss", name, setting or 0)
    time.sleep(float(setting or 0))


def _hold_until(name: str, path: str) -> None:
    log.warning("failpoint %s: holding until %s exists", name, path)
    deadline = time.monotonic() + UNTIL_LIMIT_SECONDS
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
