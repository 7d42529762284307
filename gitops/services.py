"""Use cases. The CLI, the dashboard, the API and Celery tasks all call these.

The reconcile of a source runs under a PostgreSQL advisory lock held for its
whole duration, so two workers never reconcile the same source at once; a crash
drops the connection and with it the lock.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from gitops import apply, logs, metrics, notifiers, rollouts, selectors, webhooks
from gitops import secrets as secrets_module
from gitops.desired.errors import RevisionRejected, ValidationError
from gitops.desired.limits import Limits
from gitops.desired.policy import namespace_glob_problem
from gitops.desired.revision import READ_PATHS, DesiredState, ParseCache, load_revision
from gitops.desired.scope import AdminScope, url_prefix_problem
from gitops.errors import PermanentError, TemporaryError
from gitops.models import MAX_REQUIRED_APPROVALS, PERSON_LENGTH, Revision, Rollout, Source, WebhookDelivery
from gitops.plan import Plan, plan
from gitops.sources import GitMirror, redact_url, resolve_credentials

log = logging.getLogger(__name__)

# Advisory locks are keyed by two integers: a constant for Sluice, then the source id.
LOCK_CLASS = 0x51C3
MAX_COALESCED_RUNS = 5
SYSTEM_ACTOR = "sluice"


class SourceBusy(TemporaryError):
    """Another worker is reconciling this source right now."""


@dataclass
class SyncResult:
    source: str
    outcome: str  # applied, unchanged, rejected, failed
    commit: str = ""
    revision_id: int | None = None
    summary: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    forced_push: bool = False
    rollout: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "outcome": self.outcome,
            "commit": self.commit,
            "revision": self.revision_id,
            "summary": self.summary,
            "errors": self.errors,
            "forced_push": self.forced_push,
            "rollout": self.rollout,
        }


# -- process-wide resources ------------------------------------------------------

_parse_caches: dict[int, ParseCache] = {}
_desired_cache: dict[int, tuple[str, AdminScope, DesiredState]] = {}


def mirror_for(source: Source) -> GitMirror:
    root = Path(settings.SLUICE_DATA_DIR) / "mirrors"
    root.mkdir(parents=True, exist_ok=True)
    return GitMirror(root / f"{source.pk}.git")


@contextmanager
def source_lock(source: Source) -> Iterator[bool]:
    """Yields whether this process now holds the source's reconcile lock."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [LOCK_CLASS, source.pk])
        acquired = bool(cursor.fetchone()[0])
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [LOCK_CLASS, source.pk])


# -- sources -------------------------------------------------------------------


def add_source(
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
) -> Source:
    """Registers a source. Its scope is an administrator's to give: without namespaces, nowhere."""
    if redact_url(url) != url:
        raise PermanentError("the URL must not contain credentials; use --credentials env:VAR or file:/path")
    if not allowed_namespaces:
        raise PermanentError("a source needs at least one allowed namespace glob (--allow-namespace)")
    source = Source(
        name=name,
        url=url,
        branch=branch,
        path=path.strip("/"),
        poll_interval=poll_interval,
        credentials_ref=credentials_ref,
        commit_url_template=commit_url_template,
    )
    _set_scope(
        source,
        allowed_namespaces=allowed_namespaces,
        analysis_url_prefixes=analysis_url_prefixes,
        required_approvals=required_approvals,
        notify_urls=notify_urls,
    )
    source.full_clean()
    source.save()
    return source


def update_source_scope(
    source: Source,
    *,
    allowed_namespaces: Sequence[str] | None = None,
    analysis_url_prefixes: Sequence[str] | None = None,
    required_approvals: int | None = None,
    notify_urls: Sequence[str] | None = None,
) -> Source:
    """Changes what an administrator allows a source; what is not given stays as it is."""
    _set_scope(
        source,
        allowed_namespaces=source.allowed_namespaces if allowed_namespaces is None else allowed_namespaces,
        analysis_url_prefixes=(
            source.analysis_url_prefixes if analysis_url_prefixes is None else analysis_url_prefixes
        ),
        required_approvals=source.required_approvals if required_approvals is None else required_approvals,
        notify_urls=source.notify_urls if notify_urls is None else notify_urls,
    )
    source.full_clean()
    source.save()
    return source


def _set_scope(
    source: Source,
    *,
    allowed_namespaces: Sequence[str],
    analysis_url_prefixes: Sequence[str],
    required_approvals: int,
    notify_urls: Sequence[str],
) -> None:
    for pattern in allowed_namespaces:
        if problem := namespace_glob_problem(pattern):
            raise PermanentError(f"--allow-namespace: {problem}")
    for prefix in analysis_url_prefixes:
        if problem := url_prefix_problem(prefix):
            raise PermanentError(f"--allow-analysis-url: {problem}")
    for url in notify_urls:
        if problem := url_prefix_problem(url):
            raise PermanentError(f"--notify: {problem}")
    if not 0 <= required_approvals <= MAX_REQUIRED_APPROVALS:
        raise PermanentError(f"--require-approvals must be from 0 to {MAX_REQUIRED_APPROVALS}")
    source.allowed_namespaces = list(dict.fromkeys(allowed_namespaces))
    source.analysis_url_prefixes = list(dict.fromkeys(analysis_url_prefixes))
    source.required_approvals = required_approvals
    source.notify_urls = list(dict.fromkeys(notify_urls))


def admin_scope(source: Source) -> AdminScope:
    return AdminScope.of(source.allowed_namespaces or (), source.analysis_url_prefixes or ())


def request_sync(source: Source) -> None:
    """Marks a sync as wanted; a running reconcile of the source picks it up before it stops."""
    Source.objects.filter(pk=source.pk).update(sync_requested_at=timezone.now())


# -- reconcile -----------------------------------------------------------------


def sync_source(source_id: int, *, actor: str = SYSTEM_ACTOR, retry_failed: bool = False) -> SyncResult:
    """Fetch, validate, plan, roll out and record one source. Raises SourceBusy when another run holds it.

    Requests never get lost between two workers: a holder looks for new requests
    only after it released the lock, and a caller that finds the source busy
    records its request and then tries the lock once more. Whichever comes last
    sees the other, so one of them runs the request.
    """
    source = Source.objects.get(pk=source_id)
    with logs.log_context(source=source.name):
        return _sync_coalesced(source, actor=actor, retry_failed=retry_failed)


def _sync_coalesced(source: Source, *, actor: str, retry_failed: bool) -> SyncResult:
    runs: list[SyncResult] = []
    requested = False
    while len(runs) < MAX_COALESCED_RUNS:
        started = timezone.now()
        with source_lock(source) as acquired:
            if acquired:
                Source.objects.filter(pk=source.pk).update(sync_requested_at=None, sync_queued=False)
                runs.append(_reconcile(source, actor=actor, retry_failed=retry_failed))
        if not acquired:
            if runs:
                break  # another worker took the lock after us; it runs what was requested
            if requested:
                raise SourceBusy(f"source {source.name} is being reconciled by another worker")
            request_sync(source)
            requested = True
            continue
        if not Source.objects.filter(pk=source.pk, sync_requested_at__gt=started).exists():
            break
    else:
        # Still wanted after the last allowed run: a fresh task carries on, so a
        # stream of pushes neither starves other sources nor gets dropped.
        _hand_off(source, actor=actor)
    return _combine(runs)


def _hand_off(source: Source, *, actor: str) -> None:
    from gitops.tasks import sync_source as sync_task  # noqa: PLC0415 - tasks imports this module

    source_id = source.pk
    transaction.on_commit(lambda: sync_task.delay(source_id, actor=actor, wait_if_busy=False))


def _combine(runs: Sequence[SyncResult]) -> SyncResult:
    """One result for coalesced runs: the last run's state, with what earlier runs applied."""
    last = runs[-1]
    if len(runs) == 1:
        return last
    applied_before = any(run.outcome == "applied" for run in runs[:-1])
    if last.outcome == "unchanged" and applied_before:
        last.outcome = "applied"
    resumed = sum(run.summary.get("resumed", 0) for run in runs)
    if resumed:
        last.summary["resumed"] = resumed
    last.forced_push = any(run.forced_push for run in runs)
    return last


def _reconcile(source: Source, *, actor: str, retry_failed: bool) -> SyncResult:
    started = time.monotonic()
    try:
        result = _reconcile_once(source, actor=actor, retry_failed=retry_failed, started=started)
    except (TemporaryError, PermanentError):
        metrics.RECONCILES.labels(source.name, "error").inc()
        raise
    metrics.RECONCILES.labels(source.name, result.outcome).inc()
    metrics.RECONCILE_SECONDS.labels(source.name).observe(time.monotonic() - started)
    return result


def _reconcile_once(source: Source, *, actor: str, retry_failed: bool, started: float) -> SyncResult:
    resumed = apply.finish_pending_intents(source)
    try:
        head, forced = _fetch(source)
    except (TemporaryError, PermanentError) as exc:
        Source.objects.filter(pk=source.pk).update(last_error=str(exc))
        # Git is out of reach, but decisions already stored (an abort, a pause that
        # ran out, an analysis retry) are carried out from the database and the mirror.
        _drive_active_rollout(source, actor=actor, retry_failed=retry_failed)
        raise
    logs.add_context(commit=head.commit)
    result = SyncResult(source.name, "unchanged", head.commit, head.pk, forced_push=forced)
    head_desired = _desired_state(source, head)
    if head_desired is None:
        head.refresh_from_db()
        result.outcome = "rejected"
        result.errors = [_format_error(e) for e in head.errors]
        # A bad new commit stops nothing already under way with an earlier, valid one.
        _drive_active_rollout(source, actor=actor, retry_failed=retry_failed)
        _finish(source, [])
        return result

    rollout, note = rollouts.choose(
        source, head, head_desired, commit_identities=lambda: _commit_identities(source, head)
    )
    logs.add_context(rollout=rollout.pk)
    # A queued head waits: the running rollout goes on with its own revision.
    desired = head_desired if rollout.revision_id == head.pk else _desired_state(source, rollout.revision)
    if desired is None:
        _roll_back_invalid(rollout)
        outcome = rollouts.StepOutcome("failed", {}, [rollout.message])
    else:
        outcome = rollouts.drive(rollout, desired, actor=actor, retry_failed=retry_failed)
    rollout.refresh_from_db()
    result.outcome = note or outcome.outcome
    result.summary = outcome.summary
    result.errors = outcome.failures
    result.rollout = selectors.rollout_status(rollout)
    if resumed:
        result.summary["resumed"] = resumed
    Revision.objects.filter(pk=head.pk).update(summary=result.summary)
    _finish(source, outcome.failures)
    log.info(
        "reconciled source=%s commit=%s rollout=%s outcome=%s in %.2fs",
        source.name,
        head.commit,
        rollout.pk,
        result.outcome,
        time.monotonic() - started,
    )
    return result


def _drive_active_rollout(source: Source, *, actor: str, retry_failed: bool) -> None:
    """Moves the active rollout with its own, already validated revision; Git is not asked."""
    rollout = (
        Rollout.objects.filter(source=source, phase__in=Rollout.ACTIVE_PHASES)
        .select_related("revision", "source")
        .order_by("-id")
        .first()
    )
    if rollout is None:
        return
    logs.add_context(rollout=rollout.pk)
    if rollout.abort_requested_by:
        # A rollback needs nothing from Git: the intents hold what every target had before.
        rollouts.rollback(
            rollout,
            actor=rollout.abort_requested_by,
            reason=rollout.abort_reason or "aborted",
            phase=Rollout.Phase.ABORTED,
        )
        return
    try:
        desired = _desired_state(source, rollout.revision)
    except (TemporaryError, PermanentError) as exc:
        log.warning("rollout %s waits: its revision cannot be read from the mirror: %s", rollout.pk, exc)
        return
    if desired is None:
        _roll_back_invalid(rollout)
    else:
        rollouts.drive(rollout, desired, actor=actor, retry_failed=retry_failed)


def _roll_back_invalid(rollout: Rollout) -> None:
    """A rollout whose revision the source's scope no longer allows (an admin narrowed it) is undone."""
    rollout.revision.refresh_from_db()
    errors = [_format_error(e) for e in rollout.revision.errors[:3]]
    rollouts.rollback(
        rollout,
        actor=SYSTEM_ACTOR,
        reason=f"revision {rollout.revision.short_commit} is no longer valid for this source: "
        + "; ".join(errors),
        phase=Rollout.Phase.FAILED,
    )


def _commit_identities(source: Source, head: Revision) -> list[str]:
    """Authors and committers of every commit a rollout of ``head`` brings, since the last completed one."""
    last = (
        Rollout.objects.filter(source=source, phase=Rollout.Phase.COMPLETED)
        .exclude(revision=head)
        .select_related("revision")
        .order_by("-finished_at", "-id")
        .first()
    )
    with mirror_for(source) as mirror:
        return sorted(mirror.commit_identities(head.commit, since=last.revision.commit if last else None))


def _finish(source: Source, failures: list[str]) -> None:
    now = timezone.now()
    Source.objects.filter(pk=source.pk).update(
        last_synced_at=now,
        last_error="; ".join(failures[:5]),
        consecutive_failures=0,
        next_poll_at=now + source.poll_interval,
    )


def _fit(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


MAX_BACKOFF = timedelta(hours=1)


def retry_delay(poll_interval: timedelta, failures: int) -> timedelta:
    """How long a failing source waits for its next try: the poll interval, doubled per failure in a row."""
    if failures <= 0:
        return poll_interval
    doubled: timedelta = poll_interval * 2 ** min(failures - 1, 16)
    return min(doubled, max(MAX_BACKOFF, poll_interval))


def _format_error(error: Mapping[str, Any]) -> str:
    return str(ValidationError.from_dict(dict(error)))


def _fetch(source: Source) -> tuple[Revision, bool]:
    credentials = resolve_credentials(source.credentials_ref)
    with mirror_for(source) as mirror, metrics.FETCH_SECONDS.labels(source.name).time():
        fetched = mirror.fetch(source.url, source.branch, credentials)
        revision = Revision.objects.filter(source=source, commit=fetched.commit).first()
        if revision is None:
            info = mirror.commit_info(fetched.commit)
            revision, _ = Revision.objects.get_or_create(
                source=source,
                commit=fetched.commit,
                defaults={
                    # A pusher chooses these: cut to fit rather than fail every poll on a long one.
                    "author_name": _fit(info.author_name, PERSON_LENGTH),
                    "author_email": _fit(info.author_email, PERSON_LENGTH),
                    "message": info.message,
                    "committed_at": info.committed_at,
                    "force_pushed_over": (fetched.previous or "") if fetched.forced else "",
                },
            )
        if fetched.forced:
            log.warning(
                "force push detected source=%s from=%s to=%s", source.name, fetched.previous, fetched.commit
            )
    Source.objects.filter(pk=source.pk).update(last_fetched_at=timezone.now(), last_commit=fetched.commit)
    return revision, fetched.forced


def _desired_state(source: Source, revision: Revision) -> DesiredState | None:
    """Loads and validates a revision, or records it as rejected and returns None."""
    scope = admin_scope(source)
    cached = _desired_cache.get(source.pk)
    if cached and cached[0] == revision.commit and cached[1] == scope:
        return cached[2]
    cache = _parse_caches.setdefault(source.pk, ParseCache())
    limits = Limits.from_settings(settings)
    with mirror_for(source) as mirror:
        # Sizes come with the listing, so limits reject a revision before any blob is read.
        tree = mirror.list_tree(
            revision.commit, source.path, paths=READ_PATHS, max_entries=limits.max_files + 1
        )
        files = {path: entry.blob for path, entry in tree.items()}
        sizes = {path: entry.size for path, entry in tree.items()}
        try:
            desired = load_revision(
                files, mirror.read_blobs, sizes=sizes, limits=limits, cache=cache, scope=scope
            )
        except RevisionRejected as rejected:
            Revision.objects.filter(pk=revision.pk).update(
                outcome=Revision.Outcome.REJECTED, errors=[e.as_dict() for e in rejected.errors]
            )
            log.warning(
                "revision rejected source=%s commit=%s errors=%d",
                source.name,
                revision.commit,
                len(rejected.errors),
            )
            notifiers.emit(
                "rejected",
                source=source,
                subject=f"revisions/{revision.commit}",
                data={"revision": revision.commit, "errors": [str(e) for e in rejected.errors[:50]]},
            )
            return None
    if revision.outcome == Revision.Outcome.PENDING:
        Revision.objects.filter(pk=revision.pk).update(outcome=Revision.Outcome.VALID)
    _desired_cache[source.pk] = (revision.commit, scope, desired)
    return desired


def _plan(source: Source, revision: Revision, desired: DesiredState) -> Plan:
    return plan(
        desired,
        apply.live_objects(source, desired),
        source=source.name,
        commit=revision.commit,
        managed=apply.managed_keys(source),
    )


def preview(source: Source) -> tuple[Revision, Plan | None]:
    """Fetch, validate and plan without applying: what ``gitops diff`` shows."""
    revision, _ = _fetch(source)
    if revision.outcome == Revision.Outcome.REJECTED:
        return revision, None
    desired = _desired_state(source, revision)
    if desired is None:
        revision.refresh_from_db()
        return revision, None
    return revision, _plan(source, revision, desired)


def record_sync_failure(source_id: int, error: BaseException) -> SyncResult:
    """Records a failed reconcile on the source, where pages and `gitops status` show it, and backs off.

    A failing Git host or cluster is asked again after the poll interval,
    doubled for every failure in a row (at most an hour), not every sweep.
    """
    source = Source.objects.get(pk=source_id)
    failures = source.consecutive_failures + 1
    delay = retry_delay(source.poll_interval, failures)
    message = str(error) or type(error).__name__
    Source.objects.filter(pk=source_id).update(
        last_error=message[:2000], consecutive_failures=failures, next_poll_at=timezone.now() + delay
    )
    log.error(
        "sync failed source=%s failures_in_a_row=%d next_try_in=%ds: %s",
        source.name,
        failures,
        delay.total_seconds(),
        message,
    )
    return SyncResult(source.name, "failed", errors=[message])


def due_rollout_sources(now: Any = None) -> list[int]:
    """Sources whose paused rollout's timer (or analysis back-off) has run out, or whose abort waits.

    A source that is backing off after failures waits for its next try, and one
    with a sync already queued is not queued again, so a failing Git host or
    cluster is not asked every sweep.
    """
    now = now or timezone.now()
    timers = Rollout.objects.filter(
        phase=Rollout.Phase.PAUSED,
        waiting_for__in=(Rollout.Waiting.TIMER, Rollout.Waiting.ANALYSIS),
        pause_until__lte=now,
    )
    aborts = Rollout.objects.filter(phase__in=Rollout.ACTIVE_PHASES).exclude(abort_requested_by="")
    candidates = set(timers.values_list("source_id", flat=True)) | set(
        aborts.values_list("source_id", flat=True)
    )
    backing_off = set(
        Source.objects.filter(
            pk__in=candidates, consecutive_failures__gt=0, next_poll_at__gt=now
        ).values_list("pk", flat=True)
    )
    due = []
    for source_id in sorted(candidates - backing_off):
        if Source.objects.filter(pk=source_id, sync_queued=False).update(sync_queued=True):
            due.append(source_id)
    return due


def claim_due_sources(now: Any = None) -> list[int]:
    """Claims every source whose poll is due, with a compare-and-swap per source.

    Two beat processes (or a sweep racing a webhook) can both see a source as
    due; only the one whose update matches the old ``next_poll_at`` enqueues it.
    """
    now = now or timezone.now()
    claimed: list[int] = []
    for source_id, due_at, interval in Source.objects.filter(next_poll_at__lte=now).values_list(
        "pk", "next_poll_at", "poll_interval"
    ):
        if Source.objects.filter(pk=source_id, next_poll_at=due_at).update(next_poll_at=now + interval):
            claimed.append(source_id)
    return claimed


def enqueue_sync(source: Source, *, actor: str = SYSTEM_ACTOR, retry_failed: bool = False) -> list[str]:
    """Queues a sync once the surrounding transaction commits; the list receives the task id."""
    # tasks imports this module; importing it at call time avoids the cycle.
    from gitops.tasks import sync_source as sync_task  # noqa: PLC0415

    task_ids: list[str] = []

    def send() -> None:
        result = sync_task.delay(source.pk, actor=actor, retry_failed=retry_failed)
        task_ids.append(result.id)

    transaction.on_commit(send)
    return task_ids


# -- webhooks ---------------------------------------------------------------------------

DELIVERY_ID = re.compile(r"[^A-Za-z0-9._:-]")


@dataclass(frozen=True)
class WebhookAnswer:
    status: int
    body: dict[str, Any]
    provider: str = "unknown"


def set_webhook_secret(source: Source, secret: str) -> None:
    if len(secret) < 16:
        raise PermanentError("a webhook secret needs at least 16 characters")
    Source.objects.filter(pk=source.pk).update(webhook_secret_encrypted=secrets_module.encrypt(secret))


def rotate_webhook_secret(source: Source) -> str:
    """A new random secret, stored encrypted and returned once for the user to copy."""
    secret = secrets_module.generate()
    set_webhook_secret(source, secret)
    return secret


def queue_sync_once(source: Source, *, actor: str) -> bool:
    """Queues a sync unless one is queued: a burst of pushes makes one reconcile of the newest commit."""
    if not Source.objects.filter(pk=source.pk, sync_queued=False).update(sync_queued=True):
        return False
    from gitops.tasks import sync_source as sync_task  # noqa: PLC0415 - tasks imports this module

    source_id = source.pk
    transaction.on_commit(lambda: sync_task.delay(source_id, actor=actor, wait_if_busy=False))
    return True


def reencrypt_webhook_secrets() -> tuple[int, list[str]]:
    """Re-encrypts every stored webhook secret under the current SECRET_KEY.

    Returns how many were rewritten and the names of sources whose secret no
    configured key can read (those need ``webhook-secret --rotate``).
    """
    rewritten, unreadable = 0, []
    for source in Source.objects.exclude(webhook_secret_encrypted="").only(
        "pk", "name", "webhook_secret_encrypted"
    ):
        try:
            token = secrets_module.reencrypt(source.webhook_secret_encrypted)
        except PermanentError:
            unreadable.append(source.name)
            continue
        rewritten += Source.objects.filter(
            pk=source.pk, webhook_secret_encrypted=source.webhook_secret_encrypted
        ).update(webhook_secret_encrypted=token)
    return rewritten, unreadable


def receive_webhook(source_name: str, headers: Mapping[str, str], body: bytes) -> WebhookAnswer:
    """Checks a push notification and queues a reconcile. Answers within milliseconds: no Git, no cluster."""
    answer = _receive_webhook(source_name, headers, body)
    metrics.WEBHOOK_DELIVERIES.labels(answer.provider, answer.body.get("status", "unknown")).inc()
    return answer


# A decoy secret per SECRET_KEY, encrypted like a real one and known to nobody.
_decoy_tokens: dict[str, str] = {}


def _decoy_token() -> str:
    token = _decoy_tokens.get(settings.SECRET_KEY)
    if token is None:
        token = _decoy_tokens.setdefault(
            settings.SECRET_KEY, secrets_module.encrypt(secrets_module.generate())
        )
    return token


def _secret_for(source: Source | None) -> tuple[str, str]:
    """The secret to check a request against, and why it cannot match ("" when it is real).

    A stranger must not learn which sources exist or which have a secret: an unknown
    name, a source without a secret and one whose secret cannot be read are all checked
    against a decoy through the same steps (one decryption, one HMAC), and so are
    answered exactly like a wrong signature.
    """
    if source is None:
        return secrets_module.decrypt(_decoy_token()), "no such source"
    if not source.webhook_secret_encrypted:
        return secrets_module.decrypt(_decoy_token()), "no webhook secret is set for this source"
    try:
        return secrets_module.decrypt(source.webhook_secret_encrypted), ""
    except PermanentError as exc:
        return secrets_module.decrypt(_decoy_token()), str(exc)


def _receive_webhook(source_name: str, headers: Mapping[str, str], body: bytes) -> WebhookAnswer:
    source = Source.objects.filter(name=source_name).first()
    secret, unusable = _secret_for(source)
    provider = "unknown"
    try:
        provider = webhooks.identify(headers)
        webhooks.verify(provider, headers, body, secret)
        if source is None or unusable:  # nobody knows the decoy: this guards the impossible
            raise webhooks.WebhookRejected(401, "signature does not match")
        event = webhooks.parse(provider, headers, body)
    except webhooks.WebhookRejected as rejected:
        _record_bounded(
            source,
            provider=provider,
            headers=headers,
            outcome=WebhookDelivery.Outcome.REJECTED,
            reason=unusable or rejected.reason,
        )
        return WebhookAnswer(
            provider=provider, status=rejected.status, body={"status": "rejected", "reason": rejected.reason}
        )
    return _accept(source, provider, headers, event)


def _accept(
    source: Source, provider: str, headers: Mapping[str, str], event: webhooks.PushEvent
) -> WebhookAnswer:
    delivery_id = DELIVERY_ID.sub("", event.delivery_id)[:100] or uuid.uuid4().hex
    if event.event == "ping":
        _record_delivery(
            source,
            provider=provider,
            headers=headers,
            outcome="ignored",
            reason="ping",
            delivery_id=delivery_id,
            event="ping",
        )
        return WebhookAnswer(200, {"status": "pong", "delivery": delivery_id}, provider)
    if event.event != "push":
        reason = f"{event.event} events do not trigger a sync"
    elif event.branch != source.branch:
        reason = f"push to {event.ref}; {source.name} follows {source.branch}"
    else:
        reason = ""
    try:
        with transaction.atomic():
            WebhookDelivery.objects.create(
                source=source,
                delivery_id=delivery_id,
                provider=provider,
                event=event.event[:32],
                ref=event.ref[:255],
                commit=event.commit,
                outcome="ignored" if reason else "accepted",
                reason=reason[:300],
            )
    except IntegrityError:
        # A replayed request carries a valid signature: bound its rows like rejections.
        _record_bounded(
            source,
            provider=provider,
            headers=headers,
            outcome=WebhookDelivery.Outcome.DUPLICATE,
            reason="already received",
            ref=event.ref,
            commit=event.commit,
            delivery_id=delivery_id,
            event=event.event,
        )
        return WebhookAnswer(200, {"status": "duplicate", "delivery": delivery_id}, provider)
    if reason:
        return WebhookAnswer(202, {"status": "ignored", "reason": reason, "delivery": delivery_id}, provider)
    queued = queue_sync_once(source, actor=f"webhook:{provider}")
    log.info(
        "webhook accepted source=%s provider=%s delivery=%s commit=%s queued=%s",
        source.name,
        provider,
        delivery_id,
        event.commit,
        queued,
    )
    return WebhookAnswer(
        202, {"status": "accepted", "delivery": delivery_id, "commit": event.commit}, provider
    )


# An id no source has: an unknown name runs the same bounded count as a known one.
_NO_SOURCE_ID = -1


def _record_bounded(source: Source | None, *, outcome: str, **details: Any) -> None:
    """Records a rejected or replayed delivery, at most SLUICE_WEBHOOK_REJECTED_ROWS_PER_MINUTE a minute.

    Anyone can send these, so past the bound they are only counted (in
    sluice_webhook_deliveries_total); rows of unknown names are never kept.
    """
    limit = settings.SLUICE_WEBHOOK_REJECTED_ROWS_PER_MINUTE
    recent = WebhookDelivery.objects.filter(
        source_id=source.pk if source is not None else _NO_SOURCE_ID,
        outcome=outcome,
        received_at__gte=timezone.now() - timedelta(minutes=1),
    )[:limit].count()
    if source is not None and recent < limit:
        _record_delivery(source, outcome=outcome, **details)


def _record_delivery(
    source: Source,
    *,
    provider: str,
    headers: Mapping[str, str],
    outcome: str,
    reason: str,
    ref: str = "",
    commit: str = "",
    delivery_id: str = "",
    event: str = "",
) -> None:
    # Nothing from an unverified body is kept; the delivery id header is reduced to safe characters.
    raw_id = delivery_id or next(
        (
            value
            for key, value in headers.items()
            if key.lower().endswith("delivery") or key.lower().endswith("uuid")
        ),
        "",
    )
    WebhookDelivery.objects.create(
        source=source,
        delivery_id=DELIVERY_ID.sub("", raw_id)[:100] or "-",
        provider=provider,
        event=event[:32],
        ref=ref[:255],
        commit=commit[:64],
        outcome=outcome,
        reason=reason[:300],
    )
    log.warning("webhook %s source=%s provider=%s reason=%r", outcome, source.name, provider, reason)
