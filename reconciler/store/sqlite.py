"""SQLite backend: one file, WAL, one connection per thread, writers serialized by BEGIN IMMEDIATE."""

from __future__ import annotations

import json
import sqlite3
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from ..clock import Clock
from ._sql import SqlStateStore, canonical_json, utc
from .base import StoreError, StoreNotFoundError
from .migrations import migrate_sqlite

BUSY_TIMEOUT_SECONDS = 30.0
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self._conn.execute(sql, tuple(params)).fetchall()]

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        row = self._conn.execute(sql, tuple(params)).fetchone()
        return dict(row) if row is not None else None

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, tuple(params)).rowcount

    def many(self, sql: str, seq: Sequence[Sequence[Any]]) -> int:
        return self._conn.executemany(sql, [tuple(p) for p in seq]).rowcount


class SqliteStateStore(SqlStateStore):
    dialect = "sqlite"

    def __init__(self, path: str | Path, *, clock: Clock | None = None, create: bool = True) -> None:
        super().__init__(clock)
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        if str(path) == ":memory:":
            # Per-thread connections need a shared file; a private temporary one behaves the same.
            self._tempdir = tempfile.TemporaryDirectory(prefix="herald-state-")
            path = Path(self._tempdir.name) / "state.db"
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise StoreNotFoundError(f"no state store at {self.path}")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        # Foreign keys are off while migrating, so a migration can rebuild a table (SQLite's documented
        # way to change a constraint); the references are checked before the migration commits.
        self._connection().execute("PRAGMA foreign_keys = OFF")
        try:
            with self._raw_transaction(write=True) as conn:
                migrate_sqlite(conn, self._ts(self.clock.now()))
                broken = conn.execute("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise StoreError(f"a migration broke {len(broken)} foreign key reference(s); nothing applied")
        finally:
            self._connection().execute("PRAGMA foreign_keys = ON")

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise StoreError("the state store is closed")
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the SQLite state store at {self.path}: {exc}") from exc
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    @contextmanager
    def _raw_transaction(self, write: bool) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[_SqliteTx]:
        try:
            with self._raw_transaction(write) as conn:
                yield _SqliteTx(conn)
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"state store integrity error: {exc}") from exc
        except sqlite3.OperationalError as exc:
            raise StoreError(f"state store error: {exc}") from exc

    def schema_version(self) -> int:
        with self._transaction(write=False) as tx:
            row = tx.one("SELECT max(version) AS v FROM schema_migrations")
        return int(row["v"]) if row and row["v"] is not None else 0

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    # -- conversions
    def _ts(self, value: datetime | None) -> Any:
        return None if value is None else utc(value).strftime(_TS_FORMAT)

    def _dt(self, value: Any) -> datetime | None:
        return None if value is None else datetime.fromisoformat(value)

    def _js(self, value: Any) -> Any:
        return canonical_json(value)

    def _obj(self, value: Any) -> Any:
        return None if value is None else json.loads(value)
