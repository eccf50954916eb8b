"""The delivery protocol's SQL driven by hand, one step at a time, as a relay drives it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

import psycopg
from pydantic import ByteSize

from relay.db import Conn
from relay.delivery import record
from relay.delivery.fanout import FanOut
from relay.delivery.holding import Holding
from relay.delivery.metrics import Metrics
from relay.delivery.record import Result
from relay.delivery.send import Outcome
from relay.rules.watch import RuleWatcher
from relay.settings import Settings
from relay.sqlfiles import query
from relay.store import AsyncStore
from support.hooks import add_rule, add_webhook


def fan_out(conn: Conn, max_body_bytes: int = Settings().max_body_bytes) -> int:
    """Fan out one batch as a relay does (relay/delivery/fanout.py); the changes it matched."""
    settings = Settings(max_body_bytes=ByteSize(max_body_bytes))
    dsn = conn.info.dsn

    async def once() -> int:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
            rules = RuleWatcher(dsn)
            stage = FanOut(settings, "test", rules, Holding(settings), Metrics(), lambda: None)
            return await stage.once(AsyncStore(aconn))

    return asyncio.run(once())


def claim_parameters(
    relay_id: str = "r1",
    lease: float = 30.0,
    per_webhook: int = 100,
    busy: Mapping[int, tuple[int, int]] | Iterable[tuple[int, tuple[int, int]]] = (),
    room: int = 10**9,
    max_change: int = 10**9,
    **more: object,
) -> dict[str, object]:
    """What a relay passes to claim_deliveries: ``busy`` maps webhooks to the deliveries and
    bytes they hold."""
    busy = dict(busy)
    return {
        "limit": 100,
        "lease_seconds": lease,
        "relay_id": relay_id,
        "per_webhook": per_webhook,
        "busy_ids": list(busy),
        "busy_counts": [n for n, _ in busy.values()],
        "busy_bytes": [size for _, size in busy.values()],
        "bytes_free": room,
        "bytes_per_webhook": room,
        "max_change_bytes": max_change,
        "batched_ids": [],
        "window_ids": [],
        "window_sizes": [],
        "pace_ahead": 1.0,
        "answered_webhooks": [],
        "answered_ids": [],
        **more,
    }


def claim(
    conn: Conn,
    relay_id: str = "r1",
    lease: float = 30.0,
    paused: Iterable[int] = (),
    per_webhook: int = 100,
) -> list[tuple[int, int]]:
    """Claim as a relay would; ``paused`` webhooks have every slot busy."""
    busy = {hook: (per_webhook, 0) for hook in paused}
    rows = conn.execute(
        query("claim_deliveries"), claim_parameters(relay_id, lease, per_webhook, busy)
    ).fetchall()
    return sorted((r[0], r[1]) for r in rows)


def finish(
    conn: Conn,
    outbox_id: int,
    webhook_id: int,
    status: str,
    relay_id: str = "r1",
    retry_in: float = 0.0,
) -> int:
    """Record an attempt's outcome as a relay would; the number of deliveries it changed."""
    ok = status == "delivered"
    outcome = Outcome(
        ok=ok, status=200 if ok else 500, duration=0.005, error=None if ok else "HTTP 500"
    )
    result = Result(outbox_id, webhook_id, 1, status, retry_in, outcome)
    row = conn.execute(query("record_outcomes"), record.parameters([result], relay_id)).fetchone()
    conn.execute(query("finish_changes"), {"ids": [outbox_id]})
    return int(row[0]) if row else 0


def setup(rconn: Conn) -> tuple[int, int]:
    rconn.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
    rconn.execute("CREATE TABLE notes (body text)")
    rconn.execute("SELECT relay.track('items'), relay.track('notes')")
    a = add_webhook(rconn, name="a")
    b = add_webhook(rconn, name="b")
    add_rule(rconn, a, name="items-a", tables=["public.items"])
    add_rule(rconn, b, name="items-b", tables=["public.items"], events=["update"])
    return a, b


def claim_batch(conn: Conn, webhook_id: int, batch_size: int, relay_id: str = "r1") -> list[int]:
    """Claim one batch for a batched webhook as a relay would: its changes, in id order."""
    params = {
        "webhook_id": webhook_id,
        "batch_size": batch_size,
        "wait_ms": 0,
        "lease_seconds": 30.0,
        "relay_id": relay_id,
        "bytes_free": 10**9,
        "max_change_bytes": 10**9,
        "body_bytes": 10**9,
        "body_overhead": 600,
        "pace_ahead": 1.0,
        "answered_webhooks": [],
        "answered_ids": [],
    }
    rows = conn.execute(query("claim_batch"), params).fetchall()
    return [row[0] for row in rows if row[0] is not None]
