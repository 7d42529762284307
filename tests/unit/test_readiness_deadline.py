"""/readyz answers within one bound however many checks hang: each waited its own bound in turn, so six
hung checks (the broker, the apiserver, member clusters behind an exec plugin) held the page 42 s."""

from __future__ import annotations

import threading
import time

from gitops import health


def test_hung_checks_share_one_deadline(monkeypatch) -> None:
    released = threading.Event()

    def hangs() -> None:
        released.wait(60)

    monkeypatch.setattr(health, "CHECK_TIMEOUT_SECONDS", 0.3)
    monkeypatch.setattr(health, "DATABASE_CHECK", ("database", lambda: None))
    monkeypatch.setattr(health, "CHECKS", {f"hung-{index}": hangs for index in range(5)})
    started = time.monotonic()
    try:
        answer = health.readiness(members=False)
    finally:
        released.set()
    took = time.monotonic() - started

    assert answer["database"] == "ok"
    assert all(answer[f"hung-{index}"].startswith("TimeoutError") for index in range(5))
    assert took < 2 * (health.CHECK_TIMEOUT_SECONDS + 2), f"{took:.1f}s: one shared bound, not one each"


def test_a_slow_database_does_not_lengthen_the_other_checks_bound(monkeypatch) -> None:
    """The broker's and the apiserver's bound runs from the page's start; only the member clusters, asked
    after the database, get theirs from then."""
    never = threading.Event()
    monkeypatch.setattr(health, "CHECK_TIMEOUT_SECONDS", 0.3)
    monkeypatch.setattr(health, "DATABASE_CHECK", ("database", lambda: never.wait(2.0) and None))
    monkeypatch.setattr(health, "CHECKS", {"broker": lambda: never.wait(60) and None})
    started = time.monotonic()
    try:
        answer = health.readiness(members=False)
    finally:
        never.set()
    took = time.monotonic() - started

    assert answer["broker"].startswith("TimeoutError")
    assert took < 2.0 + (health.CHECK_TIMEOUT_SECONDS + 2) - 0.5, f"{took:.1f}s: the bounds added up"
