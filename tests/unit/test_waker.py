"""The live cache's waker: a wake the database did not take is tried again, not dropped. No later
event repeats it (the stamp is stored already), so a dropped wake left a drift for the next poll."""

from __future__ import annotations

import threading

from django.db import OperationalError

from gitops import livecache
from tests.workers import poll

SHOP, BILLING = livecache.Wake("shop", "local", "a", "app"), livecache.Wake("billing", "local", "b", "app")


def test_a_wake_the_database_refused_is_tried_again(monkeypatch):
    monkeypatch.setattr(livecache, "WAKE_RETRY_SECONDS", 0.01)
    asked: list[set[livecache.Wake]] = []

    def enqueue(names: set[livecache.Wake]) -> None:
        asked.append(set(names))
        if len(asked) == 1:
            raise OperationalError("the database is away")

    monkeypatch.setattr(livecache.Waker, "_enqueue", staticmethod(enqueue))
    stop = threading.Event()
    waker = livecache.Waker(stop)
    thread = threading.Thread(target=waker.run, daemon=True)
    thread.start()
    try:
        waker.wake([SHOP, BILLING])
        poll(lambda: len(asked) >= 2, timeout=5, what="the wake to be tried again")
    finally:
        stop.set()
        thread.join(timeout=5)

    assert asked[:2] == [{SHOP, BILLING}, {SHOP, BILLING}]
