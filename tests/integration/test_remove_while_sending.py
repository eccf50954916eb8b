"""Removing a webhook or a rule beside a running relay (relay webhook remove, relay rule
remove, the console's remove): a webhook's deliveries go with it, mid-request, and a rule may go
while the relay matches changes against it; the relay drops what it would have written of them
and goes on serving the other webhooks, with no error to read."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from relay.db import Conn
from support.cli import relay
from support.receivers import receiver
from support.worker import FAST, running, setup, sql, until


@pytest.mark.parametrize("batch_size", [1, 5])
def test_a_webhook_removed_mid_request_leaves_the_relay_serving_the_others(
    rconn: Conn, relay_dsn: str, batch_size: int
) -> None:
    async def scenario() -> None:
        release = asyncio.Event()
        entered = asyncio.Event()

        async def held(request: web.Request) -> web.StreamResponse:
            entered.set()
            await release.wait()
            return web.Response(text="ok")

        async with receiver(held) as slow, receiver() as fast:
            setup(
                rconn, slow.url, "slow", batch_size=batch_size, batch_wait_ms=0, timeout_seconds=60
            )
            setup(rconn, fast.url, "fast")
            rconn.execute("INSERT INTO items VALUES (1, 1)")
            # The request is held while two commands start (seconds on a loaded machine): its
            # lease must outlast them, or the relay gives up on it first.
            async with running(relay_dsn, FAST.model_copy(update={"lease_seconds": 150})):
                await asyncio.wait_for(entered.wait(), 10)
                for kind in ("rule", "webhook"):
                    done = relay(kind, "remove", "slow", dsn=relay_dsn)
                    assert done.returncode == 0, done
                release.set()
                await until(lambda: len(fast.requests) == 1)
                rconn.execute("INSERT INTO items VALUES (2, 2)")
                await until(lambda: len(fast.requests) == 2)
                await until(
                    lambda: (
                        rconn.execute(
                            "SELECT count(*) FROM relay.outbox WHERE status = 'delivered'"
                        ).fetchone()
                        == (2,)
                    )
                )

    with capture_logs() as logs:
        asyncio.run(scenario())
    troubles = [line for line in logs if line["log_level"] in ("warning", "error", "critical")]
    assert troubles == [], repr(troubles[:1])
    assert rconn.execute("SELECT count(*) FROM relay.deliveries").fetchone() == (2,)


SLOW_KEY = (
    "{% for i in range(990) %}{% for j in range(1000) %}{% endfor %}{% endfor %}{{ data.id }}"
)
"""An ordering key that takes a while to render: the relay matches changes against it with
its fan-out transaction open."""


def test_a_rule_removed_while_its_changes_are_matched_makes_no_delivery_nor_error(
    rconn: Conn, relay_dsn: str
) -> None:
    """The relay loaded the rule, then it was removed while the relay matched changes against
    it: the changes go to the other rules' webhooks, none to the removed rule's, and the relay
    neither logs an error nor starts its session again."""

    def matching() -> bool:
        found = rconn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE 'relay%%' AND now() - xact_start > interval '0.5 s'"
        ).fetchone()
        return found is not None and found[0] > 0

    async def scenario() -> None:
        async with receiver() as slow, receiver() as fast:
            setup(rconn, slow.url, "slow", ordering="key", ordering_key=SLOW_KEY)
            setup(rconn, fast.url, "fast")
            async with running(relay_dsn):
                rconn.execute("INSERT INTO items SELECT i, i FROM generate_series(1, 50) i")
                await until(matching, timeout=30)
                await sql(relay_dsn, "DELETE FROM relay.event_rules WHERE name = 'slow'")
                await until(lambda: len(fast.requests) == 50, timeout=30)
        assert slow.requests == []

    with capture_logs() as logs:
        asyncio.run(scenario())
    troubles = [line for line in logs if line["log_level"] in ("warning", "error", "critical")]
    assert troubles == [], repr(troubles[:1])
    assert rconn.execute(
        "SELECT count(*) FROM relay.deliveries d JOIN relay.webhooks w ON w.id = d.webhook_id "
        "WHERE w.name = 'slow'"
    ).fetchone() == (0,)
