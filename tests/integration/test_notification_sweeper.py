"""Notifications whose delivery task never ran (the broker failed) are swept up, and never sent twice.

A real worker delivers to a real HTTP receiver on loopback (issue 10, section 5).
The broker failure is the state it leaves: an outbox row committed with its
event, and no task for it on any queue.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from gitops.models import Notification
from gitops.record import notifications
from gitops.tasks import deliver_notification, sweep_notifications
from tests.workers import poll

pytestmark = pytest.mark.django_db(transaction=True)


class SlowReceiver:
    """Accepts CloudEvents after ``delay`` seconds, counting each event id it gets."""

    def __init__(self, delay: float = 0) -> None:
        self.received: Counter[str] = Counter()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                time.sleep(delay)  # a slow receiver widens the window two deliveries could race in
                receiver.received[json.loads(body)["id"]] += 1
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = SlowReceiver(delay=1.0)
    yield made
    made.close()


def stranded(source, url: str, *, age: timedelta = timedelta(minutes=2)) -> Notification:
    """An outbox row as emit() commits it, whose task the broker never took."""
    when = timezone.now() - age
    event = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "type": "dev.sluice.rollout.completed",
        "data": {},
    }
    return Notification.objects.create(
        source=source, url=url, event=event, created_at=when, next_attempt_at=when
    )


def test_the_sweeper_delivers_a_stranded_notification_once(make_source, receiver, celery_worker):
    source = make_source(notify_urls=[receiver.url])  # a URL the source lists
    lost = stranded(source, receiver.url)
    fresh = stranded(source, receiver.url, age=timedelta(seconds=5))  # its task may still come

    assert sweep_notifications.delay().get(timeout=60) == [lost.pk]

    poll(
        lambda: Notification.objects.get(pk=lost.pk).status == Notification.Status.DELIVERED,
        timeout=60,
        what="the swept notification to be delivered",
    )
    assert receiver.received == {lost.event["id"]: 1}
    assert Notification.objects.get(pk=fresh.pk).status == Notification.Status.PENDING
    assert sweep_notifications.delay().get(timeout=60) == [], "a delivered row is never swept again"


def test_a_claim_is_a_compare_and_swap_so_two_sweeps_never_both_enqueue(make_source, receiver):
    source = make_source(notify_urls=[receiver.url])  # a URL the source lists
    lost = stranded(source, receiver.url)
    assert notifications.claim_overdue() == [lost.pk]
    assert notifications.claim_overdue() == []


def test_racing_deliveries_post_a_notification_exactly_once(make_source, receiver, celery_worker):
    source = make_source(notify_urls=[receiver.url])  # a URL the source lists
    lost = stranded(source, receiver.url)
    # The sweep's task, a late original and a duplicate all run at once on two processes.
    results = [deliver_notification.delay(lost.pk) for _ in range(3)]
    results.append(sweep_notifications.delay())

    for result in results:
        result.get(timeout=60)
    poll(
        lambda: Notification.objects.get(pk=lost.pk).status == Notification.Status.DELIVERED,
        timeout=60,
        what="the notification to be delivered",
    )
    assert receiver.received == {lost.event["id"]: 1}
    assert Notification.objects.get(pk=lost.pk).attempts == 1


def test_a_database_error_mid_sweep_keeps_the_claims_already_made(make_source, receiver):
    """Each claim commits on its own: a sweep that raised at the second one lost the first, its row
    moved on with no task for it. A row another session holds locked past the lock timeout is the
    database error here."""
    from django.db import connection

    source = make_source(notify_urls=[receiver.url])  # a URL the source lists
    first = stranded(source, receiver.url, age=timedelta(minutes=3))  # claimed first: the oldest
    second = stranded(source, receiver.url)
    locked, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_locked, args=(second.pk, locked, release))
    holder.start()
    try:
        assert locked.wait(timeout=30), "the other session to lock the row"
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '200ms'")
        assert notifications.claim_overdue() == [first.pk]
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
        release.set()
        holder.join(timeout=30)
    assert notifications.claim_overdue() == [second.pk], "the next sweep claims the rest"


def _hold_locked(pk: int, locked: threading.Event, release: threading.Event) -> None:
    """On a session of its own (this thread's): locks the row until ``release``."""
    from django.db import connection, transaction

    try:
        with transaction.atomic():
            Notification.objects.select_for_update().get(pk=pk)
            locked.set()
            release.wait(timeout=30)
    finally:
        connection.close()
