"""Do-not-disturb windows, frequency caps and the user's local day."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_scheduler_support import make_campaign, make_settings, utc

from reconciler.models.campaign import DndWindow
from reconciler.scheduler import apply_dnd, cap_decision, effective_dnd, local_day_bounds, recipient_zone

NIGHT_DELAY = DndWindow(start="21:00", end="09:00", action="delay")
NIGHT_DISCARD = DndWindow(start="21:00", end="09:00", action="discard")
LUNCH = DndWindow(start="12:00", end="13:30", action="delay")


def test_outside_the_window_sends_unchanged():
    decision = apply_dnd(utc(2026, 12, 7, 10), "UTC", NIGHT_DELAY)
    assert (decision.action, decision.send_at) == ("send", utc(2026, 12, 7, 10))
    assert apply_dnd(utc(2026, 12, 7, 22), "UTC", None).action == "send"


@pytest.mark.parametrize(
    ("send_at", "expected"),
    [
        (utc(2026, 12, 7, 21), utc(2026, 12, 8, 9)),  # start is inclusive; evening part: next morning
        (utc(2026, 12, 7, 23, 59), utc(2026, 12, 8, 9)),
        (utc(2026, 12, 8, 0, 0), utc(2026, 12, 8, 9)),  # after midnight: the same morning
        (utc(2026, 12, 8, 8, 59), utc(2026, 12, 8, 9)),
    ],
)
def test_delay_across_midnight_moves_to_the_window_end(send_at, expected):
    decision = apply_dnd(send_at, "UTC", NIGHT_DELAY)
    assert (decision.action, decision.send_at) == ("delay", expected)


def test_end_is_exclusive():
    assert apply_dnd(utc(2026, 12, 8, 9), "UTC", NIGHT_DELAY).action == "send"


def test_window_is_in_the_recipients_local_time():
    # 16:00 UTC is 21:30 in India (quiet) and 11:00 in New York (not quiet)
    india = apply_dnd(utc(2026, 12, 7, 16), "Asia/Kolkata", NIGHT_DELAY)
    assert (india.action, india.send_at) == ("delay", utc(2026, 12, 8, 3, 30))  # 09:00 IST
    assert apply_dnd(utc(2026, 12, 7, 16), "America/New_York", NIGHT_DELAY).action == "send"


def test_discard_drops_the_message():
    decision = apply_dnd(utc(2026, 12, 7, 22), "UTC", NIGHT_DISCARD)
    assert (decision.action, decision.send_at) == ("discard", None)


def test_window_that_does_not_wrap():
    assert apply_dnd(utc(2026, 12, 7, 12, 45), "UTC", LUNCH).send_at == utc(2026, 12, 7, 13, 30)
    assert apply_dnd(utc(2026, 12, 7, 11, 59), "UTC", LUNCH).action == "send"


def test_delay_end_respects_dst_on_the_next_day():
    # 22:00 EST on 7 March; the window ends at 09:00 EDT on 8 March (UTC-4)
    decision = apply_dnd(utc(2026, 3, 8, 3), "America/New_York", NIGHT_DELAY)
    assert decision.send_at == utc(2026, 3, 8, 13)


def test_campaign_window_overrides_settings_window():
    settings = make_settings(dnd={"start": "21:00", "end": "09:00", "action": "delay"})
    own = make_campaign(schedule={"cron": "0 10 * * *"}, dnd={"start": "22:00", "end": "08:00", "action": "discard"})
    plain = make_campaign(schedule={"cron": "0 10 * * *"})
    assert effective_dnd(own, settings) == DndWindow(start="22:00", end="08:00", action="discard")
    assert effective_dnd(plain, settings) == DndWindow(start="21:00", end="09:00", action="delay")
    assert effective_dnd(plain, make_settings()) is None


def test_unknown_user_zone_falls_back_to_the_campaign_zone():
    campaign = make_campaign(schedule={"cron": "0 10 * * *"}, timezone={"mode": "user", "zone": "Asia/Kolkata"})
    zone = recipient_zone(campaign, make_settings(), "Nowhere/Land")
    assert apply_dnd(utc(2026, 12, 7, 16), zone, NIGHT_DELAY).send_at == utc(2026, 12, 8, 3, 30)
    direct = apply_dnd(utc(2026, 12, 7, 16), "Nowhere/Land", NIGHT_DELAY, fallback="Asia/Kolkata")
    assert direct.send_at == utc(2026, 12, 8, 3, 30)
    assert apply_dnd(utc(2026, 12, 7, 16), None, NIGHT_DELAY).action == "send"  # default fallback: UTC


# --- caps -----------------------------------------------------------------------------------------

GLOBAL_3 = make_settings(frequencyCap={"perDay": 3})


def test_global_cap_blocks_at_the_limit():
    campaign = make_campaign(schedule={"cron": "0 10 * * *"})
    assert cap_decision(campaign, GLOBAL_3, 2, 0).allowed
    blocked = cap_decision(campaign, GLOBAL_3, 3, 0)
    assert (blocked.allowed, blocked.reason) == (False, "global_cap")


def test_no_caps_configured_allows_everything():
    campaign = make_campaign(schedule={"cron": "0 10 * * *"})
    assert cap_decision(campaign, make_settings(), 500, 500).allowed


def test_ignore_global_lifts_the_global_cap():
    campaign = make_campaign(schedule={"cron": "0 10 * * *"}, frequencyCap={"ignoreGlobal": True})
    assert cap_decision(campaign, GLOBAL_3, 10, 0).allowed


def test_campaign_cap_applies_alongside_the_global_one():
    campaign = make_campaign(schedule={"cron": "0 10 * * *"}, frequencyCap={"perDay": 1})
    blocked = cap_decision(campaign, GLOBAL_3, 1, 1)
    assert (blocked.allowed, blocked.reason) == (False, "campaign_cap")
    assert cap_decision(campaign, GLOBAL_3, 3, 0).reason == "global_cap"
    assert cap_decision(campaign, GLOBAL_3, 2, 0).allowed


def test_campaign_cap_with_ignore_global():
    campaign = make_campaign(schedule={"cron": "0 10 * * *"}, frequencyCap={"ignoreGlobal": True, "perDay": 2})
    assert cap_decision(campaign, GLOBAL_3, 9, 1).allowed
    assert cap_decision(campaign, GLOBAL_3, 9, 2).reason == "campaign_cap"


def test_local_day_bounds_follow_the_users_day():
    # 20:00 UTC on 7 Dec is already 8 Dec in India
    start, end = local_day_bounds(utc(2026, 12, 7, 20), "Asia/Kolkata")
    assert (start, end) == (utc(2026, 12, 7, 18, 30), utc(2026, 12, 8, 18, 30))


def test_local_day_bounds_on_dst_days_are_23_and_25_hours():
    start, end = local_day_bounds(utc(2026, 3, 8, 12), "America/New_York")
    assert (start, end - start) == (utc(2026, 3, 8, 5), timedelta(hours=23))
    start, end = local_day_bounds(utc(2026, 11, 1, 12), "America/New_York")
    assert (start, end - start) == (utc(2026, 11, 1, 4), timedelta(hours=25))
