"""User-time-zone delivery: one run reaches each recipient at the run's wall clock time in their zone.

Which run a user belongs to: runs are keyed by their nominal wall clock time (`Run.local`, e.g.
2026-12-07T10:00). Every user of the audience belongs to every run; a user in zone Z is due at
that wall clock time in Z (not_before). A user without a zone, or with an unknown one, is due at the
run's moment in the campaign zone. In fixed mode every user is due at the run's single instant.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from ..models import Campaign, Settings
from .recurrence import Run, campaign_window, earliest_fire
from .zones import ZoneLike, campaign_zone, local_to_utc, require_aware, resolve_zone, uses_user_timezone

ON_TIME_GRACE = timedelta(minutes=1)
"""A moment at most this old when the daemon sees it is on time, not missed (covers the tick interval)."""

SlotStatus = Literal["scheduled", "catch_up", "skipped"]


def fanout_by_timezone(
    fire_local_wallclock: datetime, zones: Iterable[str | None], *, fallback: ZoneLike = "UTC"
) -> dict[str | None, datetime]:
    """Each zone's UTC moment for a wall clock time (an aware input contributes only its wall time).

    Keys are the zones as given; absent or unknown zones use `fallback` (pass the campaign zone).
    """
    wall = fire_local_wallclock.replace(tzinfo=None)
    fallback_zone = resolve_zone(fallback)
    return {zone: local_to_utc(wall, resolve_zone(zone, fallback_zone)) for zone in zones}


@dataclass(frozen=True)
class ZoneSlot:
    """What to do with one run's recipients in one zone.

    scheduled_for: the run's moment in this zone (use it for validity).
    send_at: not_before for the outbox rows; None when skipped.
    """

    zone: str | None
    scheduled_for: datetime
    send_at: datetime | None
    status: SlotStatus
    reason: str = ""


def fanout_run(
    campaign: Campaign,
    settings: Settings,
    run: Run,
    zones: Iterable[str | None],
    *,
    created_at: datetime,
    now: datetime,
    grace: timedelta = ON_TIME_GRACE,
) -> dict[str | None, ZoneSlot]:
    """Per-zone delivery of `run` materialized at `now`.

    - A zone whose moment is before max(created_at, start) or at/after end is skipped: the campaign
      did not exist (or was not active) there yet -- the "never before creation" rule, per zone.
    - A zone whose moment is in the future, or at most `grace` ago, is scheduled at that moment.
    - A zone whose moment already passed follows Settings.catchUp: `skip` drops it; `latest` and
      `all` send now if the moment is at most catchUp.maxAge old, else drop it.
    In fixed mode every zone maps to the run's single instant.
    """
    now = require_aware(now, "now")
    fallback = campaign_zone(campaign, settings)
    user_mode = uses_user_timezone(campaign)
    earliest = earliest_fire(campaign, settings, created_at)
    _, end = campaign_window(campaign, settings)
    slots: dict[str | None, ZoneSlot] = {}
    for zone in zones:
        if zone in slots:
            continue
        moment = local_to_utc(run.local, resolve_zone(zone, fallback)) if user_mode else run.at
        slots[zone] = _slot(zone, moment, settings, earliest=earliest, end=end, now=now, grace=grace)
    return slots


def _slot(
    zone: str | None,
    moment: datetime,
    settings: Settings,
    *,
    earliest: datetime,
    end: datetime | None,
    now: datetime,
    grace: timedelta,
) -> ZoneSlot:
    if moment < earliest:
        return ZoneSlot(zone, moment, None, "skipped", "before the campaign was created or started")
    if end is not None and moment >= end:
        return ZoneSlot(zone, moment, None, "skipped", "after the campaign end")
    if moment >= now - grace:
        return ZoneSlot(zone, moment, moment, "scheduled")
    catch_up = settings.spec.catchUp
    if catch_up.policy == "skip":
        return ZoneSlot(zone, moment, None, "skipped", "missed; catch-up policy is skip")
    if now - moment > catch_up.maxAge:
        return ZoneSlot(zone, moment, None, "skipped", "missed by more than catchUp.maxAge")
    return ZoneSlot(zone, moment, now, "catch_up", f"missed; sent late (catch-up policy {catch_up.policy})")
