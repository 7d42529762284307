"""``manage.py`` commands as real processes, forked from a warm launcher.

A fresh ``python manage.py gitops ...`` spends most of its start-up importing third-party
libraries (the kubernetes client alone is over a second of CPU), and the integration tests run
about a hundred such commands. ``CommandLauncher`` starts one Python process that imports those
libraries once, then forks a child for each command. The child is a process of its own, as a
user's would be: it gets the command's environment, working directory, argv and /dev/null as
stdin, writes to its own stdout and stderr, and runs ``manage.py`` as ``__main__``, so Django's
settings, the database connection, Celery and the command itself start from scratch in it, and
its exit status is the command's. Nothing of Sluice, of Django's settings or of
prometheus_client (which reads its environment at import) is loaded before the fork; the
launcher checks that.

What a child shares with a fresh interpreter's start-up only by copy: the third-party modules
already imported, and the hash seed of the launcher (the global ``random`` is re-seeded).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Imported once by the launcher: heavy, and none reads the environment or Django's settings at import
# (django-ninja does read the settings, so it is not here).
PRELOADED = (
    "kubernetes.client",
    "kubernetes.config",
    "celery.app.base",
    "celery.result",
    "kombu.transport.redis",
    "redis",
    "pydantic",
    "psycopg",
    "cryptography.fernet",
    "yaml",
    "croniter",
    "urllib3",
    "django.core.management",
    "django.db.models",
    "django.http",
    "django.urls",
    "django.forms",
    "django.template",
)
# Loaded only in a child: Sluice itself, the settings, and what reads the settings' environment.
NOT_PRELOADED = ("gitops", "sluice", "dashboard", "prometheus_client")


class CommandLauncher:
    """The test side: ``run(args, env=...)`` answers as ``subprocess.run`` with ``capture_output=True``
    and ``text=True`` would."""

    def __init__(self) -> None:
        env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.commands"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._expect("ready", timeout=120)

    def _expect(self, kind: str, *, timeout: float) -> dict:
        assert self.process.stdout is not None
        readable, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not readable:
            raise TimeoutError(f"the command launcher sent no {kind!r} within {timeout}s")
        line = self.process.stdout.readline()
        assert line, f"the command launcher exited with {self.process.wait()}"
        message = json.loads(line)
        assert message["kind"] == kind, message
        return message

    def run(
        self, args: list[str], *, env: dict[str, str], timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        """``python manage.py *args`` in ROOT, as a child of the launcher."""
        assert self.process.stdin is not None
        with tempfile.TemporaryDirectory(prefix="sluice-command-") as directory:
            stdout, stderr = Path(directory) / "stdout", Path(directory) / "stderr"
            request = {"argv": ["manage.py", *args], "env": env, "stdout": str(stdout), "stderr": str(stderr)}
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            child = self._expect("started", timeout=30)["pid"]
            started = time.monotonic()
            try:
                returncode = self._expect("exited", timeout=timeout)["returncode"]
            except TimeoutError:
                os.killpg(child, signal.SIGKILL)  # the child leads a session of its own
                self._expect("exited", timeout=30)
                raise subprocess.TimeoutExpired(args, time.monotonic() - started) from None
            return subprocess.CompletedProcess(
                ["manage.py", *args], returncode, stdout.read_text(), stderr.read_text()
            )

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


# -- the launcher process ----------------------------------------------------------------------


def _send(message: dict) -> None:
    sys.__stdout__.write(json.dumps(message) + "\n")
    sys.__stdout__.flush()


def _run_child(request: dict) -> int:
    """In the forked child: become ``python manage.py ...`` and return its exit status."""
    import random
    import runpy
    import traceback

    os.setsid()  # a session of its own, as the command's process would have in a shell
    random.seed()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False, buffering=1)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)  # noqa: SIM115
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])
    try:
        runpy.run_path(str(ROOT / "manage.py"), run_name="__main__")
        code = 0
    except SystemExit as exited:
        # As the interpreter treats an uncaught SystemExit.
        if exited.code is None or isinstance(exited.code, int):
            code = exited.code or 0
        else:
            print(exited.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    _shut_down_as_the_interpreter_would()
    return code


def _shut_down_as_the_interpreter_would() -> None:
    """What Python does at exit before os._exit: join non-daemon threads, run atexit, flush."""
    import atexit
    import threading

    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()


def _serve() -> None:
    import importlib

    for module in PRELOADED:
        importlib.import_module(module)
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in NOT_PRELOADED)
    assert not loaded, f"the launcher must not load {loaded} before the fork"
    from django.conf import settings

    assert not settings.configured, "the launcher must not configure Django's settings"
    _send({"kind": "ready"})
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _run_child(request)
            finally:
                os._exit(code)
        _send({"kind": "started", "pid": pid})
        _, status = os.waitpid(pid, 0)
        _send({"kind": "exited", "returncode": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    _serve()
