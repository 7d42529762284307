"""The cap on malloc arenas that workers and the live cache set before their threads start, and the
garbage collector's threshold they raise."""

from __future__ import annotations

import gc
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from gitops.memory import DEFAULT_GC_THRESHOLD, limit_malloc_arenas, tune_garbage_collector

ROOT = Path(__file__).resolve().parents[2]
GLIBC = platform.libc_ver()[0] == "glibc"


def test_the_default_cap_is_two_arenas_on_glibc_and_nothing_elsewhere(monkeypatch):
    for name in ("SLUICE_MALLOC_ARENAS", "MALLOC_ARENA_MAX", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    assert limit_malloc_arenas() == (2 if GLIBC else None)


@pytest.mark.parametrize("name", ["MALLOC_ARENA_MAX", "GLIBC_TUNABLES"])
def test_an_operators_own_malloc_settings_are_left_alone(monkeypatch, name):
    monkeypatch.delenv("SLUICE_MALLOC_ARENAS", raising=False)
    monkeypatch.setenv(name, "4" if name == "MALLOC_ARENA_MAX" else "glibc.malloc.arena_max=4")
    assert limit_malloc_arenas() is None
    monkeypatch.setenv("SLUICE_MALLOC_ARENAS", "3")
    assert limit_malloc_arenas() == (3 if GLIBC else None), "Sluice's own setting says otherwise"


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_zero_or_nonsense_leaves_malloc_as_it_is(monkeypatch, value):
    monkeypatch.setenv("SLUICE_MALLOC_ARENAS", value)
    assert limit_malloc_arenas() is None


def test_threads_of_a_capped_process_share_the_arenas():
    """glibc's own statistics: sixteen threads that allocate at once make at most the cap's arenas."""
    program = (
        "import ctypes, threading\n"
        "from gitops.memory import limit_malloc_arenas\n"
        "limit_malloc_arenas()\n"
        "start = threading.Barrier(16)\n"
        "def work():\n"
        "    start.wait()\n"
        "    for _ in range(2000):\n"
        "        bytearray(4096)\n"
        "threads = [threading.Thread(target=work) for _ in range(16)]\n"
        "[t.start() for t in threads]\n"
        "[t.join() for t in threads]\n"
        "ctypes.CDLL(None).malloc_info(0, ctypes.c_void_p.in_dll(ctypes.CDLL(None), 'stdout'))\n"
    )
    if not GLIBC:  # malloc_info is glibc's; elsewhere the cap is not set at all (see above)
        return
    output = run_python(program, without=("SLUICE_MALLOC_ARENAS", "MALLOC_ARENA_MAX", "GLIBC_TUNABLES"))
    assert output.count("<heap nr=") <= 2


def run_python(program: str, *, without: tuple[str, ...], **env: str) -> str:
    """What ``program`` prints, run by a fresh interpreter without the ``without`` variables."""
    environment = {key: value for key, value in os.environ.items() if key not in without}
    return subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=ROOT,
        env={**environment, "PYTHONPATH": str(ROOT), **env},
    ).stdout


@pytest.fixture
def gc_threshold():
    """The process's collector thresholds, put back after the test."""
    before = gc.get_threshold()
    yield before
    gc.set_threshold(*before)


def test_the_collector_starts_after_ten_thousand_new_objects_and_keeps_its_older_generations(
    monkeypatch, gc_threshold
):
    monkeypatch.delenv("SLUICE_GC_THRESHOLD", raising=False)
    gc.set_threshold(700, 10, 10)
    assert tune_garbage_collector() == DEFAULT_GC_THRESHOLD == 10_000
    assert gc.get_threshold() == (10_000, 10, 10)
    monkeypatch.setenv("SLUICE_GC_THRESHOLD", "2500")
    assert tune_garbage_collector() == 2500
    assert gc.get_threshold() == (2500, 10, 10)


@pytest.mark.parametrize("value", ["0", "-5", "often"])
def test_zero_or_nonsense_leaves_the_collector_as_it_is(monkeypatch, gc_threshold, value):
    gc.set_threshold(700, 10, 10)
    monkeypatch.setenv("SLUICE_GC_THRESHOLD", value)
    assert tune_garbage_collector() is None
    assert gc.get_threshold() == (700, 10, 10)


def test_a_worker_raises_the_threshold_as_it_starts_and_merely_importing_the_tasks_does_not():
    program = (
        "import gc\n"
        "import django\n"
        "django.setup()\n"
        "import gitops.tasks\n"
        "from celery.signals import worker_init\n"
        "print(gc.get_threshold()[0])\n"
        "worker_init.send(sender=None)\n"
        "print(gc.get_threshold()[0])\n"
    )
    output = run_python(program, without=("SLUICE_GC_THRESHOLD",), DJANGO_SETTINGS_MODULE="sluice.settings")
    assert output.split() == ["700", "10000"]
