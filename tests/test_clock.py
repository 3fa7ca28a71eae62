"""The wall clock's test-only offset (HERALD_CLOCK_OFFSET / `herald run --clock-offset`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.clock import (
    CLOCK_OFFSET_ENV,
    CLOCK_SKEW_ENV,
    ClockOffsetError,
    DatabaseClock,
    SystemClock,
    parse_clock_offset,
)


def test_system_clock_follows_the_offset_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CLOCK_OFFSET_ENV, "-36000.5")
    shifted = SystemClock().now()
    real = datetime.now(UTC)
    assert timedelta(hours=-10, seconds=-2) < shifted - real < timedelta(hours=-10, seconds=1)
    assert shifted.tzinfo is not None


def test_an_explicit_offset_wins_and_none_means_the_real_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CLOCK_OFFSET_ENV, "3600")
    assert abs((SystemClock(timedelta(0)).now() - datetime.now(UTC)).total_seconds()) < 1
    monkeypatch.delenv(CLOCK_OFFSET_ENV)
    assert abs((SystemClock().now() - datetime.now(UTC)).total_seconds()) < 1


@pytest.mark.parametrize("bad", ["ten", "nan", "inf", "1e12", "--5"])
def test_a_bad_offset_is_refused_with_its_value(bad: str) -> None:
    with pytest.raises(ClockOffsetError, match="clock offset"):
        parse_clock_offset(bad)


def test_herald_run_refuses_a_bad_clock_offset_before_starting(tmp_path) -> None:
    result = CliRunner().invoke(main, ["run", "--repo", str(tmp_path), "--clock-offset", "soon",
                                       "--state", f"sqlite:///{tmp_path / 's.db'}"])
    assert result.exit_code == 2
    assert "--clock-offset" in result.output and "'soon'" in result.output


class _Database:
    """A database clock that can fail, for the DatabaseClock's fallbacks."""

    def __init__(self, at: datetime) -> None:
        self.at, self.reads, self.down = at, 0, False

    def read(self) -> datetime:
        self.reads += 1
        if self.down:
            raise ConnectionError("database down")
        return self.at


def test_database_clock_runs_on_the_databases_time_and_reports_the_hosts_skew() -> None:
    database = _Database(datetime(2026, 3, 29, 0, 59, tzinfo=UTC))
    clock = DatabaseClock(database.read, local=SystemClock(offset=timedelta(0), skew=timedelta(minutes=10)),
                          resync=timedelta(hours=1))
    assert abs(clock.now() - database.at) < timedelta(seconds=1)
    real_skew = datetime.now(UTC) - database.at + timedelta(minutes=10)
    assert abs(clock.skew() - real_skew) < timedelta(seconds=1)
    assert database.reads == 1  # no query per now(): one per resync interval


def test_database_clock_keeps_counting_when_the_database_is_down_and_never_goes_back() -> None:
    database = _Database(datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    clock = DatabaseClock(database.read, resync=timedelta(0))
    first = clock.now()
    database.down = True
    second = clock.now()
    assert first <= second < first + timedelta(seconds=1)
    database.down, database.at = False, database.at - timedelta(minutes=5)  # the database was set back
    assert clock.now() >= second


@pytest.mark.postgres
def test_two_postgres_stores_agree_on_time_whatever_their_hosts_clocks_say(
        pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from reconciler.store import open_state_store

    monkeypatch.setenv(CLOCK_SKEW_ENV, "600")
    fast = open_state_store(pg_dsn)
    monkeypatch.setenv(CLOCK_SKEW_ENV, "-600")
    slow = open_state_store(pg_dsn)
    try:
        assert isinstance(fast.clock, DatabaseClock) and isinstance(slow.clock, DatabaseClock)
        assert abs(fast.clock.now() - slow.clock.now()) < timedelta(seconds=1)
        assert abs(fast.clock.skew().total_seconds() - 600) < 5
        assert abs(slow.clock.skew().total_seconds() + 600) < 5
    finally:
        fast.close()
        slow.close()
