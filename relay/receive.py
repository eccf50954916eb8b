"""``relay receive``: a webhook receiver for trying things out, in the spirit of NetBox's
``webhook_receiver``. It numbers and prints every request it gets and, given the secret, says
whether the signature (NetBox's ``X-Hook-Signature`` or Standard Webhooks') is valid."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from datetime import UTC, datetime

from aiohttp import web
from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax

from relay.sign import verify


def application(console: Console, secret: str | None, status: int) -> web.Application:
    count = 0

    async def receive(request: web.Request) -> web.Response:
        nonlocal count
        count += 1
        body = await request.read()
        when = datetime.now(UTC).isoformat(timespec="milliseconds")
        console.rule(
            f"[bold]#{count}[/] {when} {escape(request.method)} {escape(request.path_qs)}",
            align="left",
        )
        for name, value in request.headers.items():
            console.print(
                f"[bold]{escape(name)}:[/] {escape(value)}", highlight=False, soft_wrap=True
            )
        console.print()
        try:
            pretty = json.dumps(json.loads(body), indent=2, ensure_ascii=False)
        except ValueError:
            console.print(body.decode("utf-8", errors="replace"), highlight=False, markup=False)
        else:
            console.print(Syntax(pretty, "json", word_wrap=True))
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


def serve(host: str, port: int, secret: str | None, status: int) -> None:
    """Serve until Ctrl-C. OSError when the address cannot be listened on, before anything is
    printed."""
    console = Console(file=sys.stdout, soft_wrap=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(console, host, port, secret, status))


async def _serve(console: Console, host: str, port: int, secret: str | None, status: int) -> None:
    runner = web.AppRunner(application(console, secret, status), access_log=None)
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
