"""A provider's send-rate limit holds through the engine's delivery workers (measured at the mock)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import httpx
from example_repo import settings_yaml

from reconciler.audience.records import parse_event
from reconciler.demo import demo_world

ROOT = Path(__file__).resolve().parent.parent
RATE = 5
WELCOME = """apiVersion: herald/v1
kind: Campaign
metadata: {name: welcome}
spec:
  type: live
  owner: owner@example.com
  trigger: {event: {name: signed_up}}
  frequencyCap: {ignoreGlobal: true}
  message: {body: "Welcome {{ user.first_name }}"}
  providerGroup: global
"""


SETTINGS = settings_yaml()


def test_rate_limited_provider_is_never_exceeded_by_the_engine_workers(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(ROOT / "providers", source / "providers")
    twilio = source / "providers" / "twilio.yaml"
    twilio.write_text(twilio.read_text().replace("rateLimit: {messagesPerSecond: 50}",
                                                 f"rateLimit: {{messagesPerSecond: {RATE}, burst: 1}}"))
    (source / "campaigns").mkdir()
    (source / "campaigns" / "welcome.yaml").write_text(WELCOME)
    (source / "campaigns" / "settings.yaml").write_text(SETTINGS)
    start = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    with demo_world(tmp_path / "world", population=15, start=start,
                    sources=[source / "providers", source / "campaigns"]) as world:
        world.step()
        events = [parse_event({"user_id": f"u{i:05d}", "name": "signed_up", "ts": start.isoformat()})
                  for i in range(15)]
        world.engine.rt.audience.insert_events(events)
        world.engine.on_events(events)
        assert world.engine.worker_count >= 2
        world.step(sync=False)
        messages = httpx.get(f"{world.mock_url}/_mock/messages").json()["messages"]
    times = sorted(float(m["arrived_at"]) for m in messages)  # real arrival times (received_at: the FakeClock)
    assert len(times) == 15 and len({m["to"] for m in messages}) == 15
    worst = max(sum(1 for t in times if first <= t < first + 1.0) for first in times)
    assert worst <= RATE + 1, f"{worst} messages within one second at {RATE}/s (burst 1)"
    assert times[-1] - times[0] >= (15 - 1 - 1) / RATE - 0.2  # spread out, not sent in one burst
