"""kill -9 at random moments: nothing lost, duplicates bounded by what the dead relays held.

    .venv/bin/python bench/faults.py [--changes 20000] [--kills 20] [--seconds 20]

A writer commits --changes inserts into a tracked table, evenly over --seconds (ten rows per
transaction). Meanwhile `relay run` delivers them to nginx, and is killed with SIGKILL
--kills times at random moments, a new one started at once each time (the killed one's leases
are taken over when they expire: RELAY_LEASE_SECONDS=5 here). nginx logs the X-Relay-Delivery
header of every request it answers. At the end it prints: every change arrived or not, the
duplicates, and the bound they must stay under: the deliveries each killed relay held at the
moment it died (claimed, in flight, or answered with the outcome not yet written).
Needs nginx (apt-get install nginx-light).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import Nginx, load, start_relay, write_steadily

from relay.tempcluster import postgres_server, scratch_database


def held_by(conn: psycopg.Connection[tuple[object, ...]], pid: int) -> int:
    row = conn.execute(
        "SELECT count(*) FROM relay.deliveries WHERE leased_by LIKE %s", (f"%:{pid}",)
    ).fetchone()
    return int(str(row[0])) if row else 0


def write(dsn: str, changes: int, seconds: float) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        write_steadily(conn, changes, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("RELAY_DSN"))
    parser.add_argument("--changes", type=int, default=20_000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    nginx = Nginx("relay-faults-", log_format="$http_x_relay_delivery")
    root, url = nginx.root, nginx.url
    try:
        with postgres_server(args.dsn) as server, scratch_database(server, "relay_faults") as dsn:
            load(dsn, url, 0)
            writer = threading.Thread(target=write, args=(dsn, args.changes, args.seconds))
            started = time.monotonic()
            relay = start_relay(dsn, lease_seconds="5")
            writer.start()
            bound = 0
            with psycopg.connect(dsn, autocommit=True) as conn:
                for _ in range(args.kills):
                    time.sleep(rng.uniform(0.2, 2 * args.seconds / args.kills - 0.2))
                    relay.kill()  # SIGKILL: nothing released, nothing written
                    relay.wait()
                    # Its leases stay until they expire: what it held as it died.
                    bound += held_by(conn, relay.pid)
                    relay = start_relay(dsn, lease_seconds="5")
                writer.join()
                while True:
                    row = conn.execute(
                        "SELECT count(*) FROM relay.outbox WHERE status <> 'delivered'"
                    ).fetchone()
                    if row and row[0] == 0:
                        break
                    time.sleep(0.2)
            elapsed = time.monotonic() - started
            relay.send_signal(signal.SIGTERM)
            relay.wait()
    finally:
        nginx.stop()  # graceful: flushes the access log
    ids = Counter(line.strip() for line in (root / "access.log").read_text().splitlines())
    nginx.close()
    duplicates = sum(ids.values()) - len(ids)
    print(f"{args.changes} changes over {args.seconds:g} s, relay killed {args.kills} times")
    print(f"  all delivered after {elapsed:.1f} s; distinct changes received: {len(ids)}")
    print(f"  duplicates: {duplicates} (bound: {bound} held by the killed relays)")
    if len(ids) != args.changes or duplicates > bound:
        sys.exit("FAILED: a change is missing or there are more duplicates than the bound")


if __name__ == "__main__":
    main()
