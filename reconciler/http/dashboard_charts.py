"""Chart geometry for the dashboard, computed on the server and drawn as inline SVG by the templates.

Only numbers and labels leave this module; the templates escape every label. No JavaScript, no
external assets: the daemon is often offline, and a chart is a static picture of the data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

METRICS: tuple[tuple[str, str], ...] = (
    ("sent", "Sent"),
    ("delivered", "Delivered"),
    ("failed", "Failed"),
    ("converted", "Converted"),
)
MAX_X_LABELS = 6
Y_TICKS = 4


@dataclass(frozen=True)
class Box:
    """The plot area inside the SVG (axes and labels go around it)."""

    width: int
    height: int
    left: int = 52
    right: int = 16
    top: int = 16
    bottom: int = 40

    @property
    def x0(self) -> float:
        return self.left

    @property
    def x1(self) -> float:
        return self.width - self.right

    @property
    def y0(self) -> float:
        return self.height - self.bottom  # the baseline (value 0)

    @property
    def y1(self) -> float:
        return self.top

    def y_of(self, value: float, top_value: float) -> float:
        return round(self.y0 - (self.y0 - self.y1) * (value / top_value), 2)


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    value: int
    label: str  # the bucket, e.g. "2026-12-04 10:00"


@dataclass(frozen=True)
class Series:
    key: str
    label: str
    points: tuple[Point, ...]

    @property
    def polyline(self) -> str:
        return " ".join(f"{p.x},{p.y}" for p in self.points)


@dataclass(frozen=True)
class LineChart:
    title: str
    box: Box
    series: tuple[Series, ...]
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    value: int
    metric: str
    group: str


@dataclass(frozen=True)
class BarChart:
    title: str
    box: Box
    bars: tuple[Bar, ...]
    group_labels: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is >= value (at least 1)."""
    if value <= 1:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def _y_ticks(box: Box, top_value: float) -> tuple[Tick, ...]:
    ticks = []
    for index in range(Y_TICKS + 1):
        value = top_value * index / Y_TICKS
        label = f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"
        ticks.append(Tick(box.y_of(value, top_value), label))
    return tuple(ticks)


def line_chart(title: str, labels: Sequence[str], values: Mapping[str, Sequence[int]], *,
               tick_labels: Sequence[str] | None = None, width: int = 540, height: int = 260) -> LineChart:
    """One series per metric in METRICS, one point per label (time bucket); `tick_labels` are the
    shorter texts under the x axis (default: the labels)."""
    box = Box(width, height)
    top_value = nice_ceiling(max((v for key, _ in METRICS for v in values.get(key, ())), default=0))
    count = len(labels)
    span = box.x1 - box.x0

    def x_of(index: int) -> float:
        return round(box.x0 + span / 2 if count == 1 else box.x0 + span * index / (count - 1), 2)

    series = tuple(
        Series(key, label, tuple(Point(x_of(i), box.y_of(v, top_value), v, labels[i])
                                 for i, v in enumerate(values.get(key, [0] * count))))
        for key, label in METRICS
    )
    every = max(1, math.ceil(count / MAX_X_LABELS))
    short = tick_labels or labels
    x_ticks = tuple(Tick(x_of(i), short[i]) for i in range(0, count, every))
    return LineChart(title, box, series, x_ticks, _y_ticks(box, top_value))


def bar_chart(title: str, groups: Mapping[str, Mapping[str, int]], *, width: int = 540,
              height: int = 260) -> BarChart:
    """Grouped bars: one group per key of `groups` (a provider), one bar per metric in METRICS."""
    box = Box(width, height)
    names = sorted(groups)
    top_value = nice_ceiling(max((groups[g].get(key, 0) for g in names for key, _ in METRICS), default=0))
    slot = (box.x1 - box.x0) / max(1, len(names))
    bar_width = round(min(28.0, slot * 0.8 / len(METRICS)), 2)
    bars: list[Bar] = []
    labels: list[Tick] = []
    for index, name in enumerate(names):
        center = box.x0 + slot * (index + 0.5)
        start = center - bar_width * len(METRICS) / 2
        labels.append(Tick(round(center, 2), name))
        for position, (key, _) in enumerate(METRICS):
            value = int(groups[name].get(key, 0))
            y = box.y_of(value, top_value)
            bars.append(Bar(round(start + position * bar_width, 2), y, bar_width, round(box.y0 - y, 2),
                            value, key, name))
    return BarChart(title, box, tuple(bars), tuple(labels), _y_ticks(box, top_value))
