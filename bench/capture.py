"""What capture costs the application's own writes, measured side by side in one run.

    .venv/bin/python bench/capture.py [--dsn DSN] [--rounds 3] [--duration 20]

1. pgbench's tpcb-like workload, in interleaved rounds, four ways: no capture; the four pgbench
   tables tracked by relay; the same tables with PgQ's ``pgq.logutriga`` (when the extension is
   installed: apt-get install postgresql-15-pgq3); and, as a reference point, the least a
   PL/pgSQL row trigger can do (insert ``to_jsonb(NEW)`` into a table). Prints the median TPS of
   each and its ratio to the untracked median.
2. One UPDATE of every row of pgbench_accounts (1,000,000 rows at scale 10), untracked and
   tracked, alternating; prints the median times and their ratio.

Runs in a scratch database on $RELAY_DSN's server, 127.0.0.1:5432, or a throwaway cluster, and
drops it afterwards. The machines this runs on are noisy: only ratios from the same run mean
anything.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from relay import schema
from relay.sqlfiles import parse_named
from relay.tempcluster import find_server_binaries, postgres_server, scratch_database

Q = parse_named((Path(__file__).parent / "capture.sql").read_text())
TPS = re.compile(r"^tps = ([\d.]+) \(without initial connection time\)", re.MULTILINE)


def pgbench_binary() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    server_bins = find_server_binaries()
    if server_bins and (server_bins / "pgbench").exists():
        return str(server_bins / "pgbench")
    sys.exit("pgbench not found: apt-get install postgresql-contrib (or postgresql-client)")


def run_sql(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(Q[name].encode())


def has_pgq(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'pgq'")
        available = row.fetchone()
    return bool(available and available[0])


def tps_run(pgbench: str, dsn: str, args: argparse.Namespace) -> float:
    result = subprocess.run(
        [pgbench, "-c", str(args.clients), "-j", str(args.threads), "-T", str(args.duration), dsn],
        capture_output=True,
        text=True,
        check=False,
    )
    match = TPS.search(result.stdout)
    if result.returncode != 0 or not match:
        sys.exit(f"pgbench failed:\n{result.stdout}\n{result.stderr}")
    return float(match[1])


def measure_tps(pgbench: str, dsn: str, args: argparse.Namespace) -> dict[str, list[float]]:
    modes = ["none", "relay", "relay_noindex", "rowtrigger"]
    run_sql(dsn, "setup_rowtrigger")
    if has_pgq(dsn):
        run_sql(dsn, "setup_pgq")
        modes.insert(2, "pgq")
    else:
        print("PgQ is not installed here: skipped (apt-get install postgresql-15-pgq3)")
    results: dict[str, list[float]] = {m: [] for m in modes}
    for round_no in range(args.rounds):
        order = modes[round_no % len(modes) :] + modes[: round_no % len(modes)]
        for mode in order:
            if mode != "none":
                run_sql(dsn, f"track_{mode}")
            run_sql(dsn, "empty_queues")
            if mode == "pgq":
                run_sql(dsn, "empty_pgq")
            run_sql(dsn, "checkpoint")
            tps = tps_run(pgbench, dsn, args)
            if mode != "none":
                run_sql(dsn, f"untrack_{mode}")
            results[mode].append(tps)
            print(f"  round {round_no + 1} {mode:>13}: {tps:9.1f} tps", flush=True)
    return results


def timed(dsn: str, name: str) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        start = time.perf_counter()
        conn.execute(Q[name].encode())
        return time.perf_counter() - start


def measure_bulk(dsn: str, rounds: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"untracked": [], "tracked": []}
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone()
    for round_no in range(rounds):
        order = ["untracked", "tracked"] if round_no % 2 == 0 else ["tracked", "untracked"]
        for mode in order:
            run_sql(dsn, "settle")
            run_sql(dsn, "empty_queues")
            if mode == "tracked":
                run_sql(dsn, "track_relay")
            run_sql(dsn, "checkpoint")
            seconds = timed(dsn, "bulk_update")
            if mode == "tracked":
                run_sql(dsn, "untrack_relay")
                with psycopg.connect(dsn) as conn:
                    recorded = conn.execute(Q["count_outbox"]).fetchone()
                if recorded != rows:
                    sys.exit(f"tracked bulk UPDATE recorded {recorded} changes, expected {rows}")
            results[mode].append(seconds)
            print(f"  round {round_no + 1} {mode:>13}: {seconds:7.2f} s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("RELAY_DSN"))
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale (10 = 1M accounts)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--duration", type=int, default=20, help="seconds per pgbench run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bulk-rounds", type=int, default=3)
    parser.add_argument("--skip-tps", action="store_true")
    parser.add_argument("--skip-bulk", action="store_true")
    args = parser.parse_args()
    Q["checkpoint"] = "CHECKPOINT"
    pgbench = pgbench_binary()

    with postgres_server(args.dsn) as server, scratch_database(server, "relay_bench") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            schema.install(conn)
            version = conn.execute("SHOW server_version").fetchone()
        subprocess.run(
            [pgbench, "-i", "-q", "-s", str(args.scale), dsn], check=True, capture_output=True
        )
        print(
            f"PostgreSQL {version[0] if version else '?'}, pgbench scale {args.scale}, "
            f"{args.clients} clients, {args.threads} threads, {os.cpu_count()} CPUs"
        )

        if not args.skip_tps:
            print(f"\npgbench tpcb-like, {args.duration} s per run, {args.rounds} rounds:")
            tps = measure_tps(pgbench, dsn, args)
            base = statistics.median(tps["none"])
            print("\n  mode          median tps   ratio to untracked")
            for mode, values in tps.items():
                median = statistics.median(values)
                print(f"  {mode:<12} {median:11.1f}   {median / base:6.3f}")
        if not args.skip_bulk:
            print(f"\nUPDATE of every pgbench_accounts row, {args.bulk_rounds} rounds:")
            bulk = measure_bulk(dsn, args.bulk_rounds)
            untracked = statistics.median(bulk["untracked"])
            tracked = statistics.median(bulk["tracked"])
            print(
                f"\n  untracked {untracked:.2f} s, tracked {tracked:.2f} s: "
                f"ratio {tracked / untracked:.2f}"
            )


if __name__ == "__main__":
    main()
