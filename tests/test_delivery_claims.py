"""Claims are sized for batching providers: a worker claims at least the largest batch a provider takes
(and `herald run --claim-batch`), so a 500-recipient batching provider is sent full batches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from example_repo import example_sources, settings_yaml

from reconciler.demo import demo_world
from reconciler.engine import claim_size
from reconciler.loading import DesiredState, load_paths

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SETTINGS = settings_yaml()
BULK = """apiVersion: herald/v1
kind: Campaign
metadata: {name: bulk-news}
spec:
  type: past_behavior
  owner: news@example.com
  schedule: {once: "2026-12-01T13:00:00Z"}
  timezone: {mode: fixed, zone: UTC}
  message: {body: "Our December news is out", templateId: news-dec}
  providerGroup: bulk
"""


def test_claims_take_the_largest_batch_a_provider_takes() -> None:
    state = load_paths([ROOT / "providers", ROOT / "campaigns"]).state
    assert state.providers["acme-sms-bulk"].spec.batching.size == 500  # type: ignore[union-attr]
    assert claim_size(state, 200) == 500
    assert claim_size(state, 1000) == 1000
    assert claim_size(DesiredState(), 200) == 200


def test_a_batching_provider_gets_full_batches(tmp_path: Path) -> None:
    sources = example_sources(tmp_path / "source", {"settings": SETTINGS, "bulk": BULK})
    with demo_world(tmp_path / "world", population=600, start=START, sources=sources) as world:
        world.step()
        world.advance_to(START + timedelta(hours=1, seconds=1), every=timedelta(minutes=30))
        for _ in range(3):
            world.step(sync=False)
        stats = httpx.get(f"{world.mock_url}/_mock/stats").json()["providers"]["acme-sms-bulk"]
        [run] = world.engine.rt.store.list_runs(campaign="bulk-news")
    assert run.enqueued == 600 and stats["messages"] == 600
    assert stats["requests"] == 2, stats  # 500 + 100 (claims of 200 sent 200 + 200 + 200)
