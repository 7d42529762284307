"""Managing sources on the real stack: settings checked once for every caller, the audit trail, suspend and
resume against polls, pushes and timers, and deleting a source that keeps or prunes its objects."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, connection, transaction
from django.test import Client
from django.utils import timezone

from gitops import metrics, polling, source_admin
from gitops.desired.content import COMMIT_ANNOTATION, MANAGED_BY_LABEL, SOURCE_LABEL
from gitops.intake import webhook_secrets
from gitops.intake.webhooks import sign
from gitops.models import (
    Change,
    ManagedObject,
    PublishedFlag,
    Revision,
    Rollout,
    Source,
    SourceAudit,
    SourceRemoval,
    WebhookDelivery,
)
from gitops.record.audit import Actor
from gitops.rollout import decisions
from gitops.source_admin import SourceRemovalRefused, SourceSettingsError
from gitops.vocabulary import AuditVia, ObjectsOnRemoval
from tests.broker import keep_sends, refuse_sends
from tests.gitrepo import configmap, policy
from tests.rollouts import wait_for
from tests.workers import poll, running_beat

pytestmark = pytest.mark.django_db(transaction=True)
SECRET = "push-secret-for-tests-0123456789"


@pytest.fixture
def applied(repo, make_namespaces, make_source, sync, cluster):
    """A source whose two ConfigMaps (one a flag set) are applied in two namespaces."""
    targets = make_namespaces("a", "b")
    repo.write_all(
        {
            "sluice.yaml": {**policy(targets), "flags": {"namespace": targets[0]}},
            "configmaps/app.yaml": configmap("app", {"V": "1"}),
            "flags/checkout.json": json.dumps(
                {
                    "flags": {
                        "new-checkout": {
                            "state": "ENABLED",
                            "variants": {"on": True, "off": False},
                            "defaultVariant": "off",
                        }
                    }
                }
            ),
        }
    )
    repo.commit("v1")
    source = make_source()
    assert sync(source)["outcome"] == "applied"
    assert ManagedObject.objects.filter(source=source).count() == 3
    return source, targets


def removal_done(removal: SourceRemoval, timeout: float = 90) -> SourceRemoval:
    def ended():
        removal.refresh_from_db()
        return removal if not removal.is_active else None

    return poll(ended, timeout=timeout, interval=0.1, what=f"removal {removal.pk} to end")


def removal_run_once_free(removal_id: int) -> SourceRemoval:
    """``source_removal_run`` in this process, once the stack's worker has let the source's lock go (a
    pass it ran, an abort's, may still be ending), as the removal's task retries a busy source."""
    from gitops.locks import SourceBusy as Busy
    from gitops.source_removal import source_removal_run

    def attempt() -> SourceRemoval | None:
        try:
            return source_removal_run(removal_id)
        except Busy:
            return None

    return poll(attempt, timeout=60, what="the source's lock to be free for its removal")


# -- settings, checked once -------------------------------------------------------------------


def test_every_problem_is_named_by_field_and_nothing_is_stored(repo):
    with pytest.raises(SourceSettingsError) as raised:
        source_admin.source_add(
            name="Bad_Name",
            url="https://deploy:hunter2@git.example.com/x.git",
            branch="two words",
            path="../etc",
            poll_interval=timedelta(seconds=1),
            credentials_ref="ghp_0123456789abcdefghijklmnopqrstuvwxyz",
            allowed_namespaces=["UPPER"],
            analysis_url_prefixes=["ftp://checks.example.com"],
            required_approvals=11,
            commit_url_template="javascript:alert(1)//{commit}",
            notify_urls=["https://user:pw@hooks.example.com"],
        )
    problems = raised.value.problems
    assert set(problems) == {
        "name",
        "url",
        "branch",
        "path",
        "poll_interval",
        "credentials_ref",
        "allowed_namespaces",
        "analysis_url_prefixes",
        "required_approvals",
        "commit_url_template",
        "notify_urls",
    }
    assert "must not contain credentials" in problems["url"][0]
    assert "invalid branch name" in problems["branch"][0]
    assert "from 5s to 24h" in problems["poll_interval"][0]
    assert "not shown, it may be a secret" in problems["credentials_ref"][0]
    assert "from 0 to 10" in problems["required_approvals"][0]
    text = str(raised.value)
    assert "--allow-namespace: 'UPPER' is not a namespace name or glob" in text
    assert "hunter2" not in text and "ghp_0123" not in text
    assert not Source.objects.exists() and not SourceAudit.objects.exists()


def test_a_notification_url_longer_than_its_row_keeps_is_refused(repo):
    """A 2,100-character URL (a chat webhook's signed path) was taken; every event of the source then
    failed in the database inside the transaction of the move it told of: no rollout could start, step
    or finish rolling back."""
    long_hook = "https://hooks.example.com/" + "a" * 2100
    with pytest.raises(SourceSettingsError) as raised:
        source_admin.source_add(name="shop", url=repo.url, allowed_namespaces=["t*"], notify_urls=[long_hook])
    assert raised.value.problems["notify_urls"] == ["at most 2000 characters"]
    assert not Source.objects.exists()

    with pytest.raises(SourceSettingsError, match="at least one allowed namespace"):
        source_admin.source_add(name="empty", url=repo.url, allowed_namespaces=[" "])
    # A token in the query is a credential too: stored, it would be shown as *** and written back so.
    with pytest.raises(SourceSettingsError, match="must not contain credentials") as query_token:
        source_admin.source_add(
            name="query",
            url="https://git.example.com/x.git?private_token=glpat-s3cr3t",
            allowed_namespaces=["a"],
        )
    assert "glpat-s3cr3t" not in str(query_token.value)


@pytest.mark.parametrize(
    "reference",
    ["env:SECRET_KEY", "env:DATABASE_URL", "file:/var/run/secrets/kubernetes.io/serviceaccount/token"],
)
def test_an_admin_cannot_point_a_sources_credentials_at_the_platforms_own_secrets(repo, reference):
    # Sent as Basic authentication to whatever host the URL names, they would leave with the next fetch.
    source = source_admin.source_add(name="shop", url=repo.url, allowed_namespaces=["team-*"])
    with pytest.raises(SourceSettingsError) as raised:
        source_admin.source_update(source, url="https://attacker.example/r.git", credentials_ref=reference)
    assert "not a Git credential" in raised.value.problems["credentials_ref"][0]
    assert Source.objects.get(pk=source.pk).credentials_ref == ""


def test_add_update_suspend_resume_leave_one_audit_row_each_with_before_and_after(repo, people):
    actor = Actor.of_user(_admin(people), AuditVia.API)
    source = source_admin.source_add(
        name="shop", url=repo.url, allowed_namespaces=["t*"], credentials_ref="env:SHOP_TOKEN", actor=actor
    )
    source_admin.source_update(source, actor=actor, branch="refs/heads/release", required_approvals=2)
    source_admin.source_update(source, actor=actor, branch="release")  # no change: no row
    source_admin.source_suspend(source, actor=actor)
    source_admin.source_suspend(source, actor=actor)  # already suspended: no row
    source_admin.source_resume(source, actor=actor)

    rows = list(SourceAudit.objects.filter(source=source).order_by("id"))
    assert [(row.action, row.actor, row.via) for row in rows] == [
        ("create", "ada-admin", "api"),
        ("update", "ada-admin", "api"),
        ("suspend", "ada-admin", "api"),
        ("resume", "ada-admin", "api"),
    ]
    created, updated, suspended, _resumed = rows
    assert created.before is None
    assert created.after["credentials_ref"] == "env:SHOP_TOKEN"
    assert "webhook_secret_encrypted" not in created.after
    assert updated.changed == ["branch", "required_approvals"]
    assert (updated.before["branch"], updated.after["branch"]) == ("main", "release")
    assert (updated.before["required_approvals"], updated.after["required_approvals"]) == (0, 2)
    assert suspended.changed == ["suspended"]

    with pytest.raises(TypeError, match="append-only"):
        created.delete()
    with pytest.raises(TypeError, match="append-only"):
        SourceAudit.objects.filter(pk=created.pk).update(actor="someone else")
    with transaction.atomic(), pytest.raises(Exception, match="append-only"), connection.cursor() as cursor:
        cursor.execute("UPDATE gitops_sourceaudit SET actor = 'x' WHERE id = %s", [created.pk])


def test_only_the_admin_role_may_manage_sources(repo, people):
    source = source_admin.source_add(name="shop", url=repo.url, allowed_namespaces=["t*"])
    for role in ("viewer", "approver"):
        actor = Actor.of_user(people[role], AuditVia.DASHBOARD)
        with pytest.raises(PermissionDenied):
            source_admin.source_add(name="other", url=repo.url, allowed_namespaces=["t*"], actor=actor)
        with pytest.raises(PermissionDenied):
            source_admin.source_update(source, actor=actor, branch="x")
        with pytest.raises(PermissionDenied):
            source_admin.source_suspend(source, actor=actor)
        with pytest.raises(PermissionDenied):
            source_admin.source_remove(source, objects=ObjectsOnRemoval.KEEP, actor=actor)
    assert list(Source.objects.values_list("name", "branch", "suspended")) == [("shop", "main", False)]
    assert list(SourceAudit.objects.values_list("action", flat=True)) == ["create"]


def test_the_git_location_does_not_move_under_an_active_rollout(paused_rollout, repo):
    source = paused_rollout.source
    with pytest.raises(SourceSettingsError) as raised:
        source_admin.source_update(source, branch="other", path="sub")
    assert set(raised.value.problems) == {"branch", "path"}
    assert f"rollout {paused_rollout.pk} is paused" in str(raised.value)
    # What does not move the Git location may change.
    source_admin.source_update(source, poll_interval=timedelta(minutes=5), notify_urls=[])
    assert Source.objects.get(pk=source.pk).poll_interval == timedelta(minutes=5)


def test_a_changed_path_is_read_from_its_new_directory(repo, make_namespaces, make_source, sync, cluster):
    (namespace,) = make_namespaces("app")
    for directory, value in (("one", "1"), ("two", "2")):
        repo.write_all(
            {
                f"{directory}/sluice.yaml": policy([namespace]),
                f"{directory}/configmaps/app.yaml": configmap("app", {"DIR": value}),
            }
        )
    repo.commit()
    source = make_source(path="one")
    sync(source)
    assert cluster.get_configmap(namespace, "app")["data"] == {"DIR": "1"}

    source_admin.source_update(source, path="/two/")
    sync(source)

    assert Source.objects.get(pk=source.pk).path == "two"
    assert cluster.get_configmap(namespace, "app")["data"] == {"DIR": "2"}, (
        "the same commit, another directory"
    )


# -- suspend and resume --------------------------------------------------------------------------


def test_a_suspended_source_is_not_polled_while_another_is(
    repo, make_namespaces, make_source, celery_worker, worker_env, cluster, tmp_path
):
    (namespace,) = make_namespaces("app")
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"v": "1"})})
    repo.commit()
    suspended = make_source(poll_interval=timedelta(seconds=5))
    source_admin.source_suspend(suspended)
    # The control polls the same repository, into a namespace of its own.
    (other,) = make_namespaces("other")
    control_repo_files = {"sluice.yaml": policy([other]), "configmaps/app.yaml": configmap("app", {"v": "1"})}
    repo.write_all({f"control/{path}": content for path, content in control_repo_files.items()})
    repo.commit()
    control = make_source(path="control", poll_interval=timedelta(seconds=5))

    assert polling.sources_claim_due() == [control.pk]
    Source.objects.update(next_poll_at=timezone.now())
    with running_beat(worker_env, tmp_path / "schedule", name="beat-suspended"):
        poll(lambda: cluster.get_configmap(other, "app"), timeout=60, interval=0.2, what="the control's poll")
        poll(
            lambda: (
                Revision.objects.filter(source=control).count()
                and Source.objects.get(pk=control.pk).last_synced_at
            ),
            timeout=30,
            what="the control's sync to be recorded",
        )
    assert not Revision.objects.filter(source=suspended).exists(), "beat never synced the suspended source"
    assert cluster.get_configmap(namespace, "app") is None


def test_a_push_to_a_suspended_source_is_ignored_and_a_manual_sync_still_runs(
    repo, make_namespaces, make_source, sync, cluster
):
    (namespace,) = make_namespaces("app")
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"v": "1"})})
    repo.commit()
    source = make_source()
    webhook_secrets.webhook_secret_set(source, SECRET)
    source_admin.source_suspend(source)

    body = f'{{"ref": "refs/heads/main", "after": "{repo.head()}"}}'.encode()
    response = Client().post(
        f"/webhooks/git/{source.name}",
        data=body,
        content_type="application/json",
        HTTP_X_GITHUB_EVENT="push",
        HTTP_X_GITHUB_DELIVERY="d-1",
        HTTP_X_HUB_SIGNATURE_256=sign(SECRET, body),
    )

    assert response.status_code == 202
    assert response.json()["status"] == "ignored"
    assert "is suspended" in response.json()["reason"]
    assert WebhookDelivery.objects.get(source=source).outcome == "ignored"
    scraped = metrics.render()[0].decode()
    assert f'sluice_source_suspended{{source="{source.name}"}} 1.0' in scraped
    assert not Source.objects.get(pk=source.pk).sync_queued
    # A timer's or a poll's task (automatic) does nothing; one someone asked for runs.
    assert sync(source, automatic=True)["outcome"] == "suspended"
    assert cluster.get_configmap(namespace, "app") is None
    assert sync(source)["outcome"] == "applied"
    assert cluster.get_configmap(namespace, "app")["data"] == {"v": "1"}


def test_a_timed_pause_waits_while_suspended_and_goes_on_after_resume(
    repo, make_namespaces, make_source, sync, cluster
):
    targets = make_namespaces("canary", "rest")
    repo.write_all({"sluice.yaml": policy(targets), "configmaps/app.yaml": configmap("app", {"V": "1"})})
    repo.commit("v1")
    source = make_source()
    sync(source)
    steps = [{"setWeight": 50}, {"pause": {"duration": "1h"}}]
    repo.write_all(
        {
            "sluice.yaml": policy(targets, rollout={"steps": steps}),
            "configmaps/app.yaml": configmap("app", {"V": "2"}),
        }
    )
    repo.commit("v2")
    assert sync(source)["outcome"] == "paused"
    source_admin.source_suspend(source)
    paused = wait_for(source, phase="Paused", waiting_for="timer")
    Rollout.objects.filter(pk=paused.pk).update(pause_until=timezone.now() - timedelta(seconds=1))

    assert source.pk not in polling.sources_with_due_rollouts(), "a suspended source's timer waits"
    assert sync(source, automatic=True)["outcome"] == "suspended"  # the timer's own wake
    assert Rollout.objects.get(pk=paused.pk).phase == "Paused"

    source_admin.source_resume(source)  # resuming syncs at once
    wait_for(source, phase="Completed")
    assert [cluster.get_configmap(ns, "app")["data"]["V"] for ns in targets] == ["2", "2"]


def test_an_abort_of_a_suspended_source_is_still_swept(paused_rollout, people):
    source = paused_rollout.source
    source_admin.source_suspend(source)
    Rollout.objects.filter(pk=paused_rollout.pk).update(abort_requested_by="otto", abort_reason="bad")
    Source.objects.filter(pk=source.pk).update(sync_queued=False)
    assert source.pk in polling.sources_with_due_rollouts()


def an_abort_and_a_due_poll(paused_rollout, make_source) -> tuple[Source, Source]:
    """Two sources for one sweep: one whose rollout waits for its abort (its poll an hour away), and one
    whose poll is due (hourly)."""
    aborting = paused_rollout.source
    Rollout.objects.filter(pk=paused_rollout.pk).update(abort_requested_by="otto", abort_reason="bad")
    later = timezone.now() + timedelta(hours=1)
    Source.objects.filter(pk=aborting.pk).update(sync_queued=False, next_poll_at=later)
    polled = make_source(poll_interval=timedelta(hours=1))
    Source.objects.filter(pk=polled.pk).update(next_poll_at=timezone.now() - timedelta(seconds=1))
    return aborting, polled


def test_beats_sweep_gives_back_every_claim_whose_sync_the_broker_refuses(
    paused_rollout, make_source, monkeypatch
):
    """A refused send must not keep a due poll away for its whole interval, nor leave a due
    rollout's source claimed with no task behind it; the sends after a refused one are still tried."""
    from gitops import schedule
    from gitops.tasks import poll_sources

    aborting, polled = an_abort_and_a_due_poll(paused_rollout, make_source)
    tried = refuse_sends(monkeypatch)
    sweep = poll_sources.apply()
    assert isinstance(sweep.result, schedule.SyncNotQueued), "the sweep fails, so the refusal is seen"
    assert [kwargs["source_id"] for kwargs in tried] == [polled.pk, aborting.pk]
    assert not Source.objects.get(pk=aborting.pk).sync_queued, "the due rollout's claim is given back"
    assert Source.objects.get(pk=polled.pk).next_poll_at <= timezone.now(), "the poll is due again"

    sent = keep_sends(monkeypatch)
    assert poll_sources.apply().get() == sorted([polled.pk, aborting.pk])
    assert sorted(kwargs["source_id"] for kwargs in sent) == sorted([polled.pk, aborting.pk]), "both sent"
    assert Source.objects.get(pk=polled.pk).next_poll_at > timezone.now() + timedelta(minutes=59)


def test_a_database_error_mid_sweep_still_sends_the_polls_it_had_claimed(
    paused_rollout, make_source, monkeypatch
):
    """Beat's sweep claims the due polls (each claim commits, moving the poll an interval on), then
    looks for due rollouts. A database error there failed the sweep with the polls claimed and not
    sent: each waited a whole interval. The claims made are sent; what was not claimed waits for the
    next sweep, seconds later, and no sync is left marked queued without a task."""
    from django.db import OperationalError

    from gitops import schedule
    from gitops.tasks import poll_sources

    aborting, polled = an_abort_and_a_due_poll(paused_rollout, make_source)
    sent = keep_sends(monkeypatch)
    claim = schedule.sync_queued_claim

    def connection_lost(source_id: int) -> bool:
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(schedule, "sync_queued_claim", connection_lost)
    assert poll_sources.apply().get() == [polled.pk]
    assert [kwargs["source_id"] for kwargs in sent] == [polled.pk], "the claimed poll is sent"
    assert not Source.objects.get(pk=aborting.pk).sync_queued, "no claim without a task"

    monkeypatch.setattr(schedule, "sync_queued_claim", claim)
    assert poll_sources.apply().get() == [aborting.pk], "the next sweep claims the abort"
    assert [kwargs["source_id"] for kwargs in sent] == [polled.pk, aborting.pk]


def test_a_sweep_whose_look_for_due_rollouts_fails_still_sends_the_polls_it_claimed(make_source, monkeypatch):
    """The same, when the due rollouts cannot even be read: the polls claimed before are sent."""
    from django.db import OperationalError

    from gitops.tasks import poll_sources

    polled = make_source(poll_interval=timedelta(hours=1))
    Source.objects.filter(pk=polled.pk).update(next_poll_at=timezone.now() - timedelta(seconds=1))
    sent = keep_sends(monkeypatch)

    def unreadable(**options) -> list[int]:
        raise OperationalError("canceling statement due to statement timeout")

    monkeypatch.setattr(polling, "sources_with_due_rollouts", unreadable)
    assert poll_sources.apply().get() == [polled.pk]
    assert [kwargs["source_id"] for kwargs in sent] == [polled.pk]


def test_a_source_due_for_a_poll_and_an_abort_is_claimed_once_and_given_back_whole(
    paused_rollout, monkeypatch
):
    """The poll's sync runs the abort too: the sweep must not also claim ``sync_queued`` for it, a
    claim the refused poll's release would not give back (pushes would be refused as queued)."""
    from gitops import schedule
    from gitops.tasks import poll_sources

    source = paused_rollout.source
    Rollout.objects.filter(pk=paused_rollout.pk).update(abort_requested_by="otto", abort_reason="bad")
    due = timezone.now() - timedelta(seconds=1)
    Source.objects.filter(pk=source.pk).update(sync_queued=False, next_poll_at=due)
    tried = refuse_sends(monkeypatch)

    assert isinstance(poll_sources.apply().result, schedule.SyncNotQueued)
    assert [kwargs["source_id"] for kwargs in tried] == [source.pk], "one sync for both"
    after = Source.objects.get(pk=source.pk)
    assert (after.sync_queued, after.next_poll_at <= timezone.now()) == (False, True)


# -- delete -----------------------------------------------------------------------------------------


def test_a_removals_log_names_the_commit_the_source_applied_not_one_forged_on_the_object(
    applied, cluster, people, repo
):
    """Whoever may edit a ConfigMap rewrote its sluice.dev/commit to a well-formed hash Sluice never
    applied: the removal's release row named it (before 2026-12-07), as a heal's did before."""
    source, targets = applied
    live = cluster.get_configmap(targets[0], "app")
    forged = "f" * 40
    edited = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "app", "namespace": targets[0], "annotations": {COMMIT_ANNOTATION: forged}},
        "data": live["data"],
    }
    cluster.apply_configmap(edited, field_manager="kubectl-edit", force=True)

    removal = source_admin.source_remove(
        source, objects=ObjectsOnRemoval.KEEP, actor=Actor.of_user(_admin(people), AuditVia.DASHBOARD)
    )
    removal_done(removal)

    released = Change.objects.get(source_id=source.pk, action="release", namespace=targets[0], name="app")
    assert released.commit == repo.head() != forged


def test_delete_keep_leaves_the_objects_without_sluice_labels_or_ownership(applied, cluster, people):
    source, targets = applied
    removal = source_admin.source_remove(
        source, objects=ObjectsOnRemoval.KEEP, actor=Actor.of_user(_admin(people), AuditVia.DASHBOARD)
    )
    assert Source.objects.get(pk=source.pk).suspended, "a source being deleted is suspended at once"

    done = removal_done(removal)

    assert (done.status, done.objects_total, done.objects_done, done.objects_failed) == ("done", 3, 3, 0)
    for namespace, name in [(targets[0], "app"), (targets[1], "app"), (targets[0], "checkout")]:
        live = cluster.get_configmap(namespace, name)
        assert live is not None, "kept"
        metadata = live["metadata"]
        assert not any(key.startswith("sluice.dev/") for key in metadata.get("labels") or {})
        assert MANAGED_BY_LABEL not in (metadata.get("labels") or {})
        assert COMMIT_ANNOTATION not in (metadata.get("annotations") or {})
        assert not [
            entry for entry in metadata.get("managedFields") or [] if entry.get("manager") == "sluice"
        ]
    assert cluster.get_configmap(targets[0], "app")["data"] == {"V": "1"}, "the content stays"
    changes = Change.objects.filter(source_id=source.pk, action="release")
    assert sorted((c.namespace, c.name, c.actor, c.result) for c in changes) == sorted(
        [
            (targets[0], "app", "ada-admin", "ok"),
            (targets[1], "app", "ada-admin", "ok"),
            (targets[0], "checkout", "ada-admin", "ok"),
        ]
    )
    assert not Source.objects.filter(pk=source.pk).exists()
    assert Source.all_objects.get(pk=source.pk).deleted_at is not None
    assert not ManagedObject.objects.filter(source_id=source.pk).exists()
    assert list(SourceAudit.objects.filter(source_id=source.pk).values_list("action", flat=True)) == [
        "deleted",
        "delete",
        "create",
    ]
    # Its name is free again, and its history stays.
    source_admin.source_add(name=source.name, url=source.url, allowed_namespaces=["t*"])
    assert Change.objects.filter(source_id=source.pk).count() == 6


def test_delete_prune_deletes_the_objects_and_logs_each(applied, cluster):
    source, targets = applied
    assert PublishedFlag.objects.filter(source_id=source.pk).count() == 1
    # An object taken over since (relabelled by someone) is not this source's to delete.
    cluster.apply_configmap(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "app", "namespace": targets[1], "labels": {SOURCE_LABEL: "someone-else"}},
        },
        field_manager="sluice",
        force=True,
    )

    done = removal_done(source_admin.source_remove(source, objects=ObjectsOnRemoval.PRUNE))

    assert done.status == "done", done.message
    assert cluster.get_configmap(targets[0], "app") is None
    assert cluster.get_configmap(targets[0], "checkout") is None
    assert cluster.get_configmap(targets[1], "app") is not None, "left alone"
    deletes = Change.objects.filter(source_id=source.pk, action="delete", rollout__isnull=True)
    assert sorted((c.namespace, c.name, c.result) for c in deletes) == [
        (targets[0], "app", "ok"),
        (targets[0], "checkout", "ok"),
    ]
    assert all(change.before and change.after is None for change in deletes), "the content that went is kept"
    # Each DELETE was conditioned on the version the removal's listing read, with no read before it.
    assert all(change.intent.live_version.isdigit() and change.intent.live_uid for change in deletes)
    assert not Source.objects.filter(pk=source.pk).exists()
    # Its flags leave the Flags page and /api/flags with it (they stayed there, at 100%, served nowhere).
    assert not PublishedFlag.objects.filter(source_id=source.pk).exists()


def test_delete_is_refused_while_a_rollout_is_active_and_works_once_it_is_aborted(
    paused_rollout, people, cluster
):
    source = paused_rollout.source
    with pytest.raises(
        SourceRemovalRefused, match=f"active rollout \\({paused_rollout.pk}, paused\\); abort it"
    ):
        source_admin.source_remove(source, objects=ObjectsOnRemoval.PRUNE)
    assert not SourceRemoval.objects.exists()
    assert not Source.objects.get(pk=source.pk).suspended
    assert list(SourceAudit.objects.filter(source=source).values_list("action", flat=True)) == ["create"]

    decisions.rollout_abort(paused_rollout.pk, user=people["approver"], reason="before deleting")
    wait_for(source, phase="Aborted")
    done = removal_done(source_admin.source_remove(source, objects=ObjectsOnRemoval.PRUNE))

    assert done.status == "done", done.message
    assert not ManagedObject.objects.filter(source_id=source.pk).exists()


def test_delete_is_refused_while_an_ended_rollout_still_owes_a_cluster_its_rollback(paused_rollout, people):
    source = paused_rollout.source
    decisions.rollout_abort(paused_rollout.pk, user=people["approver"], reason="bad")
    wait_for(source, phase="Aborted")
    # As if the canary's cluster had not answered the rollback: it is restored once it does.
    Rollout.objects.filter(pk=paused_rollout.pk).update(rollback_pending_clusters=["member-9"])

    with pytest.raises(
        SourceRemovalRefused, match=f"rollout {paused_rollout.pk} still owes member-9 a rollback"
    ):
        source_admin.source_remove(source, objects=ObjectsOnRemoval.KEEP)
    assert not SourceRemoval.objects.exists()
    # Nor is the rollout retried: its owed rollback would take back what the retry writes there.
    with pytest.raises(decisions.RolloutError, match="still owes member-9 its rollback"):
        decisions.rollout_retry(paused_rollout.pk, user=people["approver"])

    Rollout.objects.filter(pk=paused_rollout.pk).update(rollback_pending_clusters=[])
    assert removal_done(source_admin.source_remove(source, objects=ObjectsOnRemoval.KEEP)).status == "done"


def test_a_rollout_that_starts_after_the_request_fails_the_removal_and_the_source_stays(
    paused_rollout, celery_worker
):
    source = paused_rollout.source
    Rollout.objects.filter(pk=paused_rollout.pk).update(phase="Completed")
    with transaction.atomic():
        removal = source_admin.source_remove(source, objects=ObjectsOnRemoval.KEEP)
        # As if a sync had started a rollout in between; the worker runs the removal after this commits.
        Rollout.objects.filter(pk=paused_rollout.pk).update(phase="Paused")

    done = removal_done(removal)

    assert done.status == "failed"
    assert f"rollout {paused_rollout.pk} started after the removal was asked for" in done.message
    assert Source.objects.get(pk=source.pk).suspended
    with pytest.raises(SourceRemovalRefused, match="active rollout"):
        source_admin.source_remove(source, objects=ObjectsOnRemoval.KEEP)


def test_one_removal_at_a_time(applied):
    source, _ = applied
    with transaction.atomic():
        source_admin.source_remove(source, objects=ObjectsOnRemoval.KEEP)
        with pytest.raises(SourceRemovalRefused, match="already being deleted"):
            source_admin.source_remove(source, objects=ObjectsOnRemoval.PRUNE)
        with pytest.raises(IntegrityError), transaction.atomic():
            SourceRemoval.objects.create(
                source=source, source_name=source.name, mode="keep", requested_by="x"
            )


def _admin(people):
    from django.contrib.auth.models import Group, User

    admin = User.objects.create_user("ada-admin", password="x")
    admin.groups.add(Group.objects.get(name="admin"))
    return User.objects.get(pk=admin.pk)


def test_a_finished_removals_intents_are_emptied_after_their_retention(applied):
    from gitops import retention
    from gitops.models import ApplyIntent

    source, _ = applied
    done = removal_done(source_admin.source_remove(source, objects=ObjectsOnRemoval.PRUNE))
    intents = ApplyIntent.objects.filter(removal=done)
    assert intents.count() == 3 and all(intent.before for intent in intents)
    assert not retention.expired()["intents_cleared"].filter(removal=done).exists(), "not yet"

    month_ago = timezone.now() - timedelta(days=30)
    SourceRemoval.objects.filter(pk=done.pk).update(finished_at=month_ago)
    intents.update(created_at=month_ago)
    retention.purge()

    assert [intent.before for intent in intents] == [None, None, None]
    assert Change.objects.filter(intent__removal=done).exclude(before=None).count() == 3, "the log keeps it"


def test_a_crashed_removal_leaves_nothing_a_sync_or_a_later_removal_would_do_wrongly(applied, sync, cluster):
    from gitops.models import ApplyIntent

    source, targets = applied
    # A prune removal whose worker died for good: it had deleted one object and not yet another.
    crashed = SourceRemoval.objects.create(
        source=source, source_name=source.name, mode="prune", requested_by="root", via="cli", status="failed"
    )
    left = {"source": source, "removal": crashed, "rollout": None, "commit": "c", "action": "delete"}
    left["cluster"] = "default"
    deleted = ApplyIntent.objects.create(namespace=targets[1], name="app", **left)
    not_yet = ApplyIntent.objects.create(namespace=targets[0], name="app", **left)

    sync(source)  # a sync does not carry out a removal's intents
    assert ApplyIntent.objects.filter(removal=crashed, status="pending").count() == 2
    assert cluster.get_configmap(targets[0], "app") is not None
    cluster.delete_configmap(targets[1], "app")  # what the crashed run had done

    done = removal_done(source_admin.source_remove(source, objects=ObjectsOnRemoval.KEEP))

    assert done.status == "done", done.message
    kept = cluster.get_configmap(targets[0], "app")
    assert kept is not None, "the later removal said keep"
    assert "sluice.dev/source" not in (kept["metadata"].get("labels") or {})
    assert ApplyIntent.objects.get(pk=not_yet.pk).status == "dropped"
    assert not Change.objects.filter(intent_id=not_yet.pk).exists(), "never carried out, never logged"
    assert Change.objects.get(intent_id=deleted.pk).action == "delete", "what the crashed run did is logged"
    assert Change.objects.get(intent__removal=done, namespace=targets[0], name="app").action == "release"


def test_an_abort_of_a_suspended_source_rolls_back_without_starting_a_commit_pushed_meanwhile(
    paused_rollout, people, repo, sync, cluster
):
    source = paused_rollout.source
    source_admin.source_suspend(source)
    repo.write("configmaps/app.yaml", configmap("app", {"V": "3"}))
    pushed = repo.commit("v3, pushed while suspended")
    decisions.rollout_abort(paused_rollout.pk, user=people["approver"])

    # The abort's own pass (a decision on a rollout, queued by the abort): it rolls back, and Git is
    # not asked. A pass of that kind again finds nothing more to do.
    assert wait_for(source, phase="Aborted").pk == paused_rollout.pk
    assert sync(source, actor="otto", rollouts_only=True)["outcome"] == "suspended"
    assert not Rollout.objects.filter(source=source, revision__commit=pushed).exists()
    assert not Revision.objects.filter(source=source, commit=pushed).exists()
    namespaces = sorted({target["namespace"] for target in paused_rollout.intents.values("namespace")})
    assert [cluster.get_configmap(ns, "app")["data"]["V"] for ns in namespaces] == ["1"] * len(namespaces)
    # Someone's sync still runs whole, and resume picks the commit up.
    source_admin.source_resume(source)
    wait_for(source, phase="Paused", waiting_for="approval")
    assert rollout_of_commit(source, pushed)


def rollout_of_commit(source, commit):
    return Rollout.objects.filter(source=source, revision__commit=commit).first()


def test_an_administrators_edit_does_not_wait_for_a_pass_logging_changes(paused_rollout):
    """A pass logs its changes and its inventory in one transaction whose foreign keys hold key-share
    locks on the source's and the rollout's rows until it commits. An administrator's edit (here, a
    raised approval floor, which also gates the active rollout) changes neither row's key, so it takes
    the no-key lock, which a key-share lock does not block: it neither waits out a long pass nor can
    deadlock with one."""
    import threading

    import psycopg

    source = paused_rollout.source
    errors: list[Exception] = []

    def raise_the_floor() -> None:
        try:
            source_admin.source_update_scope(source, required_approvals=2)
        except Exception as exc:  # the test reports whatever ended it
            errors.append(exc)
        finally:
            connection.close()  # this thread's

    with psycopg.connect(**connection.get_connection_params()) as logging_pass:
        logging_pass.execute("SELECT 1 FROM gitops_source WHERE id = %s FOR KEY SHARE", [source.pk])
        logging_pass.execute("SELECT 1 FROM gitops_rollout WHERE id = %s FOR KEY SHARE", [paused_rollout.pk])
        admin = threading.Thread(target=raise_the_floor)
        admin.start()
        poll(
            lambda: not admin.is_alive(), timeout=20, what="the edit to finish while the pass holds its locks"
        )
        logging_pass.rollback()

    assert errors == []
    assert Source.objects.get(pk=source.pk).required_approvals == 2
    assert Rollout.objects.get(pk=paused_rollout.pk).approvals_required == 2


def _owned_by(cluster, namespace: str, name: str, owner: str) -> None:
    """The object as another Sluice source labels what it applies (it took the object over)."""
    from gitops.desired.content import MANAGED_BY_VALUE

    labels = {MANAGED_BY_LABEL: MANAGED_BY_VALUE, SOURCE_LABEL: owner}
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}}
    cluster.apply_configmap(
        {**manifest, "metadata": {**manifest["metadata"], "labels": labels}, "data": {"V": "b"}},
        field_manager="other-sluice",
    )


def test_a_removal_never_finishes_a_crashed_ones_write_on_an_object_another_source_took_over_since(
    applied, cluster
):
    """A keep removal failed, leaving the release of an object pending; then the object was deleted and
    another source applied one of the same name. Deleting the source again once released that object
    too, stripping the other source's labels (which then saw it as someone else's for good), and logged
    it as this source's. It is left alone now, and so is the other source's inventory."""
    from gitops.models import ApplyIntent

    source, targets = applied
    failed = SourceRemoval.objects.create(
        source=source, source_name=source.name, mode="keep", requested_by="root", via="cli", status="failed"
    )
    left = {"source": source, "removal": failed, "rollout": None, "commit": "c", "action": "release"}
    release = ApplyIntent.objects.create(cluster="default", namespace=targets[0], name="app", **left)
    cluster.delete_configmap(targets[0], "app")
    _owned_by(cluster, targets[0], "app", "someone-else")

    done = removal_done(source_admin.source_remove(source, objects=ObjectsOnRemoval.KEEP))

    assert done.status == "done", done.message
    labels = cluster.get_configmap(targets[0], "app")["metadata"].get("labels") or {}
    assert labels.get(SOURCE_LABEL) == "someone-else", "the other source's object keeps its labels"
    assert ApplyIntent.objects.get(pk=release.pk).status == "dropped"
    assert not Change.objects.filter(intent_id=release.pk).exists()


@pytest.mark.parametrize("mode", [ObjectsOnRemoval.PRUNE, ObjectsOnRemoval.KEEP])
def test_an_object_taken_over_between_the_removals_listing_and_its_write_is_left_alone(
    applied, cluster, monkeypatch, mode
):
    """Another source took an object over after the removal listed it as this source's: Sluice refused
    its own delete or release (the object is no longer the source's), and the removal failed, leaving the
    source suspended until someone deleted it again. It is left alone now, as if the listing had seen it,
    and the removal finishes in one run."""
    from gitops import source_removal
    from tests.takeover import taking_over_first

    source, targets = applied
    keep_sends(monkeypatch)  # the removal runs here, with the takeover between its listing and its write
    removal = source_admin.source_remove(source, objects=mode)
    calls: list[list[str]] = []
    execute = taking_over_first(source_removal.intents_execute, cluster, targets[1], "app", calls)
    monkeypatch.setattr(source_removal, "intents_execute", execute)

    done = removal_run_once_free(removal.pk)

    assert calls == [["app", "app", "checkout"]], "the listing saw all three as the source's"
    assert (done.status, done.objects_total, done.objects_done, done.objects_failed) == ("done", 3, 2, 0)
    assert done.objects_left_alone == 1, "the page's counts add up: 2 of 3, 1 left alone"
    assert "1 taken over or deleted by someone else while the removal ran, left alone" in done.message
    taken = cluster.get_configmap(targets[1], "app")
    assert taken["metadata"]["labels"][SOURCE_LABEL] == "someone-else", "its new owner's labels stay"
    assert taken["data"] == {"V": "b"}
    refused = Change.objects.get(source_id=source.pk, namespace=targets[1], name="app", rollout__isnull=True)
    assert refused.result != "ok" and "it is now source someone-else's" in refused.error, "logged as refused"
    gone = mode == ObjectsOnRemoval.PRUNE
    assert (cluster.get_configmap(targets[0], "app") is None) == gone
    assert not Source.objects.filter(pk=source.pk).exists(), "deleted in one run"
    assert not ManagedObject.objects.filter(source_id=source.pk).exists()


def test_a_delete_the_cluster_refuses_fails_the_removal_and_the_source_stays(applied, cluster, kube_client):
    """A refusal of an object still the source's (here the cluster's own admission policy) is a failure:
    only an object another took over is left alone. The source stays, suspended, with that object."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from tests.admission import updates_denied

    source, targets = applied
    core = client.CoreV1Api(kube_client())

    def delete_denied() -> bool:
        try:
            core.delete_namespaced_config_map("app", targets[1], dry_run="All")
        except ApiException:
            return True
        return False

    with updates_denied(
        kube_client(),
        targets[1],
        expression="false",
        message="nothing is deleted here",
        denied=delete_denied,
        operations=("DELETE",),
    ):
        done = removal_done(source_admin.source_remove(source, objects=ObjectsOnRemoval.PRUNE))

    assert (done.status, done.objects_done, done.objects_failed) == ("failed", 2, 1), done.message
    assert "nothing is deleted here" in done.message
    assert "taken over" not in done.message
    assert cluster.get_configmap(targets[1], "app")["metadata"]["labels"][SOURCE_LABEL] == source.name
    kept = ManagedObject.objects.filter(source_id=source.pk)
    assert [(o.namespace, o.name) for o in kept] == [(targets[1], "app")], "the inventory keeps it"
    assert Source.all_objects.get(pk=source.pk).suspended


def test_a_removal_prunes_nothing_outside_the_scope_an_administrator_left_the_source(applied, cluster):
    """Passes neither write nor prune a target taken out of the source's scope; its removal now leaves
    those objects as they are too (the inventory lets go of them)."""
    source, targets = applied
    source_admin.source_update_scope(source, allowed_namespaces=[targets[0]])

    done = removal_done(source_admin.source_remove(source, objects=ObjectsOnRemoval.PRUNE))

    assert done.status == "done", done.message
    assert cluster.get_configmap(targets[0], "app") is None, "pruned where the source may write"
    assert cluster.get_configmap(targets[1], "app") is not None, "left alone outside its scope"
    assert not ManagedObject.objects.filter(source=source).exists()
    # Said, not counted as pruned: it said "2 of 2 pruned" while one was still there, with its labels.
    assert done.objects_done == done.objects_total - 1
    assert f"1 left as they are outside the source's scope, with its labels: default/{targets[1]}/app" in (
        done.message
    )


def test_a_removal_that_finds_a_rollback_owed_when_it_runs_fails_and_keeps_the_source(applied, cluster):
    """A pass already running when the removal was asked for can end a rollout owing a cluster its
    rollback; the removal checks again when it runs, for nothing would restore that cluster after."""

    source, targets = applied
    removal = SourceRemoval.objects.create(
        source=source, source_name=source.name, mode="prune", requested_by="root", via="cli", status="queued"
    )
    owing = Rollout.objects.filter(source=source).latest("pk")
    Rollout.objects.filter(pk=owing.pk).update(rollback_pending_clusters=["default"])

    ended = removal_run_once_free(removal.pk)

    assert ended.status == "failed" and "owes default a rollback" in ended.message, ended.message
    assert cluster.get_configmap(targets[0], "app") is not None
    assert Source.objects.filter(pk=source.pk).exists()


def test_a_removal_task_delivered_again_after_the_removal_ended_changes_nothing(applied, monkeypatch):
    """Two deliveries of one removal's task: the second read the removal as queued, then got the
    source's lock only after the first had deleted the source. It leaves the removal as it ended. Before,
    it set the removal running again and deleted the source a second time: a second audit entry, and
    the removal's end moved."""
    import contextlib

    from gitops import source_removal

    source, _ = applied
    removal = SourceRemoval.objects.create(
        source=source, source_name=source.name, mode="keep", requested_by="root", via="cli", status="queued"
    )
    real_lock = source_removal.source_lock

    @contextlib.contextmanager
    def locked_after_the_first_delivery_ended(locked):
        monkeypatch.setattr(source_removal, "source_lock", real_lock)
        assert source_removal.source_removal_run(removal.pk).status == "done"
        with real_lock(locked) as acquired:
            yield acquired

    monkeypatch.setattr(source_removal, "source_lock", locked_after_the_first_delivery_ended)

    again = source_removal.source_removal_run(removal.pk)

    assert again.status == "done"
    deleted = list(SourceAudit.objects.filter(source_id=source.pk, action="deleted"))
    assert len(deleted) == 1, "the source was deleted once"
    assert SourceRemoval.objects.get(pk=removal.pk).finished_at <= deleted[0].at, "its end did not move"


def test_a_removal_whose_task_the_broker_lost_is_sent_again_by_beats_sweep(applied, cluster, monkeypatch):
    """The removal's request committed, and the broker refused its task (or lost it in a failover).
    Nothing ran it, and the source stayed suspended and "being deleted" for good: resuming it and
    deleting it again were both refused. Beat's sweep sends it again once no task has taken it up for
    a while, never while something holds the source's lock, and once per claim."""
    import psycopg
    from kombu.exceptions import OperationalError

    from gitops.locks import LOCK_CLASS
    from gitops.tasks import poll_sources

    source, targets = applied
    refuse_sends(monkeypatch)
    with pytest.raises(OperationalError):
        source_admin.source_remove(source, objects=ObjectsOnRemoval.KEEP)
    removal = SourceRemoval.objects.get(source=source)
    assert removal.status == "queued"
    with pytest.raises(SourceRemovalRefused, match="already being deleted"):
        source_admin.source_remove(source, objects=ObjectsOnRemoval.KEEP)
    monkeypatch.undo()  # the broker is back
    assert polling.removals_claim_stale() == [], "not yet: its task may still come"
    SourceRemoval.objects.filter(pk=removal.pk).update(
        attempted_at=timezone.now() - polling.REMOVAL_RESEND_AFTER
    )
    with psycopg.connect(**connection.get_connection_params()) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", [LOCK_CLASS, source.pk])
        assert polling.removals_claim_stale() == [], "not while something holds the source"
        # Let go before closing: a closed connection's backend gives its locks up as it exits,
        # which a busy server does a moment later, after the sweep below has looked.
        holder.execute("SELECT pg_advisory_unlock(%s, %s)", [LOCK_CLASS, source.pk])

    poll_sources.apply()

    done = removal_done(removal)
    assert done.status == "done", done.message
    assert cluster.get_configmap(targets[0], "app") is not None, "kept"
    assert polling.removals_claim_stale(timezone.now() + polling.REMOVAL_RESEND_AFTER) == [], "ended"


def test_a_persons_sync_of_a_source_being_deleted_does_not_run(applied, repo, cluster, monkeypatch):
    """A deletion suspends the source at once, "so nothing syncs it meanwhile". A person's sync did:
    a commit pushed meanwhile went out to the cluster (and stayed there, the removal keeping objects)."""
    from kombu.exceptions import OperationalError

    from gitops import reconcile
    from gitops.models import Change

    source, targets = applied
    refuse_sends(monkeypatch)  # the removal waits in its queue: nothing has taken the source yet
    with pytest.raises(OperationalError):
        source_admin.source_remove(source, objects=ObjectsOnRemoval.KEEP)
    monkeypatch.undo()
    logged = Change.objects.filter(source=source).count()
    repo.write("configmaps/app.yaml", configmap("app", {"V": "2"}))
    repo.commit("v2, pushed while the source is being deleted")

    result = reconcile.source_sync(source.pk, manual=True, actor="otto")

    assert str(result.outcome) == "suspended", result
    assert Change.objects.filter(source=source).count() == logged, "nothing applied"
    assert cluster.get_configmap(targets[0], "app")["data"] == {"V": "1"}


def test_a_removal_a_task_is_trying_is_not_sent_again_by_beats_sweep(applied):
    """A removal's task that finds the source busy, or a cluster away, retries within minutes: every try
    counts as the removal being taken up, so beat's sweep sends no second task meanwhile, which could
    give up on the busy source and fail the removal while the first runs it."""
    import psycopg

    from gitops.locks import LOCK_CLASS
    from gitops.locks import SourceBusy as Busy
    from gitops.source_removal import source_removal_run

    source, _ = applied
    removal = SourceRemoval.objects.create(
        source=source, source_name=source.name, mode="keep", requested_by="root", via="cli", status="queued"
    )
    long_ago = timezone.now() - 2 * polling.REMOVAL_RESEND_AFTER
    SourceRemoval.objects.filter(pk=removal.pk).update(attempted_at=long_ago)
    with psycopg.connect(**connection.get_connection_params()) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", [LOCK_CLASS, source.pk])
        with pytest.raises(Busy):
            source_removal_run(removal.pk)

    assert SourceRemoval.objects.get(pk=removal.pk).attempted_at > long_ago
    assert polling.removals_claim_stale() == [], "its task is at it"


def test_a_removed_sources_aborted_rollout_is_not_retried(applied, repo, sync, people):
    """An approver's retry of a rollout whose source was removed since (its objects kept): nothing is
    started. Before, the retry made a rollout of the removed source, and queued a sync for it."""

    source, targets = applied
    repo.write_all(
        {
            "sluice.yaml": {**policy(targets), "rollout": {"steps": [{"setWeight": 50}, {"pause": {}}]}},
            "configmaps/app.yaml": configmap("app", {"V": "2"}),
        }
    )
    repo.commit("v2")
    assert sync(source)["outcome"] == "paused"
    paused = wait_for(source, phase="Paused", waiting_for="approval")
    decisions.rollout_abort(paused.pk, user=people["approver"])
    aborted = wait_for(source, phase="Aborted")
    removal = SourceRemoval.objects.create(
        source=source, source_name=source.name, mode="keep", requested_by="root", via="cli", status="queued"
    )
    assert removal_run_once_free(removal.pk).status == "done"
    rollouts = Rollout.objects.filter(source_id=source.pk).count()

    with pytest.raises(decisions.RolloutError, match="was removed; its rollouts are not retried"):
        decisions.rollout_retry(aborted.pk, user=people["approver"])

    assert Rollout.objects.filter(source_id=source.pk).count() == rollouts, "no rollout was started"


def test_a_masked_notification_url_from_before_a_key_rotation_still_keeps_its_url(repo, settings):
    """Fingerprints are keyed with SECRET_KEY: a form loaded before a rotation sends back lines masked
    under the old key, which SECRET_KEY_FALLBACKS still recognises (else each became a refused URL)."""
    from gitops.models import Source, masked_url

    hook = "https://hooks.example.com/T0/secret-path"
    source = source_admin.source_add(name="shop", url=repo.url, allowed_namespaces=["t*"], notify_urls=[hook])
    before_rotation = masked_url(hook)
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a rotated key, long enough to be taken for one: 0123456789abcdef"
    assert masked_url(hook) != before_rotation

    source_admin.source_update(source, notify_urls=[before_rotation, "https://other.example.com/x"])

    assert Source.objects.get(pk=source.pk).notify_urls == [hook, "https://other.example.com/x"]


def test_a_removal_that_meets_a_database_blip_is_retried_not_failed(applied, monkeypatch):
    """A deadlock or a serialization failure ended the removal's transaction: it is tried again, as a
    sync's blip is. Before, the removal ended failed, and the source stayed suspended until an
    administrator asked for the removal again."""
    from django.db import OperationalError

    from gitops import tasks

    source, _ = applied
    removal = SourceRemoval.objects.create(
        source=source, source_name=source.name, mode="keep", requested_by="root", via="cli", status="queued"
    )
    real_run, tries = tasks.source_removal_run, []

    def deadlocked_once(removal_id):
        tries.append(removal_id)
        if len(tries) == 1:
            raise OperationalError("deadlock detected")
        return real_run(removal_id)

    monkeypatch.setattr(tasks, "source_removal_run", deadlocked_once)

    answer = tasks.remove_source.apply(args=(removal.pk,)).get()

    assert answer["status"] == "done", answer
    assert tries == [removal.pk, removal.pk]
    assert not Source.all_objects.filter(pk=source.pk, deleted_at__isnull=True).exists()


def test_a_removal_deletes_the_sources_mirror_on_the_worker_that_ran_it(applied, people, worker_env):
    """A deleted source's mirror (its repository's files: configuration that may hold secrets) stayed on
    every worker's volume for good (before 2026-12-07)."""
    from pathlib import Path

    from gitops.fetch.mirror_sweep import mirror_path

    source, _ = applied
    mirror = Path(worker_env["SLUICE_DATA_DIR"]) / "mirrors" / mirror_path(source).name
    assert (mirror / "HEAD").is_file(), "the worker's pass fetched into it"

    removal = source_admin.source_remove(
        source, objects=ObjectsOnRemoval.KEEP, actor=Actor.of_user(_admin(people), AuditVia.DASHBOARD)
    )
    assert removal_done(removal).status == "done"

    assert not mirror.exists()


def test_the_sweep_deletes_mirrors_no_source_reads_and_spares_one_whose_source_is_busy(
    repo, make_source, settings
):
    """A deleted source's mirror, one of a repository its source has left (its commits were still served
    by id to previews), and one named before mirrors were named by repository go; the mirror a source
    reads stays, and so does a stale one while its source's lock is held (a pass may be using it)."""
    import threading
    from pathlib import Path

    from django.db import connection as this_threads

    from gitops.fetch.mirror_sweep import mirror_path, mirrors_sweep
    from gitops.locks import source_lock

    moved, busy, gone = make_source(), make_source(), make_source()
    old_place = mirror_path(moved)
    moved = source_admin.source_update(moved, url=f"{repo.url}-elsewhere")
    Source.objects.filter(pk=gone.pk).update(deleted_at=timezone.now())
    root = Path(settings.SLUICE_DATA_DIR) / "mirrors"
    made = {
        "current": mirror_path(moved),
        "left behind": old_place,
        "before naming": root / f"{moved.pk}.git",
        "deleted source": root / f"{gone.pk}-0123456789abcdef.git",
        "busy, left behind": root / f"{busy.pk}-0123456789abcdef.git",
        "busy, current": mirror_path(busy),
    }
    for path in made.values():
        (path / "objects").mkdir(parents=True)
        (path / "HEAD").write_text("ref: refs/heads/main\n")

    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # another session: an advisory lock is its own session's to take again
        try:
            with source_lock(busy):
                held.set()
                release.wait(timeout=60)
        finally:
            this_threads.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(timeout=30)
        assert mirrors_sweep(passing=moved.pk) == 1, "the deleted source's: the sweeping pass's own stay"
        assert mirrors_sweep() == 2
    finally:
        release.set()
        holder.join(timeout=30)

    assert sorted(name for name, path in made.items() if path.exists()) == [
        "busy, current",
        "busy, left behind",
        "current",
    ]
    assert mirrors_sweep() == 1, "once free"
    assert not made["busy, left behind"].exists()


def test_a_push_while_the_mirror_sweep_held_the_source_is_queued_when_it_lets_go(
    make_source, settings, monkeypatch
):
    """A push while the sweep held a source's lock (deleting its stale mirror) found it busy and left
    only its request, which a pass holding the lock runs after it and the sweep did not: it waited for
    the orphan sweep, or for the next poll where beat does not run."""
    from pathlib import Path

    from gitops.fetch import mirror_sweep
    from tests.broker import keep_sends

    source = make_source()
    stale = Path(settings.SLUICE_DATA_DIR) / "mirrors" / f"{source.pk}-0123456789abcdef.git"
    (stale / "objects").mkdir(parents=True)
    real = mirror_sweep.shutil.rmtree

    def pushed_meanwhile(path, **options):
        Source.objects.filter(pk=source.pk).update(sync_requested_at=timezone.now())
        real(path, **options)

    monkeypatch.setattr(mirror_sweep.shutil, "rmtree", pushed_meanwhile)
    sent = keep_sends(monkeypatch)

    assert mirror_sweep.mirrors_sweep() == 1
    assert [task["source_id"] for task in sent] == [source.pk], "the push is queued as the sweep lets go"
