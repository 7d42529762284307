"""What one fetch may write is bounded (SLUICE_MAX_FETCH_BYTES), and what git may allocate meanwhile
(SLUICE_MAX_GIT_MEMORY), whatever a pusher sends.

Real repositories and real ``git``: the kernel stops git at the bound (``prlimit --fsize``), every
fetch keeps what arrived as one pack so that the bound holds for the whole fetch and not for each
object, the refusal names the setting, and nothing of the stopped fetch stays on disk. git's own
maintenance runs apart from the fetch, so a mirror grown past the bound a push at a time is still
repacked. A pack of a few hundred kilobytes whose objects expand to a hundred megabytes stops git at
its memory bound (``prlimit --data``), not the worker.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from gitops.fetch import GitMirror
from gitops.fetch.mirror import GC_PID_STALE_SECONDS, FetchOutOfMemory, FetchTooLarge
from gitops.fetch.refs import parse_revision
from tests.gitrepo import GitRepo

BOUND = 1024 * 1024
BLOB = 400 * 1024  # each blob alone is well under the bound; three together are over it


def random_blobs(repo: GitRepo, count: int, *, start: int = 0) -> None:
    for index in range(start, start + count):
        repo.write(f"blobs/{index}.bin", os.urandom(BLOB))  # random: no compression brings it under


def mirror_files(mirror: GitMirror) -> list[str]:
    objects = mirror.path / "objects"
    return sorted(str(path.relative_to(objects)) for path in objects.rglob("*") if path.is_file())


@pytest.fixture
def oversized(tmp_path) -> GitRepo:
    """A remote whose branch brings 1.2 MiB in three blobs: five objects, which git would otherwise
    unpack as loose objects, each under the bound."""
    repo = GitRepo(tmp_path / "repo")
    random_blobs(repo, 3)
    repo.commit("three blobs")
    return repo


def stopped_leaving_nothing(mirror: GitMirror, url: str, error: type[Exception], *said: str) -> None:
    """The branch's fetch is refused with ``error``, whose message names the branch and holds ``said``,
    and neither what git was writing nor the mirror's ref stays."""
    with mirror, pytest.raises(error) as refused:
        mirror.fetch(url, "main")
    for words in (*said, "branch 'main'"):
        assert words in str(refused.value), (words, str(refused.value))
    assert mirror_files(mirror) == [], "neither the stopped pack nor any loose object stays"
    assert not (mirror.path / "refs" / "sluice" / "heads" / "main").exists()


def test_a_fetch_past_the_bound_is_refused_and_leaves_nothing(oversized, tmp_path):
    mirror = GitMirror(tmp_path / "mirror.git", max_fetch_bytes=BOUND)
    stopped_leaving_nothing(mirror, oversized.url, FetchTooLarge, "SLUICE_MAX_FETCH_BYTES", "1,048,576 bytes")

    roomy = GitMirror(tmp_path / "mirror.git", max_fetch_bytes=4 * BOUND)
    with roomy:
        fetched = roomy.fetch(oversized.url, "main")
        assert fetched.commit == oversized.head()
        assert len(roomy.read_blobs(roomy.list_files(fetched.commit).values())) == 3


def test_a_preview_past_the_bound_is_refused_too(oversized, tmp_path):
    mirror = GitMirror(tmp_path / "mirror.git", max_fetch_bytes=BOUND)
    with (
        mirror,
        pytest.raises(FetchTooLarge),
        mirror.held_revision(oversized.url, parse_revision("refs/heads/main"), None, timeout=30),
    ):
        pytest.fail("the preview's fetch was not stopped")
    assert mirror_files(mirror) == []


def test_a_server_streaming_messages_past_the_bound_is_refused_as_such(tmp_path, monkeypatch):
    """The bound holds for git's stderr too (its file is git's, as the pack's): a server that streams
    `remote:` lines without end stopped git there, reported as an ordinary failure to read from the
    remote. An SSH server's stderr reaches git's as it is, so an `ssh` that only talks stands in for it."""
    chatty = tmp_path / "bin"
    chatty.mkdir()
    (chatty / "ssh").write_text('#!/bin/sh\nwhile :; do echo "remote: still counting objects" >&2; done\n')
    (chatty / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{chatty}:{os.environ['PATH']}")
    mirror = GitMirror(tmp_path / "mirror.git", max_fetch_bytes=BOUND)
    started = time.monotonic()
    with mirror, pytest.raises(FetchTooLarge) as refused:
        mirror.fetch("ssh://git@git.example.com/shop.git", "main", timeout=60)

    assert "1,048,576 bytes of the Git server's messages" in str(refused.value)
    assert "SLUICE_MAX_FETCH_BYTES" in str(refused.value)
    assert time.monotonic() - started < 30, "stopped at the bound, not at the timeout"
    assert mirror_files(mirror) == []


def test_no_bound_fetches_all(oversized, tmp_path):
    with GitMirror(tmp_path / "mirror.git", max_fetch_bytes=0) as mirror:
        assert mirror.fetch(oversized.url, "main").commit == oversized.head()


def test_a_mirror_grown_past_the_bound_a_push_at_a_time_is_still_repacked(tmp_path, monkeypatch):
    """Each fetch brings less than the bound; git's maintenance then writes one pack larger than it.
    Started by the fetch, maintenance would inherit the bound and fail on every run."""
    repo = GitRepo(tmp_path / "repo")
    mirror = GitMirror(tmp_path / "mirror.git", max_fetch_bytes=BOUND)
    with mirror:
        for push in range(3):
            random_blobs(repo, 1, start=push)
            repo.commit(f"push {push}")
            mirror.fetch(repo.url, "main")
        packs = sorted((mirror.path / "objects" / "pack").glob("*.pack"))
        assert len(packs) == 3, "each fetch keeps what it brought as one pack"

        (mirror.path / "config").write_text(
            (mirror.path / "config").read_text() + "[gc]\n\tautoPackLimit = 2\n\tautoDetach = false\n"
        )
        monkeypatch.setattr("gitops.fetch.mirror._maintenance_due", lambda: True)
        random_blobs(repo, 1, start=3)
        repo.commit("push 3")
        fetched = mirror.fetch(repo.url, "main")

        packs = sorted((mirror.path / "objects" / "pack").glob("*.pack"))
        assert len(packs) == 1, [pack.name for pack in packs]
        assert packs[0].stat().st_size > BOUND
        assert len(mirror.read_blobs(mirror.list_files(fetched.commit).values())) == 4


def leave_temporary_files(mirror: GitMirror) -> list[Path]:
    left = [mirror.path / "objects" / "pack" / "tmp_pack_Ab12Cd"]
    for path in left:
        path.write_bytes(b"\0" * 64)
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    return left


def test_the_sweep_waits_for_a_running_maintenance_but_not_for_a_dead_one(oversized, tmp_path):
    with GitMirror(tmp_path / "mirror.git", max_fetch_bytes=4 * BOUND) as mirror:
        mirror.fetch(oversized.url, "main")
        left = leave_temporary_files(mirror)
        gc_pid = mirror.path / "gc.pid"
        gc_pid.write_text("12345 host\n")

        assert mirror.sweep_temporary_objects(older_than=60) == 0
        assert all(path.exists() for path in left), "a running gc's files are its own"

        stale = time.time() - GC_PID_STALE_SECONDS - 60
        os.utime(gc_pid, (stale, stale))
        assert mirror.sweep_temporary_objects(older_than=60) == 1
        assert not any(path.exists() for path in left), "git ignores a gc.pid this old, and so does the sweep"


MEMORY_BOUND = 32 * 1024 * 1024
LARGE = 48 * 1024 * 1024  # past the memory bound, and far past it once a delta is resolved against it


def zeros_remote(tmp_path: Path, files: dict[str, bytes]) -> GitRepo:
    """A remote whose one pack holds ``files`` as git would compress and deltify them (a few hundred
    kilobytes for megabytes of zeros), so that a fetch reuses what the pack holds as it is."""
    repo = GitRepo(tmp_path / "repo")
    repo.write_all(dict(files))
    repo.commit("large files")
    subprocess.run(["git", f"--git-dir={repo.remote}", "repack", "-a", "-d", "-f", "-q"], check=True)
    packs = list((repo.remote / "objects" / "pack").glob("*.pack"))
    assert len(packs) == 1 and packs[0].stat().st_size < 1024 * 1024, "compressed: far under the byte bound"
    return repo


def test_a_fetch_whose_objects_expand_past_the_memory_bound_is_refused_and_leaves_nothing(tmp_path):
    """The second file is stored as a delta of the first: resolving it holds both, 96 MiB."""
    zeros = b"\0" * LARGE
    repo = zeros_remote(tmp_path, {"a.bin": zeros, "b.bin": zeros + b"x"})
    mirror = GitMirror(tmp_path / "mirror.git", max_git_memory=MEMORY_BOUND)
    stopped_leaving_nothing(
        mirror, repo.url, FetchOutOfMemory, "SLUICE_MAX_GIT_MEMORY", "33,554,432 bytes of git's memory"
    )

    with (
        mirror,
        pytest.raises(FetchOutOfMemory),
        mirror.held_revision(repo.url, parse_revision("refs/heads/main"), None, timeout=30),
    ):
        pytest.fail("the preview's fetch was not stopped")

    roomy = GitMirror(tmp_path / "roomy.git", max_git_memory=8 * MEMORY_BOUND)
    with roomy:
        assert roomy.fetch(repo.url, "main").commit == repo.head(), "the bound, nothing else, stopped it"


def test_a_large_file_is_streamed_to_disk_within_the_memory_bound(tmp_path):
    """git would hold a file of 48 MiB whole (its threshold is 512 MiB); bounded, it streams it, and the
    file reaches Sluice's own limits on what it reads, which name the file."""
    repo = zeros_remote(tmp_path, {"large.bin": b"\0" * LARGE})
    with GitMirror(tmp_path / "mirror.git", max_git_memory=MEMORY_BOUND) as mirror:
        fetched = mirror.fetch(repo.url, "main")
        assert fetched.commit == repo.head()
        assert list(mirror.list_files(fetched.commit)) == ["large.bin"]


def test_a_fetch_stopped_at_a_bound_spares_the_files_of_a_running_maintenance(tmp_path):
    """git's maintenance, detached by an earlier fetch, writes its pack outside the source's lock: a fetch
    stopped meanwhile removes nothing written since it began, which may be that pack."""
    zeros = b"\0" * LARGE
    repo = zeros_remote(tmp_path, {"a.bin": zeros, "b.bin": zeros + b"x"})
    with GitMirror(tmp_path / "mirror.git", max_git_memory=MEMORY_BOUND) as mirror:
        mirror._ensure_initialized()
        repacking = mirror.path / "objects" / "pack" / "tmp_pack_Repack"
        (mirror.path / "gc.pid").write_text("12345 host\n")

        def write_meanwhile(*args, **kwargs):
            repacking.write_bytes(b"\0" * 64)  # written while the fetch runs, as the repack's would be
            return real_run(*args, **kwargs)

        real_run = mirror._run_fetch
        mirror._run_fetch = write_meanwhile
        with pytest.raises(FetchOutOfMemory):
            mirror.fetch(repo.url, "main")
        assert repacking.exists(), "the running maintenance's pack is its own"
