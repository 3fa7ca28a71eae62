"""Which runs are due at `now`, and what happens to runs missed while the daemon was down.

Definitions (Settings.catchUp):
- Due: runs that opened (Run.opens_at; the fire time in fixed mode) in (last_run_at, now].
- On time: a due run whose last recipient moment (closes_at) is at most `grace` old. Always run.
- Missed: a due run whose every recipient moment is older than `grace`.
  - skip:   missed runs are dropped.
  - all:    every missed run whose closes_at is at most maxAge old runs, oldest first.
  - latest: only the newest missed run, if at most maxAge old, and only when no run is on time
            (an on-time run is newer and supersedes it).
- Paused campaigns run nothing: all due runs are dropped, so resuming never replays the pause.
Pass the previous call's `now` as `last_run_at` (everything at or before it counts as handled).
Runs that opened before the catch-up horizon (now - max(maxAge, grace) - 26 h) could never run, so
they are not enumerated (nor listed in `skipped`): a long outage costs no more than a short one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..models import Campaign, Settings
from .fanout import ON_TIME_GRACE
from .recurrence import Run, scheduled_runs
from .zones import MAX_UTC_OFFSET, MIN_UTC_OFFSET, require_aware

RUN_SPAN = MAX_UTC_OFFSET - MIN_UTC_OFFSET  # opens_at to closes_at of a user-time-zone run (26 h)


@dataclass(frozen=True)
class CatchUpPlan:
    run: list[Run] = field(default_factory=list)
    """Runs to materialize now, oldest first (then apply `fanout_run` per zone)."""
    skipped: list[Run] = field(default_factory=list)
    """Due runs dropped by the policy (or because the campaign is paused); record them as skipped."""
    reason: str = ""


def plan_catch_up(
    campaign: Campaign,
    settings: Settings,
    *,
    created_at: datetime,
    last_run_at: datetime | None,
    now: datetime,
    grace: timedelta = ON_TIME_GRACE,
) -> CatchUpPlan:
    now = require_aware(now, "now")
    if campaign.spec.schedule is None:
        return CatchUpPlan()
    catch_up = settings.spec.catchUp
    horizon = now - max(catch_up.maxAge, grace) - RUN_SPAN
    after = max(last_run_at, horizon) if last_run_at else horizon
    due = scheduled_runs(campaign, settings, created_at=created_at, after=after, until=now, by="opens_at")
    if campaign.spec.paused:
        return CatchUpPlan(skipped=due, reason="paused")
    on_time = [run for run in due if run.closes_at >= now - grace]
    missed = [run for run in due if run.closes_at < now - grace]
    policy, max_age = catch_up.policy, catch_up.maxAge
    young = [run for run in missed if now - run.closes_at <= max_age]
    if policy == "skip" or not young:
        kept: list[Run] = []
    elif policy == "all":
        kept = young
    else:
        kept = [] if on_time else young[-1:]
    taken = set(kept)
    return CatchUpPlan(
        run=sorted(kept + on_time),
        skipped=[run for run in missed if run not in taken],
        reason=f"catch-up policy {policy}",
    )


def due_runs(
    campaign: Campaign,
    settings: Settings,
    *,
    created_at: datetime,
    last_run_at: datetime | None,
    now: datetime,
    grace: timedelta = ON_TIME_GRACE,
) -> list[datetime]:
    """Fire times (Run.at, UTC) to run now under Settings.catchUp; see the module docstring."""
    plan = plan_catch_up(campaign, settings, created_at=created_at, last_run_at=last_run_at, now=now, grace=grace)
    return [run.at for run in plan.run]


def next_due_at(
    campaign: Campaign, settings: Settings, *, created_at: datetime, after: datetime
) -> datetime | None:
    """When `plan_catch_up` next has something to do: the next run's opens_at after `after` (None: never).

    Store it per campaign and call `plan_catch_up` only once `now` reaches it. Paused campaigns still
    get a time, so their due runs are recorded as skipped and a resume never replays the pause.
    """
    runs = scheduled_runs(campaign, settings, created_at=created_at, after=after, limit=1, by="opens_at")
    return runs[0].opens_at if runs else None
