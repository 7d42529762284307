"""The harness's lock between the two integration sessions of ``pytest -n 2`` (tests/parallel.py).

Threads stand in for the sessions: each ``flock`` is taken on a descriptor of its own, and Linux
keeps such locks apart as it does between processes."""

from __future__ import annotations

import threading

import pytest

from tests import parallel

BLOCKED_FOR = 0.3  # how long a waiter is watched to be sure it waits


@pytest.fixture
def session(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setattr(parallel, "_lock_directory", lambda: tmp_path)


class Holder(threading.Thread):
    """Takes the stack in one mode, says so, and holds it until told to let go."""

    def __init__(self, *, exclusive: bool) -> None:
        super().__init__(daemon=True)
        self.exclusive = exclusive
        self.holding = threading.Event()
        self.release = threading.Event()

    def run(self) -> None:
        with parallel.stack_access(exclusive=self.exclusive):
            self.holding.set()
            self.release.wait(30)

    def let_go(self) -> None:
        self.release.set()
        self.join(30)


def start(*, exclusive: bool) -> Holder:
    holder = Holder(exclusive=exclusive)
    holder.start()
    return holder


def test_sessions_share_the_stack_and_an_exclusive_test_waits_for_both(session):
    first, second = start(exclusive=False), start(exclusive=False)
    assert first.holding.wait(10) and second.holding.wait(10), "shared holders do not wait for each other"
    alone = start(exclusive=True)
    assert not alone.holding.wait(BLOCKED_FOR), "an exclusive test ran beside a shared one"
    first.let_go()
    assert not alone.holding.wait(BLOCKED_FOR)
    second.let_go()
    assert alone.holding.wait(10)
    alone.let_go()


def test_a_waiting_exclusive_test_goes_before_shared_ones_that_come_after_it(session):
    running = start(exclusive=False)
    assert running.holding.wait(10)
    alone = start(exclusive=True)
    assert not alone.holding.wait(BLOCKED_FOR)
    later = start(exclusive=False)
    assert not later.holding.wait(BLOCKED_FOR), "a new shared holder overtook the waiting exclusive one"
    running.let_go()
    assert alone.holding.wait(10), "the exclusive test starves behind shared ones"
    assert not later.holding.is_set()
    alone.let_go()
    assert later.holding.wait(10)
    later.let_go()


def test_only_an_exclusive_test_may_change_what_every_session_sees(session):
    refused = pytest.raises(AssertionError, match="mark the test exclusive")
    with parallel.stack_access(exclusive=False), refused:
        parallel.require_alone("cordoning the nodes")
    with parallel.stack_access(exclusive=True):
        parallel.require_alone("cordoning the nodes")


def test_outside_xdist_there_is_no_lock_and_one_redis_database(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    parallel.require_alone("cordoning the nodes")
    assert parallel.session_redis_url("redis://127.0.0.1:6390/0") == "redis://127.0.0.1:6390/0"
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    assert parallel.session_redis_url("redis://127.0.0.1:6390/0") == "redis://127.0.0.1:6390/2"
