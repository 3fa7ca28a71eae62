"""Campaign limits and live completion in simulated time (issue 14, docs/scheduler.md "Daily limits,
first-N completion and `end`"): daily limits count local days (campaign zone, recipient zone, trigger
day), first-N completion follows limit changes and delete/re-create, live refusals are recorded, and
DND-delayed messages are not sent after `end`. Every test runs on the world's FakeClock, so outcomes
do not depend on the real date or hour; zones include UTC+14 and UTC-10."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from example_repo import example_sources, settings_yaml

from reconciler.audience.records import parse_event, parse_user
from reconciler.demo import DemoWorld, commit_all, demo_phone, demo_world
from reconciler.http.dashboard_views import DesiredCache, campaign_detail, campaign_rows
from reconciler.report import build_report, report_table
from reconciler.store.base import AuditQuery, OutboxRow

ZONES = ("Pacific/Kiritimati", "Pacific/Honolulu", "America/Los_Angeles")  # UTC+14, UTC-10, DST zone
SETTINGS = settings_yaml("catchUp: {policy: latest, maxAge: 6h}")


def campaign(name: str, spec: str) -> str:
    return (f"apiVersion: herald/v1\nkind: Campaign\nmetadata: {{name: {name}}}\nspec:\n"
            f"  owner: owner@example.com\n{spec}")


def users(cohort: str, zones: tuple[str, ...], per_zone: int, first_index: int) -> list[dict[str, Any]]:
    """`per_zone` users of `cohort` in each zone, with unique valid phone numbers."""
    found = []
    for z, zone in enumerate(zones):
        for i in range(per_zone):
            index = first_index + z * per_zone + i
            found.append({"id": f"{cohort}-{index}", "phone": demo_phone("US", index), "timezone": zone,
                          "cohort": cohort})
    return found


@contextmanager
def world_with(tmp_path: Path, start: datetime, campaigns: dict[str, str],
               people: list[dict[str, Any]], state_url: str | None = None) -> Iterator[DemoWorld]:
    sources = example_sources(tmp_path / "source", {"settings": SETTINGS, **campaigns})
    with demo_world(tmp_path / "world", population=1, start=start, state_url=state_url, sources=sources) as world:
        world.engine.rt.audience.upsert_users([parse_user(u) for u in people], now=start)
        world.step()
        yield world


@pytest.fixture(params=["sqlite", "postgres"])
def state_url(request: pytest.FixtureRequest) -> str | None:
    """The world's state store: SQLite (the demo's default) or PostgreSQL (a fresh schema)."""
    return None if request.param == "sqlite" else str(request.getfixturevalue("pg_dsn"))


def ingest(world: DemoWorld, *events: dict[str, Any]) -> Counter[str]:
    records = [parse_event(e) for e in events]
    world.engine.rt.audience.insert_events(records)
    return world.engine.on_events(records)


def rows(world: DemoWorld, name: str, *statuses: str) -> list[OutboxRow]:
    return world.engine.rt.store.list_outbox(campaign=name, statuses=statuses, limit=100_000)


def local_day(row: OutboxRow, zone: str | None = None) -> date:
    """The day a sent row went out, in `zone` (default: its recipient's zone)."""
    assert row.sent_at is not None
    return row.sent_at.astimezone(ZoneInfo(zone or row.context["member"]["timezone"])).date()


def skips_metric(world: DemoWorld, reason: str) -> float:
    value = world.engine.rt.metrics.registry.get_sample_value("herald_skips_total", {"reason": reason})
    return value or 0.0


def mock_count(world: DemoWorld) -> int:
    return len(httpx.get(f"{world.mock_url}/_mock/messages").json()["messages"])


def status_of(world: DemoWorld, name: str) -> str:
    store = world.engine.rt.store
    return next(r.status for r in campaign_rows(store, DesiredCache(), world.clock.now()) if r.name == name)


# ---------------------------------------------------------------- 1. which day a daily limit counts


def test_user_timezone_daily_limit_sends_the_limit_every_local_day(tmp_path: Path) -> None:
    """dailyLimit 15, user mode, users at UTC+14, UTC-10 and UTC+5:30: 15 on each of six days (the run
    that opens for UTC+14 at 20:00 UTC the day before is its own day, not "today" of the previous run)."""
    start = datetime(2026, 11, 30, 12, 0, tzinfo=ZoneInfo("UTC"))
    daily = campaign("daily", """  type: past_behavior
  schedule: {cron: "0 10 * * *"}
  timezone: {mode: user, zone: UTC}
  audience:
    rules: {property: {name: cohort, op: eq, value: daily}}
    dailyLimit: 15
  message: {body: "Daily hello"}
""")
    people = users("daily", ("Pacific/Kiritimati", "Pacific/Honolulu", "Asia/Kolkata"), 20, 1000)
    with world_with(tmp_path, start, {"daily": daily}, people) as world:
        world.advance_to(datetime(2026, 12, 6, 21, 0, tzinfo=ZoneInfo("UTC")), every=timedelta(minutes=30))
        sent = rows(world, "daily", "sent")
        per_day = Counter(local_day(r) for r in sent)
        assert [per_day[date(2026, 12, d)] for d in range(1, 7)] == [15] * 6
        assert all(r.limit_day == local_day(r).isoformat() for r in sent)  # counted on the recipient's day
        zones_reached = {r.context["member"]["timezone"] for r in sent}
        assert len(zones_reached) == 3


@pytest.mark.parametrize("zone", ZONES)
def test_fixed_zone_daily_limit_holds_on_one_local_day_with_two_runs(tmp_path: Path, zone: str) -> None:
    """Runs at 10:00 and 18:00 in the campaign zone fall on two UTC days in each of these zones; the
    limit of 15 holds per local day (the 18:00 run sends nothing), on three days."""
    tz = ZoneInfo(zone)
    start = datetime(2026, 12, 1, 0, 30, tzinfo=tz)
    fixed = campaign("fixed", f"""  type: past_behavior
  schedule: {{cron: "0 10,18 * * *"}}
  timezone: {{mode: fixed, zone: {zone}}}
  audience:
    rules: {{property: {{name: cohort, op: eq, value: fixed}}}}
    dailyLimit: 15
  message: {{body: "Fixed hello"}}
""")
    with world_with(tmp_path, start, {"fixed": fixed}, users("fixed", (zone,), 40, 2000)) as world:
        world.advance_to(datetime(2026, 12, 4, 0, 0, tzinfo=tz), every=timedelta(minutes=30))
        sent = rows(world, "fixed", "sent")
        per_day = Counter(local_day(r, zone) for r in sent)
        assert per_day == {date(2026, 12, d): 15 for d in (1, 2, 3)}
        assert {r.sent_at.astimezone(tz).hour for r in sent if r.sent_at} == {10}  # 18:00 runs had no budget
        assert mock_count(world) == 45


@pytest.mark.parametrize("zone", ZONES)
def test_event_date_daily_limit_counts_the_trigger_day_not_the_send_day(tmp_path: Path, zone: str,
                                                                         state_url: str | None) -> None:
    """dailyLimit 2 on an eventDate campaign: reminders queued today for next week count for today; the
    third trigger of a local day is refused (recorded), the next local day — the same UTC day in some
    zones — has a full budget again, and every queued reminder goes out on its day."""
    tz = ZoneInfo(zone)
    start = datetime(2026, 12, 1, 21, 0, tzinfo=tz)
    trips = campaign("trips", f"""  type: live
  trigger:
    eventDate:
      event: {{name: trip_booked}}
      property: departs
      offset: -1d
      at: "09:00"
  timezone: {{mode: fixed, zone: {zone}}}
  audience:
    rules: {{property: {{name: cohort, op: eq, value: trips}}}}
    dailyLimit: 2
  message: {{body: "Your trip is tomorrow"}}
""")
    people = users("trips", (zone,), 9, 3000)
    with world_with(tmp_path, start, {"trips": trips}, people, state_url) as world:
        def book(index: int, at: datetime, departs: str = "2026-12-10") -> Counter[str]:
            world.clock.set(at)
            return ingest(world, {"user_id": f"trips-{3000 + index}", "name": "trip_booked", "ts": at.isoformat(),
                                  "id": f"booking-{index}", "departs": departs})

        for day, first in ((1, 0), (2, 3), (3, 6)):  # three triggers late on day 1, early on days 2 and 3
            at = datetime(2026, 12, day, 22, 0, tzinfo=tz) if day == 1 else datetime(2026, 12, day, 0, 30, tzinfo=tz)
            outcomes = [book(first + i, at + timedelta(minutes=10 * i)) for i in range(3 if day < 3 else 2)]
            assert [next(iter(o)) for o in outcomes][:2] == ["enqueued", "enqueued"]
            if day < 3:
                assert outcomes[2] == Counter({"daily_limit": 1})
        assert book(8, datetime(2026, 12, 3, 1, 0, tzinfo=tz), departs="2026-12-01") == Counter({"event_date_past": 1})

        skipped = rows(world, "trips", "skipped")
        assert sorted((r.skip_reason or "").split(":")[0] for r in skipped) == [
            "daily_limit", "daily_limit", "event_date_past"]
        assert [r.limit_day for r in rows(world, "trips", "pending")] == [
            "2026-12-01", "2026-12-01", "2026-12-02", "2026-12-02", "2026-12-03", "2026-12-03"]
        assert skips_metric(world, "daily_limit") == 2 and skips_metric(world, "event_date_past") == 1
        audited = world.engine.rt.store.query_audit(AuditQuery(campaign="trips", actions=["skip"]))
        assert sorted(e.details["reason"].split(":")[0] for e in audited) == [
            "daily_limit", "daily_limit", "event_date_past"]
        table = report_table(build_report(world.engine.rt.store, None, world.engine.state, campaign="trips",
                                          now=world.clock.now()))
        assert "daily_limit=2" in table and "event_date_past=1" in table
        detail = campaign_detail(world.engine.rt.store, None, DesiredCache(), "trips", world.clock.now())
        assert detail is not None and detail.report.tally.skipped == {"daily_limit": 2, "event_date_past": 1}

        world.advance_to(datetime(2026, 12, 9, 9, 30, tzinfo=tz), every=timedelta(hours=2))
        world.step(sync=False)
        sent = rows(world, "trips", "sent")
        assert len(sent) == 6 and {local_day(r, zone) for r in sent} == {date(2026, 12, 9)}


# ---------------------------------------------------------------- 2 and 3. first N, then it ends

FIRST_N = """  type: live
  trigger: {{event: {{name: joined}}}}
  timezone: {{mode: fixed, zone: Pacific/Honolulu}}
  audience:
    rules: {{property: {{name: cohort, op: eq, value: firstn}}}}
    subset: {{limit: {limit}, mode: first}}
  message: {{body: "Welcome, early bird"}}
"""


def test_first_n_completes_at_the_nth_message_and_resets_on_a_raised_limit_or_recreate(
        tmp_path: Path, state_url: str | None) -> None:
    start = datetime(2026, 12, 1, 12, 0, tzinfo=ZoneInfo("UTC"))
    people = users("firstn", ZONES, 4, 4000)
    ids = [p["id"] for p in people]
    with world_with(tmp_path, start, {"firstn": campaign("firstn", FIRST_N.format(limit=2))}, people,
                    state_url) as world:
        store = world.engine.rt.store
        repo_dir = Path(world.repo.working_tree_dir or "")
        events = iter(range(100))

        def join(user: str) -> str:
            world.clock.advance(timedelta(minutes=1))
            outcome = ingest(world, {"user_id": user, "name": "joined", "ts": world.clock.now().isoformat(),
                                     "id": f"join-{next(events)}"})
            return next(iter(outcome))

        def completions() -> list[int]:
            entries = store.query_audit(AuditQuery(campaign="firstn", actions=["campaign_completed"]))
            return sorted(e.details["limit"] for e in entries)

        assert [join(ids[0]), join(ids[1])] == ["enqueued", "enqueued"]
        assert completions() == [2]  # recorded with the N-th message, before any further event
        assert status_of(world, "firstn") == "completed"
        [report] = build_report(store, None, world.engine.state, campaign="firstn", now=world.clock.now())
        assert report.status == "completed" and "completed" in report_table([report])
        assert join(ids[2]) == "campaign_completed"

        (repo_dir / "campaigns" / "firstn.yaml").write_text(campaign("firstn", FIRST_N.format(limit=4)))
        commit_all(world.repo, "Raise the first-N limit to 4")
        world.step()
        assert status_of(world, "firstn") == "active"
        assert [join(u) for u in ids[3:6]] == ["enqueued", "enqueued", "campaign_completed"]
        assert completions() == [2, 4] and status_of(world, "firstn") == "completed"

        world.step(sync=False)
        assert len(rows(world, "firstn", "sent")) == 4
        world.engine.allow_prune = True
        (repo_dir / "campaigns" / "firstn.yaml").unlink()
        commit_all(world.repo, "Delete firstn")
        world.step()
        (repo_dir / "campaigns" / "firstn.yaml").write_text(campaign("firstn", FIRST_N.format(limit=4)))
        commit_all(world.repo, "Create firstn again")
        world.step()
        assert status_of(world, "firstn") == "active"
        assert [join(u) for u in (ids[6], ids[7], ids[0], ids[1], ids[8])] == [
            "enqueued", "enqueued", "enqueued", "enqueued", "campaign_completed"]
        world.step(sync=False)
        assert len(rows(world, "firstn", "sent")) == 8 and mock_count(world) == 8
        assert skips_metric(world, "campaign_completed") == 3
        assert Counter((r.skip_reason or "") for r in rows(world, "firstn", "skipped")) == {"campaign_completed": 3}


# ---------------------------------------------------------------- 5. end and queued messages


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("after_end", ["skip", "deliver"])
def test_dnd_delayed_messages_are_not_sent_after_end(tmp_path: Path, zone: str, after_end: str) -> None:
    """A 22:00 run delayed by quiet hours to 09:00 next morning, with `end` at 08:00: skipped `ended`
    (audited, counted) by default; `queuedAfterEnd: deliver` sends them at 09:00."""
    tz = ZoneInfo(zone)
    start = datetime(2026, 12, 1, 12, 0, tzinfo=tz)
    late = campaign("late", f"""  type: past_behavior
  schedule: {{once: "2026-12-01T22:00:00"}}
  end: "2026-12-02T08:00:00"
  queuedAfterEnd: {after_end}
  timezone: {{mode: fixed, zone: {zone}}}
  dnd: {{start: "21:00", end: "09:00", action: delay}}
  audience:
    rules: {{property: {{name: cohort, op: eq, value: late}}}}
  message: {{body: "Last call"}}
""")
    with world_with(tmp_path, start, {"late": late}, users("late", (zone,), 3, 5000)) as world:
        world.advance_to(datetime(2026, 12, 2, 10, 0, tzinfo=tz), every=timedelta(minutes=30))
        if after_end == "skip":
            skipped = rows(world, "late", "skipped")
            assert [r.skip_reason for r in skipped] == ["ended"] * 3
            assert all(r.not_before == datetime(2026, 12, 2, 9, 0, tzinfo=tz) for r in skipped)
            assert mock_count(world) == 0 and skips_metric(world, "ended") == 3
            [entry] = world.engine.rt.store.query_audit(AuditQuery(campaign="late", actions=["skip"]))
            assert entry.details["reason"] == "ended" and entry.details["messages"] == 3
        else:
            sent = rows(world, "late", "sent")
            assert len(sent) == 3 and all(r.sent_at and r.sent_at.astimezone(tz).hour == 9 for r in sent)
            assert mock_count(world) == 3
