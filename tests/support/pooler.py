"""A connection pooler's one habit that matters to relay: it drops the ``options`` startup
parameter (PgBouncer does, with ``ignore_startup_parameters = options``), so a session starts
with its role's and database's own settings, search path included. Everything else passes as
is: a plain TCP relay of the PostgreSQL protocol on 127.0.0.1, in threads of its own."""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed during the startup packet")
        data += chunk
    return data


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    for sock in (source, sink):
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        client: socket.socket = self.request
        while True:
            length, code = struct.unpack("!ii", _read(client, 8))
            if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                client.sendall(b"N")  # no encryption here: the client goes on in plain text
                continue
            body = _read(client, length - 8)
            break
        if code >> 16 == 3:  # a startup message: key\0value\0 pairs, then \0
            fields = body.rstrip(b"\0").split(b"\0")
            pairs = [(k, v) for k, v in zip(fields[::2], fields[1::2], strict=True)]
            kept = b"".join(k + b"\0" + v + b"\0" for k, v in pairs if k != b"options") + b"\0"
            packet = struct.pack("!ii", len(kept) + 8, code) + kept
        else:
            packet = struct.pack("!ii", length, code) + body
        upstream = socket.create_connection(self.server.upstream)
        upstream.sendall(packet)
        back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
        back.start()
        _pipe(client, upstream)
        back.join(timeout=5)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream


@contextmanager
def dropping_options(host: str, port: int) -> Iterator[tuple[str, int]]:
    """A pooler in front of ``host:port`` that drops ``options``: yields its own address."""
    server = _Server((host, port))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        address = server.server_address
        yield str(address[0]), int(address[1])
    finally:
        server.shutdown()
        server.server_close()
