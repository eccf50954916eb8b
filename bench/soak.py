"""A steady load for a long time, retention on: do the outbox, memory and lag stay flat?

    .venv/bin/python bench/soak.py [--minutes 30] [--rate 500] [--retention-seconds 60]

`relay run` delivers to nginx while a writer commits --rate changes a second (ten rows per
transaction) into a tracked table for --minutes. The relay deletes finished changes older than
--retention-seconds (RELAY_RETENTION_DAYS) and attempts as old (sweeping every 10 s). Every
--every seconds it prints: changes in the outbox, the on-disk size of the outbox, deliveries
and attempts (with indexes), the relay's RSS, the age of the oldest pending change, and the
delivery rate at nginx. At the end, the first and last third of the run side by side.
Retention only keeps the tables small if autovacuum runs: when the server has it off (as some
CI machines do) and no --dsn is given, the soak runs on a private throwaway cluster with
PostgreSQL's defaults instead, and says so.
Needs nginx (apt-get install nginx-light).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import Nginx, load, receipts, start_relay, vm_kb, write_steadily

from relay.tempcluster import postgres_server, scratch_database, start_temp_cluster

SAMPLE = """
SELECT (SELECT count(*) FROM relay.outbox),
       (pg_total_relation_size('relay.outbox') + pg_total_relation_size('relay.deliveries')
        + pg_total_relation_size('relay.attempts')) / 1048576.0,
       coalesce((SELECT extract(epoch FROM now() - min(created_at))
                 FROM relay.outbox WHERE status = 'pending'), 0)
"""


def write(dsn: str, rate: int, seconds: float, stop: threading.Event) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        write_steadily(conn, int(rate * seconds), seconds, stop=stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("RELAY_DSN"))
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--retention-seconds", type=float, default=60)
    parser.add_argument("--every", type=float, default=30)
    args = parser.parse_args()
    nginx = Nginx("relay-soak-")
    root, url = nginx.root, nginx.url
    samples: list[tuple[float, int, float, float, float, float]] = []
    stop = threading.Event()
    cluster = None
    try:
        with postgres_server(args.dsn) as server:
            with psycopg.connect(server) as conn:
                row = conn.execute("SHOW autovacuum").fetchone()
            if row and row[0] != "on" and not args.dsn:
                print(f"autovacuum is off on {server}: using a private cluster with the defaults")
                cluster = start_temp_cluster()
                server = cluster.dsn
            soak(server, url, root, args, samples, stop)
    finally:
        stop.set()
        nginx.close()
        if cluster is not None:
            cluster.stop()
    summarise(samples)


def soak(
    server: str,
    url: str,
    root: Path,
    args: argparse.Namespace,
    samples: list[tuple[float, int, float, float, float, float]],
    stop: threading.Event,
) -> None:
    with scratch_database(server, "relay_soak") as dsn:
        load(dsn, url, 0)
        days = str(args.retention_seconds / 86_400)
        relay = start_relay(
            dsn, retention_days=days, attempt_retention_days=days, lease_seconds="10"
        )
        writer = threading.Thread(
            target=write, args=(dsn, args.rate, args.minutes * 60, stop), daemon=True
        )
        started = time.monotonic()
        writer.start()
        print(" minute  outbox rows  tables MB  relay RSS MB  oldest pending s  delivered/s")
        last_count, last_time = receipts(root), time.monotonic()
        with psycopg.connect(dsn, autocommit=True) as conn:
            while writer.is_alive():
                time.sleep(args.every)
                row = conn.execute(SAMPLE).fetchone()
                assert row is not None
                count, now = receipts(root), time.monotonic()
                rate = (count - last_count) / (now - last_time)
                last_count, last_time = count, now
                sample = (
                    (now - started) / 60,
                    int(row[0]),
                    float(row[1]),
                    vm_kb(relay.pid, "VmRSS") / 1024,
                    float(row[2]),
                    rate,
                )
                samples.append(sample)
                print(
                    f"{sample[0]:7.1f}  {sample[1]:11d}  {sample[2]:9.1f}  {sample[3]:12.1f}"
                    f"  {sample[4]:16.2f}  {sample[5]:11.0f}",
                    flush=True,
                )
        relay.send_signal(signal.SIGTERM)
        relay.wait(30)


def summarise(samples: list[tuple[float, int, float, float, float, float]]) -> None:
    third = max(len(samples) // 3, 1)
    first, last = samples[:third], samples[-third:]
    print("\nmedians, first third vs last third of the run:")
    for index, name in (
        (1, "outbox rows"),
        (2, "tables MB"),
        (3, "relay RSS MB"),
        (4, "oldest pending s"),
        (5, "delivered/s"),
    ):
        a = statistics.median(s[index] for s in first)
        b = statistics.median(s[index] for s in last)
        print(f"  {name:>16}: {a:10.1f} -> {b:10.1f}")


if __name__ == "__main__":
    main()
