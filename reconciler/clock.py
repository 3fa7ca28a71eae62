"""Time is injected: the core asks a Clock, tests move a FakeClock instead of sleeping."""

from __future__ import annotations

import math
import os
import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol

CLOCK_OFFSET_ENV = "HERALD_CLOCK_OFFSET"
MAX_CLOCK_OFFSET = timedelta(days=3650)


class Clock(Protocol):
    def now(self) -> datetime:
        """Current time, timezone-aware (UTC)."""
        ...


class ClockOffsetError(ValueError):
    """HERALD_CLOCK_OFFSET / --clock-offset is not a number of seconds within ten years."""


def parse_clock_offset(value: str | float | None) -> timedelta:
    """Seconds (may be negative or fractional) → timedelta; empty/None → zero."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return timedelta(0)
    try:
        seconds = float(value)
    except ValueError:
        raise ClockOffsetError(f"clock offset must be a number of seconds, got {value!r}") from None
    if not math.isfinite(seconds) or abs(seconds) > MAX_CLOCK_OFFSET.total_seconds():
        raise ClockOffsetError(f"clock offset must be finite and within ten years, got {value!r}")
    return timedelta(seconds=seconds)


class SystemClock:
    """The wall clock, shifted by a fixed offset (default: HERALD_CLOCK_OFFSET seconds, else none).

    The offset exists for tests and drills: it places a daemon at another hour of the day (tests that
    must pass at any hour are run with the daemon's clock at 03:00, 09:00, 15:00, 21:00 and across a
    DST change) or skews one daemon against the others. The offset is fixed for the life of the
    object, so a restarted process with the same offset continues the same timeline.
    """

    def __init__(self, offset: timedelta | None = None) -> None:
        self.offset = parse_clock_offset(os.environ.get(CLOCK_OFFSET_ENV)) if offset is None else offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset if self.offset else datetime.now(UTC)


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start")
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._now += delta
            return self._now

    def set(self, moment: datetime) -> None:
        with self._lock:
            self._now = moment
