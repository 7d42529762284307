"""The dashboard in real Chromium (Debian's, driven by Playwright) against a live server, worker and stack."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from gitops.models import Approval, Rollout
from tests.workers import ARTIFACTS

pytestmark = pytest.mark.django_db(transaction=True)
SCREENSHOTS = ARTIFACTS / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without these, Chromium reaches for Google's services, which this network refuses.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Playwright's sync API runs an event loop in this thread; Django's ORM calls
    # made by the test itself stay synchronous.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, live_server) -> Iterator[Page]:
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    yield opened
    context.close()


def log_in(page: Page, username: str) -> None:
    page.goto("/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", "x")
    page.click("button[type=submit]")
    page.wait_for_url("**/")


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_an_approver_promotes_a_paused_rollout_and_sees_it_finish_without_a_reload(
    page: Page, paused_rollout, people, celery_worker, cluster
):
    log_in(page, "otto")
    assert page.locator(f'tr[data-source="{paused_rollout.source.name}"] .state').inner_text() == "Paused"
    screenshot(page, "overview")

    page.goto(f"/sources/{paused_rollout.source.name}/")
    assert page.locator("#plan").inner_text().count("held") >= 1
    screenshot(page, "source")

    page.goto(f"/rollouts/{paused_rollout.pk}/")
    assert page.locator("#rollout-status").get_attribute("data-phase") == "Paused"
    assert page.locator("#waiting").inner_text() == "approval"
    screenshot(page, "rollout-paused")

    # A reload would drop this marker.
    page.evaluate("window.sluiceMarker = 'still here'")
    page.fill("#promote-comment", "approved in the browser")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#promote")

    page.wait_for_selector('#rollout-status[data-phase="Completed"]', timeout=60_000)
    assert page.evaluate("window.sluiceMarker") == "still here", "the page must update without a reload"
    assert page.locator("#weight").inner_text() == "100%"
    assert "approved in the browser" in page.locator("#approvals").inner_text()
    assert page.locator("#promote").count() == 0, "a finished rollout offers no promote"
    assert page.locator("#abort").count() == 0
    screenshot(page, "rollout-completed")

    approval = Approval.objects.get(rollout=paused_rollout)
    assert (approval.username, approval.comment) == ("otto", "approved in the browser")
    assert Rollout.objects.get(pk=paused_rollout.pk).phase == "Completed"

    page.goto("/changes/")
    assert page.locator("#changes tbody tr").count() == 4
    screenshot(page, "change-log")


def test_a_viewer_sees_no_buttons_and_dismissing_the_confirmation_changes_nothing(
    page: Page, paused_rollout, people, celery_worker
):
    log_in(page, "vera")
    page.goto(f"/rollouts/{paused_rollout.pk}/")
    assert page.locator("#promote").count() == 0
    assert page.locator("#abort").count() == 0
    page.context.clear_cookies()

    log_in(page, "otto")
    page.goto(f"/rollouts/{paused_rollout.pk}/")
    posts: list[str] = []
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("#abort")
    # The next live refresh proves time passed after the dismissed dialog.
    with page.expect_response(lambda response: f"/rollouts/{paused_rollout.pk}/" in response.url):
        pass
    assert posts == []
    assert Rollout.objects.get(pk=paused_rollout.pk).abort_requested_by == ""


@pytest.mark.exclusive  # cordons the nodes
def test_the_rollout_page_follows_a_wave_of_consumers_from_updating_to_available_without_a_reload(
    page: Page, repo, make_namespaces, make_source, sync, apps_api, core_api, people, celery_worker
):
    from gitops.tasks import sync_source
    from tests.gitrepo import configmap, policy
    from tests.rollouts import wait_for
    from tests.workloads import consumer_deployment, set_unschedulable, wait_for_rollout

    targets = make_namespaces("a", "b")
    rollout_policy = {"consumers": "restart", "healthTimeout": "2m"}
    repo.write_all(
        {
            "sluice.yaml": policy(targets, rollout=rollout_policy),
            "configmaps/app.yaml": configmap("app", {"V": "1"}),
        }
    )
    repo.commit("v1")
    source = make_source()
    sync(source)
    apps_api.create_namespaced_deployment(targets[0], consumer_deployment("web", "app"))
    wait_for_rollout(apps_api, targets[0], "web")
    repo.write_all(
        {
            "sluice.yaml": policy(
                targets, rollout={**rollout_policy, "steps": [{"setWeight": 50}, {"pause": {}}]}
            ),
            "configmaps/app.yaml": configmap("app", {"V": "2"}),
        }
    )
    repo.commit("v2")
    set_unschedulable(core_api, True)  # the restarted pods wait for a node
    try:
        sync_source.delay(source.pk)
        waiting = wait_for(source, phase="Paused", waiting_for="consumers", timeout=60)
        log_in(page, "vera")
        page.goto(f"/rollouts/{waiting.pk}/")
        web = page.locator(f'section[data-namespace="{targets[0]}"] li.consumer[data-name="web"]')
        assert web.get_attribute("data-health") == "progressing"
        assert page.locator("#waiting").inner_text() == "consumers"
        assert page.locator("#health-deadline").inner_text() == waiting.pause_until.strftime("%H:%M:%S")
        page.evaluate("window.sluiceMarker = 'still here'")
        screenshot(page, "rollout-waiting-for-consumers")
    finally:
        set_unschedulable(core_api, False)

    page.wait_for_selector(
        f'section[data-namespace="{targets[0]}"] li.consumer[data-name="web"][data-health="healthy"]',
        timeout=60_000,
    )
    assert page.evaluate("window.sluiceMarker") == "still here", "the page must update without a reload"
    assert web.locator(".consumer-state").inner_text() == "web 2/2 available"
    assert "restarted" in web.inner_text()
    page.wait_for_function("document.querySelector('#waiting')?.innerText === 'approval'", timeout=30_000)
    assert page.locator("#health-deadline").count() == 0
    screenshot(page, "rollout-consumers-healthy")
