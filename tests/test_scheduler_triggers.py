"""Live triggers: single action, inaction timers and their cancellation, dates from event properties."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_scheduler_support import make_campaign, make_live, make_settings, user_mode, utc

from reconciler.scheduler import (
    CancelTimers,
    Ignore,
    ScheduleAt,
    SendNow,
    Skip,
    StartTimer,
    timer_should_fire,
    trigger_for_event,
)

SETTINGS = make_settings()
WELCOME = make_live(
    "welcome", trigger={"event": {"name": "signed_up"}}, start="2026-12-01T00:00:00Z", end="2027-01-01T00:00:00Z"
)
CART = make_live(
    "cart",
    trigger={
        "inaction": {
            "event": {"name": "added_to_cart", "where": [{"name": "value", "op": "gte", "value": 20}]},
            "missing": {"name": "purchase"},
            "within": "5m",
        }
    },
)
T0 = utc(2026, 12, 7, 12)


def act(campaign, name, props, when=T0, zone="UTC", **kwargs):
    kwargs.setdefault("user_id", "u1")
    kwargs.setdefault("settings", SETTINGS)
    return trigger_for_event(campaign, name, props, when, zone, **kwargs)


# --- single action --------------------------------------------------------------------------------

def test_matching_event_sends_now():
    assert act(WELCOME, "signed_up", {}, now=T0 + timedelta(seconds=2)) == SendNow(T0 + timedelta(seconds=2))


def test_other_events_are_ignored():
    assert isinstance(act(WELCOME, "logged_in", {}), Ignore)


def test_events_outside_start_end_are_ignored():
    before = act(WELCOME, "signed_up", {}, when=utc(2026, 11, 30, 23, 59))
    at_end = act(WELCOME, "signed_up", {}, when=utc(2027, 1, 1))
    assert before == Ignore("event outside the campaign's start/end")
    assert isinstance(at_end, Ignore)
    assert isinstance(act(WELCOME, "signed_up", {}, when=utc(2026, 12, 1)), SendNow)


def test_paused_campaign_produces_nothing():
    paused = WELCOME.model_copy(update={"spec": WELCOME.spec.model_copy(update={"paused": True})})
    assert act(paused, "signed_up", {}) == Ignore("campaign is paused")


def test_scheduled_campaigns_ignore_events():
    assert act(make_campaign(schedule={"cron": "0 10 * * *"}), "signed_up", {}) == Ignore("not a live campaign")


# --- inaction ----------------------------------------------------------------------------------------

def test_start_event_starts_a_timer():
    action = act(CART, "added_to_cart", {"value": 25}, event_id="e1")
    assert isinstance(action, StartTimer)
    assert (action.started_at, action.fire_at, action.user_id) == (T0, T0 + timedelta(minutes=5), "u1")
    assert action.cancel_first is None
    again = act(CART, "added_to_cart", {"value": 25}, event_id="e1")
    other_user = act(CART, "added_to_cart", {"value": 25}, event_id="e1", user_id="u2")
    assert isinstance(again, StartTimer) and isinstance(other_user, StartTimer)
    assert again.key == action.key != other_user.key


def test_start_event_failing_its_filter_is_ignored():
    assert isinstance(act(CART, "added_to_cart", {"value": 10}), Ignore)


def test_missing_event_cancels_timers_started_within_the_window_before_it():
    purchase_at = T0 + timedelta(minutes=3)
    action = act(CART, "purchase", {}, when=purchase_at)
    five = timedelta(minutes=5)
    assert action == CancelTimers("cart", "u1", purchase_at - five, purchase_at, five)
    assert isinstance(action, CancelTimers)
    assert action.cancels_fire_at(T0 + five)
    assert not action.cancels_fire_at(purchase_at + five + timedelta(seconds=1))
    assert action.cancels(T0)  # cart 3 min before the purchase
    assert action.cancels(purchase_at)  # same instant counts as followed
    assert not action.cancels(purchase_at + timedelta(seconds=1))  # a newer cart stays pending
    assert not action.cancels(purchase_at - timedelta(minutes=6))  # its window had closed: already due


def test_cancellation_arriving_late_does_not_cancel_newer_timers():
    """Events may arrive out of order: a purchase stamped before a cart never cancels that cart."""
    cart = act(CART, "added_to_cart", {"value": 30}, when=T0)
    old_purchase = act(CART, "purchase", {}, when=T0 - timedelta(minutes=1), now=T0 + timedelta(minutes=1))
    assert isinstance(cart, StartTimer) and isinstance(old_purchase, CancelTimers)
    assert not old_purchase.cancels(cart.started_at)


def test_cancellation_happens_even_when_paused():
    paused = CART.model_copy(update={"spec": CART.spec.model_copy(update={"paused": True})})
    assert isinstance(act(paused, "purchase", {}), CancelTimers)
    assert isinstance(act(paused, "added_to_cart", {"value": 30}), Ignore)


def test_same_event_as_start_and_missing_restarts_the_timer():
    idle = make_live(
        "idle",
        trigger={"inaction": {"event": {"name": "app_open"}, "missing": {"name": "app_open"}, "within": "1d"}},
    )
    action = act(idle, "app_open", {}, event_id="e9")
    assert isinstance(action, StartTimer)
    assert action.cancel_first == CancelTimers("idle", "u1", T0 - timedelta(days=1), T0, timedelta(days=1))
    assert action.fire_at == T0 + timedelta(days=1)


def test_timer_should_fire_unless_the_missing_event_came_in_time():
    within = timedelta(minutes=5)
    assert timer_should_fire(T0, within, [])
    assert timer_should_fire(T0, within, [T0 - timedelta(seconds=1), T0 + timedelta(minutes=6)])
    assert not timer_should_fire(T0, within, [T0 + timedelta(minutes=5)])


# --- eventDate -----------------------------------------------------------------------------------------

TRAVEL = make_live(
    "travel",
    trigger={"eventDate": {"event": {"name": "trip_booked"}, "property": "departure_at", "offset": "-1d", "at": "09:00"}},
    timezone=user_mode("UTC"),
    end="2027-12-31T00:00:00Z",
)
BOOKED = utc(2026, 12, 1, 8)


@pytest.mark.parametrize(
    ("value", "zone", "expected"),
    [
        ("2026-12-10T15:30:00", "Asia/Kolkata", utc(2026, 12, 9, 3, 30)),  # naive: user's zone; 09:00 IST
        ("2026-12-10", "Asia/Kolkata", utc(2026, 12, 9, 3, 30)),  # a date
        ("2026-12-10T23:30:00Z", "Asia/Kolkata", utc(2026, 12, 10, 3, 30)),  # 11 Dec 05:00 in India
        (int(utc(2026, 12, 10, 10).timestamp()), "America/New_York", utc(2026, 12, 9, 14)),  # epoch seconds
        (str(int(utc(2026, 12, 10, 10).timestamp())), "America/New_York", utc(2026, 12, 9, 14)),
        (float(utc(2026, 12, 10, 10).timestamp()), "America/New_York", utc(2026, 12, 9, 14)),
        ("2026-12-10T15:30:00", "Nowhere/Land", utc(2026, 12, 9, 9)),  # unknown zone: campaign zone (UTC)
    ],
)
def test_event_date_sends_at_offset_and_clock_in_the_users_zone(value, zone, expected):
    action = act(TRAVEL, "trip_booked", {"departure_at": value}, when=BOOKED, zone=zone)
    assert action == ScheduleAt(expected, str(value))


def test_event_date_offset_without_clock_time():
    campaign = make_live(
        "pre", trigger={"eventDate": {"event": {"name": "booked"}, "property": "at", "offset": "-2h"}}
    )
    action = act(campaign, "booked", {"at": "2026-12-10T10:00:00Z"}, when=BOOKED)
    assert action == ScheduleAt(utc(2026, 12, 10, 8), "2026-12-10T10:00:00Z")


def test_event_date_day_offsets_are_calendar_days_across_dst():
    campaign = make_live(
        "pre",
        trigger={"eventDate": {"event": {"name": "booked"}, "property": "at", "offset": "-1d"}},
        timezone={"mode": "fixed", "zone": "America/New_York"},
    )
    # noon EDT on 8 March -> noon EST on 7 March: 25 elapsed hours, same wall clock
    action = act(campaign, "booked", {"at": "2026-03-08T12:00:00"}, when=utc(2026, 3, 1), zone=None)
    assert action == ScheduleAt(utc(2026, 3, 7, 17), "2026-03-08T12:00:00")


def test_event_date_in_the_past_is_skipped_with_reason():
    action = act(TRAVEL, "trip_booked", {"departure_at": "2026-12-10"}, when=utc(2026, 12, 9, 10))
    assert isinstance(action, Skip)
    assert "in the past" in action.reason


def test_event_date_after_campaign_end_is_skipped():
    action = act(TRAVEL, "trip_booked", {"departure_at": "2028-01-05"}, when=BOOKED)
    assert isinstance(action, Skip)
    assert "start/end" in action.reason


@pytest.mark.parametrize("value", [None, True, "next tuesday", "2026-13-45", {"d": 1}, float("nan")])
def test_unusable_event_date_property_is_skipped(value):
    props = {} if value is None else {"departure_at": value}
    action = act(TRAVEL, "trip_booked", props, when=BOOKED)
    assert isinstance(action, Skip)
    assert "departure_at" in action.reason


def test_trigger_without_settings_uses_campaign_zone():
    action = trigger_for_event(TRAVEL, "trip_booked", {"departure_at": "2026-12-10"}, BOOKED, None, user_id="u1")
    assert action == ScheduleAt(utc(2026, 12, 9, 9), "2026-12-10")


def test_naive_event_time_is_rejected():
    with pytest.raises(ValueError, match="timezone-aware"):
        act(WELCOME, "signed_up", {}, when=T0.replace(tzinfo=None))
