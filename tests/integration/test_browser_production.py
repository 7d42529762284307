"""The dashboard as a checkout serves it in production (issue 14, "Static files outside the image").

A real server process (gunicorn on sluice.wsgi:application, or manage.py runserver) runs with the
production settings: sluice.settings, DEBUG unset, a SECRET_KEY, SLUICE_ALLOW_HTTP=1 for plain HTTP on
loopback, and a STATIC_ROOT nobody ran collectstatic into. Real Chromium must get the stylesheet and
htmx from it, and a promote must happen without a page reload.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import Browser, Page, sync_playwright

from gitops.models import Approval, Rollout, Source
from tests.integration.test_browser import CHROMIUM, CHROMIUM_ARGS, screenshot
from tests.parallel import worker_id
from tests.workers import ARTIFACTS, poll

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]
HEADER_BACKGROUND = "rgb(21, 27, 43)"  # header.top in dashboard/static/dashboard/sluice.css


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - a loopback URL we built
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture
def start_production_server(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """``start(kind)`` runs "gunicorn" or "runserver" with the production settings; returns its URL."""
    started: list[subprocess.Popen[bytes]] = []

    def start(kind: str) -> str:
        port = free_port()
        env = {
            **worker_env,
            "DJANGO_SETTINGS_MODULE": "sluice.settings",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "SLUICE_ALLOW_HTTP": "1",
            "ALLOWED_HOSTS": "127.0.0.1",
            "STATIC_ROOT": str(tmp_path / "never-collected"),
        }
        env.pop("DEBUG", None)
        command = {
            "gunicorn": [
                "-m",
                "gunicorn",
                "sluice.wsgi:application",
                "--bind",
                f"127.0.0.1:{port}",
                "--threads",
                "4",
            ],
            "runserver": ["manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        }[kind]
        # A session's own under pytest -n 2: both may run a production server at once.
        log_path = ARTIFACTS / f"production-{kind}{'-' + worker_id() if worker_id() else ''}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            process = subprocess.Popen([sys.executable, *command], env=env, cwd=ROOT, stdout=log, stderr=log)
        started.append(process)
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"{kind} exited with {process.returncode}; see {log_path}")
            return answers(f"{url}/healthz")

        poll(up, timeout=60, interval=0.2, what=f"{kind} to answer /healthz")
        return url

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[[str], Page]]:
    contexts = []

    def open_at(base_url: str) -> Page:
        context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
        contexts.append(context)
        return context.new_page()

    yield open_at
    for context in contexts:
        context.close()


@pytest.fixture
def production_passwords(people) -> None:
    """The test settings hash passwords with MD5, which the production settings do not accept:
    store "x" as the production hasher (PBKDF2, few iterations) would."""
    from django.contrib.auth.hashers import PBKDF2PasswordHasher
    from django.contrib.auth.models import User

    hasher = PBKDF2PasswordHasher()
    User.objects.filter(pk__in=[user.pk for user in people.values()]).update(
        password=hasher.encode("x", hasher.salt(), iterations=1000)
    )


def log_in(page: Page, username: str) -> None:
    page.goto("/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", "x")
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)


def assert_styled_and_live(page: Page) -> None:
    assert page.evaluate("typeof window.htmx") == "object", "htmx must load"
    background = page.evaluate("getComputedStyle(document.querySelector('header.top')).backgroundColor")
    assert background == HEADER_BACKGROUND, "sluice.css must apply"


def test_from_a_checkout_gunicorn_serves_css_and_htmx_and_a_promote_needs_no_reload(
    start_production_server, open_page, paused_rollout, production_passwords, celery_worker
):
    page = open_page(start_production_server("gunicorn"))
    log_in(page, "otto")
    assert_styled_and_live(page)

    page.goto(f"/rollouts/{paused_rollout.pk}/")
    assert_styled_and_live(page)
    page.evaluate("window.sluiceMarker = 'still here'")  # a reload would drop it
    page.fill("#promote-comment", "approved under production settings")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#promote")

    page.wait_for_selector('#rollout-status[data-phase="Completed"]', timeout=60_000)
    assert page.evaluate("window.sluiceMarker") == "still here", "the page must update without a reload"
    # Shown once, in the page's message area, and the live block's polling leaves it there.
    assert page.locator("#messages li").all_inner_texts() == ["Approval recorded."]
    assert page.locator("body").inner_text().count("Approval recorded.") == 1
    screenshot(page, "production-rollout-completed")
    approval = Approval.objects.get(rollout=paused_rollout)
    assert (approval.username, approval.comment) == ("otto", "approved under production settings")

    # Sync now posts through htmx too: its message replaces the message area, the page stays.
    name = paused_rollout.source.name
    page.goto(f"/sources/{name}/")
    page.evaluate("window.sluiceMarker = 'still here'")
    page.once("dialog", lambda dialog: dialog.accept())
    clicked_at = timezone.now()
    page.click("#sync-now")
    page.wait_for_selector("#messages li")
    assert page.locator("#messages li").all_inner_texts() == [f"Sync of {name} queued."]
    assert page.evaluate("window.sluiceMarker") == "still here", "Sync now must not reload the page"
    poll(
        lambda: (Source.objects.get(name=name).last_synced_at or clicked_at) > clicked_at,
        timeout=60,
        what="the queued sync to run",
    )


def test_without_htmx_a_promote_reloads_the_page_and_says_approval_recorded_once(
    start_production_server, open_page, paused_rollout, production_passwords, celery_worker
):
    page = open_page(start_production_server("gunicorn"))
    page.route("**/htmx*.js", lambda route: route.abort())
    log_in(page, "otto")
    page.goto(f"/rollouts/{paused_rollout.pk}/")
    assert page.evaluate("typeof window.htmx") == "undefined"

    page.fill("#promote-comment", "approved without htmx")
    with page.expect_navigation():
        page.click("#promote")  # a plain form post: no confirmation without htmx, then a redirect

    # The page that comes back after the redirect says it once (it used to say it twice: the
    # page's message list and the live block both showed it).
    assert page.locator("body").inner_text().count("Approval recorded.") == 1
    assert page.locator("#messages li").all_inner_texts() == ["Approval recorded."]
    assert Approval.objects.filter(rollout=paused_rollout, comment="approved without htmx").count() == 1
    poll(
        lambda: Rollout.objects.get(pk=paused_rollout.pk).phase == "Completed",
        timeout=60,
        what="the promoted rollout to complete",
    )


def test_from_a_checkout_runserver_serves_css_and_htmx_with_debug_off(
    start_production_server, open_page, production_passwords
):
    page = open_page(start_production_server("runserver"))
    page.goto("/login/")
    assert_styled_and_live(page)
    log_in(page, "vera")
    assert_styled_and_live(page)
