"""Small helpers the tests share."""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row


def outbox(connection: psycopg.Connection, where: str = "true") -> list[dict[str, object]]:
    """The outbox rows, oldest first, as dicts: what a user would SELECT."""
    with connection.cursor(row_factory=dict_row) as cur:
        return cur.execute(f"SELECT * FROM relay.outbox WHERE {where} ORDER BY id").fetchall()
