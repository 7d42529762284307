"""Push webhooks in: check who sent them and queue a sync. Answers within milliseconds: no Git, no cluster.

Nothing from an unverified body is kept, and a stranger learns nothing about
which sources exist (see ``_secret_for``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from gitops import metrics, schedule
from gitops import secrets as encryption
from gitops.errors import PermanentError
from gitops.intake import webhooks
from gitops.models import Source, WebhookDelivery
from gitops.prepared import PreparedSelect
from gitops.record.bulk import row_create_once

log = logging.getLogger("gitops.intake")

DELIVERY_ID = re.compile(r"[^A-Za-z0-9._:-]")
# Seconds a Git host that honours Retry-After waits before delivering a push the queue refused again.
UNQUEUED_RETRY_AFTER = 10


@dataclass(frozen=True)
class WebhookAnswer:
    status: int
    body: dict[str, Any]
    provider: str = "unknown"
    retry_after: int | None = None


def webhook_receive(source_name: str, headers: Mapping[str, str], body: bytes) -> WebhookAnswer:
    """Checks a push notification and queues a reconcile. Answers within milliseconds: no Git, no cluster."""
    answer = _receive(source_name, headers, body)
    metrics.WEBHOOK_DELIVERIES.labels(answer.provider, answer.body.get("status", "unknown")).inc()
    return answer


# A decoy secret per SECRET_KEY, encrypted like a real one and known to nobody.
_decoy_tokens: dict[str, str] = {}


def _decoy_token() -> str:
    token = _decoy_tokens.get(settings.SECRET_KEY)
    if token is None:
        token = _decoy_tokens.setdefault(settings.SECRET_KEY, encryption.encrypt(encryption.generate()))
    return token


def _secret_for(source: Source | None) -> tuple[str, str]:
    """The secret to check a request against, and why it cannot match ("" when it is real).

    A stranger must not learn which sources exist or which have a secret: an unknown
    name, a source without a secret and one whose secret cannot be read are all checked
    against a decoy through the same steps (one decryption, one HMAC), and so are
    answered exactly like a wrong signature.
    """
    if source is None:
        return encryption.decrypt(_decoy_token()), "no such source"
    if not source.webhook_secret_encrypted:
        return encryption.decrypt(_decoy_token()), "no webhook secret is set for this source"
    try:
        return encryption.decrypt(source.webhook_secret_encrypted), ""
    except PermanentError as exc:
        return encryption.decrypt(_decoy_token()), str(exc)


# What a delivery reads of its source: the rest (the last plan above all) is not decoded per push.
_WEBHOOK_FIELDS = (
    "id",
    "name",
    "branch",
    "webhook_secret_encrypted",
    "suspended",
    "deleted_at",
    "consecutive_failures",
    "last_commit",
)


# Asked of every delivery, with another name each time: compiled to SQL once per process. (A deleted
# source is not among ``Source.objects``: its name may belong to a new one.)
_SOURCE_BY_NAME: PreparedSelect[Source] = PreparedSelect(
    lambda name: Source.objects.filter(name=name).only(*_WEBHOOK_FIELDS)[:1], str
)


def _receive(source_name: str, headers: Mapping[str, str], body: bytes) -> WebhookAnswer:
    source = _SOURCE_BY_NAME.first(source_name)
    secret, unusable = _secret_for(source)
    provider = "unknown"
    try:
        provider = webhooks.identify(headers)
        webhooks.verify(provider, headers, body, secret)
        if source is None or unusable:  # nobody knows the decoy: this guards the impossible
            raise webhooks.WebhookRejected(401, "signature does not match")
        event = webhooks.parse(provider, headers, body)
        digest = hashlib.sha256(body).hexdigest()
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
    return _accept(source, provider, headers, event, digest)


def _ignore_reason(source: Source, event: webhooks.PushEvent) -> str:
    """Why a verified event triggers no sync ("" when it does)."""
    if event.event != "push":
        return f"{event.event} events do not trigger a sync"
    if event.branch != source.branch:
        return f"push to {event.ref}; {source.name} follows {source.branch}"
    if not source.automatic_sync_allowed:
        return f"{source.name} is suspended: pushes do not sync it (a manual sync does)"
    return ""


def _accept(
    source: Source, provider: str, headers: Mapping[str, str], event: webhooks.PushEvent, digest: str
) -> WebhookAnswer:
    delivery_id = DELIVERY_ID.sub("", event.delivery_id)[:100] or uuid.uuid4().hex
    if event.event == "ping":
        return _pong(source, provider, delivery_id, digest)
    reason = _ignore_reason(source, event)
    delivered = row_create_once(
        WebhookDelivery.objects,
        source=source,
        delivery_id=delivery_id,
        provider=provider,
        event=event.event[:32],
        ref=event.ref[:255],
        commit=event.commit,
        outcome=WebhookDelivery.Outcome.IGNORED if reason else WebhookDelivery.Outcome.ACCEPTED,
        reason=reason[:300],
        body_digest=digest,
    )
    if delivered is None:
        return _duplicate(source, provider, headers, event, delivery_id, wanted=not reason)
    if reason:
        return WebhookAnswer(202, {"status": "ignored", "reason": reason, "delivery": delivery_id}, provider)
    try:
        queued = schedule.source_sync_once(
            source.pk, actor=f"webhook:{provider}", backing_off=source.consecutive_failures > 0
        )
    except (schedule.SyncNotQueued, DatabaseError):
        # A database error too: left recorded as accepted, the delivery made the host's redelivery a
        # duplicate, and the push waited for the next poll.
        return _unqueued(delivered, source, provider)
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


def _duplicate(
    source: Source,
    provider: str,
    headers: Mapping[str, str],
    event: webhooks.PushEvent,
    delivery_id: str,
    *,
    wanted: bool,
) -> WebhookAnswer:
    """A delivery id, or a body, received before. A signature covers the body alone, so whoever saw one
    (a proxy's log, the host's delivery page) could send it again under new ids without end: each was
    a row and a sync, a backing-off source's too. Now its rows are bounded like rejections. A push of
    a commit the source has not fetched still asks for a sync, as one in flight at most, and once in
    ``schedule.DUPLICATE_PUSH_SYNC_SECONDS`` (one sent again sooner makes the poll due then): a plain Git
    server's body is the same for the same move (A to B, back to A, to B again), and that last push
    must not wait for the next poll."""
    _record_bounded(
        source,
        provider=provider,
        headers=headers,
        outcome=WebhookDelivery.Outcome.DUPLICATE,
        reason="already received (this delivery id, or this very body under another)",
        ref=event.ref,
        commit=event.commit,
        delivery_id=delivery_id,
        event=event.event,
    )
    if wanted and event.commit and event.commit != source.last_commit:
        if not schedule.duplicate_push_sync_slot(source.pk):
            # Sent again within seconds of another: a replay, or a host redelivering; the poll comes soon.
            # A pass running now puts its poll a whole interval away as it ends, so a request is left for
            # it too (once in those seconds as well): it runs another pass after its own.
            soon = timezone.now() + timedelta(seconds=schedule.DUPLICATE_PUSH_SYNC_SECONDS)
            schedule.source_poll_due_by(source.pk, soon)
            if schedule.duplicate_push_sync_slot(source.pk, "request"):
                Source.objects.filter(pk=source.pk).update(sync_requested_at=timezone.now())
            return WebhookAnswer(200, {"status": "duplicate", "delivery": delivery_id}, provider)
        # As an accepted push asks, a backing-off source's too: the push may bring the fix, and it
        # would wait for the backed-off poll (up to an hour) otherwise.
        backing_off = source.consecutive_failures > 0
        try:
            schedule.source_sync_once(source.pk, actor=f"webhook:{provider}", backing_off=backing_off)
        except (schedule.SyncNotQueued, DatabaseError):
            log.warning("webhook duplicate source=%s: its sync could not be queued", source.name)
    return WebhookAnswer(200, {"status": "duplicate", "delivery": delivery_id}, provider)


def _pong(source: Source, provider: str, delivery_id: str, digest: str) -> WebhookAnswer:
    """A ping, kept once per delivery id and once per body as a push is: a host's redelivered ping (the
    same id) met the unique constraint and was answered 500. The event's name is a header, which the
    signature does not cover: any signed body seen once (a push's, on a proxy's log) sent again as a
    ping, without an id or under new ones, was a row each time. A replayed ping is answered, and not
    kept: it asks for nothing."""
    row_create_once(
        WebhookDelivery.objects,
        source=source,
        delivery_id=delivery_id,
        provider=provider,
        event="ping",
        outcome=WebhookDelivery.Outcome.IGNORED,
        reason="ping",
        body_digest=digest,
    )
    return WebhookAnswer(200, {"status": "pong", "delivery": delivery_id}, provider)


def _unqueued(delivered: WebhookDelivery, source: Source, provider: str) -> WebhookAnswer:
    """The sync was not queued. When the broker refused it, its claim was given back as a request and a
    due poll (``schedule.source_sync_once``), so the commit is synced whether the host redelivers or
    not; when the database failed on the way, nothing may have been given back, and the next poll
    syncs it. Either way the delivery stops counting as received, so a redelivery is accepted, not a
    duplicate (unless the database refuses that too: the error is then the host's 500)."""
    log.exception(
        "webhook unqueued source=%s provider=%s delivery=%s", source.name, provider, delivered.delivery_id
    )
    reason = "the sync could not be queued; deliver it again"
    # A connection the error broke is replaced, as Django does at a request's end: the update reaches
    # the database whenever it answers again.
    connection.close_if_unusable_or_obsolete()
    WebhookDelivery.objects.filter(pk=delivered.pk).update(
        outcome=WebhookDelivery.Outcome.UNQUEUED, reason=reason
    )
    body = {
        "status": WebhookDelivery.Outcome.UNQUEUED.value,
        "reason": reason,
        "delivery": delivered.delivery_id,
    }
    return WebhookAnswer(503, body, provider, retry_after=UNQUEUED_RETRY_AFTER)


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
