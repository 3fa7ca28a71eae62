"""Live campaigns: what one incoming event means for one campaign and one user.

Actions:
- SendNow        trigger.event matched: send at `at` (the processing time).
- StartTimer     trigger.inaction's start event matched: a pending timer per (campaign, user, event)
                 that fires at event_time + within unless cancelled.
- CancelTimers   trigger.inaction's `missing` event arrived: cancel this user's timers whose start
                 event happened in [event_time - within, event_time] -- not later ones (an old event
                 arriving late cannot cancel a newer cart), not ones whose window had already closed.
                 Cancellation happens even when the campaign is paused or outside start/end.
- ScheduleAt     trigger.eventDate matched: send at the date/time read from an event property.
- Skip           matched, but there is nothing to send (e.g. the computed time is in the past).
- Ignore         the event does not concern this campaign (name/filters, paused, outside window).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, Literal

from ..audience.semantics import PredicateError, event_matches
from ..models import Campaign, Settings
from ..models.campaign import EventDateTrigger, EventMatch, InactionTrigger
from ..models.common import minutes_of
from .recurrence import in_campaign_window
from .zones import ZoneLike, local_to_utc, recipient_zone, require_aware, utc_to_local

DEFAULT_SETTINGS = Settings.model_validate(
    {"apiVersion": "herald/v1", "kind": "Settings", "metadata": {"name": "defaults"}}
)
_EPOCH_TEXT = re.compile(r"^-?\d+(\.\d+)?$")
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class SendNow:
    at: datetime
    kind: Literal["send_now"] = "send_now"


@dataclass(frozen=True)
class CancelTimers:
    """Cancel the user's pending timers of `campaign` started in [started_from, started_until]."""

    campaign: str
    user_id: str
    started_from: datetime
    started_until: datetime
    within: timedelta
    kind: Literal["cancel_timers"] = "cancel_timers"

    def cancels(self, timer_started_at: datetime) -> bool:
        return self.started_from <= timer_started_at <= self.started_until

    def cancels_fire_at(self, timer_fire_at: datetime) -> bool:
        """The same test for a timer known by its fire_at (= started_at + within)."""
        return self.cancels(timer_fire_at - self.within)


@dataclass(frozen=True)
class StartTimer:
    key: str
    campaign: str
    user_id: str
    started_at: datetime
    fire_at: datetime
    cancel_first: CancelTimers | None = None
    """Set when the same event is also the campaign's `missing` event (e.g. 'no app_open after app_open')."""
    kind: Literal["start_timer"] = "start_timer"


@dataclass(frozen=True)
class ScheduleAt:
    send_at: datetime
    source_value: str
    kind: Literal["schedule_at"] = "schedule_at"


@dataclass(frozen=True)
class Skip:
    reason: str
    code: str = "skipped"  # the reason's label in reports and herald_skips_total (event_date_past, ...)
    kind: Literal["skip"] = "skip"


@dataclass(frozen=True)
class Ignore:
    reason: str
    kind: Literal["ignore"] = "ignore"


TriggerAction = SendNow | StartTimer | CancelTimers | ScheduleAt | Skip | Ignore


def timer_key(campaign: str, user_id: str, event_ref: str) -> str:
    """Idempotency key of an inaction timer: the same event delivered twice starts one timer."""
    return f"inaction:{campaign}:{user_id}:{event_ref}"


def timer_should_fire(started_at: datetime, within: timedelta, missing_event_times: Iterable[datetime]) -> bool:
    """Re-check when a timer comes due: no `missing` event in [started_at, started_at + within]."""
    deadline = started_at + within
    return not any(started_at <= moment <= deadline for moment in missing_event_times)


def trigger_for_event(
    campaign: Campaign,
    event_name: str,
    event_properties: Mapping[str, Any],
    event_time: datetime,
    user_zone: ZoneLike,
    *,
    user_id: str,
    event_id: str | None = None,
    settings: Settings | None = None,
    now: datetime | None = None,
) -> TriggerAction:
    """Decide what `campaign` does with one event of one user.

    `user_zone` is the user's zone (absent/unknown: the campaign zone, then Settings.defaultTimezone);
    `now` is the processing time (default: event_time); `event_id` names the event in timer keys.
    """
    settings = settings or DEFAULT_SETTINGS
    event_time = require_aware(event_time, "event_time").astimezone(UTC)
    now = require_aware(now, "now").astimezone(UTC) if now else event_time
    trigger = campaign.spec.trigger
    if campaign.spec.type != "live" or trigger is None:
        return Ignore("not a live campaign")
    cancel = None
    if trigger.inaction and _matches(trigger.inaction.missing, event_name, event_properties, now):
        within = trigger.inaction.within
        cancel = CancelTimers(campaign.name, user_id, event_time - within, event_time, within)
    if campaign.spec.paused:
        return cancel or Ignore("campaign is paused")
    if not in_campaign_window(campaign, settings, event_time):
        return cancel or Ignore("event outside the campaign's start/end")
    if trigger.event is not None:
        if _matches(trigger.event, event_name, event_properties, now):
            return SendNow(now)
    elif trigger.inaction is not None:
        if _matches(trigger.inaction.event, event_name, event_properties, now):
            return _start_timer(campaign, trigger.inaction, user_id, event_id, event_time, cancel)
    elif trigger.eventDate is not None and _matches(trigger.eventDate.event, event_name, event_properties, now):
        zone = recipient_zone(campaign, settings, user_zone)
        return _schedule_from_property(campaign, settings, trigger.eventDate, event_properties, zone, now)
    return cancel or Ignore("event does not match the trigger")


def _matches(match: EventMatch, name: str, properties: Mapping[str, Any], now: datetime) -> bool:
    try:
        return event_matches(match, name, properties, now)
    except PredicateError:
        return False


def _start_timer(
    campaign: Campaign,
    inaction: InactionTrigger,
    user_id: str,
    event_id: str | None,
    event_time: datetime,
    cancel: CancelTimers | None,
) -> StartTimer:
    key = timer_key(campaign.name, user_id, event_id or event_time.isoformat())
    return StartTimer(key, campaign.name, user_id, event_time, event_time + inaction.within, cancel)


def _schedule_from_property(
    campaign: Campaign,
    settings: Settings,
    spec: EventDateTrigger,
    properties: Mapping[str, Any],
    zone: tzinfo,
    now: datetime,
) -> ScheduleAt | Skip:
    raw = properties.get(spec.property)
    wall = parse_event_wall(raw, zone)
    if wall is None:
        return Skip(f"event property {spec.property!r} is not an ISO date/date-time or epoch seconds",
                    "event_date_invalid")
    send_at = event_date_send_at(wall, zone, spec.offset, spec.at)
    if send_at < now:
        return Skip(f"computed send time {send_at.isoformat()} is in the past", "event_date_past")
    if not in_campaign_window(campaign, settings, send_at):
        return Skip(f"computed send time {send_at.isoformat()} is outside the campaign's start/end",
                    "event_date_outside_window")
    return ScheduleAt(send_at, str(raw))


def parse_event_wall(value: Any, zone: tzinfo) -> datetime | None:
    """An event property as a wall clock time in `zone`: ISO date (midnight), ISO date-time (naive is
    read in `zone`), or epoch seconds (number or numeric string). None when unusable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return _epoch_wall(float(value), zone)
    if isinstance(value, datetime):
        return value if value.tzinfo is None else utc_to_local(value, zone)
    if isinstance(value, date):
        return datetime.combine(value, time())
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _EPOCH_TEXT.match(text):
        return _epoch_wall(float(text), zone)
    try:
        if _DATE_ONLY.match(text):
            return datetime.combine(date.fromisoformat(text), time())
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is None else utc_to_local(moment, zone)


def _epoch_wall(seconds: float, zone: tzinfo) -> datetime | None:
    if not math.isfinite(seconds):
        return None
    try:
        return utc_to_local(datetime.fromtimestamp(seconds, UTC), zone)
    except (OverflowError, OSError, ValueError):
        return None


def event_date_send_at(wall: datetime, zone: tzinfo, offset: timedelta, at: str | None) -> datetime:
    """Shift by `offset` (whole days on the calendar, the rest as elapsed time), then set clock `at`."""
    total = int(offset.total_seconds())
    sign = -1 if total < 0 else 1
    days, rest = divmod(abs(total), 86400)
    if days:
        wall = wall + sign * timedelta(days=days)
    if rest:
        wall = utc_to_local(local_to_utc(wall, zone) + sign * timedelta(seconds=rest), zone)
    if at is not None:
        hour, minute = divmod(minutes_of(at), 60)
        wall = datetime.combine(wall.date(), time(hour, minute))
    return local_to_utc(wall, zone)
