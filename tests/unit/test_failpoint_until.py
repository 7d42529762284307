"""A failpoint held until a file exists: let go as soon as it does, and at the latest after its limit."""

from __future__ import annotations

import threading
import time

from gitops import failpoints


def test_a_failpoint_held_until_a_file_exists_goes_on_once_it_does(monkeypatch, tmp_path):
    go_on = tmp_path / "go-on"
    monkeypatch.setenv("SLUICE_FAILPOINTS", f"other=5,held=until:{go_on}")
    released = threading.Event()
    holder = threading.Thread(target=lambda: (failpoints.failpoint("held"), released.set()))
    holder.start()
    assert not released.wait(0.3), "held while the file is missing"
    go_on.touch()
    assert released.wait(5), "let go once the file exists"
    holder.join()


def test_a_failpoint_held_until_a_file_that_never_comes_gives_up_at_its_limit(monkeypatch, tmp_path):
    monkeypatch.setenv("SLUICE_FAILPOINTS", f"held=until:{tmp_path / 'never'}")
    monkeypatch.setattr(failpoints, "UNTIL_LIMIT_SECONDS", 0.2)
    started = time.monotonic()
    failpoints.failpoint("held")
    assert 0.2 <= time.monotonic() - started < 5


def test_a_failpoint_not_named_does_not_hold(monkeypatch):
    monkeypatch.setenv("SLUICE_FAILPOINTS", "held=30")
    started = time.monotonic()
    failpoints.failpoint("another")
    assert time.monotonic() - started < 1
