"""Idempotent event ingest and per-event isolation of the live hook.

An event with a client event id (`id` field, or `Idempotency-Key` header) is stored once per
(user_id, name, id) in both audience stores, and however often a client retries it — with or without
`ts` — it triggers its live campaign once. Events without an id keep their old meaning (documented in
the README). One event that breaks the live hook is recorded against that event; the others proceed.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from example_repo import example_sources, settings_yaml
from starlette.testclient import TestClient

from reconciler.audience import open_audience_store
from reconciler.audience.compiler import Fragment
from reconciler.audience.postgres_store import PostgresAudienceStore
from reconciler.audience.records import EventRecord
from reconciler.audience.store import AudienceStore
from reconciler.daemon import Daemon, DaemonOptions
from reconciler.demo import DemoWorld, demo_phone, demo_world
from reconciler.live import LIVE_EVENT_FAILED, LIVE_TIMER_FAILED, MAX_TIMER_TRIES, handle_events
from reconciler.store.base import AuditQuery

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TOKEN = "idempotency-admin-token-5b1f"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SETTINGS = settings_yaml()
WELCOME = """apiVersion: herald/v1
kind: Campaign
metadata: {name: welcome}
spec:
  type: live
  owner: owner@example.com
  trigger: {event: {name: signed_up}}
  message: {body: "Welcome {{ user.first_name }}"}
"""
CART = """apiVersion: herald/v1
kind: Campaign
metadata: {name: cart}
spec:
  type: live
  owner: owner@example.com
  trigger:
    inaction:
      event: {name: added_to_cart}
      missing: {name: purchase}
      within: 5m
  message: {body: "Your cart is waiting"}
"""


@dataclasses.dataclass
class Live:
    world: DemoWorld
    client: TestClient

    def post(self, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.client.post("/v1/events", json=body, headers={**AUTH, **(headers or {})})

    def stored(self, user: str, name: str) -> int:
        return self.world.engine.rt.audience.count_events(user, name, now=self.world.clock.now() + timedelta(days=1),
                                                          since=START - timedelta(days=1))

    def outbox(self, campaign: str, user: str) -> list[Any]:
        return [r for r in self.world.engine.rt.store.list_outbox(campaign=campaign) if r.user_id == user]

    def received(self, phone: str) -> list[dict[str, Any]]:
        messages = httpx.get(f"{self.world.mock_url}/_mock/messages").json()["messages"]
        return [m for m in messages if m["to"] == phone]


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    sources = example_sources(tmp_path / "source", {"settings": SETTINGS, "welcome": WELCOME, "cart": CART})
    with demo_world(tmp_path / "world", population=20, start=START, sources=sources) as world:
        world.step()
        rt = world.engine.rt
        rt.config = dataclasses.replace(rt.config, admin_token=TOKEN)
        with TestClient(Daemon(world.engine, DaemonOptions()).app) as client:
            yield Live(world, client)


# ---------------------------------------------------------------- over HTTP, through the live hook


@pytest.mark.parametrize("how", ["id field", "Idempotency-Key header"])
def test_an_event_posted_three_times_with_one_id_is_stored_once_and_sends_one_message(live: Live, how: str) -> None:
    user, phone = "u00003", demo_phone("IN", 3)
    event = {"user_id": user, "name": "signed_up"}  # no ts: each retry gets a new server time
    body, headers = ({**event, "id": "signup-u00003"}, {}) if how == "id field" \
        else (event, {"Idempotency-Key": "req-7f2a"})
    answers = []
    for attempt in range(3):  # the client counts its attempts in a property: the content differs too
        answers.append(live.post({**body, "attempt": attempt}, headers))
        live.world.clock.advance(timedelta(seconds=40))  # the client retried later: `now` differs each time
    assert [a.status_code for a in answers] == [202, 202, 202]
    assert [a.json() for a in answers] == [{"accepted": 1}, {"accepted": 1, "duplicates": [0]},
                                           {"accepted": 1, "duplicates": [0]}]
    assert live.stored(user, "signed_up") == 1
    assert len(live.outbox("welcome", user)) == 1
    live.world.step(sync=False)
    assert len(live.received(phone)) == 1


def test_a_retried_list_with_an_idempotency_key_stores_each_item_once(live: Live) -> None:
    items = [{"user_id": "u00004", "name": "signed_up"}, {"user_id": "u00005", "name": "signed_up"}]
    first = live.post(items, {"Idempotency-Key": "batch-1"})
    again = live.post(items, {"Idempotency-Key": "batch-1"})
    other_key = live.post(items[:1], {"Idempotency-Key": "batch-2"})
    assert (first.json(), again.json()) == ({"accepted": 2}, {"accepted": 2, "duplicates": [0, 1]})
    assert other_key.json() == {"accepted": 1}  # another request: "batch-2:0" is a new event
    assert (live.stored("u00004", "signed_up"), live.stored("u00005", "signed_up")) == (2, 1)
    assert len(live.outbox("welcome", "u00004")) == 2 and len(live.outbox("welcome", "u00005")) == 1


def test_a_retried_inaction_start_event_starts_one_timer(live: Live) -> None:
    body = {"user_id": "u00006", "name": "added_to_cart", "id": "cart-1"}
    for _ in range(3):
        assert live.post(body).status_code == 202
        live.world.clock.advance(timedelta(seconds=30))
    live.world.advance_to(live.world.clock.now() + timedelta(minutes=6), every=timedelta(minutes=1))
    assert len(live.outbox("cart", "u00006")) == 1
    assert len(live.received(demo_phone("US", 6))) == 1


@pytest.mark.parametrize(("with_ts", "stored", "messages"), [(True, 3, 1), (False, 3, 3)])
def test_retries_without_an_id_behave_as_the_readme_says(live: Live, with_ts: bool, stored: int,
                                                         messages: int) -> None:
    """No id: every retry is stored again. With `ts` the live event id (a hash of user, name, ts and
    properties) is the same, so one message; without `ts` each retry is a new event: one message each."""
    body: dict[str, Any] = {"user_id": "u00007", "name": "signed_up"}
    if with_ts:
        body["ts"] = START.isoformat()
    for _ in range(3):
        assert live.post(body).json() == {"accepted": 1}
        live.world.clock.advance(timedelta(seconds=40))
    assert live.stored("u00007", "signed_up") == stored
    assert len(live.outbox("welcome", "u00007")) == messages


# ---------------------------------------------------------------- one bad event, the others proceed


def test_an_event_that_breaks_the_live_hook_is_recorded_and_the_others_still_get_their_message(live: Live) -> None:
    """An event stored before times were range-checked (9999-12-31T23:59, + 5 minutes overflows) in one
    group commit with other users' sign-ups and carts: those proceed, the poison is audited."""
    rt = live.world.engine.rt
    now = live.world.clock.now()
    poison = EventRecord("u00008", "added_to_cart", datetime(9999, 12, 31, 23, 59, tzinfo=UTC), id="old-version")
    good = [EventRecord("u00010", "signed_up", now), EventRecord("u00011", "signed_up", now),
            EventRecord("u00012", "added_to_cart", now)]
    outcomes = handle_events(rt, live.world.engine.state, [good[0], poison, good[1], good[2]])
    assert (outcomes["failed"], outcomes["enqueued"], outcomes["timer_started"]) == (1, 2, 1)
    assert [len(live.outbox("welcome", e.user_id)) for e in good[:2]] == [1, 1]
    [entry] = rt.store.query_audit(AuditQuery(actions=[LIVE_EVENT_FAILED]))
    assert (entry.name, entry.details["user_id"], entry.details["client_event_id"]) == ("cart", "u00008", "old-version")
    assert entry.details["reason"].startswith("OverflowError")
    assert 'herald_live_event_failures_total{campaign="cart",unit="event"} 1.0' in rt.metrics.render().decode()
    live.world.advance_to(now + timedelta(minutes=6), every=timedelta(minutes=1))
    assert len(live.outbox("cart", "u00012")) == 1  # the good cart's timer fired


def test_a_failing_timer_is_retried_then_recorded_failed_and_never_stops_the_others(live: Live) -> None:
    """A timer whose context is unusable (written by an older version, say) due in the same tick as a
    good one: the good one fires; the bad one is tried once per claim lease, then ends audited."""
    rt = live.world.engine.rt
    now = live.world.clock.now()
    rt.store.add_timer("cart", "u00013", now + timedelta(minutes=5), "cart:u00013:poison", {"started_at": "garbage"})
    assert live.post({"user_id": "u00012", "name": "added_to_cart", "id": "c-12"}).status_code == 202
    live.world.advance_to(now + timedelta(minutes=6), every=timedelta(minutes=1))
    assert len(live.outbox("cart", "u00012")) == 1
    assert rt.store.query_audit(AuditQuery(actions=[LIVE_TIMER_FAILED])) == []  # not yet: it will be retried
    live.world.advance_to(now + timedelta(minutes=6) + MAX_TIMER_TRIES * rt.leases.timer, every=timedelta(minutes=1))
    [entry] = rt.store.query_audit(AuditQuery(actions=[LIVE_TIMER_FAILED]))
    assert (entry.name, entry.details["user_id"], entry.details["tries"]) == ("cart", "u00013", MAX_TIMER_TRIES)
    assert entry.details["reason"].startswith("ValueError")
    metrics = rt.metrics.render().decode()
    assert f'herald_live_event_failures_total{{campaign="cart",unit="timer"}} {MAX_TIMER_TRIES}.0' in metrics
    assert rt.store.due_timers("probe", live.world.clock.now() + timedelta(days=1), 10, rt.leases.timer) == []


def test_out_of_range_times_are_refused_per_event_by_index(live: Live) -> None:
    before = live.stored("u00009", "signed_up")
    answer = live.post([{"user_id": "u00009", "name": "signed_up", "ts": "2026-12-01T12:00:00Z"},
                        {"user_id": "u00009", "name": "signed_up", "ts": "0001-01-01T00:00:00Z"},
                        {"user_id": "u00009", "name": "signed_up", "ts": "9999-12-31T23:59Z"}])
    assert answer.status_code == 422
    errors = answer.json()["errors"]
    assert [e["index"] for e in errors] == [1, 2] and all("out of range" in e["message"] for e in errors)
    assert live.stored("u00009", "signed_up") == before


# ---------------------------------------------------------------- both stores


@pytest.fixture(params=["duckdb", "postgresql"])
def store(request: pytest.FixtureRequest) -> Iterator[AudienceStore]:
    url = "duckdb:///:memory:" if request.param == "duckdb" else request.getfixturevalue("pg_dsn")
    opened = open_audience_store(url)
    yield opened
    opened.close()


def ev(client_id: str | None, user: str = "u1", name: str = "signed_up", minutes: int = 0) -> EventRecord:
    return EventRecord(user, name, START + timedelta(minutes=minutes), {"n": minutes}, id=client_id)


def test_a_client_id_is_stored_once_per_user_and_event_name(store: AudienceStore) -> None:
    first = store.write_events([ev("a"), ev("b"), ev("a", minutes=5), ev(None), ev(None)])
    assert first.duplicate == [False, False, True, False, False]
    assert first.events[2].ts == START  # a duplicate carries the stored copy's time
    second = store.write_events([ev("a", minutes=9), ev("a", user="u2"), ev("a", name="purchase"), ev("c")])
    assert second.duplicate == [True, False, False, False]
    assert second.events[0].ts == START
    assert store.stats().events == 7
    assert store.insert_events([ev("c"), ev("d")]) == 1


def test_concurrent_writers_of_the_same_ids_store_each_once(store: AudienceStore) -> None:
    ids = [f"e{i}" for i in range(200)]
    results: list[list[bool]] = []
    errors: list[BaseException] = []

    def write(offset: int) -> None:
        try:
            batch = [ev(i, minutes=offset) for i in (ids if offset % 2 == 0 else list(reversed(ids)))]
            results.append(store.write_events(batch).duplicate)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert store.stats().events == len(ids)
    assert sum(dup.count(False) for dup in results) == len(ids)


def test_two_postgresql_stores_share_the_ids(pg_dsn: str) -> None:
    with open_audience_store(pg_dsn) as one, open_audience_store(pg_dsn) as two:
        assert one.write_events([ev("shared")]).duplicate == [False]
        assert two.write_events([ev("shared", minutes=3)]).duplicate == [True]
        assert two.stats().events == 1


def test_a_schema_version_1_postgresql_store_is_migrated(pg_dsn: str) -> None:
    with open_audience_store(pg_dsn) as store:
        store.insert_events([ev(None)])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # what version 1 looked like
        conn.execute("DROP TABLE event_ids")
        conn.execute("UPDATE audience_meta SET value = '1' WHERE key = 'schema_version'")
    with PostgresAudienceStore(pg_dsn) as migrated:
        assert migrated.write_events([ev("x"), ev("x")]).duplicate == [False, True]
        assert migrated.stats().events == 2
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT value FROM audience_meta WHERE key = 'schema_version'").fetchone()
        assert row is not None and row[0] == "2"


def test_a_duckdb_file_from_before_client_ids_gains_the_table_on_open(tmp_path: Path) -> None:
    url = f"duckdb:///{tmp_path / 'old.duckdb'}"
    with open_audience_store(url) as store:
        store.insert_events([ev(None)])
        store._fetchall(Fragment("DROP TABLE event_ids"))  # what a file written before client ids looks like
    with open_audience_store(url) as reopened:
        assert reopened.write_events([ev("x"), ev("x")]).duplicate == [False, True]
        assert reopened.stats().events == 2
