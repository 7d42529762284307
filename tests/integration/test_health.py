"""/healthz and /readyz against the real database, broker and kube-apiserver."""

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db(transaction=True)


def test_healthz_needs_no_login_and_nothing_else():
    response = Client().get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_checks_database_broker_and_apiserver(stack):
    response = Client().get("/readyz")
    assert response.status_code == 200, response.json()
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "broker": "ok", "kube-apiserver": "ok"},
    }


def test_readyz_names_what_is_unreachable_without_leaking_the_url(stack, settings, people):
    settings.CELERY_BROKER_URL = "redis://:hunter2@127.0.0.1:9/0"
    client = Client()
    client.force_login(people["viewer"])  # anonymous callers get no details: test_readyz_security.py
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["kube-apiserver"] == "ok"
    assert body["checks"]["broker"].startswith("ConnectionError")
    assert "hunter2" not in response.content.decode()


def test_readyz_hides_a_password_a_client_quotes_from_a_url_it_cannot_parse(stack, settings, people):
    """redis-py reads the password of a broker URL with an unencoded "/" as the host's port, and says
    so, quoting it: a viewer saw part of the password."""
    settings.CELERY_BROKER_URL = "redis://:s3cret/pw@127.0.0.1:9/0"
    client = Client()
    client.force_login(people["viewer"])
    response = client.get("/readyz")
    assert response.status_code == 503
    broker = response.json()["checks"]["broker"]
    assert broker.startswith("ValueError"), broker
    assert "s3cret" not in response.content.decode()


def test_readyz_hides_a_password_its_200_character_cut_splits(stack, settings):
    """The message is cut to 200 characters after it is redacted: cut first, the part of a password
    left before the cut was not one of its parts, and was shown."""
    from gitops import health

    settings.CELERY_BROKER_URL = "redis://:CorrectHorseBattery@127.0.0.1:9/0"

    def failing() -> None:
        raise ValueError("x" * 190 + " CorrectHorseBattery")

    outcome = health._outcome(failing)
    assert "CorrectHor" not in outcome and "***" in outcome, outcome
