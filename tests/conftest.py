"""Shared fixtures: the example repo, a fake clock, and isolated PostgreSQL / Redis access."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.clock import FakeClock

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PATHS = [ROOT / "providers", ROOT / "campaigns"]
PG_BASE_DSN = os.environ.get("HERALD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("HERALD_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def example_paths() -> list[Path]:
    return list(EXAMPLE_PATHS)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 12, 1, 8, 0, tzinfo=UTC))


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """A DSN whose search_path is a fresh schema, dropped afterwards, so tests never collide."""
    if not _port_open("127.0.0.1", 5432):
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432, and CI must test against it")
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_BASE_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_BASE_DSN else "?"
    yield f"{PG_BASE_DSN}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(PG_BASE_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def redis_url() -> str:
    if not _port_open("127.0.0.1", 6379):
        if os.environ.get("CI") == "true":
            pytest.fail("Redis is not reachable on 127.0.0.1:6379, and CI must test against it")
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    return REDIS_URL
