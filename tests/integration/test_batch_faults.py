"""Batched webhooks under faults: what an attack on them found, each now a test (real
PostgreSQL, real receivers on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

from relay.db import Conn
from support.cli import relay
from support.db import one_row
from support.delivery import fan_out
from support.receivers import Receiver, receiver
from support.worker import FAST, outbox_statuses, running, setup, sql, until


def ids_of(body: bytes) -> list[int]:
    return [c["id"] for c in json.loads(body)]


def test_a_retried_earlier_change_of_a_row_goes_before_the_batch_that_waits_for_it(
    rconn: Conn, relay_dsn: str
) -> None:
    """Row 1: change A fails alone (template), change B goes in batch X and gets a 500. The
    operator fixes the template and runs `relay retry` on A while X is due. claim_batch then
    always picks X (`again`), whose only member waits for A; A (batch_id NULL) is never
    claimed: nothing of this webhook goes any more, not even new rows."""
    template = (
        "[{% for c in changes %}{{ (100 // c.data.v) }}{% if not loop.last %},{% endif %}"
        "{% endfor %}]"
    )
    up = {"on": False}

    async def gate(request: web.Request) -> web.Response:
        return web.Response(status=200 if up["on"] else 500)

    slow = FAST.model_copy(update={"retry_base_seconds": 60.0, "retry_max_seconds": 60.0})

    async def scenario() -> Receiver:
        async with receiver(gate) as r:
            setup(rconn, r.url, batch_size=10, batch_wait_ms=50, body_template=template)
            async with running(relay_dsn, slow):
                await sql(
                    relay_dsn,
                    "BEGIN; INSERT INTO items VALUES (1, 0);"
                    " UPDATE items SET v = 5 WHERE id = 1; COMMIT",
                )
                await until(lambda: len(r.requests) == 1 and outbox_statuses(rconn)[0] == "failed")
            # relay stopped; the batch X = {B} is due again (its 60 s have passed)
            rconn.execute(
                "UPDATE relay.deliveries SET next_attempt_at = now() WHERE status = 'pending'"
            )
            rconn.execute("UPDATE relay.webhooks SET body_template = ''")
            out = relay("retry", "--id", "1", dsn=relay_dsn)
            assert out.returncode == 0, out
            await asyncio.to_thread(
                fan_out, rconn
            )  # what the relay's fan-out does first when it starts
            up["on"] = True
            async with running(relay_dsn, slow):
                await sql(relay_dsn, "INSERT INTO items VALUES (2, 1)")
                await until(lambda: outbox_statuses(rconn) == ["delivered"] * 3, timeout=8)
            return r

    asyncio.run(scenario())
    rows = rconn.execute(
        "SELECT outbox_id, status, batch_id, next_attempt_at <= now() FROM relay.deliveries"
        " ORDER BY outbox_id"
    ).fetchall()
    assert outbox_statuses(rconn) == ["delivered"] * 3, f"stalled: {rows}"


def test_a_batch_retried_after_batch_size_shrank_goes_whole_under_its_id(
    rconn: Conn, relay_dsn: str
) -> None:
    """Batch X of 6 changes fails; batch_size goes 10 -> 2; its retry goes in parts, each
    with the same X-Relay-Delivery but different changes: a receiver that drops a delivery id
    it has processed (as docs/rules.md says to) loses 4 changes."""
    up = {"on": False}

    async def gate(request: web.Request) -> web.Response:
        return web.Response(status=200 if up["on"] else 500)

    retry = FAST.model_copy(update={"retry_base_seconds": 1.0, "retry_max_seconds": 1.0})

    async def scenario() -> Receiver:
        async with receiver(gate) as r:
            setup(rconn, r.url, batch_size=10, batch_wait_ms=200)
            async with running(relay_dsn, retry):
                await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 6) g")
                await until(lambda: len(r.requests) == 1)
                out = relay("webhook", "edit", "hook", "--batch-size", "2", dsn=relay_dsn)
                assert out.returncode == 0, out
                up["on"] = True
                await until(lambda: outbox_statuses(rconn) == ["delivered"] * 6)
            return r

    r = asyncio.run(scenario())
    seen = [(q.headers["X-Relay-Delivery"], ids_of(q.body)) for q in r.requests]
    by_id: dict[str, set[tuple[int, ...]]] = {}
    for delivery, ids in seen:
        by_id.setdefault(delivery, set()).add(tuple(ids))
    assert all(len(bodies) == 1 for bodies in by_id.values()), f"one id, many bodies: {seen}"


def test_a_retry_during_a_breaker_pause_does_not_stall_the_webhook(
    rconn: Conn, relay_dsn: str
) -> None:
    """The same stall with one relay running throughout: the webhook is paused by the circuit
    breaker when the operator retries the failed earlier change of a row."""
    template = (
        "[{% for c in changes %}{{ (100 // c.data.v) }}{% if not loop.last %},{% endif %}"
        "{% endfor %}]"
    )
    up = {"on": False}

    async def gate(request: web.Request) -> web.Response:
        return web.Response(status=200 if up["on"] else 500)

    settings = FAST.model_copy(
        update={
            "retry_base_seconds": 0.5,
            "retry_max_seconds": 0.5,
            "breaker_failures": 1,
            "breaker_cooldown_seconds": 3.0,
        }
    )

    async def scenario() -> Receiver:
        async with receiver(gate) as r:
            setup(rconn, r.url, batch_size=10, batch_wait_ms=50, body_template=template)
            async with running(relay_dsn, settings):
                await sql(
                    relay_dsn,
                    "BEGIN; INSERT INTO items VALUES (1, 0);"
                    " UPDATE items SET v = 5 WHERE id = 1; COMMIT",
                )
                await until(lambda: len(r.requests) == 1 and outbox_statuses(rconn)[0] == "failed")
                # paused for 3 s now; the operator fixes the template and retries change 1
                rconn.execute("UPDATE relay.webhooks SET body_template = ''")
                up["on"] = True
                out = await asyncio.to_thread(relay, "retry", "--id", "1", dsn=relay_dsn)
                assert out.returncode == 0, out
                await sql(relay_dsn, "INSERT INTO items VALUES (2, 1)")
                await until(lambda: outbox_statuses(rconn) == ["delivered"] * 3, timeout=10)
            return r

    asyncio.run(scenario())
    rows = rconn.execute(
        "SELECT outbox_id, status, batch_id, next_attempt_at <= now() FROM relay.deliveries"
        " ORDER BY outbox_id"
    ).fetchall()
    assert outbox_statuses(rconn) == ["delivered"] * 3, f"stalled: {rows}"


def test_changes_that_fit_the_body_limit_alone_are_delivered_in_smaller_batches(
    rconn: Conn, relay_dsn: str
) -> None:
    """10 changes of ~1 KB each, RELAY_MAX_BODY_BYTES 8 KiB, batch_size 10: each change alone
    fits in a body, the batch's body does not. Expected: the changes are delivered (in
    smaller batches); observed: all ten fail for good."""
    from pydantic import ByteSize

    settings = FAST.model_copy(update={"max_body_bytes": ByteSize(8192)})

    async def scenario() -> Receiver:
        async with receiver() as r:
            rconn.execute("CREATE TABLE items (id int PRIMARY KEY, v int, t text)")
            setup(rconn, r.url, batch_size=10, batch_wait_ms=300)
            async with running(relay_dsn, settings):
                await sql(
                    relay_dsn,
                    "INSERT INTO items SELECT g, 0, repeat('x', 1000)"
                    " FROM generate_series(1, 10) g",
                )
                await until(lambda: "pending" not in outbox_statuses(rconn))
            return r

    asyncio.run(scenario())
    errors = rconn.execute("SELECT DISTINCT last_error FROM relay.deliveries").fetchall()
    assert outbox_statuses(rconn) == ["delivered"] * 10, errors


def test_two_relays_keep_per_row_order_with_key_moves(rconn: Conn, relay_dsn: str) -> None:
    import random

    arrivals: list[tuple[int, str, dict[str, Any] | None, dict[str, Any] | None]] = []

    async def slow(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        await asyncio.sleep(random.uniform(0, 0.03))
        if random.random() < 0.2:
            return web.Response(status=500)
        for c in body:
            arrivals.append(
                (c["id"], c["event"], c["snapshots"]["prechange"], c["snapshots"]["postchange"])
            )
        return web.Response(text="ok")

    settings = FAST.model_copy(
        update={"retry_base_seconds": 0.05, "retry_max_seconds": 0.1, "max_attempts": 100}
    )

    async def scenario() -> None:
        async with receiver(slow) as r:
            setup(rconn, r.url, batch_size=3, batch_wait_ms=0)
            async with (
                running(relay_dsn, settings, relay_id="a"),
                running(relay_dsn, settings, relay_id="b"),
            ):
                await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 4) g")
                for step in range(1, 16):
                    stmts = [f"UPDATE items SET v = {step} WHERE id IN (1, 2)"]
                    if step % 5 == 0:
                        stmts.append(
                            "UPDATE items SET id = id + 10 WHERE id IN (3, 4, 13, 14)"
                            if step != 10
                            else "UPDATE items SET id = id - 10 WHERE id IN (13, 14)"
                        )
                    stmts.append(f"UPDATE items SET v = {step} WHERE id IN (3, 4, 13, 14)")
                    await sql(relay_dsn, *stmts)
                    await asyncio.sleep(0.01)
                await until(lambda: "pending" not in outbox_statuses(rconn), timeout=30)

    asyncio.run(scenario())
    assert set(outbox_statuses(rconn)) == {"delivered"}
    # delivered order must be outbox order per row key (old or new key)
    last: dict[int, int] = {}
    problems = []
    for oid, _event, pre, post in arrivals:
        keys = {img["id"] for img in (pre, post) if img}
        for k in keys:
            if last.get(k, 0) > oid:
                problems.append((k, last[k], oid))
            last[k] = max(last.get(k, 0), oid)
    assert not problems, problems[:10]


def test_each_change_of_a_batch_keeps_its_own_attempts(rconn: Conn, relay_dsn: str) -> None:
    """max_attempts 3. Change A (row 1) failed twice as a single delivery (batch_size 1). The
    webhook becomes batched; A and four fresh changes go in one batch, which gets a 500: the
    batch's outcome is decided by A's attempt number, so the four fresh changes fail for good
    after a single attempt."""
    calls = {"n": 0}

    async def down(request: web.Request) -> web.Response:
        calls["n"] += 1
        return web.Response(status=500)

    settings = FAST.model_copy(update={"retry_base_seconds": 0.5, "retry_max_seconds": 0.5})

    async def scenario() -> None:
        async with receiver(down) as r:
            setup(rconn, r.url, batch_size=1, max_attempts=3)
            async with running(relay_dsn, settings):
                await sql(relay_dsn, "INSERT INTO items VALUES (1, 0)")
                await until(lambda: calls["n"] == 2)
            rconn.execute("UPDATE relay.webhooks SET batch_size = 10, batch_wait_ms = 100")
            await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(2, 5) g")
            await asyncio.to_thread(fan_out, rconn)
            await asyncio.sleep(0.6)
            async with running(relay_dsn, settings):
                await until(lambda: "pending" not in outbox_statuses(rconn), timeout=15)

    asyncio.run(scenario())
    rows = rconn.execute(
        "SELECT outbox_id, status, attempts FROM relay.deliveries ORDER BY outbox_id"
    ).fetchall()
    assert all(attempts == 3 for _, _, attempts in rows), rows
    # The first change ran out of attempts with the batch's first failure: the others still
    # waited their retry delay (0.5 s, +-20%) before the next attempt, not none.
    gaps = rconn.execute(
        "SELECT extract(epoch FROM attempted_at - lag(attempted_at) OVER (ORDER BY attempt))"
        " FROM relay.attempts WHERE outbox_id = 2 ORDER BY attempt"
    ).fetchall()
    assert [gap for (gap,) in gaps[1:]] and all(gap >= 0.35 for (gap,) in gaps[1:]), gaps


@pytest.mark.parametrize("case", ["iterations", "output"])
def test_changes_that_render_within_budget_alone_are_delivered_in_smaller_batches(
    rconn: Conn, relay_dsn: str, case: str
) -> None:
    """Each change renders alone within the sandbox's budget (iterations, output size); the
    batch together does not: the part that renders goes, the rest in later batches."""
    if case == "iterations":
        template = (
            "[{% for c in changes %}{% for i in range(3000) %}{% endfor %}{{ c.id }}"
            "{% if not loop.last %},{% endif %}{% endfor %}]"
        )
        rows, text = 400, 1
    else:
        template = (
            "[{% for c in changes %}{{ c.data | tojson }}"
            "{% if not loop.last %},{% endif %}{% endfor %}]"
        )
        rows, text = 100, 100_000

    async def scenario() -> Receiver:
        async with receiver() as r:
            rconn.execute("CREATE TABLE items (id int PRIMARY KEY, v int, t text)")
            setup(rconn, r.url, batch_size=1000, batch_wait_ms=1000, body_template=template)
            async with running(relay_dsn):
                await sql(
                    relay_dsn,
                    f"INSERT INTO items SELECT g, 0, repeat('x', {text})"
                    f" FROM generate_series(1, {rows}) g",
                )
                await until(lambda: "pending" not in outbox_statuses(rconn), timeout=30)
            return r

    asyncio.run(scenario())
    errors = rconn.execute(
        "SELECT status, count(*), min(last_error) FROM relay.deliveries GROUP BY 1"
    ).fetchall()
    assert set(outbox_statuses(rconn)) == {"delivered"}, errors


@pytest.mark.timing  # renders that take most of a 5 s lease: CPU beside it makes them outlive it
def test_a_template_that_fails_for_every_change_fails_each_once_within_the_lease(
    rconn: Conn, relay_dsn: str
) -> None:
    """A template that fails (iteration budget) for every change: each claim renders the batch,
    then its first change alone (about two renders of at most MAX_SECONDS), fails that change
    and puts the rest back; no claim outlives its lease, so no change is attempted twice."""
    template = "{% for i in range(2000000) %}{% endfor %}[]"
    settings = FAST.model_copy(update={"lease_seconds": 5})

    async def scenario() -> float:
        async with receiver() as r:
            setup(rconn, r.url, batch_size=1000, batch_wait_ms=300, body_template=template)
            async with running(relay_dsn, settings):
                await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 8) g")
                took = await until(lambda: "pending" not in outbox_statuses(rconn), timeout=60)
            assert not r.requests
            return took

    took = asyncio.run(scenario())
    rows = rconn.execute(
        "SELECT outbox_id, count(*), min(error) FROM relay.attempts GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert [n for _, n, _ in rows] == [1] * 8
    assert all("loops went past 1,000,000 iterations" in error for _, _, error in rows)
    assert took < 8 * 2 * 1.5, f"{took:.1f} s for eight changes"


def test_a_retry_short_of_room_waits_and_goes_whole_under_its_id(
    rconn: Conn, relay_dsn: str
) -> None:
    """No configuration change: batch X (6 changes) fails; while another batch Y holds most
    of the webhook's byte budget, X comes due and only the part of X that fits is claimed,
    under X's id; the rest follows later under the same id with other changes."""
    from pydantic import ByteSize

    calls = {"n": 0}

    async def gate(request: web.Request) -> web.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return web.Response(status=500)
        if calls["n"] == 2:
            await asyncio.sleep(3)
        return web.Response(text="ok")

    settings = FAST.model_copy(
        update={
            "retry_base_seconds": 0.5,
            "retry_max_seconds": 0.5,
            "max_body_bytes": ByteSize(65536),
            "max_held_bytes": ByteSize(6 * 65536),
        }
    )
    template = "[{% for c in changes %}{{ c.id }}{% if not loop.last %},{% endif %}{% endfor %}]"

    async def scenario() -> Receiver:
        async with receiver(gate) as r:
            rconn.execute("CREATE TABLE items (id int PRIMARY KEY, v int, t text)")
            setup(rconn, r.url, batch_size=100, batch_wait_ms=100, body_template=template)
            async with running(relay_dsn, settings):
                await sql(
                    relay_dsn,
                    "INSERT INTO items SELECT g, 0, repeat('x', 5000) FROM generate_series(1, 6) g",
                )
                await until(lambda: calls["n"] == 1)
                await sql(
                    relay_dsn,
                    "INSERT INTO items SELECT g, 0, repeat('x', 5000)"
                    " FROM generate_series(7, 14) g",
                )
                await until(lambda: outbox_statuses(rconn) == ["delivered"] * 14, timeout=20)
            return r

    r = asyncio.run(scenario())
    seen = [(q.headers["X-Relay-Delivery"][:8], json.loads(q.body)) for q in r.requests]
    by_id: dict[str, set[tuple[int, ...]]] = {}
    for delivery, ids in seen:
        by_id.setdefault(delivery, set()).add(tuple(ids))
    assert all(len(bodies) == 1 for bodies in by_id.values()), f"one id, many bodies: {seen}"


def test_a_row_waiting_for_a_retry_does_not_hold_up_other_rows(rconn: Conn, relay_dsn: str) -> None:
    """docs/rules.md: 'While one waits for a retry, later changes of the same row wait too;
    other rows keep flowing in other batches.' With batch_size 2 and two later changes of the
    waiting row, claim_batch's candidates (LIMIT batch_size) are only those blocked changes:
    row 2's change never goes while row 1 waits."""
    failing = {"on": True}

    async def gate(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        if failing["on"] and any(c["pk"] == {"id": 1} for c in body):
            return web.Response(status=500)
        return web.Response(text="ok")

    settings = FAST.model_copy(update={"retry_base_seconds": 30.0, "retry_max_seconds": 30.0})

    async def scenario() -> Receiver:
        async with receiver(gate) as r:
            setup(rconn, r.url, batch_size=2, batch_wait_ms=0)
            async with running(relay_dsn, settings):
                await sql(relay_dsn, "INSERT INTO items VALUES (1, 0)")
                await until(lambda: len(r.requests) == 1)
                await sql(
                    relay_dsn,
                    "UPDATE items SET v = 1 WHERE id = 1",
                    "UPDATE items SET v = 2 WHERE id = 1",
                    "INSERT INTO items VALUES (2, 0)",
                )
                await until(lambda: outbox_statuses(rconn)[3] == "delivered", timeout=5)
            return r

    asyncio.run(scenario())
    assert outbox_statuses(rconn)[3] == "delivered", outbox_statuses(rconn)


def test_a_replay_while_a_batch_is_in_flight_does_not_stall_the_webhook(
    rconn: Conn, relay_dsn: str
) -> None:
    """Issue 24, item 4: batch_size 2, one request at a time, a slow receiver, a second change
    of every row while a batch is in flight, then `relay replay`. The replayed inserts are due
    at the replay's now(), later than the updates of their rows: claim_batch's candidates were
    cut to batch_size (those updates) before the per-row check dropped them, on every claim,
    and nothing more went to the webhook, across restarts."""
    arrived: list[int] = []
    answered = {"n": 0}

    async def slow(request: web.Request) -> web.Response:
        arrived.append(len(arrived))
        turn = arrived[-1]
        await until(lambda: answered["n"] > turn, timeout=30)
        return web.Response(text="ok")

    settings = FAST.model_copy(update={"webhook_concurrency": 1})

    async def scenario() -> Receiver:
        async with receiver(slow) as r:
            setup(rconn, r.url, batch_size=2, batch_wait_ms=0)
            async with running(relay_dsn, settings):
                await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 6) g")
                await until(lambda: len(arrived) == 1)  # batch {1, 2} in flight
                await sql(relay_dsn, "UPDATE items SET v = 1")
                await until(lambda: pending(rconn) == 12)
                answered["n"] = 1  # {1, 2} delivered; {3, 4} in flight, {5, 6} waits its turn
                await until(lambda: len(arrived) == 2)
                out = await asyncio.to_thread(
                    relay, "replay", "--webhook", "hook", "--since", "1h", dsn=relay_dsn
                )
                assert out.returncode == 0, out.stderr
                assert "replaying 2 changes" in out.stdout, out.stdout + out.stderr
                answered["n"] = 1000
                await until(lambda: pending(rconn) == 0, timeout=10)
            return r

    r = asyncio.run(scenario())
    assert outbox_statuses(rconn) == ["delivered"] * 12
    for row in range(1, 7):
        told = [c["data"]["v"] for q in r.requests for c in changes(q.body) if c["pk"]["id"] == row]
        assert told[0] == 0 and told[-1] == 1, f"row {row} ends on its latest image: {told}"


def changes(body: bytes) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = json.loads(body)
    return sent


def pending(conn: Conn) -> int:
    count: int = one_row(
        conn.execute("SELECT count(*) FROM relay.deliveries WHERE status = 'pending'")
    )[0]
    return count


def test_a_batch_sent_before_that_no_longer_fits_goes_whole_or_waits_under_its_id(
    rconn: Conn, relay_dsn: str
) -> None:
    """Batch X of 6 changes of 3 KB goes out and gets a 500, as from a receiver that stored
    it and then failed. RELAY_MAX_BODY_BYTES is then lowered below X's body and the relay
    restarted. Before: X's retry went in parts, its first change under X's id and the others
    under new batch ids, so a receiver that drops the ids it has processed took those five
    twice. Now X waits whole, saying why, and goes whole under its id once the limit is back."""
    from pydantic import ByteSize

    up = {"on": False}

    async def gate(request: web.Request) -> web.Response:
        return web.Response(status=200 if up["on"] else 500)

    roomy = FAST.model_copy(
        update={
            "retry_base_seconds": 0.3,
            "retry_max_seconds": 0.3,
            "max_body_bytes": ByteSize(65536),
        }
    )
    tight = roomy.model_copy(update={"max_body_bytes": ByteSize(8192)})

    async def scenario() -> Receiver:
        async with receiver(gate) as r:
            rconn.execute("CREATE TABLE items (id int PRIMARY KEY, v int, t text)")
            setup(rconn, r.url, batch_size=10, batch_wait_ms=300, max_attempts=100)
            async with running(relay_dsn, roomy):
                await sql(
                    relay_dsn,
                    "INSERT INTO items SELECT g, 0, repeat('x', 1500) FROM generate_series(1, 6) g",
                )
                await until(lambda: len(r.requests) >= 1)
            up["on"] = True
            async with running(relay_dsn, tight):
                await asyncio.sleep(2)
            waiting = rconn.execute(
                "SELECT DISTINCT status::text, last_error FROM relay.deliveries"
            ).fetchall()
            assert len(waiting) == 1 and waiting[0][0] == "pending", waiting
            assert "over RELAY_MAX_BODY_BYTES" in waiting[0][1], waiting
            async with running(relay_dsn, roomy):
                await until(lambda: outbox_statuses(rconn) == ["delivered"] * 6)
            return r

    r = asyncio.run(scenario())
    ids_by_change: dict[int, set[str]] = {}
    for q in r.requests:
        for change in ids_of(q.body):
            ids_by_change.setdefault(change, set()).add(q.headers["X-Relay-Delivery"])
    assert len({i for ids in ids_by_change.values() for i in ids}) == 1, ids_by_change
    assert len(ids_by_change) == 6
