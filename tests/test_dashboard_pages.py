"""Dashboard over HTTP (in-process): access control, sessions, pages, charts, filters, escaping.

The data is the demo story on SQLite + DuckDB, then a second commit that edits one campaign (with a
hostile description and commit message) and deletes another, and an operator pause.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from dashboard_support import (
    ADMIN_TOKEN,
    DELETED,
    EDITED,
    HOSTILE_DESCRIPTION,
    HOSTILE_SUBJECT,
    PAUSED,
    DashboardWorld,
    dashboard_world,
    elements,
    serve,
)
from markupsafe import escape

from reconciler.apply import desired_from_applied
from reconciler.http.dashboard import SESSION_COOKIE, SessionKeys, format_time
from reconciler.http.dashboard_views import DesiredCache, campaign_detail, campaign_rows
from reconciler.report import build_report
from reconciler.scheduler import next_fire_times
from reconciler.store.base import AuditQuery

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardWorld]:
    with dashboard_world(Path(tmp_path_factory.mktemp("dashboard")) / "demo") as w:
        yield w


@pytest.fixture(scope="module")
def base_url(world: DashboardWorld) -> Iterator[str]:
    with serve(world.app()) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, follow_redirects=False) as c:
        yield c


def _login(client: httpx.Client, token: str = ADMIN_TOKEN, next_path: str = "/dashboard/audit") -> httpx.Response:
    return client.post("/dashboard/login", data={"token": token, "next": next_path})


# ---------------------------------------------------------------- access


def test_without_an_admin_token_the_dashboard_is_disabled(world: DashboardWorld) -> None:
    with serve(world.app(token=None)) as url, httpx.Client(base_url=url) as c:
        for path in ("/dashboard/", "/dashboard/audit", "/dashboard/login"):
            response = c.get(path, headers=BEARER)
            assert response.status_code == 503 and "HERALD_ADMIN_TOKEN" in response.text
        assert c.post("/dashboard/login", data={"token": ""}).status_code == 503


def test_browsers_are_sent_to_the_login_form_and_wrong_bearer_tokens_get_401(client: httpx.Client) -> None:
    response = client.get("/dashboard/audit?commit=abcd")
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/login?next=%2Fdashboard%2Faudit%3Fcommit%3Dabcd"
    wrong = client.get("/dashboard/", headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert client.get("/dashboard/", headers=BEARER).status_code == 200


def test_login_sets_a_strict_httponly_session_cookie_without_the_token(client: httpx.Client) -> None:
    failed = _login(client, token="guess")
    assert failed.status_code == 401 and "set-cookie" not in failed.headers
    assert "not the admin token" in failed.text

    response = _login(client)
    assert response.status_code == 303 and response.headers["location"] == "/dashboard/audit"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "samesite=strict" in cookie.lower() and "path=/dashboard/" in cookie.lower()
    assert ADMIN_TOKEN not in cookie and ADMIN_TOKEN not in response.headers["location"]

    page = client.get("/dashboard/audit")  # the client's cookie jar now holds the session
    assert page.status_code == 200 and "Audit log" in page.text
    assert ADMIN_TOKEN not in page.text


def test_sessions_expire_cannot_be_forged_and_end_when_the_token_rotates(world: DashboardWorld) -> None:
    keys = SessionKeys(ADMIN_TOKEN, world.clock)
    value = keys.issue()
    assert keys.valid(value)
    expires, nonce, mac = value.split(".")
    assert not keys.valid(f"{int(expires) + 3600}.{nonce}.{mac}")  # extending the expiry breaks the MAC
    assert not keys.valid(f"{expires}.{nonce}.{'0' * len(mac)}")
    assert not keys.valid("") and not keys.valid("garbage")
    assert not SessionKeys("rotated-admin-token", world.clock).valid(value)
    with serve(world.app()) as url, httpx.Client(base_url=url) as c:
        c.cookies.set(SESSION_COOKIE, value, path="/dashboard/")
        assert c.get("/dashboard/").status_code == 200
        world.clock.advance(keys.ttl + timedelta(seconds=1))
        try:
            assert c.get("/dashboard/").status_code == 303
        finally:
            world.clock.advance(-(keys.ttl + timedelta(seconds=1)))


def test_login_redirects_only_inside_the_dashboard(client: httpx.Client) -> None:
    for target in ("https://evil.example/", "//evil.example/dashboard/", "/elsewhere", "/dashboard/\\evil"):
        assert _login(client, next_path=target).headers["location"] == "/dashboard/"


def test_logout_clears_the_cookie(client: httpx.Client) -> None:
    _login(client)
    response = client.post("/dashboard/logout")
    assert response.status_code == 303 and response.headers["location"] == "/dashboard/login"
    assert f'{SESSION_COOKIE}=""' in response.headers["set-cookie"] or "max-age=0" in response.headers["set-cookie"].lower()


def test_pages_carry_a_no_script_content_security_policy(client: httpx.Client) -> None:
    for path in ("/dashboard/", "/dashboard/campaigns/flash-sale", "/dashboard/audit", "/dashboard/login"):
        response = client.get(path, headers=BEARER)
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src" not in policy
        assert response.headers["x-frame-options"] == "DENY"
        assert not elements(response.text, "script")


# ---------------------------------------------------------------- campaigns


def _rows(page: str) -> dict[str, str]:
    return {e.attrs["data-campaign"]: e.attrs["data-status"] for e in elements(page, "tr", "campaign-row")}


def test_campaign_list_shows_status_type_commit_and_next_run(client: httpx.Client, world: DashboardWorld) -> None:
    page = client.get("/dashboard/", headers=BEARER).text
    applied = world.store.applied_state()
    statuses = _rows(page)
    assert set(statuses) == {o.name for o in applied.of_kind("Campaign")} | {DELETED}
    assert statuses[PAUSED] == "paused" and statuses[DELETED] == "deleted"
    assert statuses["flash-sale"] == "completed"  # a one-time run that has been sent
    assert statuses[EDITED] == statuses["welcome"] == "active"

    links = {e.attrs["href"] for e in elements(page, "a", "commit")}
    assert f"/dashboard/audit?commit={world.second_commit}" in links  # the edit and the deletion
    assert f"/dashboard/audit?commit={world.first_commit}" in links

    state = desired_from_applied(applied)
    obj = applied.get("Campaign", EDITED)
    assert obj is not None
    expected = next_fire_times(state.campaigns[EDITED], state.settings, created_at=obj.created_at,
                               after=world.clock.now(), limit=1)[0]
    row = page.split(f'data-campaign="{EDITED}"', 1)[1].split("</tr>", 1)[0]
    assert format_time(expected) in row


def test_unknown_or_malformed_campaign_names_are_404(client: httpx.Client) -> None:
    assert client.get("/dashboard/campaigns/nope", headers=BEARER).status_code == 404
    response = client.get("/dashboard/campaigns/%3Cscript%3Ex", headers=BEARER)
    assert response.status_code == 404 and "<script>x" not in response.text


# ---------------------------------------------------------------- report and charts


def test_campaign_report_matches_the_cli_report_and_the_charts_plot_it(
        client: httpx.Client, world: DashboardWorld) -> None:
    page = client.get("/dashboard/campaigns/flash-sale", headers=BEARER).text
    state = desired_from_applied(world.store.applied_state())
    report = build_report(world.store, world.audience, state, campaign="flash-sale", now=world.clock.now())[0]
    assert report.tally.sent > 0 and report.tally.converted > 0  # the demo story converts some buyers

    totals = {m: int(re.search(rf'data-total="{m}">([\d,]+)<', page).group(1).replace(",", ""))  # type: ignore[union-attr]
              for m in ("sent", "delivered", "failed", "converted")}
    assert totals == {m: getattr(report.tally, m) for m in totals}

    chart = elements(page, "svg", "timeline-chart")
    assert len(chart) == 1
    buckets = int(chart[0].attrs["data-buckets"])
    points = elements(page, "circle", "point")
    assert len(points) == 4 * buckets
    sent_rows = world.store.list_outbox(campaign="flash-sale", statuses=["sent", "failed"], limit=100_000)
    hours = {(r.sent_at or r.updated_at).replace(minute=0, second=0, microsecond=0) for r in sent_rows}
    assert chart[0].attrs["data-unit"] == "hour"
    assert buckets == int((max(hours) - min(hours)) / timedelta(hours=1)) + 1  # consecutive hours, gaps at 0

    per_series: dict[str, int] = {}
    for series in ("sent", "delivered", "failed", "converted"):
        block = page.split(f'data-series="{series}"', 1)[1].split("</g>", 1)[0]
        per_series[series] = sum(int(e.attrs["data-value"]) for e in elements(block, "circle", "point"))
    assert per_series == totals

    providers = {r.provider for r in sent_rows}
    bars = elements(page, "rect", "bar")
    assert len(bars) == 4 * len(providers)
    assert {b.attrs["data-group"] for b in bars} == providers
    for provider in providers:
        sent = sum(1 for r in sent_rows if r.provider == provider and r.status == "sent")
        bar = next(b for b in bars if b.attrs["data-group"] == provider and b.attrs["data-metric"] == "sent")
        assert int(bar.attrs["data-value"]) == sent


def test_run_history_lists_runs_with_their_commit(client: httpx.Client, world: DashboardWorld) -> None:
    page = client.get(f"/dashboard/campaigns/{EDITED}", headers=BEARER).text
    runs = world.store.list_runs(campaign=EDITED)
    assert runs
    assert [int(e.attrs["data-run"]) for e in elements(page, "tr", "run-row")] == [r.id for r in runs]
    assert f"/dashboard/audit?commit={runs[0].commit_sha}" in page
    assert f"/dashboard/audit?campaign={EDITED}" in page


def test_a_deleted_campaign_keeps_its_history_page(client: httpx.Client, world: DashboardWorld) -> None:
    page = client.get(f"/dashboard/campaigns/{DELETED}", headers=BEARER).text
    assert "status-deleted" in page and "Deleted by" in page
    assert f"/dashboard/audit?commit={world.second_commit}" in page


# ---------------------------------------------------------------- audit log


def _audit_rows(page: str) -> list[dict[str, str]]:
    return [e.attrs for e in elements(page, "tr", "audit-row")]


def test_audit_filtered_by_commit_prefix_shows_only_that_commit(client: httpx.Client, world: DashboardWorld) -> None:
    everything = _audit_rows(client.get("/dashboard/audit", headers=BEARER).text)
    assert {r["data-commit"] for r in everything} >= {world.first_commit, world.second_commit}

    page = client.get(f"/dashboard/audit?commit={world.second_commit[:7].upper()}", headers=BEARER).text
    rows = _audit_rows(page)
    expected = world.store.query_audit(AuditQuery(commit=world.second_commit))
    assert len(rows) == len(expected) > 0
    assert {r["data-commit"] for r in rows} == {world.second_commit}
    assert {r["data-campaign"] for r in rows} >= {EDITED, DELETED}
    summary = page.split('class="commit-summary"', 1)[1].split("</section>", 1)[0]
    assert f'href="/dashboard/campaigns/{EDITED}"' in summary and f'href="/dashboard/campaigns/{DELETED}"' in summary


def test_audit_filters_by_campaign_and_action(client: httpx.Client, world: DashboardWorld) -> None:
    rows = _audit_rows(client.get(f"/dashboard/audit?campaign={PAUSED}&action=pause", headers=BEARER).text)
    assert len(rows) == 1 and rows[0]["data-action"] == "pause" and rows[0]["data-campaign"] == PAUSED
    sends = _audit_rows(client.get("/dashboard/audit?action=send&campaign=flash-sale", headers=BEARER).text)
    expected = world.store.query_audit(AuditQuery(campaign="flash-sale", actions=["send"]))
    assert len(sends) == len(expected) > 0 and {r["data-action"] for r in sends} == {"send"}


def test_an_invalid_commit_filter_is_reported_not_run(client: httpx.Client) -> None:
    page = client.get("/dashboard/audit?commit=%3Cb%3Ezz", headers=BEARER).text
    assert "4 to 40 hexadecimal characters" in page and "<b>zz" not in page
    assert _audit_rows(page)  # unfiltered instead


# ---------------------------------------------------------------- escaping


def test_hostile_descriptions_and_commit_messages_are_escaped(client: httpx.Client, world: DashboardWorld) -> None:
    pages = {
        "list": client.get("/dashboard/", headers=BEARER).text,
        "detail": client.get(f"/dashboard/campaigns/{EDITED}", headers=BEARER).text,
        "audit": client.get("/dashboard/audit", headers=BEARER).text,
        "commit": client.get(f"/dashboard/audit?commit={world.second_commit}", headers=BEARER).text,
    }
    for name, page in pages.items():
        assert "<script" not in page.lower(), name
        assert "<img" not in page.lower() and "<svg onload" not in page.lower(), name
        assert "<b>now</b>" not in page, name
    assert str(escape(HOSTILE_DESCRIPTION)) in pages["list"]  # shown, as text
    assert str(escape(HOSTILE_DESCRIPTION)) in pages["detail"]
    assert str(escape(HOSTILE_SUBJECT)) in pages["commit"]


def test_the_daemon_serves_the_dashboard_behind_its_admin_token(tmp_path: Path) -> None:
    from reconciler.daemon import Daemon, DaemonOptions
    from reconciler.demo import demo_world

    with demo_world(tmp_path / "daemon", population=10) as demo:
        demo.step()  # apply the example commit
        rt = demo.engine.rt
        rt.config = replace(rt.config, admin_token=ADMIN_TOKEN)
        with serve(Daemon(demo.engine, DaemonOptions()).app) as url, httpx.Client(base_url=url) as c:
            assert c.get("/dashboard/").status_code == 303
            page = c.get("/dashboard/", headers=BEARER).text
            names = set(_rows(page))
            assert names == set(demo.engine.state.campaigns) and names


def test_next_run_skips_runs_the_scheduler_already_created(world: DashboardWorld) -> None:
    # Seen from before the flash sale (a daemon whose clock lags the one that ran it), the run that
    # already happened is not "next".
    early = datetime(2026, 12, 2, 0, 0, tzinfo=UTC)
    rows = {r.name: r for r in campaign_rows(world.store, DesiredCache(), early)}
    assert world.store.list_runs(campaign="flash-sale")[0].status == "done"
    assert rows["flash-sale"].next_run is None and rows["flash-sale"].status == "completed"
    last = world.store.last_run_time(EDITED)
    upcoming = rows[EDITED].next_run
    assert last is not None and upcoming is not None and upcoming.at > last


@pytest.mark.parametrize("name", ["flash-sale", EDITED, "welcome", DELETED])
def test_the_dashboard_report_equals_herald_report(world: DashboardWorld, name: str) -> None:
    state = desired_from_applied(world.store.applied_state())
    now = world.clock.now()
    expected = build_report(world.store, world.audience, state, campaign=name, now=now)[0]
    detail = campaign_detail(world.store, world.audience, DesiredCache(), name, now)
    assert detail is not None
    assert asdict(detail.report.tally) == asdict(expected.tally)
    assert [asdict(r) for r in detail.report.by_run] == [asdict(r) for r in expected.by_run]
    assert {k: asdict(v) for k, v in detail.report.by_provider.items()} == \
        {k: asdict(v) for k, v in expected.by_provider.items()}
    assert sum(t.converted for t in detail.by_provider.values()) == expected.tally.converted
