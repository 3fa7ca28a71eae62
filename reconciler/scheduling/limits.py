"""Which local day a daily limit counts (docs/scheduler.md, "Daily limits ... (issue 14)").

Pure functions: a message counts toward one local calendar day, written `YYYY-MM-DD` on its outbox row
(`limit_day`) when it is queued. Fixed-zone campaigns count in the campaign zone; user-zone campaigns
in the recipient's zone (the campaign zone for users without a known one). Scheduled messages count
toward the day of their send time; live messages toward the day of their trigger.
"""

from __future__ import annotations

from datetime import datetime, tzinfo

from ..models import Campaign, Settings
from .recurrence import Run
from .zones import ZoneLike, campaign_zone, recipient_zone, require_aware, uses_user_timezone


def limit_zone(campaign: Campaign, settings: Settings, user_zone: ZoneLike) -> tzinfo:
    """The zone whose calendar day a message to a user in `user_zone` counts toward."""
    if uses_user_timezone(campaign):
        return recipient_zone(campaign, settings, user_zone)
    return campaign_zone(campaign, settings)


def limit_day(campaign: Campaign, settings: Settings, user_zone: ZoneLike, moment: datetime) -> str:
    """The local day (`YYYY-MM-DD`) of `moment` (a send time, or a live trigger's time) for this user."""
    zone = limit_zone(campaign, settings, user_zone)
    return require_aware(moment, "moment").astimezone(zone).date().isoformat()


def run_limit_day(campaign: Campaign, settings: Settings, run: Run) -> str:
    """The day a scheduled run's budget is for: its wall date in user mode (the same date for every
    recipient, whichever UTC day the run opens on), else the campaign zone's day of its moment."""
    if uses_user_timezone(campaign):
        return run.local.date().isoformat()
    return require_aware(run.at, "run.at").astimezone(campaign_zone(campaign, settings)).date().isoformat()
