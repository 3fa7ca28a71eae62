"""next_fire_times / runs_between: every schedule kind, the creation guard, start/end, DST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st
from test_scheduler_support import fixed, make_campaign, make_live, make_settings, user_mode, utc

from reconciler.scheduler import campaign_window, next_fire_times, runs_between

SETTINGS = make_settings()
LONG_AGO = utc(2026, 1, 1)


def fires(campaign, *, created_at=LONG_AGO, after=LONG_AGO, until=None, limit=10, settings_=SETTINGS):
    return next_fire_times(campaign, settings_, created_at=created_at, after=after, until=until, limit=limit)


# --- once / dates -------------------------------------------------------------------------------

def test_once_naive_is_read_in_the_campaign_zone():
    campaign = make_campaign(schedule={"once": "2026-12-04T10:00:00"}, timezone=fixed("America/New_York"))
    assert fires(campaign) == [utc(2026, 12, 4, 15)]


def test_once_with_offset_keeps_its_instant():
    campaign = make_campaign(schedule={"once": "2026-12-04T10:00:00Z"}, timezone=fixed("America/New_York"))
    assert fires(campaign) == [utc(2026, 12, 4, 10)]


def test_without_timezone_the_settings_default_zone_applies():
    campaign = make_campaign(schedule={"once": "2026-12-04T10:00:00"})
    kolkata = make_settings(defaultTimezone="Asia/Kolkata")
    assert fires(campaign, settings_=kolkata) == [utc(2026, 12, 4, 4, 30)]
    assert fires(campaign) == [utc(2026, 12, 4, 10)]


def test_after_is_exclusive_and_until_inclusive():
    campaign = make_campaign(schedule={"once": "2026-12-04T10:00:00Z"})
    assert fires(campaign, after=utc(2026, 12, 4, 10)) == []
    assert fires(campaign, after=utc(2026, 12, 4, 9), until=utc(2026, 12, 4, 10)) == [utc(2026, 12, 4, 10)]
    assert fires(campaign, after=utc(2026, 12, 4, 9), until=utc(2026, 12, 4, 9, 59)) == []


def test_dates_come_out_sorted_and_limited():
    campaign = make_campaign(
        schedule={"dates": ["2026-12-24T09:30:00", "2026-12-20T09:30:00", "2026-12-22T09:30:00"]},
        timezone=fixed("America/New_York"),
    )
    assert fires(campaign) == [utc(2026, 12, 20, 14, 30), utc(2026, 12, 22, 14, 30), utc(2026, 12, 24, 14, 30)]
    assert fires(campaign, limit=1) == [utc(2026, 12, 20, 14, 30)]
    assert fires(campaign, after=utc(2026, 12, 21)) == [utc(2026, 12, 22, 14, 30), utc(2026, 12, 24, 14, 30)]


def test_a_one_time_send_before_creation_never_fires():
    campaign = make_campaign(schedule={"once": "2026-12-04T10:00:00Z"})
    assert fires(campaign, created_at=utc(2026, 12, 4, 10, 1)) == []
    assert fires(campaign, created_at=utc(2026, 12, 4, 10)) == [utc(2026, 12, 4, 10)]


# --- cron -----------------------------------------------------------------------------------------

def test_cron_in_a_zone_follows_its_offset_through_the_year():
    campaign = make_campaign(schedule={"cron": "0 18 * * 5"}, timezone=fixed("Europe/London"))
    assert fires(campaign, after=utc(2026, 12, 1), limit=2) == [utc(2026, 12, 4, 18), utc(2026, 12, 11, 18)]
    assert fires(campaign, after=utc(2026, 7, 1), limit=1) == [utc(2026, 7, 3, 17)]


def test_cron_that_never_matches_yields_nothing():
    campaign = make_campaign(schedule={"cron": "0 0 30 2 *"})
    assert fires(campaign) == []


def test_cron_day_of_month_never_fires_before_creation():
    campaign = make_campaign(schedule={"cron": "0 10 7 * *"}, timezone=fixed("Asia/Kolkata"))
    created_before_ten = utc(2026, 12, 7, 4)  # 09:30 IST on the 7th
    created_after_ten = utc(2026, 12, 7, 5)  # 10:30 IST on the 7th
    assert fires(campaign, created_at=created_before_ten, after=created_before_ten, limit=1) == [
        utc(2026, 12, 7, 4, 30)
    ]
    # asking from an earlier `after` must not resurrect the run that predates creation
    assert fires(campaign, created_at=created_after_ten, after=utc(2026, 12, 1), limit=1) == [utc(2027, 1, 7, 4, 30)]


# --- every ----------------------------------------------------------------------------------------

def test_every_n_days_counts_from_creation():
    campaign = make_campaign(schedule={"every": {"interval": 2, "unit": "days", "at": "10:00"}})
    assert fires(campaign, created_at=utc(2026, 12, 1, 8), limit=3) == [
        utc(2026, 12, 1, 10), utc(2026, 12, 3, 10), utc(2026, 12, 5, 10)
    ]
    # created after today's slot: the first slot is tomorrow, and the phase follows it
    assert fires(campaign, created_at=utc(2026, 12, 1, 11), limit=3) == [
        utc(2026, 12, 2, 10), utc(2026, 12, 4, 10), utc(2026, 12, 6, 10)
    ]


def test_every_n_weeks_starts_on_the_first_matching_weekday():
    campaign = make_campaign(
        schedule={"every": {"interval": 2, "unit": "weeks", "weekday": "mon", "at": "09:00"}}
    )
    created = utc(2026, 12, 2, 12)  # a Wednesday
    assert fires(campaign, created_at=created, limit=3) == [utc(2026, 12, 7, 9), utc(2026, 12, 21, 9), utc(2027, 1, 4, 9)]
    # the phase is stable however late we ask
    assert fires(campaign, created_at=created, after=utc(2027, 1, 5), limit=1) == [utc(2027, 1, 18, 9)]


@pytest.mark.parametrize(
    ("created", "first"),
    [
        (utc(2026, 12, 7, 4), utc(2026, 12, 7, 4, 30)),  # 09:30 IST on the 7th: this month
        (utc(2026, 12, 7, 5), utc(2027, 1, 7, 4, 30)),  # 10:30 IST on the 7th: next month
        (utc(2026, 12, 8, 1), utc(2027, 1, 7, 4, 30)),  # on the 8th: next month
        (utc(2026, 11, 20), utc(2026, 12, 7, 4, 30)),  # before the 7th: this month
    ],
)
def test_monthly_day_never_fires_before_creation(created, first):
    campaign = make_campaign(
        schedule={"every": {"unit": "months", "day": 7, "at": "10:00"}}, timezone=fixed("Asia/Kolkata")
    )
    assert fires(campaign, created_at=created, after=utc(2026, 11, 1), limit=1) == [first]


def test_monthly_day_never_fires_before_start():
    campaign = make_campaign(
        schedule={"every": {"unit": "months", "day": 7, "at": "10:00"}},
        timezone=fixed("Asia/Kolkata"),
        start="2027-02-07T10:30:00",
    )
    assert fires(campaign, created_at=utc(2026, 12, 1), limit=2) == [utc(2027, 3, 7, 4, 30), utc(2027, 4, 7, 4, 30)]


def test_monthly_last_day_of_month():
    campaign = make_campaign(schedule={"every": {"unit": "months", "day": -1, "at": "20:00"}})
    assert fires(campaign, created_at=utc(2027, 1, 1), limit=4) == [
        utc(2027, 1, 31, 20), utc(2027, 2, 28, 20), utc(2027, 3, 31, 20), utc(2027, 4, 30, 20)
    ]
    assert fires(campaign, created_at=utc(2028, 2, 1), limit=1) == [utc(2028, 2, 29, 20)]


def test_every_three_months_is_anchored_at_the_first_slot():
    campaign = make_campaign(schedule={"every": {"interval": 3, "unit": "months", "day": 7, "at": "10:00"}})
    created = utc(2026, 12, 8)
    assert fires(campaign, created_at=created, limit=3) == [utc(2027, 1, 7, 10), utc(2027, 4, 7, 10), utc(2027, 7, 7, 10)]
    assert fires(campaign, created_at=created, after=utc(2028, 2, 1), limit=1) == [utc(2028, 4, 7, 10)]


def test_every_is_anchored_at_start_when_given():
    campaign = make_campaign(
        schedule={"every": {"interval": 2, "unit": "days", "at": "10:00"}}, start="2026-12-01T00:00:00Z"
    )
    # created later, on an "off" day: the phase still comes from start (1st, 3rd, 5th ...)
    assert fires(campaign, created_at=utc(2026, 12, 4, 12), limit=2) == [utc(2026, 12, 5, 10), utc(2026, 12, 7, 10)]


# --- start / end ----------------------------------------------------------------------------------

def test_start_inclusive_end_exclusive():
    campaign = make_campaign(
        schedule={"cron": "0 10 * * *"}, start="2026-12-03T10:00:00Z", end="2026-12-06T10:00:00Z"
    )
    assert fires(campaign) == [utc(2026, 12, 3, 10), utc(2026, 12, 4, 10), utc(2026, 12, 5, 10)]


def test_naive_start_and_end_are_read_in_the_campaign_zone():
    campaign = make_campaign(
        schedule={"cron": "0 * * * *"},
        timezone=fixed("Asia/Kolkata"),
        start="2026-12-03T10:00:00",
        end="2026-12-03T12:00:00",
    )
    assert campaign_window(campaign, SETTINGS) == (utc(2026, 12, 3, 4, 30), utc(2026, 12, 3, 6, 30))
    assert fires(campaign) == [utc(2026, 12, 3, 4, 30), utc(2026, 12, 3, 5, 30)]


def test_paused_and_live_campaigns_have_no_fire_times():
    assert fires(make_campaign(schedule={"cron": "* * * * *"}, paused=True)) == []
    assert fires(make_live(trigger={"event": {"name": "signed_up"}})) == []


def test_naive_bounds_are_rejected():
    campaign = make_campaign(schedule={"cron": "0 10 * * *"})
    with pytest.raises(ValueError, match="timezone-aware"):
        fires(campaign, after=datetime(2026, 12, 1))


# --- DST (America/New_York: spring forward 2026-03-08 02:00, fall back 2026-11-01 02:00) -----------

NY = fixed("America/New_York")


def test_spring_forward_nonexistent_time_moves_forward_by_the_gap():
    campaign = make_campaign(schedule={"cron": "30 2 * * *"}, timezone=NY)
    assert fires(campaign, after=utc(2026, 3, 7), limit=3) == [
        utc(2026, 3, 7, 7, 30),  # 02:30 EST
        utc(2026, 3, 8, 7, 30),  # 02:30 does not exist: 03:30 EDT
        utc(2026, 3, 9, 6, 30),  # 02:30 EDT
    ]


def test_spring_forward_half_hourly_cron_has_no_duplicates_and_stays_ordered():
    campaign = make_campaign(schedule={"cron": "*/30 * * * *"}, timezone=NY)
    assert fires(campaign, after=utc(2026, 3, 8, 5, 45), limit=5) == [
        utc(2026, 3, 8, 6), utc(2026, 3, 8, 6, 30), utc(2026, 3, 8, 7), utc(2026, 3, 8, 7, 30), utc(2026, 3, 8, 8)
    ]


def test_an_after_just_past_the_gap_still_sees_the_shifted_run():
    campaign = make_campaign(schedule={"cron": "30 2 * * *"}, timezone=NY)
    assert fires(campaign, after=utc(2026, 3, 8, 7, 15), limit=1) == [utc(2026, 3, 8, 7, 30)]


def test_fall_back_ambiguous_time_fires_once_at_the_first_occurrence():
    campaign = make_campaign(schedule={"cron": "30 1 * * *"}, timezone=NY)
    assert fires(campaign, after=utc(2026, 10, 31), limit=3) == [
        utc(2026, 10, 31, 5, 30),  # EDT
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT, the first of two 01:30s
        utc(2026, 11, 2, 6, 30),  # EST
    ]


def test_fall_back_hourly_cron_skips_the_repeated_hour():
    campaign = make_campaign(schedule={"cron": "0 * * * *"}, timezone=NY)
    assert fires(campaign, after=utc(2026, 11, 1, 3, 30), limit=3) == [
        utc(2026, 11, 1, 4), utc(2026, 11, 1, 5), utc(2026, 11, 1, 7)
    ]


def test_every_day_keeps_its_wall_time_across_dst():
    campaign = make_campaign(schedule={"every": {"unit": "days", "at": "09:00"}}, timezone=NY)
    assert fires(campaign, created_at=utc(2026, 3, 7), limit=2) == [utc(2026, 3, 7, 14), utc(2026, 3, 8, 13)]


# --- user-time-zone runs --------------------------------------------------------------------------

def test_user_mode_run_spans_every_zone():
    campaign = make_campaign(schedule={"once": "2026-12-07T10:00:00"}, timezone=user_mode("Asia/Kolkata"))
    [run] = runs_between(campaign, SETTINGS, created_at=LONG_AGO)
    assert run.at == utc(2026, 12, 7, 4, 30)
    assert run.local == datetime(2026, 12, 7, 10)
    assert run.key == "2026-12-07T10:00"
    assert run.opens_at == utc(2026, 12, 6, 20)  # 10:00 at UTC+14
    assert run.closes_at == utc(2026, 12, 7, 22)  # 10:00 at UTC-12


def test_user_mode_run_exists_while_some_zone_is_after_creation():
    campaign = make_campaign(schedule={"cron": "0 10 7 * *"}, timezone=user_mode("Asia/Kolkata"))
    created = utc(2026, 12, 7, 12)  # past 10:00 in India, still before 10:00 in the Americas
    runs = runs_between(campaign, SETTINGS, created_at=created, limit=2)
    assert [run.key for run in runs] == ["2026-12-07T10:00", "2027-01-07T10:00"]
    too_late = utc(2026, 12, 7, 22, 1)  # past 10:00 everywhere
    assert runs_between(campaign, SETTINGS, created_at=too_late, limit=1)[0].key == "2027-01-07T10:00"


def test_user_mode_runs_selected_by_opening_time():
    campaign = make_campaign(schedule={"cron": "0 10 * * *"}, timezone=user_mode("UTC"))
    runs = runs_between(
        campaign, SETTINGS, created_at=LONG_AGO, after=utc(2026, 12, 6, 19), until=utc(2026, 12, 7, 21), by="opens_at"
    )
    assert [run.key for run in runs] == ["2026-12-07T10:00", "2026-12-08T10:00"]


# --- property: the optimized enumeration equals a brute-force one ----------------------------------

ZONES = ["UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata",
         "Pacific/Chatham", "America/Santiago", "Pacific/Apia"]
# expression -> days that surely hold 8 matches
CRONS = {"0 10 * * *": 10, "30 2 * * *": 10, "*/20 * * * *": 2, "15 0,1,2,3 * * *": 4, "0 10 7 * *": 280,
         "45 23 * * 0": 70, "0 0 * * *": 10}


def brute_force(expression: str, zone: str, after: datetime, limit: int, span: timedelta) -> list[datetime]:
    """Every wall time from well before `after` to well after `after + span`, resolved with fold=0."""
    tz = ZoneInfo(zone)
    start_wall = after.astimezone(tz).replace(tzinfo=None) - timedelta(days=3)
    end_wall = start_wall + span + timedelta(days=6)
    walls = croniter(expression, start_wall, ret_type=datetime)
    instants: set[datetime] = set()
    while (wall := walls.get_next(datetime)) < end_wall:
        instant = wall.replace(tzinfo=tz).astimezone(UTC)
        if instant > after:
            instants.add(instant)
    return sorted(instants)[:limit]


@settings(max_examples=150, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    expression=st.sampled_from(sorted(CRONS)),
    after=st.datetimes(min_value=datetime(2011, 12, 27), max_value=datetime(2027, 12, 31)).map(
        lambda value: value.replace(tzinfo=UTC)
    ),
    limit=st.integers(min_value=1, max_value=8),
)
def test_cron_enumeration_matches_brute_force(zone, expression, after, limit):
    campaign = make_campaign(schedule={"cron": expression}, timezone=fixed(zone))
    expected = brute_force(expression, zone, after, limit, timedelta(days=CRONS[expression]))
    assert len(expected) == limit
    assert fires(campaign, created_at=datetime(2000, 1, 1, tzinfo=UTC), after=after, limit=limit) == expected


def transitions(zone: str, first: datetime, last: datetime) -> list[datetime]:
    """Instants (to the hour) where the zone's UTC offset changes."""
    tz = ZoneInfo(zone)
    found, moment = [], first
    while moment < last:
        if (moment + timedelta(hours=1)).astimezone(tz).utcoffset() != moment.astimezone(tz).utcoffset():
            found.append(moment)
        moment += timedelta(hours=1)
    return found


TRANSITIONS = [(zone, moment) for zone in ZONES for moment in transitions(zone, utc(2026, 1, 1), utc(2027, 1, 1))]
TRANSITIONS += [("Pacific/Apia", moment) for moment in transitions("Pacific/Apia", utc(2011, 12, 1), utc(2012, 1, 31))]


@settings(max_examples=200, deadline=None)
@given(
    transition=st.sampled_from(TRANSITIONS),
    expression=st.sampled_from(sorted(CRONS)),
    minutes=st.integers(min_value=-36 * 60, max_value=36 * 60),
    limit=st.integers(min_value=1, max_value=8),
)
def test_cron_enumeration_near_offset_changes_matches_brute_force(transition, expression, minutes, limit):
    zone, moment = transition
    after = moment + timedelta(minutes=minutes)
    campaign = make_campaign(schedule={"cron": expression}, timezone=fixed(zone))
    expected = brute_force(expression, zone, after, limit, timedelta(days=CRONS[expression]))
    assert fires(campaign, created_at=datetime(2000, 1, 1, tzinfo=UTC), after=after, limit=limit) == expected


@pytest.mark.slow
@pytest.mark.parametrize("zone", ZONES)
def test_cron_enumeration_across_a_years_transitions(zone):
    """Apia skipped 30 Dec 2011 entirely (UTC-10 -> UTC+14); the others have ordinary DST."""
    campaign = make_campaign(schedule={"cron": "*/20 * * * *"}, timezone=fixed(zone))
    after = utc(2011, 3, 1) if zone == "Pacific/Apia" else utc(2026, 1, 1)
    expected = brute_force("*/20 * * * *", zone, after, 26_000, timedelta(days=366))
    assert fires(campaign, created_at=after, after=after, limit=26_000) == expected
