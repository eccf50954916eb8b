"""What each ordering scope costs in throughput: row, transaction and key, one change a request
and in batches, against a receiver that answers at once and one that takes 20 ms.

    .venv/bin/python bench/ordering.py [--changes 2000] [--slow-changes 400] [--rounds 2]
        [--concurrency 16] [--tenants 16] [--batch 10]

For each case, on a scratch database (on $RELAY_DSN's server, 127.0.0.1:5432, or a throwaway
cluster): --changes inserts into a tracked table (--slow-changes against the slow receiver),
five rows per transaction, each row of one of --tenants tenants; one webhook (its ordering and
batch_size set in SQL) and one rule. Then a Worker (the code behind `relay run`, in this
process, RELAY_WEBHOOK_CONCURRENCY=--concurrency) drains the outbox; the rate is changes per
second from its start to the last change marked delivered (fan-out, claims, sends and records
included), the median of --rounds. The receiver is an aiohttp server in a process of its own
answering 200, at once or after 20 ms; it counts the requests and the most it had in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import socket
import statistics
import time
from typing import Any

import psycopg
from aiohttp import web

from relay.delivery.worker import Worker
from relay.service import logs
from relay.settings import Settings
from relay.store import Store
from relay.tempcluster import postgres_server, scratch_database


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(port: int, delay: float, ready: Any, stats: Any) -> None:
    """The receiver (a process of its own): 200 after ``delay`` seconds."""
    flying = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal flying
        await request.read()
        flying += 1
        stats["most"] = max(stats.get("most", 0), flying)
        if delay:
            await asyncio.sleep(delay)
        flying -= 1
        stats["requests"] = stats.get("requests", 0) + 1
        return web.Response(text="ok")

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def load(dsn: str, url: str, changes: int, tenants: int, ordering: str, batch: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        Store(conn).install()
        conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, tenant text, v int)")
        conn.execute("SELECT relay.track('orders')")
        conn.execute(
            "INSERT INTO relay.webhooks (name, payload_url, secret, batch_size, ordering,"
            " ordering_key) VALUES ('bench', %s, 's', %s, %s, %s)",
            (url, batch, ordering, "{{ data.tenant }}" if ordering == "key" else None),
        )
        conn.execute(
            "INSERT INTO relay.event_rules (name, tables, webhook_id)"
            " SELECT 'all', ARRAY['public.orders'], id FROM relay.webhooks"
        )
        for start in range(0, changes, 5):
            with conn.transaction():
                conn.execute(
                    "INSERT INTO orders (tenant, v)"
                    " SELECT 't' || ((%s + g) %% %s), g FROM generate_series(0, %s) g",
                    (start, tenants, min(5, changes - start) - 1),
                )


async def drain(dsn: str, changes: int, concurrency: int) -> float:
    settings = Settings(webhook_concurrency=concurrency, poll_interval=0.2)
    worker = Worker(settings, dsn, relay_id="bench")
    stop = asyncio.Event()
    start = time.monotonic()
    task = asyncio.create_task(worker.run(stop))
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            while True:
                cur = await conn.execute(
                    "SELECT count(*) FROM relay.outbox WHERE status = 'delivered'"
                )
                row = await cur.fetchone()
                if row is not None and row[0] >= changes:
                    break
                await asyncio.sleep(0.02)
        return changes / (time.monotonic() - start)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def case(
    server: str, ordering: str, batch: int, delay: float, changes: int, args: argparse.Namespace
) -> tuple[float, int, int]:
    rates = []
    requests = most = 0
    for _ in range(args.rounds):
        port = free_port()
        manager = multiprocessing.Manager()
        stats = manager.dict()
        ready = multiprocessing.Event()
        proc = multiprocessing.Process(target=serve, args=(port, delay, ready, stats), daemon=True)
        proc.start()
        ready.wait(10)
        try:
            with scratch_database(server, "relay_ord") as dsn:
                load(dsn, f"http://127.0.0.1:{port}/hook", changes, args.tenants, ordering, batch)
                rates.append(asyncio.run(drain(dsn, changes, args.concurrency)))
            requests, most = stats.get("requests", 0), stats.get("most", 0)
        finally:
            proc.terminate()
            proc.join()
            manager.shutdown()
    return statistics.median(rates), requests, most


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn")
    parser.add_argument("--changes", type=int, default=2000)
    parser.add_argument("--slow-changes", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tenants", type=int, default=16)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--only", help="a scope to run alone (row, transaction, key)")
    args = parser.parse_args()
    logs.configure(level=logging.WARNING)
    print(
        f"{'receiver':>9} {'scope':>12} {'batch':>5} {'changes':>7} {'changes/s':>10}"
        f" {'requests':>8} {'most in flight':>14}"
    )
    with postgres_server(args.dsn) as server:
        for delay, changes in ((0.0, args.changes), (0.02, args.slow_changes)):
            for batch in (1, args.batch):
                for ordering in ("row", "transaction", "key"):
                    if args.only and ordering != args.only:
                        continue
                    rate, requests, most = case(server, ordering, batch, delay, changes, args)
                    print(
                        f"{int(delay * 1000):>7}ms {ordering:>12} {batch:>5} {changes:>7}"
                        f" {rate:>10.0f} {requests:>8} {most:>14}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
