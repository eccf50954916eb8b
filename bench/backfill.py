"""Backfill: how fast `relay backfill` writes snapshots, and what it costs writers meanwhile.

    .venv/bin/python bench/backfill.py [--rows 1000000] [--rounds 3] [--clients 4] [--batch 10000]

Each round, on a fresh scratch database (on $RELAY_DSN's server, or a throwaway cluster), a
tracked table of --rows rows (id, a text, two integers, a timestamp):
1. alone: `relay backfill` (the command, as an operator runs it) writes a snapshot of every row;
   rows per second from start to end;
2. writers alone: pgbench (--clients clients) updates random rows of the same table (each update
   captured), for as long as the backfill took; transactions per second;
3. together: the same pgbench while `relay backfill --again` runs; both rates;
4. paced: the same pgbench beside `relay backfill --again --rate` (--rate rows a second).
Prints the medians, and the ratio of the writers' rate beside a backfill to their rate alone
(same run), and of the backfill's rate beside writers to its rate alone.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capture import pgbench_binary

from relay.store import Store
from relay.tempcluster import postgres_server, scratch_database

UPDATE_SCRIPT = """\\set id random(1, {rows})
UPDATE items SET qty = qty + 1 WHERE id = :id;
"""


def load(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        Store(conn).install()
        conn.execute(
            "CREATE TABLE items (id int PRIMARY KEY, name text, qty int, price int,"
            " changed timestamptz DEFAULT now())"
        )
        conn.execute(
            "INSERT INTO items SELECT g, 'item ' || g, g %% 100, g %% 1000"
            " FROM generate_series(1, %s) g",
            (rows,),
        )
        conn.execute("VACUUM ANALYZE items")
        conn.execute("SELECT relay.track('items')")
        conn.execute(
            "INSERT INTO relay.webhooks (name, payload_url, secret)"
            " VALUES ('bench', 'http://127.0.0.1:9/', 's')"
        )
        conn.execute(
            "INSERT INTO relay.event_rules (name, tables, events, webhook_id)"
            " SELECT 'bench', ARRAY['public.items'], ARRAY['update', 'snapshot'], id"
            " FROM relay.webhooks"
        )


def backfill(dsn: str, *more: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RELAY_DSN": dsn}
    return subprocess.Popen(
        [sys.executable, "-m", "relay", "backfill", "public.items", *more],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def finish(process: subprocess.Popen[bytes]) -> None:
    _, stderr = process.communicate()
    if process.returncode != 0:
        sys.exit(f"relay backfill failed: {stderr.decode()}")


def pgbench(
    binary: str, dsn: str, script: Path, clients: int, seconds: float
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            binary,
            "-n",
            "-f",
            str(script),
            "-c",
            str(clients),
            "-j",
            str(clients),
            "-T",
            str(max(1, round(seconds))),
            dsn,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def tps(process: subprocess.Popen[str]) -> float:
    stdout, stderr = process.communicate()
    found = re.search(r"tps = ([\d.]+)", stdout)
    if process.returncode != 0 or not found:
        sys.exit(f"pgbench failed:\n{stdout}\n{stderr}")
    return float(found[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("RELAY_DSN"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1_000, help="rows per chunk")
    parser.add_argument("--rate", type=int, default=20_000, help="the paced backfill's rows/s")
    args = parser.parse_args()
    binary = pgbench_binary()
    script = Path(tempfile.mkdtemp(prefix="relay-backfill-")) / "update.sql"
    script.write_text(UPDATE_SCRIPT.format(rows=args.rows))
    alone, beside, writers, writers_beside, writers_paced = [], [], [], [], []
    with postgres_server(args.dsn) as server:
        print(f"{os.cpu_count()} CPUs, {args.rows} rows, pgbench {args.clients} clients")
        for _ in range(args.rounds):
            with scratch_database(server, "relay_bf") as dsn:
                load(dsn, args.rows)
                started = time.monotonic()
                finish(backfill(dsn, "--batch", str(args.batch)))
                took = time.monotonic() - started
                alone.append(args.rows / took)
                writers.append(tps(pgbench(binary, dsn, script, args.clients, took)))
                bench = pgbench(binary, dsn, script, args.clients, took)
                started = time.monotonic()
                finish(backfill(dsn, "--again", "--batch", str(args.batch)))
                beside.append(args.rows / (time.monotonic() - started))
                writers_beside.append(tps(bench))
                bench = pgbench(binary, dsn, script, args.clients, took)
                paced = backfill(
                    dsn, "--again", "--batch", str(args.batch), "--rate", str(args.rate)
                )
                writers_paced.append(tps(bench))
                paced.send_signal(signal.SIGINT)  # the rest is not measured: stop it
                paced.wait()
            print(
                f"  backfill alone {alone[-1]:8.0f} rows/s, beside writers {beside[-1]:8.0f}"
                f" rows/s; writers alone {writers[-1]:6.0f} tps, beside a backfill"
                f" {writers_beside[-1]:6.0f} tps, beside one paced at {args.rate} rows/s"
                f" {writers_paced[-1]:6.0f} tps"
            )
    a, b = statistics.median(alone), statistics.median(beside)
    w, wb = statistics.median(writers), statistics.median(writers_beside)
    print(f"backfill: {a:.0f} rows/s alone, {b:.0f} beside writers ({b / a:.2f})")
    print(f"writers: {w:.0f} tps alone, {wb:.0f} beside a backfill ({wb / w:.2f})")
    wp = statistics.median(writers_paced)
    print(f"writers beside a backfill paced at {args.rate} rows/s: {wp:.0f} tps ({wp / w:.2f})")


if __name__ == "__main__":
    main()
