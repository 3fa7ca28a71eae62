"""Engine behaviour through real stores and the mock provider: safety gate, live triggers and
inaction timers, render failures, validity expiry, frequency caps, crash re-claim."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from example_repo import example_sources, settings_yaml

from reconciler.audience.records import parse_event, parse_user
from reconciler.demo import DemoWorld, demo_phone, demo_world
from reconciler.runtime import OUTBOX_LEASE
from reconciler.store.base import AuditQuery

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SETTINGS = settings_yaml("frequencyCap: {perDay: 1}", "catchUp: {policy: latest, maxAge: 6h}")


def campaign(name: str, spec: str) -> str:
    return f"apiVersion: herald/v1\nkind: Campaign\nmetadata: {{name: {name}}}\nspec:\n{spec}"


BLOCKED = campaign("too-big", """  type: past_behavior
  owner: owner@example.com
  schedule: {once: "2026-12-01T13:00:00Z"}
  audience: {safetyLimit: 5}
  message: {body: "Everyone {{ user.first_name }}"}
""")
CART = campaign("cart", """  type: live
  owner: owner@example.com
  trigger:
    inaction:
      event: {name: added_to_cart}
      missing: {name: purchase}
      within: 5m
  frequencyCap: {ignoreGlobal: true}
  message: {body: "Your {{ event.item }} is waiting"}
""")
WELCOME = campaign("welcome", """  type: live
  owner: owner@example.com
  trigger: {event: {name: signed_up}}
  message: {body: "Welcome {{ user.first_name }}{% if user.vip %} {{ user.missing | upcase }}{% endif %}"}
  validity: 10m
""")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[DemoWorld]:
    sources = example_sources(tmp_path / "source", {"settings": SETTINGS, "blocked": BLOCKED, "cart": CART,
                                                    "welcome": WELCOME})
    with demo_world(tmp_path / "world", population=20, start=START, sources=sources) as w:
        w.engine.rt.audience.upsert_users([parse_user({"id": "vip", "phone": "+14155550999", "timezone": "UTC",
                                                       "first_name": "Val", "vip": True})], now=START)
        w.step()
        yield w


def received(world: DemoWorld) -> list[dict[str, object]]:
    return httpx.get(f"{world.mock_url}/_mock/messages").json()["messages"]


def ingest(world: DemoWorld, *events: dict[str, object]) -> None:
    records = [parse_event(e) for e in events]
    world.engine.rt.audience.insert_events(records)
    world.engine.on_events(records)


def test_safety_limit_blocks_run_audits_and_alerts(world: DemoWorld, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        world.advance_to(datetime(2026, 12, 1, 13, 5, tzinfo=UTC), every=timedelta(minutes=30))
    store = world.engine.rt.store
    [run] = store.list_runs(campaign="too-big")
    assert run.status == "blocked" and run.targeted == 21
    assert received(world) == []
    [entry] = store.query_audit(AuditQuery(campaign="too-big", actions=["run_blocked"]))
    assert entry.details["safety"]["qualified"] == 21 and entry.details["safety"]["limit"] == 5
    assert entry.commit_sha == store.applied_state().commit_sha
    assert "safety_block" in caplog.text and "owner@example.com" in caplog.text


def test_inaction_timer_fires_unless_the_missing_event_arrives(world: DemoWorld) -> None:
    now = world.clock.now()
    ingest(world,
           {"user_id": "u00001", "name": "added_to_cart", "ts": now.isoformat(), "item": "hat"},
           {"user_id": "u00002", "name": "added_to_cart", "ts": now.isoformat(), "item": "scarf"})
    world.advance_to(now + timedelta(minutes=3), every=timedelta(minutes=1))
    ingest(world, {"user_id": "u00002", "name": "purchase", "ts": world.clock.now().isoformat()})
    assert received(world) == []  # nothing before the 5 minutes are up
    world.advance_to(now + timedelta(minutes=6), every=timedelta(minutes=1))
    bodies = [m["body"] for m in received(world)]
    assert bodies == ["Your hat is waiting"]
    ingest(world, {"user_id": "u00001", "name": "added_to_cart", "ts": now.isoformat(), "item": "hat"})
    world.advance_to(now + timedelta(minutes=12), every=timedelta(minutes=1))
    assert len(received(world)) == 1  # the same event again starts no second timer


def test_render_failure_is_a_recorded_skip_not_a_crash(world: DemoWorld) -> None:
    now = world.clock.now()
    ingest(world, {"user_id": "vip", "name": "signed_up", "ts": now.isoformat()},
           {"user_id": "u00003", "name": "signed_up", "ts": now.isoformat()})
    world.step(sync=False)
    assert [m["to"] for m in received(world)] == [demo_phone("IN", 3)]  # u00003 lives in India
    store = world.engine.rt.store
    [skipped] = store.list_outbox(campaign="welcome", statuses=["skipped"])
    assert skipped.user_id == "vip" and skipped.skip_reason is not None
    assert skipped.skip_reason.startswith("render_error")
    [entry] = store.query_audit(AuditQuery(campaign="welcome", actions=["skip"]))
    assert entry.details["reason"].startswith("render_error") and entry.details["users"] == ["vip"]


def test_messages_past_their_validity_expire_unsent(world: DemoWorld) -> None:
    store = world.engine.rt.store
    now = world.clock.now()
    ingest(world, {"user_id": "u00004", "name": "signed_up", "ts": now.isoformat()})
    world.clock.advance(timedelta(minutes=11))  # the daemon was stuck longer than the validity
    world.step(sync=False)
    assert received(world) == []
    [row] = store.list_outbox(campaign="welcome")
    assert row.status == "expired"
    assert store.query_audit(AuditQuery(actions=["expire"]))


def test_global_frequency_cap_skips_the_second_message_of_the_day(world: DemoWorld) -> None:
    store = world.engine.rt.store
    now = world.clock.now()
    ingest(world, {"user_id": "u00005", "name": "signed_up", "ts": now.isoformat()})
    world.step(sync=False)
    ingest(world, {"user_id": "u00005", "name": "signed_up", "ts": (now + timedelta(minutes=1)).isoformat()})
    world.step(sync=False)
    rows = store.list_outbox(campaign="welcome")
    assert sorted(r.status for r in rows) == ["sent", "skipped"]
    assert next(r for r in rows if r.status == "skipped").skip_reason == "frequency_cap: global_cap"
    assert len(received(world)) == 1


def test_a_dead_workers_claim_it_never_sent_is_sent_once_with_the_same_key(world: DemoWorld) -> None:
    """Claimed, then the worker died before marking any attempt: nothing can have gone out, so the
    next claim sends it normally — no lookup, no doubt."""
    store = world.engine.rt.store
    now = world.clock.now()
    ingest(world, {"user_id": "u00006", "name": "signed_up", "ts": now.isoformat()})
    [claimed] = store.claim("dead-worker", 10, now, OUTBOX_LEASE)
    world.step(sync=False)
    assert received(world) == []  # still leased to the dead worker
    world.clock.advance(OUTBOX_LEASE + timedelta(seconds=1))
    world.step(sync=False)
    messages = received(world)
    assert len(messages) == 1 and messages[0]["idempotency_key"] == claimed.idempotency_key
    [row] = store.list_outbox(campaign="welcome")
    assert row.status == "sent" and row.doubt is None and row.attempted_claim == 2
    assert httpx.get(f"{world.mock_url}/_mock/stats").json()["providers"]["twilio"].get("lookups", 0) == 0


def test_a_dead_workers_claim_is_in_doubt_and_settled_by_the_groups_policy(world: DemoWorld) -> None:
    """The worker may have sent before dying, so the row is in doubt at every provider of its group
    (global: twilio-us, vonage-global, acme-sms). Twilio is asked first (not found); the others have no
    lookup, so the group's default `inDoubt: skip` records it skipped with the reason — never resent."""
    store = world.engine.rt.store
    now = world.clock.now()
    ingest(world, {"user_id": "u00006", "name": "signed_up", "ts": now.isoformat()})
    [claimed] = store.claim("dead-worker", 10, now, OUTBOX_LEASE)
    assert store.mark_attempted([claimed.idempotency_key]) == 1  # about to send it, then the worker died
    world.step(sync=False)
    assert received(world) == []  # still leased to the dead worker
    world.clock.advance(OUTBOX_LEASE + timedelta(seconds=1))
    world.step(sync=False)  # re-claimed: in doubt, waits for Twilio's lookup delay
    [waiting] = store.list_outbox(campaign="welcome")
    assert waiting.status == "pending" and waiting.doubt is not None
    world.clock.advance(timedelta(seconds=31))
    world.step(sync=False)
    assert received(world) == []
    assert store.complete("dead-worker", []) == []
    [row] = store.list_outbox(campaign="welcome")
    assert row.id == claimed.id and row.status == "skipped" and row.doubt_settled == "skipped"
    assert (row.skip_reason or "").startswith("in_doubt: may have been sent by vonage-global, acme-sms")
    assert httpx.get(f"{world.mock_url}/_mock/stats").json()["providers"]["twilio"]["lookups"] == 1
    [skip] = store.query_audit(AuditQuery(name="welcome", actions=["skip"]))
    assert skip.details["messages"] == 1 and skip.details["reason"].startswith("in_doubt:")


def test_a_late_purchase_does_not_cancel_a_newer_carts_timer(world: DemoWorld) -> None:
    now = world.clock.now()
    old_cart = {"user_id": "u00007", "name": "added_to_cart", "ts": (now - timedelta(minutes=20)).isoformat(),
                "item": "old"}
    new_cart = {"user_id": "u00007", "name": "added_to_cart", "ts": now.isoformat(), "item": "new"}
    ingest(world, new_cart, old_cart)  # the old cart arrives late; its timer is already due
    purchase = {"user_id": "u00007", "name": "purchase", "ts": (now - timedelta(minutes=18)).isoformat()}
    ingest(world, purchase)  # answers the old cart (within 5 min of it), not the new one
    world.advance_to(now + timedelta(minutes=6), every=timedelta(minutes=1))
    assert [m["body"] for m in received(world)] == ["Your new is waiting"]
