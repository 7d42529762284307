"""The Celery broker's side of a send, replaced for tests of what Sluice does when the broker refuses a
task (Redis away), or to see which tasks were sent without queueing them."""

from __future__ import annotations

from typing import Any

import pytest
from kombu.exceptions import OperationalError

REFUSAL = "Error 111 connecting to redis: Connection refused"


class Sent:
    """What ``send_task`` returns: only its id is read."""

    id = "not-sent"


def refuse_sends(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every send raises as kombu does without a broker; returns the tried tasks' keyword arguments."""
    from gitops import schedule

    tried: list[dict[str, Any]] = []

    def broker_away(*args: Any, **options: Any) -> Sent:
        tried.append(options["kwargs"])
        raise OperationalError(REFUSAL)

    monkeypatch.setattr(schedule.app, "send_task", broker_away)
    return tried


def keep_sends(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Sends are kept, not queued; returns the sent tasks' keyword arguments."""
    from gitops import schedule

    sent: list[dict[str, Any]] = []

    def keep(*args: Any, **options: Any) -> Sent:
        sent.append(options["kwargs"])
        return Sent()

    monkeypatch.setattr(schedule.app, "send_task", keep)
    return sent
