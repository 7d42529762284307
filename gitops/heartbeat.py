"""Heartbeat files: a long-running process that sends nothing a probe could ask (beat, the live cache)
shows that its main loop still turns by writing, each round, the time by which its next round will have
written again (a few rounds ahead, from its own period: the probe needs no setting of its own) to a file
in SLUICE_DATA_DIR; the liveness probes in deploy/ fail once that time has passed. Whether the process
merely exists says nothing of a loop stuck on a lock or a dead connection, and the live cache's probe
matched tini's command line (the container's first process) and so could never fail (before
2026-12-07)."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

from django.conf import settings

log = logging.getLogger(__name__)

_unwritable: set[str] = set()  # told once per process, not every round


def heartbeat_path(name: str) -> Path:
    """One file per host: containers that share the data directory (Compose's volume) each prove their
    own loop, not a peer's."""
    return Path(settings.SLUICE_DATA_DIR) / f"{name}-{socket.gethostname()}.heartbeat"


# The least time a round is given: a slow moment (a database failover, a stop-the-world collection)
# must not restart a process that would have turned again.
MIN_GRACE_SECONDS = 60.0


def heartbeat_touch(name: str, *, period: float) -> None:
    """Writes the time by which the next round will have written again: three rounds of ``period``
    seconds ahead, at least MIN_GRACE_SECONDS. Written whole (a temporary file renamed): the probe never
    reads half a number. A directory that refuses it is logged once: the probe then restarts the
    process, which says why."""
    path = heartbeat_path(name)
    written = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        written.write_text(f"{time.time() + max(MIN_GRACE_SECONDS, 3 * period):.3f}\n")
        os.replace(written, path)
    except OSError as exc:
        if name not in _unwritable:
            _unwritable.add(name)
            log.warning("could not write the heartbeat file %s (the liveness probe reads it): %s", path, exc)
