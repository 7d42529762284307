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


def test_a_check_that_raises_kills_git_before_the_error_goes_on(monkeypatch) -> None:
    """The check asks the database; if it is away, the error goes to the pass, and git must not keep
    writing into the mirror that the pass's retry fetches into."""
    monkeypatch.setattr(git, "INTERRUPT_CHECK_SECONDS", 0.05)
    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def recorded(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(git.subprocess, "Popen", recorded)

    def database_away() -> bool:
        raise ConnectionError("the database went away")

    with pytest.raises(ConnectionError):
        run(command("sleep 30"), timeout=60, interrupted=database_away)
    assert started[0].poll() is not None, "git was killed"


def test_input_is_sent_once_across_the_checks(monkeypatch) -> None:
    monkeypatch.setattr(git, "INTERRUPT_CHECK_SECONDS", 0.05)
    done = run(command("sleep 0.3; cat"), timeout=30, input=b"sent once", interrupted=lambda: False)
    assert (done.returncode, done.stdout) == (0, b"sent once")


def test_what_git_says_on_stderr_is_kept_to_its_last_lines_not_whole() -> None:
    """A Git server may send ``remote:`` lines for as long as a fetch runs, and git prints them all:
    they were read into the worker's memory whole. The last STDERR_KEPT bytes are kept (git's fatal line
    is last), and what git prints on stdout is whole."""
    script = "head -c 20000000 /dev/zero | tr '\\0' r >&2; echo 'fatal: the last line' >&2; echo out"
    completed = run(command(script), timeout=60)
    assert completed.stdout == b"out\n"
    assert completed.stderr.endswith(b"fatal: the last line\n")
    assert completed.stderr.startswith(b"[...]")
    assert len(completed.stderr) <= git.STDERR_KEPT + len(b"[...]")
    assert run(command("echo short >&2"), timeout=10).stderr == b"short\n"
