"""`relay run --processes N`: one parent, N relay processes, one service to systemd."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.db import Conn
from relay.service import supervisor as supervisor_module
from relay.service.supervisor import ProcessCannotServe, Supervisor
from relay.settings import Settings
from support.receivers import Receiver, free_port, receiver
from support.worker import outbox_statuses, setup, sql, until


class Notifications:
    """A NOTIFY_SOCKET that keeps what it is told, and when."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.messages: list[tuple[float, str]] = []

    def said(self, message: str) -> list[float]:
        """When each notification holding ``message`` (one of its lines) came."""
        return [at for at, m in self.messages if message in m.splitlines()]


@asynccontextmanager
async def notify_socket(tmp_path: Path) -> AsyncIterator[Notifications]:
    notes = Notifications(str(tmp_path / "notify"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(notes.path)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()

        async def collect() -> None:
            while True:
                data = await loop.sock_recv(sock, 4096)
                notes.messages.append((time.monotonic(), data.decode()))

        task = asyncio.create_task(collect())
        try:
            yield notes
        finally:
            task.cancel()


STARTED: list[asyncio.subprocess.Process] = []


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """A failed test must not leave a relay run behind: kill its parent (the processes notice
    and stop within a fraction of a second)."""
    yield
    while STARTED:
        parent = STARTED.pop()
        if parent.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                parent.kill()


async def start(
    dsn: str, processes: int, port: int, notify: str, **env: str
) -> asyncio.subprocess.Process:
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "run",
        "--processes",
        str(processes),
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("RELAY_")},
            "RELAY_DSN": dsn,
            "RELAY_METRICS_ADDRESS": f"127.0.0.1:{port}",
            "RELAY_POLL_INTERVAL": "0.2",
            "RELAY_RETRY_BASE_SECONDS": "0.2",
            "NOTIFY_SOCKET": notify,
            "WATCHDOG_USEC": "600000",
            **env,
        },
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    STARTED.append(parent)
    return parent


def workers(parent: asyncio.subprocess.Process) -> list[int]:
    """The relay processes' pids (Linux lists a process's children in /proc)."""
    children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text()
    return sorted(int(pid) for pid in children.split())


async def get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


def events(log: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.decode().splitlines() if line.startswith("{")]


def test_processes_share_the_work_report_ready_once_and_serve_one_metrics_page(
    rconn: Conn, relay_dsn: str, tmp_path: Path
) -> None:
    port = free_port()

    async def scenario() -> tuple[Receiver, Notifications, str, int | None, bytes, int]:
        async with notify_socket(tmp_path) as notes, receiver() as r:
            setup(rconn, r.url)
            parent = await start(relay_dsn, 3, port, notes.path)
            await until(lambda: bool(notes.said("READY=1")), timeout=30)
            children = len(workers(parent))
            ready = await get(port, "/readyz")
            assert ready == (200, "ready\n")
            await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 300) g")
            await until(lambda: outbox_statuses(rconn) == ["delivered"] * 300, timeout=30)
            _, page = await get(port, "/metrics")
            parent.send_signal(signal.SIGTERM)
            _, log = await parent.communicate()
            return r, notes, page, parent.returncode, log, children

    r, notes, page, code, log, children = asyncio.run(scenario())
    assert code == 0 and children == 3
    assert len(r.requests) == 300
    assert len(notes.said("READY=1")) == 1
    assert notes.messages[-1][1] == "STOPPING=1"
    assert len(notes.said("WATCHDOG=1")) >= 2
    relays = {e["relay_id"] for e in events(log) if e["event"] == "relay connected"}
    assert len(relays) == 3, "three processes, each a relay of its own"
    by_process = {
        line.split('process="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith("relay_deliveries_total{") and 'outcome="delivered"' in line
    }
    assert set(by_process) <= {"1", "2", "3"} and sum(by_process.values()) == 300
    assert "relay_processes_alive 3.0" in page
    assert page.count("# TYPE relay_deliveries_total counter") == 1


def test_a_killed_process_is_restarted_and_its_work_is_not_lost(
    rconn: Conn, relay_dsn: str, tmp_path: Path
) -> None:
    """A relay process killed outright while it holds deliveries: the parent starts another,
    the watchdog goes quiet only while one is missing, and every change arrives."""
    port = free_port()

    async def slow(request: aiohttp.web.Request) -> aiohttp.web.Response:
        await asyncio.sleep(0.05)
        return aiohttp.web.Response(text="ok")

    async def scenario() -> tuple[int | None, bytes, str, list[int], list[int]]:
        async with notify_socket(tmp_path) as notes, receiver(slow) as r:
            setup(rconn, r.url)
            parent = await start(relay_dsn, 2, port, notes.path, RELAY_LEASE_SECONDS="2")
            await until(lambda: bool(notes.said("READY=1")), timeout=30)
            before = workers(parent)
            await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 200) g")
            await until(lambda: len(r.requests) >= 20, timeout=20)
            os.kill(before[0], signal.SIGKILL)
            await until(lambda: len(workers(parent)) == 2 and workers(parent) != before, timeout=20)
            after = workers(parent)
            await until(lambda: outbox_statuses(rconn) == ["delivered"] * 200, timeout=40)
            _, page = await get(port, "/metrics")
            parent.send_signal(signal.SIGTERM)
            _, log = await parent.communicate()
            return parent.returncode, log, page, before, after

    code, log, page, before, after = asyncio.run(scenario())
    assert code == 0
    assert before[0] not in after and before[1] in after
    died = [e for e in events(log) if e["event"] == "relay process died, starting it again"]
    assert len(died) == 1 and died[0]["exit_code"] == -signal.SIGKILL
    assert 'relay_process_restarts_total{process="' in page
    delivered = rconn.execute(
        "SELECT count(DISTINCT outbox_id) FROM relay.deliveries WHERE status = 'delivered'"
    ).fetchone()
    assert delivered == (200,)


@pytest.mark.timing
def test_sigterm_drains_every_process(rconn: Conn, relay_dsn: str, tmp_path: Path) -> None:
    """SIGTERM while every process has requests in flight: each finishes them within the grace
    period and records their outcome before the parent exits."""
    port = free_port()
    arrived: list[float] = []

    async def slow(request: aiohttp.web.Request) -> aiohttp.web.Response:
        arrived.append(time.monotonic())
        await asyncio.sleep(1.0)
        return aiohttp.web.Response(text="ok")

    async def scenario() -> tuple[int | None, float]:
        async with notify_socket(tmp_path) as notes, receiver(slow):
            setup(rconn, "http://placeholder/")
            parent = None
            async with receiver(slow) as r:
                rconn.execute("UPDATE relay.webhooks SET payload_url = %s", (r.url,))
                parent = await start(
                    relay_dsn, 2, port, notes.path, RELAY_SHUTDOWN_GRACE_SECONDS="5"
                )
                await until(lambda: bool(notes.said("READY=1")), timeout=30)
                await sql(relay_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 40) g")
                await until(lambda: len(arrived) >= 8, timeout=20)
                began = time.monotonic()
                parent.send_signal(signal.SIGTERM)
                await parent.communicate()
                return parent.returncode, time.monotonic() - began

    code, took = asyncio.run(scenario())
    assert code == 0 and took < 5
    leftover = rconn.execute(
        "SELECT count(*) FROM relay.deliveries WHERE leased_by IS NOT NULL AND status = 'pending'"
    ).fetchone()
    assert leftover == (0,), "what was in flight was recorded, and nothing is left leased"
    delivered = rconn.execute(
        "SELECT count(*) FROM relay.deliveries WHERE status = 'delivered'"
    ).fetchone()
    assert delivered is not None and delivered[0] >= 8


class Exits(Supervisor):
    """A supervisor whose processes are a program that exits at once with ``code``."""

    def __init__(self, code: int) -> None:
        super().__init__(Settings(shutdown_grace_seconds=1), "dbname=unused", 2)
        self.code = code

    def _argv(self) -> list[str]:
        return [sys.executable, "-c", f"import sys; sys.exit({self.code})"]


def test_a_process_that_cannot_serve_stops_them_all() -> None:
    """Exit 2 is relay run's "a restart cannot fix this": the parent stops every process and
    says so (relay run then exits 2), rather than restarting it for ever."""

    async def scenario() -> str:
        supervisor = Exits(2)
        try:
            await asyncio.wait_for(supervisor.run(asyncio.Event()), 20)
        except ProcessCannotServe as exc:
            return str(exc)
        return "no error"

    assert "exited with code 2" in asyncio.run(scenario())


def test_a_process_that_keeps_dying_is_restarted_and_counts_as_down_meanwhile() -> None:
    """While a process is down, the parent is neither alive (no WATCHDOG=1, see systemd.py)
    nor ready; it starts the process again, waiting longer each time it dies young."""

    async def scenario() -> tuple[set[bool], list[int]]:
        supervisor = Exits(1)
        stop = asyncio.Event()
        task = asyncio.create_task(supervisor.run(stop))
        seen: set[bool] = set()
        while not all(p.restarts >= 2 for p in supervisor.processes):
            seen.add(supervisor.alive or supervisor.ready)
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 20)
        return seen, [p.restarts for p in supervisor.processes]

    seen, restarts = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert False in seen
    assert min(restarts) >= 2


class Hangs(Supervisor):
    """A supervisor whose processes report ready once, then hang (report nothing more)."""

    def __init__(self) -> None:
        super().__init__(Settings(shutdown_grace_seconds=0), "dbname=unused", 2)

    def _argv(self) -> list[str]:
        program = (
            "import os, time; fd = int(os.environ['RELAY_SUPERVISOR_FD']);"
            " os.write(fd, b'ready 1\\n'); time.sleep(60)"
        )
        return [sys.executable, "-c", program]


def test_a_hung_process_counts_as_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process whose event loop hangs (it stops reporting) is neither alive nor ready, so
    systemd's watchdog stops being fed and /readyz says 503, as for one relay process."""
    monkeypatch.setattr(supervisor_module, "SILENT_SECONDS", 1.0)

    async def scenario() -> tuple[bool, bool, bool]:
        supervisor = Hangs()
        stop = asyncio.Event()
        task = asyncio.create_task(supervisor.run(stop))
        await until(lambda: supervisor.ready, timeout=10)
        alive_at_first = supervisor.alive
        await asyncio.sleep(1.5)
        state = (alive_at_first, supervisor.alive, supervisor.ready)
        stop.set()
        await asyncio.wait_for(task, 20)
        return state

    alive_at_first, alive, ready = asyncio.run(scenario())
    assert alive_at_first and not alive and not ready
