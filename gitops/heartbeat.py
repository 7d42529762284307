"""Heartbeat files: a long-running process that sends nothing a probe could ask (beat, the live cache)
shows that its main loop still turns by touching a file in SLUICE_DATA_DIR each round; the liveness
probes in deploy/ fail once the file is older than a few rounds. Whether the process merely exists says
nothing of a loop stuck on a lock or a dead connection, and the live cache's probe matched tini's
command line (the container's first process) and so could never fail (before 2026-12-07)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from django.conf import settings

log = logging.getLogger(__name__)

_unwritable: set[str] = set()  # told once per process, not every round


def heartbeat_path(name: str) -> Path:
    """One file per host: containers that share the data directory (Compose's volume) each prove their
    own loop, not a peer's."""
    return Path(settings.SLUICE_DATA_DIR) / f"{name}-{socket.gethostname()}.heartbeat"


def heartbeat_touch(name: str) -> None:
    """Sets the heartbeat file's time to now (creating it). A directory that refuses it is logged once:
    the probe then restarts the process, which says why."""
    path = heartbeat_path(name)
    try:
        path.touch()
    except OSError as exc:
        if name not in _unwritable:
            _unwritable.add(name)
            log.warning("could not touch the heartbeat file %s (the liveness probe reads it): %s", path, exc)
