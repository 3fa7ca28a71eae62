"""Time is injected: the core asks a Clock, tests move a FakeClock instead of sleeping."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

CLOCK_OFFSET_ENV = "HERALD_CLOCK_OFFSET"
CLOCK_SKEW_ENV = "HERALD_CLOCK_SKEW"
DATABASE_RESYNC = timedelta(seconds=10)
LOG = logging.getLogger("herald.clock")
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
    """The wall clock, for tests and drills shifted by two fixed amounts (seconds, from the environment
    unless given):

    - `offset` (HERALD_CLOCK_OFFSET, `herald run --clock-offset`) places the whole world at another
      time: tests that must pass at any hour run with it at 03:00, 09:00, 15:00, 21:00 and across DST
      changes. A DatabaseClock applies it too.
    - `skew` (HERALD_CLOCK_SKEW) makes this machine's clock wrong, as an unsynchronised host's is: a
      DatabaseClock corrects it (and reports it).

    Both are fixed for the life of the object, so a restarted process continues the same timeline.
    """

    def __init__(self, offset: timedelta | None = None, skew: timedelta | None = None) -> None:
        self.offset = parse_clock_offset(os.environ.get(CLOCK_OFFSET_ENV)) if offset is None else offset
        self.skew = parse_clock_offset(os.environ.get(CLOCK_SKEW_ENV)) if skew is None else skew

    def now(self) -> datetime:
        shift = self.offset + self.skew
        return datetime.now(UTC) + shift if shift else datetime.now(UTC)


class DatabaseClock:
    """The shared store's clock, read locally: several daemons that compare leases, claims and
    watermarks must agree on time, and a host's clock may be minutes off.

    Invariants: now() = the database's time at the last sync + monotonic time elapsed since (+ the
    placement offset of tests), so it never depends on the host's wall clock; and it never goes
    backwards (a resync that would move it back holds it until the database's time catches up). The
    database is asked again every `resync` (one query per interval, on the caller's thread); when it
    cannot answer, time goes on from the last sync. `skew()` is how far the host's clock is from it.
    """

    def __init__(self, read_database: Callable[[], datetime], local: SystemClock | None = None,
                 resync: timedelta = DATABASE_RESYNC) -> None:
        self._read = read_database
        self.local = local or SystemClock()
        self._resync = resync.total_seconds()
        self._lock = threading.Lock()
        # Until the database first answers, the host's clock (without its skew) stands in.
        self._base, self._mono = datetime.now(UTC), time.monotonic()
        self._next_sync = 0.0
        self._skew = timedelta(0)
        self._last = datetime.min.replace(tzinfo=UTC)
        self.sync()

    def sync(self) -> None:
        """Ask the database for its time; the answer is taken as of the middle of the round trip."""
        before, local_before = time.monotonic(), self.local.now()
        try:
            remote = self._read()
        except Exception as exc:  # the store is down: keep counting from the last answer
            LOG.warning("cannot read the database's clock (%s); continuing from the last sync", type(exc).__name__)
            with self._lock:
                self._next_sync = before + self._resync
            return
        after = time.monotonic()
        half = (after - before) / 2
        with self._lock:
            self._base, self._mono, self._next_sync = remote, before + half, after + self._resync
            self._skew = local_before + timedelta(seconds=half) - self.local.offset - remote

    def _database_now(self) -> datetime:
        if time.monotonic() >= self._next_sync:
            self.sync()
        with self._lock:
            self._last = max(self._last, self._base + timedelta(seconds=time.monotonic() - self._mono))
            return self._last

    def now(self) -> datetime:
        return self._database_now() + self.local.offset

    def skew(self) -> timedelta:
        """The host's clock minus the database's (positive: the host is ahead), as of the last sync."""
        with self._lock:
            return self._skew


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
