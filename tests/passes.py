"""A pass of a source held on a thread of the test's process, at the moment a race needs it."""

from __future__ import annotations

import threading
from typing import Any

from django.db import connection

from gitops import reconcile
from gitops.models import Source


class HeldPass:
    """A pass of the source on a thread of this process, held once it holds the source's lock, has read
    the registry and fetched and recorded the head, just before it validates it; with
    ``before="_chosen"``, once it validated the head, just before it chooses (or starts) its rollout;
    any other function the pass calls by its name in ``within`` (the pass's module unless given).
    Used as a block, leaving it lets the pass go on; otherwise ``thread``, ``validating`` (set once it
    is held) and ``go_on`` are the test's to drive."""

    def __init__(
        self, monkeypatch, source: Source, *, before: str = "revision_desired_state", within: Any = reconcile
    ) -> None:
        self.validating, self.go_on = threading.Event(), threading.Event()
        self.result: reconcile.SyncResult | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(source.pk,), name="held-pass")
        real = getattr(within, before)

        def held(*args: Any, **kwargs: Any) -> Any:
            # The head's validation is the one with the clusters the pass read as it began.
            wanted = before != "revision_desired_state" or kwargs.get("known_clusters") is not None
            if wanted and threading.current_thread() is self.thread:
                self.validating.set()
                assert self.go_on.wait(timeout=120), "the test lets the pass go on"
            return real(*args, **kwargs)

        monkeypatch.setattr(within, before, held)

    def _run(self, source_id: int) -> None:
        try:
            self.result = reconcile.source_sync(source_id)
        except BaseException as exc:
            self.error = exc
        finally:
            connection.close()

    def __enter__(self) -> HeldPass:
        self.thread.start()
        assert self.validating.wait(timeout=120), "the pass to fetch the head under the source's lock"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.go_on.set()
        self.thread.join(timeout=120)
        assert not self.thread.is_alive(), "the pass to end"
