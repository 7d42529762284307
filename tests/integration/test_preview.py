"""Preview of any revision (issue 14): ``gitops diff NAME --revision REF``, the API's ``revision`` parameter
and the dashboard's "Preview a revision", against a real Git remote that has pull- and merge-request refs,
the real cluster and a real worker. A preview applies nothing, records nothing and leaves the source's
followed branch where it was.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from gitops.fetch.mirror_sweep import mirror_path
from gitops.models import (
    ApplyIntent,
    Approval,
    Change,
    ManagedObject,
    Notification,
    Revision,
    Rollout,
    RolloutEvent,
    Source,
)
from tests.gitrepo import GitRepo, configmap, policy
from tests.integration.test_api import Api, issue_token
from tests.integration.test_browser import (
    browser,  # noqa: F401 - the module-scoped Chromium fixture
    log_in,
    screenshot,
)
from tests.workers import poll

pytestmark = pytest.mark.django_db(transaction=True)
FOLLOWED_REF = "refs/sluice/heads/main"
INVALID_PORT = 'configmaps/app.yaml:6: data.PORT: value must be a string, not a number; quote it: "8080"'


@dataclass
class Remote:
    """A source applied at v1, and a remote that has moved on in every way a preview can name."""

    source: Source
    repo: GitRepo
    targets: list[str]
    v1: str
    pull: str  # refs/pull/7/head (also tagged v2): app changed, extra added
    invalid: str  # refs/merge-requests/3/head: a number where a string must be
    other: str  # refs/heads/other: a branch nothing has fetched
    unfetched: str  # refs/heads/unfetched: likewise, never named by its full SHA
    v3: str = ""  # the followed branch, pushed after Sluice last fetched it


def branch_commit(repo: GitRepo, ref: str, files: dict[str, Any], message: str) -> str:
    """A commit on top of the followed branch's v1, pushed to ``ref`` only."""
    repo.git("checkout", "--quiet", "-B", "side", "main")
    repo.write_all(files)
    commit = repo.commit(message, push=False)
    repo.git("push", "--quiet", "origin", f"HEAD:{ref}")
    repo.git("checkout", "--quiet", "main")
    return commit


@pytest.fixture
def remote(repo, make_namespaces, make_source, sync) -> Remote:
    targets = make_namespaces("a", "b")
    repo.write_all({"sluice.yaml": policy(targets), "configmaps/app.yaml": configmap("app", {"V": "1"})})
    v1 = repo.commit("v1")
    source = make_source()
    assert sync(source)["outcome"] == "applied"
    pull = branch_commit(
        repo,
        "refs/pull/7/head",
        {
            "configmaps/app.yaml": configmap("app", {"V": "2", "NEW": "x"}),
            "configmaps/extra.yaml": configmap("extra", {"K": "v"}),
        },
        "PR 7: v2 and an extra ConfigMap",
    )
    repo.git("push", "--quiet", "origin", f"{pull}:refs/tags/v2")
    invalid = branch_commit(
        repo,
        "refs/merge-requests/3/head",
        {"configmaps/app.yaml": configmap("app", {"PORT": 8080})},  # type: ignore[dict-item]
        "MR 3: an unquoted port",
    )
    other = branch_commit(
        repo, "refs/heads/other", {"configmaps/app.yaml": configmap("app", {"V": "o"})}, "o"
    )
    unfetched = branch_commit(
        repo, "refs/heads/unfetched", {"configmaps/app.yaml": configmap("app", {"V": "u"})}, "u"
    )
    return Remote(Source.objects.get(pk=source.pk), repo, targets, v1, pull, invalid, other, unfetched)


def move_followed_branch(remote: Remote) -> None:
    remote.repo.write_all({"configmaps/app.yaml": configmap("app", {"V": "3"})})
    remote.v3 = remote.repo.commit("v3 on the followed branch")


def footprint(remote: Remote, core_api) -> dict[str, Any]:
    """Everything a preview must leave as it was: the cluster's objects and every record of the source."""
    configmaps = {
        (namespace, item.metadata.name): item.metadata.resource_version
        for namespace in remote.targets
        for item in core_api.list_namespaced_config_map(namespace).items
    }
    models = (Revision, Rollout, RolloutEvent, ApplyIntent, Change, ManagedObject, Notification, Approval)
    return {
        "configmaps": configmaps,
        "rows": {model.__name__: model.objects.count() for model in models},
        "source": Source.objects.filter(pk=remote.source.pk).values().get(),
    }


def mirror_refs(mirror: Path) -> dict[str, str]:
    listed = subprocess.run(
        ["git", f"--git-dir={mirror}", "for-each-ref", "--format=%(refname) %(objectname)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(line.split(" ", 1) for line in listed.stdout.splitlines())


@pytest.fixture
def gitops(manage, worker_env, tmp_path):
    """``manage.py gitops`` as a real process, with a data directory (and so a mirror) of its own."""
    data = tmp_path / "cli-data"
    env = {**worker_env, "SLUICE_DATA_DIR": str(data)}

    def run(*args: str, expect: int = 0) -> str:
        done = manage("gitops", *args, env=env, timeout=180)
        assert done.returncode == expect, (
            f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        )
        # Log lines go to stderr: --json output is stdout alone.
        return done.stdout if "--json" in args else done.stdout + done.stderr

    run.mirrors = data / "mirrors"  # type: ignore[attr-defined]
    return run


def planned_items(answer: dict[str, Any]) -> list[tuple[str, str, str, list[tuple[str, str, Any, Any]]]]:
    return sorted(
        (
            item["namespace"],
            item["name"],
            item["action"],
            sorted((d["op"], d["key"], d["old"], d["new"]) for d in item["diff"] if d["field"] == "data"),
        )
        for item in answer["items"]
    )


def expected_pull_request_plan(remote: Remote) -> list[tuple[str, str, str, list[tuple[str, str, Any, Any]]]]:
    return sorted(
        [
            *[
                (namespace, "app", "update", [("add", "NEW", None, "x"), ("change", "V", "1", "2")])
                for namespace in remote.targets
            ],
            *[(namespace, "extra", "create", [("add", "K", None, "v")]) for namespace in remote.targets],
        ]
    )


# -- the command line ------------------------------------------------------------------------------


def test_diff_revision_plans_a_pull_request_and_the_branch_ahead_and_changes_nothing(
    gitops, remote: Remote, core_api
):
    gitops("diff", remote.source.name)  # the CLI's own mirror now follows main at v1
    mirror = gitops.mirrors / mirror_path(remote.source).name
    assert mirror_refs(mirror) == {FOLLOWED_REF: remote.v1}
    move_followed_branch(remote)
    before = footprint(remote, core_api)

    answer = json.loads(gitops("diff", remote.source.name, "--revision", "refs/pull/7/head", "--json"))

    assert (answer["outcome"], answer["revision"], answer["commit"]) == (
        "planned",
        "refs/pull/7/head",
        remote.pull,
    )
    assert answer["message"] == "PR 7: v2 and an extra ConfigMap"
    assert answer["summary"] == {"update": 2, "create": 2}
    assert planned_items(answer) == expected_pull_request_plan(remote)
    assert answer["errors"] == []

    # The followed branch is ahead of Sluice too: previewing it shows v3 without fetching it for a sync.
    ahead = json.loads(gitops("diff", remote.source.name, "--revision", "refs/heads/main", "--json"))
    assert (ahead["outcome"], ahead["commit"]) == ("planned", remote.v3)
    assert {(item["namespace"], item["action"]) for item in ahead["items"]} == {
        (namespace, "update") for namespace in remote.targets
    }

    assert footprint(remote, core_api) == before, "a preview applies and records nothing"
    assert mirror_refs(mirror) == {FOLLOWED_REF: remote.v1}, "the followed branch did not move"


def test_diff_revision_of_an_invalid_merge_request_prints_its_errors_and_exits_1(
    gitops, remote: Remote, core_api
):
    before = footprint(remote, core_api)

    printed = gitops("diff", remote.source.name, "--revision", "refs/merge-requests/3/head", expect=1)

    assert printed.splitlines()[:2] == [
        f"{remote.source.name} @ refs/merge-requests/3/head ({remote.invalid[:12]}): rejected",
        f"  {INVALID_PORT}",
    ]
    as_json = json.loads(
        gitops("diff", remote.source.name, "--revision", "refs/merge-requests/3/head", "--json", expect=1)
    )
    assert (as_json["outcome"], as_json["commit"], as_json["items"]) == ("rejected", remote.invalid, [])
    assert as_json["errors"] == [
        {
            "file": "configmaps/app.yaml",
            "line": 6,
            "field": "data.PORT",
            "message": 'value must be a string, not a number; quote it: "8080"',
        }
    ]
    # A rejected preview is not a rejected revision of the source: no row, no notification.
    assert footprint(remote, core_api) == before


def test_diff_revision_takes_tags_and_commit_ids_and_refuses_what_it_cannot_name(gitops, remote: Remote):
    name = remote.source.name
    tagged = json.loads(gitops("diff", name, "--revision", "refs/tags/v2", "--json"))
    assert (tagged["outcome"], tagged["commit"]) == ("planned", remote.pull)

    # A full SHA the mirror lacks is fetched from the remote; once there, an abbreviation names it.
    full = json.loads(gitops("diff", name, "--revision", remote.other.upper(), "--json"))
    assert (full["outcome"], full["revision"], full["commit"]) == ("planned", remote.other, remote.other)
    short = json.loads(gitops("diff", name, "--revision", remote.other[:10], "--json"))
    assert (short["outcome"], short["commit"]) == ("planned", remote.other)

    unknown = gitops("diff", name, "--revision", remote.unfetched[:12], expect=1)
    assert f"commit {remote.unfetched[:12]} is not in Sluice's copy of the repository" in unknown
    assert "give its full SHA" in unknown
    missing = gitops("diff", name, "--revision", "refs/pull/99/head", expect=1)
    assert f"the remote {remote.repo.url} has no refs/pull/99/head" in missing
    missing_json = json.loads(gitops("diff", name, "--revision", "refs/pull/99/head", "--json", expect=1))
    assert missing_json["outcome"] == "not-found"
    bare = gitops("diff", name, "--revision", "main", expect=1)
    assert "use refs/heads/main for a branch or refs/tags/main for a tag" in bare
    refspec = gitops("diff", name, "--revision=+refs/heads/main:refs/sluice/heads/main", expect=1)
    assert "is not a revision Sluice can preview" in refspec

    mirror = gitops.mirrors / mirror_path(remote.source).name
    assert not [ref for ref in mirror_refs(mirror) if ref.startswith("refs/sluice/previews/")]
    assert FOLLOWED_REF not in mirror_refs(mirror), "only previews ran: nothing fetched the followed branch"


# -- the API, through the worker ----------------------------------------------------------------------


def test_the_plan_endpoint_previews_a_revision_on_the_worker(
    remote: Remote, people, celery_worker, worker_env, core_api
):
    viewer = Api(issue_token("vera"))
    name = remote.source.name
    move_followed_branch(remote)
    worker_mirror = Path(worker_env["SLUICE_DATA_DIR"]) / "mirrors" / mirror_path(remote.source).name
    assert mirror_refs(worker_mirror)[FOLLOWED_REF] == remote.v1
    last_plan = viewer.get(f"/sources/{name}/plan").json()
    before = footprint(remote, core_api)

    response = viewer.get(f"/sources/{name}/plan", revision="refs/pull/7/head")

    assert response.status_code == 200, response.content
    answer = response.json()
    assert (answer["source"], answer["revision"], answer["commit"], answer["valid"]) == (
        name,
        "refs/pull/7/head",
        remote.pull,
        True,
    )
    assert (answer["weight"], answer["items_total"], answer["errors"]) == (100, 4, [])
    assert planned_items(answer) == expected_pull_request_plan(remote)

    rejected = viewer.get(f"/sources/{name}/plan", revision="refs/merge-requests/3/head").json()
    assert (rejected["valid"], rejected["commit"], rejected["items"]) == (False, remote.invalid, [])
    assert [(e["file"], e["line"], e["field"]) for e in rejected["errors"]] == [
        ("configmaps/app.yaml", 6, "data.PORT")
    ]
    missing = viewer.get(f"/sources/{name}/plan", revision="refs/pull/99/head")
    assert missing.status_code == 404
    assert missing.json()["detail"] == f"the remote {remote.repo.url} has no refs/pull/99/head"
    refused = viewer.get(f"/sources/{name}/plan", revision="main")
    assert refused.status_code == 422
    assert "use refs/heads/main" in json.dumps(refused.json())

    assert viewer.get(f"/sources/{name}/plan").json() == last_plan, "the last reconcile's plan is unchanged"
    assert footprint(remote, core_api) == before
    refs = mirror_refs(worker_mirror)
    assert refs[FOLLOWED_REF] == remote.v1, "the worker's followed branch did not move"
    assert not [ref for ref in refs if ref.startswith("refs/sluice/previews/")]


# -- the dashboard ------------------------------------------------------------------------------------


def logged_in(username: str, **options: Any) -> Client:
    client = Client(**options)
    client.force_login(User.objects.get(username=username))
    return client


def preview_answer(client: Client, location: str) -> str:
    """Polls the preview page as htmx does until the worker's answer is on it."""

    def answered() -> str | None:
        fragment = client.get(location, headers={"HX-Request": "true"}).content.decode()
        return None if 'data-outcome="pending"' in fragment else fragment

    return poll(answered, timeout=60, interval=0.2, what="the preview's answer")


def test_a_viewer_previews_a_revision_from_the_dashboard(remote: Remote, people, celery_worker, core_api):
    name = remote.source.name
    viewer = logged_in("vera")
    source_page = viewer.get(f"/sources/{name}/").content.decode()
    assert 'id="preview-form"' in source_page and 'for="preview-revision"' in source_page
    before = footprint(remote, core_api)

    asked = viewer.post(f"/sources/{name}/preview/", {"revision": " refs/pull/7/head "})

    assert asked.status_code == 302
    location = asked["Location"]
    assert parse_qs(urlsplit(location).query)["revision"] == ["refs/pull/7/head"]
    fragment = preview_answer(viewer, location)
    assert 'data-outcome="planned"' in fragment
    assert remote.pull[:12] in fragment
    assert "Applying it now would change 4 objects: 2 update, 2 create." in fragment
    page = viewer.get(location).content.decode()
    assert 'id="preview-plan"' in page and f"{remote.targets[0]}/extra" in page

    invalid = viewer.post(f"/sources/{name}/preview/", {"revision": "refs/merge-requests/3/head"})
    rejected = preview_answer(viewer, invalid["Location"])
    assert 'data-outcome="rejected"' in rejected
    assert INVALID_PORT.replace('"', "&quot;") in rejected

    refused = viewer.post(f"/sources/{name}/preview/", {"revision": "main"})
    assert refused.status_code == 200  # the form again, its error next to the field, nothing queued
    body = refused.content.decode()
    assert 'aria-invalid="true"' in body and 'id="preview-error"' in body and "use refs/heads/main" in body
    assert 'value="main"' in body
    assert footprint(remote, core_api) == before


def test_preview_needs_a_login_a_role_csrf_and_a_ticket_for_this_source(
    remote: Remote, people, make_source, celery_worker
):
    name = remote.source.name
    anonymous = Client().post(f"/sources/{name}/preview/", {"revision": "refs/pull/7/head"})
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]
    User.objects.create_user("nemo", password="x").groups.clear()
    assert (
        logged_in("nemo").post(f"/sources/{name}/preview/", {"revision": "refs/pull/7/head"}).status_code
        == 403
    )

    csrf_checked = logged_in("vera", enforce_csrf_checks=True)
    assert csrf_checked.post(f"/sources/{name}/preview/", {"revision": "refs/pull/7/head"}).status_code == 403

    # A ticket names its source: another source's page does not show its answer.
    viewer = logged_in("vera")
    ticket = parse_qs(
        urlsplit(viewer.post(f"/sources/{name}/preview/", {"revision": "refs/pull/7/head"})["Location"]).query
    )
    elsewhere = make_source(name="elsewhere")
    foreign = viewer.get(f"/sources/{elsewhere.name}/preview/", {"task": ticket["task"][0]}).content.decode()
    assert 'data-outcome="invalid-ticket"' in foreign
    forged = viewer.get(f"/sources/{name}/preview/", {"task": ticket["task"][0][:-2] + "xx"}).content.decode()
    assert 'data-outcome="invalid-ticket"' in forged
    assert preview_answer(viewer, f"/sources/{name}/preview/?task={ticket['task'][0]}")


# -- in Chromium ----------------------------------------------------------------------------------------


@pytest.fixture
def page(browser, live_server):  # noqa: F811 - test_browser's module-scoped Chromium
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    yield opened
    context.close()


def test_a_viewer_previews_a_pull_request_in_the_browser_with_the_keyboard(
    page, remote: Remote, people, celery_worker, core_api
):
    log_in(page, "vera")
    page.goto(f"/sources/{remote.source.name}/")
    before = footprint(remote, core_api)

    field = page.get_by_label("Ref or commit")
    field.fill("refs/pull/7/head")
    field.press("Enter")  # the form submits from the keyboard

    page.wait_for_selector('#preview-result[data-outcome="planned"]', timeout=60_000)
    assert page.locator("#preview-commit").inner_text().startswith(f"refs/pull/7/head is {remote.pull[:12]}")
    assert (
        page.locator("#preview-summary")
        .inner_text()
        .startswith("Applying it now would change 4 objects: 2 update, 2 create.")
    )
    headings = page.locator("#preview-plan .plan-item h3").all_inner_texts()
    cluster = settings.SLUICE_CLUSTER_NAME  # named as the source page names a plan's objects
    assert sorted(headings) == sorted(
        f"{action} ConfigMap {cluster}/{namespace}/{name} (configmaps/{name}.yaml)"
        for namespace in remote.targets
        for action, name in (("update", "app"), ("create", "extra"))
    )
    screenshot(page, "preview-pull-request")

    field = page.get_by_label("Ref or commit")
    field.fill("refs/merge-requests/3/head")
    page.get_by_role("button", name="Preview").click()
    page.wait_for_selector('#preview-result[data-outcome="rejected"]', timeout=60_000)
    assert page.locator("#preview-errors li").all_inner_texts() == [INVALID_PORT]

    page.get_by_label("Ref or commit").fill("main")
    page.get_by_role("button", name="Preview").click()
    error = page.locator("#preview-error")
    assert "use refs/heads/main for a branch" in error.inner_text()
    assert page.get_by_label("Ref or commit").get_attribute("aria-invalid") == "true"
    assert page.get_by_label("Ref or commit").input_value() == "main"

    assert footprint(remote, core_api) == before, "previews in the browser apply nothing"


def test_one_person_has_at_most_so_many_previews_on_the_workers(
    remote: Remote, people, celery_worker, settings
):
    """Any role may preview, and each preview costs the workers that reconcile a fetch and a whole plan:
    a person with SLUICE_PREVIEWS_PER_USER previews still on the workers is told to wait (429, with
    Retry-After), others are not, and a worker gives its slot back as soon as it answers."""
    from gitops import schedule
    from gitops.celery import redis_client

    settings.SLUICE_PREVIEWS_PER_USER = 1
    slots = redis_client()
    name = remote.source.name
    try:
        schedule._preview_slot_take("vera", "a-preview-still-running")  # as a worker would hold it
        viewer = Api(issue_token("vera"))
        refused = viewer.get(f"/sources/{name}/plan", revision="refs/pull/7/head")
        assert refused.status_code == 429, refused.content
        assert "vera already has 1 preview(s) on the workers" in refused.json()["detail"]
        assert 0 < int(refused["Retry-After"]) <= schedule.preview_slot_seconds() + 1
        page = logged_in("vera").post(f"/sources/{name}/preview/", {"revision": "refs/pull/7/head"})
        assert page.status_code == 429
        assert "vera already has 1 preview(s)" in page.content.decode()
        assert slots.zcard("sluice:previews:vera") == 1, "a refused preview holds no slot"

        # Someone else previews meanwhile, and the worker frees their slot when it answers.
        answered = Api(issue_token("otto")).get(f"/sources/{name}/plan", revision="refs/pull/7/head")
        assert answered.status_code == 200, answered.content
        assert slots.zcard("sluice:previews:otto") == 0

        schedule.preview_slot_release("vera", "a-preview-still-running")
        assert viewer.get(f"/sources/{name}/plan", revision="refs/pull/7/head").status_code == 200
        assert slots.zcard("sluice:previews:vera") == 0
    finally:
        slots.delete("sluice:previews:vera", "sluice:previews:otto", "sluice:previews-all")


def test_everyone_together_has_at_most_so_many_previews_on_the_workers(
    remote: Remote, people, celery_worker, settings
):
    """Per-person caps alone let many people fill the reconciling workers' queue with previews:
    SLUICE_PREVIEWS_TOTAL caps them together. One more preview, from anyone, is told to wait (429), and
    the slot the worker gives back lets the next one through."""
    from gitops import schedule
    from gitops.celery import redis_client

    settings.SLUICE_PREVIEWS_PER_USER, settings.SLUICE_PREVIEWS_TOTAL = 1, 2
    slots = redis_client()
    name = remote.source.name
    try:
        schedule._preview_slot_take("ada", "ada-still-running")  # as workers would hold them
        schedule._preview_slot_take("pia", "pia-still-running")
        refused = Api(issue_token("vera")).get(f"/sources/{name}/plan", revision="refs/pull/7/head")
        assert refused.status_code == 429, refused.content
        assert "everyone together already has 2 preview(s) on the workers" in refused.json()["detail"]
        assert 0 < int(refused["Retry-After"]) <= schedule.preview_slot_seconds() + 1
        page = logged_in("vera").post(f"/sources/{name}/preview/", {"revision": "refs/pull/7/head"})
        assert page.status_code == 429
        assert "everyone together already has 2" in page.content.decode()
        assert slots.zcard("sluice:previews-all") == 2, "a refused preview holds no slot"
        assert slots.zcard("sluice:previews:vera") == 0

        schedule.preview_slot_release("pia", "pia-still-running")
        answered = Api(issue_token("vera")).get(f"/sources/{name}/plan", revision="refs/pull/7/head")
        assert answered.status_code == 200, answered.content
        assert slots.zcard("sluice:previews-all") == 1, "the worker gave vera's slot back when it answered"
        assert slots.zcard("sluice:previews:vera") == 0
    finally:
        slots.delete(
            "sluice:previews:ada", "sluice:previews:pia", "sluice:previews:vera", "sluice:previews-all"
        )


def test_a_preview_the_git_host_does_not_answer_exits_2_not_1(gitops, make_source):
    """1 says the revision is wrong; a Git host that does not answer says nothing of the change, and a
    pull request's check retries it rather than marking the change broken."""
    from tests.clusters import closed_port

    source = make_source(url=f"http://127.0.0.1:{closed_port()}/shop.git")
    printed = gitops("diff", source.name, "--revision", "refs/heads/main", expect=2)
    assert f"{source.name} @ refs/heads/main:" in printed
    answer = json.loads(gitops("diff", source.name, "--revision", "refs/heads/main", "--json", expect=2))
    assert answer["outcome"] == "unavailable"
