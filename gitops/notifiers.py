"""Notifiers: rollout and revision events leave Sluice as CloudEvents 1.0 (HTTP, structured mode).

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
from functools import partial
from typing import Any

from django.db import transaction
from django.utils import timezone

from gitops import outbound
from gitops.models import Notification, Source

log = logging.getLogger(__name__)
EVENT_TYPES = {
    "started": "dev.sluice.rollout.started",
    "step": "dev.sluice.rollout.step.applied",
    "paused": "dev.sluice.rollout.paused",
    "promoted": "dev.sluice.rollout.promoted",
    "rolled-back": "dev.sluice.rollout.rolledback",
    "completed": "dev.sluice.rollout.completed",
    "rejected": "dev.sluice.revision.rejected",
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
    with transaction.atomic():
        created = Notification.objects.bulk_create(
            [Notification(source=source, url=url, event=event) for url in source.notify_urls]
        )
    from gitops.tasks import deliver_notification  # noqa: PLC0415 - tasks imports this module

    for notification in created:
        transaction.on_commit(partial(deliver_notification.delay, notification.pk))


class DeliveryFailed(Exception):
    """The receiver did not take the event: no answer, or not a 2xx."""


def post_cloud_event(url: str, event: Mapping[str, Any], timeout: float = 5) -> None:
    """Raises ``DeliveryFailed`` on anything but a 2xx answer; follows no redirect, keeps no answer body."""
    answer = outbound.post(url, json.dumps(event).encode(), content_type=CONTENT_TYPE, timeout=timeout)
    if not answer.ok:
        raise DeliveryFailed(answer.describe(url))


NOTIFIERS: dict[str, Callable[[str, Mapping[str, Any]], None]] = {"cloudevents": post_cloud_event}


def deliver(notification_id: int) -> bool:
    """One delivery attempt; True when delivered (or nothing is left to do)."""
    notification = Notification.objects.filter(pk=notification_id, status=Notification.Status.PENDING).first()
    if notification is None:
        return True
    Notification.objects.filter(pk=notification.pk).update(attempts=notification.attempts + 1)
    try:
        NOTIFIERS["cloudevents"](notification.url, notification.event)
    except DeliveryFailed as exc:
        Notification.objects.filter(pk=notification.pk).update(last_error=str(exc)[:500])
        log.warning("notification %s to %s failed: %s", notification.pk, notification.url, exc)
        return False
    Notification.objects.filter(pk=notification.pk).update(
        status=Notification.Status.DELIVERED, delivered_at=timezone.now(), last_error=""
    )
    return True


def give_up(notification_id: int) -> None:
    Notification.objects.filter(pk=notification_id, status=Notification.Status.PENDING).update(
        status=Notification.Status.GAVE_UP
    )
