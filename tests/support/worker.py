"""relay run in the test's own event loop, and what the end-to-end tests wait on and look at."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import psycopg

from relay.db import Conn
from relay.delivery.worker import Worker
from relay.settings import Settings

FAST = Settings(
    poll_interval=0.2,
    retry_base_seconds=0.05,
    retry_max_seconds=0.5,
    lease_seconds=5,
    shutdown_grace_seconds=1,
)


@asynccontextmanager
async def running(
    dsn: str, settings: Settings = FAST, relay_id: str | None = None
) -> AsyncIterator[Worker]:
    worker = Worker(settings, dsn, relay_id=relay_id)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def sql(dsn: str, *statements: str) -> None:
    def run() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)

    await asyncio.to_thread(run)


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "timed out waiting"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def setup(
    conn: Conn, url: str, name: str = "hook", *, secret: str = "s3cr3t", **webhook: object
) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, v int)")
    conn.execute("SELECT relay.track('items')")
    columns = {"name": name, "payload_url": url, "secret": secret, **webhook}
    conn.execute(
        f"INSERT INTO relay.webhooks ({', '.join(columns)}) "
        f"VALUES ({', '.join(['%s'] * len(columns))})",
        list(columns.values()),
    )
    conn.execute(
        "INSERT INTO relay.event_rules (name, tables, webhook_id) SELECT %s,"
        " ARRAY['public.items'], id FROM relay.webhooks WHERE name = %s",
        (name, name),
    )


def outbox_statuses(conn: Conn) -> list[str]:
    return [row[0] for row in conn.execute("SELECT status::text FROM relay.outbox ORDER BY id")]
