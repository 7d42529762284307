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
from gitops.desired.revision import READ_PATHS, DesiredState, ParseCache, load_revision
from gitops.errors import PermanentError, TemporaryError
from gitops.models import Revision, Rollout, Source, WebhookDelivery
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
_desired_cache: dict[int, tuple[str, tuple[str, ...], DesiredState]] = {}


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
    branch: str = "main",
    path: str = "",
    poll_interval: timedelta = timedelta(seconds=60),
    credentials_ref: str = "",
    allowed_namespaces: Sequence[str] = (),
    commit_url_template: str = "",
    notify_urls: Sequence[str] = (),
) -> Source:
    if redact_url(url) != url:
        raise PermanentError("the URL must not contain credentials; use --credentials env:VAR or file:/path")
    source = Source(
        name=name,
        url=url,
        branch=branch,
        path=path.strip("/"),
        poll_interval=poll_interval,
        credentials_ref=credentials_ref,
        allowed_namespaces=list(allowed_namespaces),
        commit_url_template=commit_url_template,
        notify_urls=list(notify_urls),
    )
    if any(not url.startswith(("http://", "https://")) for url in source.notify_urls):
        raise PermanentError("notification URLs must be http:// or https://")
    source.full_clean()
    source.save()
    return source


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
        raise
    logs.add_context(commit=head.commit)
    result = SyncResult(source.name, "unchanged", head.commit, head.pk, forced_push=forced)
    head_desired = _desired_state(source, head)
    if head_desired is None:
        head.refresh_from_db()
        result.outcome = "rejected"
        result.errors = [_format_error(e) for e in head.errors]
        _finish(source, [])
        return result

    rollout, note = rollouts.choose(source, head, head_desired)
    logs.add_context(rollout=rollout.pk if rollout else None)
    if rollout is None:  # pragma: no cover - choose always returns one for a valid head
        return result
    # A queued head waits: the running rollout goes on with its own revision.
    desired = head_desired if rollout.revision_id == head.pk else _desired_state(source, rollout.revision)
    if desired is None:  # pragma: no cover - a revision with a rollout was valid
        raise PermanentError(f"revision {rollout.revision.commit} of rollout {rollout.pk} no longer loads")
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


def _finish(source: Source, failures: list[str]) -> None:
    now = timezone.now()
    Source.objects.filter(pk=source.pk).update(
        last_synced_at=now, last_error="; ".join(failures[:5]), next_poll_at=now + source.poll_interval
    )


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
                    "author_name": info.author_name,
                    "author_email": info.author_email,
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
    namespaces = tuple(source.allowed_namespaces or ())
    cached = _desired_cache.get(source.pk)
    if cached and cached[0] == revision.commit and cached[1] == namespaces:
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
                files,
                mirror.read_blobs,
                sizes=sizes,
                limits=limits,
                cache=cache,
                operator_namespaces=namespaces,
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
    _desired_cache[source.pk] = (revision.commit, namespaces, desired)
    return desired


def _plan(source: Source, revision: Revision, desired: DesiredState) -> Plan:
    return plan(desired, apply.live_objects(source, desired), source=source.name, commit=revision.commit)


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


def record_sync_failure(source_id: int, error: Exception) -> SyncResult:
    source = Source.objects.get(pk=source_id)
    Source.objects.filter(pk=source_id).update(
        last_error=str(error), next_poll_at=timezone.now() + source.poll_interval
    )
    log.error("sync failed source=%s: %s", source.name, error)
    return SyncResult(source.name, "failed", errors=[str(error)])


def due_rollout_sources(now: Any = None) -> list[int]:
    """Sources whose paused rollout's timer (or analysis back-off) has run out."""
    now = now or timezone.now()
    return sorted(
        set(
            Rollout.objects.filter(
                phase=Rollout.Phase.PAUSED,
                waiting_for__in=(Rollout.Waiting.TIMER, Rollout.Waiting.ANALYSIS),
                pause_until__lte=now,
            ).values_list("source_id", flat=True)
        )
        | set(
            Rollout.objects.filter(phase__in=Rollout.ACTIVE_PHASES)
            .exclude(abort_requested_by="")
            .values_list("source_id", flat=True)
        )
    )


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


def receive_webhook(source_name: str, headers: Mapping[str, str], body: bytes) -> WebhookAnswer:
    """Checks a push notification and queues a reconcile. Answers within milliseconds: no Git, no cluster."""
    answer = _receive_webhook(source_name, headers, body)
    metrics.WEBHOOK_DELIVERIES.labels(answer.provider, answer.body.get("status", "unknown")).inc()
    return answer


def _receive_webhook(source_name: str, headers: Mapping[str, str], body: bytes) -> WebhookAnswer:
    source = Source.objects.filter(name=source_name).first()
    if source is None:
        return WebhookAnswer(404, {"status": "rejected", "reason": "no such source"})
    provider = "unknown"
    try:
        provider = webhooks.identify(headers)
        webhooks.verify(provider, headers, body, secrets_module.decrypt(source.webhook_secret_encrypted))
        event = webhooks.parse(provider, headers, body)
    except webhooks.WebhookRejected as rejected:
        _record_delivery(
            source, provider=provider, headers=headers, outcome="rejected", reason=rejected.reason
        )
        return WebhookAnswer(
            provider=provider, status=rejected.status, body={"status": "rejected", "reason": rejected.reason}
        )
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
        _record_delivery(
            source,
            provider=provider,
            headers=headers,
            outcome="duplicate",
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
