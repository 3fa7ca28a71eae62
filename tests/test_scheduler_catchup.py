"""Missed runs after downtime: Settings.catchUp policies latest / all / skip."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_scheduler_support import fixed, make_campaign, make_settings, user_mode, utc

from reconciler.scheduler import due_runs, next_due_at, plan_catch_up, runs_between

LONG_AGO = utc(2026, 1, 1)
HOURLY = make_campaign(schedule={"cron": "0 * * * *"})


def policy(name: str, max_age: str = "6h"):
    return make_settings(catchUp={"policy": name, "maxAge": max_age})


def hours(*values: int) -> list:
    return [utc(2026, 12, 1, hour) for hour in values]


@pytest.mark.parametrize("name", ["latest", "all", "skip"])
def test_a_run_seen_within_the_grace_is_on_time_for_every_policy(name):
    got = due_runs(HOURLY, policy(name), created_at=LONG_AGO, last_run_at=utc(2026, 12, 1, 9, 59, 30),
                   now=utc(2026, 12, 1, 10, 0, 20))
    assert got == hours(10)


def test_nothing_due_between_fire_times():
    assert due_runs(HOURLY, policy("all"), created_at=LONG_AGO, last_run_at=utc(2026, 12, 1, 10, 0, 20),
                    now=utc(2026, 12, 1, 10, 30)) == []


def test_skip_drops_every_missed_run():
    plan = plan_catch_up(HOURLY, policy("skip"), created_at=LONG_AGO, last_run_at=utc(2026, 12, 1, 3, 30),
                         now=utc(2026, 12, 1, 10, 30))
    assert plan.run == []
    assert [run.at for run in plan.skipped] == hours(4, 5, 6, 7, 8, 9, 10)


def test_latest_runs_only_the_most_recent_missed_run():
    plan = plan_catch_up(HOURLY, policy("latest"), created_at=LONG_AGO, last_run_at=utc(2026, 12, 1, 3, 30),
                         now=utc(2026, 12, 1, 10, 30))
    assert [run.at for run in plan.run] == hours(10)
    assert [run.at for run in plan.skipped] == hours(4, 5, 6, 7, 8, 9)


def test_latest_prefers_an_on_time_run_over_missed_ones():
    got = due_runs(HOURLY, policy("latest"), created_at=LONG_AGO, last_run_at=utc(2026, 12, 1, 3, 30),
                   now=utc(2026, 12, 1, 10, 0, 30))
    assert got == hours(10)


def test_all_runs_every_missed_run_younger_than_max_age_oldest_first():
    plan = plan_catch_up(HOURLY, policy("all"), created_at=LONG_AGO, last_run_at=utc(2026, 12, 1, 3, 30),
                         now=utc(2026, 12, 1, 10, 30))
    assert [run.at for run in plan.run] == hours(5, 6, 7, 8, 9, 10)  # 04:00 is 6.5 h old
    assert [run.at for run in plan.skipped] == hours(4)


@pytest.mark.parametrize("name", ["latest", "all"])
def test_missed_runs_older_than_max_age_are_dropped(name):
    daily = make_campaign(schedule={"cron": "0 10 * * *"})
    got = due_runs(daily, policy(name), created_at=LONG_AGO, last_run_at=utc(2026, 12, 1, 9),
                   now=utc(2026, 12, 1, 17))
    assert got == []
    assert due_runs(daily, policy(name), created_at=LONG_AGO, last_run_at=utc(2026, 12, 1, 9),
                    now=utc(2026, 12, 1, 15, 59)) == [utc(2026, 12, 1, 10)]


def test_monthly_statement_missed_during_downtime_is_sent_late():
    statement = make_campaign(
        schedule={"every": {"unit": "months", "day": 7, "at": "10:00"}}, timezone=fixed("Asia/Kolkata")
    )
    got = due_runs(statement, policy("latest"), created_at=utc(2026, 11, 1), last_run_at=utc(2026, 12, 7),
                   now=utc(2026, 12, 7, 6))
    assert got == [utc(2026, 12, 7, 4, 30)]


def test_first_tick_after_creation_does_not_replay_runs_before_creation():
    got = due_runs(HOURLY, policy("all"), created_at=utc(2026, 12, 1, 8, 30), last_run_at=None,
                   now=utc(2026, 12, 1, 10, 0, 10))
    assert got == hours(9, 10)


def test_paused_campaign_runs_nothing_and_marks_due_runs_skipped():
    paused = make_campaign(schedule={"cron": "0 * * * *"}, paused=True)
    plan = plan_catch_up(paused, policy("all"), created_at=LONG_AGO, last_run_at=utc(2026, 12, 1, 8, 30),
                         now=utc(2026, 12, 1, 10, 0, 10))
    assert plan.run == []
    assert [run.at for run in plan.skipped] == hours(9, 10)
    assert plan.reason == "paused"


def test_user_mode_run_is_due_when_the_first_zone_reaches_it():
    daily = make_campaign(schedule={"cron": "0 10 * * *"}, timezone=user_mode("UTC"))
    plan = plan_catch_up(daily, policy("skip"), created_at=LONG_AGO, last_run_at=utc(2026, 12, 6, 19),
                         now=utc(2026, 12, 6, 20, 0, 30))
    assert [run.key for run in plan.run] == ["2026-12-07T10:00"]
    assert [run.at for run in plan.run] == [utc(2026, 12, 7, 10)]


@pytest.mark.parametrize(
    ("name", "max_age", "expected"),
    [
        ("latest", "6h", ["2026-12-07T10:00"]),
        ("all", "6h", ["2026-12-07T10:00"]),  # the 6th closed 8 h ago everywhere
        ("all", "12h", ["2026-12-06T10:00", "2026-12-07T10:00"]),
        ("latest", "12h", ["2026-12-07T10:00"]),  # an open run supersedes the missed one
        ("skip", "12h", ["2026-12-07T10:00"]),
    ],
)
def test_user_mode_downtime(name, max_age, expected):
    daily = make_campaign(schedule={"cron": "0 10 * * *"}, timezone=user_mode("UTC"))
    plan = plan_catch_up(daily, policy(name, max_age), created_at=LONG_AGO, last_run_at=utc(2026, 12, 5),
                         now=utc(2026, 12, 7, 6))
    assert [run.key for run in plan.run] == expected


def test_next_due_at_is_when_the_next_run_opens():
    assert next_due_at(HOURLY, policy("all"), created_at=LONG_AGO, after=utc(2026, 12, 1, 10)) == utc(2026, 12, 1, 11)
    daily_user = make_campaign(schedule={"cron": "0 10 * * *"}, timezone=user_mode("UTC"))
    assert next_due_at(daily_user, policy("all"), created_at=LONG_AGO, after=utc(2026, 12, 1, 10)) == utc(2026, 12, 1, 20)
    paused = make_campaign(schedule={"cron": "0 * * * *"}, paused=True)
    assert next_due_at(paused, policy("all"), created_at=LONG_AGO, after=utc(2026, 12, 1, 10)) == utc(2026, 12, 1, 11)
    once = make_campaign(schedule={"once": "2026-12-01T09:00:00Z"})
    assert next_due_at(once, policy("all"), created_at=LONG_AGO, after=utc(2026, 12, 1, 10)) is None


def test_a_long_outage_only_enumerates_runs_that_could_still_run():
    minutely = make_campaign(schedule={"cron": "* * * * *"})
    plan = plan_catch_up(minutely, policy("all", "10m"), created_at=LONG_AGO, last_run_at=utc(2026, 6, 1),
                         now=utc(2026, 12, 1, 12, 0, 30))
    assert [run.at for run in plan.run][:2] == [utc(2026, 12, 1, 11, 51), utc(2026, 12, 1, 11, 52)]
    assert plan.run[-1].at == utc(2026, 12, 1, 12)
    assert len(plan.run) == 10
    assert plan.skipped and min(run.at for run in plan.skipped) >= utc(2026, 12, 1, 12) - timedelta(hours=27)


def test_endless_enumeration_is_refused():
    with pytest.raises(ValueError, match="until"):
        runs_between(HOURLY, policy("all"), created_at=LONG_AGO)
