"""Every dashboard page in real Chromium at 1280 px and at 390 px (a phone), as PNGs for people to look at.

``make screenshots`` runs this. Each page is written to ``test-artifacts/screenshots/<page>-<width>.png``,
and each must read at both widths without help:

- nothing makes the page itself scroll sideways (a wide table scrolls inside its own box);
- every form field and button has a name a screen reader can say (a label, text or aria-label);
- every link, button and field can be reached with the keyboard (no negative or positive tabindex).

To add a page, append a ``Shot`` to ``PAGES``: its name (the PNG's), its address built from the
``Scene`` (extend ``scene`` when the page needs data of its own), and a selector that is on the page
once it has what it should show.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from gitops.models import Rollout, Source
from tests.gitrepo import configmap, policy
from tests.integration.test_browser import (
    browser,  # noqa: F401 - the module-scoped Chromium fixture
    log_in,
)
from tests.workers import ARTIFACTS, poll

pytestmark = pytest.mark.django_db(transaction=True)
SCREENSHOTS = ARTIFACTS / "screenshots"
WIDTHS = (1280, 390)
HEIGHTS = {1280: 900, 390: 844}


@dataclass
class Scene:
    """What the pages show: a source paused for approval, a rejected one, and a previewed pull request."""

    source: Source
    rollout: Rollout
    rejected: Source
    preview_url: str


@dataclass(frozen=True)
class Shot:
    name: str
    url: Callable[[Scene], str]
    ready: str  # a selector that is on the page once it shows what it should
    user: str | None = "otto"  # None: not logged in


PAGES: list[Shot] = [
    Shot("login", lambda scene: "/login/", "form button[type=submit]", user=None),
    Shot("overview", lambda scene: "/", "#sources"),
    Shot("source", lambda scene: f"/sources/{scene.source.name}/", "#plan"),
    Shot("source-rejected", lambda scene: f"/sources/{scene.rejected.name}/", "#revisions .error"),
    Shot("rollout", lambda scene: f"/rollouts/{scene.rollout.pk}/", "#rollout-status"),
    Shot("changes", lambda scene: "/changes/", "#changes"),
    Shot("preview", lambda scene: scene.preview_url, '#preview-result[data-outcome="planned"]'),
    Shot("preview-form", lambda scene: f"/sources/{scene.source.name}/preview/", "#preview-form"),
    Shot("clusters", lambda scene: "/clusters/", "#clusters"),
    Shot("flags", lambda scene: "/flags/", "#flag-filters"),
    Shot("freezes", lambda scene: "/windows/", "#freeze-form", user="ines"),
    Shot("source-admin", lambda scene: f"/sources/{scene.source.name}/", "#plan", user="ines"),
    Shot("source-new", lambda scene: "/sources/new", "#source-form", user="ines"),
    Shot("source-edit", lambda scene: f"/sources/{scene.source.name}/edit", "#source-form", user="ines"),
    Shot("source-delete", lambda scene: f"/sources/{scene.source.name}/delete", "form", user="ines"),
]

# Runs in the page: what keeps it from reading well at this width, described for a person.
PROBLEMS_SCRIPT = """
() => {
  const problems = [];
  const edge = window.innerWidth + 1;
  const describe = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "")
    + (typeof el.className === "string" && el.className ? "." + el.className : "");
  if (document.documentElement.scrollWidth > edge) {
    const wide = [...document.querySelectorAll("body *")]
      .filter((el) => el.getBoundingClientRect().right > edge)
      .filter((el) => !el.parentElement || el.parentElement.getBoundingClientRect().right <= edge)
      .slice(0, 5)
      .map(describe);
    const width = document.documentElement.scrollWidth;
    problems.push(`the page scrolls sideways (${width}px wide): ${wide.join(", ")}`);
  }
  const named = (el) => (el.labels && el.labels.length > 0) || el.getAttribute("aria-label")
    || el.getAttribute("aria-labelledby") || el.getAttribute("title");
  for (const el of document.querySelectorAll("input, select, textarea")) {
    if (el.type === "hidden") continue;
    const isButton = el.type === "submit" || el.type === "button";
    if (isButton ? !(el.value || named(el)) : !named(el)) {
      problems.push(`a ${el.tagName.toLowerCase()} named "${el.name}" has no label`);
    }
  }
  for (const el of document.querySelectorAll("button")) {
    // textContent: a button inside a closed <details> is not rendered, so it has no innerText yet.
    const text = el.textContent.trim() || el.getAttribute("aria-label");
    if (!text) problems.push(`${describe(el)} has no text`);
  }
  for (const el of document.querySelectorAll("a[href], button, input, select, textarea, [tabindex]")) {
    const index = el.getAttribute("tabindex");
    if (index !== null && Number(index) !== 0) problems.push(`${describe(el)} has tabindex ${index}`);
  }
  return problems;
}
"""


@pytest.fixture
def scene(
    paused_rollout, repo, make_namespaces, make_source, sync, celery_worker, people, live_server
) -> Scene:
    """A paused rollout (conftest's), a source whose newest revision is rejected, and a finished preview."""
    from django.test import Client

    source = paused_rollout.source
    repo.git("checkout", "--quiet", "-b", "pull-7")
    repo.write_all({"configmaps/app.yaml": configmap("app", {"V": "3", "GREETING": "hello\nthere\n"})})
    repo.commit("PR 7: v3", push=False)
    repo.git("push", "--quiet", "origin", "HEAD:refs/pull/7/head")
    repo.git("checkout", "--quiet", "main")

    (other,) = make_namespaces("other")
    broken = make_source(name="broken-config", url=source.url, branch="broken")
    repo.git("checkout", "--quiet", "-b", "broken")
    repo.write_all(
        {
            "sluice.yaml": policy([other], selfHeel=True),
            "configmaps/app.yaml": configmap("app", {"PORT": 8080}),  # type: ignore[dict-item]
        }
    )
    repo.commit("a typo and an unquoted port", push=False)
    repo.git("push", "--quiet", "origin", "HEAD:refs/heads/broken")
    repo.git("checkout", "--quiet", "main")
    assert sync(broken)["outcome"] == "rejected"

    from django.contrib.auth.models import Group, User

    admin = User.objects.create_user("ines", email="ines@example.com", password="x")
    admin.groups.add(Group.objects.get(name="admin"))  # the administration pages
    client = Client()
    client.force_login(people["approver"])
    asked = client.post(f"/sources/{source.name}/preview/", {"revision": "refs/pull/7/head"})
    preview_url = asked["Location"]

    def answered() -> bool:
        page = client.get(preview_url, headers={"HX-Request": "true"}).content.decode()
        return 'data-outcome="planned"' in page

    poll(answered, timeout=60, interval=0.2, what="the preview's answer")
    return Scene(source, paused_rollout, Source.objects.get(pk=broken.pk), preview_url)


@pytest.fixture
def contexts(browser: Browser, live_server) -> Iterator[Callable[[int, str | None], Page]]:  # noqa: F811
    opened: dict[tuple[int, str | None], BrowserContext] = {}

    def page_at(width: int, user: str | None) -> Page:
        if (width, user) not in opened:
            context = browser.new_context(
                base_url=live_server.url, viewport={"width": width, "height": HEIGHTS[width]}
            )
            opened[(width, user)] = context
            if user is not None:
                log_in(context.new_page(), user)
        context = opened[(width, user)]
        return context.pages[0] if context.pages else context.new_page()

    yield page_at
    for context in opened.values():
        context.close()


def test_every_page_reads_well_at_1280_and_390_pixels(scene: Scene, contexts: Any):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    problems: dict[str, list[str]] = {}
    for shot in PAGES:
        for width in WIDTHS:
            page = contexts(width, shot.user)
            page.goto(shot.url(scene))
            page.wait_for_selector(shot.ready)
            page.screenshot(path=str(SCREENSHOTS / f"{shot.name}-{width}.png"), full_page=True)
            found = page.evaluate(PROBLEMS_SCRIPT)
            if found:
                problems[f"{shot.name} at {width}px"] = found
    for shot in PAGES:
        for width in WIDTHS:
            assert (SCREENSHOTS / f"{shot.name}-{width}.png").stat().st_size > 0
    assert not problems, "\n".join(
        f"{where}: {problem}" for where, found in problems.items() for problem in found
    )
