"""Every revision of the malformed-input corpus, pushed and synced with `gitops sync NAME --wait`.

Each is refused by a real worker: the command exits non-zero and names the offending file, and
no ConfigMap of the source changes (their resourceVersions stay as they were). After the whole
corpus, a good revision applies.

The worker runs with limits lowered through its environment, as an administrator would set them:
the generated cases sit just past those limits, so the test pushes a few hundred files and a few
megabytes instead of 20,000 files and 64 MiB (the defaults are covered by the unit tests and the
benchmark), and it shows that the settings reach the worker.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time
import uuid

import pytest
from django.core.management import call_command

from gitops.desired.limits import SETTINGS, Limits
from tests.corpus import CONFIGMAP, Case, all_cases, baseline_revision

pytestmark = pytest.mark.django_db(transaction=True)

MiB = 1024 * 1024
LIMITS = Limits(
    max_file_bytes=3 * MiB // 2,  # above the apiserver's 1 MiB, so that case is still reached
    max_files=300,
    max_revision_bytes=4 * MiB,
    max_file_nodes=20_000,
    max_revision_nodes=60_000,
    max_aliases=100,
    max_depth=64,
    max_objects=2_000,
)


@pytest.fixture
def limited_worker(start_worker):
    """A worker with LIMITS in its environment, and `gitops sync` routed to it."""
    from gitops.celery import app

    queue = f"malformed-{uuid.uuid4().hex[:8]}"
    environment = {setting: str(getattr(LIMITS, name)) for name, setting in SETTINGS.items()}
    worker = start_worker(queues=queue, env_overrides=environment)
    previous = app.conf.task_routes
    route(app, {"gitops.sync_source": {"queue": queue}})
    yield worker
    route(app, previous)


def route(app, routes) -> None:
    app.conf.task_routes = routes
    app.amqp.flush_routes()
    # The router keeps the table it was built with, and an earlier test has built it.
    app.amqp.router = app.amqp.Router()


def lay_out(repo, files: dict[str, bytes]) -> None:
    """The work tree holds exactly ``files`` (Git's own directory aside)."""
    for entry in repo.work.iterdir():
        if entry.name == ".git":
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    repo.write_all(files)


def sync(name: str) -> tuple[int, str]:
    output = io.StringIO()
    try:
        call_command("gitops", "sync", name, "--wait", "--timeout", "120", stdout=output)
    except SystemExit as exited:
        return int(exited.code or 0), output.getvalue()
    return 0, output.getvalue()


def versions(cluster, namespaces: tuple[str, str]) -> dict[tuple[str, str], str]:
    return {
        (namespace, item["metadata"]["name"]): item["metadata"]["resourceVersion"]
        for namespace in namespaces
        for item in cluster.list_configmaps(namespace)
    }


def check(case: Case, code: int, output: str, before: dict, after: dict) -> str | None:
    """What is wrong with how the case was refused, if anything."""
    if code == 0:
        return f"{case.name}: accepted ({case.description})\n{output}"
    if case.file not in output:
        return f"{case.name}: the output does not name {case.file!r}\n{output[:2000]}"
    if after != before:
        return f"{case.name}: the cluster changed"
    return None


def test_the_tree_listing_gives_sizes_stays_in_the_read_paths_and_stops_at_its_limit(repo, tmp_path):
    from gitops.desired.revision import READ_PATHS
    from gitops.fetch import GitMirror, TreeFile

    repo.write_all(
        {
            "sluice.yaml": b"prune: true\n",
            "configmaps/a.yaml": b"x" * 3000,
            "configmaps/b.yaml": b"y",
            "configmaps-old/c.yaml": b"z",
            "docs/huge.bin": b"0" * 100_000,
        }
    )
    # Symlinks come first in the listing and are skipped: they must not count as files.
    for index in range(3):
        os.symlink("a.yaml", repo.work / "configmaps" / f"0-link-{index}.yaml")
    commit = repo.commit("tree")
    with GitMirror(tmp_path / "mirror.git") as mirror:
        mirror.fetch(repo.url, "main")

        listed = mirror.list_tree(commit, paths=READ_PATHS)
        cut = mirror.list_tree(commit, paths=READ_PATHS, max_entries=2)

    assert {path: entry.size for path, entry in listed.items()} == {
        "sluice.yaml": 12,
        "configmaps/a.yaml": 3000,
        "configmaps/b.yaml": 1,
    }
    assert isinstance(listed["sluice.yaml"], TreeFile)
    assert sorted(cut) == ["configmaps/a.yaml", "configmaps/b.yaml"]


def _plumbing(repo, *args: str, stdin: str = "") -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo.work, input=stdin, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.mark.timeout(60)
def test_a_tree_listing_a_million_symlinks_is_refused_after_a_bounded_read(repo, tmp_path):
    from gitops.desired.errors import RevisionRejected
    from gitops.fetch import GitMirror
    from gitops.fetch.mirror import MAX_SKIPPED_ENTRIES
    from gitops.fetch.revisions import _listing

    # Three trees that point at each other: 1,000 symlinks x 10 x 100 directories, a few KB pushed.
    link = _plumbing(repo, "hash-object", "-w", "--stdin", stdin="app.yaml")
    tree = _plumbing(repo, "mktree", stdin="".join(f"120000 blob {link}\tl{i}\n" for i in range(1000)))
    for fan_out in (10, 100):
        tree = _plumbing(repo, "mktree", stdin="".join(f"040000 tree {tree}\td{i}\n" for i in range(fan_out)))
    app = _plumbing(repo, "hash-object", "-w", "--stdin", stdin="apiVersion: v1\nkind: ConfigMap\n")
    configmaps = _plumbing(repo, "mktree", stdin=f"100644 blob {app}\tapp.yaml\n040000 tree {tree}\tlinks\n")
    root = _plumbing(repo, "mktree", stdin=f"040000 tree {configmaps}\tconfigmaps\n")
    commit = _plumbing(repo, "commit-tree", root, "-m", "a million symlinks")
    repo.git("push", "--quiet", "origin", f"{commit}:refs/heads/{repo.branch}")

    with GitMirror(tmp_path / "mirror.git") as mirror:
        mirror.fetch(repo.url, "main")
        started = time.monotonic()
        with pytest.raises(RevisionRejected) as refused:
            _listing(mirror, commit, "", Limits())
        elapsed = time.monotonic() - started

    (problem,) = refused.value.errors
    assert problem.file.startswith("configmaps/links/d"), problem
    assert f"more than {MAX_SKIPPED_ENTRIES:,} directories, symlinks and submodules" in problem.message
    # Stopped after 100,000 of the 1,000,000 entries, none of them kept.
    assert elapsed < 20, elapsed


def test_each_malformed_revision_is_refused_by_the_cli_and_the_next_good_one_applies(
    repo, make_namespaces, make_source, cluster, limited_worker
):
    from gitops.celery import app

    assert app.amqp.router.route({}, "gitops.sync_source")["queue"].name in limited_worker.queues
    namespaces = tuple(make_namespaces("a", "b"))
    lay_out(repo, baseline_revision(namespaces))
    repo.commit("baseline")
    # Generated cases target namespaces named ns-NNNN: the administrator allows them, so the limits speak.
    source = make_source(allowed_namespaces=["t*", "ns-*"])
    code, output = sync(source.name)
    assert code == 0, output
    before = versions(cluster, namespaces)
    assert {name for _, name in before} == {"app", "checkout"}

    cases = all_cases(LIMITS)
    problems, timings = [], []
    for case in cases:
        lay_out(repo, case.revision(namespaces))
        repo.commit(case.name)
        started = time.monotonic()
        code, output = sync(source.name)
        timings.append((time.monotonic() - started, case.name))
        if problem := check(case, code, output, before, versions(cluster, namespaces)):
            problems.append(problem)

    assert problems == [], f"{len(problems)} of {len(cases)} cases:\n" + "\n".join(problems)
    slowest = ", ".join(f"{name} {seconds:.2f}s" for seconds, name in sorted(timings, reverse=True)[:3])
    print(f"{len(cases)} cases refused; slowest syncs: {slowest}")

    good = baseline_revision(namespaces)
    good[CONFIGMAP] = good[CONFIGMAP].replace(b"LOG_LEVEL: info", b"LOG_LEVEL: debug")
    lay_out(repo, good)
    repo.commit("fixed")
    code, output = sync(source.name)
    assert code == 0, output
    for namespace in namespaces:
        assert cluster.get_configmap(namespace, "app")["data"]["LOG_LEVEL"] == "debug"


def test_a_commit_whose_message_is_megabytes_long_is_refused_and_the_next_one_applies(
    repo, make_namespaces, make_source, sync, cluster, tmp_path
):
    """A pusher writes the message: a commit object of several MB is refused from its size, before the
    worker reads it, with an error that says so; nothing is applied, and a commit on top applies."""
    from gitops.models import Source
    from tests.gitrepo import configmap, policy

    (namespace,) = make_namespaces("big")
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"V": "1"})})
    repo.commit("v1")
    source = make_source()
    assert sync(source)["outcome"] == "applied"

    repo.write("configmaps/app.yaml", configmap("app", {"V": "2"}))
    message = tmp_path / "message"
    message.write_text("v2\n\n" + "blah " * 1_000_000)  # 5 MB
    repo.git("add", "--all")
    repo.git("commit", "--quiet", "-F", str(message))
    repo.push()
    assert sync(source)["outcome"] == "failed"
    error = Source.objects.get(pk=source.pk).last_error
    assert f"commit {repo.head()} is 5,000," in error and "at most 1,048,576" in error, error
    assert (cluster.get_configmap(namespace, "app") or {}).get("data") == {"V": "1"}

    repo.write("configmaps/app.yaml", configmap("app", {"V": "3"}))
    repo.commit("v3")
    assert sync(source)["outcome"] == "applied"
    assert (cluster.get_configmap(namespace, "app") or {}).get("data") == {"V": "3"}
