"""The Flags page in real Chromium: used from the keyboard alone, and readable at 1280 and 390 px wide."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page

from tests.integration.test_browser import browser, log_in, page, screenshot  # noqa: F401 - fixtures
from tests.integration.test_flags_page import two_sources  # noqa: F401 - a fixture

pytestmark = pytest.mark.django_db(transaction=True)


def tab_to(on: Page, selector: str, *, limit: int = 40) -> None:
    """Presses Tab until ``selector`` has the focus, as a keyboard user would."""
    for _ in range(limit):
        on.keyboard.press("Tab")
        if on.evaluate("(selector) => document.activeElement.matches(selector)", selector):
            return
    raise AssertionError(f"{selector} never got the focus in {limit} tabs")


def test_the_flags_page_filters_from_the_keyboard_and_reads_well_on_a_phone(
    page: Page,  # noqa: F811 - the fixture
    two_sources,  # noqa: F811 - the fixture
    people,
):
    log_in(page, "vera")
    page.goto("/flags/")
    assert page.locator("tr[data-flag]").count() == 6
    for label in ("Source", "Cluster", "Staleness", "Flag key"):
        assert page.get_by_label(label, exact=True).count() == 1, f"the {label} filter has a label"
    screenshot(page, "flags")

    # Staleness "stale only" and Enter on the Filter button, without the mouse.
    tab_to(page, "#flag-stale")
    page.keyboard.press("ArrowDown")
    assert page.locator("#flag-stale").input_value() == "stale"
    tab_to(page, "#flag-filters button[type=submit]")
    page.keyboard.press("Enter")
    page.wait_for_url("**/flags/?*stale=stale*")
    stale = sorted(page.locator("tr[data-flag]").evaluate_all("rows => rows.map(r => r.dataset.flag)"))
    assert stale == ["=1+1", "banner", "kill-switch"]
    assert page.locator('tr[data-stale="no"]').count() == 0

    # Every link in a row is reachable by Tab, and the table's region scrolls from the keyboard.
    tab_to(page, f'#flags a[href="/sources/{two_sources["shop"].name}/"]')
    tab_to(page, ".table-scroll")

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/flags/")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide on a 390 px phone: only the table may scroll"
    assert page.locator("#bucketing-caveat").is_visible()
    screenshot(page, "flags-phone")
