"""`herald ingest`: a hostile row is skipped and reported by line; every good row is stored.

Each store (DuckDB, PostgreSQL) gets the same files; rows hold what once stored nothing and printed
a traceback: lone surrogates, NUL characters, numbers no store can compare, nesting no decoder takes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_audience_support import NOW, phone

from reconciler.audience import AudienceStoreError, open_audience_store, parse_user
from reconciler.audience.ingest import ingest_stream
from reconciler.cli import main

GOOD = [f'{{"id": "g{n}", "phone": "{phone(n)}", "score": {n}}}' for n in range(1, 5)]


def _user(user_id: str, n: int, extra: str = "") -> str:
    """One JSONL user line, written raw so it can hold what json.dumps would never write."""
    return '{"id": "' + user_id + '", "phone": "' + phone(n) + '"' + extra + "}"


# (JSONL line, reason printed for it); every one is a single bad row.
HOSTILE_JSONL = [
    (_user("s1", 11, ', "name": "\\ud800"'), "'name' contains a lone surrogate"),
    (_user("s2", 12, ', "tags": ["ok", "\\udfff"]'), "'tags' contains a lone surrogate"),
    (_user("n1\\u0000", 13), "'id' contains a NUL character"),
    (_user("n2", 14, ', "properties": {"k\\u0000": 1}'), "'properties.k\\x00' contains a NUL character"),
    (_user("n3", 15, ', "name": "a\x00b"'), "invalid JSON: Invalid control character"),
    (_user("b1", 16, ', "score": ' + "9" * 5000), "more than 4300 digits"),
    (_user("b2", 17, ', "score": 1' + "0" * 400), "integer outside the 64-bit range"),
    (_user("b3", 18, ', "score": 1e400'), "no NaN or Infinity"),
    (_user("d1", 19, ', "deep": ' + "[" * 100_000 + "]" * 100_000), "nested too deeply"),
    (_user("d2", 20, ', "deep": ' + "[" * 40 + "]" * 40), "nests deeper than 32 levels"),
]


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "duckdb":
        yield f"duckdb:///{tmp_path}/audience.duckdb"
    else:
        yield request.getfixturevalue("pg_dsn")


def _ingest(kind: str, path: Path, store_url: str, *extra: str) -> Any:
    return CliRunner().invoke(main, ["ingest", kind, str(path), "--store", store_url, *extra],
                              catch_exceptions=False)


def _stored_users(store_url: str) -> set[str]:
    with open_audience_store(store_url) as store:
        return {m.user_id for batch in store.iter_members(None, NOW) for m in batch}


@pytest.mark.parametrize("batch_size", ["1", "3", "5000"])
def test_hostile_jsonl_rows_are_skipped_by_line(tmp_path: Path, store_url: str, batch_size: str) -> None:
    lines = [GOOD[0], *[row for row, _ in HOSTILE_JSONL[:5]], GOOD[1], *[row for row, _ in HOSTILE_JSONL[5:]],
             *GOOD[2:]]
    source = tmp_path / "users.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    result = _ingest("users", source, store_url, "--batch-size", batch_size)
    assert result.exit_code == 1
    assert "Traceback" not in result.output + result.stderr
    for row, reason in HOSTILE_JSONL:
        line = lines.index(row) + 1
        assert f"{source}:{line}: " in result.stderr and reason in result.stderr.split(f"{source}:{line}: ")[1]
    assert f"4 stored, {len(HOSTILE_JSONL)} rejected of {len(lines)} rows" in result.stderr
    assert _stored_users(store_url) == {"g1", "g2", "g3", "g4"}


def test_hostile_events_are_skipped_by_line(tmp_path: Path, store_url: str) -> None:
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join([
        '{"user_id": "u1", "name": "buy", "ts": "2026-11-01T00:00:00Z"}',
        '{"user_id": "u1", "name": "b\\ud800y", "ts": "2026-11-01T00:00:00Z"}',
        '{"user_id": "u1\\u0000", "name": "buy", "ts": "2026-11-01T00:00:00Z"}',
        '{"user_id": "u1", "name": "buy", "ts": "2026-11-01T00:00:00Z", "n": 1' + "0" * 30 + "}",
        '{"user_id": "u2", "name": "buy", "ts": "2026-11-02T00:00:00Z"}',
    ]) + "\n", encoding="utf-8")
    result = _ingest("events", source, store_url)
    assert result.exit_code == 1
    assert [line.split(": ")[0] for line in result.stderr.splitlines() if line.startswith(str(source))] == [
        f"{source}:2", f"{source}:3", f"{source}:4"]
    assert "2 stored, 3 rejected of 5 rows" in result.stderr
    with open_audience_store(store_url) as store:
        assert store.stats().events == 2


def test_hostile_csv_rows_are_skipped_by_line(tmp_path: Path, store_url: str) -> None:
    source = tmp_path / "users.csv"
    rows = [
        b"id,phone,name,properties",
        f"g1,{phone(1)},Ann,".encode(),
        f"s1,{phone(2)},".encode() + "\ud800".encode("utf-8", "surrogatepass") + b",",  # CESU bytes: not UTF-8
        f"n1,{phone(3)},a\x00b,".encode(),
        f'n2,{phone(4)},Bo,"{{""k"": ""\\u0000""}}"'.encode(),
        f'd1,{phone(5)},Cy,"{"[" * 50_000}"'.encode(),
        f'b1,{phone(6)},Di,"{{""n"": 1{"0" * 400}}}"'.encode(),
        f"g2,{phone(7)},Eve,".encode(),
    ]
    source.write_bytes(b"\n".join(rows) + b"\n")
    result = _ingest("users", source, store_url)
    assert result.exit_code == 1
    reported = {int(line.split(":")[1]) for line in result.stderr.splitlines() if line.startswith(str(source))}
    assert reported == {3, 4, 5, 6, 7}
    assert "row is not valid UTF-8" in result.stderr and "NUL character" in result.stderr
    assert _stored_users(store_url) == {"g1", "g2"}


class _RefusingStore:
    """A store whose driver refuses any batch holding user `poison` (or every batch)."""

    def __init__(self, refuse_all: bool = False) -> None:
        self.stored: list[str] = []
        self.refuse_all = refuse_all

    def upsert_users(self, records: list[Any], *, now: Any) -> int:
        if self.refuse_all or any(r.id == "poison" for r in records):
            raise ValueError("driver: cannot encode row")
        self.stored.extend(r.id for r in records)
        return len(records)


def test_a_row_the_store_refuses_is_isolated_within_its_batch() -> None:
    users = ["a", "b", "poison", "c", "d"]
    rows = iter([(n + 1, {"id": u, "phone": phone(n + 1)}) for n, u in enumerate(users)])
    store = _RefusingStore()
    report = ingest_stream(store, rows, "users", now=NOW, batch_size=4)  # type: ignore[arg-type]
    assert store.stored == ["a", "b", "c", "d"]
    assert report.accepted == 4 and report.rejected == 1
    assert report.errors[0].line == 3 and "refused the row: ValueError: driver" in report.errors[0].message


def test_a_store_refusing_everything_is_a_store_failure() -> None:
    rows = iter([(n, {"id": f"u{n}", "phone": phone(n)}) for n in range(1, 6)])
    with pytest.raises(AudienceStoreError, match="refused every row of a batch"):
        ingest_stream(_RefusingStore(refuse_all=True), rows, "users", now=NOW, batch_size=5)  # type: ignore[arg-type]


def test_storable_records_are_unchanged() -> None:
    """The checks refuse only what cannot be stored: 64-bit extremes, 32 levels, any Unicode pass."""
    record = parse_user({"id": "u", "phone": phone(1), "big": 2**63 - 1, "small": -(2**63), "emoji": "Zoë 🎁",
                         "deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]})
    assert record.properties["big"] == 2**63 - 1 and record.properties["emoji"] == "Zoë 🎁"
