"""Scheduler throughput: next fire times, due runs, time-zone fan-out, DND and live triggers.

Run: .venv/bin/python benchmarks/bench_scheduler.py [--campaigns 10000]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from reconciler.models import Campaign, Settings
from reconciler.models.campaign import DndWindow
from reconciler.scheduler import (
    apply_dnd,
    fanout_by_timezone,
    fanout_run,
    next_due_at,
    next_fire_times,
    plan_catch_up,
    runs_between,
    trigger_for_event,
)

ZONES = [
    "UTC", "Europe/London", "Europe/Berlin", "Europe/Moscow", "Asia/Dubai", "Asia/Kolkata", "Asia/Kathmandu",
    "Asia/Dhaka", "Asia/Bangkok", "Asia/Singapore", "Asia/Tokyo", "Australia/Sydney", "Australia/Lord_Howe",
    "Pacific/Auckland", "Pacific/Chatham", "Pacific/Kiritimati", "Pacific/Pago_Pago", "Pacific/Honolulu",
    "America/Anchorage", "America/Los_Angeles", "America/Denver", "America/Chicago", "America/New_York",
    "America/Sao_Paulo", "America/Santiago", "America/St_Johns", "Atlantic/Azores", "Africa/Lagos",
    "Africa/Nairobi", "Asia/Tehran", "+05:30", "+14:00", "-03:00", None, "Not/AZone",
]
NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
CREATED = datetime(2026, 6, 1, tzinfo=UTC)


def _schedule(rng: random.Random) -> dict[str, Any]:
    hour, minute = rng.randrange(24), rng.choice([0, 15, 30, 45])
    at = f"{hour:02d}:{minute:02d}"
    kind = rng.randrange(6)
    if kind == 0:
        return {"cron": f"{minute} {hour} * * *"}
    if kind == 1:
        return {"cron": f"{minute} {hour} * * {rng.randrange(7)}"}
    if kind == 2:
        return {"every": {"interval": rng.randint(1, 3), "unit": "days", "at": at}}
    if kind == 3:
        return {"every": {"interval": rng.randint(1, 2), "unit": "weeks", "weekday": "fri", "at": at}}
    if kind == 4:
        return {"every": {"unit": "months", "day": rng.choice([1, 7, 15, 28, -1]), "at": at}}
    start = NOW + timedelta(days=1)
    return {"dates": [(start + timedelta(days=7 * i)).strftime("%Y-%m-%dT") + at + ":00" for i in range(12)]}


def make_campaigns(count: int, seed: int = 7) -> list[Campaign]:
    rng = random.Random(seed)
    zones = [z for z in ZONES if z and z.count("/") == 1]
    campaigns = []
    for index in range(count):
        spec = {
            "type": "past_behavior",
            "owner": "bench@example.com",
            "message": {"body": "hi"},
            "schedule": _schedule(rng),
            "timezone": {"mode": rng.choice(["fixed", "user"]), "zone": rng.choice(zones)},
        }
        campaigns.append(Campaign.model_validate(
            {"apiVersion": "herald/v1", "kind": "Campaign", "metadata": {"name": f"c{index}"}, "spec": spec}
        ))
    return campaigns


def timed(label: str, work: Callable[[], int], unit: str) -> None:
    began = time.perf_counter()
    done = work()
    elapsed = time.perf_counter() - began
    print(f"{label:<58} {elapsed * 1000:9.1f} ms  {done / elapsed:>12,.0f} {unit}/s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--campaigns", type=int, default=10_000)
    count = parser.parse_args().campaigns
    settings = Settings.model_validate({"apiVersion": "herald/v1", "kind": "Settings", "metadata": {"name": "s"}})
    campaigns = make_campaigns(count)
    print(f"{count} campaigns (cron daily/weekly, every days/weeks/months, dates; fixed and user zones)")

    def next_ten() -> int:
        return sum(len(next_fire_times(c, settings, created_at=CREATED, after=NOW, limit=10)) for c in campaigns)

    def next_one() -> int:
        return sum(len(next_fire_times(c, settings, created_at=CREATED, after=NOW, limit=1)) for c in campaigns)

    def tick() -> int:
        last = NOW - timedelta(seconds=5)
        return sum(len(plan_catch_up(c, settings, created_at=CREATED, last_run_at=last, now=NOW).run) + 1
                   for c in campaigns)

    def downtime() -> int:
        last = NOW - timedelta(days=3)
        return sum(len(plan_catch_up(c, settings, created_at=CREATED, last_run_at=last, now=NOW).run) + 1
                   for c in campaigns)

    def due_at() -> int:
        return sum(1 for c in campaigns if next_due_at(c, settings, created_at=CREATED, after=NOW))

    timed("next_fire_times limit=10 (fire times)", next_ten, "fire times")
    timed("next_due_at (campaigns)", due_at, "campaigns")
    timed("next_fire_times limit=1 (campaigns)", next_one, "campaigns")
    timed("due runs, one 5 s tick (campaigns)", tick, "campaigns")
    timed("due runs after 3 days down (campaigns)", downtime, "campaigns")

    runs = [(c, r[0]) for c in campaigns if (r := runs_between(c, settings, created_at=CREATED, after=NOW, limit=1))]
    zone_names = [z for z in ZONES]

    def fanout_plain() -> int:
        return sum(len(fanout_by_timezone(run.local, zone_names, fallback="UTC")) for _, run in runs)

    def fanout_full() -> int:
        return sum(len(fanout_run(c, settings, run, zone_names, created_at=CREATED, now=NOW)) for c, run in runs)

    timed(f"fanout_by_timezone, {len(zone_names)} zones per run (zone moments)", fanout_plain, "zone moments")
    timed(f"fanout_run, {len(zone_names)} zones per run (zone slots)", fanout_full, "zone slots")

    window = DndWindow(start="21:00", end="09:00", action="delay")
    moments = [NOW + timedelta(minutes=7 * i) for i in range(100_000)]

    def dnd() -> int:
        for index, moment in enumerate(moments):
            apply_dnd(moment, ZONES[index % 30], window)
        return len(moments)

    timed("apply_dnd (messages)", dnd, "messages")

    live = Campaign.model_validate({
        "apiVersion": "herald/v1", "kind": "Campaign", "metadata": {"name": "cart"},
        "spec": {"type": "live", "owner": "bench@example.com", "message": {"body": "hi"},
                 "trigger": {"inaction": {"event": {"name": "added_to_cart",
                                                    "where": [{"name": "value", "op": "gte", "value": 20}]},
                                          "missing": {"name": "purchase"}, "within": "5m"}}},
    })

    def events() -> int:
        for index in range(100_000):
            name = "purchase" if index % 3 == 0 else "added_to_cart"
            trigger_for_event(live, name, {"value": index % 50}, NOW, "UTC", user_id=f"u{index}",
                              settings=settings)
        return 100_000

    timed("trigger_for_event, inaction campaign (events)", events, "events")


if __name__ == "__main__":
    main()
