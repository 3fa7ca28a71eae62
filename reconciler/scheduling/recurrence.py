"""When a scheduled (past_behavior) campaign runs: once, dates, cron, every N days/weeks/months.

Schedules are enumerated as *wall clock* times in the campaign zone (croniter runs on naive datetimes,
so it never sees DST), and each wall time is then resolved to UTC with the rule in `zones`.

A run is identified by its nominal wall clock time (`Run.local`). In user-time-zone mode one run
reaches every recipient at that wall time in their own zone, so it spans [opens_at, closes_at]:
from the moment the easternmost zone (UTC+14) reaches it to the moment the westernmost (UTC-12) does.
"""

from __future__ import annotations

import calendar
import copy
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from typing import Literal

from croniter import CroniterBadDateError, croniter

from ..models import Campaign, Settings
from ..models.campaign import Every, Schedule
from ..models.common import minutes_of
from .zones import (
    MAX_UTC_OFFSET,
    MIN_UTC_OFFSET,
    as_utc,
    as_wall,
    campaign_zone,
    gap_margin,
    local_to_utc,
    require_aware,
    uses_user_timezone,
    utc_to_local,
)

RunKey = Literal["at", "opens_at"]
_WEEKDAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}


@dataclass(frozen=True, order=True)
class Run:
    """One occurrence of a schedule.

    at:        UTC instant of the run in the campaign zone (the fallback zone in user mode).
    local:     nominal wall clock time from the schedule (naive); identifies the run.
    opens_at:  first moment any recipient is due (== at in fixed mode; local at UTC+14 in user mode).
    closes_at: last moment any recipient is due (== at in fixed mode; local at UTC-12 in user mode).
    """

    at: datetime
    local: datetime
    opens_at: datetime
    closes_at: datetime

    @property
    def key(self) -> str:
        """Stable run identifier, e.g. '2026-12-07T10:00' (use it in idempotency keys)."""
        return self.local.isoformat(timespec="minutes")


def campaign_window(campaign: Campaign, settings: Settings) -> tuple[datetime | None, datetime | None]:
    """The campaign's [start, end) in UTC; naive Timestamps are read in the campaign zone."""
    zone = campaign_zone(campaign, settings)
    spec = campaign.spec
    start = as_utc(spec.start, zone) if spec.start else None
    end = as_utc(spec.end, zone) if spec.end else None
    return start, end


def in_campaign_window(campaign: Campaign, settings: Settings, moment: datetime) -> bool:
    start, end = campaign_window(campaign, settings)
    return (start is None or moment >= start) and (end is None or moment < end)


def earliest_fire(campaign: Campaign, settings: Settings, created_at: datetime) -> datetime:
    """Nothing fires before the campaign exists nor before its start."""
    start, _ = campaign_window(campaign, settings)
    created = require_aware(created_at, "created_at").astimezone(UTC)
    return max(created, start) if start else created


def make_run(wall: datetime, zone: tzinfo, user_mode: bool) -> Run:
    at = local_to_utc(wall, zone)
    if not user_mode:
        return Run(at=at, local=wall, opens_at=at, closes_at=at)
    as_if_utc = wall.replace(tzinfo=UTC, fold=0)
    return Run(at=at, local=wall, opens_at=as_if_utc - MAX_UTC_OFFSET, closes_at=as_if_utc - MIN_UTC_OFFSET)


def runs_between(
    campaign: Campaign,
    settings: Settings,
    *,
    created_at: datetime,
    after: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
    by: RunKey = "at",
) -> list[Run]:
    """Runs with `after < run.<by> <= until`, oldest first, at most `limit`.

    Runs before max(created_at, start) or at/after end never exist (in user mode: for a zone whose
    moment falls outside; the run exists while any zone is inside). Paused and live campaigns have none.
    """
    if campaign.spec.paused:
        return []
    return scheduled_runs(campaign, settings, created_at=created_at, after=after, until=until, limit=limit, by=by)


def scheduled_runs(
    campaign: Campaign,
    settings: Settings,
    *,
    created_at: datetime,
    after: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
    by: RunKey = "at",
) -> list[Run]:
    """`runs_between` ignoring `paused` (what the schedule says; used to skip runs during a pause)."""
    schedule = campaign.spec.schedule
    if schedule is None or limit == 0:
        return []
    if schedule.recurring and limit is None and until is None and campaign.spec.end is None:
        raise ValueError("an endless schedule needs `until` or `limit`")
    zone = campaign_zone(campaign, settings)
    user_mode = uses_user_timezone(campaign)
    earliest = earliest_fire(campaign, settings, created_at)
    _, end = campaign_window(campaign, settings)
    after = require_aware(after, "after").astimezone(UTC) if after else None
    until = require_aware(until, "until").astimezone(UTC) if until else None

    def exists(run: Run) -> bool:
        first, last = (run.opens_at, run.closes_at) if user_mode else (run.at, run.at)
        return last >= earliest and (end is None or first < end)

    def selected(run: Run) -> bool:
        key = getattr(run, by)
        return exists(run) and (after is None or key > after) and (until is None or key <= until)

    from_wall = _first_wall(zone, user_mode, earliest, after, by)
    anchor = _every_anchor(campaign, settings, created_at)
    walls = _walls(schedule, zone, from_wall, anchor=anchor, reaches=exists, user_mode=user_mode)
    stop_at = min((b for b in (until, end) if b is not None), default=None)
    runs = _collect(walls, zone, user_mode, selected, stop_at, limit)
    return _sorted(runs, by)[:limit]


def next_fire_times(
    campaign: Campaign,
    settings: Settings,
    *,
    created_at: datetime,
    after: datetime,
    until: datetime | None = None,
    limit: int = 10,
) -> list[datetime]:
    """UTC fire times strictly after `after` (and at most `until`), oldest first.

    In user-time-zone mode these are the runs' instants in the campaign (fallback) zone; use
    `runs_between` for the run windows and `fanout_by_timezone` for each zone's moment.
    """
    runs = runs_between(campaign, settings, created_at=created_at, after=after, until=until, limit=limit)
    return [run.at for run in runs]


def _first_wall(
    zone: tzinfo, user_mode: bool, earliest: datetime, after: datetime | None, by: RunKey
) -> datetime:
    """A wall time no later than the first run that can pass the filters (conservative)."""
    bounds = [_wall_reaching(earliest, zone, user_mode)]
    if after is not None:
        if by == "opens_at" and user_mode:
            bounds.append(after.replace(tzinfo=None) + MAX_UTC_OFFSET)
        else:
            bounds.append(_wall_reaching(after, zone, False))
    return max(bounds)


def _wall_reaching(moment: datetime, zone: tzinfo, user_mode: bool) -> datetime:
    if user_mode:  # closes_at = wall + 12h must reach `moment`
        return moment.replace(tzinfo=None) + MIN_UTC_OFFSET
    return utc_to_local(moment, zone).replace(fold=0) - gap_margin(moment, zone)


def _collect(
    walls: Iterable[datetime],
    zone: tzinfo,
    user_mode: bool,
    selected: Callable[[Run], bool],
    stop_at: datetime | None,
    limit: int | None,
) -> list[Run]:
    """Selected runs, one per instant in fixed mode (one per wall time in user mode)."""
    kept: dict[datetime, Run] = {}
    # Walls inside a DST gap resolve later than the walls that follow them; keep scanning until past.
    horizon = datetime.min
    for wall in walls:
        if stop_at is not None and wall.replace(tzinfo=UTC) - MAX_UTC_OFFSET > stop_at:
            break
        if limit is not None and len(kept) >= limit and wall >= horizon:
            break
        run = make_run(wall, zone, user_mode)
        landed = utc_to_local(run.at, zone)
        shifted = landed != wall
        if shifted:
            horizon = max(horizon, landed.replace(fold=0))
        if not selected(run):
            continue
        identity = run.local if user_mode else run.at
        # Two walls on one instant (a gap wall and the wall it was pushed to): the real wall names the run.
        if identity not in kept or not shifted:
            kept[identity] = run
    return list(kept.values())


def _sorted(runs: list[Run], by: RunKey) -> list[Run]:
    return sorted(runs, key=lambda run: (getattr(run, by), run.local))


def _walls(
    schedule: Schedule,
    zone: tzinfo,
    from_wall: datetime,
    *,
    anchor: datetime,
    reaches: Callable[[Run], bool],
    user_mode: bool,
) -> Iterator[datetime]:
    if schedule.once is not None:
        return iter([as_wall(schedule.once, zone)])
    if schedule.dates is not None:
        return iter(sorted(as_wall(moment, zone) for moment in schedule.dates))
    if schedule.cron is not None:
        return _cron_walls(schedule.cron, from_wall)
    assert schedule.every is not None

    def slot_reaches_anchor(wall: datetime) -> bool:
        run = make_run(wall, zone, user_mode)
        return (run.closes_at if user_mode else run.at) >= anchor

    return _every_walls(schedule.every, utc_to_local(anchor, zone), slot_reaches_anchor, from_wall)


@lru_cache(maxsize=4096)
def _cron_prototype(expression: str) -> croniter[datetime]:
    return croniter(expression, datetime(2000, 1, 1), ret_type=datetime)


def _cron_walls(expression: str, from_wall: datetime) -> Iterator[datetime]:
    # Parsing costs as much as a step, so copy a parsed prototype (croniter only reads the parsed fields).
    iterator = copy.copy(_cron_prototype(expression))
    iterator.set_current(from_wall - timedelta(minutes=1), force=True)
    while True:
        try:
            yield iterator.get_next(datetime)
        except CroniterBadDateError:  # an expression that never matches again (e.g. 30 February)
            return


def _every_anchor(campaign: Campaign, settings: Settings, created_at: datetime) -> datetime:
    """Interval counting starts at the campaign's start, or at its creation when it has no start."""
    start, _ = campaign_window(campaign, settings)
    return start or require_aware(created_at, "created_at").astimezone(UTC)


def _every_walls(
    every: Every, anchor_wall: datetime, reaches_anchor: Callable[[datetime], bool], from_wall: datetime
) -> Iterator[datetime]:
    """Slots every `interval` units; the first is the first matching slot at/after the anchor."""
    hour, minute = divmod(minutes_of(every.at), 60)
    at = time(hour, minute)
    if every.unit == "months":
        assert every.day is not None
        day = every.day

        def to_wall(index: int) -> datetime:
            return _month_slot(index, day, at)

        base, step = 1, every.interval
        first, target = _month_index(anchor_wall.date()) - 1, _month_index(from_wall.date())
    else:

        def to_wall(index: int) -> datetime:
            return datetime.combine(date.fromordinal(index), at)

        first = anchor_wall.date().toordinal() - 1  # user mode: the day before may still be reachable
        if every.unit == "weeks":
            assert every.weekday is not None
            first += (_WEEKDAYS[every.weekday] - date.fromordinal(first).weekday()) % 7
            base, step = 7, 7 * every.interval
        else:
            base, step = 1, every.interval
        target = from_wall.date().toordinal()
    while not reaches_anchor(to_wall(first)):
        first += base
    index = first + max(0, (target - first) // step - 1) * step
    while True:
        yield to_wall(index)
        index += step


def _month_index(day: date) -> int:
    return day.year * 12 + day.month - 1


def _month_slot(index: int, day: int, at: time) -> datetime:
    year, month0 = divmod(index, 12)
    last = calendar.monthrange(year, month0 + 1)[1]
    return datetime.combine(date(year, month0 + 1, last if day == -1 else day), at)
