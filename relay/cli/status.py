"""``relay status``: how the relay is doing, read from the database alone (so it works from any
machine, whichever relays are running and wherever)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row

from relay.db import Conn
from relay.sqlfiles import query


@dataclass(frozen=True)
class Status:
    backlog: dict[str, Any]
    webhooks: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    relays: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        plain: dict[str, Any] = _plain(asdict(self))
        return plain


def read(conn: Conn, errors: int = 5) -> Status:
    with conn.cursor(row_factory=dict_row) as cur:
        backlog = cur.execute(query("status_backlog")).fetchone() or {}
        webhooks = cur.execute(query("status_webhooks")).fetchall()
        last_errors = cur.execute(query("status_errors"), {"limit": errors}).fetchall()
        relays = cur.execute(query("status_relays")).fetchall()
    return Status(dict(backlog), webhooks, last_errors, relays)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value
