"""relay run as a process: crashes, cut connections, signals, bad settings."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web
from psycopg.conninfo import make_conninfo

from relay import db, sqlfiles
from relay.db import Conn
from relay.store import Store
from relay.tempcluster import find_server_binaries, start_temp_cluster
from support.cli import relay as relay_cli
from support.db import one_row
from support.hooks import add
from support.receivers import Receiver, receiver
from support.render import STUCK
from support.worker import FAST, outbox_statuses, running, setup, sql, until


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
        stderr=asyncio.subprocess.PIPE if log is None else log,
    )


def relay_connections(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        count: int = one_row(
            conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name LIKE 'relay run %' AND datname = current_database()"
            )
        )[0]
        return count


@pytest.mark.timing  # what is held at the kill grows with the time outcomes take to write
def test_kill_9_mid_flow_loses_nothing(rconn: Conn, relay_dsn: str, tmp_path: Path) -> None:
    log = os.open(tmp_path / "relay.log", os.O_WRONLY | os.O_CREAT)

    async def slowish(request: web.Request) -> web.Response:
        await asyncio.sleep(0.01)
        return web.Response()

    async def scenario() -> tuple[Receiver, int, int, int]:
        async with receiver(slowish) as r:
            setup(rconn, r.url)
            await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 400) g")
            first = await start_relay(relay_dsn, log)
            await until(lambda: len(r.requests) >= 60, timeout=30)
            first.kill()  # SIGKILL: no chance to release anything
            await first.wait()
            at_kill = len(r.requests)
            # What the dead relay held: sent or about to be, or sent with the outcome not yet
            # written. Only these can arrive twice.
            held = one_row(
                rconn.execute(
                    "SELECT count(*) FROM relay.deliveries WHERE leased_by LIKE %s",
                    (f"%:{first.pid}",),
                )
            )[0]
            second = await start_relay(relay_dsn, log)
            await until(lambda: set(outbox_statuses(rconn)) == {"delivered"}, timeout=60)
            second.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(second.wait(), 20)
            return r, at_kill, held, code

    r, at_kill, held, code = asyncio.run(scenario())
    assert code == 0
    counts = Counter(req.headers["X-Relay-Delivery"] for req in r.requests)
    assert len(counts) == 400  # every change arrived
    duplicates = sum(n - 1 for n in counts.values())
    # Claimed for one webhook: twice its concurrency, plus answers whose outcome was being
    # written (measured: 31-36 with a concurrency of 16).
    assert 0 < held <= 3 * FAST.webhook_concurrency
    assert duplicates <= held
    assert at_kill < 400


def test_cut_connections_are_reestablished(rconn: Conn, relay_dsn: str) -> None:
    async def scenario() -> float:
        async with receiver() as r:
            setup(rconn, r.url)
            async with running(relay_dsn):
                await sql(relay_dsn, "INSERT INTO items VALUES (1, 0)")
                await until(lambda: len(r.requests) == 1)
                await sql(
                    relay_dsn,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name LIKE 'relay run %' AND datname = current_database()",
                )
                await sql(relay_dsn, "INSERT INTO items VALUES (2, 0)")
                took = await until(lambda: len(r.requests) == 2, timeout=15)
                await until(lambda: outbox_statuses(rconn) == ["delivered", "delivered"])
            return took

    assert asyncio.run(scenario()) < 10


def test_sigterm_exits_zero_and_a_bad_setting_exits_two(relay_dsn: str, tmp_path: Path) -> None:
    log = os.open(tmp_path / "relay.log", os.O_WRONLY | os.O_CREAT)

    async def scenario() -> tuple[int | None, str, int]:
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


def test_leases_are_released_on_shutdown(rconn: Conn, relay_dsn: str) -> None:
    async def stuck(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response()

    async def scenario() -> tuple[Any, ...] | None:
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


@pytest.mark.timing
def test_a_postgres_restart_mid_flow_loses_nothing() -> None:
    """A private cluster (the shared server cannot be restarted by a test), stopped and started
    while the relay is delivering: it reconnects on its own and every change arrives."""
    if find_server_binaries() is None:
        pytest.skip("no PostgreSQL server binaries to start a private cluster")
    cluster = start_temp_cluster()

    async def slowish(request: web.Request) -> web.Response:
        await asyncio.sleep(0.02)
        return web.Response()

    async def scenario() -> tuple[list[int], float]:
        async with receiver(slowish) as r:
            with psycopg.connect(cluster.dsn, autocommit=True) as conn:
                Store(conn).install()
                setup(conn, r.url)
            async with running(cluster.dsn):
                await sql(
                    cluster.dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 600) g"
                )
                await until(lambda: len(r.requests) >= 100)
                await asyncio.to_thread(cluster.restart, 1.0)
                back = time.monotonic()
                await sql(cluster.dsn, "UPDATE items SET v = 1 WHERE id <= 100")
                await until(lambda: len({req.body for req in r.requests}) >= 700, timeout=60)
                with psycopg.connect(cluster.dsn) as conn:
                    await until(lambda: set(outbox_statuses(conn)) == {"delivered"}, timeout=30)
                resumed = time.monotonic() - back
            ids = [json.loads(req.body)["data"]["id"] for req in r.requests]
            return ids, resumed

    try:
        ids, resumed = asyncio.run(scenario())
    finally:
        cluster.stop()
    counts = Counter(ids)
    assert set(counts) == set(range(1, 601))
    assert all(counts[i] >= 2 for i in range(1, 101))  # the insert and the later update
    assert resumed < 30


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.timing
def test_a_receiver_down_for_a_while_gets_everything_back_without_a_busy_loop(
    rconn: Conn, relay_dsn: str, tmp_path: Path
) -> None:
    log = os.open(tmp_path / "relay.log", os.O_WRONLY | os.O_CREAT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nobody listens there until the receiver comes back
    url = f"http://127.0.0.1:{port}/hook"
    # 6 s keeps CI short; RELAY_TEST_DOWN_SECONDS=30 ./test -k receiver_down runs the 30.
    down_seconds = float(os.environ.get("RELAY_TEST_DOWN_SECONDS", "6"))

    async def scenario() -> tuple[float, int, float, set[Any]]:
        setup(rconn, url)
        relay = await start_relay(
            relay_dsn,
            log,
            RELAY_RETRY_BASE_SECONDS="0.5",
            RELAY_RETRY_MAX_SECONDS="3",
            RELAY_BREAKER_COOLDOWN_SECONDS="2",
        )
        try:
            await until(lambda: relay_connections(relay_dsn) == 5, timeout=30)
            await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 50) g")
            await asyncio.sleep(1.0)  # the first attempts fail and the breaker opens
            cpu_before, attempts_before = cpu_seconds(relay.pid), attempt_count(rconn)
            await asyncio.sleep(down_seconds)
            cpu_down = cpu_seconds(relay.pid) - cpu_before
            attempts_down = attempt_count(rconn) - attempts_before
            async with receiver(port=port) as r:
                back = time.monotonic()
                await until(lambda: set(outbox_statuses(rconn)) == {"delivered"}, timeout=30)
                took = time.monotonic() - back
                received = {json.loads(req.body)["data"]["id"] for req in r.requests}
        finally:
            relay.send_signal(signal.SIGTERM)
            await relay.wait()
        return cpu_down, attempts_down, took, received

    cpu_down, attempts_down, took, received = asyncio.run(scenario())
    print(f"down {down_seconds:g} s: {attempts_down} attempts, {cpu_down:.2f} s CPU;", end=" ")
    print(f"back in {took:.1f} s")
    assert received == set(range(1, 51))
    # While the receiver was down: paused by the breaker, one probe per cool-down (2 s), and
    # next to no CPU (a busy loop would burn the whole 6 s).
    assert attempts_down <= 2 * (down_seconds / 2 + 1)
    assert cpu_down < 0.1 * down_seconds
    assert took < 15  # back within a cool-down plus the longest retry delay, with room


def attempt_count(conn: Conn) -> int:
    count: int = one_row(conn.execute("SELECT count(*) FROM relay.attempts"))[0]
    return count


FULL_DISK = """
CREATE FUNCTION public.full_disk() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'could not extend file "base/1/2": No space left on device'
        USING ERRCODE = 'disk_full';
END $$;
CREATE TRIGGER full_disk BEFORE INSERT ON relay.deliveries
    FOR EACH ROW EXECUTE FUNCTION public.full_disk();
"""


def log_events(path: Path) -> Counter[str]:
    """How often each event is in the JSON lines of a ``relay run`` log."""
    lines = path.read_text().splitlines()
    return Counter(json.loads(line)["event"] for line in lines if line.startswith("{"))


def test_a_fault_right_after_each_connect_is_one_outage_logged_once(
    rconn: Conn, relay_dsn: str, tmp_path: Path
) -> None:
    """With a full tablespace the relay connects, and its first write fails: each reconnect
    reset the backoff to 0.5 s, and 45 "database unavailable" warnings came in 25 s where
    docs/reliability.md promises one per outage. Here every write to relay.deliveries fails as
    on a full disk (SQLSTATE 53100) for 10 s: one warning, sessions further and further apart,
    and the change delivered once the disk has room."""
    path = tmp_path / "relay.log"
    log = os.open(path, os.O_WRONLY | os.O_CREAT)

    async def scenario() -> None:
        async with receiver() as r:
            setup(rconn, r.url)
            rconn.execute(FULL_DISK)
            rconn.execute("INSERT INTO items VALUES (1, 0)")
            relay = await start_relay(relay_dsn, log, RELAY_LOG_FORMAT="json")
            try:
                await asyncio.sleep(10)
                rconn.execute("DROP TRIGGER full_disk ON relay.deliveries")
                await until(lambda: len(r.requests) == 1, timeout=30)
            finally:
                relay.send_signal(signal.SIGTERM)
                await asyncio.wait_for(relay.wait(), 20)

    asyncio.run(scenario())
    events = log_events(path)
    assert events["database unavailable, retrying"] == 1, events
    assert 3 <= events["relay connected"] <= 7, events  # 0.5 s, 1, 2, 4, 8... apart


def test_every_line_relay_run_writes_in_json_mode_is_json(
    rconn: Conn, relay_dsn: str, tmp_path: Path
) -> None:
    """Through faults (a full disk, its connections cut, a receiver failing, a render process
    killed at the deadline), with every Python warning shown: lines of psycopg's own logger
    ("error ignored terminating <psycopg.AsyncPipeline ...>"), asyncio's and the warnings
    module's reached stderr as plain text, breaking a log pipeline that reads JSON."""
    path = tmp_path / "relay.log"
    log = os.open(path, os.O_WRONLY | os.O_CREAT)
    answers = iter([500, 500])

    async def flaky(request: web.Request) -> web.Response:
        return web.Response(status=next(answers, 200))

    async def scenario() -> None:
        async with receiver(flaky) as r:
            setup(rconn, r.url)
            add(rconn, "stuck", payload_url=r.url, body_template=STUCK)
            rconn.execute(FULL_DISK)
            rconn.execute("INSERT INTO items VALUES (1, 0)")
            relay = await start_relay(
                relay_dsn, log, RELAY_LOG_FORMAT="json", PYTHONWARNINGS="always"
            )
            try:
                await asyncio.sleep(3)
                rconn.execute("DROP TRIGGER full_disk ON relay.deliveries")
                await until(lambda: len(r.requests) == 3, timeout=30)
                await sql(
                    relay_dsn,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name LIKE 'relay run %' AND datname = current_database()",
                )
                await sql(relay_dsn, "INSERT INTO items VALUES (2, 0)")
                await until(lambda: len(r.requests) == 4, timeout=30)
            finally:
                relay.send_signal(signal.SIGTERM)
                await asyncio.wait_for(relay.wait(), 20)

    asyncio.run(scenario())
    lines = path.read_text().splitlines()
    not_json = []
    for line in lines:
        try:
            assert isinstance(json.loads(line), dict)
        except (ValueError, AssertionError):
            not_json.append(line)
    assert not_json == []
    events = Counter(json.loads(line)["event"] for line in lines)
    assert events["database unavailable, retrying"] >= 1 and events["delivery"] >= 6, events


TIMEOUTS = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
"""What a role or database may set that relay's own sessions override."""


def test_timeouts_set_for_the_role_do_not_stop_relay(
    rconn: Conn, relay_dsn: str, tmp_path: Path, make_role: Callable[..., str]
) -> None:
    """A role with statement_timeout=1ms (ALTER ROLE ... SET) stopped relay run with a message
    naming neither the setting nor a fix. relay's sessions set their own timeouts (none:
    relay bounds its own work), so the role's, meant for an application, do not apply."""
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed (it runs sql/service_role.sql)")
    role = make_role("slow")
    granted = subprocess.run(
        [
            psql,
            relay_dsn,
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            f"role={role}",
            "-f",
            str(sqlfiles.sql_dir() / "service_role.sql"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert granted.returncode == 0, granted.stderr
    for setting in TIMEOUTS:
        rconn.execute(f"ALTER ROLE {role} SET {setting} = '1ms'")
    service = make_conninfo(relay_dsn, user=role)
    path = tmp_path / "relay.log"
    log = os.open(path, os.O_WRONLY | os.O_CREAT)

    async def scenario() -> None:
        async with receiver() as r:
            setup(rconn, r.url)
            relay = await start_relay(service, log, RELAY_LOG_FORMAT="json")
            try:
                rconn.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, 50) g")
                await until(lambda: outbox_statuses(rconn) == ["delivered"] * 50, timeout=30)
            finally:
                relay.send_signal(signal.SIGTERM)
                await asyncio.wait_for(relay.wait(), 20)

    asyncio.run(scenario())
    events = log_events(path)
    assert events["delivery"] == 50, events
    assert events["database unavailable, retrying"] == events["relay session failed"] == 0
    for command in [["status"], ["webhook", "list"], ["rules", "check"], ["retry"]]:
        done = relay_cli(*command, dsn=service)
        assert done.returncode == 0, (command, done.stderr)


def test_relay_sessions_ignore_the_roles_timeouts_but_not_the_operators(
    rconn: Conn, relay_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every connection relay opens sets its own timeouts over the role's and the database's;
    a timeout written into RELAY_DSN's options, or PGOPTIONS, is the operator's choice for
    relay and still wins, as libpq would have it."""
    monkeypatch.delenv("PGOPTIONS", raising=False)
    for setting in TIMEOUTS:
        rconn.execute(f"ALTER ROLE CURRENT_USER IN DATABASE {rconn.info.dbname} SET {setting} = 1")
    own = make_conninfo(relay_dsn, options="-c statement_timeout=5s")
    for dsn, shown in [(relay_dsn, ["0", "0", "0"]), (own, ["5s", "0", "0"])]:
        with db.connect(dsn) as conn:
            assert [one_row(conn.execute(f"SHOW {s}"))[0] for s in TIMEOUTS] == shown
    monkeypatch.setenv("PGOPTIONS", "-c lock_timeout=2s")
    with db.connect(relay_dsn) as conn:
        assert [one_row(conn.execute(f"SHOW {s}"))[0] for s in TIMEOUTS] == ["0", "2s", "0"]
