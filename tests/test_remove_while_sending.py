"""Removing a webhook while a running relay is sending to it (relay webhook remove, the
console's remove): its deliveries go with it, mid-request; the relay drops what it would have
written of them and goes on serving the other webhooks, with no error to read."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from relay.db import Conn
from support.cli import relay
from support.receivers import receiver
from support.worker import running, setup, until


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
            setup(rconn, slow.url, "slow", batch_size=batch_size, batch_wait_ms=0)
            setup(rconn, fast.url, "fast")
            rconn.execute("INSERT INTO items VALUES (1, 1)")
            async with running(relay_dsn):
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
    assert troubles == []
    assert rconn.execute("SELECT count(*) FROM relay.deliveries").fetchone() == (2,)
