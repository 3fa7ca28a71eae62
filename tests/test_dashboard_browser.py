"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Install the browser with `.ci/install-browser`. Without it these tests skip locally and fail
under CI=true (like the PostgreSQL tests), so a CI run cannot pass without having run them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from dashboard_support import (
    ADMIN_TOKEN,
    CHROMIUM,
    CHROMIUM_ARGS,
    DELETED,
    EDITED,
    HOSTILE_DESCRIPTION,
    DashboardWorld,
    dashboard_world,
    serve,
)

from reconciler.http.dashboard import SESSION_COOKIE
from reconciler.store.base import AuditQuery

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser


def _require_browser() -> None:
    reason = None
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        reason = f"Chromium is not installed at {CHROMIUM}: run .ci/install-browser (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright package is missing: pip install -e '.[dev]'"
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests must run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardWorld]:
    _require_browser()
    with dashboard_world(Path(tmp_path_factory.mktemp("dashboard-browser")) / "demo") as w:
        yield w


@pytest.fixture(scope="module")
def base_url(world: DashboardWorld) -> Iterator[str]:
    with serve(world.app()) as url:
        yield url


@pytest.fixture(scope="module")
def browser(world: DashboardWorld) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    executable = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, base_url: str) -> Iterator[Page]:
    context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(10_000)
    dialogs: list[str] = []
    tab.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        yield tab
    finally:
        context.close()
    assert dialogs == [], f"a script ran: {dialogs}"  # hostile text must never execute


def sign_in(page: Page, path: str = "/dashboard/") -> None:
    page.goto(path)
    page.fill("#token", ADMIN_TOKEN)
    page.click("form button[type=submit]")
    page.wait_for_load_state()


def test_login_form_guards_pages_and_sets_a_strict_httponly_cookie(page: Page) -> None:
    page.goto("/dashboard/campaigns/flash-sale")
    assert "/dashboard/login" in page.url and page.locator("#token").is_visible()
    page.fill("#token", "a wrong guess")
    page.click("form button[type=submit]")
    assert page.locator("p.error").inner_text() == "That is not the admin token."

    page.fill("#token", ADMIN_TOKEN)
    page.click("form button[type=submit]")
    page.wait_for_url("**/dashboard/campaigns/flash-sale")
    assert page.locator("h1").inner_text().startswith("flash-sale")
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies[SESSION_COOKIE]
    assert session["httpOnly"] is True and session["sameSite"] == "Strict"
    assert ADMIN_TOKEN not in session["value"] and ADMIN_TOKEN not in page.url
    assert page.evaluate("document.cookie") == ""  # invisible to scripts

    page.click("form.logout button")
    page.wait_for_url("**/dashboard/login")
    page.goto("/dashboard/")
    assert "/dashboard/login" in page.url


def test_campaign_list_loads_with_status_and_links_to_commit_and_campaign(page: Page, world: DashboardWorld) -> None:
    sign_in(page)
    rows = page.locator("tr.campaign-row")
    applied = world.store.applied_state().of_kind("Campaign")
    assert rows.count() == len(applied) + 1  # plus the deleted one
    deleted = page.locator(f'tr[data-campaign="{DELETED}"] .status')
    assert deleted.inner_text() == "deleted"
    edited = page.locator(f'tr[data-campaign="{EDITED}"]')
    assert edited.locator(".description").inner_text() == HOSTILE_DESCRIPTION  # shown as text
    assert edited.locator(".next-run").inner_text().strip().startswith("2026-12-11 18:00")

    edited.locator("a.commit").click()
    page.wait_for_url(f"**/dashboard/audit?commit={world.second_commit}")
    page.locator(".commit-summary").get_by_role("link", name=DELETED).click()
    page.wait_for_url(f"**/dashboard/campaigns/{DELETED}")
    assert page.locator("h1 .status").inner_text() == "deleted"


def test_campaign_charts_render_one_point_per_bucket_and_one_bar_per_provider_metric(
        page: Page, world: DashboardWorld) -> None:
    sign_in(page, "/dashboard/campaigns/flash-sale")
    timeline = page.locator("svg.timeline-chart")
    box = timeline.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 150  # laid out and visible

    rows = world.store.list_outbox(campaign="flash-sale", statuses=["sent", "failed"], limit=100_000)
    hours = {(r.sent_at or r.updated_at).replace(minute=0, second=0, microsecond=0) for r in rows}
    buckets = int((max(hours) - min(hours)).total_seconds() // 3600) + 1
    for series in ("sent", "delivered", "failed", "converted"):
        assert timeline.locator(f'g[data-series="{series}"] circle.point').count() == buckets
        assert timeline.locator(f'g[data-series="{series}"] polyline').count() == 1
    sent_values = timeline.locator('g[data-series="sent"] circle.point').evaluate_all(
        "points => points.map(p => Number(p.dataset.value))")
    assert sum(sent_values) == sum(1 for r in rows if r.status == "sent")
    # the highest sent point is drawn highest (smallest y on screen)
    ys = timeline.locator('g[data-series="sent"] circle.point').evaluate_all(
        "points => points.map(p => p.getBoundingClientRect().top)")
    assert ys.index(min(ys)) == sent_values.index(max(sent_values))

    providers = {r.provider for r in rows}
    bars = page.locator("svg.provider-chart rect.bar")
    assert bars.count() == 4 * len(providers)
    heights = {(b["group"], b["metric"]): (b["value"], b["height"]) for b in bars.evaluate_all(
        "bars => bars.map(b => ({group: b.dataset.group, metric: b.dataset.metric,"
        " value: Number(b.dataset.value), height: b.getBoundingClientRect().height}))")}
    assert {g for g, _ in heights} == providers
    tallest = max(heights.values(), key=lambda vh: vh[0])
    assert tallest[1] == max(h for _, h in heights.values()) and tallest[1] > 20


def test_audit_filter_by_commit_shows_only_that_commits_rows(page: Page, world: DashboardWorld) -> None:
    sign_in(page, "/dashboard/audit")
    all_commits = set(page.locator("tr.audit-row").evaluate_all("rows => rows.map(r => r.dataset.commit)"))
    assert {world.first_commit, world.second_commit} <= all_commits

    page.fill("input[name=commit]", world.second_commit[:8])
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**/dashboard/audit?commit=*")
    shown = page.locator("tr.audit-row").evaluate_all("rows => rows.map(r => r.dataset.commit)")
    assert shown and set(shown) == {world.second_commit}
    assert len(shown) == len(world.store.query_audit(AuditQuery(commit=world.second_commit)))

    page.select_option("select[name=action]", "update")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**action=update*")
    rows = page.locator("tr.audit-row")
    assert rows.count() == 1
    assert rows.first.get_attribute("data-campaign") == EDITED
    rows.first.locator("a.campaign-link").click()
    page.wait_for_url(f"**/dashboard/campaigns/{EDITED}")
    assert page.locator("p.description").inner_text() == HOSTILE_DESCRIPTION
    assert page.locator("script").count() == 0 and page.locator("img").count() == 0
