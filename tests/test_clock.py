"""The wall clock's test-only offset (HERALD_CLOCK_OFFSET / `herald run --clock-offset`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.clock import CLOCK_OFFSET_ENV, ClockOffsetError, SystemClock, parse_clock_offset


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
