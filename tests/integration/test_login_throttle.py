"""/login/ is throttled by django-axes: a lockout per username and address, then a cool-off (issue 10, §4)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from dashboard.models import ApiToken

pytestmark = pytest.mark.django_db(transaction=True)
PASSWORD = "correct horse battery staple"


@pytest.fixture
def user():
    return User.objects.create_user("mallory-target", password=PASSWORD)


def log_in(client: Client, password: str):
    return client.post("/login/", {"username": "mallory-target", "password": password})


def logged_in(client: Client) -> bool:
    return client.get("/").status_code == 200


def test_repeated_failures_lock_the_username_at_that_address(user):
    attacker = Client(REMOTE_ADDR="192.0.2.10")
    limit = settings.AXES_FAILURE_LIMIT
    assert limit == 5

    for _ in range(limit - 1):
        assert log_in(attacker, "wrong").status_code == 200  # the form again, with its error
    locked = log_in(attacker, "wrong")
    assert locked.status_code == 429
    assert b'id="locked-out"' in locked.content

    # Locked out: even the right password is refused from that address, and nobody is logged in.
    assert log_in(attacker, PASSWORD).status_code == 429
    assert not logged_in(attacker)

    # The same user from another address is not locked out (the lockout is username + address).
    elsewhere = Client(REMOTE_ADDR="192.0.2.99")
    assert log_in(elsewhere, PASSWORD).status_code == 302
    assert logged_in(elsewhere)


def test_the_lockout_ends_after_the_cool_off(user):
    client = Client(REMOTE_ADDR="192.0.2.11")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        log_in(client, "wrong")
    assert log_in(client, PASSWORD).status_code == 429
    assert timedelta(minutes=15) == settings.AXES_COOLOFF_TIME

    # The failures age past the documented cool-off (moved back in time instead of waited for).
    AccessAttempt.objects.update(
        attempt_time=timezone.now() - settings.AXES_COOLOFF_TIME - timedelta(seconds=1)
    )
    assert log_in(client, PASSWORD).status_code == 302
    assert logged_in(client)


def test_api_tokens_are_not_affected_by_a_login_lockout(user):
    client = Client(REMOTE_ADDR="192.0.2.12")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        log_in(client, "wrong")
    assert log_in(client, PASSWORD).status_code == 429

    _, token = ApiToken.objects.issue(user, name="ci")
    api = Client(REMOTE_ADDR="192.0.2.12", headers={"Authorization": f"Bearer {token}"})
    assert api.get("/api/sources").status_code == 200
