"""Source administration in real Chromium: an admin adds a source through the form (by its labels, with the
keyboard), sees a problem next to its field, then the first sync; suspends it and deletes it, keeping its
objects, and follows the removal without a reload."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from django.contrib.auth.models import Group, User
from playwright.sync_api import Browser, Page, sync_playwright

from gitops.models import Source, SourceAudit, SourceRemoval
from tests.gitrepo import configmap, policy
from tests.integration.test_browser import CHROMIUM, CHROMIUM_ARGS, log_in, screenshot

pytestmark = pytest.mark.django_db(transaction=True)
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # as in test_browser: the ORM stays synchronous
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


@pytest.fixture
def admin(people) -> User:
    user = User.objects.create_user("ada-admin", password="x")
    user.groups.add(Group.objects.get(name="admin"))
    return user


def both_widths(page: Page, name: str) -> None:
    """A screenshot at 1280 px and one at 390 px (a phone): the page must read well at both."""
    screenshot(page, name)
    page.set_viewport_size(PHONE)
    screenshot(page, f"{name}-phone")
    page.set_viewport_size({"width": 1280, "height": 900})


def test_an_admin_adds_a_source_through_the_form_and_sees_its_first_sync(
    page: Page, admin, repo, make_namespaces, celery_worker, cluster
):
    (namespace,) = make_namespaces("shop")
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"v": "1"})})
    repo.commit("first config")
    log_in(page, "ada-admin")

    page.click("#add-source")
    page.wait_for_url("**/sources/new")
    both_widths(page, "source-new")
    # Every field is found by its label, and filled from the keyboard.
    page.get_by_label("Name", exact=True).fill("shop-config")
    page.get_by_label("Repository URL", exact=True).fill("https://deploy:hunter2@git.example.com/shop.git")
    page.get_by_label("Allowed namespaces", exact=True).fill(namespace)
    page.get_by_label("Poll interval", exact=True).fill("5m")
    page.get_by_label("Repository URL", exact=True).press("Enter")  # Enter in a text field submits the form

    url_errors = page.locator("#id_url_errors")
    url_errors.wait_for()
    assert "must not contain credentials" in url_errors.inner_text()
    assert "hunter2" not in url_errors.inner_text()
    assert page.get_by_label("Name", exact=True).input_value() == "shop-config", "what was typed is kept"
    both_widths(page, "source-new-error")
    assert not Source.objects.exists()

    page.get_by_label("Repository URL", exact=True).fill(repo.url)
    page.focus("#save-source")
    page.keyboard.press("Enter")

    page.wait_for_url("**/sources/shop-config/")
    # The live status block follows the first sync without a reload.
    page.evaluate("window.sluiceMarker = 'still here'")
    page.wait_for_selector('#source-status[data-state="Synced"]', timeout=60_000)
    assert page.evaluate("window.sluiceMarker") == "still here"
    assert page.locator("#revision-outcome").inner_text() == "applied"
    assert cluster.get_configmap(namespace, "app")["data"] == {"v": "1"}
    assert "create" in page.locator("#audit").inner_text()
    both_widths(page, "source-created")
    audit = SourceAudit.objects.get(source__name="shop-config")
    assert (audit.action, audit.actor, audit.via) == ("create", "ada-admin", "dashboard")


def test_an_admin_suspends_then_deletes_a_source_keeping_its_objects(
    page: Page, admin, repo, make_namespaces, make_source, sync, cluster
):
    (namespace,) = make_namespaces("shop")
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"v": "1"})})
    repo.commit()
    source = make_source(name="shop-config")
    sync(source)
    log_in(page, "ada-admin")
    page.goto(f"/sources/{source.name}/")

    page.click("#suspend-source")
    page.wait_for_selector("#suspended-banner")
    assert page.locator("#suspended-badge").is_visible()
    assert page.locator("#resume-source").is_visible()
    page.goto("/")
    assert "Suspended" in page.locator(f'tr[data-source="{source.name}"]').inner_text()

    page.goto(f"/sources/{source.name}/")
    page.click("#delete-source-link")
    page.wait_for_url(f"**/sources/{source.name}/delete")
    assert page.locator("#managed-count").inner_text() == "1"
    page.get_by_label("Keep them", exact=False).check()
    page.get_by_label("Type the source's name to confirm").fill(source.name)
    both_widths(page, "source-delete")
    page.click("#delete-source")

    page.wait_for_url("**/removals/*/")
    page.evaluate("window.sluiceMarker = 'still here'")
    page.wait_for_selector('#removal-live[data-status="done"]', timeout=90_000)
    assert page.evaluate("window.sluiceMarker") == "still here", "the page must update without a reload"
    assert page.locator("#removal-counts").inner_text() == "1 of 1 object kept"
    assert "release" in page.locator("#removal-objects").inner_text()
    both_widths(page, "source-removal")
    live = cluster.get_configmap(namespace, "app")
    assert live["data"] == {"v": "1"} and "sluice.dev/source" not in live["metadata"].get("labels", {})
    assert SourceRemoval.objects.get().status == "done"
    assert not Source.objects.filter(name=source.name).exists()
