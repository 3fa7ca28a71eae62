"""Chart geometry and time buckets of the dashboard (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.http.dashboard_charts import bar_chart, line_chart, nice_ceiling
from reconciler.http.dashboard_views import bucket_start, choose_unit, empty_timeline

T0 = datetime(2026, 12, 4, 10, 15, tzinfo=UTC)


@pytest.mark.parametrize(("value", "expected"), [(0, 1), (1, 1), (7, 10), (12, 20), (23, 25), (26, 50),
                                                  (50, 50), (101, 200), (2400, 2500)])
def test_nice_ceiling(value: float, expected: float) -> None:
    assert nice_ceiling(value) == expected


@given(st.floats(min_value=0, max_value=1e12, allow_nan=False))
def test_nice_ceiling_bounds_the_value_within_a_factor_of_two_and_a_half(value: float) -> None:
    top = nice_ceiling(value)
    assert top >= value and (value <= 1 or top <= 2.5 * value)


def test_line_chart_maps_values_onto_the_plot_box() -> None:
    chart = line_chart("t", ["a", "b", "c"], {"sent": [0, 10, 5], "delivered": [0, 8, 5]})
    box = chart.box
    sent = next(s for s in chart.series if s.key == "sent")
    assert [p.value for p in sent.points] == [0, 10, 5]
    assert [p.y for p in sent.points] == [box.y0, box.y1, (box.y0 + box.y1) / 2]
    assert [p.x for p in sent.points] == [box.x0, (box.x0 + box.x1) / 2, box.x1]
    assert [s.key for s in chart.series] == ["sent", "delivered", "failed", "converted"]
    failed = next(s for s in chart.series if s.key == "failed")
    assert all(p.y == box.y0 for p in failed.points)  # a metric without data is a flat zero line
    assert chart.y_ticks[0].label == "0" and chart.y_ticks[-1].label == "10"


def test_line_chart_with_one_bucket_centres_it_and_thins_many_labels() -> None:
    single = line_chart("t", ["only"], {"sent": [3]})
    assert single.series[0].points[0].x == (single.box.x0 + single.box.x1) / 2
    many = line_chart("t", [str(i) for i in range(48)], {"sent": list(range(48))})
    assert 2 <= len(many.x_ticks) <= 6 and many.x_ticks[0].label == "0"


def test_bar_chart_heights_are_proportional_and_every_metric_has_a_bar() -> None:
    chart = bar_chart("p", {"b-provider": {"sent": 40, "delivered": 20}, "a-provider": {"sent": 10}})
    assert len(chart.bars) == 8
    assert [t.label for t in chart.group_labels] == ["a-provider", "b-provider"]
    height = {(b.group, b.metric): b.height for b in chart.bars}
    assert height[("b-provider", "sent")] == pytest.approx(2 * height[("b-provider", "delivered")], abs=0.02)
    assert height[("b-provider", "sent")] == pytest.approx(4 * height[("a-provider", "sent")], abs=0.02)
    assert height[("a-provider", "failed")] == 0
    for bar in chart.bars:
        assert bar.y + bar.height == pytest.approx(chart.box.y0)


def test_time_units_follow_the_span() -> None:
    assert choose_unit(T0, T0 + timedelta(hours=48)) == "hour"
    assert choose_unit(T0, T0 + timedelta(days=3)) == "day"
    assert choose_unit(T0, T0 + timedelta(days=200)) == "week"


def test_timelines_have_consecutive_buckets_including_empty_ones() -> None:
    hours = empty_timeline(T0, T0 + timedelta(hours=2, minutes=50))
    assert [b.start.hour for b in hours.buckets] == [10, 11, 12, 13]
    days = empty_timeline(T0, T0 + timedelta(days=3))
    assert days.unit == "day" and [b.label for b in days.buckets] == [
        "2026-12-04", "2026-12-05", "2026-12-06", "2026-12-07"]
    weeks = empty_timeline(T0, T0 + timedelta(days=200))
    assert weeks.unit == "week" and all(b.start.weekday() == 0 for b in weeks.buckets)
    assert weeks.buckets[0].start <= T0 < weeks.buckets[0].start + timedelta(weeks=1)
    assert len(weeks.buckets) == (bucket_start(T0 + timedelta(days=200), "week") - weeks.buckets[0].start).days // 7 + 1
