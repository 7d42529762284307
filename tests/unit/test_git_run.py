"""``fetch.git.run``: a git that runs too long is killed at its timeout, or as soon as its caller asks
(a fetch a person's abort stops); what it prints is kept whole across the checks in between."""

from __future__ import annotations

import subprocess
import time

import pytest

from gitops.fetch import git
from gitops.fetch.git import GitInvocation, Interrupted, run


def command(script: str) -> GitInvocation:
    return GitInvocation(argv=["sh", "-c", script], env={"PATH": "/usr/bin:/bin"})


def test_a_run_asked_to_stop_is_killed_at_the_next_check(monkeypatch) -> None:
    monkeypatch.setattr(git, "INTERRUPT_CHECK_SECONDS", 0.05)
    asked: list[float] = []

    def interrupted() -> bool:
        asked.append(time.monotonic())
        return len(asked) >= 3

    started = time.monotonic()
    with pytest.raises(Interrupted):
        run(command("sleep 30"), timeout=60, interrupted=interrupted)
    assert len(asked) == 3
    assert time.monotonic() - started < 5, "killed at once, not at its timeout"


def test_a_run_never_asked_to_stop_is_killed_at_its_timeout(monkeypatch) -> None:
    monkeypatch.setattr(git, "INTERRUPT_CHECK_SECONDS", 0.05)
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run(command("sleep 30"), timeout=0.3, interrupted=lambda: False)
    assert 0.3 <= time.monotonic() - started < 5


def test_output_across_the_checks_is_kept_whole(monkeypatch) -> None:
    monkeypatch.setattr(git, "INTERRUPT_CHECK_SECONDS", 0.02)
    script = "printf one; sleep 0.2; printf ' two' >&2; sleep 0.2; printf ' three'"
    done = run(command(script), timeout=30, interrupted=lambda: False)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"one three", b" two")
