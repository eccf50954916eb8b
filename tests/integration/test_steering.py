"""The operator steers delivery (issue 25): pause and resume without loss, disable that asks
first, a dead endpoint paused by relay itself, the per-webhook limits stored and shown, and
what ``relay status`` and the metrics say of each webhook (with relay's processes and a
terminal: tests/system/test_steering_commands.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from structlog.testing import capture_logs

from relay.db import Conn
from relay.delivery import record
from relay.delivery.record import Result
from relay.delivery.send import Outcome
from relay.settings import Settings
from relay.sqlfiles import query
from support.cli import relay
from support.delivery import fan_out
from support.hooks import add_rule, add_webhook
from support.receivers import free_port, receiver
from support.worker import FAST, running, setup, sql, until


def _pending(conn: Conn, webhook: str = "hook") -> int:
    row = conn.execute(
        "SELECT count(*) FROM relay.deliveries d JOIN relay.webhooks w ON w.id = d.webhook_id"
        " WHERE w.name = %s AND d.status = 'pending'",
        (webhook,),
    ).fetchone()
    return int(row[0]) if row else 0


def _attempts(conn: Conn) -> int:
    row = conn.execute(
        "SELECT coalesce(sum(attempts), 0) + (SELECT count(*) FROM relay.attempts)"
        " FROM relay.deliveries"
    ).fetchone()
    return int(row[0]) if row else 0


def _paused(conn: Conn, webhook: str = "hook") -> tuple[bool, str | None]:
    row = conn.execute(
        "SELECT paused_at IS NOT NULL, paused_reason FROM relay.webhooks WHERE name = %s",
        (webhook,),
    ).fetchone()
    assert row is not None
    return bool(row[0]), row[1]


def _told(bodies: list[dict[str, Any]]) -> dict[int, list[int]]:
    """Per row id, the values of v the receiver was told, in the order it was told them."""
    told: dict[int, list[int]] = {}
    for body in bodies:
        row = body["snapshots"]["postchange"]
        told.setdefault(row["id"], []).append(row["v"])
    return told


def test_a_paused_webhook_gets_nothing_and_on_resume_everything_once_in_order(
    rconn: Conn, relay_dsn: str
) -> None:
    async def scenario() -> None:
        async with receiver() as r:
            setup(rconn, r.url)
            async with running(relay_dsn, FAST):
                paused = await asyncio.to_thread(relay, "webhook", "pause", "hook", dsn=relay_dsn)
                assert paused.returncode == 0, paused.stderr
                assert "webhook hook paused" in paused.stdout
                await sql(
                    relay_dsn,
                    "INSERT INTO items SELECT g, 0 FROM generate_series(1, 5) g",
                    "UPDATE items SET v = 1 WHERE id = 1",
                    "UPDATE items SET v = 2 WHERE id = 1",
                    "UPDATE items SET v = 3 WHERE id = 1",
                    "UPDATE items SET v = 1 WHERE id = 2",
                )
                # Fan-out goes on: every change gets its delivery, and it waits.
                await until(lambda: _pending(rconn) == 9)
                await asyncio.sleep(3)
                assert r.requests == []
                assert _attempts(rconn) == 0  # nothing claimed: no attempt spent
                again = await asyncio.to_thread(relay, "webhook", "pause", "hook", dsn=relay_dsn)
                assert "already paused (by the operator since" in again.stdout
                resumed = await asyncio.to_thread(relay, "webhook", "resume", "hook", dsn=relay_dsn)
                assert resumed.returncode == 0, resumed.stderr
                assert "9 pending deliveries go out, in order" in resumed.stdout
                await until(lambda: _pending(rconn) == 0 and len(r.requests) >= 9)
                await asyncio.sleep(0.5)
            bodies = [json.loads(request.body) for request in r.requests]
            ids = [request.headers["X-Relay-Delivery"] for request in r.requests]
            assert len(ids) == len(set(ids)) == 9  # every one once
            told = _told(bodies)
            assert told == {1: [0, 1, 2, 3], 2: [0, 1], 3: [0], 4: [0], 5: [0]}
            assert _paused(rconn) == (False, None)

    asyncio.run(scenario())


def test_what_a_relay_claimed_before_a_pause_goes_back_unsent(rconn: Conn, relay_dsn: str) -> None:
    """A relay holds the next deliveries of a webhook before their turn comes (two per request
    slot). Paused while one request is in flight, the webhook gets that one answered and no
    other: the ones already claimed go back unsent, their attempt uncounted, and go out on
    resume."""
    answer = asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        await answer.wait()
        return web.Response()

    async def scenario() -> None:
        async with receiver(held) as r:
            setup(rconn, r.url)
            settings = FAST.model_copy(update={"webhook_concurrency": 1})
            async with running(relay_dsn, settings):
                await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 4) g")
                await until(lambda: len(r.requests) == 1)
                claimed = rconn.execute(
                    "SELECT count(*) FROM relay.deliveries WHERE leased_until > now()"
                ).fetchone()
                assert claimed is not None and claimed[0] == 2  # one in flight, one waiting
                rconn.execute(
                    "UPDATE relay.webhooks SET paused_at = now(), paused_reason = 'operator'"
                )
                await asyncio.sleep(1)  # the relay hears of it (relay_rules)
                answer.set()
                await asyncio.sleep(2)
                assert len(r.requests) == 1
                assert _pending(rconn) == 3
                attempts = rconn.execute(
                    "SELECT count(*) FROM relay.attempts WHERE status_code IS NOT NULL"
                ).fetchone()
                assert attempts is not None and attempts[0] == 1
                resumed = await asyncio.to_thread(relay, "webhook", "resume", "hook", dsn=relay_dsn)
                assert resumed.returncode == 0, resumed.stderr
                await until(lambda: _pending(rconn) == 0)
            bodies = [json.loads(request.body) for request in r.requests]
            assert sorted(b["snapshots"]["postchange"]["id"] for b in bodies) == [1, 2, 3, 4]

    asyncio.run(scenario())


def test_the_sql_user_pauses_with_an_update_and_a_batched_webhook_waits_too(
    rconn: Conn, relay_dsn: str
) -> None:
    """The documented UPDATE pauses as the command does, and claim_batch honours it."""

    async def scenario() -> None:
        async with receiver() as r:
            setup(rconn, r.url, batch_size=10)
            rconn.execute(
                "UPDATE relay.webhooks SET paused_at = now(), paused_reason = 'operator'"
                " WHERE name = 'hook'"
            )
            async with running(relay_dsn, FAST):
                await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 4) g")
                await until(lambda: _pending(rconn) == 4)
                await asyncio.sleep(2)
                assert r.requests == []
                rconn.execute(
                    "UPDATE relay.webhooks SET paused_at = NULL, paused_reason = NULL"
                    " WHERE name = 'hook'"
                )
                await until(lambda: _pending(rconn) == 0)
            changes = sum(len(json.loads(request.body)) for request in r.requests)
            assert changes == 4

    asyncio.run(scenario())


def test_disable_says_what_it_fails_and_asks_first(rconn: Conn, relay_dsn: str) -> None:
    setup(rconn, "http://127.0.0.1:9/hook")
    rconn.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, 3) g")
    rconn.execute(
        "UPDATE relay.webhooks SET paused_at = now(), paused_reason = 'operator'"
        " WHERE name = 'hook'"
    )

    async def fan_out() -> None:
        async with running(relay_dsn, FAST):
            await until(lambda: _pending(rconn) == 3)

    asyncio.run(fan_out())

    helped = relay("webhook", "disable", "--help")
    assert "FAIL ITS PENDING DELIVERIES" in " ".join(helped.stdout.split())
    # No terminal to ask on, and no --yes: one line, exit 2, nothing changed.
    refused = relay("webhook", "disable", "hook", dsn=relay_dsn)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1
    assert "fails its 3 pending deliveries: give --yes" in refused.stderr
    assert "relay webhook pause hook" in refused.stderr
    row = rconn.execute("SELECT enabled FROM relay.webhooks WHERE name = 'hook'").fetchone()
    assert row == (True,)
    done = relay("webhook", "disable", "hook", "--yes", dsn=relay_dsn)
    assert done.returncode == 0, done.stderr
    row = rconn.execute("SELECT enabled FROM relay.webhooks WHERE name = 'hook'").fetchone()
    assert row == (False,)
    # Nothing pending any more to lose: no question.
    assert relay("webhook", "enable", "hook", dsn=relay_dsn).returncode == 0
    rconn.execute("DELETE FROM relay.deliveries")
    assert relay("webhook", "disable", "hook", dsn=relay_dsn).returncode == 0


def test_the_steering_columns_are_set_shown_and_reset(relay_dsn: str) -> None:
    added = relay(
        "webhook",
        "add",
        "steered",
        "--url",
        "http://127.0.0.1:9/hook",
        "--concurrency",
        "4",
        "--rate-limit",
        "2.5",
        "--dead-after",
        "12h",
        "--ordering-key",
        "{{ data.id // 10 }}",
        dsn=relay_dsn,
    )
    assert added.returncode == 0, added.stderr
    shown = relay(
        "webhook", "show", "steered", dsn=relay_dsn, env={"RELAY_WEBHOOK_CONCURRENCY": "7"}
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "concurrency: 4" in lines and "rate_limit: 2.5/s" in lines
    assert "dead_after: 12h" in lines and "ordering: key" in lines
    assert "ordering_key: {{ data.id // 10 }}" in lines and "paused: no" in lines

    edited = relay(
        "webhook",
        "edit",
        "steered",
        "--concurrency",
        "default",
        "--rate-limit",
        "none",
        "--dead-after",
        "default",
        "--ordering",
        "transaction",
        dsn=relay_dsn,
    )
    assert edited.returncode == 0, edited.stderr
    assert relay("webhook", "pause", "steered", dsn=relay_dsn).returncode == 0
    shown = relay(
        "webhook", "show", "steered", dsn=relay_dsn, env={"RELAY_WEBHOOK_CONCURRENCY": "7"}
    )
    lines = shown.stdout.splitlines()
    assert "concurrency: 7 (setting RELAY_WEBHOOK_CONCURRENCY)" in lines
    assert "rate_limit: none" in lines
    assert "dead_after: 5d (setting RELAY_DEAD_AFTER_SECONDS)" in lines
    assert "ordering: transaction" in lines and "ordering_key: (none)" in lines
    assert any(line.startswith("paused: by the operator since ") for line in lines)
    listed = relay("webhook", "list", dsn=relay_dsn)
    assert listed.returncode == 0, listed.stderr
    assert "by the operator since" in listed.stdout and "transaction" in listed.stdout
    assert "(setting RELAY_WEBHOOK_CONCURRENCY)" in listed.stdout

    for option, value, said in [
        ("--dead-after", "30s", "--dead-after '30s': give a time from 60s to 365d"),
        ("--dead-after", "soon", "--dead-after 'soon': give a time from 60s to 365d"),
        ("--concurrency", "0", "--concurrency '0': give a number from 1 to 10000"),
        ("--rate-limit", "fast", "--rate-limit 'fast': give a number from 0.001 to 100000"),
        ("--ordering", "random", "--ordering 'random': use row, transaction or key"),
        ("--ordering-key", "{{ data.id", "nothing was stored: fix the template"),
    ]:
        refused = relay("webhook", "edit", "steered", option, value, dsn=relay_dsn)
        assert refused.returncode == 2, (option, refused.stdout)
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert said in refused.stderr, refused.stderr
    shown = relay("webhook", "show", "steered", dsn=relay_dsn)
    assert "ordering: transaction" in shown.stdout.splitlines()  # nothing changed


def test_a_dead_endpoint_is_paused_as_dead_and_sends_everything_once_resumed(
    rconn: Conn, relay_dsn: str
) -> None:
    """Nothing listens on the webhook's port: relay pauses it as dead once it has failed for
    dead_after without a success (the setting allows less than the column's minute, for tests),
    its pending deliveries keep their attempts, and once a receiver listens there and the
    operator resumes it, every change arrives."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    settings = Settings(
        **{
            **FAST.model_dump(),
            "dead_after_seconds": 1.5,
            "breaker_cooldown_seconds": 0.3,
            "max_attempts": 1000,
            "metrics_address": "",
        }
    )

    async def scenario() -> tuple[list[dict[str, Any]], str]:
        setup(rconn, url)
        with capture_logs() as logs:
            async with running(relay_dsn, settings) as worker:
                await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 6) g")
                await until(lambda: _paused(rconn) == (True, "dead"), timeout=20)
                await asyncio.sleep(1)
                assert _pending(rconn) == 6  # nothing failed by the pause, nothing sent since
                attempts = _attempts(rconn)
                await asyncio.sleep(1)
                assert _attempts(rconn) == attempts
                metrics = worker.metrics.render().decode()
        health = rconn.execute(
            "SELECT failing_since IS NOT NULL, last_success_at, last_error"
            " FROM relay.webhook_health"
        ).fetchone()
        assert health is not None and health[0] and health[1] is None
        assert f"127.0.0.1:{port}" in health[2]
        status = await asyncio.to_thread(relay, "status", "--json", dsn=relay_dsn)
        hook = json.loads(status.stdout)["webhooks"][0]
        assert hook["state"] == "dead" and hook["pending"] == 6 and hook["failing_since"]
        async with receiver(port=port) as r:
            resumed = await asyncio.to_thread(relay, "webhook", "resume", "hook", dsn=relay_dsn)
            assert resumed.returncode == 0, resumed.stderr
            assert "resumed (as dead since" in resumed.stdout
            row = rconn.execute("SELECT failing_since FROM relay.webhook_health").fetchone()
            assert row == (None,)
            async with running(relay_dsn, settings):
                await until(lambda: _pending(rconn) == 0, timeout=20)
            bodies = [json.loads(request.body) for request in r.requests]
        dead = [e for e in logs if e["event"] == "webhook paused as dead"]
        assert len(dead) == 1, dead
        assert dead[0]["log_level"] == "warning" and dead[0]["webhook"] == "hook"
        assert dead[0]["failing_since"] and "relay webhook resume hook" in dead[0]["resume"]
        failed = [e for e in logs if e["event"] == "delivery" and e["outcome"] == "retrying"]
        assert failed and all(e["log_level"] == "warning" for e in failed)
        assert all(e["webhook"] == "hook" for e in failed)
        breaker = [e for e in logs if e["event"] == "webhook paused"]
        assert breaker and breaker[0]["webhook"] == "hook" and "webhook_id" not in breaker[0]
        return bodies, metrics

    bodies, metrics = asyncio.run(scenario())
    assert sorted(body["snapshots"]["postchange"]["id"] for body in bodies) == [1, 2, 3, 4, 5, 6]
    assert 'relay_webhook_dead_pauses_total{webhook="hook"} 1.0' in metrics
    assert _paused(rconn) == (False, None)


def test_a_change_failing_for_good_logs_an_error(rconn: Conn, relay_dsn: str) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=500)

    settings = Settings(**{**FAST.model_dump(), "max_attempts": 2})

    async def scenario() -> None:
        async with receiver(refuse) as r:
            setup(rconn, r.url)
            async with running(relay_dsn, settings):
                await sql(relay_dsn, "INSERT INTO items VALUES (1, 0)")
                await until(lambda: _pending(rconn) == 0 and len(r.requests) == 2)
                await asyncio.sleep(0.3)

    with capture_logs() as logs:
        asyncio.run(scenario())
    attempts = [e for e in logs if e["event"] == "delivery"]
    assert [(e["outcome"], e["log_level"]) for e in attempts] == [
        ("retrying", "warning"),
        ("failed", "error"),
    ]
    assert all(e["webhook"] == "hook" for e in attempts)


def _health(conn: Conn, webhook_id: int) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT failing_since, last_success_at, last_failure_at, last_error"
        " FROM relay.webhook_health WHERE webhook_id = %s",
        (webhook_id,),
    ).fetchone()
    return tuple(row) if row else ()


def test_health_is_one_row_per_webhook_kept_by_each_round_of_outcomes(rconn: Conn) -> None:
    """record_outcomes keeps relay.webhook_health: failing_since from the first failure after a
    success, kept by later failures, cleared by a success (one in the same round is enough);
    what never left counts for nothing; and it names the webhooks due to be paused as dead,
    which pause_dead then pauses (the webhook's own dead_after first)."""
    hook = add_webhook(rconn, name="w")
    other = add_webhook(rconn, name="v", dead_after_seconds=3 * 86_400)
    rconn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    rconn.execute("SELECT relay.track('orders')")
    add_rule(rconn, hook, name="w")
    add_rule(rconn, other, name="v")
    rconn.execute("INSERT INTO orders SELECT generate_series(1, 20)")
    assert fan_out(rconn) == 20
    changes = iter(range(1, 21))
    failed = Outcome(ok=False, status=500, duration=0.01, error="HTTP 500 Internal Server Error")
    refused = Outcome(ok=False, status=None, duration=0.0, error="cannot connect to h:1")
    ok = Outcome(ok=True, status=200, duration=0.01)

    def round_of(*outcomes: tuple[int, Outcome], dead_after: float = 86_400) -> list[int]:
        results = [
            Result(next(changes), webhook, 1, "delivered" if o.ok else "pending", 1.0, o)
            for webhook, o in outcomes
        ]
        parameters = {**record.parameters(results, "r1"), "dead_after": dead_after}
        row = rconn.execute(query("record_outcomes"), parameters).fetchone()
        assert row is not None
        return list(row[1])

    assert round_of((hook, failed), (hook, failed)) == []
    since, success, failure, error = _health(rconn, hook)
    assert since == failure and success is None and error == "HTTP 500 Internal Server Error"
    assert round_of((hook, refused)) == []
    assert _health(rconn, hook)[0] == since  # kept
    assert _health(rconn, hook)[2] > failure and _health(rconn, hook)[3] == refused.error
    unsent = Outcome.not_sent("body_template: broken", permanent=True)
    before = _health(rconn, hook)
    assert round_of((hook, unsent)) == []
    assert _health(rconn, hook) == before  # a template of ours says nothing of the endpoint
    assert round_of((hook, failed), (hook, ok)) == []
    since, success, _, error = _health(rconn, hook)
    assert since is None and success is not None and error == failed.error  # the last error stays

    # Failing for two days: due as dead with a day's setting, not with the webhook's own 3 days.
    round_of((hook, failed), (other, failed))
    rconn.execute("UPDATE relay.webhook_health SET failing_since = now() - interval '2 days'")
    assert round_of((hook, failed), (other, failed)) == [hook]
    paused = rconn.execute(query("pause_dead"), {"ids": [hook, other], "dead_after": 86_400})
    assert [row[0] for row in paused.fetchall()] == ["w"]
    assert _paused(rconn, "w") == (True, "dead") and _paused(rconn, "v") == (False, None)
    assert round_of((hook, failed)) == []  # paused already: not named again
