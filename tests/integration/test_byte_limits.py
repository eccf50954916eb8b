"""Bytes, not counts: large changes cost only themselves (RELAY_MAX_BODY_BYTES,
RELAY_MAX_HELD_BYTES)."""

from __future__ import annotations

import asyncio
import json
import re

from aiohttp import web

from relay.db import Conn
from relay.settings import Settings
from support.cli import relay_env as relay
from support.hooks import add
from support.receivers import Handler, Receiver, receiver
from support.worker import FAST, outbox_statuses, running, until

KiB = 1024


def limited(body: int, held: int, **more: object) -> Settings:
    return Settings(**{**FAST.model_dump(), "max_body_bytes": body, "max_held_bytes": held, **more})


def test_changes_too_large_to_send_fail_at_once_with_the_reason_and_the_rest_flows(
    rconn: Conn, relay_dsn: str
) -> None:
    rconn.execute("CREATE TABLE items (id int PRIMARY KEY, note text)")
    rconn.execute("SELECT relay.track('items')")

    async def scenario() -> tuple[Receiver, Receiver]:
        async with receiver() as plain, receiver() as picky:
            add(rconn, "plain", payload_url=plain.url)
            add(rconn, "picky", payload_url=picky.url)
            rconn.execute(  # a condition no change here meets
                'UPDATE relay.event_rules SET conditions = \'{"attr": "data.id", "value": 99}\''
                " WHERE name = 'picky'"
            )
            async with running(relay_dsn, limited(body=100 * KiB, held=600 * KiB)):
                rconn.execute(
                    "INSERT INTO items VALUES (1, 'small'), (2, repeat('x', 200 * 1024)),"
                    " (3, repeat('y', 60 * 1024)), (4, 'small')"
                )
                rconn.execute("UPDATE items SET note = 'still small' WHERE id = 1")
                await until(
                    lambda: (
                        len(outbox_statuses(rconn)) == 5 and "pending" not in outbox_statuses(rconn)
                    )
                )
                rconn.execute("INSERT INTO items VALUES (5, 'after')")  # the relay goes on
                await until(lambda: outbox_statuses(rconn)[-1] == "delivered")
            return plain, picky

    plain, picky = asyncio.run(scenario())
    told = [
        (b["event"], b["data"]["id"]) for b in map(json.loads, (r.body for r in plain.requests))
    ]
    assert told == [("created", 1), ("created", 4), ("updated", 1), ("created", 5)]
    assert picky.requests == []
    assert outbox_statuses(rconn) == [
        "delivered",
        "failed",
        "failed",
        "delivered",
        "delivered",
        "delivered",
    ]
    failures = rconn.execute(
        "SELECT o.new ->> 'id', w.name, d.status::text, d.last_error FROM relay.deliveries d"
        " JOIN relay.webhooks w ON w.id = d.webhook_id JOIN relay.outbox o ON o.id = d.outbox_id"
        " WHERE d.status <> 'delivered' ORDER BY 1, 2"
    ).fetchall()
    too_large = "change of 200.0KiB is over RELAY_MAX_BODY_BYTES (100.0KiB)"
    # Too large to read, so the picky rule's condition could not be checked: failed there too,
    # not skipped unseen.
    assert failures[:2] == [
        ("2", "picky", "failed", too_large),
        ("2", "plain", "failed", too_large),
    ]
    # Small enough to read, but its body (the 60 KiB note twice, as data and postchange) is not.
    ((row, hook, status, error),) = failures[2:]
    assert (row, hook, status) == ("3", "plain", "failed")
    assert re.fullmatch(r"body of 120\.\dKiB is over RELAY_MAX_BODY_BYTES \(100\.0KiB\)", error)


def test_held_bytes_bound_how_many_large_changes_are_in_flight(rconn: Conn, relay_dsn: str) -> None:
    rconn.execute("CREATE TABLE items (id int PRIMARY KEY, note text)")
    rconn.execute("SELECT relay.track('items')")
    most = {"a": 0, "b": 0}

    def slow(name: str) -> Handler:
        now = {"n": 0}

        async def answer(request: web.Request) -> web.Response:
            now["n"] += 1
            most[name] = max(most[name], now["n"])
            await asyncio.sleep(0.2)
            now["n"] -= 1
            return web.Response()

        return answer

    async def scenario() -> tuple[Receiver, Receiver]:
        async with receiver(slow("a")) as a, receiver(slow("b")) as b:
            add(rconn, "a", payload_url=a.url)
            add(rconn, "b", payload_url=b.url)
            # Room for 200 KiB of changes, 100 KiB per webhook: three 30 KiB rows each.
            settings = limited(body=100 * KiB, held=600 * KiB, webhook_concurrency=16)
            async with running(relay_dsn, settings):
                rconn.execute(
                    "INSERT INTO items SELECT g, repeat('x', 30 * 1024)"
                    " FROM generate_series(1, 12) g"
                )
                await until(lambda: outbox_statuses(rconn) == ["delivered"] * 12)
            return a, b

    a, b = asyncio.run(scenario())
    assert len(a.requests) == len(b.requests) == 12
    assert most == {"a": 3, "b": 3}


def test_the_byte_budget_must_hold_the_largest_change() -> None:
    result = relay("config", RELAY_MAX_BODY_BYTES="64MiB", RELAY_MAX_HELD_BYTES="256MiB")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: RELAY_MAX_HELD_BYTES: must be a size from 6 x RELAY_MAX_BODY_BYTES (384.0MiB) "
        "to 1.0TiB"
    )
    shown = json.loads(relay("config", "--json", RELAY_MAX_BODY_BYTES="5MB").stdout)
    assert (shown["RELAY_MAX_BODY_BYTES"], shown["RELAY_MAX_HELD_BYTES"]) == (5_000_000, 256 << 20)


def test_conditions_see_large_rows_read_a_few_at_a_time(rconn: Conn, relay_dsn: str) -> None:
    rconn.execute("CREATE TABLE items (id int PRIMARY KEY, note text)")
    rconn.execute("SELECT relay.track('items')")

    async def scenario() -> Receiver:
        async with receiver() as r:
            add(rconn, "even", payload_url=r.url)
            rconn.execute(
                "UPDATE relay.event_rules SET conditions ="
                ' \'{"attr": "data.id", "op": "in", "value": [2, 4, 6, 8, 10]}\''
            )
            # Room for 200 KiB of changes: fan-out reads 50 KiB of rows at a time, one here.
            async with running(relay_dsn, limited(body=100 * KiB, held=600 * KiB)):
                rconn.execute(
                    "INSERT INTO items SELECT g, repeat('x', 30 * 1024)"
                    " FROM generate_series(1, 10) g"
                )
                await until(lambda: "pending" not in outbox_statuses(rconn))
            return r

    r = asyncio.run(scenario())
    assert sorted(json.loads(req.body)["data"]["id"] for req in r.requests) == [2, 4, 6, 8, 10]
    assert outbox_statuses(rconn) == ["skipped", "delivered"] * 5


def test_a_change_waiting_when_the_limit_is_lowered_fails_unread(
    rconn: Conn, relay_dsn: str
) -> None:
    rconn.execute("CREATE TABLE items (id int PRIMARY KEY, note text)")
    rconn.execute("SELECT relay.track('items')")

    async def down(request: web.Request) -> web.Response:
        return web.Response(status=503)

    async def scenario() -> Receiver:
        async with receiver(down) as r:
            add(rconn, "hook", payload_url=r.url)
            patient = Settings(**{**FAST.model_dump(), "retry_base_seconds": 60})
            async with running(relay_dsn, patient):
                rconn.execute("INSERT INTO items VALUES (1, repeat('x', 200 * 1024))")
                await until(lambda: len(r.requests) == 1)  # sent, refused, due again in a minute
            rconn.execute("UPDATE relay.deliveries SET next_attempt_at = now()")
            async with running(relay_dsn, limited(body=100 * KiB, held=600 * KiB)):
                await until(lambda: outbox_statuses(rconn) == ["failed"])
            return r

    assert len(asyncio.run(scenario()).requests) == 1  # not sent again
    errors = rconn.execute("SELECT error FROM relay.attempts ORDER BY id").fetchall()
    assert errors == [
        ("HTTP 503 Service Unavailable",),
        ("change of 200.0KiB is over RELAY_MAX_BODY_BYTES (100.0KiB)",),
    ]
