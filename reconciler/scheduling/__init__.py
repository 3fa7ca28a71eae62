"""Scheduling logic: pure functions over models and time values (no I/O, no store, no wall clock).

Import from `reconciler.scheduler` (the facade) or from here; see docs/scheduler.md.
"""

from __future__ import annotations

from .caps import CapDecision, CapReason, cap_decision, effective_caps
from .catchup import CatchUpPlan, due_runs, next_due_at, plan_catch_up
from .dnd import DndAction, DndDecision, apply_dnd, effective_dnd, in_window
from .fanout import ON_TIME_GRACE, ZoneSlot, fanout_by_timezone, fanout_run
from .guards import (
    ActiveFreeze,
    active_freeze,
    active_freeze_window,
    deliveries_paused,
    effective_validity,
    expires_at,
    freeze_bounds,
)
from .recurrence import (
    Run,
    campaign_window,
    earliest_fire,
    in_campaign_window,
    next_fire_times,
    runs_between,
    scheduled_runs,
)
from .triggers import (
    CancelTimers,
    Ignore,
    ScheduleAt,
    SendNow,
    Skip,
    StartTimer,
    TriggerAction,
    event_date_send_at,
    parse_event_wall,
    timer_key,
    timer_should_fire,
    trigger_for_event,
)
from .zones import (
    ZoneLike,
    as_utc,
    campaign_zone,
    local_day_bounds,
    local_to_utc,
    recipient_zone,
    resolve_zone,
    uses_user_timezone,
    utc_to_local,
    zone_by_name,
)

__all__ = [
    "ON_TIME_GRACE",
    "ActiveFreeze",
    "CancelTimers",
    "CapDecision",
    "CapReason",
    "CatchUpPlan",
    "DndAction",
    "DndDecision",
    "Ignore",
    "Run",
    "ScheduleAt",
    "SendNow",
    "Skip",
    "StartTimer",
    "TriggerAction",
    "ZoneLike",
    "ZoneSlot",
    "active_freeze",
    "active_freeze_window",
    "apply_dnd",
    "as_utc",
    "campaign_window",
    "campaign_zone",
    "cap_decision",
    "deliveries_paused",
    "due_runs",
    "earliest_fire",
    "effective_caps",
    "effective_dnd",
    "effective_validity",
    "event_date_send_at",
    "expires_at",
    "fanout_by_timezone",
    "fanout_run",
    "freeze_bounds",
    "in_campaign_window",
    "in_window",
    "local_day_bounds",
    "local_to_utc",
    "next_due_at",
    "next_fire_times",
    "parse_event_wall",
    "plan_catch_up",
    "recipient_zone",
    "resolve_zone",
    "runs_between",
    "scheduled_runs",
    "timer_key",
    "timer_should_fire",
    "trigger_for_event",
    "uses_user_timezone",
    "utc_to_local",
    "zone_by_name",
]
