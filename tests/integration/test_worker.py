"""relay run, end to end: real PostgreSQL, real receivers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import MutableMapping
from typing import Any

import psycopg
from aiohttp import web
from structlog.testing import capture_logs

from relay.db import Conn
from relay.delivery.fanout import FanOut
from relay.delivery.holding import Holding
from relay.delivery.metrics import Metrics
from relay.rules.watch import RuleWatcher
from relay.settings import Settings
from relay.store import AsyncStore
from support.db import one_row
from support.receivers import Receiver, raw_receiver, receiver
from support.worker import FAST, outbox_statuses, running, setup, sql, until


def bodies(r: Receiver) -> list[dict[str, Any]]:
    return [json.loads(req.body) for req in r.requests]


def test_changes_arrive_signed_and_in_order(rconn: Conn, relay_dsn: str) -> None:
    async def scenario() -> Receiver:
        async with receiver() as r:
            setup(rconn, r.url)
            async with running(relay_dsn):
                await sql(
                    relay_dsn,
                    "INSERT INTO items VALUES (1, 0), (2, 0)",
                    "UPDATE items SET v = 1 WHERE id = 1",
                    "UPDATE items SET v = 2 WHERE id = 1",
                    "DELETE FROM items WHERE id = 2",
                )
                await until(lambda: len(r.requests) == 5)
                await until(lambda: outbox_statuses(rconn) == ["delivered"] * 5)
            return r

    r = asyncio.run(scenario())
    for req in r.requests:
        expected = hmac.new(b"s3cr3t", req.body, hashlib.sha512).hexdigest()
        assert req.headers["X-Hook-Signature"] == expected
    row1 = [(b["event"], b["data"]["v"]) for b in bodies(r) if b["pk"] == {"id": 1}]
    assert row1 == [("created", 0), ("updated", 1), ("updated", 2)]
    assert [b["event"] for b in bodies(r) if b["pk"] == {"id": 2}] == ["created", "deleted"]
    assert one_row(rconn.execute("SELECT count(*) FROM relay.attempts"))[0] == 5


def test_failures_are_retried_with_the_same_delivery_id(rconn: Conn, relay_dsn: str) -> None:
    calls = {"n": 0}

    async def flaky(request: web.Request) -> web.Response:
        calls["n"] += 1
        return web.Response(status=500 if calls["n"] <= 2 else 200)

    async def scenario() -> Receiver:
        async with receiver(flaky) as r:
            setup(rconn, r.url)
            async with running(relay_dsn):
                await sql(relay_dsn, "INSERT INTO items VALUES (1, 0)")
                await until(lambda: outbox_statuses(rconn) == ["delivered"])
            return r

    r = asyncio.run(scenario())
    assert len(r.requests) == 3
    assert len({req.headers["X-Relay-Delivery"] for req in r.requests}) == 1
    attempts = rconn.execute(
        "SELECT attempt, status_code, error FROM relay.attempts ORDER BY id"
    ).fetchall()
    assert attempts == [
        (1, 500, "HTTP 500 Internal Server Error"),
        (2, 500, "HTTP 500 Internal Server Error"),
        (3, 200, None),
    ]


def test_the_log_tells_a_retry_from_the_final_failure(rconn: Conn, relay_dsn: str) -> None:
    async def refusing(request: web.Request) -> web.Response:
        return web.Response(status=503)

    async def scenario() -> list[MutableMapping[str, Any]]:
        async with receiver(refusing) as r:
            setup(rconn, r.url)
            with capture_logs() as events:
                async with running(relay_dsn, FAST.model_copy(update={"max_attempts": 3})):
                    await sql(relay_dsn, "INSERT INTO items VALUES (1, 0)")
                    await until(lambda: outbox_statuses(rconn) == ["failed"])
            return [e for e in events if e["event"] == "delivery"]

    said = [(e["attempt"], e["outcome"], "next_attempt_in_s" in e) for e in asyncio.run(scenario())]
    assert said == [(1, "retrying", True), (2, "retrying", True), (3, "failed", False)]


def test_a_webhooks_own_retry_policy_overrides_the_relays(rconn: Conn, relay_dsn: str) -> None:
    """Two webhooks, one refusing receiver: "own" gives up after its 2 attempts, two seconds
    apart; "usual" keeps the relay's 4 attempts and delays of a fraction of a second."""

    async def refusing(request: web.Request) -> web.Response:
        return web.Response(status=503)

    async def scenario() -> list[MutableMapping[str, Any]]:
        async with receiver(refusing) as r:
            setup(rconn, r.url, "usual")
            setup(rconn, r.url, "own", max_attempts=2, retry_base_seconds=2, retry_max_seconds=3)
            with capture_logs() as events:
                async with running(relay_dsn, FAST.model_copy(update={"max_attempts": 4})):
                    await sql(relay_dsn, "INSERT INTO items VALUES (1, 0)")
                    await until(lambda: deliveries() == [("failed",), ("failed",)])
            return [e for e in events if e["event"] == "delivery"]

    def deliveries() -> list[tuple[str]]:
        return rconn.execute("SELECT status::text FROM relay.deliveries").fetchall()

    events = asyncio.run(scenario())
    tries = rconn.execute(
        "SELECT w.name, count(*), max(a.attempted_at) - min(a.attempted_at)"
        " FROM relay.attempts a JOIN relay.webhooks w ON w.id = a.webhook_id GROUP BY w.name"
    ).fetchall()
    counts = {name: count for name, count, _ in tries}
    assert counts == {"own": 2, "usual": 4}
    gap = {name: span.total_seconds() for name, _, span in tries}
    assert gap["own"] >= 1.6  # 2 s, less 20% of jitter
    assert gap["usual"] < 1.5  # 0.05 s, 0.2 s, then the relay's cap of 0.5 s, +-20%
    own = [(e["attempt"], e["outcome"]) for e in events if e["webhook"] == "own"]
    assert own == [(1, "retrying"), (2, "failed")]
    retry = next(e for e in events if e["webhook"] == "own" and e["outcome"] == "retrying")
    assert 1.6 <= retry["next_attempt_in_s"] <= 2.4


def test_what_the_receiver_answered_decides_the_delivery(rconn: Conn, relay_dsn: str) -> None:
    """A 503 whose Retry-After is no number ("²") is retried like any 503 (it failed for good,
    "could not be made", though the receiver had it); a 200 whose gzip body is broken is
    delivered (it was "failed: 400", and nobody sent a 400)."""
    busy = (
        "HTTP/1.1 503 Busy\r\nRetry-After: \u00b2\r\nContent-Length: 0\r\n\r\n".encode(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    )
    gzip = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 10\r\n\r\nnot gzip!!"

    async def scenario() -> tuple[int, int]:
        async with raw_receiver(*busy) as slow, raw_receiver(gzip) as broken:
            setup(rconn, slow.url, "busy")
            setup(rconn, broken.url, "gzip")
            async with running(relay_dsn):
                await sql(relay_dsn, "INSERT INTO items VALUES (1, 0)")
                await until(lambda: outbox_statuses(rconn) == ["delivered"])
            return slow.requests, broken.requests

    assert asyncio.run(scenario()) == (2, 1)
    unreadable = "Can not decode content-encoding: gzip"
    attempts = rconn.execute(
        "SELECT w.name, a.attempt, a.status_code, a.error, a.response_excerpt"
        " FROM relay.attempts a JOIN relay.webhooks w ON w.id = a.webhook_id"
        " ORDER BY w.name, a.attempt"
    ).fetchall()
    assert attempts == [
        ("busy", 1, 503, "HTTP 503 Busy", ""),
        ("busy", 2, 200, None, ""),
        ("gzip", 1, 200, None, f"(relay could not read the body: {unreadable})"),
    ]


def test_a_tables_model_name_reaches_the_body_and_the_conditions(
    rconn: Conn, relay_dsn: str
) -> None:
    """relay.track(..., model => 'dcim.device'): a NetBox receiver sees model "device" and
    object_type "dcim.device", and a rule can match on the model."""

    async def scenario() -> Receiver:
        async with receiver() as r:
            setup(rconn, r.url)
            rconn.execute("SELECT relay.track('items', model => 'dcim.device')")
            rconn.execute("CREATE TABLE sites (id int PRIMARY KEY)")
            rconn.execute("SELECT relay.track('sites', model => 'Site')")
            rconn.execute(
                "UPDATE relay.event_rules SET tables = ARRAY['public.items', 'public.sites'],"
                ' conditions = \'{"attr": "model", "op": "in", "value": ["device", "Site"]}\''
            )
            async with running(relay_dsn):
                await sql(
                    relay_dsn, "INSERT INTO items VALUES (1, 0)", "INSERT INTO sites VALUES (2)"
                )
                await until(lambda: outbox_statuses(rconn) == ["delivered"] * 2)
            return r

    sent = sorted(bodies(asyncio.run(scenario())), key=lambda body: body["id"])
    assert [(b["model"], b["object_type"], b["data"]["id"]) for b in sent] == [
        ("device", "dcim.device", 1),
        ("Site", "public.sites", 2),
    ]


def test_a_model_renamed_while_the_relay_runs_names_the_next_changes(
    rconn: Conn, relay_dsn: str
) -> None:
    """Models are loaded with the rules (0019): relay.track(..., model => ...) on a running
    relay reaches the very next change, as a rule change does; untrack forgets it."""

    async def scenario() -> Receiver:
        async with receiver() as r:
            setup(rconn, r.url)
            rconn.execute("SELECT relay.track('items', model => 'dcim.device')")
            async with running(relay_dsn):
                await sql(relay_dsn, "INSERT INTO items VALUES (1, 0)")
                await until(lambda: outbox_statuses(rconn) == ["delivered"])
                await sql(
                    relay_dsn,
                    "SELECT relay.track('items', model => 'dcim.module')",
                    "INSERT INTO items VALUES (2, 0)",
                )
                await until(lambda: outbox_statuses(rconn) == ["delivered"] * 2)
                await sql(
                    relay_dsn,
                    "SELECT relay.track('items')",  # options replaced: no model
                    "INSERT INTO items VALUES (3, 0)",
                )
                await until(lambda: outbox_statuses(rconn) == ["delivered"] * 3)
            return r

    sent = sorted(bodies(asyncio.run(scenario())), key=lambda body: body["id"])
    assert [(b["data"]["id"], b["model"], b["object_type"]) for b in sent] == [
        (1, "device", "dcim.device"),
        (2, "module", "dcim.module"),
        (3, "items", "public.items"),
    ]


def test_attempts_are_numbered_across_a_requeue(rconn: Conn, relay_dsn: str) -> None:
    async def refusing(request: web.Request) -> web.Response:
        return web.Response(status=503)

    async def scenario() -> None:
        async with receiver(refusing) as r:
            setup(rconn, r.url)
            async with running(relay_dsn, FAST.model_copy(update={"max_attempts": 2})):
                await sql(relay_dsn, "INSERT INTO items VALUES (1, 0)")
                await until(lambda: outbox_statuses(rconn) == ["failed"])
                await sql(relay_dsn, "UPDATE relay.outbox SET status = 'pending'")
                await until(lambda: attempts() == 4)
                await until(lambda: outbox_statuses(rconn) == ["failed"])

    def attempts() -> int:
        count: int = one_row(rconn.execute("SELECT count(*) FROM relay.attempts"))[0]
        return count

    asyncio.run(scenario())
    numbers = rconn.execute("SELECT attempt FROM relay.attempts ORDER BY id").fetchall()
    assert numbers == [(1,), (2,), (3,), (4,)]


def test_a_later_change_waits_while_an_earlier_one_is_retried(rconn: Conn, relay_dsn: str) -> None:
    failures = {"left": 3}

    async def fail_first_change(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        if body["event"] == "created" and failures["left"] > 0:
            failures["left"] -= 1
            return web.Response(status=503)
        return web.Response(status=200)

    async def scenario() -> Receiver:
        async with receiver(fail_first_change) as r:
            setup(rconn, r.url)
            async with running(relay_dsn):
                await sql(
                    relay_dsn,
                    "INSERT INTO items VALUES (1, 0)",
                    *[f"UPDATE items SET v = {i} WHERE id = 1" for i in range(1, 6)],
                )
                await until(lambda: outbox_statuses(rconn) == ["delivered"] * 6)
            return r

    r = asyncio.run(scenario())
    delivered = [b["data"]["v"] for b in bodies(r)][3:]  # after three refused attempts
    assert delivered == [0, 1, 2, 3, 4, 5]


def test_requeue_with_sql_sends_failed_changes_again(rconn: Conn, relay_dsn: str) -> None:
    state = {"status": 410}

    async def gone_then_back(request: web.Request) -> web.Response:
        return web.Response(status=state["status"])

    async def scenario() -> tuple[Receiver, float]:
        async with receiver(gone_then_back) as r:
            setup(rconn, r.url)
            async with running(relay_dsn, Settings(**{**FAST.model_dump(), "poll_interval": 30})):
                await sql(relay_dsn, "INSERT INTO items VALUES (1, 0)")
                await until(lambda: outbox_statuses(rconn) == ["failed"])
                state["status"] = 200
                await sql(
                    relay_dsn, "UPDATE relay.outbox SET status = 'pending' WHERE status = 'failed'"
                )
                took = await until(lambda: outbox_statuses(rconn) == ["delivered"], timeout=2)
            return r, took

    r, took = asyncio.run(scenario())
    assert len(r.requests) == 2 and took < 2  # the NOTIFY woke it, not the 30 s poll
    error = one_row(rconn.execute("SELECT error FROM relay.attempts ORDER BY id LIMIT 1"))[0]
    assert error == "HTTP 410 Gone"


def test_a_broken_template_fails_that_delivery_and_others_flow(rconn: Conn, relay_dsn: str) -> None:
    async def scenario() -> Receiver:
        async with receiver() as r:
            setup(rconn, r.url, "good")
            setup(rconn, r.url, "broken", body_template="{{ data.v ")
            async with running(relay_dsn):
                await sql(relay_dsn, "INSERT INTO items VALUES (1, 0), (2, 0)")
                await until(lambda: outbox_statuses(rconn) == ["failed", "failed"])
            return r

    r = asyncio.run(scenario())
    assert len(r.requests) == 2  # both changes reached the good webhook
    rows = rconn.execute(
        "SELECT w.name, d.status::text, d.last_error FROM relay.deliveries d"
        " JOIN relay.webhooks w ON w.id = d.webhook_id ORDER BY w.name, d.outbox_id"
    ).fetchall()
    assert [(n, s) for n, s, _ in rows] == [("broken", "failed")] * 2 + [("good", "delivered")] * 2
    assert rows[0][2].startswith("body_template: line 1:")


def test_two_relays_deliver_each_change_once(rconn: Conn, relay_dsn: str) -> None:
    async def scenario() -> Receiver:
        async with receiver() as r:
            setup(rconn, r.url)
            async with running(relay_dsn, relay_id="one"), running(relay_dsn, relay_id="two"):
                await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 300) g")
                await until(lambda: len(r.requests) >= 300)
                await until(lambda: set(outbox_statuses(rconn)) == {"delivered"})
            return r

    r = asyncio.run(scenario())
    ids = [req.headers["X-Relay-Delivery"] for req in r.requests]
    assert len(ids) == 300 and len(set(ids)) == 300
    holders = {row[0] for row in rconn.execute("SELECT DISTINCT leased_by FROM relay.deliveries")}
    assert holders == {None}


def test_a_slow_endpoint_does_not_slow_another(rconn: Conn, relay_dsn: str) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.Response()

    async def scenario() -> float:
        async with receiver(slow) as slow_r, receiver() as fast_r:
            setup(rconn, slow_r.url, "slow")
            setup(rconn, fast_r.url, "fast")
            async with running(
                relay_dsn, Settings(**{**FAST.model_dump(), "webhook_concurrency": 2})
            ):
                await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 50) g")
                return await until(lambda: len(fast_r.requests) == 50, timeout=10)

    assert asyncio.run(scenario()) < 2.5


def test_a_dead_endpoint_is_paused_instead_of_hammered(rconn: Conn, relay_dsn: str) -> None:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    sock.close()  # nobody listens there

    async def scenario() -> tuple[int, int, tuple[Any, ...]]:
        async with receiver() as healthy:
            setup(rconn, dead_url, "dead")
            setup(rconn, healthy.url, "healthy")
            settings = Settings(
                **{
                    **FAST.model_dump(),
                    "breaker_failures": 3,
                    "breaker_cooldown_seconds": 30,
                    "webhook_concurrency": 4,
                }
            )
            async with running(relay_dsn, settings):
                await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 100) g")
                await until(lambda: len(healthy.requests) == 100)
                await asyncio.sleep(1)
            attempts = one_row(
                rconn.execute(
                    "SELECT count(*) FROM relay.attempts a"
                    " JOIN relay.webhooks w ON w.id = a.webhook_id WHERE w.name = 'dead'"
                )
            )[0]
            counted = one_row(
                rconn.execute(
                    "SELECT sum(d.attempts), count(*) FILTER (WHERE d.status = 'pending')"
                    " FROM relay.deliveries d JOIN relay.webhooks w ON w.id = d.webhook_id"
                    " WHERE w.name = 'dead'"
                )
            )
            return attempts, len(healthy.requests), counted

    dead_attempts, healthy_requests, (counted, waiting) = asyncio.run(scenario())
    assert healthy_requests == 100
    # Paused after 3 failures; at most the 4 already in flight followed. Unpaused, 100 changes
    # retried every 0.05-0.5 s would have made hundreds of attempts in that time.
    assert dead_attempts <= 3 + 4
    # Deliveries claimed before the pause and given back unsent count no attempt; all wait.
    assert counted == dead_attempts
    assert waiting == 100


def test_attempts_older_than_the_retention_are_deleted(rconn: Conn, relay_dsn: str) -> None:
    async def scenario() -> None:
        async with receiver() as r:
            setup(rconn, r.url)
            async with running(relay_dsn):
                await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 3) g")
                await until(lambda: outbox_statuses(rconn) == ["delivered"] * 3)
            rconn.execute(
                "UPDATE relay.attempts SET attempted_at = now() - interval '2 days'"
                " WHERE outbox_id <> (SELECT max(id) FROM relay.outbox)"
            )
            keep_a_day = Settings(**{**FAST.model_dump(), "attempt_retention_days": 1})
            async with running(relay_dsn, keep_a_day):
                await until(
                    lambda: one_row(rconn.execute("SELECT count(*) FROM relay.attempts"))[0] == 1
                )

    asyncio.run(scenario())
    last = one_row(rconn.execute("SELECT max(id) FROM relay.outbox"))[0]
    assert rconn.execute("SELECT outbox_id FROM relay.attempts").fetchall() == [(last,)]
    assert outbox_statuses(rconn) == ["delivered"] * 3  # the changes themselves are kept


def test_a_change_right_after_a_new_rule_is_matched_against_it(rconn: Conn, relay_dsn: str) -> None:
    async def scenario() -> Receiver:
        async with receiver() as r:
            rconn.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
            rconn.execute("SELECT relay.track('items')")
            async with running(relay_dsn) as worker:
                worker.rules._settle = 30.0  # the notification alone would come far too late
                await asyncio.sleep(0.3)  # the relay is up, with no rules
                setup(rconn, r.url)
                rconn.execute("INSERT INTO items VALUES (1, 0)")
                await until(lambda: outbox_statuses(rconn) == ["delivered"])
            return r

    assert len(asyncio.run(scenario()).requests) == 1


def test_deliveries_waiting_for_a_webhook_that_gets_disabled_fail_with_the_reason(
    rconn: Conn, relay_dsn: str
) -> None:
    async def busy(request: web.Request) -> web.Response:
        return web.Response(status=503, headers={"Retry-After": "2"})

    patient = Settings(**{**FAST.model_dump(), "retry_max_seconds": 5})

    async def scenario() -> Receiver:
        async with receiver(busy) as r, receiver() as other:
            setup(rconn, r.url, "busy")
            setup(rconn, other.url, "other")
            async with running(relay_dsn, patient):
                await sql(relay_dsn, "INSERT INTO items VALUES (1, 0), (2, 0)")
                await until(lambda: len(r.requests) == 2 and len(other.requests) == 2)
                await sql(
                    relay_dsn, "UPDATE relay.webhooks SET enabled = false WHERE name = 'busy'"
                )
                await until(lambda: outbox_statuses(rconn) == ["failed", "failed"], timeout=15)
            return r

    r = asyncio.run(scenario())
    assert len(r.requests) == 2  # nothing more was sent once it was disabled
    rows = rconn.execute(
        "SELECT w.name, d.status::text, d.last_error FROM relay.deliveries d"
        " JOIN relay.webhooks w ON w.id = d.webhook_id ORDER BY 1, d.outbox_id"
    ).fetchall()
    assert rows == [
        ("busy", "failed", "webhook 'busy' is disabled"),
        ("busy", "failed", "webhook 'busy' is disabled"),
        ("other", "delivered", None),
        ("other", "delivered", None),
    ]


def test_a_fan_out_stopped_as_a_change_arrives_stops(relay_dsn: str) -> None:
    """A relay stopping (its fan-out cancelled) at the moment a notification wakes the fan-out:
    Python 3.11's asyncio.wait_for then returned as if woken and swallowed the cancellation, so
    the fan-out went on and the relay never stopped (found by
    tests/integration/test_interleavings.py, seed 105)."""
    settings = FAST.model_copy(update={"poll_interval": 30.0})

    async def scenario() -> bool:
        async with await psycopg.AsyncConnection.connect(relay_dsn, autocommit=True) as conn:
            stage = FanOut(
                settings,
                "test",
                RuleWatcher(relay_dsn),
                Holding(settings),
                Metrics(),
                lambda: None,
            )
            task = asyncio.create_task(stage.run(AsyncStore(conn)))
            await asyncio.sleep(0.5)  # idle: waiting for a notification or the poll interval
            stage.new_changes()
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=3)
            if not done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            return bool(done)

    assert asyncio.run(scenario()), "the fan-out went on after it was cancelled"
