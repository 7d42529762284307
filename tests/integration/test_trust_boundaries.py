"""What whoever can push to a watched repository must not be able to do (issue 10, section 2).

Each test fails on the code before the fix: it pushes what an attacker would
push and checks that the cluster, the worker and the approval gate hold.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from gitops import source_admin
from gitops.desired.content import MANAGED_BY_LABEL, SOURCE_LABEL
from gitops.models import Change, Revision, Rollout, Source
from gitops.rollout import decisions
from tests.gitrepo import GitRepo, configmap, policy
from tests.inprocess import applied_in_process
from tests.rollouts import rollout_of, wait_for
from tests.workers import poll

pytestmark = pytest.mark.django_db(transaction=True)


class Endpoint:
    """A real HTTP server: answers ``status`` (with ``Location`` for a redirect) and records each request."""

    def __init__(self, status: int = 200, location: str = "", body: bytes = b"") -> None:
        endpoint = self
        self.status, self.location, self.body = status, location, body
        self.received: list[tuple[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                self.rfile.read(length)
                endpoint.received.append((self.command, self.path))
                self.send_response(endpoint.status)
                if endpoint.location:
                    self.send_header("Location", endpoint.location)
                self.send_header("Content-Length", str(len(endpoint.body)))
                self.end_headers()
                self.wfile.write(endpoint.body)

            do_GET = do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "/check") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoints():
    made: list[Endpoint] = []

    def make(**options) -> Endpoint:
        made.append(Endpoint(**options))
        return made[-1]

    yield make
    for endpoint in made:
        endpoint.close()


def versions(cluster, namespaces: list[str]) -> list[str | None]:
    return [((cluster.get_configmap(ns, "app") or {}).get("data") or {}).get("v") for ns in namespaces]


# -- namespaces ---------------------------------------------------------------------------------


def test_a_repository_wildcard_does_not_reach_kube_system(repo, make_source, sync, cluster, namespace):
    repo.write_all(
        {
            "sluice.yaml": policy([namespace, "kube-system"], allowedNamespaces=["*"]),
            "configmaps/app.yaml": configmap("sluice-was-here", {"v": "1"}),
        }
    )
    repo.commit()
    source = make_source(allowed_namespaces=["t*"])

    result = sync(source)

    assert result["outcome"] == "rejected"
    # Refused once, where sluice.yaml lists the target (it was at each ConfigMap, times each such target).
    assert result["errors"] == [
        "sluice.yaml:4: targets.namespaces[1]: namespace 'kube-system' is outside the namespaces this"
        " source may manage (t*)"
    ]
    assert cluster.get_configmap("kube-system", "sluice-was-here") is None
    assert cluster.get_configmap(namespace, "sluice-was-here") is None, "a rejected revision applies nothing"


def test_a_source_without_allowed_namespaces_writes_nowhere(
    repo, sync, cluster, namespace, settings, tmp_path
):
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"v": "1"})})
    repo.commit()
    settings.SLUICE_DATA_DIR = tmp_path / "data"
    # As a source registered before administrators had to scope it is stored.
    legacy = Source.objects.create(name="legacy", url=repo.url, allowed_namespaces=[])

    result = sync(legacy)

    assert result["outcome"] == "rejected"
    assert "this source may not write to any namespace yet" in result["errors"][0]
    assert cluster.get_configmap(namespace, "app") is None


# -- analysis and notification URLs ---------------------------------------------------------------


def test_an_analysis_url_outside_the_allowed_prefixes_rejects_the_revision(
    repo, make_source, sync, namespace
):
    repo.write_all(
        {
            "sluice.yaml": policy(
                [namespace],
                rollout={
                    "steps": [{"setWeight": 50}, {"analysis": {"http": {"url": "http://10.0.0.1/admin"}}}]
                },
            ),
            "configmaps/app.yaml": configmap("app", {"v": "1"}),
        }
    )
    repo.commit()
    source = make_source(analysis_url_prefixes=["https://checks.example.com/"])

    result = sync(source)

    assert result["outcome"] == "rejected"
    (error,) = result["errors"]
    assert error.startswith(
        "sluice.yaml:9: rollout.steps[1].analysis.http.url: 'http://10.0.0.1/admin' is not"
    )


def test_analysis_never_follows_a_redirect_nor_keeps_an_answer_body(
    repo, make_namespaces, make_source, sync, cluster, endpoints
):
    internal = endpoints(body=b"root:x:0:0:internal-secret")
    redirecting = endpoints(status=307, location=internal.url("/metadata"), body=b"go elsewhere")
    failing = endpoints(status=500, body=b"stack trace with internal-secret")
    canary, rest = make_namespaces("canary", "rest")
    repo.write_all(
        {"sluice.yaml": policy([canary, rest]), "configmaps/app.yaml": configmap("app", {"v": "1"})}
    )
    repo.commit("v1")
    source = make_source(analysis_url_prefixes=[redirecting.url("/"), failing.url("/")])
    sync(source)

    for endpoint in (redirecting, failing):
        steps = [{"setWeight": 50}, {"analysis": {"http": {"url": endpoint.url()}, "failureLimit": 1}}]
        repo.write_all({"sluice.yaml": policy([canary, rest], rollout={"steps": steps})})
        repo.write("configmaps/app.yaml", configmap("app", {"v": endpoint.url()}))
        repo.commit("v2")
        assert sync(source)["outcome"] == "aborted"

    assert internal.received == [], "the redirect was followed"
    assert redirecting.received == [("POST", "/check")]
    messages = " ".join(e.message for r in source.rollouts.all() for e in r.events.all())
    messages += " ".join(r.message for r in source.rollouts.all())
    assert "redirects are not followed" in messages
    assert "HTTP 500 from" in messages
    assert "internal-secret" not in messages
    assert "go elsewhere" not in messages


def test_an_analysis_prefix_removed_after_validation_is_not_called(
    repo, make_namespaces, make_source, sync, cluster, endpoints, people
):
    check = endpoints()
    canary, rest = make_namespaces("canary", "rest")
    repo.write_all(
        {"sluice.yaml": policy([canary, rest]), "configmaps/app.yaml": configmap("app", {"v": "1"})}
    )
    repo.commit("v1")
    source = make_source(analysis_url_prefixes=[check.url("/")])
    sync(source)
    steps = [{"setWeight": 50}, {"pause": {}}, {"analysis": {"http": {"url": check.url()}}}]
    repo.write_all({"sluice.yaml": policy([canary, rest], rollout={"steps": steps})})
    repo.write("configmaps/app.yaml", configmap("app", {"v": "2"}))
    repo.commit("v2")
    sync(source)
    paused = wait_for(source, phase="Paused", waiting_for="approval")

    from gitops.rollout import decisions

    source_admin.source_update_scope(source, analysis_url_prefixes=[])
    decisions.rollout_promote(paused.pk, user=people["approver"])
    # The revision no longer passes validation under the narrower scope: it is undone, never called.
    failed = wait_for(source, phase="Failed")
    assert "is no longer valid for this source" in failed.message
    assert "may not call any analysis URL" in failed.message
    assert check.received == []
    assert versions(cluster, [canary, rest]) == ["1", "1"]


def test_notifications_follow_no_redirect(repo, make_source, sync, namespace, endpoints):
    internal = endpoints()
    redirecting = endpoints(status=302, location=internal.url("/internal"))
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"v": "1"})})
    repo.commit()
    source = make_source(notify_urls=[redirecting.url("/events")])

    sync(source)

    poll(lambda: redirecting.received, timeout=30, what="a notification attempt")
    notification = source.notifications.order_by("id").first()
    poll(
        lambda: type(notification).objects.get(pk=notification.pk).last_error,
        timeout=30,
        what="the failed attempt to be recorded",
    )
    assert "redirects are not followed" in type(notification).objects.get(pk=notification.pk).last_error
    assert internal.received == []


# -- the approval floor -----------------------------------------------------------------------------


def test_an_approval_floor_holds_even_when_the_repository_has_no_steps(
    repo, make_namespaces, make_source, sync, cluster, people, django_user_model
):
    canary, rest = make_namespaces("canary", "rest")
    repo.write_all(
        {"sluice.yaml": policy([canary, rest]), "configmaps/app.yaml": configmap("app", {"v": "1"})}
    )
    repo.commit("v1")
    source = make_source(required_approvals=2)
    # The first revision waits too: nothing of this source reaches the cluster unapproved.
    assert sync(source)["outcome"] == "paused"
    assert cluster.get_configmap(canary, "app") is None
    first = rollout_of(source)
    decisions.rollout_promote(first.pk, user=people["approver"])
    decisions.rollout_promote(first.pk, user=people["second_approver"])
    wait_for(source, phase="Completed")

    # Otto commits an intermediate change, Ada the tip: neither may approve the range.
    repo.write("configmaps/app.yaml", configmap("app", {"v": "2"}))
    repo.commit("otto's part", author=("Otto", "otto@example.com"))
    repo.write("configmaps/app.yaml", configmap("app", {"v": "3"}))
    repo.commit("ada's part")
    assert sync(source)["outcome"] == "paused"
    gated = rollout_of(source)
    assert (gated.approvals_required, gated.forbid_self_approval) == (2, True)
    assert {"ada@example.com", "otto@example.com"} <= set(gated.commit_identities)
    with pytest.raises(PermissionDenied, match="otto wrote or committed"):
        decisions.rollout_promote(gated.pk, user=people["approver"])
    with pytest.raises(PermissionDenied, match="ada wrote or committed"):
        decisions.rollout_promote(gated.pk, user=people["author"])
    # Without an email an administrator verified, nobody is trusted not to be an author.
    unverified = django_user_model.objects.create_user("uma", email="uma@example.com", password="x")
    unverified.groups.add(Group.objects.get(name="approver"))
    with pytest.raises(PermissionDenied, match="uma has no verified email"):
        decisions.rollout_promote(gated.pk, user=django_user_model.objects.get(pk=unverified.pk))
    # A single approver cannot skip the gate with --full either.
    decisions.rollout_promote(gated.pk, user=people["second_approver"], full=True)
    assert rollout_of(source).phase == "Paused"
    assert cluster.get_configmap(canary, "app")["data"] == {"v": "1"}


def test_an_approval_floor_holds_a_one_percent_step_that_would_write_a_single_target_whole(
    repo, make_namespaces, make_source, sync, cluster, people
):
    (prod,) = make_namespaces("prod")
    steps = [{"setWeight": 1}, {"setWeight": 100}]
    repo.write_all(
        {
            "sluice.yaml": policy([prod], rollout={"steps": steps}),
            "configmaps/app.yaml": configmap("app", {"v": "1"}),
        }
    )
    repo.commit("v1")
    source = make_source(required_approvals=1)
    # ceil(1% of one target) is that target: a step of 1% is no canary for it, so the gate comes first.
    assert sync(source)["outcome"] == "paused"
    gated = rollout_of(source)
    assert (gated.waiting_for, gated.step_index, gated.steps[0]) == ("approval", 0, {"pause": {}})
    assert cluster.get_configmap(prod, "app") is None
    decisions.rollout_promote(gated.pk, user=people["approver"])
    wait_for(source, phase="Completed")
    assert cluster.get_configmap(prod, "app")["data"] == {"v": "1"}


# -- wedging a source ------------------------------------------------------------------------------


def test_a_very_long_author_name_does_not_wedge_the_source(repo, make_source, sync, cluster, namespace):
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"v": "1"})})
    message = "long name\n\n" + "m" * 100_000  # under the 128 KiB an argument may be
    commit = repo.commit(message, author=("A" * 600, "x" * 600 + "@example.com"))
    source = make_source()

    assert sync(source)["outcome"] == "applied"
    revision = Revision.objects.get(source=source, commit=commit)
    assert len(revision.author_name) == 500
    assert revision.author_name.endswith("…")
    assert len(revision.message) == 64 * 1024
    assert revision.message.startswith("long name") and revision.message.endswith("…")
    assert cluster.get_configmap(namespace, "app")["data"] == {"v": "1"}


def test_a_sha256_repository_is_reconciled(tmp_path, make_source, sync, cluster, namespace):
    repo = GitRepo(tmp_path / "sha256", object_format="sha256")
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"v": "1"})})
    commit = repo.commit()
    assert len(commit) == 64
    source = make_source(url=repo.url)

    assert sync(source)["outcome"] == "applied"
    live = cluster.get_configmap(namespace, "app")
    assert live["metadata"]["annotations"]["sluice.dev/commit"] == commit
    assert Change.objects.get(source=source).commit == commit
    assert Source.objects.get(pk=source.pk).last_error == ""


# -- conflicts and prune ----------------------------------------------------------------------------


def test_a_conflict_never_shows_the_foreign_objects_data(repo, make_source, sync, cluster, namespace):
    cluster.apply_configmap(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "app", "namespace": namespace},
            "data": {"password": "hunter2"},
        },
        field_manager="someone-else",
    )
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"v": "1"})})
    repo.commit()
    source = make_source()

    sync(source)

    plan = Source.objects.get(pk=source.pk).last_plan
    (item,) = plan["items"]
    assert item["action"] == "conflict"
    assert "someone-else" in item["reason"]
    assert "hunter2" not in json.dumps(plan)
    assert cluster.get_configmap(namespace, "app")["data"] == {"password": "hunter2"}


def test_a_foreign_configmap_labelled_as_ours_is_not_pruned(repo, make_source, sync, cluster, namespace):
    repo.write_all(
        {"sluice.yaml": policy([namespace], prune=True), "configmaps/app.yaml": configmap("app", {"v": "1"})}
    )
    repo.commit()
    source = make_source()
    sync(source)
    cluster.apply_configmap(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "precious",
                "namespace": namespace,
                "labels": {MANAGED_BY_LABEL: "sluice", SOURCE_LABEL: source.name},
            },
            "data": {"keep": "me"},
        },
        field_manager="a-tenant",
    )

    result = sync(source)

    assert cluster.get_configmap(namespace, "precious")["data"] == {"keep": "me"}
    assert "delete" not in result["summary"]
    assert result["summary"].get("conflict") == 1


# -- findings of the review -----------------------------------------------------------------------


def test_moving_the_branch_back_to_an_older_completed_commit_goes_out_anew_through_the_gate(
    repo, make_namespaces, make_source, sync, cluster, people
):
    canary, rest = make_namespaces("canary", "rest")
    repo.write_all(
        {"sluice.yaml": policy([canary, rest]), "configmaps/app.yaml": configmap("app", {"v": "1"})}
    )
    old = repo.commit("v1")
    source = make_source(required_approvals=1)
    sync(source)
    decisions.rollout_promote(rollout_of(source).pk, user=people["approver"])
    wait_for(source, phase="Completed")
    repo.write("configmaps/app.yaml", configmap("app", {"v": "2"}))
    repo.commit("v2")
    sync(source)
    decisions.rollout_promote(rollout_of(source).pk, user=people["approver"])
    wait_for(source, phase="Completed")
    assert versions(cluster, [canary, rest]) == ["2", "2"]

    repo.git("reset", "--quiet", "--hard", old)
    repo.push(force=True)
    assert sync(source)["outcome"] == "paused"

    reverted = rollout_of(source)
    assert reverted.revision.commit == old
    assert reverted.waiting_for == "approval"
    assert versions(cluster, [canary, rest]) == ["2", "2"], "nothing goes back unapproved"


def test_a_raised_floor_holds_a_rollout_already_under_way_and_its_retry(
    repo, make_namespaces, make_source, sync, cluster, people
):
    canary, rest = make_namespaces("canary", "rest")
    repo.write_all(
        {"sluice.yaml": policy([canary, rest]), "configmaps/app.yaml": configmap("app", {"v": "1"})}
    )
    repo.commit("v1")
    source = make_source()
    sync(source)
    steps = [{"setWeight": 50}, {"pause": {"duration": "1h"}}, {"setWeight": 100}]
    repo.write_all({"sluice.yaml": policy([canary, rest], rollout={"steps": steps})})
    repo.write("configmaps/app.yaml", configmap("app", {"v": "2"}))
    repo.commit("v2")
    sync(source)
    running = wait_for(source, phase="Paused", waiting_for="timer")

    from gitops import source_admin

    source_admin.source_update_scope(source, required_approvals=2)
    gated = Rollout.objects.get(pk=running.pk)
    assert (gated.approvals_required, gated.forbid_self_approval) == (2, True)
    assert gated.steps[gated.step_index + 1] == {"pause": {}}, "a gate right after the current step"
    # Ending the timer now, the rollout stops at the gate instead of going to 100%.
    Rollout.objects.filter(pk=running.pk).update(pause_until=timezone.now())
    sync(source)
    assert wait_for(source, phase="Paused", waiting_for="approval").pk == running.pk
    assert versions(cluster, [canary, rest]) == ["2", "1"]

    decisions.rollout_abort(running.pk, user=people["approver"])
    wait_for(source, phase="Aborted")
    again = decisions.rollout_retry(running.pk, user=people["approver"])
    assert again.approvals_required == 2
    assert {"pause": {}} in again.steps


def test_one_full_promote_does_not_turn_another_approvers_single_step_into_100_percent(
    repo, make_namespaces, make_source, sync, cluster, people
):
    canary, middle, rest = make_namespaces("canary", "middle", "rest")
    repo.write_all(
        {"sluice.yaml": policy([canary, middle, rest]), "configmaps/app.yaml": configmap("app", {"v": "1"})}
    )
    repo.commit("v1")
    source = make_source()
    sync(source)
    steps = [{"setWeight": 33}, {"pause": {}}, {"setWeight": 66}, {"pause": {}}, {"setWeight": 100}]
    repo.write_all(
        {
            "sluice.yaml": policy(
                [canary, middle, rest], rollout={"steps": steps}, approvals={"required": 2}
            ),
            "configmaps/app.yaml": configmap("app", {"v": "2"}),
        }
    )
    repo.commit("v2")
    sync(source)
    paused = wait_for(source, phase="Paused", waiting_for="approval")

    decisions.rollout_promote(paused.pk, user=people["approver"])
    decisions.rollout_promote(paused.pk, user=people["second_approver"], full=True)

    second_gate = wait_for(source, phase="Paused", waiting_for="approval", step_index=3)
    assert second_gate.pk == paused.pk
    assert versions(cluster, [canary, middle, rest]) == ["2", "2", "1"], "one step, not 100%"


def test_a_failure_never_leaves_pushes_refused_as_already_queued(make_source, sync):
    from gitops import schedule

    source = make_source(url="file:///nonexistent/repository.git")
    Source.objects.filter(pk=source.pk).update(sync_queued=True)
    assert sync(source)["outcome"] == "failed"
    assert Source.objects.get(pk=source.pk).sync_queued is False
    from django.db import transaction

    with transaction.atomic():
        assert schedule.source_sync_once(source.pk, actor="webhook:github") is True


def paused_and_due(repo, source, targets: list[str]) -> Rollout:
    """v2 of app rolled out at 50%, then a timed pause, then 100%: a pass run here stops at the pause,
    which is due now; the rollout."""
    from gitops import reconcile

    steps = [{"setWeight": 50}, {"pause": {"duration": "1h"}}, {"setWeight": 100}]
    repo.write_all(
        {
            "sluice.yaml": policy(targets, rollout={"steps": steps}),
            "configmaps/app.yaml": configmap("app", {"v": "2"}),
        }
    )
    repo.commit("v2")
    assert reconcile.source_sync(source.pk).outcome == "paused"
    running = rollout_of(source)
    Rollout.objects.filter(pk=running.pk).update(pause_until=timezone.now())
    return running


def test_a_floor_raised_while_a_pass_ends_a_pause_holds_the_step_after_it(
    repo, make_namespaces, make_source, cluster, monkeypatch
):
    """The pass that ends a timed pause read the rollout's steps before; an administrator raised the floor
    in between, which put a gate right after the pause. The pass goes on from the steps as stored now:
    it stops at the gate. Before, it took the step it had read, 100%, and the rollout completed
    unapproved."""
    from gitops import reconcile, schedule
    from gitops.rollout import lifecycle

    monkeypatch.setattr(schedule, "_send", lambda *args, **kwargs: "")  # every pass runs here
    canary, rest, source = applied_in_process(repo, make_namespaces, make_source)
    running = paused_and_due(repo, source, [canary, rest])

    real_pause_is_over = lifecycle.pause_is_over

    def floor_raised_meanwhile(rollout):
        if not Source.objects.get(pk=source.pk).required_approvals:
            source_admin.source_update_scope(source, required_approvals=2)
        return real_pause_is_over(rollout)

    monkeypatch.setattr(lifecycle, "pause_is_over", floor_raised_meanwhile)
    reconcile.source_sync(source.pk)
    reconcile.source_sync(source.pk)  # had the pass found its rollout moved, the next goes on

    gated = Rollout.objects.get(pk=running.pk)
    assert (gated.phase, gated.waiting_for) == ("Paused", "approval"), gated.message
    assert versions(cluster, [canary, rest]) == ["2", "1"], "nothing went to 100% unapproved"


def test_a_floor_raised_while_a_pass_fetches_gates_the_rollout_that_pass_starts(
    repo, make_namespaces, make_source, cluster, monkeypatch
):
    """The pass read the source before its fetch and validation; an administrator raised the floor in
    between. The rollout it starts takes the floor as stored when it is created: it stops at a gate.
    Before, it took the floor it had read (none), and went to 100% unapproved."""
    from gitops import reconcile, schedule

    monkeypatch.setattr(schedule, "_send", lambda *args, **kwargs: "")  # every pass runs here
    canary, rest, source = applied_in_process(repo, make_namespaces, make_source)
    repo.write("configmaps/app.yaml", configmap("app", {"v": "2"}))
    repo.commit("v2")
    real_fetch = reconcile.revision_fetch

    def fetch_while_the_floor_is_raised(fetched, *args, **kwargs):
        source_admin.source_update_scope(fetched, required_approvals=1)
        return real_fetch(fetched, *args, **kwargs)

    monkeypatch.setattr(reconcile, "revision_fetch", fetch_while_the_floor_is_raised)
    reconcile.source_sync(source.pk)

    started = rollout_of(source)
    assert (started.phase, started.waiting_for) == ("Paused", "approval"), started.message
    assert (started.approvals_required, started.forbid_self_approval) == (1, True)
    assert versions(cluster, [canary, rest]).count("2") < 2, "not everywhere unapproved"


def test_a_scope_narrowed_while_a_pass_waits_stops_the_steps_after_it_writing_there(
    repo, make_namespaces, make_source, cluster, monkeypatch
):
    """An administrator takes a namespace out of the source's scope while a pass waits in a rollout (a
    timed pause ending here; an analysis or a consumer gate alike). The pass validated the revision
    before: its next step would write where it is no longer allowed. It fails and rolls back instead.
    Before, it applied 100% there, and only the next pass rolled it back."""
    from gitops import reconcile, schedule
    from gitops.rollout import lifecycle

    monkeypatch.setattr(schedule, "_send", lambda *args, **kwargs: "")  # every pass runs here
    canary, rest, source = applied_in_process(repo, make_namespaces, make_source)
    running = paused_and_due(repo, source, [canary, rest])
    real_pause_is_over = lifecycle.pause_is_over

    def narrowed_meanwhile(rollout):
        source_admin.source_update_scope(Source.objects.get(pk=source.pk), allowed_namespaces=[canary])
        return real_pause_is_over(rollout)

    monkeypatch.setattr(lifecycle, "pause_is_over", narrowed_meanwhile)
    reconcile.source_sync(source.pk)

    failed = Rollout.objects.get(pk=running.pk)
    assert failed.phase == "Failed" and f"{rest} no longer in the source's scope" in failed.message
    assert versions(cluster, [canary, rest]) == ["1", "1"], "never written where it is not allowed"
    assert not Change.objects.filter(source=source, namespace=rest, commit=running.revision.commit).exists()


def test_a_scope_narrowed_while_a_pass_fetches_stops_the_rollout_that_pass_starts(
    repo, make_namespaces, make_source, cluster, monkeypatch
):
    """The pass read the source before its fetch, and validated the revision under that scope; an
    administrator narrowed it in between. The rollout it starts reads the scope as it is now: its first
    weight fails and rolls back rather than writing where the source may no longer write."""
    from gitops import reconcile, schedule

    monkeypatch.setattr(schedule, "_send", lambda *args, **kwargs: "")  # every pass runs here
    canary, rest, source = applied_in_process(repo, make_namespaces, make_source)
    repo.write("configmaps/app.yaml", configmap("app", {"v": "2"}))
    repo.commit("v2")
    real_fetch = reconcile.revision_fetch

    def fetch_while_the_scope_narrows(fetched, *args, **kwargs):
        source_admin.source_update_scope(Source.objects.get(pk=source.pk), allowed_namespaces=[canary])
        return real_fetch(fetched, *args, **kwargs)

    monkeypatch.setattr(reconcile, "revision_fetch", fetch_while_the_scope_narrows)
    reconcile.source_sync(source.pk)

    started = rollout_of(source)
    assert started.phase == "Failed" and f"{rest} no longer in the source's scope" in started.message
    assert versions(cluster, [canary, rest]) == ["1", "1"]
