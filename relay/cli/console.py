"""``relay console``: the operator console, a web application served by relay itself
(relay/console/, docs/console.md)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Annotated

import typer

from relay.cli.common import EnvFile, OptionalDsn, dsn_of, fail, out


def console(
    dsn: OptionalDsn = None,
    env_file: EnvFile = None,
    listen: Annotated[
        str | None,
        typer.Option(
            help="host:port to serve on (default: RELAY_CONSOLE_LISTEN, 127.0.0.1:8780).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve the operator console until SIGTERM or SIGINT: people sign in as PostgreSQL roles
    and see and act with those roles' rights (the DSN says where the database is; its own user
    is never used)."""
    from relay import settings as settings_module
    from relay.console.app import Config, serve
    from relay.service import systemd
    from relay.service.logs import configure

    try:
        overrides = {} if listen is None else {"console_listen": listen}
        settings = settings_module.load(env_file, **overrides)
    except settings_module.SettingsError as exc:
        message = str(exc)
        if listen is not None:
            message = message.replace("RELAY_CONSOLE_LISTEN", "--listen (or RELAY_CONSOLE_LISTEN)")
        fail(message, 2)
    database = dsn_of(dsn, settings)
    configure(fmt=settings.log_format)
    host, _, port = settings.console_listen.rpartition(":")
    host = host.strip("[]")
    config = Config(
        dsn=database,
        idle_seconds=settings.console_idle_seconds,
        secure_cookie=settings.console_secure_cookie,
        trust_forwarded=settings.console_trust_forwarded,
        template_env_globs=tuple(settings.template_env_globs),
        max_body_bytes=int(settings.max_body_bytes),
    )

    shown = f"[{host}]" if ":" in host else host
    address = f"http://{shown}:{port}"
    listening = asyncio.Event()

    def ready() -> None:
        out.print(f"relay console listening on {address}", highlight=False)
        listening.set()

    async def main() -> None:
        # Under systemd (deploy/relay-console.service, Type=notify): READY=1 once listening,
        # the watchdog fed from this loop, STOPPING=1 on SIGTERM; outside it, no-ops.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(serve(config, host, int(port), ready))
        helper = asyncio.create_task(
            systemd.supervise(listening.is_set, stop, status=f"listening on {address}")
        )
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        task.cancel()
        await helper
        with contextlib.suppress(asyncio.CancelledError):
            await task  # raises what made serving fail (OSError: the address is taken)

    try:
        asyncio.run(main())
    except OSError as exc:
        fail(f"cannot listen on {settings.console_listen}: {exc.strerror or exc}", 2)
