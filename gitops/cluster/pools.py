"""Thread pools that outlive a pass: one per (cluster, purpose), started once per process.

A pass used to start its threads afresh for every read and every apply batch: on a
one-file change that was most of the pass's thread time. A pool per cluster keeps
what the per-call pools gave: a silent cluster's calls never queue in front of
another cluster's. A forked child (a Celery prefork worker) starts with no pools,
since threads do not survive a fork.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor


class _Pools:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_key: dict[tuple[str, str], ThreadPoolExecutor] = {}


_state = _Pools()


def pool(cluster: str, purpose: str, size: int) -> ThreadPoolExecutor:
    """The process's pool for ``purpose`` calls to ``cluster``; ``size`` counts when it is first asked."""
    key = (cluster, purpose)
    with _state.lock:
        found = _state.by_key.get(key)
        if found is None:
            found = _state.by_key[key] = ThreadPoolExecutor(
                max_workers=max(1, size), thread_name_prefix=f"sluice-{purpose}-{cluster}"
            )
        return found


def forget(cluster: str | None = None, purpose: str | None = None) -> None:
    """Lets go of the pools of ``cluster`` (or all), for ``purpose`` (or all); the next call starts new ones.

    A thread still blocked in a call ends with that call's own timeout, and nothing waits for it.
    """
    with _state.lock:
        keys = [
            key
            for key in _state.by_key
            if (cluster is None or key[0] == cluster) and (purpose is None or key[1] == purpose)
        ]
        stopped = [_state.by_key.pop(key) for key in keys]
    for executor in stopped:
        executor.shutdown(wait=False, cancel_futures=True)


def _after_fork() -> None:
    # The parent's threads are not in the child, and its lock may have been held by one of them.
    _state.lock = threading.Lock()
    _state.by_key = {}


os.register_at_fork(after_in_child=_after_fork)
