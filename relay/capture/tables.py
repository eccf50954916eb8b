"""Choosing which tables are captured: thin wrappers over ``relay.track`` / ``relay.untrack``.

The SQL functions are the interface (they work from any client); these exist so the CLI and
the tests speak Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import class_row

from relay.db import Conn
from relay.sqlfiles import query


@dataclass(frozen=True)
class TrackedTable:
    schema_name: str
    table_name: str
    partitioned: bool
    events: list[str]
    update_columns: list[str] | None
    exclude_columns: list[str]
    pk_columns: list[str]
    tracked_at: datetime
    capture_current: bool
    """False between DDL on the table and the regeneration of its capture functions."""
    model: str | None
    """The model name its changes carry (None: the table name)."""


def track(
    conn: Conn,
    table: str,
    *,
    events: Sequence[str] | None = None,
    update_columns: Sequence[str] | None = None,
    exclude_columns: Sequence[str] | None = None,
    model: str | None = None,
) -> None:
    """Attach capture to ``table`` (a name as SQL would write it), replacing earlier options."""
    conn.execute(
        query("track"),
        {
            "table": table,
            "events": list(events) if events is not None else None,
            "update_columns": list(update_columns) if update_columns is not None else None,
            "exclude_columns": list(exclude_columns) if exclude_columns is not None else None,
            "model": model,
        },
    )


def untrack(conn: Conn, table: str) -> bool:
    """Detach capture; False when the table was not tracked."""
    row = conn.execute(query("untrack"), {"table": table}).fetchone()
    return bool(row and row[0])


def tracked(conn: Conn) -> list[TrackedTable]:
    with conn.cursor(row_factory=class_row(TrackedTable)) as cur:
        return cur.execute(query("list_tracked")).fetchall()
