"""User-time-zone delivery: fan-out by zone, per-zone creation guard and catch-up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from test_scheduler_support import fixed, make_campaign, make_settings, user_mode, utc

from reconciler.scheduler import fanout_by_timezone, fanout_run, runs_between

LONG_AGO = utc(2026, 1, 1)


def test_fanout_across_zones_including_half_hour_and_plus_fourteen():
    zones = ["Asia/Kolkata", "+05:30", "Pacific/Kiritimati", "+14:00", "America/New_York", "Pacific/Pago_Pago",
             "Asia/Kathmandu", "UTC"]
    got = fanout_by_timezone(datetime(2026, 12, 7, 10), zones)
    assert got == {
        "Asia/Kolkata": utc(2026, 12, 7, 4, 30),
        "+05:30": utc(2026, 12, 7, 4, 30),
        "Pacific/Kiritimati": utc(2026, 12, 6, 20),  # UTC+14: the earliest moment of the run
        "+14:00": utc(2026, 12, 6, 20),
        "America/New_York": utc(2026, 12, 7, 15),
        "Pacific/Pago_Pago": utc(2026, 12, 7, 21),  # UTC-11
        "Asia/Kathmandu": utc(2026, 12, 7, 4, 15),  # UTC+05:45
        "UTC": utc(2026, 12, 7, 10),
    }


def test_absent_or_unknown_zones_fall_back():
    got = fanout_by_timezone(datetime(2026, 12, 7, 10), [None, "", "Mars/Olympus", "+15:00"], fallback="Europe/Berlin")
    assert set(got.values()) == {utc(2026, 12, 7, 9)}
    assert set(got) == {None, "", "Mars/Olympus", "+15:00"}


def test_fanout_uses_only_the_wall_time_of_an_aware_input_and_applies_dst_per_zone():
    wall = datetime(2026, 3, 8, 2, 30, tzinfo=UTC)  # 02:30 does not exist in New York that day
    got = fanout_by_timezone(wall, ["America/New_York", "Europe/London"])
    assert got == {"America/New_York": utc(2026, 3, 8, 7, 30), "Europe/London": utc(2026, 3, 8, 2, 30)}


def _user_run(**extra):
    campaign = make_campaign(schedule={"once": "2026-12-07T10:00:00"}, timezone=user_mode("Asia/Kolkata"), **extra)
    runs = runs_between(campaign, make_settings(), created_at=LONG_AGO)
    return campaign, runs[0]


ZONES = ["Pacific/Kiritimati", "Asia/Kolkata", "America/New_York", None]


def test_fanout_run_before_opening_schedules_every_zone_at_its_moment():
    campaign, run = _user_run()
    slots = fanout_run(campaign, make_settings(), run, ZONES, created_at=LONG_AGO, now=utc(2026, 12, 6, 12))
    assert {zone: (slot.status, slot.send_at) for zone, slot in slots.items()} == {
        "Pacific/Kiritimati": ("scheduled", utc(2026, 12, 6, 20)),
        "Asia/Kolkata": ("scheduled", utc(2026, 12, 7, 4, 30)),
        "America/New_York": ("scheduled", utc(2026, 12, 7, 15)),
        None: ("scheduled", utc(2026, 12, 7, 4, 30)),  # no zone: the campaign zone
    }


@pytest.mark.parametrize("policy", ["latest", "all"])
def test_zones_already_past_catch_up_within_max_age(policy):
    campaign, run = _user_run()
    settings = make_settings(catchUp={"policy": policy, "maxAge": "6h"})
    now = utc(2026, 12, 7, 6)
    slots = fanout_run(campaign, settings, run, ZONES, created_at=LONG_AGO, now=now)
    assert slots["Pacific/Kiritimati"].status == "skipped"  # 10 h late: older than maxAge
    assert slots["Pacific/Kiritimati"].send_at is None
    assert (slots["Asia/Kolkata"].status, slots["Asia/Kolkata"].send_at) == ("catch_up", now)  # 1.5 h late
    assert slots["Asia/Kolkata"].scheduled_for == utc(2026, 12, 7, 4, 30)
    assert (slots["America/New_York"].status, slots["America/New_York"].send_at) == ("scheduled", utc(2026, 12, 7, 15))


def test_zones_already_past_are_dropped_under_skip():
    campaign, run = _user_run()
    settings = make_settings(catchUp={"policy": "skip"})
    slots = fanout_run(campaign, settings, run, ZONES, created_at=LONG_AGO, now=utc(2026, 12, 7, 6))
    assert [zone for zone, slot in slots.items() if slot.status == "skipped"] == [
        "Pacific/Kiritimati", "Asia/Kolkata", None
    ]
    assert slots["America/New_York"].status == "scheduled"


def test_a_moment_within_the_grace_is_on_time_not_missed():
    campaign, run = _user_run()
    settings = make_settings(catchUp={"policy": "skip"})
    now = utc(2026, 12, 7, 4, 30, 40)
    slots = fanout_run(campaign, settings, run, ["Asia/Kolkata"], created_at=LONG_AGO, now=now)
    assert (slots["Asia/Kolkata"].status, slots["Asia/Kolkata"].send_at) == ("scheduled", utc(2026, 12, 7, 4, 30))
    later = fanout_run(campaign, settings, run, ["Asia/Kolkata"], created_at=LONG_AGO, now=now,
                       grace=timedelta(seconds=10))
    assert later["Asia/Kolkata"].status == "skipped"


def test_zones_whose_moment_precedes_creation_never_get_the_run():
    campaign, run = _user_run()
    created = utc(2026, 12, 7, 5)  # after the run's moment in Kiritimati and India, before New York
    slots = fanout_run(campaign, make_settings(), run, ZONES, created_at=created, now=created)
    assert slots["Pacific/Kiritimati"].status == "skipped"
    assert "before the campaign was created" in slots["Asia/Kolkata"].reason
    assert slots["America/New_York"].status == "scheduled"


def test_zones_whose_moment_is_after_end_are_skipped():
    campaign, run = _user_run(end="2026-12-07T12:00:00Z")
    slots = fanout_run(campaign, make_settings(), run, ZONES, created_at=LONG_AGO, now=utc(2026, 12, 6))
    assert slots["America/New_York"].status == "skipped"
    assert slots["America/New_York"].reason == "after the campaign end"
    assert slots["Asia/Kolkata"].status == "scheduled"


def test_fixed_mode_sends_every_zone_at_the_single_instant():
    campaign = make_campaign(schedule={"once": "2026-12-07T10:00:00"}, timezone=fixed("Asia/Kolkata"))
    [run] = runs_between(campaign, make_settings(), created_at=LONG_AGO)
    slots = fanout_run(campaign, make_settings(), run, ZONES, created_at=LONG_AGO, now=utc(2026, 12, 1))
    assert {slot.send_at for slot in slots.values()} == {utc(2026, 12, 7, 4, 30)}


def test_monthly_user_mode_created_on_the_day_reaches_only_zones_still_before_the_hour():
    campaign = make_campaign(
        schedule={"every": {"unit": "months", "day": 7, "at": "10:00"}}, timezone=user_mode("Asia/Kolkata")
    )
    created = utc(2026, 12, 7, 12)  # 17:30 in India, 07:00 in New York
    first, second = runs_between(campaign, make_settings(), created_at=created, limit=2)
    assert (first.key, second.key) == ("2026-12-07T10:00", "2027-01-07T10:00")
    slots = fanout_run(campaign, make_settings(), first, ["Asia/Kolkata", "America/New_York"],
                       created_at=created, now=created)
    assert slots["Asia/Kolkata"].status == "skipped"  # gets the January run
    assert (slots["America/New_York"].status, slots["America/New_York"].send_at) == ("scheduled", utc(2026, 12, 7, 15))
