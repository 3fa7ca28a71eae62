"""What /healthz says: `ok`, or `degraded` with every unit that needs an operator named and why.

Health is derived from what is stuck, not from whether the process is alive (a daemon that serves
HTTP while its head commit cannot be applied, or while a run failed, is alive but not well):
- commit: the branch head could not be read or applied (the last good state keeps running);
- run:    a run ended `failed` within FAILED_RUN_WINDOW (its reason is in the report and audit log);
- run / outbox / timer: claimed work whose lease ended STUCK_AFTER ago and nobody took it over;
- clock:  on a shared store, this host's clock is more than HERALD_MAX_CLOCK_SKEW seconds (default 5)
          from the database's (the daemon itself runs on the database's clock, so it stays correct).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from .clock import DatabaseClock
from .runtime import Runtime
from .store.base import HealthProblem

FAILED_RUN_WINDOW = timedelta(hours=24)
STUCK_AFTER = timedelta(minutes=5)
DEFAULT_MAX_CLOCK_SKEW = 5.0
MAX_CLOCK_SKEW_ENV = "HERALD_MAX_CLOCK_SKEW"


def max_clock_skew(environ: Any = None) -> float:
    value = (os.environ if environ is None else environ).get(MAX_CLOCK_SKEW_ENV)
    try:
        return float(value) if value else DEFAULT_MAX_CLOCK_SKEW
    except ValueError:
        return DEFAULT_MAX_CLOCK_SKEW


def clock_skew_seconds(rt: Runtime) -> float | None:
    """This host's clock minus the shared store's (None when the daemon runs on its own clock)."""
    return rt.clock.skew().total_seconds() if isinstance(rt.clock, DatabaseClock) else None


def health_problems(rt: Runtime, last_error: dict[str, Any] | None, now: datetime,
                    skew: float | None) -> list[HealthProblem]:
    """What /healthz names; `skew` is clock_skew_seconds(rt), read once by the caller."""
    problems: list[HealthProblem] = []
    if last_error:
        problems.append(HealthProblem("commit", "branch head",
                                      f"{last_error.get('stage', 'reconcile')}: {last_error.get('message', '')}"
                                      "; the last applied state keeps running"))
    problems += rt.store.health_problems(now, failed_since=now - FAILED_RUN_WINDOW, stuck_after=STUCK_AFTER)
    limit = max_clock_skew()
    if skew is not None and abs(skew) > limit:
        problems.append(HealthProblem("clock", "host clock",
                                      f"{skew:+.1f} s from the database's clock (limit {limit:g} s);"
                                      " this daemon uses the database's time"))
    return problems


def health_report(rt: Runtime, last_error: dict[str, Any] | None) -> dict[str, Any]:
    skew = clock_skew_seconds(rt)
    problems = health_problems(rt, last_error, rt.clock.now(), skew)
    if skew is not None:
        rt.metrics.clock_skew.set(skew)
    for unit in ("commit", "run", "outbox", "timer", "clock"):
        rt.metrics.health_problems.labels(unit=unit).set(sum(1 for p in problems if p.unit == unit))
    return {"status": "degraded" if problems else "ok", "problems": [asdict(p) for p in problems],
            "clock_skew_seconds": None if skew is None else round(skew, 3)}
