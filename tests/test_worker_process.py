"""relay run as a process: crashes, cut connections, signals, bad settings."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter

import psycopg
from aiohttp import web
from receivers import receiver
from test_worker import FAST, outbox_statuses, running, setup, sql, until


async def start_relay(dsn: str, log: int | None = None, **env: str) -> asyncio.subprocess.Process:
    """``relay run`` as a child process; its log goes to ``log`` (a file), else to a pipe."""
    environment = {
        **os.environ,
        "RELAY_DSN": dsn,
        "RELAY_POLL_INTERVAL": "0.2",
        "RELAY_LEASE_SECONDS": "2",
        "RELAY_RETRY_BASE_SECONDS": "0.05",
        **env,
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "run",
        env=environment,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


def relay_connections(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'relay run %'"
        ).fetchone()[0]


def test_kill_9_mid_flow_loses_nothing(rconn, relay_dsn, tmp_path):
    log = os.open(tmp_path / "relay.log", os.O_WRONLY | os.O_CREAT)

    async def slowish(request: web.Request) -> web.Response:
        await asyncio.sleep(0.01)
        return web.Response()

    async def scenario():
        async with receiver(slowish) as r:
            setup(rconn, r.url)
            await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 400) g")
            first = await start_relay(relay_dsn, log)
            await until(lambda: len(r.requests) >= 60, timeout=30)
            first.kill()  # SIGKILL: no chance to release anything
            await first.wait()
            at_kill = len(r.requests)
            second = await start_relay(relay_dsn, log)
            await until(lambda: set(outbox_statuses(rconn)) == {"delivered"}, timeout=60)
            second.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(second.wait(), 20)
            return r, at_kill, code

    r, at_kill, code = asyncio.run(scenario())
    assert code == 0
    counts = Counter(req.headers["X-Relay-Delivery"] for req in r.requests)
    assert len(counts) == 400  # every change arrived
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates <= FAST.webhook_concurrency  # at most what was in flight at the kill
    assert at_kill < 400


def test_cut_connections_are_reestablished(rconn, relay_dsn):
    async def scenario():
        async with receiver() as r:
            setup(rconn, r.url)
            async with running(relay_dsn):
                await sql(relay_dsn, "INSERT INTO items VALUES (1, 0)")
                await until(lambda: len(r.requests) == 1)
                await sql(
                    relay_dsn,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name LIKE 'relay run %'",
                )
                await sql(relay_dsn, "INSERT INTO items VALUES (2, 0)")
                took = await until(lambda: len(r.requests) == 2, timeout=15)
                await until(lambda: outbox_statuses(rconn) == ["delivered", "delivered"])
            return took

    assert asyncio.run(scenario()) < 10


def test_sigterm_exits_zero_and_a_bad_setting_exits_two(relay_dsn, tmp_path):
    log = os.open(tmp_path / "relay.log", os.O_WRONLY | os.O_CREAT)

    async def scenario():
        bad = await start_relay(relay_dsn, RELAY_BATCH_SIZE="0")
        _, bad_err = await asyncio.wait_for(bad.communicate(), 30)
        good = await start_relay(relay_dsn, log)
        await until(lambda: relay_connections(relay_dsn) == 5, timeout=30)
        good.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(good.wait(), 20)
        return bad.returncode, bad_err.decode(), code

    bad_code, bad_err, code = asyncio.run(scenario())
    assert bad_code == 2
    assert bad_err.strip().startswith("error: RELAY_BATCH_SIZE:")
    assert len(bad_err.strip().splitlines()) == 1
    assert code == 0


def test_leases_are_released_on_shutdown(rconn, relay_dsn):
    async def stuck(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response()

    async def scenario():
        async with receiver(stuck) as r:
            setup(rconn, r.url, timeout_seconds=60)
            async with running(relay_dsn):
                await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 5) g")
                await until(lambda: len(r.requests) == 5)
        with psycopg.connect(relay_dsn) as conn:
            return conn.execute(
                "SELECT count(*) FILTER (WHERE leased_by IS NOT NULL),"
                " count(*) FILTER (WHERE status = 'pending')"
                " FROM relay.deliveries"
            ).fetchone()

    assert asyncio.run(scenario()) == (0, 5)  # unfinished, and free for any relay at once
