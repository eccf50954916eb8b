"""How long one claim takes in the database with a big backlog of pending deliveries.

    .venv/bin/python bench/claims.py [--pending 300000] [--moves 3000] [--rounds 200]
        [--compare OTHER/sql/queries] [--batch 100] [--limited]

On a private cluster: --pending changes inserted into a tracked table, --moves of them followed
by an UPDATE of the primary key (a key move, the claim's second key), all fanned out as the
relay does (one webhook), statistics refreshed as the relay does after a burst. Then
claim_deliveries runs --rounds times, each in a transaction rolled back (so every round sees the
same backlog), claiming 128 deliveries (a relay with RELAY_WEBHOOK_CONCURRENCY=64, as in
bench/throughput.py); prints the median and p90 time in the database and the plan's shape. With
--compare, the claim_deliveries of another relay's sql/queries/ (or of an older relay's
sql/queries.sql, the one file it had) runs interleaved on the same backlog, for a ratio. With
--batch N, claim_batch is measured instead: one batch of N for the webhook (batch_size N), on
the same backlog. With --limited, the webhook has a concurrency (0026_steering.sql) and another
relay holds 64 leases: the claim counts them (relay.leased_requests), and the concurrency leaves
room for the same claim as without.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import psycopg

from relay import sqlfiles
from relay.settings import Settings
from relay.store import Store
from relay.tempcluster import scratch_database, start_temp_cluster

FAN_OUT = """
INSERT INTO relay.deliveries (outbox_id, webhook_id, rule_id, row_key, old_row_key, change_bytes)
SELECT o.id, r.webhook_id, r.id, o.schema_name || '.' || o.table_name || ':' || o.pk::text,
       o.schema_name || '.' || o.table_name || ':' || relay.key_before(o.pk, o.old)::text,
       coalesce(octet_length(o.old::text), 0) + coalesce(octet_length(o.new::text), 0)
FROM relay.outbox o, relay.event_rules r;
UPDATE relay.outbox SET fanned_out_at = now();
"""
"""What fan-out writes for these changes (relay/delivery/plan.py), in one statement for speed."""


def parameters(settings: Settings) -> dict[str, object]:
    room = settings.max_held_bytes // 3
    return {
        "limit": 1000,
        "lease_seconds": 60,
        "relay_id": "bench",
        "per_webhook": 128,
        "busy_ids": [],
        "busy_counts": [],
        "busy_bytes": [],
        "bytes_free": room,
        "bytes_per_webhook": room // 2,
        "max_change_bytes": int(settings.max_body_bytes),
        "batched_ids": [],
        "window_ids": [],
        "window_sizes": [],
        "pace_ahead": 1.0,
        "answered_webhooks": [],
        "answered_ids": [],
    }


def batch_parameters(settings: Settings, webhook_id: int, size: int) -> dict[str, object]:
    return {
        "webhook_id": webhook_id,
        "batch_size": size,
        "wait_ms": 0,
        "lease_seconds": 60,
        "relay_id": "bench",
        "bytes_free": settings.max_held_bytes // 3,
        "max_change_bytes": int(settings.max_body_bytes),
        "body_bytes": int(settings.max_body_bytes),
        "body_overhead": 600,
        "pace_ahead": 1.0,
        "answered_webhooks": [],
        "answered_ids": [],
    }


def timed(
    conn: psycopg.Connection[tuple[object, ...]],
    sql: str,
    params: dict[str, object],
    expected: int,
) -> float:
    with conn.transaction(force_rollback=True):
        started = time.perf_counter()
        rows = conn.execute(sql, params).fetchall()
        took = time.perf_counter() - started
    assert len(rows) == expected, f"claimed {len(rows)}"
    return took * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pending", type=int, default=300_000)
    parser.add_argument("--moves", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--compare", type=Path)
    parser.add_argument("--batch", type=int, help="measure claim_batch, batches of this size")
    parser.add_argument("--limited", action="store_true", help="the webhook has a concurrency")
    args = parser.parse_args()
    statement = "claim_batch" if args.batch else "claim_deliveries"
    claims = {"this": sqlfiles.query(statement)}
    if args.compare:
        other = (
            sqlfiles.load(args.compare)
            if args.compare.is_dir()
            else sqlfiles.parse_named(args.compare.read_text())
        )
        claims["compared"] = other[statement]
    cluster = start_temp_cluster()
    try:
        with scratch_database(cluster.dsn, "relay_claims") as dsn, psycopg.connect(dsn) as conn:
            conn.autocommit = True
            Store(conn).install()
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
            conn.execute("SELECT relay.track('items')")
            conn.execute(
                "INSERT INTO relay.webhooks (name, payload_url, secret)"
                " VALUES ('bench', 'http://127.0.0.1:9/', 's')"
            )
            conn.execute(
                "INSERT INTO relay.event_rules (name, tables, webhook_id)"
                " SELECT 'bench', ARRAY['public.items'], id FROM relay.webhooks"
            )
            conn.execute(
                "INSERT INTO items SELECT g, 0 FROM generate_series(1, %s) g",
                (args.pending - args.moves,),
            )
            conn.execute("UPDATE items SET id = id + %s WHERE id <= %s", (args.pending, args.moves))
            conn.execute(FAN_OUT)
            if args.limited:
                conn.execute(
                    "UPDATE relay.deliveries SET leased_by = 'other',"
                    " leased_until = now() + interval '1 hour'"
                    " WHERE outbox_id IN (SELECT outbox_id FROM relay.deliveries"
                    " ORDER BY outbox_id DESC LIMIT 64)"
                )
                room = 1 if args.batch else 128
                conn.execute("UPDATE relay.webhooks SET concurrency = %s", (64 + room,))
            conn.execute("SET jit = off")  # as the relay's connections
            webhook = conn.execute("SELECT id FROM relay.webhooks").fetchone()
            assert webhook is not None
            if args.batch:
                params = batch_parameters(Settings(), int(str(webhook[0])), args.batch)
                expected = args.batch
            else:
                params, expected = parameters(Settings()), 128
            what = f"{args.pending} pending deliveries ({args.moves} key moves)"
            if args.limited:
                what += ", webhook concurrency (64 leased elsewhere)"
            print(f"{what}, {statement} of {expected}:")
            # First as a burst finds the tables (autovacuum has not looked yet), then with the
            # statistics the relay refreshes after its first 5,000 changes.
            for when in ("without statistics", "with statistics"):
                if when == "with statistics":
                    conn.execute(sqlfiles.query("refresh_statistics"))
                times: dict[str, list[float]] = {name: [] for name in claims}
                for _ in range(args.rounds):
                    for name, sql in claims.items():
                        times[name].append(timed(conn, sql, params, expected))
                report(when, times)
                with conn.transaction(force_rollback=True):
                    plan = conn.execute("EXPLAIN (ANALYZE, COSTS OFF) " + claims["this"], params)
                    lines = [str(row[0]) for row in plan]
                print("\n".join("    " + line.strip() for line in lines if "Index" in line))
    finally:
        cluster.stop()


def report(when: str, times: dict[str, list[float]]) -> None:
    print(f"  {when}, {len(times['this'])} claims each:")
    for name, values in times.items():
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"    {name:>8}: median {statistics.median(values):.2f} ms, p90 {p90:.2f} ms")
    if "compared" in times:
        ratio = statistics.median(times["this"]) / statistics.median(times["compared"])
        print(f"    ratio this / compared: {ratio:.2f}")


if __name__ == "__main__":
    main()
