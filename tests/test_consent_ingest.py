"""Consent changes made by a bulk users ingest (IngestLedger): only real changes are recorded, with
source ingest, FILE:LINE, the FakeClock's time, one audit append per batch; a refused row records
nothing; a state store that cannot be reached never fails the ingest and every change it missed is
named. DuckDB and PostgreSQL audience stores."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from test_audience_support import NOW

from reconciler import consent
from reconciler.audience import AudienceStore, open_audience_store
from reconciler.audience.ingest import ingest_file
from reconciler.clock import FakeClock
from reconciler.store import StateStore, open_state_store


@pytest.fixture(params=["duckdb", "postgresql"])
def audience(request: pytest.FixtureRequest) -> Iterator[AudienceStore]:
    url = "duckdb:///:memory:" if request.param == "duckdb" else request.getfixturevalue("pg_dsn")
    store = open_audience_store(url)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def state(tmp_path: Path, clock: FakeClock) -> Iterator[StateStore]:
    store = open_state_store(f"sqlite:///{tmp_path / 'state.db'}", clock=clock)
    try:
        yield store
    finally:
        store.close()


class CountingStore:
    """The state store, counting audit appends (the ledger must batch them)."""

    def __init__(self, store: StateStore) -> None:
        self.store, self.appends = store, 0

    def append_audit_bulk(self, records: Any) -> None:
        self.appends += 1
        self.store.append_audit_bulk(records)

    def close(self) -> None:  # the test owns the store
        pass


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _ledger(store: Any, clock: FakeClock, file: Path) -> consent.IngestLedger:
    return consent.IngestLedger(lambda: store, clock, "ops", str(file))


def _entries(state: StateStore) -> list[tuple[str, bool, str | None, str]]:
    return [(e["users"][0], e["opted_out"], e["message"], e["at"]) for e in consent.consent_ledger(state)]


def test_only_real_changes_are_recorded_with_file_line_and_time(tmp_path: Path, audience: AudienceStore,
                                                                state: StateStore, clock: FakeClock) -> None:
    first = _jsonl(tmp_path / "first.jsonl", [
        {"id": "a", "phone": "+14155550100", "opted_out": False},  # new, opted in: no change
        {"id": "b", "phone": "+14155550101", "opted_out": True},  # new, opted out: recorded
        {"id": "c", "phone": "+14155550102"},  # states nothing
        {"id": "d", "phone": "+14155550103", "subscribed": False},  # new, opted out
    ])
    counting = CountingStore(state)
    ledger = _ledger(counting, clock, first)
    report = ingest_file(audience, first, "users", now=NOW, batch_size=2, on_consent=ledger)
    assert report.accepted == 4 and ledger.recorded == 2 and ledger.unrecorded == 0
    assert counting.appends == 2  # one per batch that changed consent (batches of 2)
    at = clock.now().isoformat()
    assert _entries(state) == [("b", True, f"{first}:2", at), ("d", True, f"{first}:4", at)]
    assert audience.unreachable(["a", "b", "c", "d"]) == {"b": "opted_out", "d": "opted_out"}

    clock.advance(timedelta(hours=3))
    second = _jsonl(tmp_path / "second.jsonl", [
        {"id": "a", "opted_out": True},  # flips: recorded
        {"id": "b", "opted_out": True},  # already out: nothing
        {"id": "c", "opted_out": False},  # already in: nothing
        {"id": "d", "subscribed": False},
        {"id": "d", "subscribed": True},  # the last row of the batch for d wins: opted back in
    ])
    counting.appends = 0
    ledger = _ledger(counting, clock, second)
    ingest_file(audience, second, "users", now=NOW, on_consent=ledger)
    later = clock.now().isoformat()
    assert counting.appends == 1 and ledger.recorded == 2
    assert _entries(state)[2:] == [("a", True, f"{second}:1", later), ("d", False, f"{second}:5", later)]
    assert audience.unreachable(["a", "b", "c", "d"]) == {"a": "opted_out", "b": "opted_out"}
    entry = consent.consent_ledger(state)[-1]
    assert (entry["source"], entry["phone"], entry["provider"]) == ("ingest", "+14155550103", None)
    assert {row["users"][0] for row in consent.current_optouts(consent.consent_ledger(state))} == {"a", "b"}


def test_a_file_without_consent_changes_never_opens_the_state_store(tmp_path: Path, audience: AudienceStore,
                                                                   clock: FakeClock) -> None:
    file = _jsonl(tmp_path / "users.jsonl", [{"id": f"u{i}", "phone": f"+1415555{i:04d}"} for i in range(20)])

    def unreachable() -> StateStore:
        raise AssertionError("opened the state store without a consent change")

    ledger = consent.IngestLedger(unreachable, clock, "ops", str(file))
    assert ingest_file(audience, file, "users", now=NOW, batch_size=7, on_consent=ledger).accepted == 20
    assert ledger.recorded == ledger.unrecorded == 0 and ledger.error is None


def test_a_refused_row_records_nothing_its_batch_neighbours_do(tmp_path: Path, audience: AudienceStore,
                                                              state: StateStore, clock: FakeClock,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch the store refuses is rewritten row by row: only stored rows' changes are recorded."""
    upsert = audience.upsert_users

    def refusing(records: Any, *, now: Any) -> int:
        records = list(records)
        if any(r.id == "bad" for r in records):
            raise ValueError("refused")
        return upsert(records, now=now)

    monkeypatch.setattr(audience, "upsert_users", refusing)
    file = _jsonl(tmp_path / "users.jsonl", [{"id": "x", "opted_out": True}, {"id": "bad", "opted_out": True},
                                             {"id": "y", "opted_out": True}])
    ledger = _ledger(state, clock, file)
    report = ingest_file(audience, file, "users", now=NOW, on_consent=ledger)
    assert (report.accepted, report.rejected) == (2, 1)
    assert [(user, message) for user, _, message, _ in _entries(state)] == [("x", f"{file}:1"), ("y", f"{file}:3")]


def test_an_unreachable_state_store_never_fails_the_ingest(tmp_path: Path, audience: AudienceStore,
                                                           clock: FakeClock) -> None:
    file = _jsonl(tmp_path / "users.jsonl", [{"id": f"u{i}", "opted_out": i % 2 == 0} for i in range(10)])
    opened = []

    def down() -> StateStore:
        opened.append(1)
        return open_state_store("postgresql://nobody:secret-pw@127.0.0.1:1/none")

    ledger = consent.IngestLedger(down, clock, "ops", str(file))
    report = ingest_file(audience, file, "users", now=NOW, batch_size=3, on_consent=ledger)
    assert report.accepted == 10 and audience.stats().opted_out == 5  # the audience store has them all
    assert (ledger.recorded, ledger.unrecorded) == (0, 5) and len(opened) == 1  # not retried per batch
    assert [(r.user_id, r.line) for r in ledger.unrecorded_rows] == [(f"u{i}", i + 1) for i in range(0, 10, 2)]
    assert ledger.error and "secret-pw" not in ledger.error


def test_the_ledger_on_a_postgresql_state_store(tmp_path: Path, pg_dsn: str, clock: FakeClock) -> None:
    """The batched audit append (one statement per batch) on PostgreSQL: every entry, in file order."""
    file = _jsonl(tmp_path / "users.jsonl", [{"id": f"u{i}", "opted_out": i % 3 == 0} for i in range(30)])
    state = open_state_store(pg_dsn, clock=clock)
    audience = open_audience_store("duckdb:///:memory:")
    try:
        ledger = _ledger(state, clock, file)
        ingest_file(audience, file, "users", now=NOW, batch_size=4, on_consent=ledger)
        assert [(user, message) for user, _, message, _ in _entries(state)] == [
            (f"u{i}", f"{file}:{i + 1}") for i in range(0, 30, 3)]
    finally:
        audience.close()
        state.close()
