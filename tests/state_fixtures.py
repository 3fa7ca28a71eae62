"""Fixtures for the state-store tests: every test that takes `store` runs on SQLite and PostgreSQL.

Use them from a test module with `pytest_plugins = ["state_fixtures"]`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.clock import FakeClock
from reconciler.store import StateStore, open_state_store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    return str(request.getfixturevalue("pg_dsn"))


@pytest.fixture
def store(store_url: str, clock: FakeClock) -> Iterator[StateStore]:
    opened = open_state_store(store_url, clock=clock)
    yield opened
    opened.close()


@pytest.fixture
def raw_sql(store_url: str) -> Callable[[str], None]:
    return lambda sql: raw_execute(store_url, sql)


def raw_execute(url: str, sql: str) -> None:
    """Run SQL on a connection of our own, bypassing the store API (append-only checks)."""
    if url.startswith("sqlite:///"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            conn.execute(sql)
        finally:
            conn.close()
    else:
        import psycopg

        with psycopg.connect(url, autocommit=True) as pg:
            pg.execute(sql)
