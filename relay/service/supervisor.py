"""``relay run --processes N``: a parent that runs N relay processes and speaks for all of them.

One relay process is bound by one core (CPython), and relays already share the work through the
database (leases, SKIP LOCKED), so the parent needs no share of the work itself: it starts N
ordinary ``relay run`` processes, each with its own connections, and restarts one that dies.
To systemd it is one service: READY=1 once every process is connected, WATCHDOG=1 only while
every process is alive (a process that keeps dying stops the pings, and systemd restarts the
whole service), STOPPING=1 on SIGTERM, which it passes on to every process so that each drains
its in-flight requests within the grace period. It serves the one metrics endpoint: every
process's metrics, each sample labelled with its ``process`` number.

Each process tells the parent, on a pipe of its own (fd ``RELAY_SUPERVISOR_FD``), where its
metrics are and whether it is ready (relay/service/process.py writes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from relay.service import logs, systemd
from relay.service.process import SUPERVISOR_FD, listen
from relay.settings import Settings

log = structlog.get_logger("relay.supervisor")

CANNOT_SERVE = 2
"""A process's exit code for what a restart cannot fix (relay run's): the parent stops too."""
RESTART_SECONDS = (0.5, 30.0)
"""A dead process is started again after the first, doubling while it keeps dying young."""
SETTLED_SECONDS = 60.0
"""A process that ran this long before dying counts as healthy: its restart waits the least."""
SILENT_SECONDS = 10.0
"""A process that has not reported for this long counts as hung: not alive, not ready (its
reports come every 0.2 s from its event loop)."""
KILL_MARGIN_SECONDS = 5.0
"""After SIGTERM, how long past the grace period a process may take before it is killed."""
_NOT_INHERITED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")
"""systemd talks to the parent only: a process that spoke too would claim readiness alone."""


class ProcessCannotServe(Exception):
    """A relay process exited as relay run does for what a restart cannot fix."""


@dataclass
class _Process:
    """One relay process as the parent sees it."""

    number: int
    process: asyncio.subprocess.Process | None = None
    ready: bool = False
    metrics_port: int | None = None
    restarts: int = 0
    started: float = field(default_factory=time.monotonic)
    heard: float = field(default_factory=time.monotonic)
    """When it last reported (starting counts)."""

    @property
    def alive(self) -> bool:
        """Running, and its event loop turns (it reported lately)."""
        running = self.process is not None and self.process.returncode is None
        return running and time.monotonic() - self.heard < SILENT_SECONDS


class Supervisor:
    """Runs ``count`` relay processes until :meth:`run`'s stop event is set."""

    def __init__(
        self, settings: Settings, dsn: str, count: int, env_file: Path | None = None
    ) -> None:
        self.settings = settings
        self.dsn = dsn
        self.processes = [_Process(number) for number in range(1, count + 1)]
        self._env_file = env_file
        self._failed: str | None = None
        self.registry = CollectorRegistry()
        self._restarts = Counter(
            "relay_process_restarts_total",
            "Relay processes started again after they died, by process number.",
            ["process"],
            registry=self.registry,
        )
        alive = Gauge(
            "relay_processes_alive",
            "Relay processes running under this relay run (of RELAY_PROCESSES).",
            registry=self.registry,
        )
        alive.set_function(lambda: sum(p.alive for p in self.processes))

    @property
    def ready(self) -> bool:
        """Every process is connected and listening."""
        return all(p.ready and p.alive for p in self.processes)

    @property
    def alive(self) -> bool:
        """Every process runs (none is dead or waiting to be started again)."""
        return all(p.alive for p in self.processes)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the processes running until ``stop``; then stop them all (each drains) and
        return. :class:`ProcessCannotServe` when one exited for what a restart cannot fix."""
        keepers = [asyncio.create_task(self._keep(p, stop)) for p in self.processes]
        try:
            await stop.wait()
        finally:
            stop.set()
            self._terminate()
            await asyncio.gather(*keepers, return_exceptions=True)
        if self._failed is not None:
            raise ProcessCannotServe(self._failed)

    async def metrics_page(self) -> bytes:
        """Every process's metrics, each sample labelled with its process number, and the
        parent's own."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            pages = await asyncio.gather(
                *(self._page(session, p) for p in self.processes if p.metrics_port)
            )
        merged = CollectorRegistry()
        merged.register(_Merged([page for page in pages if page is not None]))
        return generate_latest(self.registry) + generate_latest(merged)

    async def _page(
        self, session: aiohttp.ClientSession, process: _Process
    ) -> tuple[str, str] | None:
        try:
            url = f"http://127.0.0.1:{process.metrics_port}/metrics"
            async with session.get(url) as response:
                return str(process.number), await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return None  # restarting: its counts come back with it

    async def _keep(self, process: _Process, stop: asyncio.Event) -> None:
        """Run one process, and again whenever it dies, until ``stop``."""
        backoff = RESTART_SECONDS[0]
        while not stop.is_set():
            began = time.monotonic()
            code = await self._once(process, stop)
            if stop.is_set():
                return
            if code == CANNOT_SERVE:
                self._failed = (
                    f"relay process {process.number} exited with code {code} (its error is in "
                    "the log above): stopping all of them"
                )
                stop.set()
                return
            if time.monotonic() - began > SETTLED_SECONDS:
                backoff = RESTART_SECONDS[0]
            log.warning(
                "relay process died, starting it again",
                process=process.number,
                exit_code=code,
                restart_in_s=backoff,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, RESTART_SECONDS[1])
            process.restarts += 1
            self._restarts.labels(str(process.number)).inc()

    async def _once(self, process: _Process, stop: asyncio.Event) -> int:
        """Start the process, follow its reports until it exits, and return its exit code."""
        read_fd, write_fd = os.pipe()
        try:
            child = await asyncio.create_subprocess_exec(
                *self._argv(),
                env=self._env(write_fd),
                pass_fds=(write_fd,),
                start_new_session=True,
            )
        finally:
            os.close(write_fd)
        process.process, process.ready, process.metrics_port = child, False, None
        process.started = process.heard = time.monotonic()
        log.info("relay process started", process=process.number, pid=child.pid)
        if stop.is_set():  # SIGTERM came while it was starting: _terminate missed it
            _signal(child, signal.SIGTERM)
        try:
            await self._follow(process, read_fd)
            return await child.wait()
        finally:
            process.ready = False

    async def _follow(self, process: _Process, read_fd: int) -> None:
        """Read the process's reports until it closes its end (it exited)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0)
        )
        try:
            async for line in reader:
                process.heard = time.monotonic()
                kind, _, value = line.decode().strip().partition(" ")
                if kind == "ready":
                    process.ready = value == "1"
                elif kind == "metrics":
                    process.metrics_port = int(value)
        finally:
            transport.close()

    def _argv(self) -> list[str]:
        argv = [sys.executable, "-m", "relay", "run"]
        if self._env_file is not None:
            argv += ["--env-file", str(self._env_file)]
        return argv

    def _env(self, report_fd: int) -> dict[str, str]:
        """The parent's environment, with the database and settings it runs with (the
        connection string in the environment, not on the command line, where every user of
        the machine can read it)."""
        env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
        env["RELAY_DSN"] = self.dsn
        env["RELAY_PROCESSES"] = "1"
        env["RELAY_METRICS_ADDRESS"] = "127.0.0.1:0" if self.settings.metrics_address else ""
        env[SUPERVISOR_FD] = str(report_fd)
        return env

    def _terminate(self) -> None:
        for process in self.processes:
            if process.process is not None and process.process.returncode is None:
                _signal(process.process, signal.SIGTERM)
        deadline = self.settings.shutdown_grace_seconds + KILL_MARGIN_SECONDS
        asyncio.get_running_loop().call_later(deadline, self._kill)

    def _kill(self) -> None:
        for process in self.processes:
            if process.process is not None and process.process.returncode is None:
                log.warning(
                    "relay process did not stop in time, killing it", process=process.number
                )
                _signal(process.process, signal.SIGKILL)


def _signal(child: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(sig)


class _Merged:
    """A collector of the processes' metric pages: one family per name, every sample with the
    ``process`` label of the page it came from."""

    def __init__(self, pages: Sequence[tuple[str, str]]) -> None:
        self._pages = pages

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for number, text in self._pages:
            for family in text_string_to_metric_families(text):
                merged = families.get(family.name)
                if merged is None:
                    merged = Metric(family.name, family.documentation, family.type, family.unit)
                    families[family.name] = merged
                merged.samples.extend(
                    Sample(s.name, {**s.labels, "process": number}, s.value, s.timestamp)
                    for s in family.samples
                )
        yield from families.values()


def serve(settings: Settings, dsn: str, count: int, env_file: Path | None = None) -> None:
    """Run ``count`` relay processes until SIGTERM or SIGINT, then stop them all."""
    logs.configure(fmt=settings.log_format)
    asyncio.run(_serve(Supervisor(settings, dsn, count, env_file)))


async def _serve(supervisor: Supervisor) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    settings = supervisor.settings
    runner = None
    if settings.metrics_address:
        runner = await listen(
            settings.metrics_address, supervisor.metrics_page, lambda: supervisor.ready
        )
    notifier = asyncio.create_task(
        systemd.supervise(lambda: supervisor.ready, stop, alive=lambda: supervisor.alive)
    )
    try:
        await supervisor.run(stop)
    finally:
        stop.set()
        await notifier
        if runner is not None:
            await runner.cleanup()
