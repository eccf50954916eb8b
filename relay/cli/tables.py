"""``relay track``, ``untrack`` and ``tracked``: which tables are captured."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from relay.cli.common import (
    Dsn,
    add_row,
    out,
    print_table,
    table_named,
)
from relay.cli.common import database as _database
from relay.rules import ruleset
from relay.store import Store


def _split(value: str | None) -> list[str] | None:
    from relay.settings import comma_list  # here: the other commands start without pydantic

    return None if value is None else comma_list(value)


def track(
    table: Annotated[str, typer.Argument(help="Table to capture, e.g. public.orders.")],
    dsn: Dsn,
    events: Annotated[
        str | None,
        typer.Option(help="Comma-separated subset of insert,update,delete,truncate (default all)."),
    ] = None,
    update_columns: Annotated[
        str | None,
        typer.Option(help="Record an UPDATE only when one of these columns changed."),
    ] = None,
    exclude_columns: Annotated[
        str | None,
        typer.Option(help="Columns never written to the outbox (secrets, tokens)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help='Model name webhooks see, e.g. dcim.device: model "device", object_type '
            '"dcim.device" (default: the table name).'
        ),
    ] = None,
) -> None:
    """Capture changes to TABLE into the outbox (running it again replaces the options)."""
    with _database(dsn) as conn:
        store = Store(conn)
        found = table_named(store, table)
        store.track(
            found.name,
            events=_split(events),
            update_columns=_split(update_columns),
            exclude_columns=_split(exclude_columns),
            model=model,
        )
    out.print(f"tracking {table}", highlight=False)


def untrack(
    table: Annotated[str, typer.Argument(help="Table to stop capturing.")],
    dsn: Dsn,
) -> None:
    """Stop capturing TABLE (changes already in the outbox stay)."""
    with _database(dsn) as conn:
        store = Store(conn)
        was_tracked = store.untrack(table_named(store, table).name)
    out.print(f"{'untracked' if was_tracked else 'was not tracked:'} {table}", highlight=False)


def tracked(dsn: Dsn) -> None:
    """List the tracked tables and their options."""
    with _database(dsn) as conn:
        rows = Store(conn).tracked()
    table = Table(
        "table",
        "model",
        "events",
        "update columns",
        "excluded",
        "primary key",
        "partitioned",
        "capture",
    )
    for row in rows:
        add_row(
            table,
            ruleset.rule_table(row.schema_name, row.table_name),
            row.model or "-",
            ",".join(row.events),
            ",".join(row.update_columns or []) or "any",
            ",".join(row.exclude_columns) or "-",
            ",".join(row.pk_columns) or "(none)",
            "yes" if row.partitioned else "no",
            "current" if row.capture_current else "catching up after DDL",
        )
    print_table(table)
