"""PostgreSQL backend (psycopg 3 + psycopg_pool): several daemons share one database.

Claims use `SELECT ... FOR UPDATE SKIP LOCKED`, so concurrent workers in any number of processes
never receive the same row; the applied-state row is locked `FOR UPDATE` while an apply runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from ..clock import Clock, DatabaseClock, SystemClock
from ..secrets import redact
from ._sql import SqlStateStore, canonical_json, utc
from .base import SendResult, StoreError
from .migrations import migrate_postgres

DEFAULT_MAX_CONNECTIONS = 8
CONNECT_TIMEOUT_SECONDS = 10.0


@lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    if "%" in sql:
        raise ValueError("shared SQL must not contain '%'; pass patterns as parameters")
    return sql.replace("?", "%s")


def safe_dsn(dsn: str) -> str:
    """The DSN with any password removed, for error messages."""
    without_userinfo_password = re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", dsn)
    return re.sub(r"(password=)[^&\s]+", r"\1***", without_userinfo_password)


class _PgTx:
    def __init__(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        self._conn = conn

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self._conn.execute(_pg_sql(sql), tuple(params))
        return cur.fetchall() if cur.description else []

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        return self._conn.execute(_pg_sql(sql), tuple(params)).fetchone()

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(_pg_sql(sql), tuple(params)).rowcount

    def many(self, sql: str, seq: Sequence[Sequence[Any]]) -> int:
        with self._conn.cursor() as cur:
            cur.executemany(_pg_sql(sql), [tuple(p) for p in seq])
            return cur.rowcount


class PostgresStateStore(SqlStateStore):
    dialect = "postgres"
    claim_lock = " FOR UPDATE OF o SKIP LOCKED"
    row_lock = " FOR UPDATE"

    def __init__(self, dsn: str, *, clock: Clock | None = None,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        super().__init__(clock)
        self.dsn = dsn
        self._migrate_once()
        self._pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] = ConnectionPool(
            dsn, min_size=1, max_size=max_connections, open=False,
            kwargs={"row_factory": dict_row, "autocommit": True},
            name="herald-state",
        )
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS)
        except PoolTimeout as exc:
            self._pool.close()
            raise StoreError(f"cannot connect to PostgreSQL at {safe_dsn(dsn)}") from exc
        if isinstance(self.clock, SystemClock):
            # Several daemons share this store: leases, claims, run times and scheduler watermarks are
            # all compared across hosts, so they are taken on the database's clock, not the host's.
            self.clock = DatabaseClock(self.database_time, local=self.clock)

    def database_time(self) -> datetime:
        """The database server's clock (clock_timestamp(): the time now, not the transaction's start)."""
        with self._transaction(write=False) as tx:
            row = tx.one("SELECT clock_timestamp() AS now")
        assert row is not None
        return utc(row["now"])

    def _migrate_once(self) -> None:
        """Connect once directly: a clear error at once if unreachable, and the schema migrated."""
        try:
            with psycopg.connect(self.dsn, connect_timeout=int(CONNECT_TIMEOUT_SECONDS), autocommit=True,
                                 row_factory=dict_row) as conn:
                migrate_postgres(conn)
        except psycopg.OperationalError as exc:
            reason = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            raise StoreError(f"cannot connect to PostgreSQL at {safe_dsn(self.dsn)}: {reason}") from None

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[_PgTx]:
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield _PgTx(conn)
        except psycopg.errors.IntegrityError as exc:
            raise StoreError(f"state store integrity error: {exc}") from exc
        except psycopg.OperationalError as exc:
            raise StoreError(f"state store error ({safe_dsn(self.dsn)}): {exc}") from exc

    def _record_results(self, tx: Any, worker_id: str, results: Sequence[SendResult], now: Any) -> list[int]:
        """One statement for the whole batch (arrays unnested), instead of a round trip per row."""
        if not results:
            return []
        columns = list(zip(*[
            (r.outbox_id, r.status, r.provider, r.provider_message_id, r.attempts,
             redact(r.error) if r.error else None, r.segments, r.cost, r.doubt_settled, r.doubt)
            for r in results], strict=True))
        rows = tx.rows(
            "UPDATE outbox AS o SET status = v.status, provider = v.provider, provider_message_id = v.mid,"
            " attempts = o.attempts + v.attempts, last_error = v.err, segments = v.segments, cost = v.cost,"
            " sent_at = CASE WHEN v.status = 'sent' THEN ?::timestamptz END,"
            " doubt_settled = coalesce(v.settled, o.doubt_settled), doubt = coalesce(v.doubt, o.doubt),"
            " claimed_by = NULL, lease_until = NULL, updated_at = ?"
            " FROM unnest(?::bigint[], ?::text[], ?::text[], ?::text[], ?::int[], ?::text[], ?::int[],"
            " ?::float8[], ?::text[], ?::text[]) AS v(id, status, provider, mid, attempts, err, segments, cost,"
            " settled, doubt)"
            " WHERE o.id = v.id AND o.status = 'claimed' AND o.claimed_by = ? RETURNING o.id",
            (now, now, *[list(column) for column in columns], worker_id))
        accepted = {int(r["id"]) for r in rows}
        return [r.outbox_id for r in results if r.outbox_id in accepted]

    def schema_version(self) -> int:
        with self._transaction(write=False) as tx:
            row = tx.one("SELECT max(version) AS v FROM schema_migrations")
        return int(row["v"]) if row and row["v"] is not None else 0

    def close(self) -> None:
        self._pool.close()

    # -- conversions
    def _ts(self, value: datetime | None) -> Any:
        return None if value is None else utc(value)

    def _dt(self, value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            return datetime.fromisoformat(value).astimezone(UTC)
        return value.astimezone(UTC)

    def _js(self, value: Any) -> Any:
        return Jsonb(value, dumps=canonical_json)

    def _obj(self, value: Any) -> Any:
        return value
