"""``python manage.py gitops``: Sluice's command line.

gitops add-source NAME --url URL [--branch B] [--path P] [--interval 60s]
gitops add-cluster NAME (--kubeconfig PATH [--context CTX] | --in-cluster) [--by NAME]
gitops clusters [--json]
gitops update-cluster NAME [--allow-unverified-tls | --no-allow-unverified-tls]
                           [--kubeconfig PATH [--context CTX] | --context CTX | --in-cluster] [--by NAME]
gitops update-cluster NAME --record-identity [--rebuilt] | --clear-identity [--by NAME]
gitops remove-cluster NAME [--forget --reason TEXT] [--by NAME]
gitops update-source NAME [--url URL] [--branch B] ... (what is left out stays)
gitops suspend NAME | gitops resume NAME
gitops remove-source NAME --objects keep|prune [--wait]
gitops sync NAME [--wait]
gitops diff NAME [--cluster C] [--revision REF] [--json] [--exit-code]
gitops status [NAME] [--json]
gitops log [--source NAME] [--cluster C] [--commit SHA] [--namespace NS] [--name N] [--action A]
           [--actor WHO] [--rollout ID] [--since WHEN] [--until WHEN] [--limit N] [--json]
gitops rollouts [--source NAME] [--phase PHASE] [--limit N] [--json]
gitops rollout ID [--json]
gitops promote ID --user U [--full] [--step N] [--comment TEXT] [--override REASON]
gitops abort ID --user U [--reason TEXT] [--no-wait]
gitops retry ID --user U
gitops waive-rollback ID --cluster NAME --user ADMIN --reason TEXT
gitops webhook-secret NAME (--set SECRET|- | --rotate) [--by NAME]
gitops verify-email USERNAME EMAIL --by ADMIN
gitops purge [--dry-run]
gitops archive-changes --before DATE --output FILE
gitops reencrypt-secrets
gitops freeze NAME|--all --until WHEN --reason TEXT [--by NAME]
gitops unfreeze NAME|--all [--by NAME]
gitops freezes [--json]
gitops window add|list|remove
gitops validate [PATH] [--git-ref REF | --staged]
gitops live-cache [--cluster NAME]
gitops grant USER --role viewer|approver|admin [--by NAME]
gitops access-log [USER] [--limit N] [--json]
"""

from __future__ import annotations

import getpass
import json
import sys
import time
from argparse import ArgumentParser, ArgumentTypeError, BooleanOptionalAction
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from kombu.exceptions import OperationalError as KombuOperationalError

from gitops import (
    access_admin,
    cluster_admin,
    freezes,
    livecache,
    preview,
    retention,
    schedule,
    selectors,
    source_admin,
    validate,
)
from gitops.desired.errors import ValidationError
from gitops.desired.limits import Limits
from gitops.errors import GitopsError, TemporaryError
from gitops.intake import webhook_secrets
from gitops.models import AccessAudit, Rollout, Source, SourceRemoval, known_cluster_names
from gitops.plan import ACTIONABLE, Action, DiffItem, Plan, out_of_sync
from gitops.record.audit import Actor
from gitops.redaction import redact, url_without_query
from gitops.roles import ROLES
from gitops.rollout import decisions
from gitops.vocabulary import (
    SUCCESSFUL_OUTCOMES,
    ChangeAction,
    ObjectsOnRemoval,
    PreviewOutcome,
    RemovalStatus,
)
from gitops.windows import WindowError, WindowKind, parse_duration

# What a command that asked the broker for a task says when it was refused: what it had saved stays.
_SAVED_BEFORE_THE_BROKER = (
    "anything this command saved before asking for the task (an abort, an approval, a removal) is kept, "
    "and beat's sweep carries it out once the broker answers; a sync or a preview can be asked again then"
)


def duration(text: str) -> timedelta:
    """A poll interval as written on the command line (its bounds are the service's to check)."""
    try:
        return source_admin.parse_interval(text)
    except source_admin.SourceSettingsError as exc:
        raise ArgumentTypeError(exc.problems["poll_interval"][0]) from exc


class Command(BaseCommand):
    help = "Manage Sluice sources, syncs and the change log."

    def add_arguments(self, parser: ArgumentParser) -> None:
        commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
        _add_source_parsers(commands)
        _add_people_parsers(commands)
        _add_reading_parsers(commands)
        _add_rollout_reading_parsers(commands)
        _add_rollout_parsers(commands)
        _add_secret_and_role_parsers(commands)
        _add_live_cache_parser(commands)
        _add_cluster_parsers(commands)
        _add_housekeeping_parsers(commands)
        _add_freeze_parsers(commands)
        _add_validate_parser(commands)

    def handle(self, *args: Any, **options: Any) -> None:
        handler = getattr(self, "do_" + options["command"].replace("-", "_"))
        if isinstance(options.get("by"), str):  # "  " is no name: the OS account is recorded instead
            options["by"] = options["by"].strip()
        _check_actor_name(options.get("by"))
        try:
            handler(**options)
        except Source.DoesNotExist as exc:
            raise CommandError("no such source") from exc
        except Rollout.DoesNotExist as exc:  # promote, abort, retry, waive-rollback: a traceback before
            raise CommandError("no such rollout") from exc
        except TemporaryError as exc:  # nobody could tell, or it is busy: trying again may help (exit 2)
            raise CommandError(str(exc), returncode=2) from exc
        except (GitopsError, DjangoValidationError, PermissionDenied) as exc:
            raise CommandError(str(exc)) from exc
        except schedule.TaskNotQueued as exc:  # the broker refused (a decision made before it is kept)
            raise CommandError(f"{exc}; {_SAVED_BEFORE_THE_BROKER}", returncode=2) from exc
        except (OperationalError, InterfaceError, KombuOperationalError) as exc:  # a traceback before
            first_line = redact((str(exc).strip().splitlines() or [type(exc).__name__])[0])
            if not isinstance(exc, KombuOperationalError):
                raise CommandError(f"the database did not answer: {first_line}", returncode=2) from exc
            raise CommandError(
                f"the broker did not answer: {first_line}; {_SAVED_BEFORE_THE_BROKER}", returncode=2
            ) from exc
        except OSError as exc:  # a file it was told to read or write (archive-changes --output, a kubeconfig)
            raise CommandError(redact(str(exc))) from exc
        except KeyboardInterrupt as exc:  # what was decided before is kept; a --wait only stops waiting
            raise CommandError("interrupted", returncode=130) from exc

    def do_live_cache(self, **options: Any) -> None:
        livecache.live_cache_run(options["cluster"])

    def _source(self, name: str) -> Source:
        try:
            return Source.objects.get(name=name)
        except Source.DoesNotExist as exc:
            raise CommandError(f"no source named {name!r}") from exc

    def do_add_source(self, **options: Any) -> None:
        source = source_admin.source_add(
            name=options["name"],
            url=options["url"],
            branch=options["branch"] or "main",
            path=options["path"] or "",
            poll_interval=options["interval"] or timedelta(seconds=60),
            credentials_ref=options["credentials"] or "",
            allowed_namespaces=options["allow_namespace"],
            commit_url_template=options["commit_url"] or "",
            notify_urls=options["notify"] or (),
            analysis_url_prefixes=options["allow_analysis_url"] or (),
            required_approvals=options["require_approvals"] or 0,
            actor=Actor.command_line(options["by"]),
        )
        self.stdout.write(f"added source {source.name} ({url_without_query(source.url)} @ {source.branch})")
        self._print_scope(source)

    def do_update_source(self, **options: Any) -> None:
        source = source_admin.source_update(
            self._source(options["name"]),
            actor=Actor.command_line(options["by"]),
            url=options["url"],
            branch=options["branch"],
            path=options["path"],
            poll_interval=options["interval"],
            credentials_ref=options["credentials"],
            commit_url_template=options["commit_url"],
            allowed_namespaces=_listed(options["allow_namespace"]),
            analysis_url_prefixes=_listed(options["allow_analysis_url"]),
            required_approvals=options["require_approvals"],
            notify_urls=_listed(options["notify"]),
        )
        self.stdout.write(f"updated source {source.name} ({url_without_query(source.url)} @ {source.branch})")
        self._print_scope(source)

    def do_suspend(self, **options: Any) -> None:
        source = source_admin.source_suspend(
            self._source(options["name"]), actor=Actor.command_line(options["by"])
        )
        self.stdout.write(
            f"{source.name} is suspended (since {source.suspended_at:%Y-%m-%d %H:%M:%S}, by"
            f" {source.suspended_by}): polls, pushes and timers do not sync it; `gitops sync` does"
        )

    def do_resume(self, **options: Any) -> None:
        source = self._source(options["name"])
        if not source.suspended:
            # Resuming a running source changes nothing and queues nothing: saying "a sync is queued"
            # sent people to wait for a sync that never came.
            self.stdout.write(f"{source.name} is not suspended: nothing changed, no sync queued")
            return
        source = source_admin.source_resume(source, actor=Actor.command_line(options["by"]))
        self.stdout.write(f"{source.name} is resumed: automatic syncs run again, and a sync is queued")

    def do_remove_source(self, **options: Any) -> None:
        removal = source_admin.source_remove(
            self._source(options["name"]),
            objects=ObjectsOnRemoval(options["objects"]),
            actor=Actor.command_line(options["by"]),
        )
        self.stdout.write(
            f"removal {removal.pk} of {removal.source_name} queued (objects: {removal.mode});"
            f" the source is suspended meanwhile"
        )
        if not options["wait"]:
            return
        deadline = time.monotonic() + options["timeout"]
        while removal.is_active and time.monotonic() < deadline:
            time.sleep(0.2)  # polling the database for the worker's result, with a deadline
            removal.refresh_from_db()
        if removal.is_active:
            raise CommandError(
                f"the removal did not finish within {options['timeout']:.0f}s; is a worker running?",
                returncode=2,
            )
        self._print_removal(removal)
        if removal.status != RemovalStatus.DONE:
            sys.exit(1)

    def _print_removal(self, removal: SourceRemoval) -> None:
        verb = "pruned" if removal.mode == ObjectsOnRemoval.PRUNE else "kept"
        self.stdout.write(
            f"removal {removal.pk} of {removal.source_name}: {removal.status};"
            f" {removal.objects_done} of {removal.objects_total} objects {verb}"
            + (f", {removal.objects_failed} failed" if removal.objects_failed else "")
        )
        if removal.message:
            self.stdout.write(f"  {removal.message}")

    def _print_scope(self, source: Source) -> None:
        self.stdout.write(f"  namespaces: {', '.join(source.allowed_namespaces) or 'none'}")
        self.stdout.write(f"  analysis URLs: {', '.join(source.analysis_url_prefixes) or 'none'}")
        floor = source.required_approvals
        self.stdout.write(f"  approvals required past the first step: {floor or 'as the repository says'}")

    def do_verify_email(self, **options: Any) -> None:
        user = decisions.user_named(options["username"])
        access_admin.user_email_verify(user, options["email"], actor=Actor.command_line(options["by"]))
        self.stdout.write(f"{options['username']}'s email {options['email']} is verified")

    def do_sync(self, **options: Any) -> None:
        source = self._source(options["name"])
        with transaction.atomic():
            task_ids = schedule.source_sync(
                source.pk,
                actor=Actor.command_line(options["by"]).name,  # a person's sync: the log names them
                retry_failed=options["retry_failed"],
                manual=True,
                result_wanted=options["wait"],
            )
        if not options["wait"]:
            # Its result is not kept (nobody waits for it): the id only finds the task in the logs.
            self.stdout.write(
                f"sync of {source.name} queued as task {task_ids[0]}; "
                f"`gitops status {source.name}` shows how it went, or sync with --wait"
            )
            return
        self.stdout.write(f"sync of {source.name} queued as task {task_ids[0]}")
        # Exit 1 says the sync ended unsuccessfully (a rejected revision, a failed step); 2, as `diff
        # --revision`'s, that nobody could tell: no worker answered, or its task itself broke.
        try:
            result: Any = AsyncResult(task_ids[0]).get(timeout=options["timeout"], propagate=False)
        except CeleryTimeoutError as exc:
            raise CommandError(
                f"no result within {options['timeout']:.0f}s; is a worker running?", returncode=2
            ) from exc
        if not isinstance(result, dict):
            raise CommandError(f"sync failed: {redact(str(result))}", returncode=2)
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
        if result.get("held"):
            self.stdout.write(f"held, nothing applied: {result['held']}")
        for error in result.get("errors", []):
            self.stdout.write(f"  {redact(str(error))}")

    def do_diff(self, **options: Any) -> None:
        source = self._source(options["name"])
        known = known_cluster_names()
        if options["cluster"] is not None and options["cluster"] not in known:
            # A typo answered "would change nothing", exit 0 (before 2026-12-07).
            raise CommandError(f"no cluster named {options['cluster']!r} (known: {', '.join(sorted(known))})")
        if options["revision"] is not None:
            planned = self._diff_revision(
                source, options["revision"], as_json=options["json"], cluster=options["cluster"]
            )
            _exit_if_differs(planned, options["exit_code"])
            return
        previewed = preview.source_preview(source, cluster=options["cluster"])
        revision, plan = previewed.revision, previewed.plan
        if plan is None:
            if options["json"]:
                rejected = [
                    {**error, "message": redact(str(error.get("message", "")))} for error in revision.errors
                ]
                self.stdout.write(json.dumps({"commit": revision.commit, "rejected": rejected}, indent=2))
            else:
                self.stdout.write(f"{source.name} @ {revision.short_commit}: rejected")
                # This preview's findings: the source's latest row may be another commit's (a pass fetched
                # a later one), and beside a pass the preview's revision is a row it did not save.
                for error in revision.errors:
                    self.stdout.write(f"  {redact(str(ValidationError.from_dict(error)))}")
            sys.exit(1)
        if options["json"]:
            payload = {
                "commit": plan.commit,
                "summary": plan.summary(),
                "items": [i.as_dict() for i in plan.items],
                "consumers": [effect.as_dict() for effect in previewed.consumers],
                "consumer_problems": list(previewed.consumer_problems),
            }
            self.stdout.write(json.dumps(payload, indent=2))
        else:
            self._print_plan(plan)
            self._print_consumer_effects(previewed.consumers, previewed.consumer_problems)
        _exit_if_differs(plan, options["exit_code"])

    def _diff_revision(
        self, source: Source, revision: str, *, as_json: bool, cluster: str | None
    ) -> Plan | None:
        """``diff --revision``: exit 0 when planned, 1 when rejected, not found or not a revision, 2 when
        Git or a cluster did not answer (worth trying again: a CI check tells a flaky host from a bad
        change)."""
        try:
            previewed = preview.revision_preview(source, revision, cluster=cluster)
        except GitopsError as failure:
            previewed = preview.revision_not_planned(source, revision, failure)
            if not as_json and previewed.outcome == PreviewOutcome.UNAVAILABLE:
                self.stderr.write(f"{source.name} @ {revision}: {previewed.detail}")
                sys.exit(2)
            if not as_json:
                raise
        if as_json:
            self.stdout.write(json.dumps(previewed.as_dict(), indent=2))
        elif previewed.plan is None:
            info = previewed.info
            where = f"{previewed.revision} ({info.sha[:12]})" if info else previewed.revision
            self.stdout.write(f"{source.name} @ {where}: rejected")
            for problem in previewed.errors:
                self.stdout.write(f"  {redact(str(problem))}")
        else:
            self.stdout.write(f"preview of {previewed.revision}; nothing is applied")
            self._print_plan(previewed.plan)
            self._print_consumer_effects(previewed.consumers, previewed.consumer_problems)
        if previewed.outcome != PreviewOutcome.PLANNED:
            sys.exit(2 if previewed.outcome == PreviewOutcome.UNAVAILABLE else 1)
        return previewed.plan

    def _print_consumer_effects(
        self, effects: tuple[preview.ConsumerEffect, ...], problems: tuple[str, ...] = ()
    ) -> None:
        for problem in problems:
            self.stdout.write(f"  warning: {problem}")
        for effect in effects:
            workload = effect.workload
            verb = "restart" if effect.restart else "wait for"
            where = _where(workload.cluster, workload.namespace, workload.name)
            self.stdout.write(f"{verb:>9} {workload.kind.lower()} {where}  (reads {', '.join(effect.reads)})")

    def _print_plan(self, plan: Plan) -> None:
        summary = plan.summary()
        self.stdout.write(f"plan for {plan.source} @ {plan.commit[:12]}: " + _counts(summary))
        self.stdout.write(_would_change(summary))
        for item in plan.items:
            if item.action.value == "unchanged":
                continue
            origin = f"  ({item.desired.origin})" if item.desired else ""
            self.stdout.write(
                f"{item.action.value:>9} configmap {_where(item.cluster, item.namespace, item.name)}{origin}"
            )
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
            suspended = " [suspended]" if status["suspended"] else ""
            self.stdout.write(
                f"{status['name']}{suspended}: {revision.get('outcome', 'never fetched')}"
                f" @ {(status['commit'] or '-')[:12]}  ({status['url']} {status['branch']})"
            )
            self.stdout.write(
                f"  managed objects: {status['managed_objects']}, drift: {status['drift']},"
                f" conflicts: {status['conflicts']}, last sync: {status['last_synced_at'] or 'never'}"
            )
            if status["gate"]["reason"]:
                self.stdout.write(f"  held: {status['gate']['reason']}")
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
                    f" step {rollout['step']}, weight {rollout['weight']}%{_waiting(rollout)}"
                )
                if rollout["message"]:
                    self.stdout.write(f"    {rollout['message']}")
            for owed in status["rollbacks_owed"]:
                clusters = ", ".join(owed["rollback_pending_clusters"])
                self.stdout.write(
                    f"  rollout {owed['id']} still owes a rollback on: {clusters}"
                    " (a cluster gone for good: waive-rollback)"
                )

    def do_log(self, **options: Any) -> None:
        changes = selectors.change_log(
            source=options["source"],
            cluster=options["cluster"],
            commit=options["commit"],
            namespace=options["namespace"],
            name=options["name"],
            action=options["action"],
            actor=options["actor"],
            rollout=options["rollout"],
            since=_moment(options["since"]) if options["since"] else None,
            until=_moment(options["until"]) if options["until"] else None,
        )[: max(0, options["limit"])]
        entries = [selectors.change_as_dict(change) for change in changes]
        if options["json"]:
            self.stdout.write(json.dumps(entries, indent=2))
            return
        for entry in entries:
            result = "" if entry["result"] == "ok" else f"  ERROR: {entry['error']}"
            self.stdout.write(
                f"{entry['at'][:19]}  {entry['commit'][:12]}  {entry['source']:<16} {entry['action']:<9}"
                f" {_where(entry['cluster'], entry['namespace'], entry['name'])}  by {entry['actor']}{result}"
            )

    def do_rollouts(self, **options: Any) -> None:
        found = selectors.with_approval_count(
            # The source's stored plan and consumer map (megabytes) are never printed here.
            Rollout.objects.select_related("source", "revision").defer(*Source.related_bulk("source"))
        ).order_by("-id")
        if options["source"]:
            found = found.filter(source__name=options["source"])
        if options["phase"] == "active":
            found = found.filter(phase__in=Rollout.ACTIVE_PHASES)
        elif options["phase"]:
            found = found.filter(phase=options["phase"])
        shown = list(found[: max(0, options["limit"])])
        selectors.strict_gates_count(shown)  # the approvals a gate counts, as the page and the API count
        entries = [selectors.rollout_status(rollout) for rollout in shown]
        if options["json"]:
            self.stdout.write(json.dumps(entries, indent=2))
            return
        for entry in entries:
            self.stdout.write(
                f"{entry['id']:>5}  {entry['source']:<16} {entry['commit'][:12]}  {entry['phase']:<11}"
                f" step {entry['step']}/{entry['steps']}  weight {entry['weight']}%{_waiting(entry)}"
                + (f"  ({entry['message']})" if entry["message"] else "")
            )

    def do_rollout(self, **options: Any) -> None:
        rollout = selectors.rollout_read(options["rollout"])
        if rollout is None:
            raise Rollout.DoesNotExist
        selectors.strict_gates_count([rollout])
        detail = selectors.rollout_detail(rollout)
        if options["json"]:
            self.stdout.write(json.dumps(detail, indent=2, default=_iso_default))
            return
        revision = detail["revision"]
        self.stdout.write(
            f"rollout {detail['id']}  {detail['source']} @ {revision['commit'][:12]}  {detail['phase']}"
            f"  step {detail['step']}/{detail['steps']}  weight {detail['weight']}%{_waiting(detail)}"
        )
        # Whoever may push writes these: no escape sequence of theirs reaches the terminal.
        said = f"{revision['message']} ({revision['author_name']})"
        self.stdout.write(f"  commit: {''.join(c if c.isprintable() else '?' for c in said)}")
        if detail["message"]:
            self.stdout.write(f"  {detail['message']}")
        for index, step in enumerate(detail["step_definitions"]):
            mark = ">" if index == detail["step"] and rollout.is_active else " "
            self.stdout.write(f"  {mark} step {index}: {json.dumps(step, separators=(', ', ': '))}")
        for approval in detail["approved_by"]:
            comment = f": {approval['comment']}" if approval["comment"] else ""
            self.stdout.write(f"  approved step {approval['step']} by {approval['username']}{comment}")
        for event in detail["events"]:
            message = f"  {event['message']}" if event["message"] else ""
            self.stdout.write(
                f"  {event['at']:%Y-%m-%d %H:%M:%S}  {event['kind']:<18} step {event['step']}"
                f"  {event['weight']}%  {event['actor']}{message}"
            )

    def do_promote(self, **options: Any) -> None:
        rollout = decisions.rollout_promote(
            options["rollout"],
            user=decisions.user_named(options["user"]),
            full=options["full"],
            comment=options["comment"],
            override=options["override"],
            at_step=options["step"],
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
                f"the rollback did not finish within {options['timeout']:.0f}s; is a worker running?",
                returncode=2,
            )
        self.stdout.write(f"rollout {rollout.pk}: {rollout.phase.lower()}: {rollout.message}")
        if rollout.phase != Rollout.Phase.ABORTED:
            sys.exit(1)

    def do_retry(self, **options: Any) -> None:
        again = decisions.rollout_retry(options["rollout"], user=decisions.user_named(options["user"]))
        self.stdout.write(f"rollout {options['rollout']} retried as rollout {again.pk}, from step 0")

    def do_waive_rollback(self, **options: Any) -> None:
        rollout = decisions.rollout_rollback_waive(
            options["rollout"],
            cluster=options["cluster"],
            user=decisions.user_named(options["user"]),
            reason=options["reason"],
        )
        left = ", ".join(rollout.rollback_pending_clusters) or "none"
        self.stdout.write(
            f"rollout {rollout.pk}: rollback on {options['cluster']} waived by {options['user']}; "
            f"still owed on: {left}"
        )

    # -- clusters -------------------------------------------------------------------------------

    def do_add_cluster(self, **options: Any) -> None:
        record = cluster_admin.cluster_add(
            name=options["name"],
            kubeconfig=options["kubeconfig"] or "",
            context=options["context"] or "",
            in_cluster=options["in_cluster"],
            allow_unverified_tls=options["allow_unverified_tls"],
            actor=Actor.command_line(options["by"]),
        )
        self.stdout.write(f"added cluster {record.name} ({record.credentials_ref})")
        if record.identity:
            self.stdout.write(
                f"  identity: kube-system namespace uid {record.identity} (another cluster is refused)"
            )
        else:
            self.stdout.write(
                "  identity not recorded (it did not answer, or its credentials may not read the "
                "kube-system namespace): "
                f"gitops update-cluster {record.name} --record-identity"
            )
        status = next((s for s in cluster_admin.clusters_status() if s.name == record.name), None)
        if status is not None:  # removed meanwhile: nothing more to say of it
            self.stdout.write("  " + _cluster_line(status))

    def do_clusters(self, **options: Any) -> None:
        statuses = cluster_admin.clusters_status()
        if options["json"]:
            self.stdout.write(json.dumps([status.as_dict() for status in statuses], indent=2))
            return
        for status in statuses:
            default = " (default)" if status.default else ""
            self.stdout.write(f"{status.name}{default}: {_cluster_line(status)}")
            self.stdout.write(f"  credentials: {status.credentials}")
            self.stdout.write(
                f"  sources: {', '.join(status.sources) or 'none'}; objects Sluice applied: {status.objects}"
            )

    def do_update_cluster(self, **options: Any) -> None:
        allowed = options["allow_unverified_tls"]
        updated = cluster_admin.cluster_update(
            options["name"],
            actor=Actor.command_line(options["by"]),
            allow_unverified_tls=allowed,
            credentials=_new_credentials(options),
            record_identity=options["record_identity"],
            clear_identity=options["clear_identity"],
            rebuilt=options["rebuilt"],
        )
        if updated.recorded_from is not None:
            lines = _recorded_lines(updated)
        elif updated.moved_from:
            lines = _moved_lines(updated)
        elif allowed is None:
            record = updated.record
            lines = [f"cluster {record.name}: unchanged, its credentials are {record.credentials_ref}"]
        else:
            lines = _allowance_lines(updated, allowed)
        for line in lines:
            self.stdout.write(line)

    def do_remove_cluster(self, **options: Any) -> None:
        name = options["name"]
        actor = Actor.command_line(options["by"])
        if not options["forget"]:
            cluster_admin.cluster_remove(name, actor=actor)
            self.stdout.write(f"removed cluster {name}")
            return
        forgotten = cluster_admin.cluster_forget(name, actor=actor, reason=options["reason"])
        objects = ", ".join(f"{source} ({count})" for source, count in sorted(forgotten.objects.items()))
        self.stdout.write(f"forgot cluster {name}")
        self.stdout.write(f"  objects no longer managed there: {objects or 'none'}")
        self.stdout.write(f"  rollbacks waived: {', '.join(map(str, forgotten.rollbacks)) or 'none'}")
        self.stdout.write(f"  pending changes dropped: {forgotten.pending}")

    def do_webhook_secret(self, **options: Any) -> None:
        source = self._source(options["name"])
        if options["rotate"]:
            secret = webhook_secrets.webhook_secret_rotate(source, actor=Actor.command_line(options["by"]))
            self.stdout.write(f"new webhook secret for {source.name} (shown once, copy it now):")
            self.stdout.write(secret)
        else:
            secret = options["secret"]
            if secret == "-":  # noqa: S105 - standard input, not a password
                # At a terminal, not echoed; from a pipe, its first line.
                secret = getpass.getpass("webhook secret: ") if sys.stdin.isatty() else sys.stdin.readline()
                secret = secret.rstrip("\r\n")
                if not secret:
                    raise CommandError("no secret on standard input")
            webhook_secrets.webhook_secret_set(source, secret, actor=Actor.command_line(options["by"]))
            self.stdout.write(f"webhook secret for {source.name} set")
        self.stdout.write(f"webhook URL path: /webhooks/git/{source.name}")

    def do_grant(self, **options: Any) -> None:
        """Gives the user this one role: the others of Sluice's roles go (groups add up, so granting
        viewer to an approver left the approver's permission in place while saying "now viewer")."""
        user = decisions.user_named(options["username"])
        grant = access_admin.user_role_grant(user, options["role"], actor=Actor.command_line(options["by"]))
        unchanged = "" if grant.changed else " (unchanged)"
        self.stdout.write(f"{options['username']} is now {options['role']}{unchanged}")
        if user.is_superuser or user.user_permissions.exists():
            # Neither is a role's: Django's admin gives them, and they hold whatever the role says.
            held = "a superuser" if user.is_superuser else "given permissions of their own"
            self.stdout.write(f"note: {options['username']} is {held}, which the role does not take away")

    def do_access_log(self, **options: Any) -> None:
        """The access trail, newest first: roles granted and emails verified, by whom."""
        rows = AccessAudit.objects.all()
        if options["username"]:
            rows = rows.filter(username=options["username"])
        entries = [_access_entry(row) for row in rows[: options["limit"]]]
        if options["json"]:
            self.stdout.write(json.dumps(entries, indent=2))
            return
        for entry in entries:
            self.stdout.write(
                f"{entry['at'][:19]}  {entry['action']:<12} {entry['username']:<20}"
                f" {_access_change(entry)}  by {entry['actor']} ({entry['via']})"
            )

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

    # -- freezes and sync windows ----------------------------------------------------------------

    def do_freeze(self, **options: Any) -> None:
        source = None if options["all"] else self._source(options["name"])
        until = freezes.parse_until(options["until"])
        freeze = freezes.freeze_set(source, until=until, reason=options["reason"], by=_actor_name(options))
        scope = "every source" if source is None else source.name
        self.stdout.write(
            f"froze {scope} until {freeze.until.isoformat()} (freeze {freeze.pk}): {freeze.reason}"
        )

    def do_unfreeze(self, **options: Any) -> None:
        source = None if options["all"] else self._source(options["name"])
        lifted = freezes.freeze_lift(source, by=_actor_name(options))
        if not lifted:
            everyone = freezes.every_source_frozen()
            if source is not None and everyone is not None:
                self.stdout.write(
                    f"no freeze of {source.name} alone; it is held by the freeze of every source (freeze "
                    f"{everyone.pk}, until {everyone.until.isoformat()}): gitops unfreeze --all lifts it"
                )
            else:
                self.stdout.write("no freeze in force" + (f" on {source.name}" if source else ""))
        for freeze in lifted:
            scope = freeze.source.name if freeze.source else "every source"
            self.stdout.write(f"lifted freeze {freeze.pk} of {scope} (until {freeze.until.isoformat()})")

    def do_freezes(self, **options: Any) -> None:
        """The freezes in force, the soonest to end first: what ``GET /api/freezes`` and the Freezes page
        list (the command line could set and lift freezes, not see them)."""
        entries = [selectors.freeze_as_dict(freeze) for freeze in selectors.freezes_in_force()]
        if options["json"]:
            self.stdout.write(json.dumps(entries, indent=2))
            return
        if not entries:
            self.stdout.write("no freeze in force")
        for entry in entries:
            scope = "every source" if entry["all_sources"] else entry["source"]
            self.stdout.write(
                f"{entry['id']:>5}  {scope:<16} until {entry['until']}"
                f"  by {entry['created_by']}: {entry['reason']}"
            )

    def do_window(self, **options: Any) -> None:
        action = options["window_command"]
        if action == "add":
            window = freezes.window_add(
                kind=options["kind"],
                schedule_text=options["schedule"],
                duration=_window_duration(options["duration"]),
                sources=options["source"] or ["*"],
                manual_sync=options["manual_sync"],
                time_zone=options["time_zone"],
                by=_actor_name(options),
            )
            self.stdout.write(f"added sync window {window.pk}: {window}")
        elif action == "remove":
            window = freezes.window_remove(options["id"], by=_actor_name(options))
            self.stdout.write(f"removed sync window {window.pk}: {window}")
        else:
            self._print_windows(json_output=options["json"])

    def _print_windows(self, *, json_output: bool) -> None:
        windows = selectors.windows_in_force()
        rules = selectors.rules_now()
        if json_output:
            entries = [selectors.window_as_dict(window, rules) for window in windows]
            self.stdout.write(json.dumps(entries, indent=2))
            return
        if not windows:
            self.stdout.write("no sync windows: changes go out whenever they come")
        for window in windows:
            entry = selectors.window_as_dict(window, rules)
            state = "open now" if entry["open_now"] else f"next opens {entry['next_opening'] or 'never'}"
            manual = ", manual sync allowed" if window.manual_sync else ""
            self.stdout.write(f"{window.pk:>4}  {window}{manual}  ({state})")


# ``diff --exit-code``'s answer when the clusters differ from Git: 1 (a broken revision) and 2 (nobody
# could tell) are taken, and a check must tell "differs" from both.
DIFFERS_EXIT = 3


def _exit_if_differs(plan: Plan | None, asked: bool) -> None:
    """``diff --exit-code``: 3 when the plan differs from Git; 2 when it differs only where a cluster did
    not answer (nobody could tell: a flaky cluster is no drift)."""
    if not asked or plan is None:
        return
    summary = plan.summary()
    if plan.actionable or out_of_sync({k: n for k, n in summary.items() if k != Action.UNREACHABLE}):
        sys.exit(DIFFERS_EXIT)
    if summary.get(Action.UNREACHABLE):
        sys.exit(2)


def _actor_name(options: dict[str, Any]) -> str:
    """``--by``, else the operating-system account that ran the command (``cli:NAME``)."""
    return Actor.command_line(options["by"]).name


def _waiting(rollout: dict[str, Any]) -> str:
    """What an active rollout waits for, and at a gate the approvals it counts of those it needs."""
    if not rollout["waiting_for"]:
        return ""
    needed = rollout["approvals_required"]
    counted = (
        f" ({rollout['approvals']}/{needed} approvals)"
        if rollout["waiting_for"] == "approval" and needed
        else ""
    )
    return f", waiting for {rollout['waiting_for']}{counted}"


def _iso_default(value: Any) -> str:
    """A timeline's times in ``--json`` (ISO 8601; the API's encoder writes them to the millisecond)."""
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _positive(text: str) -> int:
    """A count of at least 1 (``--limit``): ``--limit -5`` printed nothing and succeeded."""
    try:
        value = int(text)
    except ValueError:
        raise ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise ArgumentTypeError(f"{value} is not 1 or more")
    return value


def _window_duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except WindowError as exc:
        raise CommandError(str(exc)) from exc


def _add_source_parsers(commands: Any) -> None:
    """add-source, update-source, suspend, resume, remove-source."""
    add = commands.add_parser("add-source", help="register a Git repository")
    add.add_argument("name")
    _location_arguments(add, creating=True)
    _scope_arguments(add, required=True)
    _by_argument(add)

    update = commands.add_parser(
        "update-source", help="change a source's settings (what is not given stays as it is)"
    )
    update.add_argument("name")
    _location_arguments(update, creating=False)
    _scope_arguments(update, required=False)
    _by_argument(update)

    for verb, what in (
        ("suspend", "stop automatic syncs (polls, pushes, timers); `gitops sync` still runs"),
        ("resume", "let automatic syncs run again, and sync now"),
    ):
        toggle = commands.add_parser(verb, help=what)
        toggle.add_argument("name")
        _by_argument(toggle)

    remove = commands.add_parser(
        "remove-source", help="delete a source; its objects are kept (labels removed) or pruned"
    )
    remove.add_argument("name")
    remove.add_argument(
        "--objects",
        required=True,
        choices=[mode.value for mode in ObjectsOnRemoval],
        help="keep: they stay, without Sluice's labels, annotations and field ownership; prune: deleted",
    )
    remove.add_argument("--wait", action="store_true", help="block until the removal has finished")
    remove.add_argument("--timeout", type=float, default=300)
    _by_argument(remove)


def _add_people_parsers(commands: Any) -> None:
    """verify-email."""
    verify = commands.add_parser(
        "verify-email",
        help="record a user's email as verified: the only one self-approval checks trust",
    )
    verify.add_argument("username")
    verify.add_argument("email")
    verify.add_argument("--by", required=True, metavar="ADMIN", help="the administrator who verified it")


def _add_reading_parsers(commands: Any) -> None:
    """sync, diff, status, log, rollouts."""
    sync = commands.add_parser("sync", help="reconcile a source now, through a Celery worker")
    sync.add_argument("name")
    sync.add_argument(
        "--wait",
        action="store_true",
        help="block until done; exit 1 unless it succeeded, 2 when no worker answered",
    )
    sync.add_argument("--timeout", type=float, default=600)
    sync.add_argument(
        "--retry-failed",
        action="store_true",
        help="also send again what a finished rollout's cluster refused for a field conflict with another"
        " manager (other refusals are tried at every pass anyway)",
    )
    _by_argument(sync)

    diff = commands.add_parser("diff", help="print the plan; applies nothing")
    diff.add_argument("name")
    diff.add_argument("--cluster", help="only this cluster's part of the plan")
    diff.add_argument("--json", action="store_true")
    diff.add_argument(
        "--exit-code",
        action="store_true",
        help=f"exit {DIFFERS_EXIT} when the clusters differ from Git (a change to make, drift, a conflict,"
        " an orphan, a held target), as kubectl diff exits 1; 2 when they differ only where a cluster did"
        " not answer; 1 and 2 keep their meaning",
    )
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
    log.add_argument("--cluster")
    log.add_argument("--commit")
    log.add_argument("--namespace")
    log.add_argument("--name", help="one object's changes, by its name")
    log.add_argument("--action", choices=[action.value for action in ChangeAction])
    log.add_argument("--actor", help="who made them: a person, or sluice for what the system did")
    log.add_argument("--rollout", type=_positive, help="one rollout's changes: its steps, rollback and heals")
    log.add_argument("--since", help="at or after this time: 2026-01-31, or an ISO time (UTC if no offset)")
    log.add_argument("--until", help="before this time, as --since")
    log.add_argument("--limit", type=_positive, default=50)
    log.add_argument("--json", action="store_true")


def _add_rollout_reading_parsers(commands: Any) -> None:
    """rollouts, rollout."""
    rollouts_parser = commands.add_parser("rollouts", help="list rollouts, newest first")
    rollouts_parser.add_argument("--source")
    rollouts_parser.add_argument(
        "--phase",
        choices=["active", *(phase.value for phase in Rollout.Phase)],
        help="one phase, or active: progressing or paused (as the Rollouts page's filter)",
    )
    rollouts_parser.add_argument("--limit", type=_positive, default=20)
    rollouts_parser.add_argument("--json", action="store_true")

    one = commands.add_parser("rollout", help="one rollout: its steps, approvals and timeline")
    one.add_argument("rollout", type=_positive, metavar="ID")
    one.add_argument("--json", action="store_true")


def _add_secret_and_role_parsers(commands: Any) -> None:
    """webhook-secret, grant."""
    secret = commands.add_parser("webhook-secret", help="set or rotate a source's webhook secret")
    secret.add_argument("name")
    choice = secret.add_mutually_exclusive_group(required=True)
    choice.add_argument(
        "--set",
        dest="secret",
        metavar="SECRET",
        help="the host's secret; '-' reads it from standard input (kept out of ps and shell history)",
    )
    choice.add_argument("--rotate", action="store_true", help="generate a secret and print it once")
    _by_argument(secret)

    grant = commands.add_parser("grant", help="give a user a role (viewer, approver or admin)")
    grant.add_argument("username")
    grant.add_argument("--role", required=True, choices=ROLES)
    _by_argument(grant)

    access = commands.add_parser("access-log", help="roles granted and emails verified, newest first")
    access.add_argument("username", nargs="?", default="", help="only this user's")
    access.add_argument("--limit", type=_positive, default=50)
    access.add_argument("--json", action="store_true")


def _add_live_cache_parser(commands: Any) -> None:
    live = commands.add_parser(
        "live-cache",
        help="run the live cache: watch managed ConfigMaps in every cluster, wake sources on drift",
    )
    live.add_argument(
        "--cluster",
        help="watch only this cluster (default: every cluster sources target or hold objects in)",
    )


def _add_rollout_parsers(commands: Any) -> None:
    """promote, abort, retry and waive-rollback: decisions on a rollout, each naming who decides."""
    promote = commands.add_parser("promote", help="approve the gate a paused rollout waits at")
    promote.add_argument("rollout", type=int)
    promote.add_argument("--full", action="store_true", help="skip the remaining steps and go to 100%%")
    promote.add_argument("--user", required=True)
    promote.add_argument("--comment", default="")
    promote.add_argument(
        "--step",
        type=int,
        default=None,
        metavar="N",
        help="the step the caller saw (gitops status): run again after the rollout moved on (a retry "
        "after a timeout), the promote is refused instead of approving the next gate",
    )
    promote.add_argument(
        "--override",
        default="",
        metavar="REASON",
        help="while a freeze or a sync window holds the source: an administrator's reason to go on",
    )

    abort_parser = commands.add_parser(
        "abort", help="roll every target back to its content before the rollout"
    )
    abort_parser.add_argument("rollout", type=int)
    abort_parser.add_argument("--user", required=True)
    abort_parser.add_argument("--reason", default="")
    abort_parser.add_argument("--no-wait", action="store_true", help="do not wait for the rollback to finish")
    abort_parser.add_argument("--timeout", type=float, default=300)

    retry_parser = commands.add_parser("retry", help="run an aborted or failed rollout again from step 0")
    retry_parser.add_argument("rollout", type=int)
    retry_parser.add_argument("--user", required=True)

    waive = commands.add_parser(
        "waive-rollback",
        help="let a cluster off the rollback an ended rollout still owes it (a cluster gone for good); "
        "what the rollout wrote there stays",
    )
    waive.add_argument("rollout", type=int)
    waive.add_argument("--cluster", required=True)
    waive.add_argument("--user", required=True, help="an administrator")
    waive.add_argument("--reason", required=True, help="why: recorded in the rollout's timeline")


def _add_freeze_parsers(commands: Any) -> None:
    freeze = commands.add_parser(
        "freeze", help="stop automatic changes of a source (or every source) until a time, for a reason"
    )
    _name_or_all(freeze)
    freeze.add_argument(
        "--until", required=True, help="8h or 3d from now, a time with a zone (2026-12-24T18:00Z), a date"
    )
    freeze.add_argument("--reason", required=True, help="why; shown on every page while the freeze holds")
    _by_or_user(freeze, "froze it")

    listed = commands.add_parser("freezes", help="the freezes in force, the soonest to end first")
    listed.add_argument("--json", action="store_true")

    unfreeze = commands.add_parser("unfreeze", help="lift the freezes of a source (--all: every freeze)")
    _name_or_all(unfreeze)
    _by_or_user(unfreeze, "lifted it")

    window = commands.add_parser("window", help="recurring sync windows, as Argo CD's (add, list, remove)")
    actions = window.add_subparsers(dest="window_command", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add an allow or deny window")
    add.add_argument("--kind", required=True, choices=[kind.value for kind in WindowKind])
    add.add_argument("--schedule", required=True, help="cron, five fields: '0 22 * * *' opens at 22:00")
    add.add_argument("--duration", required=True, help="how long it stays open: 30m, 8h, 2d, 1h30m")
    add.add_argument(
        "--source", action="append", metavar="GLOB", help="a source name or glob (repeatable; default: every)"
    )
    add.add_argument(
        "--manual-sync", action="store_true", help="a person's sync may go out while this window closes"
    )
    add.add_argument("--time-zone", default="UTC", help="the schedule's time zone (default UTC)")
    _by_or_user(add, "added it")
    listing = actions.add_parser("list", help="the windows in force, and whether each is open now")
    listing.add_argument("--json", action="store_true")
    remove = actions.add_parser("remove", help="remove a window")
    remove.add_argument("id", type=int)
    _by_or_user(remove, "removed it")


def _by_or_user(parser: ArgumentParser, doing: str) -> None:
    """``--by``, as every other command that changes something names its actor (``--user``, its name
    here before, is kept): the freeze banner said "by cli" for any freeze set on the command line."""
    parser.add_argument(
        "--by",
        "--user",
        dest="by",
        default="",
        metavar="NAME",
        help=f"who {doing}, for the record (default: cli:$USER)",
    )


def _name_or_all(parser: ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("name", nargs="?", help="the source")
    target.add_argument("--all", action="store_true", help="every source")


def _add_cluster_parsers(commands: Any) -> None:
    add = commands.add_parser(
        "add-cluster", help="register a cluster by where its credentials live (never the credentials)"
    )
    add.add_argument("name")
    where = add.add_mutually_exclusive_group(required=True)
    where.add_argument("--kubeconfig", metavar="PATH", help="a kubeconfig file on the workers")
    where.add_argument("--in-cluster", action="store_true", help="the service account Sluice's pods run as")
    add.add_argument("--context", metavar="CTX", help="the kubeconfig's context (default: its current one)")
    add.add_argument(
        "--allow-unverified-tls",
        action="store_true",
        help="accept a kubeconfig that skips the server's certificate check or uses plain http "
        "(kept: a kubeconfig rewritten that way later is refused without it)",
    )
    _by_argument(add)

    listing = commands.add_parser("clusters", help="list clusters: server, reachability, version, sources")
    listing.add_argument("--json", action="store_true")

    _update_cluster_parser(commands)

    remove = commands.add_parser(
        "remove-cluster", help="forget a cluster (refused while a source targets it or holds objects there)"
    )
    remove.add_argument("name")
    remove.add_argument(
        "--forget",
        action="store_true",
        help="a cluster gone for good: drop what Sluice applied there from its inventory, waive the "
        "rollbacks owed to it and drop the changes pending there, without asking the cluster",
    )
    remove.add_argument(
        "--reason", default="", help="with --forget, required: why (the audit trail keeps it)"
    )
    _by_argument(remove)


def _update_cluster_parser(commands: Any) -> None:
    update = commands.add_parser(
        "update-cluster",
        help="grant or revoke a registered cluster's --allow-unverified-tls, or move its credentials to "
        "another kubeconfig or context that reaches the same cluster, in place, while it is in use",
    )
    update.add_argument("name")
    update.add_argument(
        "--allow-unverified-tls",
        action=BooleanOptionalAction,
        default=None,
        help="grant (loads its kubeconfig first, as add-cluster does) or revoke (--no-...) the allowance to "
        "reach the server without checking its certificate, or over plain http",
    )
    moved = update.add_mutually_exclusive_group()
    moved.add_argument(
        "--kubeconfig",
        metavar="PATH",
        help="new credentials: taken only when they and the current ones reach the same cluster (its "
        "kube-system namespace's uid); the context is --context, or the file's current one",
    )
    moved.add_argument("--in-cluster", action="store_true", help="new credentials: the pods' service account")
    identity = update.add_mutually_exclusive_group()
    identity.add_argument(
        "--record-identity",
        action="store_true",
        help="record which cluster the registration reaches now (its kube-system namespace's uid): for one "
        "registered before identities were kept, or rebuilt under the same name; alone",
    )
    identity.add_argument(
        "--clear-identity",
        action="store_true",
        help="forget the identity recorded: for credentials narrowed on purpose so that they may not read "
        "kube-system, which are refused while one is recorded; the cluster is then not checked; alone",
    )
    update.add_argument(
        "--rebuilt",
        action="store_true",
        help="with --record-identity: replace the identity recorded before, for a cluster rebuilt under the "
        "same name (a new kube-system namespace); without it, another identity is refused",
    )
    update.add_argument(
        "--context", metavar="CTX", help="the context (alone: another of the same kubeconfig)"
    )
    _by_argument(update)


def _where(cluster: str, namespace: str, name: str) -> str:
    """``namespace/name`` in the default cluster, ``cluster/namespace/name`` in another."""
    prefix = "" if cluster == settings.SLUICE_CLUSTER_NAME else f"{cluster}/"
    return f"{prefix}{namespace}/{name}"


def _new_credentials(options: Mapping[str, Any]) -> cluster_admin.Credentials | None:
    """The credentials ``update-cluster`` was given, None when none: ``--context`` alone is another context
    of the kubeconfig registered."""
    kubeconfig, context, in_cluster = options["kubeconfig"], options["context"], options["in_cluster"]
    if kubeconfig is None and context is None and not in_cluster:
        return None
    return cluster_admin.Credentials(kubeconfig, context or "", in_cluster)


def _recorded_lines(updated: cluster_admin.ClusterUpdate) -> list[str]:
    name = updated.record.name
    if not updated.record.identity:
        if not updated.changed:
            return [f"cluster {name}: unchanged, no identity is recorded"]
        return [
            f"cluster {name}: identity cleared (was kube-system namespace uid {updated.recorded_from})",
            "  its clients are used without asking which cluster they reach; record it again with "
            f"gitops update-cluster {name} --record-identity",
        ]
    if not updated.changed:
        return [
            f"cluster {name}: unchanged, its identity is already kube-system namespace uid {updated.identity}"
        ]
    return [
        f"cluster {name}: identity recorded, kube-system namespace uid {updated.identity} "
        f"(was {updated.recorded_from or 'none'})",
        "  a kubeconfig that reaches another cluster is refused by every process at its next client build",
    ]


def _moved_lines(updated: cluster_admin.ClusterUpdate) -> list[str]:
    record = updated.record
    lines = [
        f"cluster {record.name}: credentials moved from {updated.moved_from} to {record.credentials_ref}",
        f"  the same cluster (kube-system namespace uid {updated.identity}), at "
        f"{updated.server or 'its server'}; every process uses them from its next registry read (each pass "
        "starts with one)",
    ]
    if record.allow_unverified_tls:
        lines.append("  --allow-unverified-tls: granted (the server's certificate need not be checked)")
    return lines


def _allowance_lines(updated: cluster_admin.ClusterUpdate, allowed: bool) -> list[str]:
    """What ``update-cluster`` did, and what it lets through or stops: granting is a deliberate choice to
    send the cluster's credentials to a server nobody checks."""
    record, granted = updated.record, "granted" if allowed else "revoked"
    if not updated.changed:
        return [f"cluster {record.name}: unchanged, --allow-unverified-tls is already {granted}"]
    when = "every process from its next registry read (each pass starts with one)"
    where = updated.server or "its server"
    unchecked = "without checking its certificate (insecure-skip-tls-verify) or over plain http"
    lines = [f"cluster {record.name}: --allow-unverified-tls {granted}"]
    if allowed:
        lines.append(
            f"  allowed: its kubeconfig ({record.credentials_ref}) may reach the server {unchecked}: Sluice "
            "then sends the cluster's credentials to whoever answers at that address"
        )
        # Granting loaded the kubeconfig here: whether it reaches the server unverified is known.
        if updated.unverified_now:
            lines.append(f"  it does so now, at {where}: used so by {when}, where it was refused")
        else:
            lines.append(
                f"  it checks {where}'s certificate now; rewritten to skip that, it is used, not refused"
            )
        return lines
    lines.append(f"  a kubeconfig that reaches the server {unchecked} is refused by {when}: nothing is sent")
    if updated.unverified_now:
        lines.append(
            f"  its kubeconfig does so now, at {where}: the cluster is refused until the kubeconfig has the "
            f"cluster's CA again (or update-cluster {record.name} --allow-unverified-tls)"
        )
    elif updated.unverified_now is None:
        lines.append(
            "  whether its kubeconfig does so now is not known here (not on this host, or not loading)"
        )
    else:
        lines.append(
            "  its kubeconfig checks the server's certificate now: nothing changes until it is rewritten"
        )
    return lines


def _cluster_line(status: cluster_admin.ClusterStatus) -> str:
    # Its server and error come redacted (``clusters_status``): a server URL may carry credentials.
    if status.reachable:
        return f"{status.server}, reachable, {status.version}"
    return f"{status.server or 'no server'}, unreachable: {status.error}"


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
    try:  # a well-formed impossible one (2026-02-30, 25:00) raises
        moment = parse_datetime(text)
        if moment is None and (day := parse_date(text)):
            moment = datetime.combine(day, datetime.min.time())
    except ValueError:
        moment = None
    if moment is None:
        raise CommandError(f"{text!r} is not a date like 2026-01-31 or an ISO time")
    if timezone.is_naive(moment):
        return timezone.make_aware(moment, UTC)  # as the help says, whatever TIME_ZONE is
    try:  # PostgreSQL keeps offsets up to 15:59; ISO 8601's reach 23:59 (a traceback before)
        return moment.astimezone(UTC)
    except OverflowError:
        raise CommandError(f"{text!r} is out of the range of dates") from None


def _location_arguments(parser: ArgumentParser, *, creating: bool) -> None:
    """Where the source's Git content is, and how to reach it. Left out on update: kept as it is."""
    parser.add_argument("--url", required=creating, help="the Git URL, without credentials")
    parser.add_argument("--branch", help="the branch to follow (default main)")
    parser.add_argument("--path", help="directory within the repository")
    parser.add_argument("--interval", type=duration, help="poll interval, e.g. 60s (5s to 24h; default 60s)")
    parser.add_argument(
        "--credentials", help="where the token or key lives: env:VAR, file:/path or ssh-key:/path"
    )
    parser.add_argument(
        "--commit-url",
        help="the Git host's page for a commit, e.g. https://github.com/org/repo/commit/{commit}",
    )


def _access_entry(row: AccessAudit) -> dict[str, Any]:
    return {
        "at": row.at.isoformat(),
        "action": row.action,
        "username": row.username,
        "actor": row.actor,
        "via": row.via,
        "before": row.before,
        "after": row.after,
    }


def _access_change(entry: Mapping[str, Any]) -> str:
    """A grant's roles before and after, or the email verified (and the one it replaced)."""
    before, after = entry["before"] or {}, entry["after"] or {}
    key = "roles" if "roles" in after else "email"
    shown = {
        side: ", ".join(value) if isinstance(value, list) else value
        for side, value in (("before", before.get(key)), ("after", after.get(key)))
    }
    return f"{key}: {shown['before'] or '(none)'} -> {shown['after'] or '(none)'}"


# Who a change is recorded as: the columns that keep an actor hold this many characters.
ACTOR_LENGTH = 150


def _check_actor_name(name: str | None) -> None:
    """``--by``: a name the records can keep whole. A longer one failed in the database, a traceback, or a
    worker's pass that then failed at every try. A refusal (exit 1), not a usage error (argparse's 2,
    which says trying again may help)."""
    if name and (len(name) > ACTOR_LENGTH or any(not character.isprintable() for character in name)):
        raise CommandError(f"--by: at most {ACTOR_LENGTH} printable characters")


def _by_argument(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--by",
        default="",
        metavar="NAME",
        help="who makes the change, for the audit trail (default: cli:$USER)",
    )


def _scope_arguments(parser: ArgumentParser, *, required: bool) -> None:
    """What an administrator allows a source; the repository's own policy can only narrow it."""
    # With ``required`` off, an option left out keeps its value; an empty list is given as "".
    many: dict[str, Any] = {"action": "append", "default": None}
    parser.add_argument(
        "--allow-namespace",
        required=required,
        metavar="GLOB",
        help="a namespace glob this source may write to: NAMESPACE in the default cluster, or "
        "CLUSTER/NAMESPACE (repeatable; at least one for a new source)",
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


def _would_change(summary: dict[str, int]) -> str:
    """What applying the plan would change, apart from what it lists but leaves alone: a conflict (not
    Sluice's), an unreachable cluster's object, drift, an orphan, a target a later step reaches."""
    changes = {action: count for action, count in summary.items() if action in ACTIONABLE}
    not_left_alone = (*ACTIONABLE, Action.UNCHANGED)
    left = {action: count for action, count in summary.items() if action not in not_left_alone}
    total = sum(changes.values())
    said = f"would change {total} object{'s' if total != 1 else ''} ({_counts(changes)})"
    said = said if total else "would change nothing"
    return f"{said}; left alone: {_counts(left)}" if left else said


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
