"""``relay run`` and ``relay config``: the service, and the settings it would run with."""

from __future__ import annotations

from typing import Annotated

import psycopg
import typer
from rich.table import Table

from relay.cli.common import (
    EnvFile,
    OptionalDsn,
    add_row,
    dsn_of,
    fail,
    load_settings,
    out,
    print_table,
    require_schema,
)


def run(
    dsn: OptionalDsn = None,
    env_file: EnvFile = None,
    processes: Annotated[
        int | None,
        typer.Option(
            min=1, max=64, help="Relay processes to run, one core each (default: RELAY_PROCESSES)."
        ),
    ] = None,
) -> None:
    """Deliver changes to webhooks until SIGTERM or SIGINT (knobs: RELAY_* variables)."""
    from relay.db import one_line
    from relay.service import supervisor
    from relay.service.process import CannotServe, serve

    settings = load_settings(env_file)
    database = dsn_of(dsn, settings)
    _preflight(database)
    count = processes or settings.processes
    try:
        if count > 1:
            supervisor.serve(settings, database, count, env_file)
        else:
            serve(settings, database)
    except (CannotServe, supervisor.ProcessCannotServe) as exc:
        fail(str(exc), 2)
    except psycopg.errors.InsufficientPrivilege as exc:
        fail(
            f"the database refused an operation: {one_line(exc)} (grant the service role its "
            "rights with sql/service_role.sql, again after each upgrade)",
            2,
        )


def _preflight(dsn: str) -> None:
    """Refuse to start on what waiting cannot fix: a server that says no to us, relay not
    installed, or a schema older or newer than this relay. A server that is down is waited
    for (relay run retries with backoff)."""
    from relay.db import DatabaseUnavailable, connect

    try:
        conn = connect(dsn)
    except DatabaseUnavailable as exc:
        if exc.refused:
            fail(f"the database refused the relay: {exc.detail}", 2)
        return
    with conn:
        require_schema(conn)


def config(
    env_file: EnvFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the effective settings (environment, then env file, then defaults), secrets
    masked."""
    shown = load_settings(env_file).shown()
    if as_json:
        out.print_json(data=shown)
        return
    table = Table("setting", "value")
    for name, value in shown.items():
        add_row(table, name, "" if value is None else str(value))
    print_table(table)
