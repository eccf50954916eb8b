"""Replay: how long `relay replay` takes, and the memory it needs, for a large stretch.

    .venv/bin/python bench/replay.py [--changes 100000] [--rounds 3]

Each round, on a fresh scratch database (on $RELAY_DSN's server, or a throwaway cluster):
--changes changes of a tracked table, delivered to webhook `old` (written as a relay leaves
them), then, timed as an operator runs them:
1. `relay replay --webhook old --since 1h` (its deliveries made pending again, in SQL);
2. `relay replay --webhook new --since 1h`, a webhook added since, whose rule has a condition
   (every change read and judged in the command, its deliveries written).
Prints each command's seconds and changes per second, and its peak RSS, medians of the rounds.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

import psycopg

from relay.store import Store
from relay.tempcluster import postgres_server, scratch_database


def load(dsn: str, changes: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        Store(conn).install()
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text, qty int)")
        conn.execute("SELECT relay.track('items')")
        conn.execute(
            "INSERT INTO items SELECT g, 'item ' || g, g %% 100 FROM generate_series(1, %s) g",
            (changes,),
        )
        for name, conditions in (
            ("old", None),
            ("new", '{"attr": "data.qty", "value": 50, "op": "lt"}'),
        ):
            conn.execute(
                "INSERT INTO relay.webhooks (name, payload_url, secret)"
                " VALUES (%s, 'http://127.0.0.1:9/', 's')",
                (name,),
            )
            conn.execute(
                "INSERT INTO relay.event_rules (name, tables, conditions, webhook_id)"
                " SELECT %s, ARRAY['public.items'], %s::jsonb, id FROM relay.webhooks"
                " WHERE name = %s",
                (name, conditions, name),
            )
        conn.execute(
            "INSERT INTO relay.deliveries (outbox_id, webhook_id, rule_id, row_key, status,"
            " change_bytes) SELECT o.id, r.webhook_id, r.id,"
            " 'public.items:' || o.pk::jsonb::text, 'delivered', octet_length(o.new::text)"
            " FROM relay.outbox o, relay.event_rules r WHERE r.name = 'old'"
        )
        conn.execute("UPDATE relay.outbox SET status = 'delivered', processed_at = now()")
        conn.execute("VACUUM ANALYZE relay.outbox, relay.deliveries")


def timed(dsn: str, webhook: str) -> tuple[float, float]:
    """Seconds `relay replay --webhook WEBHOOK --since 1h` took, and its peak RSS in MB."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "relay", "replay", "--webhook", webhook, "--since", "1h"],
        env={**os.environ, "RELAY_DSN": dsn},
        capture_output=True,
        text=True,
        check=False,
    )
    took = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"relay replay failed: {result.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return took, max(peak, before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("RELAY_DSN"))
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
    with postgres_server(args.dsn) as server:
        print(f"{os.cpu_count()} CPUs, {args.changes} changes, {args.rounds} rounds")
        for _ in range(args.rounds):
            with scratch_database(server, "relay_rp") as dsn:
                load(dsn, args.changes)
                for webhook in results:
                    results[webhook].append(timed(dsn, webhook))
            print("  " + ", ".join(f"{w} {r[-1][0]:.2f} s" for w, r in results.items()))
    for webhook, what in (("old", "re-armed in SQL"), ("new", "matched in the command")):
        took = statistics.median(t for t, _ in results[webhook])
        peak = max(p for _, p in results[webhook])
        print(
            f"{what}: {took:.2f} s, {args.changes / took:.0f} changes/s;"
            f" peak RSS of the commands so far {peak:.0f} MB"
        )


if __name__ == "__main__":
    main()
