"""Passes run in the test's own process (not by a worker), so a test can patch what a pass calls."""

from __future__ import annotations

import pytest

from tests.gitrepo import configmap, policy


def passes_run_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is sent to the broker: every pass a test wants, it runs itself."""
    from gitops import schedule

    monkeypatch.setattr(schedule, "_send", lambda *args, **kwargs: "")


def applied_in_process(repo, make_namespaces, make_source):
    """Two namespaces holding v1, applied by a pass run here (not by a worker)."""
    from gitops import reconcile

    canary, rest = make_namespaces("canary", "rest")
    repo.write_all(
        {"sluice.yaml": policy([canary, rest]), "configmaps/app.yaml": configmap("app", {"v": "1"})}
    )
    repo.commit("v1")
    source = make_source()
    reconcile.source_sync(source.pk)
    return canary, rest, source
