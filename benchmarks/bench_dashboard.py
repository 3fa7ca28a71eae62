"""Dashboard page cost: `.venv/bin/python benchmarks/bench_dashboard.py [MESSAGES]`.

Applies the example repo to a fresh SQLite store, records MESSAGES sent messages of flash-sale
spread over 48 hours across two providers (a tenth with failed receipts), and times the data work
behind each page (campaign list, campaign report with charts, audit by commit) and the full HTTP
render. Conversions are counted per sent message against DuckDB (the report's rule), measured on
a smaller sample because that cost grows with every message.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from reconciler.apply import reconcile
from reconciler.audience.records import parse_event, parse_user
from reconciler.audience.store import AudienceStore, open_audience_store
from reconciler.clock import FakeClock
from reconciler.demo import example_sources, init_repo
from reconciler.gitsource import read_commit
from reconciler.http.dashboard import dashboard_app
from reconciler.http.dashboard_views import (
    AuditFilter,
    DesiredCache,
    audit_view,
    campaign_detail,
    campaign_rows,
)
from reconciler.store import open_state_store
from reconciler.store.base import OutboxItem, SendResult, StateStore, idempotency_key

START = datetime(2026, 12, 4, 0, 0, tzinfo=UTC)
TOKEN = "bench-admin-token"


def fill(store: StateStore, clock: FakeClock, messages: int, batch: int = 2000) -> None:
    hours = 48
    per_hour = max(1, messages // hours)
    made = 0
    while made < messages:
        count = min(batch, per_hour, messages - made)
        items = [OutboxItem(idempotency_key=idempotency_key("bench", made + i), campaign="flash-sale",
                            user_id=f"u{made + i:07d}", phone=f"+1415555{(made + i) % 10000:04d}",
                            not_before=clock.now()) for i in range(count)]
        store.enqueue(items)
        rows = store.claim("bench", count, clock.now(), timedelta(minutes=5))
        store.complete("bench", [SendResult(r.id, "sent", provider=("twilio-us", "msg91-in")[r.id % 2],
                                            provider_message_id=f"m{r.id}", cost=0.0079) for r in rows])
        for r in rows[::10]:
            store.record_receipt(("twilio-us", "msg91-in")[r.id % 2], f"m{r.id}", "failed", "30003", {})
        made += count
        if made % per_hour == 0:
            clock.advance(timedelta(hours=1))


def add_buyers(audience: AudienceStore, users: int) -> None:
    audience.upsert_users([parse_user({"id": f"u{i:07d}", "phone": f"+1415555{i % 10000:04d}"})
                           for i in range(users)], now=START)
    audience.insert_events([parse_event({"user_id": f"u{i:07d}", "name": "purchase",
                                         "ts": (START + timedelta(hours=30)).isoformat()})
                            for i in range(0, users, 3)])


def timed(label: str, action: Callable[[], Any], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - began)
    print(f"  {label:<44} {best * 1000:9.1f} ms")
    return best


def measure(messages: int, with_audience: bool) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        clock = FakeClock(START)
        repo = root / "repo"
        init_repo(repo, example_sources())
        store = open_state_store(f"sqlite:///{root / 'state.db'}", clock=clock)
        audience = open_audience_store(f"duckdb:///{root / 'audience.duckdb'}") if with_audience else None
        try:
            reconcile(store, read_commit(repo, "HEAD"), clock=clock, actor="bench")
            commit = store.applied_state().commit_sha or ""
            fill(store, clock, messages)
            if audience is not None:
                add_buyers(audience, messages)
            now = clock.now()
            cache = DesiredCache()
            conversions = "with conversions (DuckDB)" if audience else "no conversions"
            print(f"{messages:,} sent messages, {conversions}:")
            timed("campaign list (data)", lambda: campaign_rows(store, cache, now))
            timed("campaign report + timeline (data)",
                  lambda: campaign_detail(store, audience, cache, "flash-sale", now))
            timed("audit filtered by commit (data)",
                  lambda: audit_view(store, AuditFilter(commit=commit[:8])))
            app = dashboard_app(store, audience, clock, TOKEN)
            headers = {"Authorization": f"Bearer {TOKEN}"}

            async def page(path: str) -> None:
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as c:
                    response = await c.get(path, headers=headers)
                    assert response.status_code == 200, response.status_code

            timed("GET /dashboard/campaigns/flash-sale (HTML)",
                  lambda: asyncio.run(page("/dashboard/campaigns/flash-sale")))
        finally:
            store.close()
            if audience is not None:
                audience.close()


def main() -> None:
    messages = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    measure(messages, with_audience=False)
    measure(min(messages, 2_000), with_audience=True)


if __name__ == "__main__":
    main()
