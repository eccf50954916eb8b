"""What capture costs the application's own writes, measured side by side in one run.

    .venv/bin/python bench/capture.py [--rounds 3] [--duration 20] [--before GIT_REF]
                                      [--synchronous-commit off] [--dsn DSN]

1. pgbench's tpcb-like workload, in interleaved rounds, four ways: no capture; the four pgbench
   tables tracked by relay; the same tables with PgQ's ``pgq.logutriga`` (when the extension is
   installed: apt-get install postgresql-15-pgq3); and, as a reference point, the least a
   PL/pgSQL row trigger can do (insert ``to_jsonb(NEW)`` into a table). Prints the median TPS of
   each and its ratio to the untracked median.
2. CPU per one-row UPDATE and INSERT, read from the server process that ran 20,000 of them in
   one session (steady on a busy machine, where throughput is not).
3. Big statements: one UPDATE of every row of pgbench_accounts (1,000,000 rows at scale 10),
   an INSERT ... SELECT of 100,000 pgbench_history rows and a DELETE of them, each untracked,
   tracked by relay and by PgQ, alternating; prints the median times and their ratios.

With ``--before REF`` both are also measured in a second database holding relay's schema as git
REF had it, in the same interleaved rounds: the before/after figures of a change to capture.

Runs on a private cluster started for the run with PostgreSQL's default settings (autovacuum
and fsync on), unless --dsn names a server. The machines this runs on are noisy: only ratios
from the same run mean anything.
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
from contextlib import ExitStack
from pathlib import Path

import psycopg

from relay.sqlfiles import parse_named
from relay.store import Store
from relay.tempcluster import (
    find_server_binaries,
    postgres_server,
    scratch_database,
    start_temp_cluster,
)

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


def measure_tps(
    pgbench: str, targets: dict[str, str], args: argparse.Namespace
) -> dict[str, list[float]]:
    """Interleaved rounds of every mode; a mode is ``name`` on the database under test, or
    ``name@ref`` on the database that holds relay as it was at git ``ref``."""
    modes = ["none", "relay", "rowtrigger"]
    if has_pgq(targets["now"]):
        modes.insert(2, "pgq")
    for ref in (name for name in targets if name != "now"):
        modes += [f"none@{ref}", f"relay@{ref}"]
    results: dict[str, list[float]] = {m: [] for m in modes}
    for round_no in range(args.rounds):
        order = modes[round_no % len(modes) :] + modes[: round_no % len(modes)]
        for mode in order:
            name, _, ref = mode.partition("@")
            where = targets[ref or "now"]
            if name != "none":
                run_sql(where, f"track_{name}")
            run_sql(where, "empty_queues")
            if name == "pgq":
                run_sql(where, "empty_pgq")
            run_sql(where, "checkpoint")
            tps = tps_run(pgbench, where, args)
            if name != "none":
                run_sql(where, f"untrack_{name}")
            results[mode].append(tps)
            print(f"  round {round_no + 1} {mode:>16}: {tps:9.1f} tps", flush=True)
    return results


def timed(dsn: str, name: str) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        start = time.perf_counter()
        conn.execute(Q[name].encode())
        return time.perf_counter() - start


BULK = {
    "update 1M": ("bulk_update", None),
    "insert 100k": ("bulk_insert", None),
    "delete 100k": ("bulk_delete", "bulk_insert"),
}


def measure_bulk(targets: dict[str, str], rounds: int) -> dict[str, list[float]]:
    """Each big statement untracked, tracked by relay and by PgQ, alternating; a mode is
    ``statement: way[@ref]``."""
    ways = ["untracked", "tracked"]
    if has_pgq(targets["now"]):
        ways.append("pgq")
    for ref in (name for name in targets if name != "now"):
        ways += [f"untracked@{ref}", f"tracked@{ref}"]
    results: dict[str, list[float]] = {f"{b}: {w}": [] for b in BULK for w in ways}
    with psycopg.connect(targets["now"]) as conn:
        accounts = conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone()
    for round_no in range(rounds):
        order = ways if round_no % 2 == 0 else ways[::-1]
        for bulk, (statement, before) in BULK.items():
            for way in order:
                name, _, ref = way.partition("@")
                dsn = targets[ref or "now"]
                run_sql(dsn, "empty_history")
                run_sql(dsn, "settle")
                run_sql(dsn, "empty_queues")
                if before:
                    run_sql(dsn, before)
                if name == "tracked":
                    run_sql(dsn, "track_relay")
                elif name == "pgq":
                    run_sql(dsn, "empty_pgq")
                    run_sql(dsn, "track_pgq")
                run_sql(dsn, "checkpoint")
                seconds = timed(dsn, statement)
                if name == "tracked":
                    run_sql(dsn, "untrack_relay")
                    with psycopg.connect(dsn) as conn:
                        recorded = conn.execute(Q["count_outbox"]).fetchone()
                    expected = accounts if statement == "bulk_update" else (100_000,)
                    if recorded != expected:
                        sys.exit(f"tracked {bulk} recorded {recorded} changes, not {expected}")
                elif name == "pgq":
                    run_sql(dsn, "untrack_pgq")
                results[f"{bulk}: {way}"].append(seconds)
                label = f"{bulk}: {way}"
                print(f"  round {round_no + 1} {label:>28}: {seconds:7.2f} s", flush=True)
    return results


def backend_cpu(pid: int) -> float:
    """CPU seconds a server process has used (the server runs on this machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_cpu(targets: dict[str, str], args: argparse.Namespace) -> dict[str, list[float]]:
    """CPU microseconds per one-row statement, read from the server process that ran a loop of
    them: unlike throughput, barely moved by whatever else the machine is doing."""
    modes = ["none", "relay", "rowtrigger"]
    if has_pgq(targets["now"]):
        modes.insert(2, "pgq")
    for ref in (name for name in targets if name != "now"):
        modes += [f"none@{ref}", f"relay@{ref}"]
    loop = "DO $$ BEGIN FOR i IN 1..{n} LOOP {statement}; END LOOP; END $$"
    statements = {
        "update": "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = i % 100000 + 1",
        "insert": "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime)"
        " VALUES (1, 1, i, 1, now())",
    }
    results: dict[str, list[float]] = {f"{m} {k}": [] for m in modes for k in statements}
    for round_no in range(args.rounds):
        for mode in modes[round_no % len(modes) :] + modes[: round_no % len(modes)]:
            name, _, ref = mode.partition("@")
            dsn = targets[ref or "now"]
            if name != "none":
                run_sql(dsn, f"track_{name}")
            for kind, statement in statements.items():
                run_sql(dsn, "empty_queues")
                with psycopg.connect(dsn, autocommit=True) as conn:
                    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
                    conn.execute(loop.format(n=100, statement=statement).encode())
                    start = backend_cpu(pid)
                    conn.execute(loop.format(n=args.cpu_statements, statement=statement).encode())
                    used = backend_cpu(pid) - start
                results[f"{mode} {kind}"].append(used * 1e6 / args.cpu_statements)
            if name != "none":
                run_sql(dsn, f"untrack_{name}")
            print(
                f"  round {round_no + 1} {mode:>16}: "
                + ", ".join(f"{k} {results[f'{mode} {k}'][-1]:.1f} us" for k in statements),
                flush=True,
            )
    return results


def install_at(dsn: str, ref: str) -> None:
    """relay's schema as git ``ref`` had it, for a before/after comparison in one run."""

    def show(path: str) -> str:
        return subprocess.run(
            ["git", "show", f"{ref}:{path}"], capture_output=True, text=True, check=True
        ).stdout

    listing = subprocess.run(
        ["git", "ls-tree", "--name-only", f"{ref}:sql/migrations"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(show("sql/bootstrap.sql").encode())
        for name in sorted(listing):
            conn.execute(show(f"sql/migrations/{name}").encode())


def report(title: str, results: dict[str, list[float]], base_of: dict[str, str]) -> None:
    """Medians, each with its ratio to the untracked median of its own database."""
    print(f"\n  {title:<16} {'median':>10}   ratio")
    for mode, values in results.items():
        median = statistics.median(values)
        base = statistics.median(results[base_of[mode]])
        print(f"  {mode:<16} {median:10.2f}   {median / base:6.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="a server to use instead of a private cluster")
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale (10 = 1M accounts)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--duration", type=int, default=20, help="seconds per pgbench run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bulk-rounds", type=int, default=3)
    parser.add_argument("--skip-tps", action="store_true")
    parser.add_argument("--skip-bulk", action="store_true")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument(
        "--cpu-statements", type=int, default=20_000, help="one-row statements per CPU loop"
    )
    parser.add_argument(
        "--synchronous-commit", choices=["on", "off"], default="on", help="for every writer"
    )
    parser.add_argument(
        "--before",
        metavar="GIT_REF",
        help="also measure relay as it was at this commit, in a second database, same run",
    )
    args = parser.parse_args()
    Q["checkpoint"] = "CHECKPOINT"
    pgbench = pgbench_binary()
    os.environ["PGOPTIONS"] = f"-c synchronous_commit={args.synchronous_commit}"

    with ExitStack() as stack:
        if args.dsn:
            server = stack.enter_context(postgres_server(args.dsn))
        else:
            # PostgreSQL's defaults: the test clusters run with fsync off, which would make
            # synchronous_commit = on cost nothing.
            cluster = start_temp_cluster(fsync="on")
            stack.callback(cluster.stop)
            server = cluster.dsn
        targets = {"now": stack.enter_context(scratch_database(server, "relay_bench"))}
        if args.before:
            targets[args.before] = stack.enter_context(scratch_database(server, "relay_before"))
        for ref, dsn in targets.items():
            if ref == "now":
                with psycopg.connect(dsn, autocommit=True) as conn:
                    Store(conn).install()
            else:
                install_at(dsn, ref)
            subprocess.run(
                [pgbench, "-i", "-q", "-s", str(args.scale), dsn], check=True, capture_output=True
            )
        for dsn in targets.values():
            run_sql(dsn, "setup_rowtrigger")
        if has_pgq(targets["now"]):
            run_sql(targets["now"], "setup_pgq")
        else:
            print("PgQ is not installed here: skipped (apt-get install postgresql-15-pgq3)")
        with psycopg.connect(targets["now"], autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            autovacuum = conn.execute("SHOW autovacuum").fetchone()
        where = "shared server" if args.dsn else "private cluster"
        print(
            f"PostgreSQL {version[0] if version else '?'} ({where}, autovacuum "
            f"{autovacuum[0] if autovacuum else '?'}), synchronous_commit "
            f"{args.synchronous_commit}, pgbench scale {args.scale}, "
            f"{args.clients} clients, {args.threads} threads, {os.cpu_count()} CPUs"
        )

        if not args.skip_cpu and not args.dsn:
            print(
                f"\nCPU per one-row statement, {args.cpu_statements} in one session, "
                f"{args.rounds} rounds:"
            )
            cpu = measure_cpu(targets, args)
            bases = {
                m: "none"
                + ("@" + m.split()[0].partition("@")[2] if "@" in m else "")
                + " "
                + m.split()[1]
                for m in cpu
            }
            report("mode (us/statement)", cpu, bases)
        if not args.skip_tps:
            print(f"\npgbench tpcb-like, {args.duration} s per run, {args.rounds} rounds:")
            tps = measure_tps(pgbench, targets, args)
            bases = {m: "none@" + m.partition("@")[2] if "@" in m else "none" for m in tps}
            report("mode (tps)", tps, bases)
        if not args.skip_bulk:
            print(
                f"\nBig statements (UPDATE of every pgbench_accounts row, INSERT and DELETE of "
                f"100,000 pgbench_history rows), {args.bulk_rounds} rounds:"
            )
            bulk = measure_bulk(targets, args.bulk_rounds)
            bases = {
                m: m.split(": ")[0] + ": untracked" + ("@" + m.split("@")[1] if "@" in m else "")
                for m in bulk
            }
            report("statement (seconds)", bulk, bases)


if __name__ == "__main__":
    main()
