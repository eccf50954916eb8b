"""The operator steers delivery with relay's processes (issue 25): what ``relay status`` says
of the slow, the recovered and the dead endpoint while relays run, and ``relay webhook
disable`` asking first on a terminal (the rest of steering, in this process:
tests/integration/test_steering.py)."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from relay.db import Conn
from support.cli import relay
from support.delivery import fan_out
from support.receivers import free_port, receiver
from support.worker import setup, sql


def _metrics(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


def _row(table: str, name: str) -> str:
    """The table line of webhook ``name`` (the table is printed wide enough for one line)."""
    found = [line for line in table.splitlines() if re.match(rf"[│|] {name} +[│|]", line)]
    assert len(found) == 1, table
    return found[0]


@pytest.mark.timing
def test_status_alone_tells_the_slow_the_recovered_and_the_dead_endpoint(
    rconn: Conn, relay_dsn: str, tmp_path: Path
) -> None:
    """Three endpoints behind one `relay run`: one slow (200 ms a request), one that answers
    500 for a while and then recovers, one where nothing listens. `relay status` (and
    /metrics) alone say which is which."""
    first: list[float] = []

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.2)
        return web.Response()

    async def flaky(request: web.Request) -> web.Response:
        first[:] = first or [time.monotonic()]
        if time.monotonic() - first[0] < 1.5:
            return web.Response(status=500, text="not yet")
        return web.Response()

    address = f"127.0.0.1:{free_port()}"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    environment.update(
        RELAY_DSN=relay_dsn,
        RELAY_METRICS_ADDRESS=address,
        RELAY_POLL_INTERVAL="0.2",
        RELAY_RETRY_BASE_SECONDS="0.05",
        RELAY_RETRY_MAX_SECONDS="0.5",
        RELAY_LEASE_SECONDS="5",
        RELAY_SHUTDOWN_GRACE_SECONDS="1",
        RELAY_MAX_ATTEMPTS="1000",
        RELAY_BREAKER_COOLDOWN_SECONDS="0.5",
        RELAY_DEAD_AFTER_SECONDS="5",
        RELAY_WEBHOOK_CONCURRENCY="2",
        RELAY_LOG_FORMAT="json",
    )

    async def scenario() -> tuple[dict[str, Any], str, str, str]:
        async with receiver(slow) as s, receiver(flaky) as f:
            setup(rconn, s.url, "slow")
            setup(rconn, f.url, "flaky")
            setup(rconn, f"http://127.0.0.1:{free_port()}/hook", "dead")
            # Its log goes to a file: a pipe nobody reads until the end would fill, and stop it.
            process = subprocess.Popen(
                [sys.executable, "-m", "relay", "run"],
                env=environment,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
            try:
                await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 300) g")

                # Polled in a thread: the receivers share this event loop.
                deadline = time.monotonic() + 60
                while True:
                    polled = await asyncio.to_thread(relay, "status", "--json", dsn=relay_dsn)
                    assert polled.returncode == 0, polled.stderr
                    now = {w["name"]: w for w in json.loads(polled.stdout)["webhooks"]}
                    if (
                        now["dead"]["state"] == "dead"
                        and now["flaky"]["pending"] == 0
                        and now["flaky"]["last_success_at"] is not None
                    ):
                        break
                    assert time.monotonic() < deadline, json.dumps(now)
                    await asyncio.sleep(0.5)
                await asyncio.sleep(5.5)  # the gauges are refreshed every 5 s
                as_json = await asyncio.to_thread(relay, "status", "--json", dsn=relay_dsn)
                table = await asyncio.to_thread(
                    relay, "status", dsn=relay_dsn, env={"COLUMNS": "500"}
                )
                metrics = await asyncio.to_thread(_metrics, address)
            finally:
                process.send_signal(signal.SIGTERM)
                await asyncio.to_thread(process.wait, timeout=30)
            stderr = log_path.read_text()
            assert process.returncode == 0, stderr
        assert table.returncode == 0, table.stderr
        return json.loads(as_json.stdout), table.stdout, metrics, stderr

    log_path = tmp_path / "relay.log"
    with log_path.open("w") as log_file:
        status, table, metrics, logs = asyncio.run(scenario())
    hooks = {w["name"]: w for w in status["webhooks"]}
    slow_hook, flaky_hook, dead_hook = hooks["slow"], hooks["flaky"], hooks["dead"]

    # The slow one: still working through its backlog, requests in flight, the oldest waiting.
    assert slow_hook["state"] == "active"
    assert slow_hook["pending"] > 100 and slow_hook["in_flight"] >= 1
    assert slow_hook["oldest_pending_seconds"] > 5 and slow_hook["last_error"] is None
    line = _row(table, "slow")
    assert " active " in line
    # The one that failed and recovered: its last error, and a success after it.
    assert flaky_hook["state"] == "active" and flaky_hook["pending"] == 0
    assert "HTTP 500" in flaky_hook["last_error"]
    assert flaky_hook["last_success_at"] > flaky_hook["last_failure_at"]
    assert flaky_hook["failing_since"] is None
    line = _row(table, "flaky")
    assert " active " in line and "HTTP 500" in line
    # The dead one: paused by relay, with since when it has failed; nothing lost.
    assert dead_hook["state"] == "dead" and dead_hook["paused_reason"] == "dead"
    assert dead_hook["pending"] == 300 and dead_hook["failed"] == 0
    assert dead_hook["failing_since"] < dead_hook["paused_at"]
    assert dead_hook["last_success_at"] is None and "127.0.0.1" in dead_hook["last_error"]
    line = _row(table, "dead")
    assert "paused as dead since" in line and "(failing since" in line
    # The top line counts changes done and waiting: all 300 wait for the slow and dead ones.
    backlog = status["backlog"]
    assert (backlog["pending"], backlog["done"]) == (300, 0)
    assert "changes 0 done" in table and "300 waiting" in table

    # The metrics say the same.
    assert 'relay_webhook_state{state="dead",webhook="dead"} 1.0' in metrics
    assert 'relay_webhook_state{state="active",webhook="flaky"} 1.0' in metrics
    assert 'relay_webhook_dead_pauses_total{webhook="dead"} 1.0' in metrics
    assert 'relay_webhook_pending{webhook="dead"} 300.0' in metrics
    assert 'relay_webhook_pending{webhook="flaky"} 0.0' in metrics
    slow_pending = re.search(r'relay_webhook_pending\{webhook="slow"\} (\S+)', metrics)
    assert slow_pending and float(slow_pending[1]) > 0
    age = re.search(r'relay_webhook_oldest_pending_seconds\{webhook="slow"\} (\S+)', metrics)
    assert age and float(age[1]) > 5
    # And the log named the dead webhook once, at warning.
    dead_lines = [json.loads(entry) for entry in logs.splitlines() if "paused as dead" in entry]
    assert [(e["level"], e["webhook"]) for e in dead_lines] == [("warning", "dead")]


def _disable_on_a_terminal(dsn: str, answer: str) -> subprocess.CompletedProcess[str]:
    """``relay webhook disable hook`` with a terminal as its standard input, answering."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    environment["RELAY_DSN"] = dsn
    controller, terminal = pty.openpty()
    try:
        with os.fdopen(controller, "w", closefd=False) as typed:
            typed.write(answer + "\n")
        return subprocess.run(
            [sys.executable, "-m", "relay", "webhook", "disable", "hook"],
            stdin=terminal,
            capture_output=True,
            text=True,
            env=environment,
            timeout=60,
            check=False,
        )
    finally:
        os.close(terminal)
        os.close(controller)


def test_disable_on_a_terminal_asks_how_many_fail_and_does_nothing_unless_told(
    rconn: Conn, relay_dsn: str
) -> None:
    setup(rconn, "http://127.0.0.1:9/hook")
    rconn.execute(
        "UPDATE relay.webhooks SET paused_at = now(), paused_reason = 'operator'"
        " WHERE name = 'hook'"
    )
    rconn.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, 2) g")
    assert fan_out(rconn) == 2

    declined = _disable_on_a_terminal(relay_dsn, "n")
    assert "Disabling webhook hook fails its 2 pending deliveries" in declined.stdout
    assert declined.returncode == 1 and "not disabled: nothing changed" in declined.stderr
    assert rconn.execute("SELECT enabled FROM relay.webhooks").fetchone() == (True,)
    accepted = _disable_on_a_terminal(relay_dsn, "y")
    assert accepted.returncode == 0, accepted.stderr
    assert "webhook hook disabled" in accepted.stdout
    assert rconn.execute("SELECT enabled FROM relay.webhooks").fetchone() == (False,)
