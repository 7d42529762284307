"""The user-facing command line, run as a real process against the worker and the stack (each command is
forked from the run's warm launcher, tests/commands.py)."""

from __future__ import annotations

import json

import pytest

from gitops.models import Source
from tests.gitrepo import configmap, policy

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def gitops(manage, worker_env, tmp_path):
    env = {**worker_env, "SLUICE_DATA_DIR": str(tmp_path / "cli-data")}

    def run(*args: str, expect: int = 0) -> str:
        done = manage("gitops", *args, env=env, timeout=180)
        assert done.returncode == expect, (
            f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        )
        return done.stdout + done.stderr

    return run


def test_add_source_sync_diff_status_and_log(gitops, repo, make_namespaces, celery_worker, cluster):
    canary, team = make_namespaces("canary", "team")
    repo.write_all(
        {
            "sluice.yaml": policy([canary, team]),
            "configmaps/app.yaml": configmap("app", {"LOG_LEVEL": "info", "GREETING": "hello\nworld\n"}),
        }
    )
    first = repo.commit("first")

    assert "added source shop" in gitops(
        "add-source",
        "shop",
        "--url",
        repo.url,
        "--branch",
        "main",
        "--interval",
        "60s",
        "--allow-namespace",
        "t*",
    )
    # Applies nothing: the plan is printed, the cluster stays empty.
    planned = gitops("diff", "shop")
    assert f"plan for shop @ {first[:12]}: 2 create" in planned
    assert f"create configmap {canary}/app  (configmaps/app.yaml)" in planned
    assert "+ data.LOG_LEVEL: 'info'" in planned
    assert cluster.get_configmap(canary, "app") is None
    # As kubectl diff exits 1 on a difference: 3 here (1 and 2 already say "broken" and "try again").
    assert "2 create" in gitops("diff", "shop", "--exit-code", expect=3)
    assert '"create": 2' in gitops("diff", "shop", "--exit-code", "--json", expect=3)

    synced = gitops("sync", "shop", "--wait")
    assert f"shop @ {first[:12]}: applied (2 create)" in synced
    assert cluster.get_configmap(team, "app")["data"]["LOG_LEVEL"] == "info"
    gitops("diff", "shop", "--exit-code")  # in sync: 0
    gitops("diff", "shop", "--exit-code", "--revision", first)

    repo.write("configmaps/app.yaml", configmap("app", {"LOG_LEVEL": "info", "GREETING": "hello\nthere\n"}))
    second = repo.commit("second")
    planned = gitops("diff", "shop")
    assert "~ data.GREETING:" in planned
    assert "-world" in planned
    assert "+there" in planned
    gitops("sync", "shop", "--wait", "--by", "ines")

    status = json.loads(gitops("status", "shop", "--json"))
    assert status["commit"] == second
    assert status["revision"]["outcome"] == "applied"
    assert status["managed_objects"] == 2

    entries = json.loads(gitops("log", "--source", "shop", "--json"))
    assert len(entries) == 4
    assert {"commit", "source", "namespace", "kind", "name", "action", "actor", "at"} <= set(entries[0])
    assert [e["commit"] for e in entries[:2]] == [second, second]
    # A person's sync names them (`--by`, else cli: and the account), not Sluice (before 2026-12-07).
    assert [e["actor"] for e in entries[:2]] == ["ines", "ines"]
    assert all(e["actor"].startswith("cli:") for e in entries[2:]), entries[2:]
    assert len(json.loads(gitops("log", "--commit", first[:10], "--json"))) == 2
    assert len(json.loads(gitops("log", "--source", "shop", "--limit", "1", "--json"))) == 1
    assert f"{first[:12]}  shop" in gitops("log")
    # The API's filters, on the command line: an incident's first question, without the browser.
    by_ines = json.loads(gitops("log", "--actor", "ines", "--action", "update", "--json"))
    assert sorted((e["namespace"], e["commit"]) for e in by_ines) == sorted(
        [(team, second), (canary, second)]
    )
    assert json.loads(gitops("log", "--name", "other", "--json")) == []
    assert len(json.loads(gitops("log", "--namespace", canary, "--action", "create", "--json"))) == 1
    split = entries[1]["at"]  # the second commit's changes: one pass logs both at one time
    assert len(json.loads(gitops("log", "--until", split, "--json"))) == 2
    assert len(json.loads(gitops("log", "--since", split, "--json"))) == 2
    assert json.loads(gitops("log", "--since", "2999-01-01", "--json")) == []
    assert json.loads(gitops("log", "--rollout", "999999", "--json")) == []
    assert "'yesterday' is not a date" in gitops("log", "--since", "yesterday", expect=1)
    # Nobody waits for this one's result, so it is not kept: the output says where to look instead.
    assert "`gitops status shop` shows how it went" in gitops("sync", "shop")


def test_sync_wait_fails_on_a_rejected_revision_and_status_shows_why(
    gitops, repo, make_namespaces, celery_worker
):
    (namespace,) = make_namespaces("app")
    repo.write_all(
        {
            "sluice.yaml": policy([namespace]),
            "configmaps/app.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n"
            "data:\n  port: 8080\n",
        }
    )
    repo.commit()
    gitops("add-source", "broken", "--url", repo.url, "--allow-namespace", "t*")

    output = gitops("sync", "broken", "--wait", expect=1)
    assert "rejected" in output
    assert (
        'configmaps/app.yaml:6: data.port: value must be a string, not a number; quote it: "8080"' in output
    )

    status = gitops("status", "broken")
    assert "broken: rejected" in status
    assert "error: configmaps/app.yaml:6: data.port" in status
    assert json.loads(gitops("status", "--json"))[0]["revision"]["outcome"] == "rejected"
    gitops("diff", "broken", expect=1)


def test_sync_wait_exits_2_when_no_worker_answers_unlike_a_rejected_revision(repo, make_source, monkeypatch):
    """A CI job tells "the commit is bad" (1, above) from "nobody answered" (2, as `diff --revision`):
    both were 1. The sync is kept from the queue, so no worker can take it up."""
    from django.core.management import CommandError, call_command

    from tests.broker import keep_sends

    repo.write_all({"sluice.yaml": policy(["t"]), "configmaps/app.yaml": configmap("app", {"A": "1"})})
    repo.commit()
    source = make_source()
    sent = keep_sends(monkeypatch)
    with pytest.raises(CommandError, match="no result within 1s; is a worker running") as raised:
        call_command("gitops", "sync", source.name, "--wait", "--timeout", "1")
    assert raised.value.returncode == 2
    assert [task["source_id"] for task in sent] == [source.pk]


def test_bad_arguments_get_clear_errors(gitops, repo):
    assert "no source named 'ghost'" in gitops("sync", "ghost", expect=1)
    # Scope is the administrator's to give: a source without namespaces could write nowhere.
    assert "--allow-namespace" in gitops("add-source", "unscoped", "--url", repo.url, expect=2)
    assert "not a namespace name or glob" in gitops(
        "add-source", "bad-glob", "--url", repo.url, "--allow-namespace", "Team A", expect=1
    )
    assert "not an http:// or https:// URL" in gitops(
        "add-source",
        "bad-prefix",
        "--url",
        repo.url,
        "--allow-namespace",
        "t*",
        "--allow-analysis-url",
        "ftp://x",
        expect=1,
    )
    assert "not a duration" in gitops(
        "add-source", "x", "--allow-namespace", "t*", "--url", repo.url, "--interval", "soon", expect=2
    )
    assert "not a valid source name" in gitops(
        "add-source", "Not_Valid", "--allow-namespace", "t*", "--url", repo.url, expect=1
    )
    leaked = gitops(
        "add-source",
        "leaky",
        "--allow-namespace",
        "t*",
        "--url",
        "https://user:hunter2@git.example.com/x.git",
        expect=1,
    )
    assert "must not contain credentials" in leaked
    assert "hunter2" not in leaked


def test_rollout_commands(gitops, repo, make_namespaces, celery_worker, cluster, people):
    canary, rest = make_namespaces("canary", "rest")
    repo.write_all(
        {"sluice.yaml": policy([canary, rest]), "configmaps/app.yaml": configmap("app", {"V": "1"})}
    )
    repo.commit("v1")
    gitops("add-source", "shop", "--url", repo.url, "--allow-namespace", "t*")
    gitops("sync", "shop", "--wait")
    repo.write_all(
        {
            "sluice.yaml": policy([canary, rest], rollout={"steps": [{"setWeight": 50}, {"pause": {}}]}),
            "configmaps/app.yaml": configmap("app", {"V": "2"}),
        }
    )
    v2 = repo.commit("v2")

    assert "paused" in gitops("sync", "shop", "--wait")
    status = json.loads(gitops("status", "shop", "--json"))
    active = status["active_rollout"]
    assert (active["phase"], active["step"], active["weight"], active["waiting_for"]) == (
        "Paused",
        1,
        50,
        "approval",
    )
    listed = json.loads(gitops("rollouts", "--source", "shop", "--json"))
    assert listed[0]["commit"] == v2
    assert f"{active['id']:>5}  shop" in gitops("rollouts")
    # Who approved, how many more are needed, the steps and the timeline, as `kubectl argo rollouts get`.
    assert "waiting for approval (0/1 approvals)" in gitops("rollouts", "--phase", "Paused")
    assert [r["id"] for r in json.loads(gitops("rollouts", "--phase", "Paused", "--json"))] == [active["id"]]
    assert [r["id"] for r in json.loads(gitops("rollouts", "--phase", "active", "--json"))] == [active["id"]]
    completed = json.loads(gitops("rollouts", "--phase", "Completed", "--json"))
    assert [r["phase"] for r in completed] == ["Completed"], "v1's, not the paused one"
    shown = gitops("rollout", str(active["id"]))
    assert f"rollout {active['id']}  shop @ {v2[:12]}  Paused  step 1/3  weight 50%" in shown
    assert '> step 1: {"pause": {}}' in shown and 'step 0: {"setWeight": 50}' in shown
    assert any(" started " in line and " step 0 " in line for line in shown.splitlines()), shown
    detail = json.loads(gitops("rollout", str(active["id"]), "--json"))
    assert (detail["revision"]["commit"], detail["approvals_required"], detail["approved_by"]) == (v2, 1, [])
    assert detail["events"] and all(event["at"] for event in detail["events"])
    assert "no such rollout" in gitops("rollout", "999999", expect=1)

    refused = gitops("promote", str(active["id"]), "--user", "vera", expect=1)
    assert "vera may not promote" in refused
    assert "no user named 'nobody'" in gitops("promote", str(active["id"]), "--user", "nobody", expect=1)

    aborted = gitops("abort", str(active["id"]), "--user", "otto", "--reason", "bad canary")
    assert "aborted: bad canary" in aborted
    timeline = gitops("rollout", str(active["id"]))
    assert "abort-requested" in timeline and "otto  bad canary" in timeline
    assert cluster.get_configmap(canary, "app")["data"] == {"V": "1"}

    retried = gitops("retry", str(active["id"]), "--user", "otto")
    assert "retried as rollout" in retried
    again = int(retried.split("retried as rollout ")[1].split(",")[0])
    from tests.workers import poll

    poll(
        lambda: json.loads(gitops("status", "shop", "--json"))["active_rollout"]["waiting_for"] == "approval",
        timeout=60,
        what="the retry to reach its gate",
    )
    assert f"rollout {again} promoted to 100% by otto" in gitops(
        "promote", str(again), "--full", "--user", "otto"
    )
    poll(
        lambda: cluster.get_configmap(rest, "app")["data"] == {"V": "2"}, timeout=60, what="the full promote"
    )


def test_grant_gives_a_role(gitops, people):
    from django.contrib.auth.models import User

    assert "vera is now approver" in gitops("grant", "vera", "--role", "approver")
    assert User.objects.get(username="vera").has_perm("gitops.approve_rollout")
    assert "invalid choice" in gitops("grant", "vera", "--role", "superhero", expect=2)


def test_grant_gives_one_role_and_takes_the_others_away(gitops, people):
    """Roles are groups, and their permissions add up: granting viewer to an approver said "now viewer"
    and left the approver's permission to promote and abort."""
    from django.contrib.auth.models import User

    gitops("grant", "vera", "--role", "admin")
    assert "vera is now viewer" in gitops("grant", "vera", "--role", "viewer")
    vera = User.objects.get(username="vera")
    assert sorted(vera.groups.values_list("name", flat=True)) == ["viewer"]
    assert vera.has_perm("gitops.view_rollout")
    assert not vera.has_perm("gitops.approve_rollout"), "demoted: no longer promotes"
    assert not vera.has_perm("gitops.add_source")
    User.objects.filter(pk=vera.pk).update(is_superuser=True)
    said = gitops("grant", "vera", "--role", "viewer")
    assert "vera is a superuser, which the role does not take away" in said, "not a silent 'now viewer'"


def test_grant_and_verify_email_leave_rows_in_the_access_trail(gitops, people):
    """Who may promote is as much a change as a source's settings, and nothing recorded it: a grant and
    an email verified (the one self-approval trusts) now leave who, how, and the before and after."""
    from django.db import connection, transaction

    from gitops.models import AccessAudit

    gitops("grant", "vera", "--role", "admin", "--by", "root")
    assert "vera is now admin (unchanged)" in gitops("grant", "vera", "--role", "admin", "--by", "root")
    gitops("verify-email", "vera", "Vera@Example.com", "--by", "root")
    rows = list(AccessAudit.objects.filter(username="vera", actor="root").order_by("id"))
    assert [(row.action, row.actor, row.via) for row in rows] == [
        ("grant", "root", "cli"),
        ("verify-email", "root", "cli"),
    ], "an unchanged grant leaves no row"
    assert (rows[0].before, rows[0].after) == ({"roles": ["viewer"]}, {"roles": ["admin"]})
    assert (rows[1].before, rows[1].after) == ({"email": "vera@example.com"}, {"email": "vera@example.com"})

    listed = gitops("access-log", "vera")
    assert "grant" in listed and "roles: viewer -> admin  by root (cli)" in listed
    assert "email: vera@example.com -> vera@example.com" in listed
    assert [entry["action"] for entry in json.loads(gitops("access-log", "--json"))][:2] == [
        "verify-email",
        "grant",
    ], "newest first"
    with pytest.raises(Exception, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM gitops_accessaudit")


def test_update_source_and_verify_email(gitops, repo, people):
    gitops("add-source", "scoped", "--url", repo.url, "--allow-namespace", "team-*")
    updated = gitops(
        "update-source",
        "scoped",
        "--allow-analysis-url",
        "https://checks.example.com/sluice/",
        "--require-approvals",
        "2",
    )
    assert "namespaces: team-*" in updated, "an option left out keeps its value"
    assert "analysis URLs: https://checks.example.com/sluice/" in updated
    assert "approvals required past the first step: 2" in updated
    assert "analysis URLs: none" in gitops("update-source", "scoped", "--allow-analysis-url", "")
    assert "from 0 to 10" in gitops("update-source", "scoped", "--require-approvals", "11", expect=1)

    assert "is verified" in gitops("verify-email", "vera", "Vera@Example.com", "--by", "root")
    from gitops.models import VerifiedEmail

    assert VerifiedEmail.objects.get(user=people["viewer"]).email == "vera@example.com"
    assert "no user named 'nobody'" in gitops(
        "verify-email", "nobody", "x@example.com", "--by", "root", expect=1
    )


def test_update_suspend_resume_and_remove_source(gitops, repo, make_namespaces, celery_worker, cluster):
    from gitops.models import Source, SourceAudit

    (namespace,) = make_namespaces("app")
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"v": "1"})})
    repo.commit()
    gitops("add-source", "shop", "--url", repo.url, "--allow-namespace", "t*", "--by", "root")
    gitops("sync", "shop", "--wait")

    updated = gitops(
        "update-source", "shop", "--interval", "5m", "--credentials", "env:SHOP_TOKEN", "--by", "root"
    )
    assert "updated source shop" in updated
    source = Source.objects.get(name="shop")
    assert (source.poll_interval.total_seconds(), source.credentials_ref) == (300, "env:SHOP_TOKEN")
    assert "--interval: the poll interval must be from 5s to 24h" in gitops(
        "update-source", "shop", "--interval", "2s", expect=1
    )
    assert "not shown, it may be a secret" in gitops(
        "update-source", "shop", "--credentials", "ghp_abcdefghij", expect=1
    )

    assert "shop is suspended" in gitops("suspend", "shop", "--by", "root")
    assert "shop [suspended]:" in gitops("status")
    assert json.loads(gitops("status", "shop", "--json"))["suspended"] is True
    assert "shop is resumed" in gitops("resume", "shop", "--by", "root")
    said = gitops("resume", "shop", "--by", "root")
    assert "shop is not suspended: nothing changed, no sync queued" in said, "not a sync that never comes"

    assert "invalid choice" in gitops("remove-source", "shop", "--objects", "maybe", expect=2)
    removed = gitops("remove-source", "shop", "--objects", "keep", "--wait", "--by", "root")
    assert "removal" in removed and "done; 1 of 1 objects kept" in removed
    assert cluster.get_configmap(namespace, "app")["data"] == {"v": "1"}
    assert "no source named 'shop'" in gitops("status", "shop", expect=1)
    actions = SourceAudit.objects.filter(source_name="shop").order_by("id").values_list("action", "actor")
    assert list(actions) == [
        ("create", "root"),
        ("update", "root"),
        ("suspend", "root"),
        ("resume", "root"),
        ("delete", "root"),
        ("deleted", "root"),
    ]


def test_ordinary_mistakes_get_a_message_not_a_traceback(repo, make_source, people, monkeypatch):
    """An unknown rollout id, an impossible date and a broker that refuses the sync each printed a
    traceback."""
    from django.core.management import CommandError, call_command

    from tests.broker import refuse_sends

    for action in ("promote", "abort", "retry"):
        with pytest.raises(CommandError, match="no such rollout"):
            call_command("gitops", action, "999999", "--user", people["approver"].username)
    for impossible in ("2026-02-30", "2026-01-31T25:00"):
        with pytest.raises(CommandError, match="is not a date like 2026-01-31 or an ISO time"):
            call_command("gitops", "archive-changes", "--before", impossible, "--output", "/dev/null")
    repo.write_all({"sluice.yaml": policy(["t"]), "configmaps/app.yaml": configmap("app", {"A": "1"})})
    repo.commit()
    source = make_source()
    refuse_sends(monkeypatch)
    with pytest.raises(
        CommandError, match=r"the broker refused the sync .*; anything this command saved before asking"
    ):
        call_command("gitops", "sync", source.name)


def test_a_dead_end_is_one_line_with_an_exit_status_that_tells_whether_to_try_again(
    repo, make_source, tmp_path, monkeypatch
):
    """A cluster name mistyped answered "would change nothing" (exit 0); a kubeconfig that is not YAML, an
    archive into a missing directory and a broker that refused were tracebacks or "try again" after the
    decision was saved (before 2026-12-07). Nobody could tell: 2; refused: 1."""
    from django.core.management import CommandError, call_command

    from tests.broker import refuse_sends

    repo.write_all({"sluice.yaml": policy(["t"]), "configmaps/app.yaml": configmap("app", {"A": "1"})})
    repo.commit()
    source = make_source()
    with pytest.raises(CommandError, match=r"no cluster named 'defualt' \(known: .*default") as typo:
        call_command("gitops", "diff", source.name, "--cluster", "defualt")
    assert typo.value.returncode == 1
    garbled = tmp_path / "kubeconfig"
    garbled.write_text("clusters: [unclosed\n  token: s3cr3t-token\n")
    with pytest.raises(CommandError, match="cannot load the credentials") as not_yaml:
        call_command("gitops", "add-cluster", "broken", "--kubeconfig", str(garbled))
    assert "s3cr3t" not in str(not_yaml.value)
    with pytest.raises(CommandError, match="No such file or directory"):
        call_command(
            "gitops", "archive-changes", "--before", "2020-01-01", "--output", str(tmp_path / "no/x")
        )
    refuse_sends(monkeypatch)
    with pytest.raises(CommandError, match="the broker refused") as refused:
        call_command("gitops", "sync", source.name)
    assert refused.value.returncode == 2


def test_what_trying_again_may_mend_exits_2_and_odd_arguments_are_refused_clearly(
    repo, make_source, tmp_path
):
    """A temporary error (Git out of reach, a source busy) exited 1, as a refusal does: the README's rule
    is 2 where trying again may help. A --by longer than the records keep failed in the database (a
    traceback, or a worker's pass failing at every try); a date with an offset PostgreSQL does not keep
    was a traceback."""
    from django.core.management import CommandError, call_command

    unreachable = make_source(url="https://127.0.0.1:9/nothing.git")
    with pytest.raises(CommandError) as temporary:
        call_command("gitops", "diff", unreachable.name)
    assert temporary.value.returncode == 2, str(temporary.value)

    repo.write_all({"sluice.yaml": policy(["t"]), "configmaps/app.yaml": configmap("app", {"A": "1"})})
    repo.commit()
    source = make_source()
    with pytest.raises(CommandError, match="at most 150 printable characters") as too_long:
        call_command("gitops", "suspend", source.name, "--by", "x" * 151)
    assert too_long.value.returncode == 1, "refused: trying again does not help"
    assert not Source.objects.get(pk=source.pk).suspended
    archive = tmp_path / "archive.jsonl"
    call_command("gitops", "archive-changes", "--before", "2020-01-01T00:00+20:00", "--output", str(archive))


def test_diff_shows_a_rejected_revisions_errors_redacted_in_every_form(repo, make_source):
    """`diff` in text and `status` redacted what a revision's errors quote; `diff --json` and `diff
    --revision` printed it whole (before 2026-12-07): a token pasted into a label went to CI logs."""
    import io

    from django.core.management import call_command

    bad = configmap("app", {"A": "1"})
    bad["metadata"]["labels"] = {"team": "password=hunter2 !"}
    repo.write_all({"sluice.yaml": policy(["t"]), "configmaps/app.yaml": bad})
    repo.commit()
    source = make_source()
    for arguments in (
        ["--json"],
        ["--revision", "refs/heads/main"],
        ["--revision", "refs/heads/main", "--json"],
    ):
        out = io.StringIO()
        with pytest.raises(SystemExit) as exited:
            call_command("gitops", "diff", source.name, *arguments, stdout=out)
        assert exited.value.code == 1, arguments
        assert "labels" in out.getvalue() and "hunter2" not in out.getvalue(), (arguments, out.getvalue())


def test_a_webhook_secret_can_come_from_standard_input(make_source, monkeypatch):
    """On the command line it is in `ps` and the shell's history."""
    import io

    from django.core.management import call_command

    from gitops import secrets as encryption

    source = make_source()
    monkeypatch.setattr("sys.stdin", io.StringIO("from-stdin-0123456789abcdef\n"))
    call_command("gitops", "webhook-secret", source.name, "--set", "-", stdout=io.StringIO())
    source.refresh_from_db()
    assert encryption.decrypt(source.webhook_secret_encrypted) == "from-stdin-0123456789abcdef"


def test_setting_or_rotating_a_webhook_secret_leaves_an_audit_row_without_the_secret(make_source):
    """Nothing recorded who set or rotated a source's webhook secret (before 2026-12-07)."""
    import io

    from django.core.management import call_command

    from gitops.models import SourceAudit

    source = make_source()
    call_command(
        "gitops", "webhook-secret", source.name, "--set", "set-by-hand-0123456789", "--by", "ops-ana"
    )
    out = io.StringIO()
    call_command("gitops", "webhook-secret", source.name, "--rotate", stdout=out)
    rotated = out.getvalue().splitlines()[1]

    rows = list(SourceAudit.objects.filter(source=source, action="webhook-secret").order_by("id"))
    assert (rows[0].actor, rows[0].via, rows[0].message) == ("ops-ana", "cli", "set")
    assert rows[1].actor.startswith("cli:") and rows[1].message == "rotated"
    for row in rows:
        written = f"{row.before} {row.after} {row.changed} {row.message}"
        assert "set-by-hand" not in written and rotated not in written
    from dashboard.templatetags.source_admin import audit_summary

    assert [audit_summary(row) for row in rows] == ["webhook secret; set", "webhook secret; rotated"]
