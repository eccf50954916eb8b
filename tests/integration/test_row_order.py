"""Per-row order as a receiver sees it, when the primary key changes and whatever its type."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from aiohttp import web

from relay.db import Conn
from support.receivers import receiver
from support.worker import FAST, outbox_statuses, running, until


def add_webhook(conn: Conn, url: str, tables: list[str]) -> None:
    conn.execute(
        "INSERT INTO relay.webhooks (name, payload_url, secret) VALUES ('hook', %s, 's')", (url,)
    )
    conn.execute(
        "INSERT INTO relay.event_rules (name, tables, webhook_id)"
        " SELECT 'all', %s, id FROM relay.webhooks",
        (tables,),
    )


@asynccontextmanager
async def first_creates_refused() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A receiver that answers 503 to the first attempt of every "created" event, as a
    receiver that is briefly down would, and notes in order the bodies it accepted."""
    refused: set[str] = set()
    accepted: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        delivery = request.headers["X-Relay-Delivery"]
        if body["event"] == "created" and delivery not in refused:
            refused.add(delivery)
            return web.Response(status=503)
        accepted.append(body)
        return web.Response()

    async with receiver(handle) as r:
        yield r.url, accepted


def story(accepted: list[dict[str, Any]], table: str, column: str) -> list[str]:
    """What a receiver learnt about one table, in the order it learnt it: "created 10",
    "updated 10 -> 11", "updated 11"..."""
    told = []
    for body in accepted:
        if body["model"] != table:
            continue
        before, after = body["snapshots"]["prechange"], body["snapshots"]["postchange"]
        if body["event"] == "created":
            told.append(f"created {after[column]}")
        elif before[column] != after[column]:
            told.append(f"updated {before[column]} -> {after[column]}")
        else:
            told.append(f"updated {after[column]}")
    return told


def test_an_update_of_the_primary_key_waits_for_the_insert_of_the_old_key(
    rconn: Conn, relay_dsn: str
) -> None:
    rconn.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
    rconn.execute("SELECT relay.track('items')")

    async def scenario() -> list[dict[str, Any]]:
        async with first_creates_refused() as (url, accepted):
            add_webhook(rconn, url, ["public.items"])
            async with running(relay_dsn, FAST):
                rconn.execute("INSERT INTO items VALUES (10, 0)")
                rconn.execute("UPDATE items SET id = 11 WHERE id = 10")
                await until(lambda: outbox_statuses(rconn) == ["delivered"] * 2)
            return accepted

    assert story(asyncio.run(scenario()), "items", "id") == ["created 10", "updated 10 -> 11"]


def test_a_chain_of_key_changes_and_a_reused_key_arrive_in_order(
    rconn: Conn, relay_dsn: str
) -> None:
    rconn.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
    rconn.execute("SELECT relay.track('items')")

    async def scenario() -> list[dict[str, Any]]:
        async with first_creates_refused() as (url, accepted):
            add_webhook(rconn, url, ["public.items"])
            async with running(relay_dsn, FAST):
                rconn.execute("INSERT INTO items VALUES (10, 0)")
                rconn.execute("UPDATE items SET id = 11 WHERE id = 10")
                rconn.execute("INSERT INTO items VALUES (10, 1)")  # a new row, the old key
                rconn.execute("UPDATE items SET id = 12 WHERE id = 11")
                rconn.execute("UPDATE items SET v = 2 WHERE id = 12")
                await until(lambda: outbox_statuses(rconn) == ["delivered"] * 5)
            return accepted

    told = story(asyncio.run(scenario()), "items", "id")
    # The second row 10 is news only once the first one has left that key.
    reused = told.index("created 10", 1)
    assert reused > told.index("updated 10 -> 11")
    del told[reused]
    assert told == ["created 10", "updated 10 -> 11", "updated 11 -> 12", "updated 12"]


def test_order_holds_for_bytea_timestamptz_and_float_keys_written_with_other_settings(
    rconn: Conn, relay_dsn: str
) -> None:
    """Each row is written by two sessions whose settings print its key differently; the
    receiver still hears of each row's changes in the order they were made."""
    rconn.execute("CREATE TABLE blobs (k bytea PRIMARY KEY, v int)")
    rconn.execute("CREATE TABLE events (at timestamptz PRIMARY KEY, v int)")
    rconn.execute("CREATE TABLE ratios (r double precision PRIMARY KEY, v int)")
    rconn.execute("SELECT relay.track('blobs'), relay.track('events'), relay.track('ratios')")
    plain = "SET bytea_output = 'hex'; SET TimeZone = 'UTC'; SET extra_float_digits = 1"
    odd = (
        "SET bytea_output = 'escape'; SET TimeZone = 'Asia/Kathmandu';"
        " SET extra_float_digits = 0; SET DateStyle = 'SQL, DMY'"
    )

    async def scenario() -> list[dict[str, Any]]:
        async with first_creates_refused() as (url, accepted):
            add_webhook(rconn, url, ["public.blobs", "public.events", "public.ratios"])
            with (
                psycopg.connect(relay_dsn, autocommit=True) as one,
                psycopg.connect(relay_dsn, autocommit=True) as two,
            ):
                one.execute(plain)
                two.execute(odd)
                async with running(relay_dsn, FAST):
                    one.execute("INSERT INTO blobs VALUES ('\\x0a00ff', 0)")
                    two.execute("UPDATE blobs SET v = 1 WHERE k = '\\x0a00ff'")
                    one.execute("UPDATE blobs SET k = '\\x0b' WHERE k = '\\x0a00ff'")
                    two.execute("UPDATE blobs SET v = 2 WHERE k = '\\x0b'")
                    one.execute("INSERT INTO events VALUES ('2026-01-01 00:00:00+00', 0)")
                    two.execute("UPDATE events SET v = 1 WHERE at = '2026-01-01 00:00:00+00'")
                    one.execute("INSERT INTO ratios VALUES (1.0 / 3, 0)")
                    two.execute("UPDATE ratios SET v = 1 WHERE v = 0")
                    await until(lambda: outbox_statuses(rconn) == ["delivered"] * 8)
            return accepted

    accepted = asyncio.run(scenario())
    assert story(accepted, "blobs", "k") == [
        "created \\x0a00ff",
        "updated \\x0a00ff",
        "updated \\x0a00ff -> \\x0b",
        "updated \\x0b",
    ]
    at = "2026-01-01T00:00:00+00:00"
    assert story(accepted, "events", "at") == [f"created {at}", f"updated {at}"]
    assert story(accepted, "ratios", "r") == [
        "created 0.3333333333333333",
        "updated 0.3333333333333333",
    ]


def test_order_holds_for_keys_too_long_to_index_as_written(rconn: Conn, relay_dsn: str) -> None:
    """A row's key as relay writes it (its table and the key's JSON) may be longer than the
    application's own index of it: a bytea key doubles as hex, and a text key near PostgreSQL's
    limit gains its table's name. An application's writes of such rows stop nothing: every
    change is delivered, each row's in order, the key moves included, and the other tables'
    changes flow."""
    rconn.execute("CREATE TABLE blobs (k bytea PRIMARY KEY, v int)")
    rconn.execute("CREATE TABLE names (k text PRIMARY KEY, v int)")
    rconn.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
    rconn.execute("SELECT relay.track('blobs'), relay.track('names'), relay.track('items')")
    blob, moved = os.urandom(1500), os.urandom(1500)
    name = secrets.token_hex(1300)  # random: no compression brings it under the limit

    async def scenario() -> list[dict[str, Any]]:
        async with first_creates_refused() as (url, accepted):
            add_webhook(rconn, url, ["public.blobs", "public.names", "public.items"])
            async with running(relay_dsn, FAST):
                rconn.execute("INSERT INTO blobs VALUES (%s, 0)", (blob,))
                rconn.execute("UPDATE blobs SET v = 1 WHERE k = %s", (blob,))
                rconn.execute("UPDATE blobs SET k = %s, v = 2 WHERE k = %s", (moved, blob))
                rconn.execute("UPDATE blobs SET v = 3 WHERE k = %s", (moved,))
                rconn.execute("INSERT INTO names VALUES (%s, 0)", (name,))
                rconn.execute("UPDATE names SET v = 1 WHERE k = %s", (name,))
                rconn.execute("INSERT INTO items VALUES (1, 0)")
                await until(lambda: outbox_statuses(rconn) == ["delivered"] * 7, timeout=20)
            return accepted

    accepted = asyncio.run(scenario())
    assert story(accepted, "blobs", "v") == ["created 0", "updated 0 -> 1", "updated 1 -> 2",
                                             "updated 2 -> 3"]  # fmt: skip
    assert story(accepted, "names", "v") == ["created 0", "updated 0 -> 1"]
    assert story(accepted, "items", "v") == ["created 0"]
