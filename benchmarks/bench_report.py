"""Report cost with a conversion goal: `.venv/bin/python benchmarks/bench_report.py [MESSAGES] [--pg DSN]`.

Applies the example repo to a fresh SQLite state store, records MESSAGES sent flash-sale messages
(goal: purchase within 1d) spread over 48 hours, and fills the audience store (DuckDB; PostgreSQL too
with --pg) with one user per message, a purchase for every third user and ten other events each.
Then times conversion counting the old way (one count_events query per sent message) against the
batched AudienceStore.converted_keys, and the whole report and dashboard page data that use it.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench_dashboard import START, add_buyers, fill
from bench_ingest import fresh_schema

from reconciler.apply import reconcile
from reconciler.audience.records import parse_event
from reconciler.audience.store import AudienceStore, open_audience_store
from reconciler.clock import FakeClock
from reconciler.demo import example_sources, init_repo
from reconciler.gitsource import read_commit
from reconciler.http.dashboard_views import DesiredCache, campaign_detail
from reconciler.models import Campaign
from reconciler.report import Tally, build_report, count_conversions
from reconciler.store import open_state_store
from reconciler.store.base import OutboxRow, StateStore

CAMPAIGN = "flash-sale"


def add_noise(audience: AudienceStore, users: int, per_user: int = 10) -> None:
    audience.insert_events(parse_event({"user_id": f"u{i:07d}", "name": "viewed",
                                        "ts": (START + timedelta(hours=(i + j) % 60)).isoformat()})
                           for i in range(users) for j in range(per_user))


def per_message(rows: Sequence[OutboxRow], audience: AudienceStore, campaign: Campaign, now: datetime) -> int:
    """The report's conversion counting before batching: one count_events query per sent message."""
    goal = campaign.spec.conversion
    assert goal is not None
    converted = 0
    for row in rows:
        if row.sent_at is None:
            continue
        window_end = min(now, row.sent_at + goal.within)
        if window_end > row.sent_at and audience.count_events(row.user_id, goal.event, now=window_end,
                                                               since=row.sent_at, where=goal.where):
            converted += 1
    return converted


def batched(rows: Sequence[OutboxRow], audience: AudienceStore, campaign: Campaign, now: datetime) -> int:
    total = Tally()
    count_conversions(rows, audience, campaign, now, total, defaultdict(Tally))
    return total.converted


def timed(label: str, action: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        began = time.perf_counter()
        result = action()
        best = min(best, time.perf_counter() - began)
    print(f"  {label:<52} {best * 1000:10.1f} ms")
    return best, result


def measure(store: StateStore, audience: AudienceStore, engine: str, messages: int, now: datetime) -> None:
    state = DesiredCache().get(store.applied_state())
    campaign = state.campaigns[CAMPAIGN]
    rows = store.list_outbox(campaign=CAMPAIGN, statuses=["sent"], limit=1_000_000)
    print(f"{len(rows):,} sent messages, audience on {engine} ({audience.stats().events:,} events):")
    before, old = timed("conversions, one query per message (before)",
                        lambda: per_message(rows, audience, campaign, now), repeat=1)
    after, new = timed("conversions, batched converted_keys (after)", lambda: batched(rows, audience, campaign, now))
    assert old == new, (old, new)
    print(f"  {'converted':<52} {new:10,}   speed-up x{before / after:,.0f}")
    timed("herald report data (build_report, one campaign)",
          lambda: build_report(store, audience, state, campaign=CAMPAIGN, now=now))
    timed("dashboard campaign page data (campaign_detail)",
          lambda: campaign_detail(store, audience, DesiredCache(), CAMPAIGN, now))


@contextlib.contextmanager
def opened(url: str) -> Iterator[AudienceStore]:
    audience = open_audience_store(url)
    try:
        yield audience
    finally:
        audience.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("messages", nargs="?", type=int, default=10_000)
    parser.add_argument("--pg", help="also measure a PostgreSQL audience store (base DSN; a fresh schema is used)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        root = Path(scratch)
        clock = FakeClock(START)
        repo = root / "repo"
        init_repo(repo, example_sources())
        store = open_state_store(f"sqlite:///{root / 'state.db'}", clock=clock)
        stack.callback(store.close)
        reconcile(store, read_commit(repo, "HEAD"), clock=clock, actor="bench")
        fill(store, clock, args.messages)
        now = clock.now()
        urls = [("DuckDB", f"duckdb:///{root / 'audience.duckdb'}")]
        if args.pg:
            urls.append(("PostgreSQL", stack.enter_context(fresh_schema(args.pg))))
        for engine, url in urls:
            with opened(url) as audience:
                add_buyers(audience, args.messages)
                add_noise(audience, args.messages)
                measure(store, audience, engine, args.messages, now)


if __name__ == "__main__":
    main()
