"""Fewer malloc arenas in processes that run many threads (workers' apply threads, the live cache),
and fewer garbage collections in processes that build thousands of objects a pass.

glibc gives a thread that finds the shared heap busy an arena of its own, up to eight per core,
and memory freed in one arena is not reused by another: with sixteen apply threads a worker's
peak memory grew with the number of threads, not with the work. ``SLUICE_MALLOC_ARENAS`` (2 by
default; 0 keeps glibc's choice) caps them, as ``MALLOC_ARENA_MAX`` would, without relying on the
environment the process was started with. Elsewhere than glibc nothing changes.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h
DEFAULT_ARENAS = 2
# Objects made since the last collection that start the next one (Python's default is 700).
DEFAULT_GC_THRESHOLD = 10_000


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


def tune_garbage_collector() -> int | None:
    """Collects cyclic garbage after ``SLUICE_GC_THRESHOLD`` new objects (10,000 by default) rather
    than Python's 700; returns the threshold set, or None when Python's is kept (0, or not a number).

    A pass builds a few objects per ConfigMap that live until it ends (documents, plan items,
    intents). Every 700 of them started a collection, and each young collection promotes what
    survives, so the older generations filled up and full collections walked them again and again:
    a cold apply of 10,000 ConfigMaps spent 13% of its CPU collecting, and 3% with the threshold at
    10,000. Nothing else changes: objects without cycles are still freed as soon as they are unused,
    and what cycles there are wait for at most 10,000 more objects.
    """
    configured = os.environ.get("SLUICE_GC_THRESHOLD", str(DEFAULT_GC_THRESHOLD))
    try:
        threshold = int(configured)
    except ValueError:
        log.warning("SLUICE_GC_THRESHOLD is not a number; the garbage collector keeps its default")
        return None
    if threshold <= 0:
        return None
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(threshold, older, oldest)
    return threshold
