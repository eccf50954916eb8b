"""Small helpers the tests share."""

from __future__ import annotations

from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row

Row = TypeVar("Row")


def outbox(connection: psycopg.Connection[Any], where: str = "true") -> list[dict[str, Any]]:
    """The outbox rows, oldest first, as dicts: what a user would SELECT."""
    with connection.cursor(row_factory=dict_row) as cur:
        return cur.execute(f"SELECT * FROM relay.outbox WHERE {where} ORDER BY id").fetchall()


def one_row(cursor: psycopg.Cursor[Row]) -> Row:
    """The row of a query that returns one: fetchone(), never None."""
    row = cursor.fetchone()
    assert row is not None, "the query returned no row"
    return row
