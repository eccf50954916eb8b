"""What a webhook's ``related`` option costs per change: with it and without, side by side.

    .venv/bin/python bench/related.py [--changes 3000] [--rounds 3]

1. Per change, in this process: the default body of a dcim_device change alone (off), and the
   related rows read for a claim of 100 and of 1,000 such changes (relay.related_rows: one
   query for the claim) plus the body with data.site spliced in (on). Each referenced row is a
   distinct dcim_site row.
2. Deliveries per second of a Worker (the code behind `relay run`) draining --changes inserts
   to a receiver process, with the option and without, --rounds each, alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import drain, free_port, receiver_process

from relay.delivery import related
from relay.model import Webhook
from relay.render.request import default_body
from relay.service import logs
from relay.store import AsyncStore, Claimed, Store
from relay.tempcluster import postgres_server, scratch_database

RELATED = '{"site_id": ["name", "slug"]}'


def load(dsn: str, url: str, changes: int, with_related: bool) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        Store(conn).install()
        conn.execute("CREATE TABLE dcim_site (id int PRIMARY KEY, name text, slug text)")
        conn.execute(
            "CREATE TABLE dcim_device (id int PRIMARY KEY, name text,"
            " site_id int REFERENCES dcim_site, serial text)"
        )
        conn.execute("SELECT relay.track('dcim_device')")
        conn.execute(
            "INSERT INTO relay.webhooks (name, payload_url, secret, related)"
            " VALUES ('bench', %s, 's', %s)",
            (url, RELATED if with_related else None),
        )
        conn.execute(
            "INSERT INTO relay.event_rules (name, tables, webhook_id)"
            " SELECT 'bench', ARRAY['public.dcim_device'], id FROM relay.webhooks"
        )
        conn.execute(
            "INSERT INTO dcim_site SELECT g, 'site ' || g, 's-' || g FROM generate_series(1, %s) g",
            (changes,),
        )
        conn.execute(
            "INSERT INTO dcim_device SELECT g, 'device ' || g, g, md5(g::text)"
            " FROM generate_series(1, %s) g",
            (changes,),
        )


def items(dsn: str, count: int) -> list[Claimed]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        store = Store(conn)
        found: list[Claimed] = []
        for outbox_id in range(1, count + 1):
            change = store.change(outbox_id, {})
            assert change is not None
            found.append(Claimed(outbox_id, 1, 1, 1, 1, 100, change, str(outbox_id)))
        return found


async def per_change(dsn: str, claimed: list[Claimed], claim: int) -> tuple[float, float]:
    """Microseconds per change: the default body alone; related rows read for each claim of
    ``claim`` changes, then the body."""
    site = (("site_id", ("name", "slug")),)
    hook = Webhook(id=1, name="bench", payload_url="http://127.0.0.1/", related=site)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        store = AsyncStore(conn)
        await conn.execute("SET search_path = pg_catalog, pg_temp")
        started = time.perf_counter()
        for item in claimed:
            default_body(item.change)
        off = time.perf_counter() - started
        started = time.perf_counter()
        for first in range(0, len(claimed), claim):
            got = await related.attach(store, claimed[first : first + claim], lambda _: hook)
            for item in got:
                assert item.related_problem is None, item.related_problem
                default_body(item.change)
        on = time.perf_counter() - started
    return off / len(claimed) * 1e6, on / len(claimed) * 1e6


def drained(server: str, changes: int, with_related: bool) -> float:
    port = free_port()
    ready = multiprocessing.Event()
    parent, child = multiprocessing.Pipe()
    receiver = multiprocessing.Process(target=receiver_process, args=(port, ready, child))
    receiver.start()
    ready.wait(10)
    try:
        with scratch_database(server, "relay_bench") as dsn:
            load(dsn, f"http://127.0.0.1:{port}/hook", changes, with_related)
            return asyncio.run(drain(dsn, changes))
    finally:
        parent.send("done")
        arrived: Any = parent.recv()
        receiver.join(10)
        assert len(arrived) >= changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logs.configure(file=open(os.devnull, "w"))  # noqa: SIM115 (open for the whole run)
    with postgres_server(None) as server:
        with scratch_database(server, "relay_bench") as dsn:
            load(dsn, "http://127.0.0.1:9/", 1000, True)
            claimed = items(dsn, 1000)
            print("1. per change (us): default body | related rows read per claim + body")
            for claim in (100, 1000):
                runs = [asyncio.run(per_change(dsn, claimed, claim)) for _ in range(args.rounds)]
                off = statistics.median(run[0] for run in runs)
                on = statistics.median(run[1] for run in runs)
                print(f"   claims of {claim:>5}: off {off:7.1f}   on {on:7.1f}   (+{on - off:.1f})")
        print(f"2. deliveries/s draining {args.changes} changes (Worker, receiver process)")
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for with_related in (False, True):
                rates[with_related].append(drained(server, args.changes, with_related))
        for with_related, seen in rates.items():
            shown = ", ".join(f"{rate:.0f}" for rate in seen)
            print(
                f"   related {'on ' if with_related else 'off'}: median "
                f"{statistics.median(seen):.0f}/s ({shown})"
            )


if __name__ == "__main__":
    main()
