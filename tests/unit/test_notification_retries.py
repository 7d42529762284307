"""How long a notification is tried: a receiver redeployed for a few minutes must still get its events.
With 8 retries the tries ended 4 minutes after the event, and a 5-minute redeploy lost them for good."""

from __future__ import annotations

from gitops.tasks import NOTIFY_MAX_RETRIES, backoff


def test_a_notification_is_tried_for_about_an_hour_never_more_than_five_minutes_apart() -> None:
    delays = [backoff(retry) for retry in range(NOTIFY_MAX_RETRIES)]
    assert sum(delays) >= 3600, f"tried for {sum(delays) / 60:.0f} minutes"
    assert max(delays) <= 300
