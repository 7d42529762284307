"""Sources, as an administrator manages them: register, change, suspend, resume and delete one.

What an administrator allows a source (namespaces, analysis URLs, an approval
floor, notification URLs) bounds what its repository can do: the repository's
own policy can narrow it, never widen it.

The command line, the dashboard and the API all call these, so a setting is
checked in one place (``SourceSettingsError`` names each field that is wrong),
a caller's role is checked here (``Actor.user``), and every change leaves one
row in the audit trail (``gitops.record.audit``) with the values before and after.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from gitops import caches, schedule
from gitops.desired.policy import Pause, steps_from_json
from gitops.desired.scope import scope_glob_problem, url_prefix_problem
from gitops.durations import EXAMPLES, duration_seconds
from gitops.errors import PermanentError
from gitops.fetch.credentials import configured_scope, reference_problem
from gitops.fetch.git import normalize_branch, repository_url_problem
from gitops.locks import source_lock_if_free
from gitops.models import (
    MAX_REQUIRED_APPROVALS,
    ApplyIntent,
    Rollout,
    Source,
    SourceRemoval,
    admin_settings,
    masked_url,
    validate_source_name,
)
from gitops.record.audit import Actor, audit_record
from gitops.record.notifications import NOTIFY_URL_LENGTH
from gitops.redaction import redact_url, url_without_query
from gitops.vocabulary import SYSTEM_ACTOR, AuditVia, ObjectsOnRemoval, SourceAuditAction, Waiting

ADD, CHANGE, DELETE = "gitops.add_source", "gitops.change_source", "gitops.delete_source"
SYSTEM = Actor(SYSTEM_ACTOR, AuditVia.CLI)
MIN_POLL_INTERVAL = timedelta(seconds=5)
MAX_POLL_INTERVAL = timedelta(hours=24)
INTERVAL_RANGE = "the poll interval must be from 5s to 24h"
MAX_LISTED = 100  # globs, prefixes or URLs in one of a source's lists
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")

# Each setting's name on the command line, so that messages read the same everywhere.
OPTIONS = {
    "name": "NAME",
    "url": "--url",
    "branch": "--branch",
    "path": "--path",
    "poll_interval": "--interval",
    "credentials_ref": "--credentials",
    "allowed_namespaces": "--allow-namespace",
    "analysis_url_prefixes": "--allow-analysis-url",
    "required_approvals": "--require-approvals",
    "commit_url_template": "--commit-url",
    "notify_urls": "--notify",
}
# What cannot change under a running rollout: its revision is read again from the same place.
WHERE_GIT_IS = ("url", "branch", "path")
LISTS = ("allowed_namespaces", "analysis_url_prefixes", "notify_urls")


class SourceSettingsError(PermanentError):
    """Settings a source cannot take: every problem, by field (``problems``), so a form shows each one
    next to its field and the command line prints them all."""

    def __init__(self, problems: Mapping[str, Sequence[str]]) -> None:
        self.problems = {field: list(messages) for field, messages in problems.items() if messages}
        super().__init__(
            "; ".join(
                f"{OPTIONS.get(field, field)}: {message}"
                for field, messages in self.problems.items()
                for message in messages
            )
        )


class SourceSettingsConflict(SourceSettingsError):
    """Valid settings the current state refuses: a name another source has, or a Git location that would
    move under an active rollout. The API answers 409 for these, as for any action the state refuses."""


class SourceRemovalRefused(PermanentError):
    """A source cannot be deleted now (a rollout is active, or a removal already runs)."""


def parse_interval(text: str) -> timedelta:
    """``30s``, ``5m``, ``1h30m``, ``1d`` or plain seconds, as the command line and the dashboard take it
    (the policy file's grammar, ``durations.duration_seconds``)."""
    seconds = duration_seconds(text)
    if seconds is None:
        raise SourceSettingsError({"poll_interval": [f"{text[:20]!r} is not a duration like {EXAMPLES}"]})
    if seconds > MAX_POLL_INTERVAL.total_seconds():  # said here: nine digits of days overflow a timedelta
        raise SourceSettingsError({"poll_interval": [INTERVAL_RANGE]})
    return timedelta(seconds=seconds)


# -- checking settings -------------------------------------------------------------------------


def _listed(values: Sequence[str]) -> list[str]:
    """Stripped, empty entries dropped, duplicates dropped (first kept)."""
    return list(dict.fromkeys(value.strip() for value in values if value.strip()))


def _control_characters(value: Any) -> bool:
    texts = value if isinstance(value, list | tuple) else [value]
    return any(isinstance(text, str) and CONTROL_CHARACTERS.search(text) for text in texts)


def _problems(settings: Mapping[str, Any]) -> dict[str, list[str]]:
    """Every problem of ``settings`` (a partial or full set of a source's fields), by field."""
    found: dict[str, list[str]] = {}
    for field, value in settings.items():
        if _control_characters(value):  # a NUL byte would not even reach the database
            found[field] = ["must not contain control characters"]
            continue
        check = _CHECKS.get(field)
        problems = [problem for problem in (check(value) if check else []) if problem]
        if field in LISTS and len(value) > MAX_LISTED:
            problems.append(f"at most {MAX_LISTED} entries")
        if problems:
            found[field] = problems
    return found


def _name_problems(name: str) -> list[str | None]:
    try:
        validate_source_name(name)
    except DjangoValidationError as exc:
        return list(exc.messages)
    return []


def _check_name_is_free(name: str) -> None:
    if Source.objects.filter(name=name).exists():
        raise SourceSettingsConflict({"name": [f"a source named {name!r} already exists"]})


def _url_problems(url: str) -> list[str | None]:
    if not url:
        return ["a repository URL is required"]
    query = urlsplit(url).query if "://" in url else ""
    # The userinfo, or a query: a token may go under any name there (``?code=``), so none is taken.
    if redact_url(url) != url or query:
        return [
            "the URL must not contain credentials (userinfo or a query); give a credentials reference"
            " (env:VAR or file:/path)"
        ]
    if len(url) > 2000:
        return ["at most 2000 characters"]
    return [repository_url_problem(url)]


def _branch_problems(branch: str) -> list[str | None]:
    if len(branch) > 255:
        return ["at most 255 characters"]
    try:
        normalize_branch(branch)
    except PermanentError as exc:
        return [str(exc)]
    return []


def _path_problems(path: str) -> list[str | None]:
    parts = path.split("/")
    if len(path) > 1000 or CONTROL_CHARACTERS.search(path) or any(part in (".", "..") for part in parts):
        return [f"{path[:100]!r} is not a directory within the repository, like config/prod"]
    return []


def _interval_problems(interval: timedelta) -> list[str | None]:
    if not MIN_POLL_INTERVAL <= interval <= MAX_POLL_INTERVAL:
        return [INTERVAL_RANGE]
    return []


def _approvals_problems(required: int) -> list[str | None]:
    return [] if 0 <= required <= MAX_REQUIRED_APPROVALS else [f"must be from 0 to {MAX_REQUIRED_APPROVALS}"]


def _commit_url_problems(template: str) -> list[str | None]:
    if not template:
        return []
    if "{commit}" not in template:
        return ["must contain {commit}, e.g. https://github.com/org/repo/commit/{commit}"]
    return [url_prefix_problem(template.replace("{commit}", "0"))]


_CHECKS: dict[str, Any] = {
    "name": _name_problems,
    "url": _url_problems,
    "branch": _branch_problems,
    "path": _path_problems,
    "poll_interval": _interval_problems,
    "credentials_ref": lambda ref: [reference_problem(ref, configured_scope(ref))],
    "allowed_namespaces": lambda globs: (
        [scope_glob_problem(glob) for glob in globs]
        or ["a source needs at least one allowed namespace glob (--allow-namespace)"]
    ),
    "analysis_url_prefixes": lambda prefixes: [url_prefix_problem(prefix) for prefix in prefixes],
    "required_approvals": _approvals_problems,
    "commit_url_template": _commit_url_problems,
    "notify_urls": lambda urls: [_notify_url_problem(url) for url in urls],
}


def _notify_url_problem(url: str) -> str | None:
    """A longer URL was taken, and every event of the source then failed in the database, inside the
    transaction of the move it told of: no rollout could start, step or finish rolling back."""
    if len(url) > NOTIFY_URL_LENGTH:
        return f"at most {NOTIFY_URL_LENGTH} characters"
    return url_prefix_problem(url)


def _normalized(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as stored: strings stripped, lists cleaned, the branch without refs/heads/."""
    result: dict[str, Any] = {}
    for field, value in settings.items():
        if field in LISTS:
            result[field] = _listed(value)
        elif field == "path":
            result[field] = value.strip().strip("/")
        elif field == "branch":
            result[field] = value.strip().removeprefix("refs/heads/")
        elif isinstance(value, str):
            result[field] = value.strip()
        else:
            result[field] = value
    return result


def _clean(source: Source) -> None:
    """The model's own checks (lengths), reported by field like the rest. The name's uniqueness is
    checked before and kept by the database (a conflict, not invalid input)."""
    try:
        source.full_clean(validate_unique=False, validate_constraints=False)
    except DjangoValidationError as exc:
        raise SourceSettingsError(
            {field: list(messages) for field, messages in exc.message_dict.items()}
        ) from exc


def _require(actor: Actor, permission: str) -> None:
    user = actor.user
    if user is not None and not (user.is_active and user.has_perm(permission)):
        raise PermissionDenied(f"{actor.name} may not manage sources")


# -- register, change ------------------------------------------------------------------------


def source_add(
    *,
    name: str,
    url: str,
    allowed_namespaces: Sequence[str],
    branch: str = "main",
    path: str = "",
    poll_interval: timedelta = timedelta(seconds=60),
    credentials_ref: str = "",
    commit_url_template: str = "",
    notify_urls: Sequence[str] = (),
    analysis_url_prefixes: Sequence[str] = (),
    required_approvals: int = 0,
    actor: Actor = SYSTEM,
) -> Source:
    """Registers a source. Its scope is an administrator's to give: without namespaces, nowhere."""
    _require(actor, ADD)
    settings = _normalized(
        {
            "name": name,
            "url": url,
            "branch": branch,
            "path": path,
            "poll_interval": poll_interval,
            "credentials_ref": credentials_ref,
            "allowed_namespaces": allowed_namespaces,
            "analysis_url_prefixes": analysis_url_prefixes,
            "required_approvals": required_approvals,
            "commit_url_template": commit_url_template,
            "notify_urls": notify_urls,
        }
    )
    if problems := _problems(settings):
        raise SourceSettingsError(problems)
    _check_name_is_free(settings["name"])
    source = Source(**settings)
    _clean(source)
    try:
        with transaction.atomic():
            source.save()
            audit_record(source, SourceAuditAction.CREATE, actor, before=None, after=admin_settings(source))
    except IntegrityError as exc:  # registered by someone else since the check above
        raise SourceSettingsConflict({"name": [f"a source named {name!r} already exists"]}) from exc
    return source


def source_update(source: Source, *, actor: Actor = SYSTEM, **changes: Any) -> Source:
    """Changes any of a source's settings (``OPTIONS`` but the name); what is not given stays as it is.

    The Git location (URL, branch, path) does not change under an active rollout.
    A raised approval floor holds rollouts already under way too.
    """
    _require(actor, CHANGE)
    unknown = set(changes) - set(OPTIONS) | ({"name"} & set(changes))
    if unknown:
        raise SourceSettingsError({field: ["cannot be changed"] for field in sorted(unknown)})
    changes = {field: value for field, value in changes.items() if value is not None}
    if changes.get("url") is not None and changes["url"] == url_without_query(source.url):
        # The URL as pages and the form show it, sent back: unchanged (a source from before credentials
        # in URLs were refused is edited without retyping it).
        del changes["url"]
    if "notify_urls" in changes:
        # The pages and the API show notification URLs masked (a chat webhook's path is its token): a
        # masked one sent back keeps its URL, so nobody needs the others' secrets to add one.
        # As masked under the secret key or one it was rotated from: a form loaded before the rotation.
        secrets = [None, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
        kept = {
            masked_url(url, secret=key): url for url in source.notify_urls or [] for key in reversed(secrets)
        }
        changes["notify_urls"] = [kept.get(url, url) for url in changes["notify_urls"]]
    changes = _normalized(changes)
    if problems := _problems(changes):
        raise SourceSettingsError(problems)
    # A raised floor gates a rollout before its current step only while no pass can start: the source's
    # lock, held until the gate is committed (a pass started after a mere look could apply the step).
    # Only for a raise (the form sends the floor with every save): a push meanwhile finds the source
    # held and leaves a request, which is queued once the lock is let go.
    raising = changes.get("required_approvals", 0) > source.required_approvals
    settling = source_lock_if_free(source) if raising else nullcontext(False)
    settled = False
    try:
        with settling as settled:
            return _source_updated(source, changes, actor=actor, settled=settled)
    finally:  # once the lock is let go, whatever the update came to
        if settled:
            schedule.syncs_requested_meanwhile([source.pk])


def _source_updated(source: Source, changes: Mapping[str, Any], *, actor: Actor, settled: bool) -> Source:
    with transaction.atomic():
        source = Source.objects.select_for_update(no_key=True).get(pk=source.pk)
        before, fetched_before, interval_before = (
            admin_settings(source),
            _fetched_from(source),
            source.poll_interval,
        )
        raised = changes.get("required_approvals", source.required_approvals) > source.required_approvals
        _check_git_location_is_free(source, changes)
        for field, value in changes.items():
            setattr(source, field, value)
        after = admin_settings(source)
        # The settings show a URL without its query or fragment: a change there alone is one all the same.
        if after == before and source.url == fetched_before[0]:
            return source
        _clean(source)
        _rescheduled(source, fetched_before, interval_before)
        source.save()
        audit_record(source, SourceAuditAction.UPDATE, actor, before=before, after=after)
        if raised:
            _gate_active_rollouts(source, no_pass_running=settled)
    caches.drop(source.pk)
    return source


def source_update_scope(
    source: Source,
    *,
    allowed_namespaces: Sequence[str] | None = None,
    analysis_url_prefixes: Sequence[str] | None = None,
    required_approvals: int | None = None,
    notify_urls: Sequence[str] | None = None,
    actor: Actor = SYSTEM,
) -> Source:
    """Changes what an administrator allows a source; what is not given stays as it is."""
    return source_update(
        source,
        actor=actor,
        allowed_namespaces=allowed_namespaces,
        analysis_url_prefixes=analysis_url_prefixes,
        required_approvals=required_approvals,
        notify_urls=notify_urls,
    )


def _fetched_from(source: Source) -> tuple[str, str, str, str]:
    """What a fetch of the source reads: its repository, branch, directory and credentials."""
    return (source.url, source.branch, source.path, source.credentials_ref)


def _rescheduled(
    source: Source, fetched_before: tuple[str, str, str, str], interval_before: timedelta
) -> None:
    """What a change of settings does to the source's schedule and head, on ``source`` before it is saved.

    Moved to another repository or branch, its head is not known until the next fetch (``last_commit``
    empty): a retry of a rollout of the commit it followed before is refused. The next poll is due now
    when anything a fetch reads changed (a back-off earned under the settings before helps nobody), and
    within the new interval when that shrank (a poll a day away stayed a day away after the interval
    became a minute, before 2026-12-07)."""
    now = timezone.now()
    if (source.url, source.branch) != fetched_before[:2]:
        source.last_commit = ""
    if _fetched_from(source) != fetched_before:
        source.next_poll_at = min(source.next_poll_at, now)
    elif source.poll_interval < interval_before and source.next_poll_at > now + source.poll_interval:
        # Only a shorter interval: a back-off (longer than any interval) stays, whatever else was saved.
        source.next_poll_at = now + source.poll_interval


def _check_git_location_is_free(source: Source, changes: Mapping[str, Any]) -> None:
    moved = [field for field in WHERE_GIT_IS if field in changes and changes[field] != getattr(source, field)]
    if not moved:
        return
    active = Rollout.objects.filter(source=source, phase__in=Rollout.ACTIVE_PHASES).first()
    if active is not None:
        message = (
            f"cannot change while rollout {active.pk} is {active.phase.lower()}; "
            "abort it or let it finish first"
        )
        raise SourceSettingsConflict({field: [message] for field in moved})


def _gate_active_rollouts(source: Source, *, no_pass_running: bool) -> None:
    """A raised approval floor holds rollouts already under way too: each stops at its next step.
    ``no_pass_running``: the caller holds the source's lock until this is committed."""
    with transaction.atomic():
        for rollout in Rollout.objects.select_for_update(no_key=True).filter(
            source=source, phase__in=Rollout.ACTIVE_PHASES
        ):
            steps = steps_from_json(rollout.steps)
            position = _gate_position(rollout, no_pass_running=no_pass_running)
            gated = position >= len(steps) or steps[position] == Pause(None)
            if not gated:
                steps = (*steps[:position], Pause(None), *steps[position:])
            Rollout.objects.filter(pk=rollout.pk).update(
                steps=[step.as_json() for step in steps],
                approvals_required=max(rollout.approvals_required, source.required_approvals),
                forbid_self_approval=True,
                # A worker on the rollout must read its steps again, not step past the new gate.
                version=F("version") + (0 if gated else 1),
            )


def _gate_position(rollout: Rollout, *, no_pass_running: bool) -> int:
    """Where a raised floor's gate goes: before the current step when nothing of it went out yet (a
    rollout held by a freeze before its first step went straight to 100% with the gate after it),
    else after it. Past the last step (its consumers or a cluster awaited) there is nothing to hold."""
    if rollout.phase == Rollout.Phase.PAUSED and rollout.waiting_for == Waiting.APPROVAL:
        return len(rollout.steps)  # at a gate already
    # A pass under way may be planning the step, its intents not written yet: then after it, as before.
    untouched = not ApplyIntent.objects.filter(rollout=rollout, step_index=rollout.step_index).exists()
    ahead = rollout.phase == Rollout.Phase.PROGRESSING and untouched and no_pass_running
    return rollout.step_index + (0 if ahead else 1)


# -- suspend, resume ---------------------------------------------------------------------------


def source_suspend(source: Source, *, actor: Actor = SYSTEM) -> Source:
    """Stops automatic syncs (polls, pushes, timers); a sync someone asks for still runs. Idempotent."""
    _require(actor, CHANGE)
    with transaction.atomic():
        source = Source.objects.select_for_update(no_key=True).get(pk=source.pk)
        if source.suspended:
            return source
        before = admin_settings(source)
        source.suspended, source.suspended_at, source.suspended_by = True, timezone.now(), actor.name[:150]
        source.save(update_fields=["suspended", "suspended_at", "suspended_by"])
        audit_record(source, SourceAuditAction.SUSPEND, actor, before=before, after=admin_settings(source))
    return source


def source_resume(source: Source, *, actor: Actor = SYSTEM) -> Source:
    """Lets automatic syncs run again, and syncs the source now to catch up. Idempotent."""
    _require(actor, CHANGE)
    with transaction.atomic():
        source = Source.objects.select_for_update(no_key=True).get(pk=source.pk)
        if not source.suspended:
            return source
        if SourceRemoval.objects.filter(source=source, status__in=SourceRemoval.ACTIVE_STATUSES).exists():
            raise PermanentError(f"{source.name} is being deleted; it cannot be resumed")
        before = admin_settings(source)
        source.suspended, source.suspended_at, source.suspended_by = False, None, ""
        source.save(update_fields=["suspended", "suspended_at", "suspended_by"])
        audit_record(source, SourceAuditAction.RESUME, actor, before=before, after=admin_settings(source))
        schedule.source_sync(source.pk, actor=actor.name)
    return source


# -- delete ------------------------------------------------------------------------------------


def source_remove(source: Source, *, objects: ObjectsOnRemoval, actor: Actor = SYSTEM) -> SourceRemoval:
    """Asks for a source's removal: a worker then keeps or prunes each object it manages, logging each in
    the change log, and deletes the source. Refused while a rollout is active: abort it first.

    The source is suspended at once, so nothing syncs it while it goes.
    """
    _require(actor, DELETE)
    mode = ObjectsOnRemoval(objects)
    with transaction.atomic():
        source = Source.objects.select_for_update(no_key=True).get(pk=source.pk)
        _check_removable(source)
        before = admin_settings(source)
        if not source.suspended:
            source.suspended, source.suspended_at = True, timezone.now()
            source.suspended_by = actor.name[:150]
            source.save(update_fields=["suspended", "suspended_at", "suspended_by"])
        removal = SourceRemoval.objects.create(
            source=source, source_name=source.name, mode=mode, requested_by=actor.name[:150], via=actor.via
        )
        audit_record(
            source,
            SourceAuditAction.DELETE,
            actor,
            before=before,
            after=None,
            message=f"removal {removal.pk}: objects {mode.value}",
        )
        schedule.source_removal(removal.pk)
    return removal


def _check_removable(source: Source) -> None:
    active = Rollout.objects.filter(source=source, phase__in=Rollout.ACTIVE_PHASES).first()
    if active is not None:
        raise SourceRemovalRefused(
            f"{source.name} has an active rollout ({active.pk}, {active.phase.lower()}); abort it first "
            f"(gitops abort {active.pk} --user USER, or its Abort button), then delete the source"
        )
    running = SourceRemoval.objects.filter(source=source, status__in=SourceRemoval.ACTIVE_STATUSES).first()
    if running is not None:
        raise SourceRemovalRefused(f"{source.name} is already being deleted (removal {running.pk})")
    # An ended rollout that still owes a cluster its rollback (or has changes pending there) restores it
    # once the cluster answers; deleting the source now would release or keep the rollout's content.
    owing = Rollout.objects.filter(source=source).exclude(rollback_pending_clusters=[]).first()
    if owing is not None:
        clusters = ", ".join(owing.rollback_pending_clusters)
        raise SourceRemovalRefused(
            f"{source.name}'s rollout {owing.pk} still owes {clusters} a rollback; wait until the "
            "cluster answers and the rollback is done, then delete the source"
        )
    pending = ApplyIntent.objects.filter(
        source=source, rollout__isnull=False, status=ApplyIntent.Status.PENDING
    )
    if pending.exists():
        raise SourceRemovalRefused(
            f"{source.name} has changes still pending in a cluster that did not answer; wait for them"
        )
