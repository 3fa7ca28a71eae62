"""PostgreSQL audience store: for production, shared by several daemons.

Connections come from a psycopg pool; batches are COPYed into a temporary staging table and merged.
Schema setup runs under an advisory lock so daemons starting together do not race.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from ..secrets import redact
from .compiler import POSTGRES, Fragment
from .records import EventRecord, UserRecord
from .store import AudienceStore, AudienceStoreError, EventKey, event_key

SCHEMA_VERSION = 2  # 2: event_ids (client event ids, stored once)
MIGRATION_LOCK = 0x4845524C  # "HERL": one advisory lock id for audience schema setup

SCHEMA = r"""
CREATE TABLE IF NOT EXISTS audience_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    id text PRIMARY KEY,
    phone text,
    phone_valid boolean NOT NULL DEFAULT FALSE,
    timezone text,
    country text,
    created_at timestamptz,
    opted_out boolean NOT NULL DEFAULT FALSE,
    properties jsonb NOT NULL DEFAULT '{}',
    updated_at timestamptz
);
CREATE TABLE IF NOT EXISTS events (
    user_id text NOT NULL,
    name text NOT NULL,
    ts timestamptz NOT NULL,
    properties jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_name_ts ON events (name, ts) INCLUDE (user_id);
CREATE INDEX IF NOT EXISTS events_user_name_ts ON events (user_id, name, ts);
CREATE TABLE IF NOT EXISTS event_ids (
    user_id text NOT NULL,
    name text NOT NULL,
    client_id text NOT NULL,
    ts timestamptz NOT NULL,
    PRIMARY KEY (user_id, name, client_id)
);

-- ISO 8601 text to timestamptz; an offset-less value is UTC; anything unparsable is NULL.
CREATE OR REPLACE FUNCTION herald_try_timestamptz(value text) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF value ~ '[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+){0,1}){0,1}(Z|[+-][0-9]{2}(:{0,1}[0-9]{2}){0,1})$' THEN
        RETURN value::timestamptz;
    END IF;
    RETURN value::timestamp AT TIME ZONE 'UTC';
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$;

-- RFC 7396 JSON merge patch (what DuckDB's json_merge_patch does): null removes a key.
CREATE OR REPLACE FUNCTION herald_merge_patch(target jsonb, patch jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    result jsonb := CASE WHEN jsonb_typeof(target) = 'object' THEN target ELSE '{}'::jsonb END;
    k text;
    v jsonb;
BEGIN
    IF patch IS NULL OR jsonb_typeof(patch) <> 'object' THEN
        RETURN patch;
    END IF;
    FOR k, v IN SELECT key, value FROM jsonb_each(patch) LOOP
        IF jsonb_typeof(v) = 'null' THEN
            result := result - k;
        ELSE
            result := jsonb_set(result, ARRAY[k], herald_merge_patch(result -> k, v));
        END IF;
    END LOOP;
    RETURN result;
END $$;
"""

MERGE_UPDATE = """
UPDATE users SET
    phone = COALESCE(s.phone, users.phone),
    phone_valid = COALESCE(s.phone_valid, users.phone_valid),
    timezone = COALESCE(s.timezone, users.timezone),
    country = COALESCE(s.country, users.country),
    created_at = COALESCE(s.created_at, users.created_at),
    opted_out = COALESCE(s.opted_out, users.opted_out),
    properties = herald_merge_patch(users.properties, s.properties),
    updated_at = %s
FROM staged_users s WHERE users.id = s.id
"""
MERGE_INSERT = """
INSERT INTO users (id, phone, phone_valid, timezone, country, created_at, opted_out, properties, updated_at)
SELECT s.id, s.phone, COALESCE(s.phone_valid, FALSE), s.timezone, s.country, COALESCE(s.created_at, %s),
       COALESCE(s.opted_out, FALSE), herald_merge_patch('{}'::jsonb, s.properties), %s
FROM staged_users s
ON CONFLICT (id) DO NOTHING
"""
# Sorted, so concurrent transactions claiming overlapping ids lock them in one order (no deadlock).
CLAIM_EVENT_IDS = """
INSERT INTO event_ids (user_id, name, client_id, ts)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[]) AS k(user_id, name, client_id, ts)
ORDER BY user_id, name, client_id
ON CONFLICT DO NOTHING
RETURNING user_id, name, client_id
"""
KNOWN_EVENT_IDS = """
SELECT e.user_id, e.name, e.client_id, e.ts FROM event_ids e
JOIN unnest(%s::text[], %s::text[], %s::text[]) AS k(user_id, name, client_id)
  ON e.user_id = k.user_id AND e.name = k.name AND e.client_id = k.client_id
"""
STAGING = """
CREATE TEMP TABLE IF NOT EXISTS staged_users (
    id text, phone text, phone_valid boolean, timezone text, country text, created_at timestamptz,
    opted_out boolean, properties jsonb
) ON COMMIT DELETE ROWS
"""


class PostgresAudienceStore(AudienceStore):
    dialect = POSTGRES

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 8, open_timeout: float = 10.0) -> None:
        super().__init__()
        self.url = url
        try:
            self._pool = ConnectionPool(url, min_size=min_size, max_size=max_size, open=True,
                                        kwargs={"autocommit": False}, configure=self._configure)
            self._pool.wait(timeout=open_timeout)
            self._migrate()
        except Exception as exc:
            pool = getattr(self, "_pool", None)
            if pool is not None:
                pool.close()
            detail = redact(str(exc).strip().splitlines()[0]) if str(exc).strip() else ""
            raise AudienceStoreError(f"cannot open PostgreSQL audience store: {type(exc).__name__}"
                                     + (f" ({detail})" if detail else "")) from None

    @staticmethod
    def _configure(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SET TIME ZONE 'UTC'")
        conn.commit()

    def _migrate(self) -> None:
        with self._pool.connection() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            exists = conn.execute("SELECT to_regclass('audience_meta') IS NOT NULL").fetchone()
            current = None
            if exists and exists[0]:
                row = conn.execute("SELECT value FROM audience_meta WHERE key = 'schema_version'").fetchone()
                current = int(row[0]) if row else None
            if current != SCHEMA_VERSION:
                conn.execute(SCHEMA)
                conn.execute("INSERT INTO audience_meta (key, value) VALUES ('schema_version', %s) "
                             "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self._pool.close()

    def _fetchall(self, query: Fragment) -> list[tuple[Any, ...]]:
        sql, params = self.dialect.finish(query)
        with self._pool.connection() as conn:
            return conn.execute(sql, params).fetchall()

    def _stream(self, query: Fragment, batch_size: int) -> Iterator[list[tuple[Any, ...]]]:
        sql, params = self.dialect.finish(query)
        with self._pool.connection() as conn, conn.cursor(name="herald_members") as cursor:
            cursor.itersize = batch_size
            cursor.execute(sql, params)
            while rows := cursor.fetchmany(batch_size):
                yield rows

    def _merge_users(self, records: Sequence[UserRecord], now: datetime) -> None:
        with self._pool.connection() as conn:
            conn.execute(STAGING)
            with conn.cursor() as cursor:
                with cursor.copy("COPY staged_users (id, phone, phone_valid, timezone, country, created_at, "
                                 "opted_out, properties) FROM STDIN") as copy:
                    for r in records:
                        copy.write_row((r.id, r.phone, r.phone_valid, r.timezone, r.country, r.created_at,
                                        r.opted_out, Jsonb(r.properties)))
                cursor.execute(MERGE_UPDATE, (now,))
                cursor.execute(MERGE_INSERT, (now, now))

    def _append_events(self, records: Sequence[EventRecord]) -> dict[EventKey, datetime]:
        """One transaction: claim the client ids (a concurrent claim of the same id waits for the
        other transaction, then finds it), then COPY the events whose id was claimed or absent."""
        with self._pool.connection() as conn, conn.cursor() as cursor:
            keyed = [r for r in records if r.id is not None]
            known: dict[EventKey, datetime] = {}
            if keyed:
                columns = [[r.user_id for r in keyed], [r.name for r in keyed], [r.id for r in keyed]]
                claimed = {tuple(row) for row in cursor.execute(CLAIM_EVENT_IDS, (*columns, [r.ts for r in keyed]))}
                taken = [r for r in keyed if event_key(r) not in claimed]
                if taken:
                    rows = cursor.execute(KNOWN_EVENT_IDS, ([r.user_id for r in taken], [r.name for r in taken],
                                                            [r.id for r in taken])).fetchall()
                    known = {(row[0], row[1], row[2]): row[3] for row in rows}
            fresh = [r for r in records if (key := event_key(r)) is None or key not in known]
            with cursor.copy("COPY events (user_id, name, ts, properties) FROM STDIN") as copy:
                for r in fresh:
                    copy.write_row((r.user_id, r.name, r.ts, Jsonb(r.properties)))
            return known
