"""``/metrics``, ``/healthz`` and ``/readyz`` for ``relay run``: off unless
``RELAY_METRICS_ADDRESS`` is set; a small aiohttp server on the relay's own event loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST


async def serve(
    address: str, page: Callable[[], Awaitable[bytes]], ready: Callable[[], bool]
) -> web.AppRunner:
    """Start the endpoint on ``host:port`` (port 0: any free one, runner.addresses says which),
    ``page`` giving the metrics in Prometheus' text format; the caller cleans the runner up."""
    host, _, port = address.rpartition(":")

    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(body=await page(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not connected to the database\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port)).start()
    return runner
