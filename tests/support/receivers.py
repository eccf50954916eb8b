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


@dataclass
class Proxy:
    url: str
    connects: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    """Each CONNECT: its target and its headers."""


@asynccontextmanager
async def connect_proxy() -> AsyncIterator[Proxy]:
    """A forward proxy for HTTPS on a free port of 127.0.0.1: it answers CONNECT host:port and
    then passes bytes both ways, seeing nothing of what is inside the tunnel."""
    state = Proxy(url="")

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        method, target, _ = head[0].split(" ", 2)
        headers = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
        state.connects.append((target, headers))
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        host, port = target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield state
    finally:
        server.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (for now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RawReceiver:
    url: str
    requests: int = 0


@asynccontextmanager
async def raw_receiver(*answers: bytes) -> AsyncIterator[RawReceiver]:
    """A receiver on a free port of 127.0.0.1 that reads each request (head and Content-Length
    body) and answers with the bytes given, as they are: the next answer for each request, the
    last one again once they are used up. For what no well-behaved HTTP server sends (a bad
    status line, a header past any limit, a broken chunk or gzip stream, a non-ASCII digit)."""
    state = RawReceiver(url="")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                answer = answers[min(state.requests, len(answers) - 1)]
                state.requests += 1
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    try:
        yield state
    finally:
        server.close()
