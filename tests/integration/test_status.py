"""`relay status`: what an operator sees of a running relay, from the database alone."""

from __future__ import annotations

import asyncio
import json
from subprocess import CompletedProcess

from aiohttp import web

from relay.db import Conn
from relay.settings import Settings
from support.cli import relay
from support.receivers import receiver
from support.worker import FAST, outbox_statuses, running, setup, sql, until


def test_status_shows_backlog_webhooks_errors_and_relays_without_secrets(
    rconn: Conn, relay_dsn: str
) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down for maintenance")

    one_try = Settings(**{**FAST.model_dump(), "max_attempts": 1})

    async def scenario() -> tuple[
        CompletedProcess[str], CompletedProcess[str], CompletedProcess[str]
    ]:
        async with receiver() as good, receiver(refuse) as bad:
            setup(rconn, good.url, "good", secret="good-secret-123")
            setup(rconn, bad.url, "bad", secret="bad-secret-456")
            async with running(relay_dsn, one_try, relay_id="status-test"):
                await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 3) g")
                await until(lambda: outbox_statuses(rconn) == ["failed"] * 3)
                as_json = await asyncio.to_thread(relay, "status", "--json", dsn=relay_dsn)
                as_table = await asyncio.to_thread(relay, "status", dsn=relay_dsn)
            after = await asyncio.to_thread(relay, "status", dsn=relay_dsn)
        return as_json, as_table, after

    as_json, as_table, after = asyncio.run(scenario())
    assert as_json.returncode == 0, as_json.stderr
    status = json.loads(as_json.stdout)
    assert status["backlog"]["pending"] == 0 and status["backlog"]["failed"] == 3
    hooks = {w["name"]: w for w in status["webhooks"]}
    assert (hooks["good"]["delivered"], hooks["good"]["failed"]) == (3, 0)
    assert (hooks["bad"]["delivered"], hooks["bad"]["failed"]) == (0, 3)
    assert len(status["errors"]) == 3
    assert all(e["webhook"] == "bad" and e["status_code"] == 503 for e in status["errors"])
    assert status["relays"] == [
        {
            "relay_id": "status-test",
            "connections": 5,
            "since": status["relays"][0]["since"],
            "leases": 0,
            "leased_until": None,
        }
    ]
    assert as_table.returncode == 0
    assert "3 failed" in as_table.stdout and "HTTP 503" in as_table.stdout
    assert "status-test" in as_table.stdout
    assert "no relay is connected" in after.stdout
    for output in (as_json.stdout, as_table.stdout, after.stdout):
        assert "good-secret-123" not in output and "bad-secret-456" not in output
