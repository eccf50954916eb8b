"""What coalescing (webhooks.coalesce_changes, issue 29) costs at fan-out and saves in requests,
side by side in one run.

    .venv/bin/python bench/coalesce.py [--rows 2000] [--per-transaction 5] [--rounds 1]
        [--concurrency 16]

For coalescing off and on, on a scratch database each (on $RELAY_DSN's server, 127.0.0.1:5432,
or a throwaway cluster), two workloads. NetBox-like: --rows rows each inserted then updated
twice in its transaction (--per-transaction rows a transaction: 3 changes a row). Nothing to
coalesce: 3 x --rows rows inserted, each changed once (the cost of grouping alone). One webhook
and one rule without conditions. Fan-out: a Worker (the code behind `relay run`) fans the
outbox out while the webhook is paused (so nothing is claimed); changes fanned out per second
from its start to the last change marked fanned out. Then, NetBox-like only, the webhook is
resumed and the same Worker delivers to a receiver (an aiohttp server in a process of its own,
answering 200 at once) that counts the requests; changes finished per second from the resume.
Medians of --rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import statistics
import time
from typing import Any

import psycopg
from ordering import serve
from throughput import free_port

from relay.delivery.worker import Worker
from relay.service import logs
from relay.settings import Settings
from relay.store import Store
from relay.tempcluster import postgres_server, scratch_database


def load(dsn: str, url: str, rows: int, per_transaction: int, coalesce: bool, updates: int) -> int:
    """The workload; how many changes it made."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        Store(conn).install()
        conn.execute("CREATE TABLE devices (id int PRIMARY KEY, name text, counter int)")
        conn.execute("SELECT relay.track('devices')")
        conn.execute(
            "INSERT INTO relay.webhooks (name, payload_url, secret, coalesce_changes, paused_at,"
            " paused_reason)"
            " VALUES ('bench', %s, 's', %s, now(), 'operator')",
            (url, coalesce),
        )
        conn.execute(
            "INSERT INTO relay.event_rules (name, tables, webhook_id)"
            " SELECT 'all', ARRAY['public.devices'], id FROM relay.webhooks"
        )
        for start in range(0, rows, per_transaction):
            with conn.transaction():
                span = (start + 1, min(start + per_transaction, rows))
                conn.execute(
                    "INSERT INTO devices SELECT g, 'd' || g, 0"
                    " FROM generate_series(%s::int, %s::int) g",
                    span,
                )
                for counter in range(1, updates + 1):
                    conn.execute(
                        "UPDATE devices SET counter = %s WHERE id BETWEEN %s AND %s",
                        (counter, *span),
                    )
        return int(conn.execute("SELECT count(*) FROM relay.outbox").fetchone()[0])  # type: ignore[index]


async def count(conn: psycopg.AsyncConnection[Any], query: str) -> int:
    cur = await conn.execute(query)
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def measure(dsn: str, changes: int, concurrency: int, deliver: bool) -> tuple[float, float]:
    """Changes fanned out a second (webhook paused), then, if ``deliver``, changes finished a
    second (resumed; else 0)."""
    settings = Settings(webhook_concurrency=concurrency, poll_interval=0.2)
    worker = Worker(settings, dsn, relay_id="bench")
    stop = asyncio.Event()
    start = time.monotonic()
    task = asyncio.create_task(worker.run(stop))
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            left = "SELECT count(*) FROM relay.outbox WHERE fanned_out_at IS NULL"
            while await count(conn, left):
                await asyncio.sleep(0.01)
            fanned = changes / (time.monotonic() - start)
            if not deliver:
                return fanned, 0.0
            await conn.execute("UPDATE relay.webhooks SET paused_at = NULL, paused_reason = NULL")
            resumed = time.monotonic()
            pending = "SELECT count(*) FROM relay.outbox WHERE status = 'pending'"
            while await count(conn, pending):
                await asyncio.sleep(0.02)
            return fanned, changes / (time.monotonic() - resumed)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def case(
    server: str, coalesce: bool, updates: int, args: argparse.Namespace
) -> tuple[int, float, float, int]:
    fanned, finished = [], []
    requests = changes = 0
    for _ in range(args.rounds):
        port = free_port()
        manager = multiprocessing.Manager()
        stats = manager.dict()
        ready = multiprocessing.Event()
        proc = multiprocessing.Process(target=serve, args=(port, 0.0, ready, stats), daemon=True)
        proc.start()
        ready.wait(10)
        try:
            with scratch_database(server, "relay_coalesce") as dsn:
                url = f"http://127.0.0.1:{port}/hook"
                rows = args.rows if updates else 3 * args.rows
                changes = load(dsn, url, rows, args.per_transaction, coalesce, updates)
                rate, done = asyncio.run(measure(dsn, changes, args.concurrency, bool(updates)))
                fanned.append(rate)
                finished.append(done)
            requests = int(stats.get("requests", 0))
        finally:
            proc.terminate()
            proc.join()
            manager.shutdown()
    return changes, statistics.median(fanned), statistics.median(finished), requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--per-transaction", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    logs.configure(level=logging.WARNING)
    print(
        f"{'workload':>19} {'coalesce':>8} {'changes':>7} {'fanned out/s':>12}"
        f" {'finished/s':>10} {'requests':>8}"
    )
    with postgres_server(args.dsn) as server:
        for workload, updates in (("netbox-like", 2), ("nothing to coalesce", 0)):
            for coalesce in (False, True):
                changes, fanned, finished, requests = case(server, coalesce, updates, args)
                print(
                    f"{workload:>19} {'on' if coalesce else 'off':>8} {changes:>7}"
                    f" {fanned:>12.0f} {f'{finished:.0f}' if updates else '-':>10}"
                    f" {requests if updates else '-':>8}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
