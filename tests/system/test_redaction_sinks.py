"""No URL token, password or credential reaches any sink of a relay run as a process (its
recorded reasons, its log lines, the commands' output), whichever way it comes (the other ways
in this process: tests/integration/test_redaction.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Iterable

from aiohttp import web

from relay.db import Conn
from support.cli import relay
from support.receivers import free_port, raw_receiver, receiver
from support.worker import setup, sql, until

TOKENS = {
    "redirect": "tok1-0b8e4f2a9c",
    "ftp": "tok2-6d1c3a7e5f",
    "ftp-query": "tok3-9a2b7c4d1e",
    "status-line": "tok4-3e8f1a6b2c",
    "header-size": "tok5-7c4d9e2f8a",
    "chunk": "tok6-1f5a8b3c7d",
    "header-line": "tok7-4b9c2d6e1a",
    "userinfo": "tok8-8d3e7f1a5b",
}


def sinks(conn: Conn) -> dict[str, str]:
    """Every recorded reason, by where it is kept."""
    return {
        table: "\n".join(str(row[0]) for row in conn.execute(f"SELECT {column} FROM relay.{table}"))
        for table, column in [
            ("attempts", "error"),
            ("deliveries", "last_error"),
            ("outbox", "last_error"),
        ]
    }


def leaks(texts: dict[str, str], secrets: Iterable[str]) -> list[tuple[str, str]]:
    """(sink, secret) for each secret a sink shows."""
    return [(sink, secret) for sink, text in texts.items() for secret in secrets if secret in text]


def test_no_sink_shows_a_url_token_a_password_or_a_credential(rconn: Conn, relay_dsn: str) -> None:
    """Webhooks whose receivers or templates put a token where a reason is made: a redirect
    to a Slack-style URL, a URL that renders to ftp://user:password@...?tok=..., responses
    aiohttp cannot parse (its message quotes the URL and its query), a header line missing
    its colon, a password in a URL nobody answers. ``relay run``'s JSON log, relay.attempts,
    relay.deliveries, relay.outbox and ``relay status`` (table and JSON) show none of them,
    and each reason still says what happened."""
    closed = free_port()

    async def slack_style(request: web.Request) -> web.Response:
        location = f"https://hooks.example/services/T000/B000/{TOKENS['redirect']}"
        return web.Response(status=302, headers={"Location": location})

    bad_status = b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n"
    big_header = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 20000 + b"\r\nContent-Length: 0\r\n\r\n"
    bad_chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"

    async def scenario() -> tuple[int | None, str, dict[str, str]]:
        async with (
            receiver(slack_style) as redirecting,
            receiver() as fine,
            raw_receiver(bad_status) as status_line,
            raw_receiver(big_header) as header_size,
            raw_receiver(bad_chunk) as chunk,
        ):
            urls = {
                "redirect": redirecting.url,
                "ftp": "{{ 'ftp' }}://user:"
                + f"{TOKENS['ftp']}@127.0.0.1/x?tok="
                + TOKENS["ftp-query"],
                "status-line": f"{status_line.url}?token={TOKENS['status-line']}",
                "header-size": f"{header_size.url}?token={TOKENS['header-size']}",
                "chunk": f"{chunk.url}?token={TOKENS['chunk']}",
                "header-line": fine.url,
                "userinfo": f"http://user:{TOKENS['userinfo']}@127.0.0.1:{closed}/x",
            }
            for name, url in urls.items():
                headers = ""
                if name == "header-line":
                    headers = f"Authorization Bearer {TOKENS['header-line']}{{{{ '' }}}}"
                setup(rconn, url, name, secret=f"{name}-secret", additional_headers=headers)
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "relay",
                "run",
                env={
                    **{k: v for k, v in os.environ.items() if not k.startswith("RELAY_")},
                    "RELAY_DSN": relay_dsn,
                    "RELAY_POLL_INTERVAL": "0.2",
                    "RELAY_MAX_ATTEMPTS": "2",
                    "RELAY_RETRY_BASE_SECONDS": "0.05",
                    "RELAY_RETRY_MAX_SECONDS": "0.1",
                },
                stderr=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
            )
            await sql(relay_dsn, "INSERT INTO items VALUES (1, 0)")

            def finished() -> bool:
                row = rconn.execute("SELECT status::text FROM relay.outbox").fetchone()
                return row is not None and row[0] == "failed"

            await until(finished, timeout=30)
            process.send_signal(signal.SIGTERM)
            _, log = await process.communicate()
        return process.returncode, log.decode(), {**urls, "status-line-host": status_line.url}

    code, log, urls = asyncio.run(scenario())
    assert code == 0, log
    table = relay("status", "--errors", "100", dsn=relay_dsn)
    as_json = relay("status", "--json", "--errors", "100", dsn=relay_dsn)
    assert table.returncode == 0 and as_json.returncode == 0, table.stderr + as_json.stderr
    texts = {
        **sinks(rconn),
        "relay run's log": log,
        "relay status": table.stdout,
        "relay status --json": as_json.stdout,
    }
    assert leaks(texts, TOKENS.values()) == []
    assert all(json.loads(line) for line in log.splitlines())  # JSON lines, every one

    reasons: dict[str, str] = dict(
        rconn.execute(
            "SELECT w.name, d.last_error FROM relay.deliveries d"
            " JOIN relay.webhooks w ON w.id = d.webhook_id"
        ).fetchall()
    )
    status_host = urls["status-line-host"].removeprefix("http://").removesuffix("/hook")
    assert reasons["redirect"] == "HTTP 302: redirect to https://hooks.example/… not followed"
    assert reasons["ftp"] == (
        "payload_url rendered to 'ftp://127.0.0.1/…', not an http(s) URL with a host"
    )
    assert reasons["status-line"] == (
        f"the response from {status_host} cannot be read: Bad status line: "
        "Invalid status code: b'HTTP/1.1 2x0 OK'"
    )
    assert "cannot be read: Got more than 8190 bytes" in reasons["header-size"]
    assert "cannot be read: Invalid character in chunk size" in reasons["chunk"]
    assert reasons["header-line"] == "additional_headers line 1 is not 'Name: Value': it has no ':'"
    assert reasons["userinfo"] == f"cannot connect to 127.0.0.1:{closed}: Connection refused"
    assert "https://hooks.example/…" in table.stdout
