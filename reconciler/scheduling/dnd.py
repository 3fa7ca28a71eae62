"""Do-not-disturb: quiet hours in the recipient's local time, possibly wrapping midnight (21:00-09:00)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Literal

from ..models import Campaign, Settings
from ..models.campaign import DndWindow
from ..models.common import minutes_of
from .zones import ZoneLike, local_to_utc, require_aware, resolve_zone, utc_to_local

DndAction = Literal["send", "delay", "discard"]


@dataclass(frozen=True)
class DndDecision:
    """send: send_at unchanged; delay: send_at moved to the window end; discard: send_at is None."""

    action: DndAction
    send_at: datetime | None


def effective_dnd(campaign: Campaign, settings: Settings) -> DndWindow | None:
    """The campaign's own window replaces the global one (Settings.dnd)."""
    return campaign.spec.dnd or settings.spec.dnd


def in_window(clock: time, window: DndWindow) -> bool:
    """Start inclusive, end exclusive; start == end means no quiet hours."""
    start, end = minutes_of(window.start), minutes_of(window.end)
    minute = clock.hour * 60 + clock.minute
    if start < end:
        return start <= minute < end
    if start > end:  # wraps midnight
        return minute >= start or minute < end
    return False


def apply_dnd(
    send_at_utc: datetime, zone: ZoneLike, window: DndWindow | None, *, fallback: ZoneLike = "UTC"
) -> DndDecision:
    """Check `send_at_utc` against `window` in the recipient's `zone` (absent/unknown: `fallback`; pass
    the campaign zone, or resolve the zone with `recipient_zone` first).

    A delayed message goes out at the window end on the right local day (for 21:00-09:00 at 22:00:
    the next morning 09:00; at 03:00: the same morning 09:00).
    """
    require_aware(send_at_utc, "send_at_utc")
    if window is None:
        return DndDecision("send", send_at_utc)
    tz = resolve_zone(zone, fallback)
    local = utc_to_local(send_at_utc, tz)
    if not in_window(local.time(), window):
        return DndDecision("send", send_at_utc)
    if window.action == "discard":
        return DndDecision("discard", None)
    end_hour, end_minute = divmod(minutes_of(window.end), 60)
    end_day = local.date()
    if local.time() >= time(end_hour, end_minute):  # in the evening part of a wrapping window
        end_day += timedelta(days=1)
    wall_end = datetime.combine(end_day, time(end_hour, end_minute))
    return DndDecision("delay", max(local_to_utc(wall_end, tz), send_at_utc))
