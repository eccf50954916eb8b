"""What the ordering tests share (tests/integration/test_ordering_scope.py and
test_steering_faults.py): a webhook ordered as asked, the changes of a request's body, and
whether everything has been delivered."""

from __future__ import annotations

from typing import Any

from relay.db import Conn


def hook(
    conn: Conn,
    url: str,
    tables: list[str],
    *,
    ordering: str = "row",
    ordering_key: str | None = None,
    name: str = "mirror",
    **columns: object,
) -> None:
    """A webhook and a rule for ``tables``; ordering set in SQL (the CLI's options are another
    change's)."""
    values = {"name": name, "payload_url": url, "secret": "s", **columns}
    conn.execute(
        f"INSERT INTO relay.webhooks ({', '.join(values)})"
        f" VALUES ({', '.join(['%s'] * len(values))})",
        list(values.values()),
    )
    conn.execute(
        "UPDATE relay.webhooks SET ordering = %s, ordering_key = %s WHERE name = %s",
        (ordering, ordering_key, name),
    )
    conn.execute(
        "INSERT INTO relay.event_rules (name, tables, webhook_id)"
        " SELECT %s, %s, id FROM relay.webhooks WHERE name = %s",
        (name, tables, name),
    )


def changes(body: Any) -> list[dict[str, Any]]:
    return body if isinstance(body, list) else [body]


def settled(conn: Conn) -> bool:
    """Every change finished, every delivery delivered."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM relay.outbox WHERE status = 'pending'),"
        " (SELECT count(*) FROM relay.deliveries WHERE status <> 'delivered')"
    ).fetchone()
    assert row is not None
    return row == (0, 0)
