"""Superseded changes: a failed change sent again after a later change of its row was delivered
is left failed, saying so, unless the operator asks for it; then it goes marked. By the SQL
reset, `relay retry` and `relay replay`, against a real relay and a real receiver."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from relay.db import Conn
from relay.delivery.record import Result, parameters
from relay.delivery.send import Outcome
from relay.sqlfiles import query
from support.cli import relay
from support.db import one_row
from support.delivery import fan_out
from support.receivers import receiver
from support.releases import command, unpack
from support.worker import FAST, running, setup, until


@dataclass
class Receiver:
    """Refuses (500) while ``refusing`` says so for a body; notes what it took, in order."""

    refusing: Callable[[dict[str, Any]], bool] = lambda body: False
    taken: list[tuple[dict[str, Any], dict[str, str]]] = field(default_factory=list)

    def told(self) -> list[tuple[int, int | None]]:
        """(id, v) of every change taken, in order."""
        return [(body["pk"]["id"], (body["data"] or {}).get("v")) for body, _ in self.taken]


@asynccontextmanager
async def story(conn: Conn, dsn: str, batch_size: int = 1) -> AsyncIterator[Receiver]:
    """A relay delivering to a receiver that refuses row 1's insert: with one attempt per
    change, it fails for good, and row 1's update (v = 1) is delivered after it."""
    r = Receiver(refusing=lambda body: body["event"] == "created" and body["pk"]["id"] == 1)

    async def handle(request: web.Request) -> web.Response:
        bodies = json.loads(await request.read())
        for body in bodies if isinstance(bodies, list) else [bodies]:
            if r.refusing(body):
                return web.Response(status=500)
        for body in bodies if isinstance(bodies, list) else [bodies]:
            r.taken.append((body, dict(request.headers)))
        return web.Response()

    async with receiver(handle) as hook:
        setup(conn, hook.url, max_attempts=1, batch_size=batch_size)
        async with running(dsn, FAST):
            conn.execute("INSERT INTO items VALUES (1, 0)")
            await until(lambda: statuses(conn) == ["failed"])
            conn.execute("UPDATE items SET v = 1 WHERE id = 1")
            await until(lambda: statuses(conn) == ["failed", "delivered"])
            r.refusing = lambda body: False
            yield r
            await until(lambda: settled(conn))
            await asyncio.sleep(0.3)  # anything that was to go has gone


def statuses(conn: Conn) -> list[str]:
    return [row[0] for row in conn.execute("SELECT status::text FROM relay.outbox ORDER BY id")]


def settled(conn: Conn) -> bool:
    pending = "SELECT count(*) FROM relay.deliveries WHERE status = 'pending'"
    return one_row(conn.execute(pending))[0] == 0 and "pending" not in statuses(conn)


def first_delivery(conn: Conn) -> tuple[str, str | None]:
    """The status and reason of the first change's delivery."""
    row = one_row(
        conn.execute(
            "SELECT status::text, last_error FROM relay.deliveries ORDER BY outbox_id LIMIT 1"
        )
    )
    return row[0], row[1]


def test_the_sql_reset_leaves_a_superseded_change_failed_saying_why(
    rconn: Conn, relay_dsn: str
) -> None:
    async def scenario() -> Receiver:
        async with story(rconn, relay_dsn) as r:
            rconn.execute("UPDATE relay.outbox SET status = 'pending' WHERE status = 'failed'")
            await until(lambda: "pending" not in statuses(rconn))
        return r

    r = asyncio.run(scenario())
    assert r.told() == [(1, 1)], "the receiver still holds row 1's latest image"
    assert first_delivery(rconn) == (
        "failed",
        "superseded: change 2 of this row was delivered after it",
    )
    reason = one_row(rconn.execute("SELECT last_error FROM relay.outbox WHERE id = 1"))[0]
    assert reason == "superseded: change 2 of this row was delivered after it"


def test_relay_retry_reports_superseded_changes_and_sends_them_when_asked(
    rconn: Conn, relay_dsn: str
) -> None:
    async def scenario() -> tuple[Receiver, list[Any]]:
        async with story(rconn, relay_dsn) as r:
            kept = await asyncio.to_thread(relay, "retry", dsn=relay_dsn)
            await until(lambda: "pending" not in statuses(rconn))
            await asyncio.sleep(0.3)
            assert r.told() == [(1, 1)], "not sent: the receiver would end on the older image"
            assert first_delivery(rconn)[0] == "failed"
            sent = await asyncio.to_thread(relay, "retry", "--superseded", dsn=relay_dsn)
        return r, [kept, sent]

    r, (kept, sent) = asyncio.run(scenario())
    assert kept.returncode == 0, kept.stderr
    assert "requeued 1 failed change" in kept.stdout
    assert kept.stderr.strip() == (
        "warning: 1 of their deliveries are superseded (a later change of the row was "
        "delivered to that webhook after them; sent now, the receiver would end on the older "
        "image): they stay failed; relay retry --superseded sends them anyway, marked "
        "X-Relay-Superseded"
    )
    assert sent.returncode == 0, sent.stderr
    assert "they go too, marked X-Relay-Superseded" in sent.stdout
    assert r.told() == [(1, 1), (1, 0)]
    headers = r.taken[-1][1]
    assert headers["X-Relay-Superseded"] == "2", "the change that superseded it"
    assert "X-Relay-Superseded" not in r.taken[0][1]
    assert first_delivery(rconn) == ("delivered", None)
    asked = one_row(rconn.execute("SELECT bool_or(send_superseded) FROM relay.deliveries"))[0]
    assert asked is False, "the leave to send it is spent"


def test_relay_replay_leaves_superseded_changes_out_unless_it_sends_the_later_ones_too(
    rconn: Conn, relay_dsn: str
) -> None:
    """--status failed would send the older image last: left out. Without --status, the later
    change goes again in the same replay, after it: then it is not superseded."""

    async def scenario() -> tuple[Receiver, list[Any]]:
        async with story(rconn, relay_dsn) as r:
            args = ("replay", "--webhook", "hook", "--since", "1h")
            kept = await asyncio.to_thread(relay, *args, "--status", "failed", dsn=relay_dsn)
            await asyncio.sleep(0.5)
            assert r.told() == [(1, 1)]
            assert first_delivery(rconn) == (
                "failed",
                "superseded: change 2 of this row was delivered after it",
            )
            both = await asyncio.to_thread(relay, *args, dsn=relay_dsn)
        return r, [kept, both]

    r, (kept, both) = asyncio.run(scenario())
    assert kept.returncode == 0, kept.stderr
    assert "replaying 0 changes" in kept.stdout
    assert (
        "warning: 1 change(s) left out: they are superseded: a later change of their row was "
        "delivered to the webhook and is not replayed, so the receiver would end on the older "
        "image; --superseded sends them anyway, marked X-Relay-Superseded"
    ) in kept.stderr
    assert both.returncode == 0, both.stderr
    assert "replaying 2 changes to webhook hook (1 delivered before, 1 failed before" in (
        both.stdout
    )
    assert "superseded" not in both.stderr
    assert r.told() == [(1, 1), (1, 0), (1, 1)]
    assert not any("X-Relay-Superseded" in headers for _, headers in r.taken)


def test_a_key_move_away_supersedes_the_changes_of_its_old_key(rconn: Conn, relay_dsn: str) -> None:
    """Row 1's insert failed; the row then moved to key 2 (delivered): the move counts for
    key 1. `relay replay --superseded` sends the insert anyway, and a batched webhook says
    which change of the batch is superseded by which."""

    async def scenario() -> tuple[Receiver, Any]:
        async with story(rconn, relay_dsn, batch_size=5) as r:
            rconn.execute("UPDATE items SET id = 2 WHERE id = 1")
            await until(lambda: statuses(rconn) == ["failed", "delivered", "delivered"])
            rconn.execute("UPDATE relay.outbox SET status = 'pending' WHERE status = 'failed'")
            await until(lambda: "pending" not in statuses(rconn))
            assert first_delivery(rconn) == (
                "failed",
                "superseded: change 3 of this row was delivered after it",
            )
            sent = await asyncio.to_thread(
                relay,
                *("replay", "--webhook", "hook", "--since", "1h", "--status", "failed"),
                "--superseded",
                dsn=relay_dsn,
            )
        return r, sent

    r, sent = asyncio.run(scenario())
    assert sent.returncode == 0, sent.stderr
    assert "replaying 1 change to webhook hook (0 delivered before, 1 failed before" in (
        sent.stdout
    )
    assert "1 superseded, marked X-Relay-Superseded" in sent.stdout
    assert r.told() == [(1, 1), (2, 1), (1, 0)]
    headers = r.taken[-1][1]
    assert (headers["X-Relay-Superseded"], headers["X-Relay-Replay"]) == ("1:3", "true")


def test_a_change_sent_again_while_a_later_change_of_its_row_is_in_flight_waits(
    rconn: Conn,
) -> None:
    """Sent again now, the insert would race the update being sent to the receiver (and be
    superseded if that one is delivered): it stays failed, saying so, until retried later."""
    setup(rconn, "http://127.0.0.1:9/hook")
    rconn.execute("INSERT INTO items VALUES (1, 0)")
    rconn.execute("UPDATE items SET v = 1 WHERE id = 1")
    fan_out(rconn)
    rconn.execute("UPDATE relay.deliveries SET status = 'failed' WHERE outbox_id = 1")
    rconn.execute("UPDATE relay.outbox SET status = 'failed' WHERE id = 1")
    rconn.execute(  # another relay is sending the update
        "UPDATE relay.deliveries SET leased_by = 'elsewhere',"
        " leased_until = now() + interval '1 minute' WHERE outbox_id = 2"
    )
    rconn.execute("UPDATE relay.outbox SET status = 'pending' WHERE status = 'failed'")
    fan_out(rconn)
    assert first_delivery(rconn) == (
        "failed",
        "not sent again: change 2 of this row was being sent to the webhook; retry it once that "
        "is done",
    )
    rconn.execute("UPDATE relay.deliveries SET leased_until = NULL WHERE outbox_id = 2")
    rconn.execute("UPDATE relay.outbox SET status = 'pending' WHERE status = 'failed'")
    fan_out(rconn)
    assert first_delivery(rconn) == ("pending", None), "once it is not in flight, it goes first"


def test_a_change_that_fails_beside_a_later_change_of_its_row_delivered_is_superseded(
    rconn: Conn,
) -> None:
    """One batch carried row 1's insert, out of attempts (failed unsent), and its update
    (delivered): both outcomes are written by one statement, and the insert is superseded."""
    setup(rconn, "http://127.0.0.1:9/hook")
    rconn.execute("INSERT INTO items VALUES (1, 0)")
    rconn.execute("UPDATE items SET v = 1 WHERE id = 1")
    fan_out(rconn)
    rconn.execute("UPDATE relay.deliveries SET leased_by = 'r1', leased_until = now() + '1 min'")
    hook = one_row(rconn.execute("SELECT id FROM relay.webhooks"))[0]
    gone = Outcome.not_sent("out of attempts", permanent=True)
    ok = Outcome(ok=True, status=200, duration=0.01)
    results = [Result(1, hook, 2, "failed", 0.0, gone), Result(2, hook, 1, "delivered", 0.0, ok)]
    written = one_row(rconn.execute(query("record_outcomes"), parameters(results, "r1")))[0]
    assert written == 2
    rconn.execute(query("finish_changes"), {"ids": [1, 2]})
    assert statuses(rconn) == ["failed", "delivered"]
    rconn.execute("UPDATE relay.outbox SET status = 'pending' WHERE status = 'failed'")
    fan_out(rconn)
    assert first_delivery(rconn) == (
        "failed",
        "superseded: change 2 of this row was delivered after it",
    )


REPLAY_BEFORE_0025 = "512bf44"
"""A release whose `relay replay` knew nothing of superseded changes (schema version 21)."""


def test_a_superseded_change_an_older_relay_replay_makes_pending_is_not_sent(
    rconn: Conn, relay_dsn: str, tmp_path: Path
) -> None:
    """Row 1's insert failed and its update was delivered; then `relay replay --status failed`
    of a release before 0025 (run from a host not yet upgraded), which knows nothing of
    superseded changes, makes the insert pending again. The relay does not send the older
    image last (before, it did, unmarked): the delivery fails again, saying which change
    superseded it. The same holds for any other path that does not judge it (SQL by hand)."""
    older = unpack(REPLAY_BEFORE_0025, tmp_path)

    async def scenario() -> Receiver:
        async with story(rconn, relay_dsn) as r:
            done = await asyncio.to_thread(
                command, older, "replay", "--webhook", "hook", "--since", "1h",
                "--status", "failed", dsn=relay_dsn,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert "replaying 1 change" in done.stdout
            await until(lambda: first_delivery(rconn)[0] != "pending")
        return r

    r = asyncio.run(scenario())
    assert r.told() == [(1, 1)], "the receiver still holds row 1's latest image"
    assert first_delivery(rconn) == (
        "failed",
        "superseded: change 2 of this row was delivered after it",
    )
