"""``python manage.py gitops``: Sluice's command line.

gitops add-source NAME --url URL [--branch B] [--path P] [--interval 60s]
gitops sync NAME [--wait]
gitops diff NAME [--revision REF] [--json]
gitops status [NAME] [--json]
gitops log [--source NAME] [--commit SHA] [--limit N] [--json]
gitops purge [--dry-run]
gitops archive-changes --before DATE --output FILE
gitops reencrypt-secrets
gitops validate [PATH] [--git-ref REF | --staged]
"""

from __future__ import annotations

import json
import re
import sys
import time
from argparse import ArgumentParser, ArgumentTypeError
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from gitops import preview, retention, schedule, selectors, source_admin, validate
from gitops.desired.limits import Limits
from gitops.errors import GitopsError
from gitops.intake import webhook_secrets
from gitops.models import Rollout, Source
from gitops.plan import DiffItem, Plan
from gitops.roles import ROLES
from gitops.rollout import decisions
from gitops.rollout.state import SYSTEM_ACTOR
from gitops.vocabulary import SUCCESSFUL_OUTCOMES, PreviewOutcome

DURATION = re.compile(r"^(\d+)(s|m|h)?$")


def duration(text: str) -> timedelta:
    match = DURATION.match(text.strip())
    if not match:
        raise ArgumentTypeError(f"{text!r} is not a duration like 30s, 5m or 1h")
    amount, unit = int(match.group(1)), match.group(2) or "s"
    seconds = amount * {"s": 1, "m": 60, "h": 3600}[unit]
    if seconds < 5:
        raise ArgumentTypeError("the poll interval must be at least 5s")
    return timedelta(seconds=seconds)


class Command(BaseCommand):
    help = "Manage Sluice sources, syncs and the change log."

    def add_arguments(self, parser: ArgumentParser) -> None:
        commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

        add = commands.add_parser("add-source", help="register a Git repository")
        add.add_argument("name")
        add.add_argument("--url", required=True)
        add.add_argument("--branch", default="main")
        add.add_argument("--path", default="", help="directory within the repository")
        add.add_argument(
            "--interval", type=duration, default=timedelta(seconds=60), help="poll interval, e.g. 60s"
        )
        add.add_argument(
            "--credentials",
            default="",
            help="where the token or key lives: env:VAR, file:/path or ssh-key:/path",
        )
        add.add_argument(
            "--commit-url",
            default="",
            help="the Git host's page for a commit, e.g. https://github.com/org/repo/commit/{commit}",
        )
        _scope_arguments(add, required=True)

        update = commands.add_parser(
            "update-source", help="change what an administrator allows a source (what is not given stays)"
        )
        update.add_argument("name")
        _scope_arguments(update, required=False)

        verify = commands.add_parser(
            "verify-email",
            help="record a user's email as verified: the only one self-approval checks trust",
        )
        verify.add_argument("username")
        verify.add_argument("email")
        verify.add_argument("--by", required=True, metavar="ADMIN", help="the administrator who verified it")

        sync = commands.add_parser("sync", help="reconcile a source now, through a Celery worker")
        sync.add_argument("name")
        sync.add_argument(
            "--wait", action="store_true", help="block until done; non-zero exit unless applied"
        )
        sync.add_argument("--timeout", type=float, default=600)
        sync.add_argument(
            "--retry-failed", action="store_true", help="also retry changes the cluster refused"
        )

        diff = commands.add_parser("diff", help="print the plan; applies nothing")
        diff.add_argument("name")
        diff.add_argument("--json", action="store_true")
        diff.add_argument(
            "--revision",
            metavar="REF",
            help="plan this revision of the remote instead of the followed branch: refs/heads/NAME, "
            "refs/tags/NAME, refs/pull/N/head, refs/merge-requests/N/head or a commit SHA; "
            "records nothing and leaves the followed branch alone",
        )

        status = commands.add_parser("status", help="show sources, their revision and active rollout")
        status.add_argument("name", nargs="?")
        status.add_argument("--json", action="store_true")

        log = commands.add_parser("log", help="show the change log, newest first")
        log.add_argument("--source")
        log.add_argument("--commit")
        log.add_argument("--namespace")
        log.add_argument("--limit", type=int, default=50)
        log.add_argument("--json", action="store_true")

        rollouts_parser = commands.add_parser("rollouts", help="list rollouts, newest first")
        rollouts_parser.add_argument("--source")
        rollouts_parser.add_argument("--limit", type=int, default=20)
        rollouts_parser.add_argument("--json", action="store_true")

        promote = commands.add_parser("promote", help="approve the gate a paused rollout waits at")
        promote.add_argument("rollout", type=int)
        promote.add_argument("--full", action="store_true", help="skip the remaining steps and go to 100%%")
        promote.add_argument("--user", required=True)
        promote.add_argument("--comment", default="")

        abort_parser = commands.add_parser(
            "abort", help="roll every target back to its content before the rollout"
        )
        abort_parser.add_argument("rollout", type=int)
        abort_parser.add_argument("--user", required=True)
        abort_parser.add_argument("--reason", default="")
        abort_parser.add_argument(
            "--no-wait", action="store_true", help="do not wait for the rollback to finish"
        )
        abort_parser.add_argument("--timeout", type=float, default=300)

        retry_parser = commands.add_parser("retry", help="run an aborted or failed rollout again from step 0")
        retry_parser.add_argument("rollout", type=int)
        retry_parser.add_argument("--user", required=True)

        secret = commands.add_parser("webhook-secret", help="set or rotate a source's webhook secret")
        secret.add_argument("name")
        choice = secret.add_mutually_exclusive_group(required=True)
        choice.add_argument("--set", dest="secret", metavar="SECRET")
        choice.add_argument("--rotate", action="store_true", help="generate a secret and print it once")

        grant = commands.add_parser("grant", help="give a user a role (viewer, approver or admin)")
        grant.add_argument("username")
        grant.add_argument("--role", required=True, choices=ROLES)

        _add_housekeeping_parsers(commands)
        _add_validate_parser(commands)

    def handle(self, *args: Any, **options: Any) -> None:
        handler = getattr(self, "do_" + options["command"].replace("-", "_"))
        try:
            handler(**options)
        except Source.DoesNotExist as exc:
            raise CommandError("no such source") from exc
        except (GitopsError, DjangoValidationError, PermissionDenied) as exc:
            raise CommandError(str(exc)) from exc

    def _source(self, name: str) -> Source:
        try:
            return Source.objects.get(name=name)
        except Source.DoesNotExist as exc:
            raise CommandError(f"no source named {name!r}") from exc

    def do_add_source(self, **options: Any) -> None:
        source = source_admin.source_add(
            name=options["name"],
            url=options["url"],
            branch=options["branch"],
            path=options["path"],
            poll_interval=options["interval"],
            credentials_ref=options["credentials"],
            allowed_namespaces=options["allow_namespace"],
            commit_url_template=options["commit_url"],
            notify_urls=options["notify"] or (),
            analysis_url_prefixes=options["allow_analysis_url"] or (),
            required_approvals=options["require_approvals"] or 0,
        )
        self.stdout.write(f"added source {source.name} ({source.url} @ {source.branch})")
        self._print_scope(source)

    def do_update_source(self, **options: Any) -> None:
        source = source_admin.source_update_scope(
            self._source(options["name"]),
            allowed_namespaces=_listed(options["allow_namespace"]),
            analysis_url_prefixes=_listed(options["allow_analysis_url"]),
            required_approvals=options["require_approvals"],
            notify_urls=_listed(options["notify"]),
        )
        self.stdout.write(f"updated source {source.name}")
        self._print_scope(source)

    def _print_scope(self, source: Source) -> None:
        self.stdout.write(f"  namespaces: {', '.join(source.allowed_namespaces) or 'none'}")
        self.stdout.write(f"  analysis URLs: {', '.join(source.analysis_url_prefixes) or 'none'}")
        floor = source.required_approvals
        self.stdout.write(f"  approvals required past the first step: {floor or 'as the repository says'}")

    def do_verify_email(self, **options: Any) -> None:
        user = decisions.user_named(options["username"])
        decisions.user_email_verify(user, options["email"], verified_by=options["by"])
        self.stdout.write(f"{options['username']}'s email {options['email']} is verified")

    def do_sync(self, **options: Any) -> None:
        source = self._source(options["name"])
        with transaction.atomic():
            task_ids = schedule.source_sync(
                source.pk, actor=SYSTEM_ACTOR, retry_failed=options["retry_failed"]
            )
        self.stdout.write(f"sync of {source.name} queued as task {task_ids[0]}")
        if not options["wait"]:
            return
        try:
            result: Any = AsyncResult(task_ids[0]).get(timeout=options["timeout"], propagate=False)
        except CeleryTimeoutError as exc:
            raise CommandError(f"no result within {options['timeout']:.0f}s; is a worker running?") from exc
        if not isinstance(result, dict):
            raise CommandError(f"sync failed: {result}")
        self._print_sync(result)
        if result["outcome"] not in SUCCESSFUL_OUTCOMES:
            sys.exit(1)

    def _print_sync(self, result: dict[str, Any]) -> None:
        commit = result.get("commit", "")[:12]
        summary = ", ".join(
            f"{count} {action}" for action, count in sorted(result.get("summary", {}).items())
        )
        self.stdout.write(
            f"{result['source']} @ {commit}: {result['outcome']}" + (f" ({summary})" if summary else "")
        )
        if result.get("forced_push"):
            self.stdout.write("warning: the branch was force-pushed")
        for error in result.get("errors", []):
            self.stdout.write(f"  {error}")

    def do_diff(self, **options: Any) -> None:
        source = self._source(options["name"])
        if options["revision"] is not None:
            self._diff_revision(source, options["revision"], as_json=options["json"])
            return
        previewed = preview.source_preview(source)
        revision, plan = previewed.revision, previewed.plan
        if plan is None:
            if options["json"]:
                self.stdout.write(
                    json.dumps({"commit": revision.commit, "rejected": revision.errors}, indent=2)
                )
            else:
                self.stdout.write(f"{source.name} @ {revision.short_commit}: rejected")
                for line in selectors.source_status(source)["revision"]["errors"]:
                    self.stdout.write(f"  {line}")
            sys.exit(1)
        if options["json"]:
            payload = {
                "commit": plan.commit,
                "summary": plan.summary(),
                "items": [i.as_dict() for i in plan.items],
                "consumers": [effect.as_dict() for effect in previewed.consumers],
            }
            self.stdout.write(json.dumps(payload, indent=2))
            return
        self._print_plan(plan)
        self._print_consumer_effects(previewed.consumers)

    def _diff_revision(self, source: Source, revision: str, *, as_json: bool) -> None:
        """``diff --revision``: exit 0 when planned, 1 when rejected, not found or not a revision."""
        try:
            previewed = preview.revision_preview(source, revision)
        except GitopsError as failure:
            if not as_json:
                raise
            previewed = preview.revision_not_planned(source, revision, failure)
        if as_json:
            self.stdout.write(json.dumps(previewed.as_dict(), indent=2))
        elif previewed.plan is None:
            info = previewed.info
            where = f"{previewed.revision} ({info.sha[:12]})" if info else previewed.revision
            self.stdout.write(f"{source.name} @ {where}: rejected")
            for problem in previewed.errors:
                self.stdout.write(f"  {problem}")
        else:
            self.stdout.write(f"preview of {previewed.revision}; nothing is applied")
            self._print_plan(previewed.plan)
            self._print_consumer_effects(previewed.consumers)
        if previewed.outcome != PreviewOutcome.PLANNED:
            sys.exit(1)

    def _print_consumer_effects(self, effects: tuple[preview.ConsumerEffect, ...]) -> None:
        for effect in effects:
            workload = effect.workload
            verb = "restart" if effect.restart else "wait for"
            self.stdout.write(
                f"{verb:>9} {workload.kind.lower()} {workload.namespace}/{workload.name}"
                f"  (reads {', '.join(effect.reads)})"
            )

    def _print_plan(self, plan: Plan) -> None:
        self.stdout.write(f"plan for {plan.source} @ {plan.commit[:12]}: " + _counts(plan.summary()))
        for item in plan.items:
            if item.action.value == "unchanged":
                continue
            origin = f"  ({item.desired.origin})" if item.desired else ""
            self.stdout.write(f"{item.action.value:>9} configmap {item.namespace}/{item.name}{origin}")
            if item.reason:
                self.stdout.write(f"          {item.reason}")
            for change in item.diff:
                self._print_diff_item(change)

    def _print_diff_item(self, change: DiffItem) -> None:
        rendered = change.as_dict()
        mark = {"add": "+", "remove": "-"}.get(change.op, "~")
        label = f"{change.field}.{change.key}"
        if rendered.get("unified"):
            self.stdout.write(f"          {mark} {label}:")
            for line in rendered["unified"].splitlines():
                self.stdout.write(f"              {line}")
        elif change.op == "add":
            self.stdout.write(f"          + {label}: {_short(rendered['new'])}")
        elif change.op == "remove":
            self.stdout.write(f"          - {label}: {_short(rendered['old'])}")
        else:
            self.stdout.write(f"          ~ {label}: {_short(rendered['old'])} -> {_short(rendered['new'])}")

    def do_status(self, **options: Any) -> None:
        sources = [self._source(options["name"])] if options["name"] else list(Source.objects.all())
        statuses = [selectors.source_status(source) for source in sources]
        if options["json"]:
            self.stdout.write(json.dumps(statuses if not options["name"] else statuses[0], indent=2))
            return
        for status in statuses:
            revision = status["revision"] or {}
            self.stdout.write(
                f"{status['name']}: {revision.get('outcome', 'never fetched')}"
                f" @ {(status['commit'] or '-')[:12]}  ({status['url']} {status['branch']})"
            )
            self.stdout.write(
                f"  managed objects: {status['managed_objects']}, drift: {status['drift']},"
                f" conflicts: {status['conflicts']}, last sync: {status['last_synced_at'] or 'never'}"
            )
            for error in revision.get("errors", []):
                self.stdout.write(f"  error: {error}")
            if status["last_error"]:
                self.stdout.write(f"  last error: {status['last_error']}")
            if status["consecutive_failures"]:
                self.stdout.write(
                    f"  backing off: {status['consecutive_failures']} failures in a row,"
                    f" next try at {status['next_try_at']}"
                )
            rollout = status["active_rollout"]
            if rollout:
                self.stdout.write(
                    f"  rollout {rollout['id']}: {rollout['phase']}"
                    f" step {rollout['step']}, weight {rollout['weight']}%"
                )

    def do_log(self, **options: Any) -> None:
        changes = selectors.change_log(
            source=options["source"], commit=options["commit"], namespace=options["namespace"]
        )[: max(0, options["limit"])]
        entries = [selectors.change_as_dict(change) for change in changes]
        if options["json"]:
            self.stdout.write(json.dumps(entries, indent=2))
            return
        for entry in entries:
            result = "" if entry["result"] == "ok" else f"  ERROR: {entry['error']}"
            self.stdout.write(
                f"{entry['at'][:19]}  {entry['commit'][:12]}  {entry['source']:<16} {entry['action']:<9}"
                f" {entry['namespace']}/{entry['name']}  by {entry['actor']}{result}"
            )

    def do_rollouts(self, **options: Any) -> None:
        found = Rollout.objects.select_related("source", "revision").order_by("-id")
        if options["source"]:
            found = found.filter(source__name=options["source"])
        entries = [selectors.rollout_status(rollout) for rollout in found[: max(0, options["limit"])]]
        if options["json"]:
            self.stdout.write(json.dumps(entries, indent=2))
            return
        for entry in entries:
            waiting = f", waiting for {entry['waiting_for']}" if entry["waiting_for"] else ""
            self.stdout.write(
                f"{entry['id']:>5}  {entry['source']:<16} {entry['commit'][:12]}  {entry['phase']:<11}"
                f" step {entry['step']}/{entry['steps']}  weight {entry['weight']}%{waiting}"
                + (f"  ({entry['message']})" if entry["message"] else "")
            )

    def do_promote(self, **options: Any) -> None:
        rollout = decisions.rollout_promote(
            options["rollout"],
            user=decisions.user_named(options["user"]),
            full=options["full"],
            comment=options["comment"],
        )
        if rollout.phase == Rollout.Phase.PAUSED:
            self.stdout.write(f"rollout {rollout.pk}: approval recorded; {rollout.message}")
        else:
            target = "100%" if options["full"] else f"step {rollout.step_index}"
            self.stdout.write(f"rollout {rollout.pk} promoted to {target} by {options['user']}")

    def do_abort(self, **options: Any) -> None:
        rollout = decisions.rollout_abort(
            options["rollout"], user=decisions.user_named(options["user"]), reason=options["reason"]
        )
        self.stdout.write(f"rollout {rollout.pk}: abort requested by {options['user']}; rolling back")
        if options["no_wait"]:
            return
        deadline = time.monotonic() + options["timeout"]
        while rollout.is_active and time.monotonic() < deadline:
            time.sleep(0.2)  # polling the database for the worker's result, with a deadline
            rollout.refresh_from_db()
        if rollout.is_active:
            raise CommandError(
                f"the rollback did not finish within {options['timeout']:.0f}s; is a worker running?"
            )
        self.stdout.write(f"rollout {rollout.pk}: {rollout.phase.lower()}: {rollout.message}")
        if rollout.phase != Rollout.Phase.ABORTED:
            sys.exit(1)

    def do_retry(self, **options: Any) -> None:
        again = decisions.rollout_retry(options["rollout"], user=decisions.user_named(options["user"]))
        self.stdout.write(f"rollout {options['rollout']} retried as rollout {again.pk}, from step 0")

    def do_webhook_secret(self, **options: Any) -> None:
        source = self._source(options["name"])
        if options["rotate"]:
            secret = webhook_secrets.webhook_secret_rotate(source)
            self.stdout.write(f"new webhook secret for {source.name} (shown once, copy it now):")
            self.stdout.write(secret)
        else:
            webhook_secrets.webhook_secret_set(source, options["secret"])
            self.stdout.write(f"webhook secret for {source.name} set")
        self.stdout.write(f"webhook URL path: /webhooks/git/{source.name}")

    def do_grant(self, **options: Any) -> None:
        user = decisions.user_named(options["username"])
        user.groups.add(Group.objects.get(name=options["role"]))
        self.stdout.write(f"{options['username']} is now {options['role']}")

    # -- housekeeping: retention, the change log's archival, secret re-encryption ------------

    def do_purge(self, **options: Any) -> None:
        counts = retention.purge(dry_run=options["dry_run"]).as_dict()
        verb = "would remove" if options["dry_run"] else "removed"
        self.stdout.write(
            f"{verb}: " + ", ".join(f"{count} {kind.replace('_', ' ')}" for kind, count in counts.items())
        )

    def do_archive_changes(self, **options: Any) -> None:
        before = _moment(options["before"])
        moved = retention.archive_changes(before, Path(options["output"]))
        if moved:
            self.stdout.write(
                f"archived {moved} change-log entries before {before.isoformat()} to {options['output']}"
            )
        else:
            self.stdout.write(f"no change-log entries before {before.isoformat()}; nothing written")

    def do_validate(self, **options: Any) -> None:
        """The offline validator (gitops/validate.py) with this deployment's limits."""
        verdict = validate.run(
            options["path"],
            git_ref=options["git_ref"],
            staged=options["staged"],
            limits=Limits.from_settings(settings),
            stdout=self.stdout,
            stderr=self.stderr,
        )
        if verdict != validate.Exit.VALID:
            sys.exit(verdict)

    def do_reencrypt_secrets(self, **options: Any) -> None:
        rewritten, unreadable = webhook_secrets.webhook_secrets_reencrypt()
        self.stdout.write(f"re-encrypted {rewritten} webhook secrets under the current SECRET_KEY")
        if unreadable:
            raise CommandError(
                "no configured key reads the webhook secret of: "
                + ", ".join(unreadable)
                + "; set them again with `gitops webhook-secret NAME --rotate`"
            )


def _add_housekeeping_parsers(commands: Any) -> None:
    purge = commands.add_parser(
        "purge", help="delete webhook deliveries, notifications, intents and rollout events past retention"
    )
    purge.add_argument("--dry-run", action="store_true", help="only count what would go")

    archive = commands.add_parser(
        "archive-changes", help="move change-log entries older than a date into a JSON-lines file"
    )
    archive.add_argument("--before", required=True, help="a date (2026-01-31) or an ISO time")
    archive.add_argument("--output", required=True, help="the archive file to create (never overwritten)")

    commands.add_parser(
        "reencrypt-secrets", help="rewrite stored webhook secrets under the current SECRET_KEY"
    )


def _add_validate_parser(commands: Any) -> None:
    checker = commands.add_parser(
        "validate",
        help="validate a checkout of a source repository offline (no database, no cluster); "
        "python -m gitops.validate does the same without Django",
    )
    validate.add_arguments(checker)


def _moment(text: str) -> datetime:
    moment = parse_datetime(text)
    if moment is None and (day := parse_date(text)):
        moment = datetime.combine(day, datetime.min.time())
    if moment is None:
        raise CommandError(f"{text!r} is not a date like 2026-01-31 or an ISO time")
    return timezone.make_aware(moment) if timezone.is_naive(moment) else moment


def _scope_arguments(parser: ArgumentParser, *, required: bool) -> None:
    """What an administrator allows a source; the repository's own policy can only narrow it."""
    # With ``required`` off, an option left out keeps its value; an empty list is given as "".
    many: dict[str, Any] = {"action": "append", "default": None}
    parser.add_argument(
        "--allow-namespace",
        required=required,
        metavar="GLOB",
        help="a namespace glob this source may write to (repeatable; at least one for a new source)",
        **many,
    )
    parser.add_argument(
        "--allow-analysis-url",
        metavar="PREFIX",
        help="a URL prefix the repository's analysis steps may call (repeatable; default: none)",
        **many,
    )
    parser.add_argument(
        "--require-approvals",
        type=int,
        metavar="N",
        help="approvers (none an author or committer of the change) needed past the first step",
    )
    parser.add_argument(
        "--notify",
        metavar="URL",
        help="send rollout and revision events here as CloudEvents (repeatable)",
        **many,
    )


def _listed(values: list[str] | None) -> list[str] | None:
    """None keeps what the source has; ``--option ""`` empties the list."""
    return None if values is None else [value for value in values if value]


def _counts(summary: dict[str, int]) -> str:
    return ", ".join(f"{count} {action}" for action, count in sorted(summary.items())) or "nothing"


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
