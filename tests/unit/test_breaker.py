"""The circuit breaker on its own, with a clock the test turns: no database, no receiver."""

from __future__ import annotations

from relay.delivery.breaker import Breaker, Turn


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_webhook_is_paused_at_the_limit_and_resumed_by_a_success() -> None:
    clock = Clock()
    breaker = Breaker(failures=3, cooldown=30.0, clock=clock)
    assert [breaker.record(7, ok=False, sent=True) for _ in range(2)] == [Turn.NONE] * 2
    assert breaker.paused_for(7) <= 0
    assert breaker.record(7, ok=False, sent=True) is Turn.PAUSED
    assert breaker.paused_for(7) == 30.0
    clock.now += 10
    assert breaker.paused_for(7) == 20.0
    assert breaker.paused_for(8) <= 0  # other webhooks go on
    assert breaker.record(7, ok=True, sent=True) is Turn.RESUMED
    assert breaker.paused_for(7) <= 0
    assert breaker.consecutive(7) == 0


def test_only_sent_requests_count() -> None:
    """A template or rule of ours failing says nothing about the receiver."""
    breaker = Breaker(failures=2, cooldown=30.0, clock=Clock())
    for _ in range(5):
        assert breaker.record(1, ok=False, sent=False) is Turn.NONE
    assert breaker.consecutive(1) == 0
    breaker.record(1, ok=False, sent=True)
    assert breaker.record(1, ok=True, sent=True) is Turn.NONE  # below the limit: no resume
    assert breaker.consecutive(1) == 0


def test_a_paused_webhook_is_claimed_nothing_then_one_probe_at_a_time() -> None:
    clock = Clock()
    breaker = Breaker(failures=1, cooldown=5.0, clock=clock)
    assert breaker.held({1: 2, 2: 0}, window=8) == {1: 2}  # nothing paused: as held
    breaker.record(1, ok=False, sent=True)
    assert breaker.held({1: 2}, window=8) == {1: 8}  # paused: no room at all
    clock.now += 6
    assert breaker.held({}, window=8) == {1: 7}  # cooled down: room for one probe
    assert breaker.held({1: 1}, window=8) == {1: 8}  # the probe is out: no more
    assert breaker.record(1, ok=False, sent=True) is Turn.PAUSED  # a failed probe: again
    assert breaker.paused_for(1) == 5.0
    breaker.record(1, ok=True, sent=True)
    assert breaker.held({1: 3}, window=8) == {1: 3}


def test_failures_while_paused_do_not_pause_again() -> None:
    """Deliveries that were already out when the pause began come back failing: the pause is
    extended, but it is one pause (one log line)."""
    clock = Clock()
    breaker = Breaker(failures=2, cooldown=10.0, clock=clock)
    turns = [breaker.record(3, ok=False, sent=True) for _ in range(4)]
    assert turns == [Turn.NONE, Turn.PAUSED, Turn.NONE, Turn.NONE]
    clock.now += 4
    breaker.record(3, ok=False, sent=True)
    assert breaker.paused_for(3) == 10.0
