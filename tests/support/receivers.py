"""Real HTTP receivers on 127.0.0.1 for tests: each behaves one way a receiver can."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class NetBox4Receiver:
    """What :func:`netbox4_receiver` accepted (each body, in order of arrival) and refused (the
    reason it answered 400 or 403 with)."""

    accepted: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def netbox4_receiver(
    secret: bytes, columns: Mapping[str, type | tuple[type, ...]], state: NetBox4Receiver
) -> Handler:
    """A receiver written for NetBox 4's webhooks, as one is in the wild: it verifies
    X-Hook-Signature with the shared secret, then reads ``event``, ``object_type``,
    ``request.user``, ``request.id`` (and ``request.path`` and ``.method``, str or null) and
    ``data``'s ``columns`` (name: the type each value must have), and refuses with 400 naming
    the first that is missing or of another type. A body that is a JSON array (a batch) is read
    one body at a time and refused whole if any is wrong."""

    def problem(body: Any) -> str | None:
        if not isinstance(body, dict):
            return "the body is not a JSON object"
        if body.get("event") not in ("created", "updated", "deleted"):
            return f"event {body.get('event')!r} is not created, updated or deleted"
        if not isinstance(body.get("object_type"), str) or "." not in body["object_type"]:
            return "object_type is not app_label.model"
        request = body.get("request")
        if not isinstance(request, dict):
            return "request is not an object"
        for key in ("user", "id"):
            if not isinstance(request.get(key), str) or not request[key]:
                return f"request.{key} is not a non-empty string"
        for key in ("path", "method"):
            if key not in request or not isinstance(request[key], str | None):
                return f"request.{key} is missing or neither a string nor null"
        data = body.get("data")
        if not isinstance(data, dict):
            return "data is not an object"
        for column, kind in columns.items():
            if column not in data or not isinstance(data[column], kind):
                return f"data.{column} is missing or not {kind}"
        return None

    async def handle(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        expected = hmac.new(secret, raw, hashlib.sha512).hexdigest()
        if not hmac.compare_digest(expected, request.headers.get("X-Hook-Signature", "")):
            state.refused.append("bad signature")
            return web.Response(status=403, text="bad signature")
        try:
            parsed = json.loads(raw)
        except ValueError:
            state.refused.append("not JSON")
            return web.Response(status=400, text="not JSON")
        bodies = parsed if isinstance(parsed, list) else [parsed]
        for body in bodies:
            why = problem(body)
            if why is not None:
                state.refused.append(why)
                return web.Response(status=400, text=why)
        state.accepted.extend(bodies)
        return web.Response(status=204)

    return handle
