"""Limits per endpoint (issue 25): a webhook's concurrency and rate limit hold across relays.

relay.webhooks.concurrency counts the requests in flight to the webhook from every relay of
the database; rate_limit spaces its requests across relays. Set here with SQL (the command
line's options are another change's).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from decimal import Decimal

import psycopg
import pytest
from aiohttp import web

from relay.db import Conn
from relay.delivery.claim import slots
from relay.delivery.claim import window as claim_window
from relay.model import Webhook
from relay.settings import Settings
from relay.sqlfiles import query
from support.db import one_row
from support.delivery import claim, claim_batch, claim_parameters, fan_out, finish, setup
from support.receivers import receiver
from support.worker import FAST, running, sql, until
from support.worker import setup as setup_hook


def test_a_relay_holds_a_webhooks_concurrency_and_a_seconds_worth_of_its_rate() -> None:
    """Without limits, twice RELAY_WEBHOOK_CONCURRENCY (prefetch); with a concurrency, exactly
    it (the claim counts leases across relays, so no prefetch); with a rate limit, what goes in
    a second (at least one); the slots in the process follow the concurrency."""
    settings = Settings(webhook_concurrency=16)
    hook = Webhook(id=1, name="h", payload_url="http://127.0.0.1/")
    assert claim_window(settings, hook) == claim_window(settings) == 32
    assert claim_window(settings, replace(hook, concurrency=64)) == 64
    assert claim_window(settings, replace(hook, rate_limit=Decimal(20))) == 20
    assert claim_window(settings, replace(hook, rate_limit=Decimal("0.01"))) == 1
    assert claim_window(settings, replace(hook, concurrency=8, rate_limit=Decimal(20))) == 8
    assert slots(settings, replace(hook, concurrency=64)) == 64
    assert slots(settings, hook) == slots(settings, None) == 16


def test_the_claim_leases_no_more_than_a_webhooks_concurrency_across_relays(rconn: Conn) -> None:
    """What one relay leased counts for the other; an outcome written, or a lease run out (a
    relay that died), gives the room back."""
    a, _ = setup(rconn)
    rconn.execute("UPDATE relay.webhooks SET concurrency = 3 WHERE id = %s", (a,))
    rconn.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, 10) g")
    fan_out(rconn)

    first = claim(rconn, "r1")
    assert len(first) == 3 and {hook for _, hook in first} == {a}
    assert claim(rconn, "r2") == []

    finish(rconn, first[0][0], a, "delivered", relay_id="r1")
    assert len(claim(rconn, "r2")) == 1

    rconn.execute(
        "UPDATE relay.deliveries SET leased_until = now() - interval '1 second'"
        " WHERE leased_by = 'r1' AND status = 'pending'"
    )
    assert len(claim(rconn, "r2")) == 2
    assert claim(rconn, "r1") == []


def test_a_relay_leaves_out_of_the_count_only_its_own_answered_deliveries(rconn: Conn) -> None:
    """A delivery whose receiver has answered is not in flight while its outcome is written:
    the relay that holds it claims the next one at once. Another relay naming it gains
    nothing."""
    a, _ = setup(rconn)
    rconn.execute("UPDATE relay.webhooks SET concurrency = 3 WHERE id = %s", (a,))
    rconn.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, 10) g")
    fan_out(rconn)
    (answered, _), *_ = claim(rconn, "r1")

    def claimed(relay_id: str) -> int:
        params = claim_parameters(relay_id, answered_webhooks=[a], answered_ids=[answered])
        return len(rconn.execute(query("claim_deliveries"), params).fetchall())

    assert claimed("r2") == 0
    assert claimed("r1") == 1
    assert claimed("r1") == 0  # the one it took now counts


def test_relays_claiming_at_once_count_each_others_leases(rconn: Conn, relay_dsn: str) -> None:
    """The second claim waits for the first one's transaction, then counts what it leased: in
    one statement, its own snapshot (taken before) would have seen nothing leased."""
    a, _ = setup(rconn)
    rconn.execute("UPDATE relay.webhooks SET concurrency = 3 WHERE id = %s", (a,))
    rconn.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, 10) g")
    fan_out(rconn)

    with psycopg.connect(relay_dsn) as first:  # a transaction left open
        assert len(first.execute(query("claim_deliveries"), claim_parameters("r1")).fetchall()) == 3
        second: list[int] = []

        def other() -> None:
            with psycopg.connect(relay_dsn, autocommit=True) as conn:
                rows = conn.execute(query("claim_deliveries"), claim_parameters("r2")).fetchall()
                second.append(len(rows))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(1.0)
        assert thread.is_alive(), "the second claim waits for the first's transaction"
        first.commit()
    thread.join(10)
    assert second == [0]


def test_a_webhooks_concurrency_counts_batches_as_requests(rconn: Conn) -> None:
    a, _ = setup(rconn)
    rconn.execute("UPDATE relay.webhooks SET concurrency = 1, batch_size = 2 WHERE id = %s", (a,))
    rconn.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, 10) g")
    fan_out(rconn)

    assert len(claim_batch(rconn, a, 2, relay_id="r1")) == 2
    assert claim_batch(rconn, a, 2, relay_id="r2") == []
    rconn.execute("UPDATE relay.webhooks SET concurrency = 2 WHERE id = %s", (a,))
    assert len(claim_batch(rconn, a, 2, relay_id="r2")) == 2


def test_a_webhook_with_a_rate_limit_is_claimed_only_while_its_next_slot_is_near(
    rconn: Conn,
) -> None:
    """A claimed delivery waits for its slot: none is claimed while the slot is further than
    pace_ahead, lest it wait past its lease (and another relay send it too)."""
    a, _ = setup(rconn)
    rconn.execute("UPDATE relay.webhooks SET rate_limit = 0.01 WHERE id = %s", (a,))
    rconn.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, 10) g")
    fan_out(rconn)
    rconn.execute(
        "INSERT INTO relay.webhook_pace VALUES (%s, now() + interval '100 seconds')", (a,)
    )
    assert claim(rconn, "r1") == []
    assert claim_batch(rconn, a, 2) == []
    rconn.execute("UPDATE relay.webhook_pace SET next_slot = now() + interval '0.5 seconds'")
    assert len(claim(rconn, "r1")) == 10  # how many: the relay's window (claim.window)


def test_a_request_whose_rate_slot_comes_after_half_its_lease_goes_back_unsent(
    rconn: Conn, relay_dsn: str
) -> None:
    """Claimed when its slot was near, a delivery finds its slot far away when it is about to go
    (here: the receiver moves the webhook's next slot 100 s on while it answers the first
    request; in life, many relays sharing a slow rate). It goes back unsent and uncounted, due
    at its slot, rather than wait past its lease (which another relay would then claim, and both
    would send)."""
    settings = Settings(**{**FAST.model_dump(), "webhook_concurrency": 1})  # one at a time

    async def far(request: web.Request) -> web.Response:
        await sql(
            relay_dsn,
            "UPDATE relay.webhook_pace SET next_slot = clock_timestamp() + interval '100 s'",
        )
        return web.Response()

    async def scenario() -> int:
        async with receiver(far) as r:
            setup_hook(rconn, r.url, rate_limit=2)  # a window of 2: both claimed at once
            await sql(relay_dsn, "INSERT INTO items VALUES (1, 0), (2, 0)")
            async with running(relay_dsn, settings):
                await until(lambda: delivered(rconn) == 1)
                await until(lambda: "rate limit" in (second(rconn)[3] or ""), timeout=5)
            return len(r.requests)

    assert asyncio.run(scenario()) == 1
    status, attempts, due_in, error, leased = second(rconn)
    assert (status, attempts, leased) == ("pending", 0, False)
    assert 95 < due_in <= 100
    assert error is not None and error.startswith("not sent: rate limit: its request slot is")


def second(conn: Conn) -> tuple[str, int, float, str | None, bool]:
    """The second change's delivery: status, attempts, seconds until due, last error, leased."""
    row = conn.execute(
        "SELECT status::text, attempts, extract(epoch FROM next_attempt_at - now())::float8,"
        " last_error, leased_until IS NOT NULL FROM relay.deliveries ORDER BY outbox_id"
        " OFFSET 1 LIMIT 1"
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2], row[3], row[4]


async def start_relay(dsn: str, **env: str) -> asyncio.subprocess.Process:
    """``relay run`` as a child process (its log to a pipe nobody reads: little is logged)."""
    environment = {
        **os.environ,
        "RELAY_DSN": dsn,
        "RELAY_POLL_INTERVAL": "0.2",
        "RELAY_LEASE_SECONDS": "20",
        **env,
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "run",
        env=environment,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


@asynccontextmanager
async def relays(dsn: str, *envs: dict[str, str]) -> AsyncIterator[list[str]]:
    """A relay process per ``envs`` (its RELAY_* variables); yields the relay ids seen holding
    leases (filled as they do)."""
    processes = [await start_relay(dsn, **env) for env in envs]
    seen: list[str] = []
    stop = asyncio.Event()

    async def watch() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                cur = await conn.execute(
                    "SELECT DISTINCT leased_by FROM relay.deliveries"
                    " WHERE status = 'pending' AND leased_until > now()"
                )
                seen.extend(str(row[0]) for row in await cur.fetchall() if row[0] not in seen)
                await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch())
    try:
        yield seen
    finally:
        stop.set()
        await watcher
        for process in processes:
            assert process.returncode is None, "relay run ended on its own"
            process.terminate()
        for process in processes:
            await asyncio.wait_for(process.wait(), 15)


def delivered(conn: Conn) -> int:
    count: int = one_row(
        conn.execute("SELECT count(*) FROM relay.deliveries WHERE status = 'delivered'")
    )[0]
    return count


@pytest.mark.timing
def test_two_relays_never_send_a_webhook_more_than_its_concurrency_at_once(
    rconn: Conn, relay_dsn: str
) -> None:
    """Each relay would allow 16 (RELAY_WEBHOOK_CONCURRENCY, per process); the webhook's 6
    hold for both together, and are used. Each relay has room for 4 requests in all
    (RELAY_BATCH_SIZE=1: 4 in flight), so both must send to reach 6 (a relay that could take
    the whole concurrency would keep it: it claims again as soon as an answer comes); without
    the limit across relays they would send 8 at once."""
    now_in_flight = 0
    most: list[int] = []

    async def slow(request: web.Request) -> web.Response:
        nonlocal now_in_flight
        now_in_flight += 1
        most.append(now_in_flight)
        try:
            await asyncio.sleep(0.2)
        finally:
            now_in_flight -= 1
        return web.Response()

    async def scenario() -> list[str]:
        async with receiver(slow) as r:
            setup_hook(rconn, r.url, concurrency=6)
            await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 200) g")
            each = {"RELAY_WEBHOOK_CONCURRENCY": "16", "RELAY_BATCH_SIZE": "1"}
            async with relays(relay_dsn, each, each) as seen:
                await until(lambda: delivered(rconn) == 200, timeout=60)
            return seen

    seen = asyncio.run(scenario())
    assert max(most) == 6
    assert most.count(6) >= 10
    assert len(seen) == 2, "both relays sent"


@pytest.mark.timing
def test_two_relays_keep_to_a_webhooks_rate_limit_together(rconn: Conn, relay_dsn: str) -> None:
    """20 requests a second across two relays: in no second (sliding) more than 20 arrive, and
    the rate stays close to the limit."""
    arrivals: list[float] = []

    async def note(request: web.Request) -> web.Response:
        arrivals.append(time.monotonic())
        return web.Response()

    async def scenario() -> list[str]:
        async with receiver(note) as r:
            setup_hook(rconn, r.url, rate_limit=20)
            await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 120) g")
            async with relays(relay_dsn, {}, {}) as seen:
                await until(lambda: delivered(rconn) == 120, timeout=60)
            return seen

    seen = asyncio.run(scenario())
    assert len(arrivals) == 120
    busiest = max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals)
    assert busiest <= 20
    rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert 15 <= rate <= 20.5, rate
    assert len(seen) == 2, "both relays sent"


@pytest.mark.timing
def test_a_slow_receiver_with_a_concurrency_of_64_takes_3000_changes_in_time(
    rconn: Conn, relay_dsn: str
) -> None:
    """3,000 changes to a receiver answering after 200 ms, concurrency 64: issue 25's target is
    1.3 times 3000 * 0.2 / 64 = 9.4 s (first request to last), which bench/limits.py measures
    (1.07-1.21 on a 2-core machine, docs/benchmarks.md). The suite shares its machine with
    whatever else runs, so it holds 1.6 here: still far below what 64 requests in flight at
    once allow only (the setting's 16 per process would take 4 times the ideal)."""
    arrivals: list[float] = []

    async def slow(request: web.Request) -> web.Response:
        arrivals.append(time.monotonic())
        await asyncio.sleep(0.2)
        return web.Response()

    async def scenario() -> None:
        async with receiver(slow) as r:
            setup_hook(rconn, r.url, concurrency=64)
            await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 3000) g")
            async with relays(relay_dsn, {}):
                await until(lambda: delivered(rconn) == 3000, timeout=90)

    asyncio.run(scenario())
    assert len(arrivals) == 3000
    took = arrivals[-1] - arrivals[0]  # from the first request to the last, as the issue says
    assert took <= 1.6 * 3000 * 0.2 / 64, took
