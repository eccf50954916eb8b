"""Limits per endpoint (issue 25): a webhook's concurrency and rate limit, across relays.

    .venv/bin/python bench/limits.py [--changes 3000] [--delay 0.2] [--concurrency 64]
        [--shared 8] [--rate 20] [--paced 200]

On $RELAY_DSN's server, 127.0.0.1:5432, or a throwaway cluster (scratch databases), with a
receiver in a process of its own on 127.0.0.1 that answers after --delay seconds and notes when
each request arrived and how many were in flight:

1. Target: --changes changes to a webhook with concurrency --concurrency, one `relay run`:
   the time from the first request to the last answer, against changes * delay / concurrency
   (the issue asks for at most 1.3 times that). The same with the webhook's concurrency unset
   and RELAY_WEBHOOK_CONCURRENCY at --concurrency (per process, with prefetch), for the cost of
   counting leases across relays instead.
2. Shared concurrency: two `relay run` with RELAY_WEBHOOK_CONCURRENCY twice --shared, to a
   webhook with concurrency --shared: the most requests in flight at once (at most --shared)
   and how often the receiver saw that many.
3. Rate: two `relay run` to a webhook with rate_limit --rate, --paced changes, a receiver that
   answers at once: the most requests in any second (sliding), and the rate overall.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import psycopg
from throughput import free_port, serve_until_asked

from relay.store import Store
from relay.tempcluster import postgres_server, scratch_database

DONE = "SELECT count(*) FROM relay.deliveries WHERE status = 'delivered'"


def receiver_process(port: int, delay: float, ready: Any, results: Connection) -> None:
    """Answers every request after ``delay`` seconds; at the end sends back, per request, when
    it arrived and how many were in flight then (itself included)."""
    from aiohttp import web

    noted: list[tuple[float, int]] = []
    in_flight = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal in_flight
        await request.read()
        in_flight += 1
        noted.append((time.monotonic(), in_flight))
        try:
            if delay:
                await asyncio.sleep(delay)
        finally:
            in_flight -= 1
        return web.Response(text="ok")

    asyncio.run(serve_until_asked(hook, port, ready, results, noted))


def start_relay(dsn: str, **settings: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RELAY_DSN": dsn, "RELAY_POLL_INTERVAL": "1"}
    env.update({f"RELAY_{name.upper()}": value for name, value in settings.items()})
    return subprocess.Popen(
        [sys.executable, "-m", "relay", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def run(
    server: str,
    changes: int,
    delay: float,
    relays: int,
    webhook: dict[str, object],
    **settings: str,
) -> list[tuple[float, int]]:
    """Deliver ``changes`` to a receiver answering after ``delay`` with ``relays`` relay
    processes; what the receiver noted."""
    port = free_port()
    ready = multiprocessing.Event()
    ours, theirs = multiprocessing.Pipe()
    receiver = multiprocessing.Process(target=receiver_process, args=(port, delay, ready, theirs))
    receiver.start()
    ready.wait(10)
    try:
        with (
            scratch_database(server, "relay_lim") as dsn,
            psycopg.connect(dsn, autocommit=True) as conn,
        ):
            Store(conn).install()
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, qty int)")
            conn.execute("SELECT relay.track('items')")
            columns = {"name": "bench", "payload_url": f"http://127.0.0.1:{port}/hook"}
            columns.update({"secret": "s", **{k: str(v) for k, v in webhook.items()}})
            conn.execute(
                f"INSERT INTO relay.webhooks ({', '.join(columns)})"
                f" VALUES ({', '.join(['%s'] * len(columns))})",
                list(columns.values()),
            )
            conn.execute(
                "INSERT INTO relay.event_rules (name, tables, webhook_id)"
                " SELECT 'bench', ARRAY['public.items'], id FROM relay.webhooks"
            )
            conn.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, %s) g", (changes,))
            processes = [start_relay(dsn, **settings) for _ in range(relays)]
            try:
                deadline = time.monotonic() + 300
                while conn.execute(DONE).fetchone() != (changes,):
                    if time.monotonic() > deadline:
                        sys.exit("not delivered within 300 s")
                    time.sleep(0.1)
            finally:
                for process in processes:
                    process.send_signal(signal.SIGTERM)
                for process in processes:
                    process.wait(30)
    finally:
        ours.send("done")
        noted: list[tuple[float, int]] = ours.recv()
        receiver.join(10)
    return noted


def span(noted: list[tuple[float, int]], delay: float) -> float:
    """From the first request's arrival to the last one's answer (the issue counts to the last
    request: ``delay`` less)."""
    return noted[-1][0] - noted[0][0] + delay


def busiest_second(noted: list[tuple[float, int]]) -> int:
    times = [t for t, _ in noted]
    return max(sum(1 for t in times if start <= t < start + 1.0) for start in times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("RELAY_DSN"))
    parser.add_argument("--changes", type=int, default=3000)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--shared", type=int, default=8)
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--paced", type=int, default=200)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average {load:.1f} at the start")
    with postgres_server(args.dsn) as server:
        ideal = args.changes * args.delay / args.concurrency
        noted = run(server, args.changes, args.delay, 1, {"concurrency": args.concurrency})
        took = span(noted, args.delay)
        most = max(n for _, n in noted)
        print(
            f"1. {args.changes} changes, {args.delay * 1000:.0f} ms each, webhook concurrency"
            f" {args.concurrency}: {took:.2f} s first request to last answer, ideal"
            f" {ideal:.2f} s, ratio {took / ideal:.2f} (target <= 1.30); at most {most} in flight"
        )
        noted = run(
            server,
            args.changes,
            args.delay,
            1,
            {},
            webhook_concurrency=str(args.concurrency),
        )
        unset = span(noted, args.delay)
        print(
            f"   the same, concurrency unset, RELAY_WEBHOOK_CONCURRENCY={args.concurrency} (per"
            f" process, with prefetch): {unset:.2f} s, ratio {unset / ideal:.2f};"
            f" counting leases across relays costs {took / unset:.2f}x"
        )
        shared = 25 * args.shared
        noted = run(
            server,
            shared,
            args.delay,
            2,
            {"concurrency": args.shared},
            webhook_concurrency=str(2 * args.shared),
        )
        most = max(n for _, n in noted)
        at_most = sum(1 for _, n in noted if n == args.shared)
        took = span(noted, args.delay)
        ideal = shared * args.delay / args.shared
        print(
            f"2. two relays (RELAY_WEBHOOK_CONCURRENCY={2 * args.shared} each), webhook"
            f" concurrency {args.shared}, {shared} changes: at most {most} in flight"
            f" ({at_most} requests arrived with {args.shared} in flight), {took:.2f} s,"
            f" ideal {ideal:.2f} s, ratio {took / ideal:.2f}"
        )
        noted = run(server, args.paced, 0.0, 2, {"rate_limit": args.rate})
        busiest = busiest_second(noted)
        rate = (len(noted) - 1) / (noted[-1][0] - noted[0][0])
        print(
            f"3. two relays, rate_limit {args.rate:g}/s, {args.paced} changes: at most {busiest}"
            f" in any second (sliding), {rate:.1f} requests/s overall"
            f" ({rate / args.rate:.2f} of the limit)"
        )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
