"""``relay receive``: a webhook receiver for trying things out, in the spirit of NetBox's
``webhook_receiver``. It numbers and prints every request it gets and, given the secret, says
whether the signature (NetBox's ``X-Hook-Signature`` or Standard Webhooks') is valid."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax

from relay.cli.common import fail, visible
from relay.db import first_line
from relay.model import as_written

if TYPE_CHECKING:
    from aiohttp import web
from relay.render.sign import verify


def _application(console: Console, secret: str | None, status: int) -> web.Application:
    from aiohttp import web  # here: other commands start without it

    count = 0

    async def receive(request: web.Request) -> web.Response:
        nonlocal count
        count += 1
        body = await request.read()
        when = datetime.now(UTC).isoformat(timespec="milliseconds")
        head = escape(visible(f"{request.method} {request.path_qs}"))
        console.rule(f"[bold]#{count}[/] {when} {head}", align="left")
        for name, value in request.headers.items():
            line = f"[bold]{escape(visible(name))}:[/] {escape(visible(value))}"
            console.print(line, highlight=False, soft_wrap=True)
        console.print()
        try:
            pretty = as_written(body, indent=2)  # 10.00 stays 10.00, not 10.0
        except ValueError:
            text = visible(body.decode("utf-8", errors="replace"), keep="\n\t")
            console.print(text, highlight=False, markup=False)
        else:
            # Highlighted text, not a Syntax: a Syntax pads every line to the console's width,
            # trailing spaces a pipe or a file keeps.
            highlighted = Syntax("", "json", background_color="default").highlight(
                visible(pretty, keep="\n")
            )
            highlighted.rstrip()
            console.print(highlighted, soft_wrap=True)
        if secret is not None:
            checked = verify(request.headers, body, secret)
            if checked is None:
                console.print("[yellow]signature: none[/]")
            else:
                scheme, valid = checked
                verdict = "[green]valid[/]" if valid else "[bold red]INVALID[/]"
                console.print(f"signature ({scheme}): {verdict}")
        console.print(f"answered {status}", style="dim")
        console.file.flush()
        return web.Response(status=status, text="ok\n" if status < 300 else "")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", receive)
    return app


class _OneLine(logging.Formatter):
    """aiohttp's word on a request it could not read (a bad header, a body cut short): one
    line with the reason, not a traceback of aiohttp's parser."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            reason = " ".join(part.strip() for part in str(record.exc_info[1]).splitlines())
            text += f": {reason[:300] or type(record.exc_info[1]).__name__}"
        return visible(text)


def serve(host: str, port: int, secret: str | None, status: int) -> None:
    """Serve until Ctrl-C. OSError when the address cannot be listened on, before anything is
    printed."""
    console = Console(file=sys.stdout, soft_wrap=True)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    server_log = logging.getLogger("aiohttp.server")
    server_log.addHandler(handler)
    server_log.propagate = False
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(console, host, port, secret, status))


async def _serve(console: Console, host: str, port: int, secret: str | None, status: int) -> None:
    from aiohttp import web

    runner = web.AppRunner(_application(console, secret, status), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        console.print(
            f"listening on http://{host}:{port}/ (answering {status}"
            f"{', checking signatures' if secret is not None else ''}); Ctrl-C stops",
            highlight=False,
        )
        console.file.flush()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def receive(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 9000,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    secret: Annotated[
        str | None,
        typer.Option(help="Check each request's signature with this secret (say valid/invalid)."),
    ] = None,
    status: Annotated[
        int, typer.Option(min=100, max=599, help="HTTP status to answer with.")
    ] = 200,
) -> None:
    """A webhook receiver for trying relay out: prints every request it gets."""
    try:
        serve(host, port, secret, status)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else first_line(exc)
        fail(f"cannot listen on {host}:{port}: {reason}: give another --port or --host", 2)
