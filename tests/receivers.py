"""Real HTTP receivers on 127.0.0.1 for tests: each behaves one way a receiver can."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    requests: list[Received] = field(default_factory=list)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def receiver(
    handler: Handler | None = None, *, tls: ssl.SSLContext | None = None, port: int = 0
) -> AsyncIterator[Receiver]:
    """Serve on 127.0.0.1 (a free port unless given); record every request; answer with
    ``handler``."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    scheme = "https" if tls else "http"
    state = Receiver(url=f"{scheme}://127.0.0.1:{port}/hook")

    async def record(request: web.Request) -> web.StreamResponse:
        state.requests.append(
            Received(request.method, request.path_qs, dict(request.headers), await request.read())
        )
        if handler is None:
            return web.Response(text="ok")
        return await handler(request)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    site = web.SockSite(runner, sock, ssl_context=tls)
    await site.start()
    try:
        yield state
    finally:
        await runner.cleanup()


async def never_answers(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(3600)
    return web.Response()
