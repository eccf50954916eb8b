"""Webhooks and rules written straight into relay's tables, as a user's SQL would."""

from __future__ import annotations

from psycopg.types.json import Jsonb

from relay.db import Conn
from support.db import one_row

GOOD_WEBHOOK = {"name": "hook", "payload_url": "https://example.test/hooks/relay"}


def add_webhook(conn: Conn, **fields: object) -> int:
    row = {**GOOD_WEBHOOK, **fields}
    columns = ", ".join(row)
    marks = ", ".join(f"%({k})s" for k in row)
    webhook_id: int = one_row(
        conn.execute(f"INSERT INTO relay.webhooks ({columns}) VALUES ({marks}) RETURNING id", row)
    )[0]
    return webhook_id


def add_rule(conn: Conn, webhook_id: int, **fields: object) -> int:
    row = {"name": "rule", "tables": ["public.orders"], "webhook_id": webhook_id, **fields}
    if "conditions" in row:
        row["conditions"] = Jsonb(row["conditions"])
    columns = ", ".join(row)
    marks = ", ".join(f"%({k})s" for k in row)
    rule_id: int = one_row(
        conn.execute(
            f"INSERT INTO relay.event_rules ({columns}) VALUES ({marks}) RETURNING id", row
        )
    )[0]
    return rule_id


def add(
    rconn: Conn,
    name: str,
    table: str = "public.items",
    conditions: str | None = None,
    **webhook: str,
) -> None:
    columns = {"name": name, "secret": "s", **webhook}
    rconn.execute(
        f"INSERT INTO relay.webhooks ({', '.join(columns)}) "
        f"VALUES ({', '.join(['%s'] * len(columns))})",
        list(columns.values()),
    )
    rconn.execute(
        "INSERT INTO relay.event_rules (name, tables, conditions, webhook_id)"
        " SELECT %s, ARRAY[%s], %s, id FROM relay.webhooks WHERE name = %s",
        (name, table, conditions, name),
    )
