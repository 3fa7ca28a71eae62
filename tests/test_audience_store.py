"""The audience store itself: upserts, phone validation, streaming, events, URLs (DuckDB and PostgreSQL)."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from test_audience_support import (  # noqa: F401  (store fixtures)
    NOW,
    add_events,
    add_users,
    duck,
    ids,
    phone,
    rule,
    store,
)

from reconciler.audience import (
    AudienceStore,
    AudienceStoreError,
    RecordError,
    open_audience_store,
    parse_event,
    parse_user,
)
from reconciler.models.segment import PropertyPredicate


def test_phone_numbers_are_normalised_and_invalid_ones_kept_but_flagged(store: AudienceStore) -> None:  # noqa: F811
    add_users(store, [
        {"id": "local", "phone": "(415) 555-0101", "country": "US"},
        {"id": "intl", "phone": "+44 20 7946 0000"},
        {"id": "bad", "phone": "+1 555"},
        {"id": "junk", "phone": "call me"},
    ])
    local = store.get_user("local")
    assert local is not None and local.phone == "+14155550101" and local.country == "US" and local.reachable
    intl = store.get_user("intl")
    assert intl is not None and intl.phone == "+442079460000" and intl.country == "GB"
    bad = store.get_user("bad")
    assert bad is not None and bad.phone == "+1 555" and not bad.reachable
    assert ids(store, None) == {"local", "intl"}
    stats = store.stats()
    assert (stats.users, stats.reachable, stats.invalid_phone) == (4, 2, 2)


def test_reingesting_a_user_upserts(store: AudienceStore) -> None:  # noqa: F811
    add_users(store, [{"id": "u", "phone": phone(1), "timezone": "Asia/Kolkata", "plan": "free", "name": "Ann",
                       "created_at": "2026-01-01T00:00:00Z"}])
    add_users(store, [{"id": "u", "plan": "pro", "name": None, "city": "Pune"}], now=NOW + timedelta(days=3))
    user = store.get_user("u")
    assert user is not None
    assert user.phone == "+14155550001" and user.timezone == "Asia/Kolkata"  # not given: kept
    assert user.properties == {"plan": "pro", "city": "Pune"}  # merged; null removed the key
    assert user.created_at is not None and user.created_at.isoformat().startswith("2026-01-01")
    add_users(store, [{"id": "u", "opted_out": True}])
    assert store.get_user("u").reachable is False  # type: ignore[union-attr]
    assert store.count(None, NOW) == 0
    add_users(store, [{"id": "u", "subscribed": True}])
    assert store.count(None, NOW) == 1
    assert store.stats().users == 1


def test_nested_property_patches_merge(store: AudienceStore) -> None:  # noqa: F811
    add_users(store, [{"id": "u", "phone": phone(1), "address": {"city": "Paris", "zip": "75001"}}])
    add_users(store, [{"id": "u", "address": {"zip": None, "street": "Rue X"}}])
    user = store.get_user("u")
    assert user is not None and user.properties == {"address": {"city": "Paris", "street": "Rue X"}}


def test_duplicate_ids_in_one_batch_merge_in_order(store: AudienceStore) -> None:  # noqa: F811
    store.upsert_users([parse_user({"id": "u", "phone": phone(1), "a": 1}),
                        parse_user({"id": "u", "b": 2}),
                        parse_user({"id": "u", "a": 3, "timezone": "UTC"})], now=NOW)
    user = store.get_user("u")
    assert user is not None and user.properties == {"a": 3, "b": 2} and user.timezone == "UTC"


def test_members_stream_in_bounded_batches(store: AudienceStore) -> None:  # noqa: F811
    add_users(store, [{"id": f"u{i:03d}", "phone": phone(i), "n": i} for i in range(250)])
    batches = list(store.iter_members(rule({"property": {"name": "n", "op": "lt", "value": 200}}), NOW,
                                      batch_size=64))
    assert [len(b) for b in batches] == [64, 64, 64, 8]
    flat = [m.user_id for b in batches for m in b]
    assert set(flat) == {f"u{i:03d}" for i in range(200)} and len(flat) == 200
    by_id = [m.user_id for b in store.iter_members(None, NOW, batch_size=100, order="id") for m in b]
    assert by_id == sorted(by_id) and len(by_id) == 250
    assert store.get_user("u000").properties == {"n": 0}  # type: ignore[union-attr]


def test_count_events_and_events_for(store: AudienceStore) -> None:  # noqa: F811
    add_users(store, [{"id": "u", "phone": phone(1)}])
    add_events(store, [
        {"user_id": "u", "name": "added_to_cart", "ts": (NOW - timedelta(minutes=m)).isoformat(), "value": m}
        for m in (1, 6, 30)] + [{"user_id": "u", "name": "purchase", "ts": (NOW - timedelta(minutes=2)).isoformat()}])
    assert store.count_events("u", "added_to_cart", now=NOW) == 3
    assert store.count_events("u", "added_to_cart", now=NOW, since=NOW - timedelta(minutes=10)) == 2
    expensive = [PropertyPredicate(name="value", op="gte", value=6)]
    assert store.count_events("u", "added_to_cart", now=NOW, where=expensive) == 2
    assert store.count_events("u", "purchase", now=NOW - timedelta(minutes=5)) == 0  # not yet at that time
    events = store.events_for("u", "added_to_cart", NOW - timedelta(hours=1), now=NOW)
    assert [e.properties["value"] for e in events] == [30, 6, 1]
    assert store.stats().events == 4


def test_record_validation() -> None:
    with pytest.raises(RecordError, match="'id' is required"):
        parse_user({"phone": phone(1)})
    with pytest.raises(RecordError, match="time zone"):
        parse_user({"id": "u", "timezone": "Mars/Olympus"})
    with pytest.raises(RecordError, match="country"):
        parse_user({"id": "u", "country": "USA"})
    with pytest.raises(RecordError, match="opted_out"):
        parse_user({"id": "u", "opted_out": "maybe"})
    with pytest.raises(RecordError, match="ts"):
        parse_event({"user_id": "u", "name": "e"})
    with pytest.raises(RecordError, match="ISO 8601"):
        parse_event({"user_id": "u", "name": "e", "ts": "yesterday"})
    assert parse_event({"user_id": 7, "name": "e"}, now=NOW).ts == NOW
    assert parse_event({"user_id": "u", "name": "e", "ts": 0}).ts.year == 1970
    assert parse_user({"id": "u", "properties": {"a": 1}, "b": 2}).properties == {"a": 1, "b": 2}


def test_duckdb_file_store_persists(tmp_path: Path) -> None:
    url = f"duckdb:///{tmp_path}/sub/audience.duckdb"
    with open_audience_store(url) as first:
        add_users(first, [{"id": "u", "phone": phone(1)}])
    with open_audience_store(url + "?read_only=true") as reader:
        assert reader.count(None, NOW) == 1


def test_duckdb_file_held_by_another_process_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "held.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('ready', flush=True); "
                               "sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(AudienceStoreError, match="another process"):
            open_audience_store(f"duckdb:///{path}")
    finally:
        holder.communicate("", timeout=30)


def test_store_urls() -> None:
    with pytest.raises(AudienceStoreError, match="duckdb:/// or postgresql://"):
        open_audience_store("mysql://x")
    with pytest.raises(AudienceStoreError, match="unknown duckdb URL option"):
        open_audience_store("duckdb:///:memory:?cache=1")
    with open_audience_store("duckdb:///:memory:?memory_limit=256MB&threads=1") as memory:
        assert memory.count(None, NOW) == 0


@pytest.mark.postgres
def test_postgres_store_is_shared_by_several_processes(pg_dsn: str) -> None:
    """Two daemons open the same schema at once (migration under an advisory lock) and share data."""
    opened: list[AudienceStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            opened.append(open_audience_store(pg_dsn))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(opened) == 3
    add_users(opened[0], [{"id": "u", "phone": phone(1)}])
    add_users(opened[1], [{"id": "u", "plan": "pro"}])
    user = opened[2].get_user("u")
    assert user is not None and user.properties == {"plan": "pro"} and user.phone == "+14155550001"
    for one in opened:
        one.close()


@pytest.mark.postgres
def test_postgres_unreachable_is_a_clear_error() -> None:
    with pytest.raises(AudienceStoreError, match="cannot open PostgreSQL"):
        from reconciler.audience.postgres_store import PostgresAudienceStore

        PostgresAudienceStore("postgresql://postgres@127.0.0.1:1/none?connect_timeout=1", open_timeout=1)
