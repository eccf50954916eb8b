"""What every ``relay`` command shares: consoles, the --dsn option, and failing clearly."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import psycopg
import typer
from rich.console import Console
from rich.table import Table

from relay.db import Conn, DatabaseUnavailable, connect

out = Console()
err = Console(stderr=True)

Dsn = Annotated[
    str,
    typer.Option(
        "--dsn",
        envvar="RELAY_DSN",
        help="libpq connection string or URI of the database (or set RELAY_DSN).",
        show_default=False,
    ),
]


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def database(dsn: str) -> Iterator[Conn]:
    """A connection whose failures end the command with one clear line.

    Exit code 2 means the database could not be used at all (configuration); 1 means it
    refused what we asked (a bad table name, missing rights...).
    """
    try:
        conn = connect(dsn)
    except DatabaseUnavailable as exc:
        fail(str(exc), 2)
    try:
        with conn:
            yield conn
    except psycopg.Error as exc:
        message = exc.diag.message_primary or str(exc)
        if exc.diag.message_hint:
            message += f" (hint: {exc.diag.message_hint})"
        fail(message, 1)


def print_table(table: Table) -> None:
    """Print a table that never cuts a value short, however narrow the terminal."""
    for column in table.columns:
        column.overflow = "fold"
    out.print(table)


def print_fields(fields: Mapping[str, Any]) -> None:
    for key, value in fields.items():
        out.print(f"[bold]{key}:[/] {value}", highlight=False, soft_wrap=True)
