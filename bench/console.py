"""The console's deliveries log on a million deliveries: how long each page and filter takes,
over HTTP as a person's browser asks for it; and what the log's key indexes cost the fan-out.

    .venv/bin/python bench/console.py [--changes 500000] [--runs 20] [--explain plans.txt]

1. Starts a private cluster (PostgreSQL's server binaries; roles other than postgres asked for
   their password, as the console requires), installs relay, tracks public.orders and gives it
   two webhooks with a rule each. --changes changes are captured for real (half inserts, then
   one in a thousand rows deleted, then the other half updates), recorded over the last 30
   days in id order, and
   each has a delivery to both webhooks (about 2 x --changes deliveries: written in SQL, as
   fan-out would write them): one in fifty failed for hook-2, the last hundred pending, the
   rest delivered.
2. Serves the console on 127.0.0.1 and signs in a role given the console's rights (relay sql
   console-role); then GETs each page --runs times and prints its p50 and p95 in ms, and the
   lines it shows. With --explain, PostgreSQL's auto_explain writes the plans of one more GET
   of each page (EXPLAIN ANALYZE, buffers) to that file.
3. The fan-out's cost of the log's key indexes (deliveries_delivered_rows and
   deliveries_delivered_old_rows, 0034): 100 batches of 1,000 deliveries written by
   add_deliveries (the fan-out's query) and then marked delivered (as record_outcomes does),
   with the indexes and without, alternating, the median of 3 runs of each; and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from aiohttp import web
from psycopg import sql
from psycopg.conninfo import make_conninfo

from relay.console.app import Config, make_app
from relay.sqlfiles import query
from relay.store import Store
from relay.tempcluster import TempCluster, start_temp_cluster

PASSWORD = "bench console password"
PAGES = [
    ("the log, first page", "/deliveries"),
    ("a page deep in the log", "/deliveries?before={middle}-{hook}"),
    ("one webhook", "/deliveries?webhook=hook-2"),
    ("failed", "/deliveries?status=failed"),
    ("pending (100 of them)", "/deliveries?status=pending"),
    ("one table", "/deliveries?table=public.orders"),
    ("event: update", "/deliveries?event=update"),
    ("event: delete (1 in 2000, mid-log)", "/deliveries?event=delete"),
    ("event: truncate (none)", "/deliveries?event=truncate"),
    ("a day a week ago", "/deliveries?since=7d&until=6d"),
    ("failed of hook-2 in the last 3 days", "/deliveries?webhook=hook-2&status=failed&since=3d"),
    ("deletes in a day a week ago (none)", "/deliveries?event=delete&since=7d&until=6d"),
    ("deletes in the last 20 days", "/deliveries?event=delete&since=20d"),
    ("an object's key (42)", "/deliveries?key=42"),
    (
        "an object's key as JSON, its table",
        "/deliveries?table=public.orders&key=%7B%22id%22%3A%2042%7D",
    ),
    ("a key no row has", "/deliveries?key=no-such-key"),
    ("bulk retry's preview: failed", "/deliveries/retry?status=failed"),
    ("bulk retry's preview: failed, last 3 days", "/deliveries/retry?status=failed&since=3d"),
    ("a delivery's page", "/deliveries/{middle}/{hook}"),
]


def private_cluster(explain: bool) -> TempCluster:
    """A cluster of its own, asking every role but postgres for its password."""
    settings = {"shared_buffers": "256MB", "max_wal_size": "4GB"}
    if explain:
        settings |= {
            "session_preload_libraries": "auto_explain",
            "auto_explain.log_min_duration": "0",
            "auto_explain.log_analyze": "on",
            "auto_explain.log_buffers": "on",
            "auto_explain.log_nested_statements": "on",
        }
    cluster = start_temp_cluster(**settings)
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        row = conn.execute("SHOW hba_file").fetchone()
        assert row is not None
    hba = Path(row[0])
    hba.write_text(
        "host all postgres 127.0.0.1/32 trust\n"
        "host all all 127.0.0.1/32 scram-sha-256\n" + hba.read_text()
    )
    cluster.reload()
    return cluster


def seed(dsn: str, changes: int) -> None:
    """Relay, public.orders and its changes, and a delivery of each to both webhooks."""
    rows = changes // 2
    with psycopg.connect(dsn, autocommit=True) as conn:
        Store(conn).install()
        conn.execute("CREATE TABLE public.orders (id bigint PRIMARY KEY, v int NOT NULL)")
        conn.execute("SELECT relay.track('public.orders')")
        conn.execute(
            "INSERT INTO relay.webhooks (name, payload_url, secret)"
            " SELECT 'hook-' || i, 'http://127.0.0.1:9/', 's' FROM generate_series(1, 2) i"
        )
        conn.execute(
            "INSERT INTO relay.event_rules (name, tables, webhook_id)"
            " SELECT name, ARRAY['public.orders'], id FROM relay.webhooks"
        )
        conn.execute("INSERT INTO public.orders SELECT i, 0 FROM generate_series(1, %s) i", (rows,))
        conn.execute("DELETE FROM public.orders WHERE id % 1000 = 0")
        conn.execute("UPDATE public.orders SET v = 1")
        conn.execute(
            """
            WITH last AS (SELECT max(id) AS id FROM relay.outbox)
            UPDATE relay.outbox o
            SET created_at = now() - (last.id - o.id) * (interval '30 days' / last.id),
                processed_at = now(),
                status = CASE WHEN o.id % 50 = 0 THEN 'failed'
                              WHEN o.id > last.id - 100 THEN 'pending'
                              ELSE 'delivered' END::relay.change_status
            FROM last
            """
        )
        conn.execute(
            """
            WITH last AS (SELECT max(id) AS id FROM relay.outbox)
            INSERT INTO relay.deliveries (outbox_id, webhook_id, rule_id, row_key, status,
                                          attempts, delivered_at, last_status_code, last_error)
            SELECT o.id, w.id, r.id, 'public.orders:' || o.pk::jsonb::text, s.status, 1,
                   CASE WHEN s.status = 'delivered' THEN o.created_at END,
                   CASE s.status WHEN 'delivered' THEN 200 WHEN 'failed' THEN 500 END,
                   CASE WHEN s.status = 'failed' THEN 'HTTP 500' END
            FROM relay.outbox o
            CROSS JOIN last
            CROSS JOIN relay.webhooks w
            JOIN relay.event_rules r ON r.webhook_id = w.id
            CROSS JOIN LATERAL (
                SELECT CASE WHEN o.id > last.id - 100 THEN 'pending'
                            WHEN o.id % 50 = 0 AND w.name = 'hook-2' THEN 'failed'
                            ELSE 'delivered' END::relay.delivery_status AS status) s
            ORDER BY o.id, w.id
            """
        )
        conn.execute("VACUUM ANALYZE")


def console_role(dsn: str) -> str:
    """A login role with the console's rights, as docs/console.md makes one."""
    name = "bench_viewer"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(PASSWORD)
            )
        )
    psql = shutil.which("psql")
    if psql is None:
        sys.exit("psql is not installed")
    grants = subprocess.run(
        [sys.executable, "-m", "relay", "sql", "console-role", "--role", name],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    subprocess.run(
        [psql, "-X", "-q", dsn, "-v", "ON_ERROR_STOP=1", "-f", "-"],
        input=grants,
        check=True,
        capture_output=True,
        text=True,
    )
    return name


async def time_pages(
    dsn: str, role: str, runs: int, values: dict[str, Any], log: Path | None, plans: Path | None
) -> None:
    """Each page --runs times over HTTP, signed in: p50, p95 and the lines it shows."""
    app = make_app(Config(dsn=dsn))
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    base = f"http://127.0.0.1:{port}"
    jar = aiohttp.CookieJar(unsafe=True)
    written: list[str] = []
    try:
        async with aiohttp.ClientSession(cookie_jar=jar) as client:
            form = await (await client.get(f"{base}/login")).text()
            token = re.search(r'name="token" value="([^"]+)"', form)
            assert token
            signed = await client.post(
                f"{base}/login",
                data={"token": token[1], "role": role, "password": PASSWORD},
                allow_redirects=False,
            )
            assert signed.status == 303, await signed.text()
            print(f"{'page':45} {'p50 ms':>8} {'p95 ms':>8} lines")
            for label, path in PAGES:
                url = base + path.format(**values)
                took = []
                text = ""
                for _ in range(runs):
                    started = time.perf_counter()
                    response = await client.get(url)
                    text = await response.text()
                    took.append((time.perf_counter() - started) * 1000)
                    assert response.status == 200, (url, response.status, text[-500:])
                log_page = 'class="deliveries"' in text
                lines = text.count('<tr>\n  <td><a href="/deliveries/') if log_page else "-"
                took.sort()
                p50 = statistics.median(took)
                p95 = took[max(0, round(0.95 * len(took)) - 1)]
                print(f"{label:45} {p50:8.1f} {p95:8.1f} {lines}")
                if log is not None:
                    offset = log.stat().st_size
                    await client.get(url)
                    await asyncio.sleep(0.2)
                    with log.open() as read:
                        read.seek(offset)
                        written.append(f"==== {label}: {path.format(**values)}\n{read.read()}")
    finally:
        await runner.cleanup()
    if plans is not None:
        plans.write_text("\n".join(written))
        print(f"plans: {plans}")


def fan_out_cost(dsn: str, batches: int = 100, size: int = 1000, runs: int = 3) -> None:
    """add_deliveries and the outcome's update, with the log's key indexes and without."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        first = conn.execute("SELECT min(id), count(*) FROM relay.outbox").fetchone()
        assert first
        batches = min(batches, first[1] // size)
        conn.execute(
            "INSERT INTO relay.webhooks (name, payload_url, secret)"
            " VALUES ('fan', 'http://127.0.0.1:9/', 's')"
        )
        row = conn.execute("SELECT id FROM relay.webhooks WHERE name = 'fan'").fetchone()
        assert row
        webhook = row[0]
        store = Store(conn)

        def one_run() -> float:
            conn.execute("DELETE FROM relay.deliveries WHERE webhook_id = %s", (webhook,))
            conn.execute("VACUUM relay.deliveries")
            started = time.perf_counter()
            for b in range(batches):
                ids = list(range(first[0] + b * size, first[0] + (b + 1) * size))
                params = {
                    "outbox_ids": ids,
                    "webhook_ids": [webhook] * size,
                    "rule_ids": [None] * size,
                    "row_keys": [f'public.orders:{{"id": {i}}}' for i in ids],
                    "old_row_keys": [None] * size,
                    "change_bytes": [30] * size,
                    "order_keys": [None] * size,
                    "ranks": ids,
                    "coalesced_froms": [None] * size,
                }
                with conn.transaction():
                    conn.execute(query("add_deliveries"), params)
                with conn.transaction():
                    conn.execute(
                        "UPDATE relay.deliveries SET status = 'delivered', attempts = 1,"
                        " delivered_at = now(), last_status_code = 200"
                        " WHERE webhook_id = %s AND outbox_id = ANY(%s)",
                        (webhook, ids),
                    )
            return time.perf_counter() - started

        def without() -> float:
            conn.execute(
                "DROP INDEX relay.deliveries_delivered_rows, relay.deliveries_delivered_old_rows"
            )
            try:
                return one_run()
            finally:
                conn.execute(
                    "CREATE INDEX deliveries_delivered_rows ON relay.deliveries"
                    " USING hash (row_key) WHERE status = 'delivered'"
                )
                conn.execute(
                    "CREATE INDEX deliveries_delivered_old_rows ON relay.deliveries"
                    " USING hash (old_row_key)"
                    " WHERE status = 'delivered' AND old_row_key IS NOT NULL"
                )

        assert store.installed_version() > 0
        timed: dict[str, list[float]] = {"with": [], "without": []}
        plan: list[tuple[str, Callable[[], float]]] = [("with", one_run), ("without", without)]
        for _ in range(runs):
            for name, run in plan:
                timed[name].append(run())
        with_, without_ = statistics.median(timed["with"]), statistics.median(timed["without"])
        total = batches * size
        print(
            f"fan-out writes of {total} deliveries (add_deliveries, then marked delivered):"
            f" {with_:.2f} s with the key indexes, {without_:.2f} s without;"
            f" ratio {with_ / without_:.2f} (medians of {runs})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description="The console's deliveries log at 1M deliveries.")
    parser.add_argument("--changes", type=int, default=500_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--explain", type=Path, help="Write the plans of each page here.")
    args = parser.parse_args()
    cluster = private_cluster(args.explain is not None)
    try:
        dsn = make_conninfo(cluster.dsn, dbname="postgres")
        started = time.perf_counter()
        seed(dsn, args.changes)
        with psycopg.connect(dsn) as conn:
            count = conn.execute("SELECT count(*), max(outbox_id) FROM relay.deliveries").fetchone()
            hook = conn.execute("SELECT id FROM relay.webhooks WHERE name = 'hook-2'").fetchone()
        assert count and hook
        print(
            f"{count[0]} deliveries of {args.changes} changes, seeded in"
            f" {time.perf_counter() - started:.0f} s"
        )
        role = console_role(dsn)
        values = {"middle": count[1] // 2, "hook": hook[0]}
        log = cluster.root / "server.log" if args.explain else None
        asyncio.run(time_pages(dsn, role, args.runs, values, log, args.explain))
        fan_out_cost(dsn)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
