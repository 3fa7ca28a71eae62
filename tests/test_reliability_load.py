"""Bounded load on the real daemon over loopback: sustained event ingest (single events and batches,
bounded concurrency) with every accepted event stored, then a campaign pushed through the delivery
pipeline, exactly once. The floors are far below what benchmarks/bench_ingest.py and
bench_pipeline.py measure on this machine (docs/guarantees.md): they catch collapse, not drift."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from daemon_harness import (
    DaemonProcess,
    campaign_yaml,
    exactly_once_report,
    ingest,
    ingest_load,
    metric_value,
    mock_provider,
    population,
    schedule_soon,
    standard_files,
    wait_for,
    write_repo,
)
from daemon_harness import (
    now as harness_now,
)

from reconciler.audience.store import open_audience_store


def _load_then_deliver(tmp_path: Path, *, users: int, ingest_seconds: float) -> None:
    people = population(users)
    audience_url = f"duckdb:///{tmp_path / 'audience.duckdb'}"
    ingest(audience_url, people)
    repo = write_repo(tmp_path / "repo", standard_files())
    with mock_provider() as mock:
        daemon = DaemonProcess(tmp_path / "d", str(repo.working_tree_dir), f"sqlite:///{tmp_path / 'state.db'}",
                               audience_url, mock.url, poll_interval=600, lease_seconds=30)
        daemon.start()
        try:
            daemon.wait_healthy()
            daemon.wait_applied(repo.head.commit.hexsha)
            ids = [u["id"] for u in people]
            single = asyncio.run(ingest_load(daemon.base_url, ids, seconds=ingest_seconds, concurrency=8))
            batched = asyncio.run(ingest_load(daemon.base_url, ids, seconds=ingest_seconds / 2, concurrency=4,
                                              batch=50))
            print(f"\ningest, single events: {single.summary()}\ningest, 50 per request: {batched.summary()}")
            for result in (single, batched):
                assert not result.errors and result.requests > 0
                assert result.percentile(0.99) < 2.0, "p99 latency above 2 s"
            assert single.events_per_second > 50 and batched.events_per_second > 1000

            once = schedule_soon(repo, daemon, lambda at: {"campaigns/blast.yaml": campaign_yaml("blast", at)})
            wait_for(lambda: harness_now() >= once, 30, "the campaign's moment", poll=0.01)
            began = time.monotonic()
            wait_for(lambda: mock.accepted() >= users
                     and metric_value(daemon.metrics(), "herald_outbox_queue_depth") == 0,
                     120, "every message sent and recorded", poll=0.05, on_timeout=daemon.log_tail)
            seconds = time.monotonic() - began
            print(f"pipeline: {users} messages in {seconds:.1f}s = {users / seconds:,.0f} messages/s end to end")
            assert users / seconds > 100
        finally:
            assert daemon.terminate() == 0
        report = exactly_once_report(mock, {u["phone"] for u in people})
        assert report["missing"] == [] and report["doubled"] == [] and report["accepted"] == users
    store = open_audience_store(audience_url)
    try:
        assert store.stats().events == single.events + batched.events  # every 202 was stored, nothing else
    finally:
        store.close()


def test_bounded_ingest_and_delivery_load(tmp_path: Path) -> None:
    _load_then_deliver(tmp_path, users=1000, ingest_seconds=1.5)


@pytest.mark.slow
def test_sustained_ingest_and_a_10000_message_run(tmp_path: Path) -> None:
    _load_then_deliver(tmp_path, users=10_000, ingest_seconds=10.0)
