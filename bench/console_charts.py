"""The console overview's charts on a large attempts table: how long their queries take.

    .venv/bin/python bench/console_charts.py [--attempts 5000000] [--days 30] [--runs 5]

On a scratch database (on $RELAY_DSN's server, or a throwaway cluster), --attempts attempts
spread evenly over the last --days days across five webhooks, one in twenty failed (written
with foreign keys off: the charts read relay.attempts alone). Then the overview's reads, as
the console makes them (Store.activity, Store.failures): the last hour by minute and the last
day by hour; the median of --runs runs of each, and how many attempts each window holds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg

from relay.console.charts import WINDOWS
from relay.store import Store
from relay.tempcluster import postgres_server, scratch_database


def load(dsn: str, attempts: int, days: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        Store(conn).install()
        conn.execute(
            "INSERT INTO relay.webhooks (name, payload_url, secret)"
            " SELECT 'hook-' || i, 'http://127.0.0.1:9/', 's' FROM generate_series(1, 5) i"
        )
        conn.execute("SET session_replication_role = replica")  # no deliveries to refer to
        conn.execute(
            "INSERT INTO relay.attempts (outbox_id, webhook_id, attempt, attempted_at,"
            " duration_ms, status_code, error)"
            " SELECT i, (SELECT min(id) FROM relay.webhooks) + i %% 5, 1,"
            " now() - (i::float / %(n)s) * %(days)s * interval '1 day', 10, 200,"
            " CASE WHEN i %% 20 = 0 THEN 'HTTP 500' END"
            " FROM generate_series(1, %(n)s) i",
            {"n": attempts, "days": days},
        )
        conn.execute("VACUUM ANALYZE relay.attempts")


def median_ms(read: Callable[[], Any], runs: int) -> float:
    took = []
    for _ in range(runs):
        started = time.perf_counter()
        read()
        took.append(time.perf_counter() - started)
    return statistics.median(took) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description="The console's chart queries on many attempts.")
    parser.add_argument("--dsn", default=os.environ.get("RELAY_DSN"))
    parser.add_argument("--attempts", type=int, default=5_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with postgres_server(args.dsn) as server, scratch_database(server, "relay_charts") as dsn:
        load(dsn, args.attempts, args.days)
        with psycopg.connect(dsn, autocommit=True) as conn:
            store = Store(conn)
            print(f"{args.attempts} attempts over {args.days} days")
            for window in WINDOWS.values():
                unit, count = window.unit, window.buckets
                buckets = store.activity(unit, count)
                held = sum(b.delivered + b.failed for b in buckets)
                since = buckets[0].start
                activity = median_ms(lambda: store.activity(unit, count), args.runs)  # noqa: B023
                failures = median_ms(lambda: store.failures(since, 10), args.runs)  # noqa: B023
                print(
                    f"{window.label}: {held} attempts; per {unit}: {activity:.1f} ms,"
                    f" failures per webhook: {failures:.1f} ms"
                )


if __name__ == "__main__":
    main()
