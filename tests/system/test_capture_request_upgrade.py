"""Changes pending across the upgrade to 0028 (a release before it installed, its relay
commands run as processes): they keep no request and are delivered (the request itself:
tests/integration/test_capture_request.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg

from relay.db import Conn
from relay.store import Store
from support.db import requests
from support.hooks import add_rule, add_webhook
from support.receivers import receiver
from support.releases import command, unpack
from support.worker import outbox_statuses, running, until

BEFORE_REQUEST = "a7df833"


def test_changes_pending_across_the_upgrade_keep_no_request_and_are_delivered(
    db_dsn: str, tmp_path: Path
) -> None:
    """A release before 0028 recorded changes, with the settings set (it ignored them), and
    left them pending; an application's session stays open across the upgrade. After it, those
    changes have NULL path and method and are delivered as any other, and the same session's
    next change records its request: the regenerated capture is what its next statement runs."""
    older = unpack(BEFORE_REQUEST, tmp_path)
    done = command(older, "install", dsn=db_dsn)
    assert done.returncode == 0, done.stderr

    async def scenario(conn: Conn, app: Conn) -> int:
        async with receiver() as r:
            conn.execute("CREATE TABLE orders (id int PRIMARY KEY, v int)")
            conn.execute("SELECT relay.track('orders')")
            hook = add_webhook(conn, name="hook", payload_url=r.url)
            add_rule(conn, hook, name="hook", tables=["public.orders"])
            app.execute("SET relay.request_path = '/api/orders/'")
            app.execute("SET relay.request_method = 'POST'")
            app.execute("INSERT INTO orders VALUES (1, 0), (2, 0)")
            Store(conn).install()
            app.execute("UPDATE orders SET v = 1 WHERE id = 1")
            async with running(db_dsn):
                await until(lambda: outbox_statuses(conn) == ["delivered"] * 3)
            return len(r.requests)

    with (
        psycopg.connect(db_dsn, autocommit=True) as conn,
        psycopg.connect(db_dsn, autocommit=True) as app,
    ):
        assert asyncio.run(scenario(conn, app)) == 3
        assert requests(conn) == [
            ("insert", None, None),
            ("insert", None, None),
            ("update", "/api/orders/", "POST"),
        ]
