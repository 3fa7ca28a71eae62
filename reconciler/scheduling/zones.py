"""Time zones: resolving names, wall clock <-> UTC with one DST rule, local day bounds.

DST rule (the "compatible" disambiguation of RFC 5545, java.time and TC39 Temporal): a wall clock time
that does not exist (spring forward) is read with the offset in force before the gap, so it moves
forward by the length of the gap (02:30 -> 03:30 EDT); a wall clock time that occurs twice (fall back)
takes the first occurrence. With zoneinfo this is exactly PEP 495 `fold=0`, so no search is needed.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..models import Campaign, Settings

ZoneLike = str | tzinfo | None

# Every civil time zone lies within these offsets; they bound when a user-time-zone run can start/end.
MAX_UTC_OFFSET = timedelta(hours=14)
MIN_UTC_OFFSET = timedelta(hours=-12)

_OFFSET = re.compile(r"^(?:UTC|GMT)?\s*([+-])(\d{1,2})(?::?(\d{2}))?$", re.IGNORECASE)
_UTC_NAMES = {"z", "utc", "gmt", "etc/utc", "etc/gmt", "universal", "zulu"}


@lru_cache(maxsize=4096)
def zone_by_name(name: str) -> tzinfo | None:
    """An IANA name ('Asia/Kolkata'), 'UTC'/'Z', or a fixed offset ('+05:30', 'UTC-3'); None if unknown."""
    text = name.strip()
    if not text:
        return None
    if text.lower() in _UTC_NAMES:
        return UTC
    match = _OFFSET.match(text)
    if match:
        return _fixed_offset(*match.groups())
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _fixed_offset(sign: str, hours: str, minutes: str | None) -> tzinfo | None:
    if int(minutes or 0) >= 60:
        return None
    offset = timedelta(hours=int(hours), minutes=int(minutes or 0))
    offset = -offset if sign == "-" else offset
    if not MIN_UTC_OFFSET <= offset <= MAX_UTC_OFFSET:
        return None
    return UTC if not offset else timezone(offset)


def resolve_zone(zone: ZoneLike, fallback: ZoneLike = UTC) -> tzinfo:
    """The zone for `zone`, else `fallback` (when absent or unknown), else UTC."""
    for candidate in (zone, fallback):
        if isinstance(candidate, tzinfo):
            return candidate
        if isinstance(candidate, str):
            found = zone_by_name(candidate)
            if found is not None:
                return found
    return UTC


def campaign_zone(campaign: Campaign, settings: Settings) -> tzinfo:
    """The campaign's zone (`timezone.zone`; the fallback zone in user mode), else Settings.defaultTimezone."""
    spec_zone = campaign.spec.timezone.zone if campaign.spec.timezone else None
    return resolve_zone(spec_zone, settings.spec.defaultTimezone)


def uses_user_timezone(campaign: Campaign) -> bool:
    return campaign.spec.timezone is not None and campaign.spec.timezone.mode == "user"


def recipient_zone(campaign: Campaign, settings: Settings, user_zone: ZoneLike) -> tzinfo:
    """The recipient's zone; an absent or unknown user zone falls back to the campaign zone."""
    return resolve_zone(user_zone, campaign_zone(campaign, settings))


def local_to_utc(wall: datetime, zone: tzinfo) -> datetime:
    """A naive wall clock time in `zone` as an aware UTC instant (DST rule in the module docstring)."""
    return wall.replace(tzinfo=zone).astimezone(UTC)


def utc_to_local(moment: datetime, zone: tzinfo) -> datetime:
    """An aware instant as the naive wall clock time in `zone` (fold kept for repeated hours)."""
    return require_aware(moment).astimezone(zone).replace(tzinfo=None)


def as_utc(value: datetime, zone: tzinfo) -> datetime:
    """Aware values keep their instant; naive values (e.g. YAML Timestamps) are read in `zone`."""
    if value.tzinfo is None:
        return local_to_utc(value, zone)
    return value.astimezone(UTC)


def as_wall(value: datetime, zone: tzinfo) -> datetime:
    """A schedule Timestamp as a wall clock time in `zone`: naive stays as written, aware is converted."""
    if value.tzinfo is None:
        return value
    return utc_to_local(value, zone)


def require_aware(moment: datetime, name: str = "datetime") -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {moment.isoformat()}")
    return moment


def local_day_bounds(moment: datetime, zone: ZoneLike) -> tuple[datetime, datetime]:
    """[start, end) in UTC of the local calendar day containing `moment` in `zone` (23 or 25 h on DST days).

    Use it to count "per user per day" in the user's own day.
    """
    tz = resolve_zone(zone)
    day = utc_to_local(moment, tz).date()
    start = local_to_utc(datetime.combine(day, datetime.min.time()), tz)
    end = local_to_utc(datetime.combine(day + timedelta(days=1), datetime.min.time()), tz)
    return start, end


def gap_margin(moment: datetime, zone: tzinfo) -> timedelta:
    """How far the offset jumped forward during the day before `moment` (0 without a recent DST gap).

    Wall times inside a gap are pushed forward past it, so enumerations must start this much earlier.
    """
    now_offset = moment.astimezone(zone).utcoffset() or timedelta(0)
    before_offset = (moment - timedelta(hours=26)).astimezone(zone).utcoffset() or timedelta(0)
    return max(timedelta(0), now_offset - before_offset)
