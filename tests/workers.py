"""Real Celery worker processes for the integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def poll(check, *, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Calls ``check`` until it returns something truthy, or fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class WorkerProcess:
    env: dict[str, str]
    concurrency: int = 2
    queues: str = "celery"
    name: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:8]}")
    env_overrides: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def hostname(self) -> str:
        return f"{self.name}@localhost"

    @property
    def log_path(self) -> Path:
        return ARTIFACTS / "workers" / f"{self.name}.log"

    def start(self, *, timeout: float = 60) -> WorkerProcess:
        from gitops.celery import app

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "gitops",
                    "worker",
                    "--loglevel=INFO",
                    f"--concurrency={self.concurrency}",
                    f"--hostname={self.hostname}",
                    f"--queues={self.queues}",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
                env={**self.env, **self.env_overrides},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def answers() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}; see {self.log_path}")
            # limit=1: the answer ends the wait; without it every ping waits its whole timeout.
            replies = app.control.ping(destination=[self.hostname], timeout=0.5, limit=1)
            return any(self.hostname in reply for reply in replies)

        try:
            poll(answers, timeout=timeout, what=f"worker {self.hostname} to answer a ping")
        except BaseException:  # a Ctrl-C, or no answer: the worker runs in a session of its own
            self.stop()
            raise
        return self

    def stop(self, *, timeout: float = 30) -> None:
        """Warm shutdown: the worker finishes what it is running, then exits."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """A crash: the worker and its pool children die at once."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@contextlib.contextmanager
def running_beat(env: dict[str, str], schedule: Path, *, sweep_seconds: float = 1, name: str = "beat"):
    """A real ``celery beat`` whose sweep runs every ``sweep_seconds``; stopped on exit."""
    log_path = ARTIFACTS / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        beat = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "gitops",
                "beat",
                "--loglevel=INFO",
                f"--schedule={schedule}",
            ],
            env={**env, "SLUICE_POLL_SWEEP_SECONDS": str(sweep_seconds)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield beat, log_path
    finally:
        beat.terminate()
        beat.wait(timeout=30)


@dataclass
class LiveCacheProcess:
    """A real ``manage.py gitops live-cache`` process: it watches the managed ConfigMaps, stores
    their stamps in Redis and wakes sources whose objects someone else changed."""

    env: dict[str, str]
    env_overrides: dict[str, str] = field(default_factory=dict)
    name: str = field(default_factory=lambda: f"live-cache-{uuid.uuid4().hex[:8]}")
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return ARTIFACTS / "workers" / f"{self.name}.log"

    def start(self) -> LiveCacheProcess:
        manage = Path(__file__).resolve().parent.parent / "manage.py"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(manage), "gitops", "live-cache"],
                env={**self.env, **self.env_overrides},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def serving(self) -> bool:
        """Whether it holds the cluster's lease (it may stand by while an earlier one's runs out)."""
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"live cache exited with {self.process.returncode}; see {self.log_path}")
        return "serving" in self.log_path.read_text(errors="replace")

    def stop(self, *, timeout: float = 30) -> None:
        """A clean stop: it gives its lease up, so every namespace is stale at once."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """A crash: nothing is cleaned up; the lease runs out by itself."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
