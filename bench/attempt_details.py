"""What RELAY_ATTEMPT_DETAILS costs: none, failed (the default) and all, side by side in one run.

    .venv/bin/python bench/attempt_details.py [--changes 3000] [--rounds 3] [--failures 300]

1. Deliveries per second of a Worker (the code behind `relay run`) draining --changes inserts
   to a receiver process answering 200, with each setting, --rounds times in turn (none,
   failed, all, none, ...), on a private cluster started for the run; the medians, their ratio to
   none's, and this process's CPU per delivery (steadier than the rate on a busy machine).
2. The bytes of a delivered attempt's row (pg_column_size of the row) with each setting, and
   of a failed attempt's (--failures changes to a receiver answering 500, one attempt each)
   with none and failed: what the table grows by per attempt.
3. What keeping one attempt's details costs in this process (µs): the request as sent (a
   default body of 330 bytes, and one of 40 KiB cut to 4 KiB) and five response headers,
   masked (relay/delivery/details.py), as the sender does for a failed attempt.
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
from throughput import drain, free_port, load, receiver_process, serve_until_asked

from relay.delivery import details
from relay.delivery.details import Keep
from relay.service import logs
from relay.tempcluster import scratch_database, start_temp_cluster

SETTINGS: tuple[Keep, ...] = ("none", "failed", "all")
ROW_BYTES = "SELECT avg(pg_column_size(a.*))::float8, count(*) FROM relay.attempts a"


def failing_process(port: int, ready: Any, results: Any) -> None:
    """A receiver in its own process that answers every request 500, with a few headers."""
    from aiohttp import web

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        headers = {"X-Request-Id": "req-1234567890", "Cache-Control": "no-store"}
        return web.Response(status=500, text="internal error", headers=headers)

    asyncio.run(serve_until_asked(hook, port, ready, results, []))


def masking_cost(body: bytes, times: int = 2000) -> float:
    """Microseconds to keep one attempt's request and response headers."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "relay/0.1.0",
        "X-Relay-Delivery": "a2ed4a74-46cd-4c04-86c8-8f7835ee0fc7",
        "X-Relay-Event": "public.items.created",
        "Authorization": "Bearer tok-1234567",
        "X-Hook-Signature": "ab12" * 32,
    }
    answered = [("Content-Type", "text/plain"), ("Content-Length", "14"), ("Server", "x")]
    answered += [("Date", "Mon, 07 Dec 2026 23:39:08 GMT"), ("X-Request-Id", "req-1")]
    secrets = ["s3cr3t-value", "tok-1234567"]
    started = time.perf_counter()
    for _ in range(times):
        details.request_details("POST", "http://127.0.0.1:8080/hook?x=1", headers, body, secrets)
        details.masked_headers(answered, secrets)
    return (time.perf_counter() - started) / times * 1e6


def drained(
    server: str, changes: int, keep: Keep, *, failing: bool = False
) -> tuple[float, float, float]:
    """Deliveries per second, CPU microseconds per delivery of this process, and the mean
    bytes of an attempt's row."""
    port = free_port()
    ready = multiprocessing.Event()
    parent, child = multiprocessing.Pipe()
    target = failing_process if failing else receiver_process
    receiver = multiprocessing.Process(target=target, args=(port, ready, child))
    receiver.start()
    ready.wait(10)
    try:
        with scratch_database(server, "relay_bench") as dsn:
            load(dsn, f"http://127.0.0.1:{port}/hook", changes)
            if failing:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("UPDATE relay.webhooks SET max_attempts = 1")
            cpu = time.process_time()
            # Failures all along: the breaker must not pause the webhook half way.
            breaker = 1_000_000 if failing else 5
            rate = asyncio.run(drain(dsn, changes, attempt_details=keep, breaker_failures=breaker))
            cpu = time.process_time() - cpu
            with psycopg.connect(dsn) as conn:
                row = conn.execute(ROW_BYTES).fetchone()
                assert row is not None and row[1] == changes, row
            return rate, cpu / changes * 1e6, row[0]
    finally:
        parent.send("done")
        parent.recv()
        receiver.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--failures", type=int, default=300)
    args = parser.parse_args()
    logs.configure(file=open(os.devnull, "w"))  # noqa: SIM115 (open for the whole run)
    runs: dict[Keep, list[tuple[float, float, float]]] = {keep: [] for keep in SETTINGS}
    cluster = start_temp_cluster()
    try:
        for _ in range(args.rounds):
            for keep in SETTINGS:
                runs[keep].append(drained(cluster.dsn, args.changes, keep))
                print(f"   ({keep}: {runs[keep][-1][0]:.0f}/s)", flush=True)
        failed = {
            setting: drained(cluster.dsn, args.failures, setting, failing=True)
            for setting in SETTINGS[:2]
        }
    finally:
        cluster.stop()
    print(f"1. draining {args.changes} changes to a receiver answering 200, {args.rounds} rounds")
    base = statistics.median(rate for rate, _, _ in runs["none"])
    base_cpu = statistics.median(cpu for _, cpu, _ in runs["none"])
    for keep, seen in runs.items():
        rate = statistics.median(r for r, _, _ in seen)
        cpu = statistics.median(c for _, c, _ in seen)
        shown = ", ".join(f"{r:.0f}" for r, _, _ in seen)
        print(
            f"   {keep:>6}: median {rate:5.0f}/s ({shown}), x{rate / base:.3f} of none;"
            f" CPU {cpu:5.0f} us/delivery, x{cpu / base_cpu:.3f}"
        )
    print("2. bytes of an attempt's row (mean pg_column_size)")
    for keep, seen in runs.items():
        print(f"   delivered, {keep:>6}: {statistics.median(b for _, _, b in seen):6.0f}")
    for setting, (_, _, size) in failed.items():
        print(f"   failed (500), {setting:>6}: {size:6.0f}")
    small = b'{"event":"created","data":{"id":1,"name":"item 1","qty":1}}' * 5 + b" " * 30
    print("3. keeping one attempt's details (us)")
    print(f"   body of {len(small)} bytes: {masking_cost(small):.1f}")
    print(f"   body of 40 KiB: {masking_cost(small * 124):.1f}")


if __name__ == "__main__":
    main()
