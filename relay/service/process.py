"""The ``relay run`` process: signals, the metrics endpoint and systemd around one Worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web

from relay.delivery.worker import CannotDeliver, Worker
from relay.service import endpoint, logs, systemd
from relay.settings import Settings

SUPERVISOR_FD = "RELAY_SUPERVISOR_FD"
"""Set by ``relay run --processes N`` (relay/service/supervisor.py) for each of its processes:
the fd on which the process reports its metrics port and its readiness to the parent."""
REPORT_SECONDS = 0.2
"""How often a supervised process looks at its readiness and at its parent."""


class CannotServe(Exception):
    """Something a restart cannot fix kept the process from starting (say so, exit 2)."""


def serve(settings: Settings, dsn: str) -> None:
    """Deliver until SIGTERM or SIGINT, then drain within the grace period and return."""
    logs.configure(fmt=settings.log_format)
    asyncio.run(_serve(settings, dsn))


async def listen(
    address: str, page: Callable[[], Awaitable[bytes]], ready: Callable[[], bool]
) -> web.AppRunner:
    """The metrics endpoint on ``address``, or CannotServe saying why it cannot listen there."""
    try:
        return await endpoint.serve(address, page, ready)
    except OSError as exc:
        raise CannotServe(
            f"RELAY_METRICS_ADDRESS: cannot listen on {address}: "
            f"{os.strerror(exc.errno) if exc.errno else exc}"
        ) from None


async def _serve(settings: Settings, dsn: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = Worker(settings, dsn)
    runner = None
    if settings.metrics_address:

        async def page() -> bytes:
            return worker.metrics.render()

        runner = await listen(settings.metrics_address, page, lambda: worker.ready)
    report = os.environ.get(SUPERVISOR_FD)
    if report is not None:
        helper = asyncio.create_task(_report(int(report), worker, runner, stop))
    else:
        helper = asyncio.create_task(systemd.supervise(lambda: worker.ready, stop))
    try:
        await worker.run(stop)
    except CannotDeliver as exc:
        raise CannotServe(str(exc)) from None
    finally:
        stop.set()
        await helper
        if runner is not None:
            await runner.cleanup()


async def _report(
    fd: int, worker: Worker, runner: web.AppRunner | None, stop: asyncio.Event
) -> None:
    """Tell the parent where this process's metrics are, whether it is ready, and that its event
    loop turns (a line at least every REPORT_SECONDS: silence means it hangs); stop when the
    parent is gone (a parent killed outright cannot pass SIGTERM on)."""
    parent = os.getppid()
    with open(fd, "w", buffering=1, closefd=True) as reports:
        if runner is not None:
            reports.write(f"metrics {runner.addresses[0][1]}\n")
        while not stop.is_set():
            with contextlib.suppress(BrokenPipeError):
                reports.write(f"ready {int(worker.ready)}\n")
            if os.getppid() != parent:
                stop.set()
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REPORT_SECONDS)
