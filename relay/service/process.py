"""The ``relay run`` process: signals, the metrics endpoint and systemd around one Worker."""

from __future__ import annotations

import asyncio
import os
import signal

from relay.delivery.worker import Worker
from relay.service import endpoint, logs, systemd
from relay.settings import Settings


class CannotServe(Exception):
    """Something a restart cannot fix kept the process from starting (say so, exit 2)."""


def serve(settings: Settings, dsn: str) -> None:
    """Deliver until SIGTERM or SIGINT, then drain within the grace period and return."""
    logs.configure(fmt=settings.log_format)
    asyncio.run(_serve(settings, dsn))


async def _serve(settings: Settings, dsn: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = Worker(settings, dsn)
    runner = None
    if settings.metrics_address:
        try:
            runner = await endpoint.serve(
                settings.metrics_address, worker.metrics.render, lambda: worker.ready
            )
        except OSError as exc:
            raise CannotServe(
                f"RELAY_METRICS_ADDRESS: cannot listen on {settings.metrics_address}: "
                f"{os.strerror(exc.errno) if exc.errno else exc}"
            ) from None
    supervisor = asyncio.create_task(systemd.supervise(lambda: worker.ready, stop))
    try:
        await worker.run(stop)
    finally:
        stop.set()
        await supervisor
        if runner is not None:
            await runner.cleanup()
