"""Memory follows bytes, not counts: `relay run` on a backlog of huge rows among small ones.

    .venv/bin/python bench/memory.py [--small 100000] [--big 20] [--big-mb 50]
        [--set RELAY_MAX_BODY_BYTES=160MiB ...]

1. A private PostgreSQL cluster (the big rows make gigabytes of TOAST and WAL: kept off any
   shared server) and nginx answering 200 to everything, whatever the body size.
2. The backlog, before the relay starts: a tracked table; --small rows of about 60 bytes of
   JSON, with --big rows of --big-mb MB inserted among them at even intervals; then each big
   row updated (another column), so that its update carries two images of --big-mb. The big
   text repeats 32 characters, so that the database compresses it and loads it in seconds: the
   relay reads it back whole, and its memory does not depend on how the database stores it.
   One webhook, one rule, the default body (NetBox's: the new image twice, as data and
   postchange). 100,040 changes with the defaults.
3. `relay run` (a separate process, default settings unless --set) starts on it; its RSS is
   read every 50 ms, and its peak (VmHWM) when no change is pending any more.
4. Checks that every small change was delivered, and every big one delivered or failed with the
   documented one-line reason (`... is over RELAY_MAX_BODY_BYTES (...)`), then prints the
   figures. Needs nginx (apt-get install nginx-light).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import Nginx, start_relay, stop_relay, vm_kb

from relay.store import Store
from relay.tempcluster import scratch_database, start_temp_cluster

BIG_ID = 1_000_000
"""Big rows have ids from here on, small ones below."""

OUTCOMES = """
SELECT (coalesce(new, old) ->> 'id')::int >= %(big)s AS big, status::text,
       regexp_replace(last_error, '[0-9.]+[KMG]?i?B', 'N', 'g') AS reason,
       count(*), min(last_error) AS example
FROM relay.outbox
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""


def build(dsn: str, url: str, small: int, big: int, big_mb: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        Store(conn).install()
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int, note text)")
        conn.execute("SELECT relay.track('items')")
        conn.execute(
            "INSERT INTO relay.webhooks (name, payload_url, secret) VALUES ('bench', %s, 's')",
            (url,),
        )
        conn.execute(
            "INSERT INTO relay.event_rules (name, tables, webhook_id)"
            " SELECT 'bench', ARRAY['public.items'], id FROM relay.webhooks"
        )
        step = small // max(big, 1)
        done = 0
        for n in range(big):
            conn.execute(
                "INSERT INTO items SELECT g, 0, 'small row ' || g"
                " FROM generate_series(%s::int, %s::int) g",
                (done + 1, done + step),
            )
            done += step
            conn.execute(
                "INSERT INTO items VALUES (%s, 0, repeat(md5(%s::text), %s))",
                (BIG_ID + n, n, big_mb * 1024 * 1024 // 32),
            )
        conn.execute(
            "INSERT INTO items SELECT g, 0, 'small row ' || g"
            " FROM generate_series(%s::int, %s::int) g",
            (done + 1, small),
        )
        for n in range(big):
            conn.execute("UPDATE items SET v = 1 WHERE id = %s", (BIG_ID + n,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--big", type=int, default=20)
    parser.add_argument("--big-mb", type=int, default=50)
    parser.add_argument(
        "--set", action="append", default=[], metavar="RELAY_NAME=VALUE", help="a setting"
    )
    args = parser.parse_args()
    settings = {}
    for item in args.set:
        name, _, value = item.partition("=")
        settings[name.removeprefix("RELAY_").lower()] = value
    nginx = Nginx("relay-memory-")
    url = nginx.url
    cluster = start_temp_cluster(max_wal_size="4GB")
    try:
        with scratch_database(cluster.dsn, "relay_memory") as dsn:
            started = time.monotonic()
            build(dsn, url, args.small, args.big, args.big_mb)
            changes = args.small + 2 * args.big
            print(
                f"{changes} changes ({args.big} rows of {args.big_mb} MB inserted and updated"
                f" among {args.small} small ones) loaded in {time.monotonic() - started:.0f} s"
            )
            relay = start_relay(dsn, **settings)
            began = time.monotonic()
            peak_sampled = 0
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    pending = "SELECT count(*) FROM relay.outbox WHERE status = 'pending'"
                    for sample in itertools.count():
                        assert relay.poll() is None, "relay run stopped"
                        peak_sampled = max(peak_sampled, vm_kb(relay.pid, "VmRSS"))
                        if sample % 10 == 0:
                            row = conn.execute(pending).fetchone()
                            if row and row[0] == 0:
                                break
                        time.sleep(0.05)
                    took = time.monotonic() - began
                    peak = vm_kb(relay.pid, "VmHWM")
                    outcomes = conn.execute(OUTCOMES, {"big": BIG_ID}).fetchall()
            finally:
                stop_relay(relay)
    finally:
        nginx.close()
        cluster.stop()
    shown = " ".join(f"RELAY_{name.upper()}={value}" for name, value in settings.items())
    print(f"relay run ({shown or 'default settings'}): done in {took:.0f} s")
    for big, status, _, count, example in outcomes:
        print(f"  {'big' if big else 'small':>5} {status:>9} {count:>7}  {example or ''}")
    print(
        f"  peak RSS {peak / 1024:.0f} MB (VmHWM; sampled every 50 ms: {peak_sampled / 1024:.0f})"
    )
    small_ok = all(status == "delivered" for big, status, *_ in outcomes if not big)
    big_ok = all(
        status == "delivered"
        or reason == "change of N is over RELAY_MAX_BODY_BYTES (N)"
        or reason == "body of N is over RELAY_MAX_BODY_BYTES (N)"
        for big, status, reason, *_ in outcomes
        if big
    )
    assert sum(row[3] for row in outcomes) == changes, "changes are missing"
    assert small_ok and big_ok, "a change ended otherwise than documented"


if __name__ == "__main__":
    main()
