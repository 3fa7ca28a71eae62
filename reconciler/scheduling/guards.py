"""Guard-rail timing (issue 8): freeze windows and message validity."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import CroniterBadDateError, croniter

from ..models import Campaign, Settings
from ..models.settings import FreezeWindow
from .zones import local_to_utc, require_aware, resolve_zone, utc_to_local

_PREVIOUS_STARTS_CHECKED = 3  # a DST gap can push the latest start past `now`; look a little further back


@dataclass(frozen=True)
class ActiveFreeze:
    window: FreezeWindow
    started_at: datetime
    ends_at: datetime


def freeze_bounds(window: FreezeWindow, settings: Settings, now: datetime) -> ActiveFreeze | None:
    """The occurrence of `window` in force at `now` ([start, start + duration)), if any.

    The cron marks window starts in Settings.defaultTimezone (same DST rule as schedules).
    """
    zone = resolve_zone(settings.spec.defaultTimezone)
    now = require_aware(now, "now").astimezone(UTC)
    iterator = croniter(window.cron, utc_to_local(now, zone) + timedelta(minutes=1), ret_type=datetime)
    starts: list[datetime] = []
    for _ in range(_PREVIOUS_STARTS_CHECKED):
        try:
            starts.append(local_to_utc(iterator.get_prev(datetime), zone))
        except CroniterBadDateError:
            break
    started = max((start for start in starts if start <= now), default=None)
    if started is None or now >= started + window.duration:
        return None
    return ActiveFreeze(window, started, started + window.duration)


def active_freeze(settings: Settings, now: datetime) -> ActiveFreeze | None:
    """The freeze in force at `now`; with several, one that pauses deliveries wins, then the latest end."""
    active = [found for w in settings.spec.freezeWindows if (found := freeze_bounds(w, settings, now))]
    if not active:
        return None
    return max(active, key=lambda f: (f.window.deliveries == "pause", f.ends_at))


def active_freeze_window(settings: Settings, now: datetime) -> FreezeWindow | None:
    found = active_freeze(settings, now)
    return found.window if found else None


def deliveries_paused(settings: Settings, now: datetime) -> bool:
    found = active_freeze(settings, now)
    return found is not None and found.window.deliveries == "pause"


def effective_validity(campaign: Campaign, settings: Settings) -> timedelta | None:
    return campaign.spec.validity or settings.spec.validity


def expires_at(
    campaign: Campaign, settings: Settings, enqueued_at: datetime, *, scheduled_for: datetime | None = None
) -> datetime | None:
    """When a queued message stops being worth sending (campaign validity, else Settings.validity).

    Counted from the moment the message was meant to go out when given (`scheduled_for`: the run's
    moment in the recipient's zone, before any DND delay or catch-up), else from `enqueued_at`. So a
    run caught up 3 h late with validity 2h is already expired. None when no validity is configured.
    """
    validity = effective_validity(campaign, settings)
    if validity is None:
        return None
    base = require_aware(scheduled_for or enqueued_at, "scheduled_for" if scheduled_for else "enqueued_at")
    return (base + validity).astimezone(UTC)
