"""``relay demo``: relay at work on a scratch database, for someone seeing it the first time.

Everything runs in this process and on 127.0.0.1: a scratch database (dropped at the end), a
receiver on a free port, and a relay (the same Worker as ``relay run``) delivering to it while
the demo's SQL runs step by step.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import psycopg
import typer
from rich.console import Console
from rich.syntax import Syntax

from relay import sqlfiles
from relay.cli.common import fail
from relay.db import Conn, connect
from relay.model import dumps, loads_as_written
from relay.render.sign import verify
from relay.store import Store
from relay.tempcluster import NoPostgres, postgres_server, scratch_database

if TYPE_CHECKING:
    from aiohttp import web

    from relay.settings import Settings

_STEP = re.compile(r"^-- step: (.+)$", re.MULTILINE)
SECRETS = {"/payments": "whsec_ZGVtby1zZWNyZXQtZm9yLXBheW1lbnRz"}
DEFAULT_SECRET = "demo-secret"


WIDTH = 80
"""The demo's width without a terminal (piped, in a file): a terminal's default, which its
hand-laid SQL and folded bodies fit."""


def _console() -> Console:
    """Standard output with markup (the demo's text is its own), as wide as the terminal, or
    :data:`WIDTH` without one: unlike the other commands' output, the demo is read, not copied
    back, and a line of 10,000 columns (a rule) or of 400 (a body) is read by no one."""
    return Console(width=None if sys.stdout.isatty() else WIDTH)


def _settings() -> Settings:
    """Quick retries, so that the demo's failing receiver is seen retried; built when the demo
    runs (the environment's RELAY_* must not stop other commands from loading)."""
    from relay.settings import Settings

    return Settings(poll_interval=0.5, retry_base_seconds=0.5, retry_max_seconds=2)


TRY_NEXT = """\
-- In your own database (relay install, relay track, then a webhook and a rule):
--   relay receive --port 9000 --secret demo-secret   a receiver like the demo's
--   relay run                                        the relay (RELAY_DSN=...)
--   relay preview --rule 'order paid' --outbox-id 3  what a rule would send
--   relay status                                     backlog, webhooks, errors
-- Changes waiting to be sent, oldest first:
SELECT id, op, schema_name, table_name, pk, new, username, created_at
FROM relay.outbox WHERE status = 'pending' ORDER BY id;
-- What happened to each delivery, and every attempt:
SELECT d.outbox_id, w.name, d.status, d.attempts, d.last_error
FROM relay.deliveries d JOIN relay.webhooks w ON w.id = d.webhook_id
ORDER BY 1;
-- Send failed changes again (only to the webhooks that did not get them):
UPDATE relay.outbox SET status = 'pending' WHERE status = 'failed';
-- Tag the changes of a transaction:
BEGIN;
SET LOCAL relay.username = 'bob';
SET LOCAL relay.request_id = 'req-1';
...
COMMIT;"""


@dataclass(frozen=True)
class _Step:
    title: str
    sql: str


@dataclass(frozen=True)
class _Arrival:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    signature: tuple[str, bool] | None


def _steps(receiver: str = "127.0.0.1:9000") -> list[_Step]:
    parts = _STEP.split(sqlfiles.read("demo.sql"))
    return [
        _Step(title.strip(), sql.strip().replace("RECEIVER", receiver))
        for title, sql in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _show(console: Console, dsn: str | None) -> None:
    from relay.service import logs  # here: other commands start without structlog

    logs.configure(logging.WARNING)  # the demo shows deliveries itself; problems still show
    with postgres_server(dsn) as server, scratch_database(server, "relay_demo") as db:
        console.rule("[bold]relay demo")
        console.print(f"scratch database: [cyan]{psycopg.conninfo.conninfo_to_dict(db)['dbname']}")
        asyncio.run(_demo(console, db))
        console.rule("[bold]Try next")
        console.print(_sql(TRY_NEXT))
        console.print("\nThe scratch database has been dropped; nothing was left behind.")


async def _demo(console: Console, db: str) -> None:
    from relay.delivery.worker import Worker  # here: other commands start without it

    arrivals: list[_Arrival] = []
    runner, address = await _receiver(arrivals)
    try:
        with connect(db) as conn:
            Store(conn).install()
            console.print(
                f"installed relay schema version {sqlfiles.latest_version()}\n"
                f"receiver listening on http://{address}/; starting the relay\n"
            )
            worker = Worker(_settings(), db, relay_id="demo")
            stop = asyncio.Event()
            relay = asyncio.create_task(worker.run(stop))
            try:
                seen = shown = 0
                for number, step in enumerate(_steps(address), 1):
                    console.print(f"[bold]{number}. {step.title}")
                    console.print(_sql(step.sql))
                    await asyncio.to_thread(conn.execute, step.sql.encode())
                    seen = _show_new_changes(console, conn, seen)
                    await _settled(conn, relay)
                    shown = _show_arrivals(console, arrivals, shown)
            finally:
                stop.set()
                await relay
            _summary(console, conn)
    finally:
        await runner.cleanup()


async def _receiver(arrivals: list[_Arrival]) -> tuple[web.AppRunner, str]:
    from aiohttp import web

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        secret = SECRETS.get(request.path, DEFAULT_SECRET)
        arrivals.append(
            _Arrival(
                request.method,
                request.path,
                dict(request.headers),
                body,
                verify(request.headers, body, secret),
            )
        )
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receive)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    return runner, f"127.0.0.1:{sock.getsockname()[1]}"


async def _settled(conn: Conn, relay: asyncio.Task[None]) -> None:
    """Wait until the relay has dealt with every change (at most 20 s)."""

    def pending() -> int:
        return Store(conn).demo_pending()

    for _ in range(200):
        if relay.done():
            relay.result()  # the relay stopped: show why
        if await asyncio.to_thread(pending) == 0:
            return
        await asyncio.sleep(0.1)


def _show_new_changes(console: Console, conn: Conn, after: int) -> int:
    rows = Store(conn).demo_changes_after(after)
    if not rows:
        console.print("   [dim]→ nothing recorded in relay.outbox[/]")
        return after
    console.print("   → relay.outbox gained:")
    for row in rows:
        console.print(
            f"   [bold]#{row.id} {row.op}[/] {row.schema_name}.{row.table_name}"
            f"  pk={row.pk}  username={row.username}",
            highlight=False,
        )
        for label, image in (("old", row.old), ("new", row.new)):
            if image is not None:
                console.print(_folded(image, 6, console.width, f"{label}: "), highlight=False)
    return rows[-1].id


def _show_arrivals(console: Console, arrivals: list[_Arrival], shown: int) -> int:
    fresh = arrivals[shown:]
    if not fresh:
        console.print("   [dim]→ the receiver got nothing[/]\n")
        return shown
    console.print("   → the receiver got:")
    for arrival in fresh:
        console.print(f"   [bold]{arrival.method} {arrival.path}[/]", highlight=False)
        for name in ("X-Relay-Event", "X-Relay-Delivery", "X-Hook-Signature", "webhook-id"):
            if name in arrival.headers:
                console.print(f"      {name}: {_short(arrival.headers[name])}", highlight=False)
        console.print(_folded(arrival.body, 6, console.width), highlight=False)
        console.print(f"      signature: {_verdict(arrival.signature)}", highlight=False)
    console.print()
    return len(arrivals)


def _summary(console: Console, conn: Conn) -> None:
    console.rule("[bold]Where every change went")
    rows = Store(conn).demo_summary()
    for change_id, op, status, deliveries in rows:
        console.print(f"#{change_id} {op}: {status} ({deliveries})", highlight=False)
    console.print()


def _folded(body: str | bytes, indent: int, width: int, head: str = "") -> str:
    """A JSON body or image as lines that fit in ``width`` columns where they can: a value
    that fits stays on one line, one that does not has a line per member (a 400-character body
    on one line is cut by the terminal or runs off a page). Numbers keep their digits: 120.00
    stays 120.00. Not JSON: the text, folded by the console."""
    try:
        value = loads_as_written(body)
    except ValueError:
        text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
        return " " * indent + head + text
    return "\n".join(_fold(value, indent, width, head, ""))


def _fold(value: Any, indent: int, width: int, head: str, tail: str) -> list[str]:
    """``value`` after ``head`` and before ``tail`` at ``indent``: one line if it fits in
    ``width``, else its members two columns in, as many to a line as fit (a line each would
    make a change's body forty lines long), a member too long for a line folded the same way."""
    pad = " " * indent
    flat = f"{pad}{head}{dumps(value)}{tail}"
    if len(flat) <= width or not isinstance(value, dict | list) or not value:
        return [flat]
    members = list(value.items()) if isinstance(value, dict) else [(None, v) for v in value]
    opener, closer = ("{", "}") if isinstance(value, dict) else ("[", "]")
    inner = " " * (indent + 2)
    lines = [f"{pad}{head}{opener}"]
    line = ""
    for number, (key, member) in enumerate(members, 1):
        key_head = "" if key is None else f"{dumps(key)}: "
        comma = "," if number < len(members) else ""
        piece = f"{key_head}{dumps(member)}{comma}"
        if line and len(inner) + len(line) + 1 + len(piece) <= width:
            line += f" {piece}"
            continue
        if line:
            lines.append(inner + line)
            line = ""
        if len(inner) + len(piece) <= width:
            line = piece
        else:
            lines += _fold(member, indent + 2, width, key_head, comma)
    if line:
        lines.append(inner + line)
    lines.append(f"{pad}{closer}{tail}")
    return lines


def _short(value: str) -> str:
    return value if len(value) <= 40 else value[:37] + "..."


def _verdict(checked: tuple[str, bool] | None) -> str:
    if checked is None:
        return "[yellow]none[/]"
    scheme, valid = checked
    return f"{scheme}, {'[green]valid[/]' if valid else '[bold red]INVALID[/]'}"


def _sql(text: str) -> Syntax:
    return Syntax(text, "sql", theme="ansi_dark", background_color="default", word_wrap=True)


def demo(
    dsn: Annotated[
        str | None,
        typer.Option(
            "--dsn",
            envvar="RELAY_DSN",
            help="Server to make the scratch database on (default: 127.0.0.1:5432, or a "
            "throwaway cluster).",
        ),
    ] = None,
) -> None:
    """Show relay at work on a scratch database that is dropped afterwards."""
    try:
        _show(_console(), dsn)
    except NoPostgres as exc:
        fail(str(exc), 2)
