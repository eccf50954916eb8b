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


def install_up_to(connection: psycopg.Connection[Any], version: int) -> None:
    """Install relay as the release whose last migration was ``version`` did: its migrations
    alone, in one transaction (an earlier schema to upgrade from)."""
    from relay import sqlfiles

    with connection.transaction():
        connection.execute(sqlfiles.read("bootstrap.sql").encode())
        for migration in sqlfiles.migrations()[:version]:
            connection.execute(migration.sql.encode())


def requests(
    connection: psycopg.Connection[Any], where: str = "true"
) -> list[tuple[str, str | None, str | None]]:
    """Each outbox row's event and the request its change recorded (path, method), by id."""
    return [(r["op"], r["request_path"], r["request_method"]) for r in outbox(connection, where)]
