"""The overview's charts laid out on the server: numbers in, the SVG's geometry out, for a
template to draw (no script in the console, and no inline style: the CSP allows neither; the
bars take their colours from console.css by class). Pure, no database
(tests/unit/test_console_charts.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from relay.store import ActivityBucket, WebhookFailures


@dataclass(frozen=True)
class Window:
    """A span the overview charts: its buckets' unit and how many there are."""

    name: str
    label: str
    unit: Literal["minute", "hour"]
    buckets: int
    step: timedelta


WINDOWS = {
    "hour": Window("hour", "the last hour", "minute", 60, timedelta(minutes=1)),
    "day": Window("day", "the last day", "hour", 24, timedelta(hours=1)),
}
"""What the overview offers (``?window=``); the first is the default."""

WIDTH = 760.0
"""The drawing's width in SVG units (it scales to the page: viewBox)."""
LEFT = 44.0
"""Room left of the plot for the count axis' labels."""
TOP = 8.0
PLOT_HEIGHT = 150.0
BOTTOM = 22.0
"""Room below the plot for the time axis' labels."""
GAP = 0.2
"""The share of each bar's slot left empty between bars."""


@dataclass(frozen=True)
class Bar:
    """One bucket's bar: delivered at the bottom, failed stacked on top."""

    start: str
    delivered: int
    failed: int
    x: float
    width: float
    delivered_y: float
    delivered_height: float
    failed_y: float
    failed_height: float


@dataclass(frozen=True)
class Tick:
    """A label under the time axis, at the left edge of its bucket's slot."""

    x: float
    label: str


@dataclass(frozen=True)
class ActivityChart:
    """Attempts per bucket, drawn as stacked bars, with what a screen reader says of it."""

    window: Window
    bars: list[Bar]
    top: int
    """The count at the top of the plot: the largest bar's, rounded up to 1, 2 or 5 x 10^n."""
    ticks: list[Tick]
    delivered: int
    failed: int
    summary: str
    width: float = WIDTH
    height: float = TOP + PLOT_HEIGHT + BOTTOM
    left: float = LEFT
    plot_top: float = TOP
    plot_bottom: float = TOP + PLOT_HEIGHT


def nice_top(largest: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50... at least ``largest``: an axis read at a glance."""
    top = 1
    while True:
        for factor in (1, 2, 5):
            if top * factor >= largest:
                return top * factor
        top *= 10


def _label(bucket: ActivityBucket) -> str:
    return bucket.start.strftime("%H:%M")


def activity(buckets: Sequence[ActivityBucket], window: Window) -> ActivityChart:
    """The chart of ``buckets`` (oldest first, as ``Store.activity`` gives them)."""
    top = nice_top(max((b.delivered + b.failed for b in buckets), default=0))
    slot = (WIDTH - LEFT) / max(len(buckets), 1)
    bars = []
    for index, bucket in enumerate(buckets):
        delivered_height = round(PLOT_HEIGHT * bucket.delivered / top, 1)
        failed_height = round(PLOT_HEIGHT * bucket.failed / top, 1)
        delivered_y = round(TOP + PLOT_HEIGHT - delivered_height, 1)
        bars.append(
            Bar(
                start=_label(bucket),
                delivered=bucket.delivered,
                failed=bucket.failed,
                x=round(LEFT + index * slot + slot * GAP / 2, 1),
                width=round(slot * (1 - GAP), 1),
                delivered_y=delivered_y,
                delivered_height=delivered_height,
                failed_y=round(delivered_y - failed_height, 1),
                failed_height=failed_height,
            )
        )
    every = max(len(buckets) // 4, 1)
    ticks = [
        Tick(round(LEFT + index * slot, 1), bars[index].start)
        for index in range(0, len(bars), every)
    ]
    delivered = sum(b.delivered for b in buckets)
    failed = sum(b.failed for b in buckets)
    summary = f"{delivered} delivered and {failed} failed attempts in {window.label}"
    busiest = max(buckets, key=lambda b: b.delivered + b.failed, default=None)
    if busiest is not None and busiest.delivered + busiest.failed > 0:
        most = busiest.delivered + busiest.failed
        summary += f"; the most in one {window.unit}: {most}, at {_label(busiest)}"
    return ActivityChart(window, bars, top, ticks, delivered, failed, summary + ".")


LABEL_WIDTH = 220.0
"""Room for a webhook's name left of its bar."""
ROW = 24.0
LONGEST_NAME = 30
"""Characters of a name drawn beside its bar (the table below the chart has it whole)."""


@dataclass(frozen=True)
class FailureRow:
    """One webhook's bar in the failures chart."""

    webhook: str
    shown: str
    """The name as drawn: cut to LONGEST_NAME characters."""
    failed: int
    attempts: int
    y: float
    width: float


@dataclass(frozen=True)
class FailuresChart:
    """Failed attempts per webhook, one horizontal bar each, most first."""

    rows: list[FailureRow]
    summary: str
    width: float = WIDTH
    left: float = LABEL_WIDTH
    row: float = ROW

    @property
    def height(self) -> float:
        """The drawing's height: a row per webhook, and a margin."""
        return ROW * len(self.rows) + 4


def failures(found: Sequence[WebhookFailures], window: Window) -> FailuresChart:
    """The chart of ``found`` (most failures first, as ``Store.failures`` gives them)."""
    largest = max((f.failed for f in found), default=1)
    room = WIDTH - LABEL_WIDTH - 60
    rows = [
        FailureRow(
            webhook=f.webhook,
            shown=f.webhook if len(f.webhook) <= LONGEST_NAME else f.webhook[:LONGEST_NAME] + "…",
            failed=f.failed,
            attempts=f.attempts,
            y=round(index * ROW + 2, 1),
            width=round(max(room * f.failed / largest, 1.0), 1),
        )
        for index, f in enumerate(found)
    ]
    if rows:
        named = ", ".join(f"{r.webhook}: {r.failed} of {r.attempts}" for r in rows)
        summary = f"Failed attempts per webhook in {window.label}: {named}."
    else:
        summary = f"No attempt failed in {window.label}."
    return FailuresChart(rows, summary)
