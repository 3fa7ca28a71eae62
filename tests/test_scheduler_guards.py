"""Issue 8 timing: freeze windows (cron marks starts, duration their length) and message validity."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_scheduler_support import make_campaign, make_settings, utc

from reconciler.scheduler import active_freeze, active_freeze_window, deliveries_paused, expires_at

WEEKEND = {"cron": "0 18 * * 5", "duration": "63h"}  # Friday 18:00 until Monday 09:00
LONDON_WEEKEND = make_settings(defaultTimezone="Europe/London", freezeWindows=[WEEKEND])


@pytest.mark.parametrize(
    ("now", "active"),
    [
        (utc(2026, 12, 4, 17, 59), False),
        (utc(2026, 12, 4, 18), True),  # Friday 18:00 GMT: the start is inclusive
        (utc(2026, 12, 6, 12), True),
        (utc(2026, 12, 7, 8, 59), True),
        (utc(2026, 12, 7, 9), False),  # Monday 09:00: the end is exclusive
        (utc(2026, 12, 9, 12), False),
    ],
)
def test_weekend_freeze(now, active):
    assert (active_freeze_window(LONDON_WEEKEND, now) is not None) is active


def test_freeze_bounds_and_zone():
    found = active_freeze(LONDON_WEEKEND, utc(2026, 12, 5))
    assert found is not None
    assert (found.started_at, found.ends_at) == (utc(2026, 12, 4, 18), utc(2026, 12, 7, 9))
    summer = active_freeze(LONDON_WEEKEND, utc(2026, 7, 3, 17, 30))  # Friday 18:30 BST
    assert summer is not None and summer.started_at == utc(2026, 7, 3, 17)


def test_no_windows_no_freeze():
    assert active_freeze_window(make_settings(), utc(2026, 12, 5)) is None
    assert not deliveries_paused(make_settings(), utc(2026, 12, 5))


def test_a_window_longer_than_its_period_is_always_on():
    settings = make_settings(freezeWindows=[{"cron": "0 0 * * *", "duration": "36h"}])
    found = active_freeze(settings, utc(2026, 12, 5, 3))
    assert found is not None and found.ends_at == utc(2026, 12, 6, 12)


def test_pausing_window_wins_over_a_continuing_one():
    settings = make_settings(
        freezeWindows=[WEEKEND, {"cron": "0 0 5 12 *", "duration": "1d", "deliveries": "pause"}]
    )
    found = active_freeze_window(settings, utc(2026, 12, 5, 12))
    assert found is not None and found.deliveries == "pause"
    assert deliveries_paused(settings, utc(2026, 12, 5, 12))
    assert not deliveries_paused(settings, utc(2026, 12, 6, 12))
    assert active_freeze_window(settings, utc(2026, 12, 6, 12)) is not None


# --- validity --------------------------------------------------------------------------------------

def test_campaign_validity_counts_from_enqueue():
    campaign = make_campaign(schedule={"cron": "0 10 * * *"}, validity="2h")
    assert expires_at(campaign, make_settings(validity="24h"), utc(2026, 12, 4, 10)) == utc(2026, 12, 4, 12)


def test_settings_validity_is_the_default():
    campaign = make_campaign(schedule={"cron": "0 10 * * *"})
    assert expires_at(campaign, make_settings(validity="24h"), utc(2026, 12, 4, 10)) == utc(2026, 12, 5, 10)
    assert expires_at(campaign, make_settings(), utc(2026, 12, 4, 10)) is None


def test_validity_counts_from_the_scheduled_moment():
    campaign = make_campaign(schedule={"cron": "0 10 * * *"}, validity="2h")
    enqueued = utc(2026, 12, 4, 10)
    later = enqueued + timedelta(hours=14)  # a user-time-zone moment far to the west
    assert expires_at(campaign, make_settings(), enqueued, scheduled_for=later) == later + timedelta(hours=2)
    missed = enqueued - timedelta(hours=3)  # caught up 3 h late: already worthless
    assert expires_at(campaign, make_settings(), enqueued, scheduled_for=missed) == utc(2026, 12, 4, 9)
