"""Dashboard pages for every role: login, permissions on actions, CSRF, audit rows, bounded queries."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from gitops.models import Approval, Change, Revision, Rollout, RolloutEvent, Source
from tests.rollouts import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def client_for(user=None, *, enforce_csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=enforce_csrf)
    if user is not None:
        client.force_login(user)
    return client


def pages(rollout: Rollout) -> list[str]:
    return [
        reverse("dashboard:overview"),
        reverse("dashboard:source", args=[rollout.source.name]),
        reverse("dashboard:rollout", args=[rollout.pk]),
        reverse("dashboard:rollouts"),
        reverse("dashboard:changes"),
    ]


def test_anonymous_users_are_sent_to_login_except_for_health(paused_rollout):
    anonymous = client_for()
    for page in pages(paused_rollout):
        response = anonymous.get(page)
        assert response.status_code == 302, page
        assert response["Location"].startswith("/login/?next=")
    assert anonymous.get(reverse("dashboard:healthz")).status_code == 200
    assert (
        anonymous.post(reverse("dashboard:rollout-action", args=[paused_rollout.pk, "promote"])).status_code
        == 302
    )
    assert paused_rollout.approvals.count() == 0


def test_every_role_reads_every_page_and_sees_only_its_buttons(paused_rollout, people):
    for role, user in people.items():
        client = client_for(user)
        for page in pages(paused_rollout):
            assert client.get(page).status_code == 200, (role, page)
    viewer_page = (
        client_for(people["viewer"]).get(reverse("dashboard:rollout", args=[paused_rollout.pk])).content
    )
    approver_page = (
        client_for(people["approver"]).get(reverse("dashboard:rollout", args=[paused_rollout.pk])).content
    )
    assert b'id="promote"' not in viewer_page
    assert b'id="abort"' not in viewer_page
    assert b'id="promote"' in approver_page
    assert b'id="abort"' in approver_page


def test_pages_show_state_commits_plans_and_timeline(paused_rollout, people):
    client = client_for(people["viewer"])
    source = paused_rollout.source
    commit = paused_rollout.revision.commit

    overview = client.get(reverse("dashboard:overview")).content.decode()
    assert f'data-source="{source.name}"' in overview
    assert "state-paused" in overview
    assert f'href="https://git.example.com/shop/commit/{commit}"' in overview
    assert "waiting for approval" in overview

    source_page = client.get(reverse("dashboard:source", args=[source.name])).content.decode()
    assert "held" in source_page, "targets a later step reaches are shown in the plan"
    assert "+world" not in source_page or "GREETING" in source_page
    assert 'id="sync-now"' not in source_page, "a viewer gets no sync button"

    rollout_page = client.get(reverse("dashboard:rollout", args=[paused_rollout.pk])).content.decode()
    assert 'data-phase="Paused"' in rollout_page
    assert "setWeight 50" in rollout_page
    assert 'id="timeline"' in rollout_page
    assert "waiting for 1 approval" in rollout_page


def test_a_viewer_gets_403_on_every_action(paused_rollout, people):
    client = client_for(people["viewer"])
    for action in ("promote", "promote-full", "abort", "retry"):
        response = client.post(reverse("dashboard:rollout-action", args=[paused_rollout.pk, action]))
        assert response.status_code == 403, action
    assert client.post(reverse("dashboard:source-sync", args=[paused_rollout.source.name])).status_code == 403
    assert not Approval.objects.exists()
    assert Rollout.objects.get(pk=paused_rollout.pk).abort_requested_by == ""


def test_an_approver_promotes_and_the_audit_trail_names_them(paused_rollout, people, cluster):
    client = client_for(people["approver"])
    response = client.post(
        reverse("dashboard:rollout-action", args=[paused_rollout.pk, "promote"]),
        {"comment": "lgtm from the UI"},
    )
    assert response.status_code == 302
    approval = Approval.objects.get(rollout=paused_rollout)
    assert (approval.username, approval.comment) == ("otto", "lgtm from the UI")
    assert RolloutEvent.objects.filter(rollout=paused_rollout, kind="promoted", actor="otto").exists()
    done = wait_for(paused_rollout.source, phase="Completed")
    assert set(Change.objects.filter(rollout=done, step_index=2).values_list("actor", flat=True)) == {"otto"}


def test_an_approver_aborts_from_the_page(paused_rollout, people):
    client = client_for(people["approver"])
    client.post(reverse("dashboard:rollout-action", args=[paused_rollout.pk, "abort"]), {"comment": "bad"})
    wait_for(paused_rollout.source, phase="Aborted")
    assert set(
        Change.objects.filter(rollout=paused_rollout, action="rollback").values_list("actor", flat=True)
    ) == {"otto"}
    assert b'id="retry"' in client.get(reverse("dashboard:rollout", args=[paused_rollout.pk])).content


def test_posts_without_a_csrf_token_are_refused(paused_rollout, people):
    client = client_for(people["approver"], enforce_csrf=True)
    response = client.post(reverse("dashboard:rollout-action", args=[paused_rollout.pk, "promote"]))
    assert response.status_code == 403
    assert not Approval.objects.exists()


def test_the_change_log_csv_quotes_an_actor_a_spreadsheet_would_run_as_a_formula(
    repo, make_namespaces, make_source, sync, people
):
    """An actor is free text (a username may start with "@" or "+", `--by` anything): the Flags page's
    export quoted such cells, the change log's did not."""
    from tests.gitrepo import configmap, policy

    (namespace,) = make_namespaces("app")
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"V": "1"})})
    repo.commit("v1")
    source = make_source()
    assert sync(source, actor="=HYPERLINK(1)")["outcome"] == "applied"
    exported = client_for(people["viewer"]).get(
        reverse("dashboard:changes"), {"source": source.name, "format": "csv"}
    )
    rows = list(csv.DictReader(io.StringIO(b"".join(exported.streaming_content).decode())))
    assert [row["actor"] for row in rows] == ["'=HYPERLINK(1)"]


def test_the_change_log_filters_paginates_and_exports(paused_rollout, people, settings):
    client = client_for(people["viewer"])
    source = paused_rollout.source
    all_rows = Change.objects.filter(source=source).count()
    assert all_rows == 3
    filtered = client.get(reverse("dashboard:changes"), {"source": source.name, "action": "create"})
    assert filtered.content.decode().count("<tr><td>") == 2
    by_commit = client.get(reverse("dashboard:changes"), {"commit": paused_rollout.revision.commit[:10]})
    assert by_commit.content.decode().count("<tr><td>") == 1

    exported = client.get(reverse("dashboard:changes"), {"source": source.name, "format": "csv"})
    rows = list(csv.DictReader(io.StringIO(b"".join(exported.streaming_content).decode())))
    assert len(rows) == 3
    assert {"at", "commit", "namespace", "name", "action", "actor"} <= set(rows[0])
    as_json = json.loads(
        b"".join(client.get(reverse("dashboard:changes"), {"format": "json"}).streaming_content)
    )
    assert len(as_json) == 3

    import dashboard.views

    dashboard.views.PAGE_SIZE, saved = 2, dashboard.views.PAGE_SIZE
    try:
        first = client.get(reverse("dashboard:changes")).content.decode()
        assert first.count("<tr><td>") == 2
        older = first.split('id="older" href="?')[1].split('"')[0].replace("&amp;", "&")
        second = client.get(reverse("dashboard:changes") + "?" + older).content.decode()
        assert second.count("<tr><td>") == 1
        assert 'id="older"' not in second
    finally:
        dashboard.views.PAGE_SIZE = saved


def test_no_secret_reaches_a_page(paused_rollout, people):
    # Even a URL stored with a password in it (add-source refuses those) is shown redacted.
    Source.objects.filter(pk=paused_rollout.source.pk).update(
        url="https://deploy:hunter2@git.example.com/shop.git"
    )
    client = client_for(people["approver"])
    for page in pages(paused_rollout):
        assert b"hunter2" not in client.get(page).content, page
    assert b"https://deploy:***@git.example.com/shop.git" in client.get(pages(paused_rollout)[1]).content


def test_messages_quoting_a_secret_are_shown_redacted_as_the_api_shows_them(paused_rollout, people):
    # Errors quote what they were given: a Git URL, an analysis URL a repository wrote, a token.
    leaked = "fetch failed for https://deploy:hunter2@git.example.com/shop.git (token=s3cr3t)"
    Source.objects.filter(pk=paused_rollout.source.pk).update(last_error=leaked)
    Rollout.objects.filter(pk=paused_rollout.pk).update(message=leaked)
    RolloutEvent.objects.create(rollout=paused_rollout, kind="failed", message=leaked)
    revision = paused_rollout.revision
    revision.errors = [{"file": "sluice.yaml", "line": 3, "field": "rollout", "message": leaked}]
    revision.save(update_fields=["errors"])
    client = client_for(people["viewer"])
    for page in pages(paused_rollout):
        content = client.get(page).content
        assert b"hunter2" not in content and b"s3cr3t" not in content, page
    assert b"https://deploy:***@git.example.com" in client.get(pages(paused_rollout)[1]).content


def test_a_refusal_quoting_a_secret_is_logged_shown_and_exported_without_it(paused_rollout, people):
    """A cluster's refusal quotes its admission policy's words, which may hold a URL with credentials
    or a token: the change log keeps it redacted, and entries logged before that are shown redacted on
    the pages, in the exports and in the API."""
    from django.utils import timezone

    from gitops.models import ApplyIntent

    leaked = "denied: ask https://deploy:hunter2@vault.example.com/ (token=s3cr3t)"

    def another_intent() -> ApplyIntent:
        intent = ApplyIntent.objects.filter(rollout=paused_rollout).first()
        intent.pk, intent.status = None, ApplyIntent.Status.PENDING
        intent.save()
        return intent

    refused = another_intent()
    Change.log_intents([refused.pk], {refused.pk: leaked}, at=timezone.now())
    stored = Change.objects.get(intent=refused).error
    assert "hunter2" not in stored and "s3cr3t" not in stored, stored
    assert "https://deploy:***@vault.example.com/" in stored
    older = another_intent()  # as logged before refusals were redacted
    Change.objects.create(
        intent=older,
        source=paused_rollout.source,
        rollout=paused_rollout,
        commit=older.commit,
        namespace=older.namespace,
        name=older.name,
        action="update",
        actor="sluice",
        result="error",
        error=leaked,
    )

    client = client_for(people["viewer"])
    changes = reverse("dashboard:changes")
    for asked in [{}, {"format": "csv"}, {"format": "json"}, {"format": "json", "bodies": "1"}]:
        response = client.get(changes, asked)
        content = b"".join(response.streaming_content) if response.streaming else response.content
        assert b"hunter2" not in content and b"s3cr3t" not in content, asked
        assert b"vault.example.com" in content, asked
    api = client.get("/api/changes", {"source": paused_rollout.source.name}).content
    assert b"hunter2" not in api and b"s3cr3t" not in api and b"vault.example.com" in api


def test_pages_run_a_bounded_number_of_queries(paused_rollout, people, make_source):
    client = client_for(people["viewer"])

    def count_queries() -> dict[str, int]:
        counts = {}
        for page in pages(paused_rollout):
            with CaptureQueriesContext(connection) as queries:
                assert client.get(page).status_code == 200
            counts[page] = len(queries)
        return counts

    few = count_queries()
    for index in range(20):
        make_source(name=f"extra-{index}")
    many = count_queries()

    assert few == many, "the number of queries must not grow with the number of sources"
    assert max(many.values()) <= 20, many


def test_the_rollouts_page_lists_every_sources_rollouts_by_phase_in_bounded_queries(paused_rollout, people):
    """An on-call approver's first page: what waits for an approval across sources, what failed. Each
    rollout had its source's page only (and the API)."""
    other = Source.objects.create(name="other-shop", url="file:///nowhere.git")
    revision = Revision.objects.create(source=other, commit="d" * 40, outcome="valid")
    failed = Rollout.objects.create(
        source=other,
        revision=revision,
        phase="Failed",
        steps=[{"setWeight": 100}],
        message="step 0 failed: x",
    )
    client = client_for(people["viewer"])
    page = reverse("dashboard:rollouts")

    def shown(**query) -> list[tuple[str, str]]:
        html = client.get(page, query).content.decode()
        return re.findall(r'<tr data-phase="(\w+)"><td><a href="/rollouts/(\d+)/', html)

    everything = shown()
    assert ("Failed", str(failed.pk)) in everything and ("Paused", str(paused_rollout.pk)) in everything
    assert shown(phase="Paused") == [("Paused", str(paused_rollout.pk))]
    assert shown(phase="active") == [("Paused", str(paused_rollout.pk))]
    assert shown(phase="Failed", source="other-shop") == [("Failed", str(failed.pk))]
    assert shown(phase="nonsense") == everything, "an unknown phase filters nothing"
    paused_row = client.get(page, {"phase": "Paused"}).content.decode()
    assert "approval (0/1)" in paused_row, "the approvals the gate counts, of those it needs"

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(page).status_code == 200
        return len(captured)

    # One rollout whose gate counts approvals strictly: their count is one query for the page.
    Rollout.objects.create(
        source=other, revision=revision, phase="Paused", waiting_for="approval", steps=[{"pause": {}}],
        forbid_self_approval=True,
    )  # fmt: skip
    few = queries()
    for index in range(30):
        Rollout.objects.create(
            source=other, revision=revision, phase="Paused", waiting_for="approval",
            steps=[{"pause": {}}], forbid_self_approval=index % 2 == 0,
        )  # fmt: skip
    assert queries() == few, "the page's queries do not grow with its rollouts"
    older = client.get(page, {"before": str(failed.pk + 1)}).content.decode()
    assert f'href="/rollouts/{failed.pk}/"' in older
    # A deleted source's rollouts leave the page with it (its link was a 404, or a new source's page).
    Source.all_objects.filter(pk=other.pk).update(deleted_at=timezone.now())
    assert shown(phase="Failed") == []


def test_a_new_account_is_a_viewer_by_default(paused_rollout):
    from django.contrib.auth.models import User

    newcomer = User.objects.create_user("newcomer", password="x")
    client = client_for(User.objects.get(pk=newcomer.pk))
    assert client.get(reverse("dashboard:overview")).status_code == 200
    assert (
        client.post(reverse("dashboard:rollout-action", args=[paused_rollout.pk, "promote"])).status_code
        == 403
    )


def distinct_objects(rollout: Rollout) -> int:
    entries = Change.objects.filter(rollout=rollout)
    return entries.values("cluster", "namespace", "kind", "name").distinct().count()


def test_the_change_log_lists_one_rollouts_entries_where_its_page_links(people, make_source):
    """The rollout page's link listed every entry of its commit (before 2026-12-07): a retry's, another
    rollout's of the same commit, but not its rollback's and heals', which name other commits."""
    from tests import history

    source = make_source()
    first = history.rollout(source, phase=Rollout.Phase.FAILED)
    history.changes(first, 60)
    retried = Rollout.objects.create(source=source, revision=first.revision, phase=Rollout.Phase.ABORTED)
    history.changes(retried, 3)
    # Its rollback's entries name the commit each target holds again, not the rollout's.
    history.changes(retried, 2, action=Change.Action.ROLLBACK, commit="b" * 40)
    client = client_for(people["viewer"])

    def rows_listed(**query: object) -> int:
        listed = client.get(reverse("dashboard:changes"), query).content.decode()
        return listed.split("<tbody>", 1)[1].split("</tbody>", 1)[0].count("<tr>")

    assert rows_listed(rollout=retried.pk) == 5
    assert rows_listed(commit=retried.revision.commit) == 50, "a page of both rollouts' entries"
    assert client.get(reverse("dashboard:changes"), {"rollout": "x"}).status_code == 400


def test_a_rollout_page_reports_every_object_it_changed_without_counting_the_log(people, make_source):
    """The total comes from the count the database keeps as it logs changes, never from counting
    the rollout's entries on every view; it is exact however the entries arrive."""
    import importlib

    from gitops.models import RolloutObjectCount
    from gitops.selectors import ROLLOUT_TARGETS_SHOWN
    from tests import history

    source = make_source()
    rollout = history.rollout(source, phase=Rollout.Phase.PAUSED)
    history.changes(rollout, ROLLOUT_TARGETS_SHOWN + 3)
    history.changes(rollout, 2)  # the same objects again, as a later step logs them
    history.changes(rollout, 2, first=ROLLOUT_TARGETS_SHOWN + 3)  # and two new ones
    other = history.rollout(source)
    history.changes(other, 4)  # the same names in another rollout are that rollout's objects
    expected = ROLLOUT_TARGETS_SHOWN + 5
    assert distinct_objects(rollout) == expected

    client = client_for(people["viewer"])
    with CaptureQueriesContext(connection) as queries:
        page = client.get(reverse("dashboard:rollout", args=[rollout.pk])).content.decode()
    assert f"Showing {ROLLOUT_TARGETS_SHOWN} of {expected} objects" in page
    targets = page.split('id="targets"', 1)[1].split("</table>", 1)[0]
    assert targets.count("<td>ConfigMap</td>") == ROLLOUT_TARGETS_SHOWN
    statements = [query["sql"] for query in queries.captured_queries]
    counted = [sql for sql in statements if "COUNT(" in sql.upper() and '"gitops_change"' in sql]
    assert counted == [], "the page counts nothing in the change log"
    api = client.get(f"/api/rollouts/{rollout.pk}").json()
    assert (api["targets_total"], len(api["targets"])) == (expected, ROLLOUT_TARGETS_SHOWN)
    other_page = client.get(reverse("dashboard:rollout", args=[other.pk])).content.decode()
    assert other_page.count("<td>ConfigMap</td>") == 4
    assert "all changes of this rollout" not in other_page, "a page that lists every object says no more"
    # The link lists this rollout's entries, not every entry of its commit (another rollout's, a retry's,
    # were in it; its rollback's and heals', which name other commits, were not: before 2026-12-07).
    link = f'href="{reverse("dashboard:changes")}?rollout={rollout.pk}">all changes of this rollout</a>'
    assert link in page

    # The migration's backfill counts the same from the entries alone.
    kept = dict(RolloutObjectCount.objects.values_list("rollout_id", "total"))
    assert kept == {rollout.pk: expected, other.pk: 4}
    RolloutObjectCount.objects.all().delete()
    migration = importlib.import_module("gitops.migrations.0013_rollout_object_count")
    migration.rollouts_count(connection)
    assert dict(RolloutObjectCount.objects.values_list("rollout_id", "total")) == kept


# -- the consumers of a ConfigMap step (issue 12) ---------------------------------------------------


def consumer_state(namespace: str, name: str, health: str, detail: str, **extra) -> dict:
    return {
        "kind": "Deployment",
        "namespace": namespace,
        "name": name,
        "restarted": True,
        "restartable": True,
        "health": health,
        "detail": detail,
        **extra,
    }


def rollout_with_consumers(states: list[dict], *, name: str = "shop", **fields) -> Rollout:
    """A rollout stored as the worker leaves it, straight in the database: pages only read it."""
    from gitops.models import Revision

    source = Source.objects.create(name=name, url="file:///nowhere.git")
    revision = Revision.objects.create(source=source, commit="c" * 40, outcome="valid")
    values = {
        "phase": "Paused",
        "waiting_for": "consumers",
        "consumers": "restart",
        "health_timeout_seconds": 300,
        "steps": [{"setWeight": 50}, {"setWeight": 100}],
        "weight": 50,
        **fields,
    }
    return Rollout.objects.create(source=source, revision=revision, consumer_states=states, **values)


def restart_rows(rollout: Rollout, count: int, *, start: int = 0) -> None:
    """Restart rows in the change log, as a step that restarted ``count`` workloads writes them."""
    from gitops.models import ApplyIntent

    for index in range(start, start + count):
        intent = ApplyIntent.objects.create(
            rollout=rollout,
            source=rollout.source,
            namespace="team-a",
            kind="Deployment",
            name=f"web-{index}",
            action="restart",
            commit=rollout.revision.commit,
        )
        Change.objects.create(
            intent=intent,
            source=rollout.source,
            rollout=rollout,
            commit=rollout.revision.commit,
            namespace="team-a",
            kind="Deployment",
            name=f"web-{index}",
            action="restart",
            before_hash="",
            after_hash=f"{index:032x}",
            actor="sluice",
            step_index=0,
            weight=50,
            result="ok",
        )


def test_a_wave_waiting_for_its_consumers_reads_like_the_issue(people):
    from datetime import UTC, datetime

    rollout = rollout_with_consumers(
        [
            consumer_state("team-a", "web", "healthy", "3/3 available"),
            consumer_state("team-a", "worker", "progressing", "updating 1/2"),
            consumer_state("team-a", "cron", "healthy", "1/1 available", restarted=False, restartable=False),
            consumer_state(
                "team-b",
                "api",
                "failed",
                'ProgressDeadlineExceeded: ReplicaSet "api-5c" has timed out progressing. <script>x</script>',
            ),
            consumer_state("team-b", "db", "progressing", "updating 0/3", kind="StatefulSet"),
        ],
        pause_until=datetime(2031, 5, 4, 13, 7, 9, tzinfo=UTC),
    )
    for role, user in people.items():
        assert client_for(user).get(reverse("dashboard:rollout", args=[rollout.pk])).status_code == 200, role
    page = client_for(people["viewer"]).get(reverse("dashboard:rollout", args=[rollout.pk])).content.decode()

    assert 'waiting for <strong id="waiting">consumers</strong> until' in page
    assert 'datetime="2031-05-04T13:07:09+00:00">13:07:09</time>' in page
    assert "resumes in" not in page, "the health deadline fails the wave; it does not resume it"
    assert "consumers: <strong>restart</strong> · healthTimeout 5m" in page
    team_a = page.split('data-namespace="team-a"', 1)[1].split("</section>", 1)[0]
    team_b = page.split('data-namespace="team-b"', 1)[1].split("</section>", 1)[0]
    for text in ("web 3/3 available", "worker updating 1/2", "cron 1/1 available", "2/3 healthy"):
        assert text in team_a, text
    for text in ("api failed: ProgressDeadlineExceeded", "db updating 0/3", "StatefulSet", "0/2 healthy"):
        assert text in team_b, text
    assert team_a.count('class="badge restarted"') == 2
    assert team_a.count('class="badge pinned"') == 1
    assert "<script>x</script>" not in page, "what a controller reports is escaped"
    assert "&lt;script&gt;x&lt;/script&gt;" in team_b
    assert 'id="promote"' not in page


def test_a_rollout_whose_steps_reach_no_consumer_says_so_or_shows_nothing(people):
    watched = rollout_with_consumers([], consumers="watch", phase="Progressing", waiting_for="")
    page = client_for(people["viewer"]).get(reverse("dashboard:rollout", args=[watched.pk])).content.decode()
    assert "No step has reached a workload that reads its ConfigMaps yet." in page
    assert "consumers: <strong>watch</strong>" in page
    ignored = rollout_with_consumers(
        [], name="other", consumers="ignore", phase="Progressing", waiting_for=""
    )
    page = client_for(people["viewer"]).get(reverse("dashboard:rollout", args=[ignored.pk])).content.decode()
    assert 'id="consumers"' not in page


def test_the_source_page_lists_which_workloads_read_which_configmap(people):
    from datetime import UTC, datetime

    rollout = rollout_with_consumers([])
    source = rollout.source
    client = client_for(people["viewer"])

    def consumer_section() -> str:
        page = client.get(reverse("dashboard:source", args=[source.name])).content.decode()
        return page.split('id="consumer-map"', 1)[1].split("</div>", 1)[0]

    assert "Not known yet" in consumer_section()
    Source.objects.filter(pk=source.pk).update(consumer_map_at=datetime(2031, 5, 4, 13, 7, 9, tzinfo=UTC))
    assert "No Deployment, StatefulSet, DaemonSet or Argo Rollout" in consumer_section()
    Source.objects.filter(pk=source.pk).update(
        consumer_map={
            "team-a/Deployment/web": ["app", "nginx"],
            "team-a/StatefulSet/db": ["app"],
            "team-b/DaemonSet/agent": ["app"],
        }
    )
    section = consumer_section()
    assert "as of 2031-05-04 13:07:09" in section
    rows = {chunk.split('"', 1)[0]: chunk for chunk in section.split('data-configmap="')[1:]}
    assert set(rows) == {"team-a/app", "team-a/nginx", "team-b/app"}
    assert (
        '<span class="reader">Deployment web</span>, <span class="reader">StatefulSet db</span>'
        in rows["team-a/app"]
    )
    assert "Deployment web" in rows["team-a/nginx"] and "db" not in rows["team-a/nginx"]
    assert "DaemonSet agent" in rows["team-b/app"]


def test_consumer_pages_run_a_number_of_queries_that_does_not_grow_with_the_consumers(people):
    rollout = rollout_with_consumers([consumer_state("team-a", "web-0", "healthy", "1/1 available")])
    Source.objects.filter(pk=rollout.source.pk).update(consumer_map={"team-a/Deployment/web-0": ["app"]})
    restart_rows(rollout, 1)
    client = client_for(people["viewer"])
    urls = [
        reverse("dashboard:rollout", args=[rollout.pk]),
        reverse("dashboard:source", args=[rollout.source.name]),
        reverse("dashboard:changes") + "?action=restart",
    ]

    def count_queries() -> dict[str, int]:
        counts = {}
        for url in urls:
            for headers in ({}, {"HX-Request": "true"}):
                with CaptureQueriesContext(connection) as queries:
                    response = client.get(url, headers=headers)
                assert response.status_code == 200
                counts[f"{url} {headers}"] = len(queries)
        return counts

    few = count_queries()
    many_states = [
        consumer_state(f"team-{index % 7}", f"web-{index}", "progressing", "updating 1/2")
        for index in range(150)
    ]
    Rollout.objects.filter(pk=rollout.pk).update(consumer_states=many_states)
    Source.objects.filter(pk=rollout.source.pk).update(
        consumer_map={f"team-a/Deployment/web-{index}": ["app", "nginx"] for index in range(150)}
    )
    restart_rows(rollout, 149, start=1)
    many = count_queries()

    assert few == many, "the number of queries must not grow with the number of consumers"
    page = client.get(urls[0]).content.decode()
    assert page.count('class="consumer ') == 150
    assert page.count("<td>Deployment</td>") == 150


def _visible(page: bytes) -> bytes:
    """A page without its CSRF tokens, which are masked afresh on every response."""
    return re.sub(rb'("X-CSRFToken": "|name="csrfmiddlewaretoken" value=")[^"]+', rb"\1", page)


ODD_NUMBERS = ("²", "٣", "0", "-1", "9" * 30, "9" * 5000)
ODD_MOMENTS = ("2026-02-30", "2026-13-01T00:00", "2026-01-01T25:00", "0000-01-01", "yesterday", "9" * 5000)


@pytest.mark.parametrize(
    "page, parameter",
    [("dashboard:overview", "page"), ("dashboard:changes", "before"), ("dashboard:flags", "after")],
)
def test_an_odd_paging_value_shows_the_first_page_instead_of_a_server_error(people, page, parameter):
    client = client_for(people["viewer"])
    first = client.get(reverse(page)).content
    for value in ODD_NUMBERS:
        response = client.get(reverse(page), {parameter: value})
        assert response.status_code == 200, (parameter, value[:20], response.status_code)
        assert _visible(response.content) == _visible(first), (parameter, value[:20])


def test_a_page_past_the_last_shows_the_last_not_no_sources_yet(people):
    """Rows were read for the page asked (past the last: none) and only the page number was clamped, so
    ``/?page=5`` with one page said "No sources yet" until the next poll swapped the list in."""
    Source.objects.create(name="only-one", url="file:///nowhere.git")
    client = client_for(people["viewer"])
    page = client.get(reverse("dashboard:overview"), {"page": "5"}).content.decode()
    assert "only-one" in page and "No sources yet" not in page


@pytest.mark.parametrize("parameter", ["since", "until"])
def test_a_change_log_date_that_names_no_moment_is_refused_with_its_field(people, parameter):
    client = client_for(people["viewer"])
    for value in ODD_MOMENTS:
        response = client.get(reverse("dashboard:changes"), {parameter: value})
        assert response.status_code == 400, (value[:20], response.status_code)
        assert response.content.decode().startswith(f"{parameter}: "), response.content[:80]
    assert client.get(reverse("dashboard:changes"), {parameter: "2026-12-24"}).status_code == 200
    assert client.get(reverse("dashboard:changes"), {parameter: "2026-12-24T18:00Z"}).status_code == 200
    # ISO 8601 allows offsets PostgreSQL refuses (past 15:59): a server error before 2026-12-07.
    assert client.get(reverse("dashboard:changes"), {parameter: "2026-12-24T18:00+20:00"}).status_code == 200
    edge = client.get(reverse("dashboard:changes"), {parameter: "0001-01-01T00:00+01:00"})
    assert edge.status_code == 400 and edge.content.decode().startswith(f"{parameter}: ")


def test_the_change_log_links_keep_a_filter_holding_an_ampersand_whole(people):
    client = client_for(people["viewer"])
    page = client.get(reverse("dashboard:changes"), {"actor": "a&before=1#x"}).content.decode()
    assert 'href="?actor=a%26before%3D1%23x&format=csv"' in page


def test_a_nul_in_an_address_a_query_or_a_form_is_a_400_not_a_database_error(paused_rollout, people):
    viewer, approver = client_for(people["viewer"]), client_for(people["approver"])
    name = paused_rollout.source.name
    for url, query in [
        (reverse("dashboard:overview"), {"q": "\x00"}),
        (reverse("dashboard:source", args=[name]), {"cluster": "a\x00"}),
        (reverse("dashboard:changes"), {"actor": "\x00"}),
        (reverse("dashboard:flags"), {"key": "\x00"}),
        ("/sources/%00/", {}),
        ("/api/changes", {"actor": "\x00"}),
    ]:
        response = viewer.get(url, query)
        assert response.status_code == 400, (url, query, response.status_code)
    promote = reverse("dashboard:rollout-action", args=[paused_rollout.pk, "promote"])
    assert approver.post(promote, {"comment": "ok\x00"}).status_code == 400
    assert paused_rollout.approvals.count() == 0
    # A JSON body is the API's to check, and the webhook's body is never parsed as a form.
    hook = client_for().post(reverse("dashboard:webhook", args=[name]), "a=\x00", content_type=_FORM)
    assert hook.status_code != 400 or b"NUL" not in hook.content


_FORM = "application/x-www-form-urlencoded"


def test_an_action_on_a_rollout_that_does_not_exist_is_a_404(people):
    approver = client_for(people["approver"])
    for rollout_id in (999_999, 10**30):
        for action in ("promote", "promote-full", "abort", "retry"):
            url = reverse("dashboard:rollout-action", args=[rollout_id, action])
            assert approver.post(url).status_code == 404, (rollout_id, action)


def test_a_promote_sent_twice_does_not_release_the_gate_after_the_one_it_was_shown(paused_rollout, people):
    approver = client_for(people["approver"])
    page = approver.get(reverse("dashboard:rollout", args=[paused_rollout.pk])).content.decode()
    step = paused_rollout.step_index
    assert f'<input type="hidden" name="step" value="{step}">' in page
    promote = reverse("dashboard:rollout-action", args=[paused_rollout.pk, "promote"])
    assert approver.post(promote, {"step": step}).status_code == 302
    moved = Rollout.objects.get(pk=paused_rollout.pk)
    assert moved.step_index == step + 1 or moved.phase != "Paused"
    # The same click again (a double click, a retried request): refused, and says why.
    Rollout.objects.filter(pk=paused_rollout.pk).update(
        phase="Paused", waiting_for="approval", step_index=step + 1
    )
    again = approver.post(promote, {"step": step}, follow=True)
    # In the page's numbers (its hidden field and "step N of M"), not one more.
    assert f"has moved on to step {step + 1} since step {step} was shown" in again.content.decode()
    assert paused_rollout.approvals.count() == 1
    # Through the API the same: a 409.
    api = approver.post(
        f"/api/rollouts/{paused_rollout.pk}/promote", {"step_index": step}, content_type="application/json"
    )
    assert api.status_code == 409 and "has moved on" in api.json()["detail"]
    # As a rollout's JSON names it ("step"), echoed back by a client: the same guard. A field the API
    # does not know is a 422, not dropped with its guard.
    echoed = approver.post(
        f"/api/rollouts/{paused_rollout.pk}/promote", {"step": step}, content_type="application/json"
    )
    assert echoed.status_code == 409 and "has moved on" in echoed.json()["detail"]
    misspelt = approver.post(
        f"/api/rollouts/{paused_rollout.pk}/promote", {"stepindex": step}, content_type="application/json"
    )
    assert misspelt.status_code == 422, misspelt.content
    # And from the command line, run again after a timeout.
    with pytest.raises(CommandError, match="has moved on"):
        call_command(
            "gitops",
            "promote",
            str(paused_rollout.pk),
            "--user",
            people["approver"].username,
            "--step",
            str(step),
        )
    assert paused_rollout.approvals.count() == 1


def test_a_person_may_retry_refused_changes_from_the_page_as_from_the_command_line(
    make_source, people, monkeypatch
):
    """`gitops sync --retry-failed` sends again the changes the cluster refused, once what refused them
    is mended; the page (a box beside Sync now) and the API could not ask for it."""
    from tests.broker import keep_sends

    source = make_source()
    sent = keep_sends(monkeypatch)
    client = client_for(people["approver"])
    page = client.get(reverse("dashboard:source", args=[source.name])).content.decode()
    assert 'name="retry_failed"' in page
    sync = reverse("dashboard:source-sync", args=[source.name])

    client.post(sync, {"retry_failed": "on"})
    client.post(sync)

    assert [(kwargs["actor"], kwargs["retry_failed"]) for kwargs in sent] == [("otto", True), ("otto", False)]
    assert (
        "retrying refused changes"
        in client.get(reverse("dashboard:source", args=[source.name])).content.decode()
    )


def test_a_sync_or_preview_the_broker_refuses_is_said_on_the_page_it_came_from(
    make_source, people, monkeypatch
):
    """Redis away: the task is refused after what the action decided was saved. The page answered a bare
    500 (before 2026-12-07); now the person is sent back with why, and htmx follows HX-Redirect."""
    from dashboard.middleware import BROKER_REFUSED
    from tests.broker import refuse_sends

    source = make_source()
    refuse_sends(monkeypatch)
    client = client_for(people["approver"])
    page = reverse("dashboard:source", args=[source.name])
    sync = reverse("dashboard:source-sync", args=[source.name])

    refused = client.post(sync, HTTP_REFERER=f"http://testserver{page}")
    assert (refused.status_code, refused["Location"]) == (303, f"http://testserver{page}")
    shown = client.get(page).content.decode()
    assert BROKER_REFUSED["sync"].replace("'", "&#x27;") in shown

    from_htmx = client.post(sync, HTTP_HX_REQUEST="true", HTTP_REFERER="https://elsewhere.example/")
    assert (from_htmx.status_code, from_htmx["HX-Redirect"]) == (503, reverse("dashboard:overview"))

    preview = reverse("dashboard:source-preview", args=[source.name])
    asked = client.post(preview, {"revision": "refs/heads/main"}, HTTP_REFERER=f"http://testserver{preview}")
    assert asked.status_code == 303
    assert BROKER_REFUSED["preview"] in client.get(preview).content.decode()
