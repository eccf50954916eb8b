"""Does one webhook's trouble, or a large rule set, slow the others? Measured side by side.

    .venv/bin/python bench/isolation.py [--changes 10000] [--rounds 3]

Each round, on fresh scratch databases, a Worker (the code behind `relay run`) delivers
--changes inserts to a fast webhook (nginx on 127.0.0.1) in three set-ups, in rotating order:
- solo: one rule, one webhook;
- beside a slow one: a second webhook on the same changes whose receiver (another process)
  answers each request after 2 s;
- 1,000 rules: 100 tracked tables with 10 rules each, every rule with a condition; on the
  measured table one rule matches, the other nine are looked at and do not.
The clock stops when every change has reached the fast webhook. Prints the medians and the
ratio of each set-up to solo.
Needs nginx (apt-get install nginx-light).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import statistics
import sys
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import Nginx, drain, free_port

from relay.service import logs
from relay.store import Store
from relay.tempcluster import postgres_server, scratch_database

SETUPS = ("solo", "beside a slow one", "1,000 rules")


def slow_receiver(port: int, ready: Any) -> None:
    from aiohttp import web

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(2)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/slow", hook)
    ready.set()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def webhook(conn: psycopg.Connection[Any], name: str, url: str) -> None:
    conn.execute(
        "INSERT INTO relay.webhooks (name, payload_url, secret) VALUES (%s, %s, 's')", (name, url)
    )


def rule(conn: psycopg.Connection[Any], name: str, table: str, hook: str, cond: Any = None) -> None:
    conn.execute(
        "INSERT INTO relay.event_rules (name, tables, conditions, webhook_id)"
        " SELECT %s, ARRAY[%s], %s, id FROM relay.webhooks WHERE name = %s",
        (name, table, json.dumps(cond) if cond else None, hook),
    )


def prepare(dsn: str, setup: str, fast: str, slow: str, changes: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        Store(conn).install()
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text, qty int)")
        conn.execute("SELECT relay.track('items')")
        webhook(conn, "fast", fast)
        if setup == "1,000 rules":
            for table in range(100):
                name = "items" if table == 0 else f"other_{table}"
                if table:
                    conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, qty int)")
                    conn.execute("SELECT relay.track(%s)", (name,))
                for number in range(10):
                    wanted = 1 if number == 0 else -number  # only rule 0 matches qty = 1
                    cond = {"attr": "data.qty", "value": wanted}
                    rule(conn, f"{name} {number}", f"public.{name}", "fast", cond)
        else:
            rule(conn, "fast", "public.items", "fast")
        if setup == "beside a slow one":
            webhook(conn, "slow", slow)
            rule(conn, "slow", "public.items", "slow")
        conn.execute(
            "INSERT INTO items SELECT g, 'item ' || g, 1 FROM generate_series(1, %s) g", (changes,)
        )


FAST_DONE = """
SELECT count(*) >= %d FROM relay.deliveries d JOIN relay.webhooks w ON w.id = d.webhook_id
WHERE w.name = 'fast' AND d.status = 'delivered'
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("RELAY_DSN"))
    parser.add_argument("--changes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logs.configure(file=open(os.devnull, "w"))  # noqa: SIM115 (open for the whole run)
    nginx = Nginx("relay-isolation-")
    fast = nginx.url
    port = free_port()
    ready = multiprocessing.Event()
    slow_process = multiprocessing.Process(target=slow_receiver, args=(port, ready))
    slow_process.start()
    ready.wait(10)
    slow = f"http://127.0.0.1:{port}/slow"
    rates: dict[str, list[float]] = {setup: [] for setup in SETUPS}
    try:
        with postgres_server(args.dsn) as server:
            for round_no in range(args.rounds):
                order = SETUPS[round_no % 3 :] + SETUPS[: round_no % 3]
                for setup in order:
                    with scratch_database(server, "relay_iso") as dsn:
                        prepare(dsn, setup, fast, slow, args.changes)
                        rate = asyncio.run(drain(dsn, args.changes, 16, FAST_DONE % args.changes))
                    rates[setup].append(rate)
                    print(
                        f"  round {round_no + 1} {setup:>18}: {rate:7.0f} deliveries/s", flush=True
                    )
    finally:
        nginx.close()
        if slow_process.pid:
            os.kill(slow_process.pid, signal.SIGINT)
        slow_process.join(10)
    solo = statistics.median(rates["solo"])
    print(f"\n{args.changes} changes to the fast webhook, medians of {args.rounds} rounds:")
    for setup in SETUPS:
        median = statistics.median(rates[setup])
        print(f"  {setup:>18}: {median:7.0f} deliveries/s, {median / solo:.2f} of solo")


if __name__ == "__main__":
    main()
