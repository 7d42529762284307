"""Fewer malloc arenas in processes that run many threads (workers' apply threads, the live cache).

glibc gives a thread that finds the shared heap busy an arena of its own, up to eight per core,
and memory freed in one arena is not reused by another: with sixteen apply threads a worker's
peak memory grew with the number of threads, not with the work. ``SLUICE_MALLOC_ARENAS`` (2 by
default; 0 keeps glibc's choice) caps them, as ``MALLOC_ARENA_MAX`` would, without relying on the
environment the process was started with. Elsewhere than glibc nothing changes.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h
DEFAULT_ARENAS = 2


def limit_malloc_arenas() -> int | None:
    """Caps the process's malloc arenas; returns the cap, or None when nothing was changed.

    Called before the process starts its threads: glibc settles its arena limit once it has made
    more than eight arenas, after which a cap changes nothing. An operator's own ``MALLOC_ARENA_MAX``
    or ``GLIBC_TUNABLES`` is left to govern when ``SLUICE_MALLOC_ARENAS`` is not set.
    """
    configured = os.environ.get("SLUICE_MALLOC_ARENAS")
    if configured is None and ("MALLOC_ARENA_MAX" in os.environ or "GLIBC_TUNABLES" in os.environ):
        return None
    try:
        arenas = int(configured if configured is not None else DEFAULT_ARENAS)
    except ValueError:
        log.warning("SLUICE_MALLOC_ARENAS is not a number; malloc keeps its default")
        return None
    if arenas <= 0:
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (or no C library to ask)
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return arenas if mallopt(M_ARENA_MAX, arenas) == 1 else None
