"""Bad input, end to end: every problem ends as a failed delivery with a reason a person
understands, and everything else is still delivered."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from relay.db import Conn
from relay.render.child import KILL_MARGIN
from support.db import one_row
from support.hooks import add
from support.receivers import Receiver, receiver
from support.render import STUCK
from support.worker import FAST, running, sql, until

BIG = "x" * (10 * 1024 * 1024)


def strict_json(body: bytes) -> Any:
    def refuse(token: str) -> object:
        raise ValueError(f"not JSON: {token}")

    return json.loads(body, parse_constant=refuse)


def test_bad_webhooks_fail_with_reasons_and_odd_data_still_arrives(
    rconn: Conn, relay_dsn: str
) -> None:
    rconn.execute(
        "CREATE TABLE items (id int PRIMARY KEY, note text, amount numeric, blob bytea,"
        " tags text[], big text)"
    )
    rconn.execute("CREATE TABLE gone (id int PRIMARY KEY)")
    rconn.execute("SELECT relay.track('items'), relay.track('gone')")

    async def scenario() -> tuple[Receiver, list[tuple[Any, ...]]]:
        async with receiver() as good:
            add(rconn, "good", payload_url=good.url)
            add(rconn, "broken", payload_url=good.url, body_template="{{ data.id ")
            add(rconn, "raises", payload_url=good.url, body_template="{{ 1 / 0 }}")
            add(rconn, "garbage-url", payload_url="{{ data.note }}")
            add(rconn, "runaway", payload_url=good.url, body_template="{{ 'a' * 10**9 }}")
            add(rconn, "for-gone-table", table="public.gone", payload_url=good.url)
            rconn.execute("DROP TABLE gone")  # its rule stays behind, matching nothing
            async with running(relay_dsn, FAST):
                rconn.execute(
                    "INSERT INTO items VALUES"
                    " (1, 'emoji 🎉 and right-to-left עברית', 'NaN', '\\x00ff'::bytea,"
                    "  ARRAY['a', NULL, 'c'], NULL),"
                    " (2, 'infinite', 'Infinity', NULL, '{}', NULL),"
                    " (3, 'ten megabytes', 1.50, NULL, NULL, %s)",
                    (BIG,),
                )
                rconn.execute("UPDATE items SET amount = '-Infinity' WHERE id = 2")
                await until(lambda: len(good.requests) == 4, timeout=30)
                await until(
                    lambda: (
                        one_row(
                            rconn.execute(
                                "SELECT count(*) FROM relay.deliveries WHERE status = 'pending'"
                            )
                        )[0]
                        == 0
                    ),
                    timeout=30,
                )
            failures = rconn.execute(
                "SELECT w.name, d.outbox_id, d.status::text, d.last_error FROM relay.deliveries d"
                " JOIN relay.webhooks w ON w.id = d.webhook_id WHERE w.name <> 'good'"
                " ORDER BY 1, 2"
            ).fetchall()
            return good, failures

    good, failures = asyncio.run(scenario())
    bodies = [strict_json(req.body) for req in good.requests]  # valid JSON, no NaN tokens
    first = next(b for b in bodies if b["data"]["id"] == 1)
    assert first["data"]["note"] == "emoji 🎉 and right-to-left עברית"
    assert first["data"]["tags"] == ["a", None, "c"] and first["data"]["blob"] == "\\x00ff"
    assert first["data"]["amount"] == "NaN"
    assert next(b for b in bodies if b["data"]["id"] == 3)["data"]["big"] == BIG
    assert {b["data"]["amount"] for b in bodies if b["data"]["id"] == 2} == {
        "Infinity",
        "-Infinity",
    }

    reasons: dict[str, set[str]] = {}
    for name, _, status, error in failures:
        assert status == "failed", (name, error)
        reasons.setdefault(name, set()).add(error)
    assert set(reasons) == {"broken", "raises", "garbage-url", "runaway"}
    (broken,) = reasons["broken"]
    assert broken.startswith("body_template: line 1:")
    (raises,) = reasons["raises"]
    assert raises == "body_template: ZeroDivisionError: division by zero"
    assert all("not an http(s) URL" in r for r in reasons["garbage-url"])
    (runaway,) = reasons["runaway"]
    assert "goes past" in runaway


@pytest.mark.timing
def test_a_template_stuck_in_c_code_does_not_hold_up_a_healthy_webhook(
    rconn: Conn, relay_dsn: str
) -> None:
    """Both webhooks live, real receivers: while the stuck template renders (each attempt
    until it is stopped, 1.5 s), every change to the healthy webhook (also templated) arrives
    within KILL_MARGIN of its commit. The old sandbox rendered on the event loop: 25 s each,
    with everything else waiting."""
    rconn.execute("CREATE TABLE events (id int PRIMARY KEY, hostile bool NOT NULL)")
    rconn.execute("SELECT relay.track('events')")
    arrived: dict[int, float] = {}

    async def note(request: web.Request) -> web.Response:
        arrived[json.loads(await request.read())["id"]] = time.monotonic()
        return web.Response(text="ok")

    async def commit(row_id: int, hostile: bool = False) -> float:
        await sql(relay_dsn, f"INSERT INTO events VALUES ({row_id}, {hostile})")
        return time.monotonic()

    async def scenario() -> tuple[dict[int, float], Receiver, list[tuple[Any, ...]]]:
        async with receiver(note) as healthy, receiver() as hostile:
            add(
                rconn,
                "healthy",
                "public.events",
                payload_url=healthy.url,
                body_template='{"id": {{ data.id }}}',
            )
            add(
                rconn,
                "stuck",
                "public.events",
                payload_url=hostile.url,
                body_template=STUCK,
                conditions='{"attr": "data.hostile", "value": true}',
            )
            async with running(relay_dsn, FAST):
                await commit(0)
                await until(lambda: 0 in arrived, timeout=30)  # render processes started
                committed = {}
                await commit(1000, hostile=True)
                for row_id in range(1, 26):
                    if row_id == 12:
                        await commit(1001, hostile=True)
                    committed[row_id] = await commit(row_id)
                    await asyncio.sleep(0.1)
                await until(lambda: set(committed) <= set(arrived), timeout=30)
                failed: Callable[[], list[tuple[Any, ...]]] = lambda: rconn.execute(  # noqa: E731
                    "SELECT d.outbox_id, d.status::text, d.last_error FROM relay.deliveries d"
                    " JOIN relay.webhooks w ON w.id = d.webhook_id WHERE w.name = 'stuck'"
                ).fetchall()
                await until(lambda: [row[1] for row in failed()] == ["failed"] * 2, timeout=30)
            delays = {row_id: arrived[row_id] - at for row_id, at in committed.items()}
            return delays, hostile, failed()

    delays, hostile, failed = asyncio.run(scenario())
    print(f"healthy webhook beside a stuck template: delay max {max(delays.values()):.3f} s")
    assert max(delays.values()) < KILL_MARGIN
    assert hostile.requests == []
    assert {error for _, _, error in failed} == {"stopped after 1 s (the limit per request)"}
    attempts = rconn.execute(
        "SELECT a.error FROM relay.attempts a JOIN relay.webhooks w ON w.id = a.webhook_id"
        " WHERE w.name = 'stuck'"
    ).fetchall()
    assert attempts == [("stopped after 1 s (the limit per request)",)] * 2
