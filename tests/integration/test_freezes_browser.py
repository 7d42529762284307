"""Freezing from the dashboard in real Chromium: the banner on every page, unfreezing, a phone width."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page

from gitops.models import Freeze, SyncWindow
from tests.integration.test_browser import browser, log_in, page, screenshot  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin(people):
    from django.contrib.auth.models import Group, User

    created = User.objects.create_user("ines", email="ines@example.com", password="x")
    created.groups.add(Group.objects.get(name="admin"))
    return created


def test_an_admin_freezes_from_the_dashboard_with_the_keyboard_and_every_page_shows_the_banner(
    page: Page,  # noqa: F811 - the fixture imported above
    admin,
    make_source,
):
    source = make_source(name="shop-config")
    log_in(page, "ines")
    assert page.locator("#freeze-banner").count() == 0

    page.goto("/windows/")
    page.select_option("#freeze-source", "shop-config")
    page.focus("#freeze-until")
    page.keyboard.type("8h")
    page.keyboard.press("Tab")
    page.keyboard.type("payment provider incident")
    page.focus("#freeze-submit")
    page.keyboard.press("Enter")
    page.wait_for_selector("#freeze-banner")
    banner = page.locator("#freeze-banner").inner_text()
    assert "shop-config until" in banner and "payment provider incident" in banner
    freeze = Freeze.objects.get()
    assert (freeze.source, freeze.created_by) == (source, "ines")

    page.fill("#window-schedule", "0 22 * * *")
    page.fill("#window-duration", "1h")
    page.select_option("#window-kind", "allow")
    page.click("#window-submit")
    page.wait_for_selector("#windows tr[data-window]")
    assert SyncWindow.objects.get().schedule == "0 22 * * *"
    screenshot(page, "freezes")

    for path in ("/", "/changes/", f"/sources/{source.name}/"):
        page.goto(path)
        assert "payment provider incident" in page.locator("#freeze-banner").inner_text(), path
    assert "Changes held" in page.locator("#held-reason").inner_text()
    screenshot(page, "source-frozen")

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/windows/")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width}px wide on a phone"
    screenshot(page, "freezes-phone")
    page.goto(f"/sources/{source.name}/")
    screenshot(page, "source-frozen-phone")

    page.set_viewport_size({"width": 1280, "height": 900})
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    page.click("#unfreeze")
    page.wait_for_selector("#freeze-banner", state="detached")
    # The name is written into a JavaScript string in an attribute: escaped for JavaScript, read as is.
    assert asked == [f"Lift the freezes of {source.name}?"]
    freeze.refresh_from_db()
    assert freeze.lifted_by == "ines"
