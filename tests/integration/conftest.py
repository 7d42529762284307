from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from tests.gitrepo import GitRepo


@pytest.fixture
def repo(tmp_path) -> GitRepo:
    return GitRepo(tmp_path / "repo")


@pytest.fixture
def make_namespaces(cluster) -> Callable[..., list[str]]:
    """Fresh namespaces with a shared random prefix, so policies can name them."""

    def make(*suffixes: str) -> list[str]:
        prefix = f"t{uuid.uuid4().hex[:6]}"
        names = [f"{prefix}-{suffix}" for suffix in suffixes]
        for name in names:
            cluster.create_namespace(name)
        return names

    return make


@pytest.fixture
def make_source(repo: GitRepo, settings, tmp_path):
    from gitops import services

    settings.SLUICE_DATA_DIR = tmp_path / "data"

    def make(**options):
        options.setdefault("name", f"src-{uuid.uuid4().hex[:8]}")
        options.setdefault("url", repo.url)
        return services.add_source(**options)

    return make


@pytest.fixture
def sync(celery_worker):
    """Reconciles a source through the real worker and returns the task's result."""
    from gitops.tasks import sync_source

    def run(source, *, timeout: float = 120, **options) -> dict:
        return sync_source.delay(source.pk, **options).get(timeout=timeout)

    return run
