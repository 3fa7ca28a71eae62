"""DuckDB audience store: the embedded default (one file, columnar, vectorised segment queries).

DuckDB lets one process open a file for writing; while the daemon holds it, feed users and events
through the HTTP endpoints (or use PostgreSQL). Batches are bulk-loaded from a private temporary
NDJSON file with read_json, which is an order of magnitude faster than parameterised INSERTs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import duckdb

from .compiler import DUCKDB, Fragment
from .records import EventRecord, UserRecord
from .store import AudienceStore, AudienceStoreError, EventKey, event_key

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id VARCHAR PRIMARY KEY,
    phone VARCHAR,
    phone_valid BOOLEAN NOT NULL DEFAULT FALSE,
    timezone VARCHAR,
    country VARCHAR,
    created_at TIMESTAMPTZ,
    opted_out BOOLEAN NOT NULL DEFAULT FALSE,
    properties JSON NOT NULL DEFAULT '{}',
    updated_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS events (
    user_id VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    ts TIMESTAMPTZ NOT NULL,
    properties JSON NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS event_ids (
    user_id VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    client_id VARCHAR NOT NULL,
    ts TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, name, client_id)
);
"""
KNOWN_EVENT_IDS = """
SELECT e.user_id, e.name, e.client_id, e.ts FROM event_ids e
JOIN (SELECT unnest(?::VARCHAR[]) AS user_id, unnest(?::VARCHAR[]) AS name, unnest(?::VARCHAR[]) AS client_id) k
  ON e.user_id = k.user_id AND e.name = k.name AND e.client_id = k.client_id
"""
INSERT_EVENT_IDS = """
INSERT INTO event_ids (user_id, name, client_id, ts)
SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::TIMESTAMPTZ[])
"""

STAGED_USER_COLUMNS = (
    "{'id': 'VARCHAR', 'phone': 'VARCHAR', 'phone_valid': 'BOOLEAN', 'timezone': 'VARCHAR', "
    "'country': 'VARCHAR', 'created_at': 'TIMESTAMPTZ', 'opted_out': 'BOOLEAN', 'properties': 'JSON'}"
)
STAGED_EVENT_COLUMNS = "{'user_id': 'VARCHAR', 'name': 'VARCHAR', 'ts': 'TIMESTAMPTZ', 'properties': 'JSON'}"

MERGE_USERS = """
UPDATE users SET
    phone = COALESCE(s.phone, users.phone),
    phone_valid = COALESCE(s.phone_valid, users.phone_valid),
    timezone = COALESCE(s.timezone, users.timezone),
    country = COALESCE(s.country, users.country),
    created_at = COALESCE(s.created_at, users.created_at),
    opted_out = COALESCE(s.opted_out, users.opted_out),
    properties = json_merge_patch(users.properties, s.properties),
    updated_at = ?
FROM staged_users s WHERE users.id = s.id;
INSERT INTO users (id, phone, phone_valid, timezone, country, created_at, opted_out, properties, updated_at)
SELECT s.id, s.phone, COALESCE(s.phone_valid, FALSE), s.timezone, s.country, COALESCE(s.created_at, ?),
       COALESCE(s.opted_out, FALSE), json_merge_patch('{}', s.properties), ?
FROM staged_users s WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = s.id);
"""


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


class DuckDBAudienceStore(AudienceStore):
    dialect = DUCKDB

    def __init__(self, path: str, *, read_only: bool = False, config: dict[str, str] | None = None) -> None:
        super().__init__()
        self.path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(path, read_only=read_only, config=dict(config or {}))
        except duckdb.IOException as exc:
            raise AudienceStoreError(
                f"cannot open audience store {path}: {str(exc).splitlines()[0]} "
                "(another process — the daemon? — may hold it; ingest through its HTTP endpoints "
                "or use PostgreSQL)") from None
        self._con.execute("SET TimeZone = 'UTC'")  # offset-less ISO values are UTC, as in semantics.py
        self._lock = threading.RLock()
        self._event_ids_lock = threading.Lock()  # one writer of client event ids: check + insert is atomic
        self._spool = tempfile.mkdtemp(prefix="herald-audience-")
        if not read_only:
            self._con.execute(SCHEMA)

    @classmethod
    def from_url(cls, url: str) -> DuckDBAudienceStore:
        rest = url.removeprefix("duckdb:")
        rest, _, query = rest.partition("?")
        if rest.startswith("///"):
            path = rest[3:]
        elif rest.startswith("//"):
            path = rest[2:]
        else:
            path = rest
        if path in ("", "/"):
            path = ":memory:"
        options = {k: v[-1] for k, v in parse_qs(query).items()}
        read_only = options.pop("read_only", "false").lower() == "true"
        allowed = {"memory_limit", "threads", "temp_directory"}
        unknown = set(options) - allowed
        if unknown:
            raise AudienceStoreError(f"unknown duckdb URL option(s): {', '.join(sorted(unknown))}")
        return cls(path or ":memory:", read_only=read_only, config=options)

    def close(self) -> None:
        with self._lock:
            self._con.close()
            shutil.rmtree(self._spool, ignore_errors=True)

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            return self._con.cursor()

    def _fetchall(self, query: Fragment) -> list[tuple[Any, ...]]:
        sql, params = self.dialect.finish(query)
        cursor = self._cursor()
        try:
            return cursor.execute(sql, list(params)).fetchall()
        finally:
            cursor.close()

    def _stream(self, query: Fragment, batch_size: int) -> Iterator[list[tuple[Any, ...]]]:
        sql, params = self.dialect.finish(query)
        cursor = self._cursor()
        try:
            cursor.execute(sql, list(params))
            while rows := cursor.fetchmany(batch_size):
                yield rows
        finally:
            cursor.close()

    def _spool_file(self, lines: Iterator[str]) -> str:
        fd, path = tempfile.mkstemp(suffix=".jsonl", dir=self._spool)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.writelines(lines)
        return path

    def _merge_users(self, records: Sequence[UserRecord], now: datetime) -> None:
        path = self._spool_file(
            json.dumps({"id": r.id, "phone": r.phone, "phone_valid": r.phone_valid, "timezone": r.timezone,
                        "country": r.country, "created_at": _iso(r.created_at), "opted_out": r.opted_out,
                        "properties": r.properties}, ensure_ascii=False) + "\n"
            for r in records)
        try:
            with self._lock:
                cursor = self._con.cursor()
                try:
                    cursor.execute("BEGIN")
                    cursor.execute("CREATE OR REPLACE TEMP TABLE staged_users AS SELECT * FROM read_json(?, "
                                   f"format='newline_delimited', columns={STAGED_USER_COLUMNS})", [path])
                    update, insert = (s for s in MERGE_USERS.split(";") if s.strip())
                    cursor.execute(update, [now])
                    cursor.execute(insert, [now, now])
                    cursor.execute("DROP TABLE staged_users")
                    cursor.execute("COMMIT")
                except Exception:
                    cursor.execute("ROLLBACK")
                    raise
                finally:
                    cursor.close()
        finally:
            os.unlink(path)

    def _append_events(self, records: Sequence[EventRecord]) -> dict[EventKey, datetime]:
        cursor = self._cursor()
        try:
            if all(r.id is None for r in records):
                self._copy_events(cursor, records)
                return {}
            with self._event_ids_lock:
                cursor.execute("BEGIN")
                try:
                    known = self._known_event_ids(cursor, records)
                    fresh = [r for r in records if (key := event_key(r)) is None or key not in known]
                    with_ids = [r for r in fresh if r.id is not None]
                    if with_ids:
                        cursor.execute(INSERT_EVENT_IDS, [[r.user_id for r in with_ids], [r.name for r in with_ids],
                                                          [r.id for r in with_ids], [r.ts for r in with_ids]])
                    if fresh:
                        self._copy_events(cursor, fresh)
                    cursor.execute("COMMIT")
                except Exception:
                    cursor.execute("ROLLBACK")
                    raise
            return known
        finally:
            cursor.close()

    @staticmethod
    def _known_event_ids(cursor: duckdb.DuckDBPyConnection,
                         records: Sequence[EventRecord]) -> dict[EventKey, datetime]:
        keyed = [r for r in records if r.id is not None]
        rows = cursor.execute(KNOWN_EVENT_IDS, [[r.user_id for r in keyed], [r.name for r in keyed],
                                                [r.id for r in keyed]]).fetchall()
        return {(row[0], row[1], row[2]): row[3] for row in rows}

    def _copy_events(self, cursor: duckdb.DuckDBPyConnection, records: Sequence[EventRecord]) -> None:
        path = self._spool_file(
            json.dumps({"user_id": r.user_id, "name": r.name, "ts": r.ts.isoformat(),
                        "properties": r.properties}, ensure_ascii=False) + "\n"
            for r in records)
        try:
            cursor.execute("INSERT INTO events SELECT * FROM read_json(?, format='newline_delimited', "
                           f"columns={STAGED_EVENT_COLUMNS})", [path])
        finally:
            os.unlink(path)

    def snapshot_to(self, path: str) -> None:
        """Write a consistent copy of the whole store to `path` (replaced atomically), for readers in
        other processes while this one holds the file: DuckDB lets one process open it at a time."""
        staging = f"{path}.partial"
        for leftover in (staging, f"{staging}.wal"):
            if os.path.exists(leftover):
                os.unlink(leftover)
        with self._lock:
            cursor = self._con.cursor()
            try:
                source = cursor.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
                cursor.execute("ATTACH ? AS herald_snapshot", [staging])
                try:
                    cursor.execute(f'COPY FROM DATABASE "{source}" TO herald_snapshot')
                finally:
                    cursor.execute("DETACH herald_snapshot")
            finally:
                cursor.close()
        os.replace(staging, path)

    def execute_script(self, sql: str, params: list[Any] | None = None) -> None:
        """Run raw SQL (benchmarks and tests generate bulk data with it)."""
        cursor = self._cursor()
        try:
            cursor.execute(sql, params or [])
        finally:
            cursor.close()
