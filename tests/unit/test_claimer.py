"""What a claim holds, and that it all goes back once: the claimer's holds without a database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from pydantic import ByteSize

from relay.delivery.breaker import Breaker
from relay.delivery.claimer import Claimer
from relay.delivery.holding import Holding
from relay.model import Change, Webhook
from relay.rules.ruleset import Rule, RuleSet
from relay.settings import Settings
from relay.store import Claimed

SETTINGS = Settings(max_body_bytes=ByteSize(1024), webhook_concurrency=3)


def claimed(id: int, change_bytes: int = 100) -> Claimed:
    change = Change(
        id, "public", "items", "insert", None, "{}", "{}", None, None, "1", datetime.now(UTC)
    )
    return Claimed(id, 7, 1, 1, 1, change_bytes, change, f"d-{id}")


class Claims:
    """A claimer over a rule set the test may change, counting its wake-ups."""

    def __init__(self, **hook: Any) -> None:
        self.wakes = 0
        self.set_hook(**hook)
        self.holding = Holding(SETTINGS)
        self.claimer = Claimer(
            SETTINGS,
            "relay-1",
            lambda: self.ruleset,
            self.holding,
            Breaker(3, 30.0),
            self.wake,
        )

    def set_hook(self, **fields: Any) -> None:
        hook = Webhook(**{"id": 7, "name": "hook", "payload_url": "http://127.0.0.1:9/", **fields})
        self.ruleset = RuleSet([Rule(1, "rule", ("public.items",), ("insert",), None, {}, hook)])

    def wake(self) -> None:
        self.wakes += 1


def test_a_hold_gives_back_its_count_when_answered_and_its_bytes_when_released_once() -> None:
    claims = Claims()
    hold = claims.claimer.take([claimed(1), claimed(2)])
    assert (claims.claimer.counts[7], claims.holding.by_webhook[7]) == (1, 200)
    hold.answered()
    hold.answered()
    assert (claims.claimer.counts[7], claims.holding.by_webhook[7]) == (0, 200)
    hold.release()
    hold.release()
    assert (claims.claimer.counts[7], claims.holding.by_webhook[7], claims.holding.total) == (
        0,
        0,
        0,
    )
    assert claims.wakes == 2


def test_a_task_that_ends_before_its_answer_still_gives_everything_back() -> None:
    claims = Claims()
    hold = claims.claimer.take([claimed(1)])
    hold.release()
    assert (claims.claimer.counts[7], claims.holding.total) == (0, 0)


def test_a_change_too_large_to_read_holds_no_bytes() -> None:
    claims = Claims()
    claims.claimer.take([claimed(1, change_bytes=5000)]).release()
    assert claims.holding.total == 0
    assert claims.wakes == 1  # the answer's room; no bytes to give back


def test_deliveries_being_recorded_are_answered_not_in_flight() -> None:
    claims = Claims(ordering="key")
    hold = claims.claimer.take([claimed(1), claimed(2)])
    with hold.recording():
        assert claims.claimer.answered[7] == {1, 2}
    assert claims.claimer.answered[7] == set()
    assert claims.wakes == 1  # ordered by key: the next change of the key may go now


def test_a_webhook_s_slots_follow_its_concurrency() -> None:
    claims = Claims()
    hold = claims.claimer.take([claimed(1)])
    first = hold.slot()
    assert first is claims.claimer.slot(7)
    assert asyncio.run(room(first)) == 3  # RELAY_WEBHOOK_CONCURRENCY
    claims.set_hook(concurrency=1)
    assert asyncio.run(room(claims.claimer.slot(7))) == 1


async def room(slot: asyncio.Semaphore) -> int:
    """How many requests may take a slot at once."""
    taken = 0
    while not slot.locked():
        await slot.acquire()
        taken += 1
    return taken
