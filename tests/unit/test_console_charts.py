"""The overview charts' layout, pure: counts in, bars' geometry and what is said of them out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from relay.console import charts
from relay.store import ActivityBucket, WebhookFailures

START = datetime(2026, 12, 7, 21, 0, tzinfo=UTC)


def test_the_axis_tops_at_one_two_or_five_times_a_power_of_ten() -> None:
    assert [charts.nice_top(n) for n in (0, 1, 2, 3, 6, 10, 11, 49, 51, 999, 1001)] == [
        1, 1, 2, 5, 10, 10, 20, 50, 100, 1000, 2000,
    ]  # fmt: skip


def test_bars_stack_failed_on_delivered_and_scale_to_the_top() -> None:
    window = charts.WINDOWS["hour"]
    buckets = [
        ActivityBucket(START + timedelta(minutes=i), d, f)
        for i, (d, f) in enumerate([(0, 0)] * 58 + [(3, 1), (10, 0)])
    ]
    chart = charts.activity(buckets, window)
    assert chart.top == 10 and len(chart.bars) == 60
    bar = chart.bars[58]
    assert (bar.start, bar.delivered, bar.failed) == ("21:58", 3, 1)
    assert (bar.delivered_height, bar.failed_height) == (45.0, 15.0)
    bottom = charts.TOP + charts.PLOT_HEIGHT
    assert bar.delivered_y == bottom - 45.0 and bar.failed_y == bottom - 60.0
    assert chart.bars[59].delivered_height == charts.PLOT_HEIGHT  # the largest fills the plot
    assert chart.bars[0].delivered_height == 0.0
    assert [t.label for t in chart.ticks] == ["21:00", "21:15", "21:30", "21:45"]
    assert chart.bars[-1].x + chart.bars[-1].width <= charts.WIDTH
    assert chart.summary == (
        "13 delivered and 1 failed attempts in the last hour; the most in one minute: 10, at 21:59."
    )


def test_failures_name_each_webhook_and_cut_long_names_in_the_drawing_only() -> None:
    long = "w" * 40
    found = [WebhookFailures(long, 8, 10), WebhookFailures("b", 2, 2)]
    chart = charts.failures(found, charts.WINDOWS["day"])
    assert [r.shown for r in chart.rows] == ["w" * 30 + "…", "b"]
    assert chart.rows[0].webhook == long
    assert chart.rows[1].width * 4 == chart.rows[0].width
    assert (
        chart.summary == f"Failed attempts per webhook in the last day: {long}: 8 of 10, b: 2 of 2."
    )
    assert (
        charts.failures([], charts.WINDOWS["day"]).summary == "No attempt failed in the last day."
    )
