"""The attacker's pass over issue 25's steering: crossings of the ordering, pauses, retries and
limits, each a finding that broke (per-row order, at-least-once) before its fix. Real
PostgreSQL, real receivers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import pytest
from aiohttp import web

from relay.db import Conn
from support.db import one_row
from support.ordering import changes, hook, settled
from support.receivers import receiver
from support.worker import FAST, running, until


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize(
    ("before", "after"),
    [("row", "transaction"), ("row", "key"), ("transaction", "row"), ("key", "row")],
)
def test_a_row_changed_across_an_ordering_change_keeps_its_order(
    rconn: Conn, relay_dsn: str, before: str, after: str, batch_size: int
) -> None:
    """A row's change waiting for a retry when the ordering changes, and a later change of the
    same row fanned out under the new ordering: the receiver hears them in the order they were
    made (a delivery of the old scope had no position, and one of the new scope was claimed
    first, while the old one waited for every ordered delivery to drain)."""
    rconn.execute("CREATE TABLE orders (id int PRIMARY KEY, tenant text)")
    rconn.execute("SELECT relay.track('orders')")
    state = {"refuse": True}
    accepted: list[tuple[int, int]] = []

    async def handle(request: web.Request) -> web.Response:
        if state["refuse"]:
            return web.Response(status=503)
        accepted.extend(
            (c["data"]["id"], c["id"]) for c in changes(json.loads(await request.read()))
        )
        return web.Response()

    template = "{{ data.id }}"

    async def scenario() -> None:
        async with receiver(handle) as r:
            hook(
                rconn,
                r.url,
                ["public.orders"],
                ordering=before,
                ordering_key=template if before == "key" else None,
                retry_base_seconds=0.2,
                max_attempts=100,
                batch_size=batch_size,
            )
            async with running(relay_dsn, FAST.model_copy(update={"breaker_failures": 1000})):
                rconn.execute("INSERT INTO orders VALUES (1, 'a'), (2, 'a')")
                await until(
                    lambda: (
                        one_row(
                            rconn.execute(
                                "SELECT count(*) FROM relay.deliveries WHERE attempts > 0"
                            )
                        )[0]
                        > 0
                    )
                )
                rconn.execute(
                    "UPDATE relay.webhooks SET ordering = %s, ordering_key = %s",
                    (after, template if after == "key" else None),
                )
                await asyncio.sleep(0.5)  # the relay reads the rules again
                rconn.execute("UPDATE orders SET tenant = 'b'")
                rconn.execute("UPDATE orders SET tenant = 'c' WHERE id = 1")
                await until(
                    lambda: one_row(rconn.execute("SELECT count(*) FROM relay.deliveries"))[0] == 5
                )
                state["refuse"] = False
                await until(lambda: settled(rconn), timeout=20)

    asyncio.run(scenario())
    for row in (1, 2):
        ids = [outbox for key, outbox in accepted if key == row]
        assert ids == sorted(ids), f"row {row} heard out of order: {accepted}"
    assert len(accepted) == 5


@pytest.mark.timing
def test_a_lease_shorter_than_the_timeout_lets_no_second_request_in_under_concurrency_1(
    rconn: Conn, relay_dsn: str
) -> None:
    """Two relays, a webhook with concurrency 1 and a timeout longer than their lease, against a
    receiver that answers after longer than the lease: the lease ran out while the request was
    in flight, the claim counted it no more, and a second request went to the receiver (the
    same delivery again, or the next one): two at once under a limit of one. The request's time
    is now bounded by what is left of its lease (relay/delivery/executor.py, LEASE_MARGIN)."""
    rconn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    rconn.execute("SELECT relay.track('orders')")
    spans: list[tuple[float, float]] = []

    async def handle(request: web.Request) -> web.Response:
        start = time.monotonic()
        try:  # in flight until it answers, or the relay gives up and closes the connection
            for _ in range(300):
                await asyncio.sleep(0.01)
                if request.transport is None or request.transport.is_closing():
                    break
        finally:
            spans.append((start, time.monotonic()))
        return web.Response()

    async def scenario() -> None:
        async with receiver(handle) as r:
            hook(
                rconn,
                r.url,
                ["public.orders"],
                concurrency=1,
                timeout_seconds=10,
                retry_base_seconds=0.2,
                max_attempts=100,
            )
            settings = FAST.model_copy(update={"lease_seconds": 2, "breaker_failures": 1000})
            async with (
                running(relay_dsn, settings, relay_id="one"),
                running(relay_dsn, settings, relay_id="two"),
            ):
                rconn.execute("INSERT INTO orders VALUES (1), (2)")
                await asyncio.sleep(7)

    asyncio.run(scenario())
    spans.sort()
    assert len(spans) >= 3
    # One at a time (the receiver notes a closed connection within 10 ms, the next request
    # may come as soon as the outcome is written: a few ms overlap is the probe's own).
    overlaps = [(a, b) for a, b in itertools.pairwise(spans) if b[0] < a[1] - 0.05]
    assert not overlaps, overlaps
    errors = [row[0] for row in rconn.execute("SELECT DISTINCT error FROM relay.attempts")]
    assert errors and all("the end of its lease" in str(e) for e in errors), errors


@pytest.mark.timing
def test_a_slow_ordering_key_does_not_stall_the_relay(rconn: Conn, relay_dsn: str) -> None:
    """An ordering_key template that takes its sandbox's time on every change (each render is
    within its budget): the keys were rendered in the relay's event loop, one after another, so
    a pass of changes stopped everything else the process did for the sum of them (requests in
    flight, timeouts, leases, /metrics). They are rendered off the loop now."""
    rconn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    rconn.execute("SELECT relay.track('orders')")
    slow = "{% for i in range(999999) %}{% endfor %}{{ data.id % 2 }}"
    gaps: list[float] = []

    async def handle(request: web.Request) -> web.Response:
        return web.Response()

    async def tick(stop: asyncio.Event) -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.02)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async def scenario() -> None:
        async with receiver(handle) as r:
            hook(rconn, r.url, ["public.orders"], ordering="key", ordering_key=slow)
            async with running(relay_dsn):
                stop = asyncio.Event()
                ticker = asyncio.create_task(tick(stop))
                rconn.execute("INSERT INTO orders SELECT generate_series(1, 12)")
                await until(lambda: settled(rconn), timeout=30)
                stop.set()
                await ticker

    asyncio.run(scenario())
    assert max(gaps) < 0.5, f"the event loop stood still for {max(gaps):.2f} s"


def test_a_rate_limit_raised_takes_hold_at_once(rconn: Conn, relay_dsn: str) -> None:
    """An operator sets a rate limit of 0.001 by mistake (one request every 17.5 minutes) and
    puts it right to 100: the next slot had been booked 17.5 minutes ahead under the old limit,
    and the webhook sent nothing until then. A change of rate_limit now frees the slot."""
    rconn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    rconn.execute("SELECT relay.track('orders')")
    got: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        got.extend(c["data"]["id"] for c in changes(json.loads(await request.read())))
        return web.Response()

    async def scenario() -> None:
        async with receiver(handle) as r:
            hook(rconn, r.url, ["public.orders"], rate_limit=0.001)
            async with running(relay_dsn):
                rconn.execute("INSERT INTO orders VALUES (1)")
                await until(lambda: got == [1])
                rconn.execute("INSERT INTO orders VALUES (2)")
                await asyncio.sleep(0.5)
                rconn.execute("UPDATE relay.webhooks SET rate_limit = 100")
                await until(lambda: got == [1, 2], timeout=5)

    asyncio.run(scenario())


def test_a_change_failed_in_row_scope_and_retried_after_a_switch_goes_before_its_row(
    rconn: Conn, relay_dsn: str
) -> None:
    """A row's change failed for good in row scope; the webhook is switched to transaction
    scope; a later change of the row waits for a retry; the SQL reset re-arms the failed one.
    It would take a position after the later change's and go after it; it keeps the place the
    switch gave it (in id order, before what came after) and goes first."""
    rconn.execute("CREATE TABLE orders (id int PRIMARY KEY, v int)")
    rconn.execute("SELECT relay.track('orders')")
    state = {"started": False, "reset": False}
    after_reset: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        event = changes(json.loads(await request.read()))[0]["event"]
        if event == "created" and not state["started"]:
            return web.Response(status=410)
        if event == "updated" and not state["reset"]:
            return web.Response(status=503)
        after_reset.append(event)  # in the order they arrive once the reset is done
        return web.Response()

    async def scenario() -> None:
        async with receiver(handle) as r:
            hook(
                rconn,
                r.url,
                ["public.orders"],
                max_attempts=100,
                retry_base_seconds=1,
                retry_max_seconds=5,
            )
            async with running(relay_dsn, FAST.model_copy(update={"breaker_failures": 1000})):
                rconn.execute("INSERT INTO orders VALUES (1, 0)")
                await until(
                    lambda: one_row(rconn.execute("SELECT count(*) FROM relay.deliveries"
                                                  " WHERE status = 'failed'"))[0] == 1
                )  # fmt: skip
                rconn.execute("UPDATE relay.webhooks SET ordering = 'transaction'")
                await asyncio.sleep(0.5)  # the relay reads the rules again
                rconn.execute("UPDATE orders SET v = 1")
                await until(
                    lambda: one_row(rconn.execute("SELECT count(*) FROM relay.deliveries"
                                                  " WHERE attempts > 1 AND status = 'pending'"
                                                  " AND leased_until IS NULL"))[0]
                    == 1
                )  # fmt: skip
                state["started"] = True
                rconn.execute("UPDATE relay.outbox SET status = 'pending' WHERE status = 'failed'")
                state["reset"] = True
                await until(lambda: settled(rconn), timeout=20)

    asyncio.run(scenario())
    assert after_reset == ["created", "updated"], after_reset
