"""The clusters page's probes: one per cluster at a time, and its answer shared for a few seconds."""

from __future__ import annotations

import threading

import pytest

from gitops import cluster_admin


@pytest.fixture
def probes(monkeypatch):
    """``_probe`` counted, each call held until ``release`` is set."""
    calls: list[str] = []
    release = threading.Event()

    def probe(name: str) -> tuple[str, str, str]:
        calls.append(name)
        release.wait(timeout=30)
        return "https://silent.example", "", "timed out"

    monkeypatch.setattr(cluster_admin, "_probe", probe)
    monkeypatch.setattr(cluster_admin, "_probed", {})
    return calls, release


def test_requests_at_once_share_one_probe_of_a_silent_cluster(probes):
    """Any viewer may load the clusters page: a silent cluster's probe held a web thread for seconds per
    request, so a few requests in a loop could hold them all (the webhook's too)."""
    calls, release = probes
    answers: list[tuple[str, str, str]] = []
    threads = [
        threading.Thread(target=lambda: answers.append(cluster_admin._probe_shared("silent")))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(timeout=30)

    assert calls == ["silent"]
    assert answers == [("https://silent.example", "", "timed out")] * 4
    assert cluster_admin._probe_shared("other") == ("https://silent.example", "", "timed out")
    assert calls == ["silent", "other"], "each cluster is probed on its own"


def test_a_shared_answer_expires(probes, monkeypatch):
    calls, release = probes
    release.set()
    monkeypatch.setattr(cluster_admin, "PROBE_SHARED_SECONDS", 0.0)
    cluster_admin._probe_shared("silent")
    cluster_admin._probe_shared("silent")
    assert calls == ["silent", "silent"]


def test_while_a_probe_runs_other_requests_get_the_last_answer_at_once(probes, monkeypatch):
    """Waiting for a running probe held a web thread for its whole timeout: a burst after each expiry
    held them all again. Only a cluster's first probe is waited for."""
    calls, release = probes
    monkeypatch.setattr(cluster_admin, "PROBE_SHARED_SECONDS", 0.0)  # every answer is old at once
    release.set()
    cluster_admin._probe_shared("silent")
    release.clear()
    entered = threading.Event()
    probe = cluster_admin._probe

    def probe_held(name: str) -> tuple[str, str, str]:
        entered.set()
        return probe(name)

    monkeypatch.setattr(cluster_admin, "_probe", probe_held)
    probing = threading.Thread(target=cluster_admin._probe_shared, args=("silent",))
    probing.start()
    assert entered.wait(timeout=30), "the second probe started (holding the cluster's lock)"

    assert cluster_admin._probe_shared("silent") == ("https://silent.example", "", "timed out")
    assert len(calls) == 2, "answered from the last probe, not waiting for or starting another"
    release.set()
    probing.join(timeout=30)
    cluster_admin.probes_forget("silent")
    assert "silent" not in cluster_admin._probed
