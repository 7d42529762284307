"""The cap on malloc arenas that workers and the live cache set before their threads start."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gitops.memory import limit_malloc_arenas


def test_the_default_cap_is_two_arenas(monkeypatch):
    monkeypatch.delenv("SLUICE_MALLOC_ARENAS", raising=False)
    assert limit_malloc_arenas() == 2


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
    output = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert output.count("<heap nr=") <= 2
