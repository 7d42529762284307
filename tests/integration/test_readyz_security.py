"""/readyz tells a stranger only what fails, and gives up within seconds (issue 10, section 4).

The dead dependencies are real sockets on loopback that accept a connection and
never answer, the worst case for a client without a timeout.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from django.test import Client

from gitops.cluster import Cluster
from gitops.cluster.clients import clients
from tests.workers import poll

pytestmark = pytest.mark.django_db(transaction=True)
METRICS_TOKEN = "metrics-token-for-tests-0123456789"


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never sends a byte."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for connection in accepted:
        connection.close()
    listener.close()


@pytest.fixture
def broken_broker(settings):
    settings.CELERY_BROKER_URL = "redis://:hunter2@127.0.0.1:9/0"


def test_an_anonymous_caller_learns_which_check_fails_but_not_why(stack, broken_broker):
    response = Client().get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "not ready",
        "checks": {"database": "ok", "broker": "failing", "kube-apiserver": "ok"},
    }
    assert b"Error" not in response.content


def test_a_logged_in_user_or_the_metrics_token_gets_the_details(stack, broken_broker, settings, people):
    settings.SLUICE_METRICS_TOKEN = METRICS_TOKEN
    session = Client()
    session.force_login(people["viewer"])
    scraper = Client(headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    wrong_token = Client(headers={"Authorization": "Bearer not-the-token"})

    for caller in (session, scraper):
        checks = caller.get("/readyz").json()["checks"]
        assert checks["broker"].startswith("ConnectionError"), checks
        assert "hunter2" not in checks["broker"]
    assert wrong_token.get("/readyz").json()["checks"]["broker"] == "failing"


def test_an_account_without_a_role_learns_what_an_anonymous_caller_does(stack, broken_broker):
    """Refused every page, it was still an insider here: the failures' texts, the member clusters, and
    a probe of each of them on every request (before 2026-12-07)."""
    from django.contrib.auth.models import User

    nobody = User.objects.create_user("nobody", password="x")
    nobody.groups.clear()  # new accounts are viewers; an administrator took the role away
    session = Client()
    session.force_login(User.objects.get(pk=nobody.pk))
    assert session.get("/").status_code == 403
    checks = session.get("/readyz").json()["checks"]
    assert checks == {"database": "ok", "broker": "failing", "kube-apiserver": "ok"}, checks


def test_only_a_logged_in_user_or_the_metrics_token_has_the_member_clusters_probed_and_named(
    stack, settings, people
):
    """They do not decide readiness; every anonymous request probed each of them (threads and
    connections anyone could pile up) and listed their names."""
    from gitops import cluster_admin
    from gitops.record.audit import Actor

    cluster_admin.cluster_add(
        name="member-eu",
        kubeconfig=stack["KUBECONFIG"],
        context="member-1",
        actor=Actor.command_line("tests"),
    )
    settings.SLUICE_METRICS_TOKEN = METRICS_TOKEN
    anonymous = Client().get("/readyz").json()["checks"]
    assert set(anonymous) == {"database", "broker", "kube-apiserver"}
    session = Client()
    session.force_login(people["viewer"])
    scraper = Client(headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    for caller in (session, scraper):
        assert caller.get("/readyz").json()["checks"]["cluster:member-eu"] == "ok"


def test_a_silent_apiserver_and_broker_fail_the_check_within_seconds(
    stack, settings, silent_server, tmp_path
):
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{silent_server}/0"
    kubeconfig = yaml.safe_load(Path(stack["KUBECONFIG"]).read_text())
    for entry in kubeconfig["clusters"]:
        entry["cluster"]["server"] = f"https://127.0.0.1:{silent_server}"
    path = tmp_path / "silent.kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    clients.pin(settings.SLUICE_CLUSTER_NAME, Cluster(str(path)))
    try:
        started = time.monotonic()
        response = Client().get("/readyz")
        elapsed = time.monotonic() - started
    finally:
        clients.pin(settings.SLUICE_CLUSTER_NAME, None)

    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "broker": "failing", "kube-apiserver": "failing"}
    # Each check gives up after 3 s and they run side by side; today's client waited 60 s.
    assert elapsed < 15, f"/readyz took {elapsed:.1f}s"


def test_a_silent_database_fails_the_connection_within_seconds(silent_server):
    from django.db import OperationalError, connection
    from django.db.backends.postgresql.base import DatabaseWrapper

    # Django's own connection, with the production settings' OPTIONS, to a server that never answers.
    silent = DatabaseWrapper({**connection.settings_dict, "HOST": "127.0.0.1", "PORT": silent_server})
    started = time.monotonic()
    with pytest.raises(OperationalError):
        silent.ensure_connection()
    assert time.monotonic() - started < 15


def test_anonymous_callers_share_one_check_for_a_moment_and_never_queue_behind_one(
    stack, settings, people, monkeypatch
):
    """Each anonymous request ran every check (Redis, the apiserver, a transaction, a pool of threads):
    anyone could pile up web threads behind a slow dependency. Anonymous callers now share one answer for
    SLUICE_READYZ_CACHE_SECONDS, and one that comes while a check runs gets the answer before it at once.
    A logged-in user still gets a check of their own."""
    from gitops import health

    settings.SLUICE_READYZ_CACHE_SECONDS = 60
    monkeypatch.setattr(health, "_SHARED", health._SharedReadiness())
    real, ran, release = health.readiness, [], threading.Event()

    def counted(*, members: bool = True) -> dict[str, str]:
        ran.append(members)
        if len(ran) == 3:  # the check after the answer expired: slow
            assert release.wait(timeout=30)
        return real(members=members)

    monkeypatch.setattr(health, "readiness", counted)
    answers = [Client().get("/readyz") for _ in range(5)]
    assert [answer.status_code for answer in answers] == [200] * 5
    assert ran == [False], "one check for five anonymous requests"
    session = Client()
    session.force_login(people["viewer"])
    assert session.get("/readyz").status_code == 200
    assert ran == [False, True], "a logged-in user's own, with the member clusters"

    health._SHARED.at -= 61  # the shared answer expired; the next check hangs until released
    slow = threading.Thread(target=lambda: Client().get("/readyz"))
    slow.start()
    poll(lambda: len(ran) == 3, timeout=30, what="the slow check to start")
    meanwhile = Client().get("/readyz")
    assert meanwhile.status_code == 200, "answered with the one before"
    assert slow.is_alive(), "answered while the check still hangs, not after it"
    assert len(ran) == 3, "no second check while one runs"
    release.set()
    slow.join(timeout=30)
    assert not slow.is_alive()
