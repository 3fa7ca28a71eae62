"""Shared fixtures: the example repo, a fake clock, and isolated PostgreSQL / Redis access."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.clock import CLOCK_OFFSET_ENV, FakeClock, SystemClock

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PATHS = [ROOT / "providers", ROOT / "campaigns"]
PG_BASE_DSN = os.environ.get("HERALD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("HERALD_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _place_the_clock() -> None:
    """HERALD_TEST_CLOCK_AT=<ISO instant> runs this session as if the wall clock had read that instant when
    it started: every SystemClock (in this process and, through the harness, in every daemon it starts)
    is shifted by one offset fixed here, so time still moves and restarted daemons continue the same
    timeline. tests/test_time_of_day.py uses it to run the real-clock tests at several hours of a day."""
    at = os.environ.get("HERALD_TEST_CLOCK_AT")
    if not at:
        return
    moment = datetime.fromisoformat(at.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise pytest.UsageError("HERALD_TEST_CLOCK_AT needs a UTC offset, e.g. 2026-03-29T00:59:30Z")
    os.environ[CLOCK_OFFSET_ENV] = f"{(moment - datetime.now(UTC)).total_seconds():.3f}"


_place_the_clock()
CLOCK_READERS: set[str] = set()
# Modules whose tests read the wall clock: a daemon process, a `herald` subprocess or a SystemClock in
# this process. They carry the `realclock` marker, and tests/test_time_of_day.py runs them with the
# clock placed at several hours of a day. `HERALD_TRACE_CLOCK=FILE pytest` fails any other test that
# reads the clock in this process (and lists every reader in FILE), so this set stays complete.
REALCLOCK_MODULES = {
    "test_audience_cli", "test_clock", "test_dashboard_progress", "test_freeze_apply", "test_plan_cli",
    "test_plan_review", "test_providers_mock", "test_ratelimit_workers", "test_reliability_crash",
    "test_reliability_git", "test_reliability_load", "test_security_http", "test_security_linked",
    "test_reliability_skew", "test_security_secrets", "test_hostile_daemon", "test_deploy_daemon",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in REALCLOCK_MODULES:
            item.add_marker(pytest.mark.realclock)
CPU_HOGS: list[subprocess.Popen[bytes]] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    """HERALD_TEST_CPU_HOGS=N runs N busy-loop processes beside the whole session (the suite must pass
    on a busy machine: `HERALD_TEST_CPU_HOGS=2 pytest`)."""
    count = int(os.environ.get("HERALD_TEST_CPU_HOGS") or 0)
    for _ in range(count):
        CPU_HOGS.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))


@pytest.fixture(autouse=True)
def _trace_wall_clock(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """With HERALD_TRACE_CLOCK=FILE, list every test that reads the wall clock in this process (a
    SystemClock) or starts a daemon (which runs on it): those must carry the `realclock` marker, so
    that tests/test_time_of_day.py runs them at every hour it checks."""
    if not os.environ.get("HERALD_TRACE_CLOCK"):
        yield
        return
    original = SystemClock.now

    def traced(self: SystemClock) -> datetime:
        CLOCK_READERS.add(request.node.nodeid)
        return original(self)

    monkeypatch.setattr(SystemClock, "now", traced)
    yield
    if request.node.nodeid in CLOCK_READERS and request.node.get_closest_marker("realclock") is None:
        pytest.fail(f"{request.node.nodeid} reads the wall clock: add its module to REALCLOCK_MODULES "
                    "(tests/conftest.py) or give it a FakeClock")


def pytest_sessionfinish(session: pytest.Session) -> None:
    for hog in CPU_HOGS:
        hog.kill()
        hog.wait()
    target = os.environ.get("HERALD_TRACE_CLOCK")
    if target:
        Path(target).write_text("".join(f"{node}\n" for node in sorted(CLOCK_READERS)))


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
