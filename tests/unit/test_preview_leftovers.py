"""What previews leave in a source's mirror (gitops/fetch/mirror.py), with real git in a temporary directory.

A preview fetches its revision into a ref of its own under refs/sluice/previews/. A worker killed between
that fetch and the ref's deletion left the ref (and all it fetched) for good; the next preview or fetch
of the branch now deletes it once the time its name gives is past, and a preview still running on another
worker sharing the mirror keeps its ref and the files its fetch is writing.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gitops.errors import TemporaryError
from gitops.fetch import mirror as mirror_module
from gitops.fetch.git import GitInvocation
from gitops.fetch.mirror import FETCH_TIMEOUT, UNTIMED_PREVIEW_REF_SECONDS, GitMirror
from gitops.fetch.refs import PREVIEW_READ_SECONDS, PREVIEW_REF_PREFIX, parse_revision
from tests.gitrepo import GitRepo, SilentGitServer

PREVIEW_TIMEOUT = 30  # a preview's fetch, as SLUICE_PREVIEW_TIMEOUT_SECONDS bounds it


class Clock:
    """The mirror's clock, moved on at will: a preview's ref outlives the test otherwise."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def time(self) -> float:
        return time.time() + self.ahead

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    moved = Clock()
    monkeypatch.setattr(mirror_module, "time", moved)
    return moved


@pytest.fixture
def remote(tmp_path) -> GitRepo:
    """A remote whose main has one commit, and a pull request's head on top of it."""
    repo = GitRepo(tmp_path / "repo")
    repo.write("configmaps/app.yaml", {"kind": "ConfigMap", "data": {"V": "1"}})
    repo.commit("v1")
    repo.write("configmaps/app.yaml", {"kind": "ConfigMap", "data": {"V": "2"}})
    repo.commit("PR 7", push=False)
    repo.git("push", "--quiet", "origin", "HEAD:refs/pull/7/head")
    return repo


@pytest.fixture
def mirror(tmp_path) -> Iterator[GitMirror]:
    with GitMirror(tmp_path / "mirror.git", max_fetch_bytes=0) as opened:
        yield opened


def preview_refs(mirror: GitMirror) -> dict[str, str]:
    listed = subprocess.run(
        [
            "git",
            f"--git-dir={mirror.path}",
            "for-each-ref",
            "--format=%(refname) %(objectname)",
            PREVIEW_REF_PREFIX,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(line.split(" ", 1) for line in listed.stdout.splitlines())


def killed_preview(mirror: GitMirror, url: str, revision: str) -> tuple[Any, str]:
    """A preview whose worker died after its fetch: its context is entered and never left. The context is
    returned as well, so that the garbage collector does not leave it (which would delete the ref)."""
    held = mirror.held_revision(url, parse_revision(revision), None, timeout=PREVIEW_TIMEOUT)
    return held, held.__enter__()


def git_processes(monkeypatch) -> list[list[str]]:
    """Every git command line the mirror runs from now on."""
    seen: list[list[str]] = []
    real_run = mirror_module.run

    def recorded(invocation: GitInvocation, **options: Any) -> Any:
        seen.append(invocation.argv)
        return real_run(invocation, **options)

    monkeypatch.setattr(mirror_module, "run", recorded)
    return seen


# -- 1. a ref a killed preview left ------------------------------------------------------------------


def test_a_ref_a_killed_preview_left_goes_at_the_next_preview(remote, mirror, clock):
    killed, commit = killed_preview(mirror, remote.url, "refs/pull/7/head")
    assert list(preview_refs(mirror).values()) == [commit], "the worker died holding its ref"

    clock.ahead = PREVIEW_TIMEOUT + PREVIEW_READ_SECONDS + 1  # that preview's fetch and plan are long over
    with (
        GitMirror(mirror.path, max_fetch_bytes=0) as other_worker,
        other_worker.held_revision(
            remote.url, parse_revision("refs/heads/main"), None, timeout=PREVIEW_TIMEOUT
        ) as main,
    ):
        assert list(preview_refs(mirror).values()) == [main], "only this preview's own ref is left"
    assert preview_refs(mirror) == {}
    del killed


def test_a_ref_a_killed_preview_left_goes_at_the_next_fetch_of_the_branch(remote, mirror, clock):
    killed, _ = killed_preview(mirror, remote.url, "refs/pull/7/head")
    assert len(preview_refs(mirror)) == 1

    clock.ahead = PREVIEW_TIMEOUT + PREVIEW_READ_SECONDS + 1
    mirror.fetch(remote.url, "main")

    assert preview_refs(mirror) == {}
    del killed


def test_a_preview_running_on_another_worker_keeps_its_ref_while_it_reads(remote, mirror, clock):
    running, commit = killed_preview(mirror, remote.url, "refs/pull/7/head")  # still running, this time
    # Its fetch took all its time and it has been planning since, well within what its ref allows.
    clock.ahead = PREVIEW_TIMEOUT + PREVIEW_READ_SECONDS - 60
    with GitMirror(mirror.path, max_fetch_bytes=0) as other_worker:
        other_worker.fetch(remote.url, "main")
        with other_worker.held_revision(
            remote.url, parse_revision("refs/heads/main"), None, timeout=PREVIEW_TIMEOUT
        ):
            assert commit in preview_refs(mirror).values()
    assert list(preview_refs(mirror).values()) == [commit], "the running preview's ref is left alone"
    assert set(mirror.list_files(commit)) == {"configmaps/app.yaml"}, "and reads its revision"
    running.__exit__(None, None, None)  # it ends, and deletes its own ref
    assert preview_refs(mirror) == {}


def test_a_ref_of_an_older_sluice_without_times_goes_once_an_hour_old(remote, mirror, clock):
    commit = mirror.fetch(remote.url, "main").commit
    old, recent = (f"{PREVIEW_REF_PREFIX}{uuid.uuid4().hex}" for _ in range(2))
    for ref in (old, recent):
        subprocess.run(["git", f"--git-dir={mirror.path}", "update-ref", ref, commit], check=True)
    written = time.time() - UNTIMED_PREVIEW_REF_SECONDS - 60
    os.utime(mirror.path / old, (written, written))

    mirror.fetch(remote.url, "main")

    assert list(preview_refs(mirror)) == [recent]


def test_a_fetch_runs_no_more_git_while_no_preview_left_a_ref(remote, mirror, monkeypatch):
    mirror.fetch(remote.url, "main")
    seen = git_processes(monkeypatch)

    mirror.fetch(remote.url, "main")

    assert not [argv for argv in seen if "for-each-ref" in argv or "--stdin" in argv], seen


# -- 2. a preview's temporary files, and a fetch's ------------------------------------------------------


def temporary_file(mirror: GitMirror, name: str, *, age: float) -> Path:
    """A file git writes before moving it into place, last written ``age`` seconds ago."""
    path = mirror.path / "objects" / "pack" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 64)
    written = time.time() - age
    os.utime(path, (written, written))
    return path


def test_a_preview_that_times_out_spares_the_pack_a_fetch_of_the_branch_is_still_writing(remote, mirror):
    mirror.fetch(remote.url, "main")
    # The source's sync fetches, 90 s into its FETCH_TIMEOUT: git resolves the deltas of what arrived,
    # and has not written to its pack for that long.
    assert FETCH_TIMEOUT > 90
    branch_fetch = temporary_file(mirror, "tmp_pack_branch", age=90)
    abandoned = temporary_file(mirror, "tmp_pack_abandoned", age=3600)
    silent = SilentGitServer()
    try:
        with (
            pytest.raises(TemporaryError, match="timed out"),
            mirror.held_revision(silent.url, parse_revision("refs/pull/7/head"), None, timeout=1),
        ):
            pytest.fail("the silent server answered")
    finally:
        silent.close()

    assert branch_fetch.exists(), "a fetch of the branch may run for FETCH_TIMEOUT; its pack is its own"
    assert not abandoned.exists(), "what no fetch can still be writing is swept as before"


def test_a_fetch_that_times_out_spares_what_a_preview_on_another_worker_is_fetching(remote, mirror):
    mirror.fetch(remote.url, "main")
    abandoned = temporary_file(mirror, "tmp_pack_abandoned", age=3600)
    previewed = SilentGitServer()
    outcome: list[BaseException] = []

    def preview_on_another_worker() -> None:
        with GitMirror(mirror.path, max_fetch_bytes=0) as other_worker:
            try:
                with other_worker.held_revision(
                    previewed.url, parse_revision("refs/pull/7/head"), None, timeout=PREVIEW_TIMEOUT
                ):
                    pass
            except TemporaryError as failed:
                outcome.append(failed)

    preview = threading.Thread(target=preview_on_another_worker, daemon=True)
    preview.start()
    try:
        deadline = time.monotonic() + 10
        while not previewed.connections and time.monotonic() < deadline:
            time.sleep(0.02)
        assert previewed.connections, "the preview's git never connected"
        written_by_the_preview = temporary_file(mirror, "tmp_pack_preview", age=0)

        silent = SilentGitServer()
        try:
            with pytest.raises(TemporaryError, match="timed out"):
                mirror.fetch(silent.url, "main", timeout=1)  # swept what it wrote (older_than=0)
        finally:
            silent.close()

        assert written_by_the_preview.exists(), "the running preview's pack was deleted under it"
        assert not abandoned.exists()
    finally:
        previewed.close()  # its git sees the connection end, and the preview fails
        preview.join(timeout=PREVIEW_TIMEOUT + 5)
    assert not preview.is_alive() and outcome
    assert preview_refs(mirror) == {}, "the preview deleted its ref on its way out"


def test_refs_that_cannot_be_listed_spare_every_temporary_file(remote, mirror, monkeypatch):
    """Unlisted, the refs may name a live preview: its pack is spared, as every other file this time
    (a listing that failed was taken for no preview, and a fetch that timed out swept what one wrote)."""
    mirror.fetch(remote.url, "main")
    fresh = temporary_file(mirror, "tmp_pack_preview", age=5)
    monkeypatch.setattr(GitMirror, "_preview_refs", lambda self: None)
    assert mirror.sweep_temporary_objects(older_than=0) == 0
    assert fresh.exists()
    monkeypatch.undo()
    assert mirror.sweep_temporary_objects(older_than=0) == 1, "listed, no preview holds it"
    assert not fresh.exists()
