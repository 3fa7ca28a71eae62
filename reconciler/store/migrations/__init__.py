"""Numbered SQL migrations per dialect (NNNN_name.sql), recorded in `schema_migrations`.

Stores migrate when they open. Each run holds a lock for its whole transaction (SQLite: BEGIN
IMMEDIATE; PostgreSQL: an advisory lock keyed by the schema), so two daemons opening the same
database at once apply each migration exactly once, and re-running is a no-op.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources
from typing import Any

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(dialect: str) -> list[Migration]:
    folder = resources.files(__package__).joinpath(dialect)
    found = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers for {dialect}: {versions}")
    return found


def sqlite_statements(script: str) -> list[str]:
    """Split a script into statements (trigger bodies included) without executescript's implicit COMMIT."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        if not buffer and (not line.strip() or line.lstrip().startswith("--")):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement at the end of a migration: {buffer[:80]!r}")
    return statements


_CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at {ts} NOT NULL)"
)


def migrate_sqlite(conn: sqlite3.Connection, now: str) -> list[int]:
    """Apply pending migrations inside the caller's BEGIN IMMEDIATE transaction."""
    conn.execute(_CREATE_TABLE.format(ts="TEXT"))
    done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    applied = []
    for migration in migrations("sqlite"):
        if migration.version in done:
            continue
        for statement in sqlite_statements(migration.sql):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                     (migration.version, migration.name, now))
        applied.append(migration.version)
    return applied


def migrate_postgres(conn: Any) -> list[int]:
    """Apply pending migrations in one transaction on a psycopg connection."""
    applied = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('herald-migrations:' || current_schema()))")
        conn.execute(_CREATE_TABLE.format(ts="TIMESTAMPTZ"))
        done = {row["version"] for row in conn.execute("SELECT version FROM schema_migrations").fetchall()}
        for migration in migrations("postgres"):
            if migration.version in done:
                continue
            conn.execute(migration.sql)
            conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, now())",
                         (migration.version, migration.name))
            applied.append(migration.version)
    return applied
