"""`relay run` as systemd runs it: notify protocol, watchdog, metrics, health, JSON logs."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from relay.db import Conn
from relay.service import systemd
from support.receivers import free_port, receiver
from support.worker import outbox_statuses, setup, sql, until


def test_run_under_systemd_reports_ready_feeds_the_watchdog_and_serves_metrics(
    rconn: Conn, relay_dsn: str, tmp_path: Path
) -> None:
    notify_path = str(tmp_path / "notify")
    port = free_port()
    messages: list[str] = []

    async def collect(sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            messages.append((await loop.sock_recv(sock, 4096)).decode())

    async def get(path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}{path}") as response,
        ):
            return response.status, await response.text()

    async def scenario() -> tuple[
        int | None, tuple[int, str], tuple[int, str], tuple[int, str], str, list[str]
    ]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(notify_path)
            sock.setblocking(False)
            collector = asyncio.create_task(collect(sock))
            async with receiver() as r:
                setup(
                    rconn,
                    r.url,
                    secret="hook-secret-789",
                    additional_headers="Authorization: Bearer token-abc-123",
                )
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "relay",
                    "run",
                    env={
                        **os.environ,
                        "RELAY_DSN": relay_dsn,
                        "RELAY_METRICS_ADDRESS": f"127.0.0.1:{port}",
                        "RELAY_POLL_INTERVAL": "0.2",
                        "NOTIFY_SOCKET": notify_path,
                        "WATCHDOG_USEC": "400000",
                    },
                    stderr=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.DEVNULL,
                )
                await until(lambda: any("READY=1" in m for m in messages), timeout=30)
                ready = await get("/readyz")
                health = await get("/healthz")
                await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 3) g")
                await until(lambda: outbox_statuses(rconn) == ["delivered"] * 3)
                await asyncio.sleep(0.5)  # a few more watchdog pings
                page = await get("/metrics")
                process.send_signal(signal.SIGTERM)
                _, log = await process.communicate()
            collector.cancel()
        signatures = [req.headers["X-Hook-Signature"] for req in r.requests]
        return process.returncode, ready, health, page, log.decode(), signatures

    code, ready, health, (status, metrics), log, signatures = asyncio.run(scenario())
    assert code == 0
    assert ready == (200, "ready\n") and health == (200, "ok\n")
    assert messages[-1] == "STOPPING=1"
    assert sum(m == "WATCHDOG=1" for m in messages) >= 2
    assert status == 200
    assert 'relay_deliveries_total{outcome="delivered",webhook="hook"} 3.0' in metrics
    assert 'relay_changes_total{result="matched"} 3.0' in metrics
    assert 'relay_delivery_lag_seconds_count{webhook="hook"} 3.0' in metrics
    assert 'relay_attempt_duration_seconds_count{webhook="hook"} 3.0' in metrics
    assert "relay_backlog_changes" in metrics and "relay_oldest_pending_seconds" in metrics

    events = [json.loads(line) for line in log.splitlines()]
    deliveries = [e for e in events if e["event"] == "delivery"]
    assert len(deliveries) == 3
    for event in deliveries:
        assert event["webhook"] == "hook" and event["outcome"] == "delivered"
        assert event["status_code"] == 200 and event["attempt"] == 1
        assert {"outbox_id", "duration_ms", "timestamp", "level"} <= event.keys()
    assert "hook-secret-789" not in log and "token-abc-123" not in log
    assert len(signatures) == 3 and not any(sig in log for sig in signatures)


def test_watchdog_pings_at_its_interval_while_readiness_is_checked_often(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before READY=1 the relay looks at its readiness five times a second, but pings the
    watchdog only at half of WatchdogSec, as after it."""
    notify_path = str(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", notify_path)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # WatchdogSec=1: a ping every 0.5 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    received: list[tuple[float, str]] = []
    became_ready: list[float] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()

        def ready() -> bool:
            if loop.time() - start < 0.75:
                return False
            if not became_ready:
                became_ready.append(loop.time() - start)
            return True

        async def collect(sock: socket.socket) -> None:
            while True:
                message = (await loop.sock_recv(sock, 4096)).decode()
                received.append((loop.time() - start, message))

        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(notify_path)
            sock.setblocking(False)
            collector = asyncio.create_task(collect(sock))
            stop = asyncio.Event()
            loop.call_later(1.35, stop.set)
            await systemd.supervise(ready, stop)
            await asyncio.sleep(0.1)
            collector.cancel()

    asyncio.run(scenario())
    pings = [at for at, message in received if message == "WATCHDOG=1"]
    ready_at = [at for at, message in received if message.startswith("READY=1")]
    assert len(pings) == 3  # at 0, 0.5 and 1 s: not every 0.2 s while not ready
    assert all(0.45 < later - earlier < 0.55 for earlier, later in itertools.pairwise(pings))
    assert len(ready_at) == 1 and ready_at[0] - became_ready[0] < 0.05
    assert ready_at[0] < 0.75 + systemd.READINESS_CHECK_SECONDS + 0.05
    assert received[-1][1] == "STOPPING=1"


def test_a_relay_waiting_for_a_database_that_is_down_stops_at_once_on_sigterm() -> None:
    """systemd's stop (and its start timeout) sends SIGTERM to a relay that may never have
    connected: it must exit 0 at once, not after its wait for the rules (TimeoutStopSec=30
    would kill it and mark the unit failed)."""

    async def scenario() -> tuple[int | None, float, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay",
            "run",
            env={**os.environ, "RELAY_DSN": f"postgresql://relay@127.0.0.1:{free_port()}/app"},
            stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
        )
        await asyncio.sleep(2)
        process.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        sent = loop.time()
        _, log = await asyncio.wait_for(process.communicate(), 20)
        return process.returncode, loop.time() - sent, log.decode()

    code, took, log = asyncio.run(scenario())
    assert code == 0 and took < 2, (took, log)


OTHER_OUTPUT = """
import asyncio, gc, logging, threading, warnings
from relay.service import logs

logs.configure(fmt="json")
warnings.warn("a warning, shown once")
logging.getLogger("psycopg").warning("error ignored terminating %s: %s", "<pipeline>", "lost")
thread = threading.Thread(target=lambda: 1 / 0, name="resolver")
thread.start()
thread.join()


class Finalised:
    def __del__(self) -> None:
        raise RuntimeError("raised in __del__")


Finalised()
gc.collect()


async def main() -> None:
    async def boom() -> None:
        raise ValueError("never retrieved")

    task = asyncio.get_running_loop().create_task(boom())
    await asyncio.sleep(0.05)
    del task
    gc.collect()


asyncio.run(main())
"""


def test_whatever_else_a_relay_process_prints_is_a_json_line_in_json_mode() -> None:
    """Python's own output (a warning, a standard library logger, an exception ending a thread,
    one raised in __del__, a task's exception nobody retrieved) came out as plain text, several
    lines each, in the middle of the JSON log."""
    done = subprocess.run(
        [sys.executable, "-c", OTHER_OUTPUT], capture_output=True, text=True, check=False
    )
    lines = done.stderr.splitlines()
    events = [json.loads(line) for line in lines]  # a line that is not JSON fails here
    said = " | ".join(f"{e['level']} {e['event']} {e.get('exception', '')}" for e in events)
    for expected in [
        "warning",
        "UserWarning: a warning, shown once",
        "error ignored terminating <pipeline>: lost",
        "exception in thread resolver",
        "ZeroDivisionError",
        "RuntimeError: raised in __del__",
        "Task exception was never retrieved",
        "ValueError: never retrieved",
    ]:
        assert expected in said, (expected, said)
    assert len(events) == 5, said
