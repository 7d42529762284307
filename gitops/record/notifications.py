"""Notifications: rollout and revision events leave Sluice as CloudEvents 1.0 (HTTP, structured mode).

A registry keyed by name, like analysis checks; ``cloudevents`` is the one
built in. Events go into an outbox in the same transaction as the change that
caused them, and a task delivers them with retries, so a slow or broken
receiver never holds up a rollout.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from gitops import outbound, schedule
from gitops.claims import each_claimed
from gitops.models import Notification, Source, masked_url
from gitops.vocabulary import RolloutEventKind

log = logging.getLogger(__name__)
REVISION_REJECTED = "rejected"
NOTIFY_URL_LENGTH: int = Notification._meta.get_field("url").max_length or 2000  # what a row keeps of it
EVENT_TYPES = {
    RolloutEventKind.STARTED: "dev.sluice.rollout.started",
    RolloutEventKind.STEP: "dev.sluice.rollout.step.applied",
    RolloutEventKind.PAUSED: "dev.sluice.rollout.paused",
    RolloutEventKind.PROMOTED: "dev.sluice.rollout.promoted",
    RolloutEventKind.ROLLED_BACK: "dev.sluice.rollout.rolledback",
    RolloutEventKind.ROLLBACK_WAIVED: "dev.sluice.rollout.rollbackwaived",
    RolloutEventKind.COMPLETED: "dev.sluice.rollout.completed",
    REVISION_REJECTED: "dev.sluice.revision.rejected",
}
CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"


def cloud_event(kind: str, *, source: Source, subject: str, data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": f"/sluice/sources/{source.name}",
        "type": EVENT_TYPES[kind],
        "subject": subject,
        "time": timezone.now().isoformat(),
        "datacontenttype": "application/json",
        "data": dict(data),
    }


def emit(kind: str, *, source: Source, subject: str, data: Mapping[str, Any]) -> None:
    """Queues the event for every URL the source notifies; does nothing when there is none."""
    if kind not in EVENT_TYPES or not source.notify_urls:
        return
    event = cloud_event(kind, source=source, subject=subject, data=data)
    # A URL longer than the row keeps, stored before such URLs were refused: the insert failed inside the
    # transaction of the move the event told of, and every such move with it.
    urls = [url for url in source.notify_urls if len(url) <= NOTIFY_URL_LENGTH]
    if len(urls) < len(source.notify_urls):
        log.warning(
            "source=%s: a notification URL past %d characters gets no events", source.name, NOTIFY_URL_LENGTH
        )
    with transaction.atomic():
        created = Notification.objects.bulk_create(
            [Notification(source=source, url=url, event=event) for url in urls]
        )
    for notification in created:
        schedule.notification_delivery(notification.pk)


class DeliveryFailed(Exception):
    """The receiver did not take the event: no answer, or not a 2xx."""


def post_cloud_event(url: str, event: Mapping[str, Any], timeout: float = 5) -> None:
    """Raises ``DeliveryFailed`` on anything but a 2xx answer; follows no redirect, keeps no answer body."""
    answer = outbound.post(url, json.dumps(event).encode(), content_type=CONTENT_TYPE, timeout=timeout)
    if not answer.ok:
        # A chat webhook's path is its token: the error (stored, logged) names the URL masked.
        raise DeliveryFailed(answer.describe(masked_url(url)))


NOTIFIERS: dict[str, Callable[[str, Mapping[str, Any]], None]] = {"cloudevents": post_cloud_event}


# One attempt holds its row this long: well over a POST's timeout, short enough that a
# worker killed mid-attempt delays the notification by minutes, not forever.
ATTEMPT_LEASE = timedelta(minutes=2)
# A pending row whose attempt is this overdue lost its task (the broker failed).
SWEEP_AFTER = timedelta(minutes=1)
SWEEP_BATCH = 500


def _claim(notification_id: int, now: datetime) -> bool:
    """Compare-and-swap: only one attempt at a time holds a pending notification."""
    return bool(
        Notification.objects.filter(pk=notification_id, status=Notification.Status.PENDING)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(lease_until=now + ATTEMPT_LEASE, attempts=F("attempts") + 1)
    )


def deliver(notification_id: int, *, retry_in: float = 0) -> bool:
    """One delivery attempt; True when delivered or nothing is left to do for this caller.

    Nothing is left when the notification was delivered or given up, or when another
    attempt holds it right now (that one carries on). On failure the next attempt is
    due in ``retry_in`` seconds; the sweeper takes over if that attempt never comes.
    """
    if not _claim(notification_id, timezone.now()):
        return True
    notification = Notification.objects.select_related("source").get(pk=notification_id)
    if _unlisted(notification):
        return True
    try:
        NOTIFIERS["cloudevents"](notification.url, notification.event)
    except DeliveryFailed as exc:
        Notification.objects.filter(pk=notification.pk).update(
            last_error=str(exc)[:500],
            lease_until=None,
            next_attempt_at=timezone.now() + timedelta(seconds=retry_in),
        )
        log.warning("notification %s to %s failed: %s", notification.pk, masked_url(notification.url), exc)
        return False
    Notification.objects.filter(pk=notification.pk).update(
        status=Notification.Status.DELIVERED, delivered_at=timezone.now(), last_error="", lease_until=None
    )
    return True


def _unlisted(notification: Notification) -> bool:
    """Gives up a notification whose URL its source no longer lists (an administrator took it out: a
    leaked or misdirected one): nothing more is sent there, retries included. A removed source keeps
    its list, and what it had to tell is still told."""
    if notification.url in (notification.source.notify_urls or []):
        return False
    reason = "the source no longer notifies this URL"
    Notification.objects.filter(pk=notification.pk).update(
        status=Notification.Status.GAVE_UP, last_error=reason, lease_until=None
    )
    log.info("notification %s to %s given up: %s", notification.pk, masked_url(notification.url), reason)
    return True


def claim_overdue(now: datetime | None = None) -> list[int]:
    """Pending notifications whose delivery task never ran, claimed for one re-enqueue each.

    Each is claimed with a compare-and-swap on ``next_attempt_at``, so two sweeps
    never enqueue the same row twice; the attempt lease in ``deliver`` keeps a
    re-enqueued task and a late original from both posting it.
    """
    now = now or timezone.now()
    overdue = (
        Notification.objects.filter(status=Notification.Status.PENDING, next_attempt_at__lt=now - SWEEP_AFTER)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .order_by("next_attempt_at")
        .values_list("pk", "next_attempt_at")[:SWEEP_BATCH]
    )

    def claim(found: tuple[int, datetime]) -> bool:
        pk, due = found
        row = Notification.objects.filter(pk=pk, status=Notification.Status.PENDING, next_attempt_at=due)
        return bool(row.update(next_attempt_at=now))

    return [pk for pk, _ in each_claimed(overdue, claim, "overdue notifications")]


def give_up(notification_id: int) -> None:
    Notification.objects.filter(pk=notification_id, status=Notification.Status.PENDING).update(
        status=Notification.Status.GAVE_UP
    )
