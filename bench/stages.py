"""Where a batched drain's ceiling comes from: fan-out alone and delivery alone, side by side.

    .venv/bin/python bench/stages.py [--changes 50000] [--rounds 3] [--batch-size 100]

Each round, on fresh scratch databases, a Worker (the code behind `relay run`) works on
--changes inserts to one webhook (nginx on 127.0.0.1):
- single: one request per change, drained whole (fan-out and delivery together);
- batched: the same with batch_size --batch-size;
- fan-out alone: the batched set-up with the Worker's claims switched off, until every change
  has its deliveries;
- delivery alone: the same database afterwards, claims back on, until every change is
  delivered.
Prints the medians and each one's ratio to single. A batched drain cannot beat the slower of
the two stages, nor, as they share the cores, the rate at which both together fit in them.
Needs nginx (apt-get install nginx-light).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import Nginx, drain, load

from relay.delivery.worker import Worker
from relay.service import logs
from relay.tempcluster import postgres_server, scratch_database

FANNED_OUT = (
    "SELECT NOT EXISTS (SELECT FROM relay.outbox WHERE status = 'pending'"
    " AND fanned_out_at IS NULL)"
)


async def _no_claims(*_: object) -> bool:
    return False


def fan_out_alone(dsn: str, changes: int) -> float:
    """Changes fanned out per second by a Worker that claims nothing."""
    claim_round = Worker._claim_round
    Worker._claim_round = _no_claims  # type: ignore[method-assign, assignment]
    try:
        return asyncio.run(drain(dsn, changes, done=FANNED_OUT))
    finally:
        Worker._claim_round = claim_round  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("RELAY_DSN"))
    parser.add_argument("--changes", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    logs.configure(file=open(os.devnull, "w"))  # noqa: SIM115 (open for the whole run)
    nginx = Nginx("relay-stages-")
    rates: dict[str, list[float]] = {
        "single": [],
        "batched": [],
        "fan-out alone": [],
        "delivery alone": [],
    }
    try:
        with postgres_server(args.dsn) as server:
            print(f"{os.cpu_count()} CPUs, {args.changes} changes, {args.rounds} rounds")
            for _ in range(args.rounds):
                with scratch_database(server, "relay_st1") as dsn:
                    load(dsn, nginx.url, args.changes)
                    rates["single"].append(asyncio.run(drain(dsn, args.changes)))
                with scratch_database(server, "relay_stb") as dsn:
                    load(dsn, nginx.url, args.changes, args.batch_size)
                    rates["batched"].append(asyncio.run(drain(dsn, args.changes)))
                with scratch_database(server, "relay_sts") as dsn:
                    load(dsn, nginx.url, args.changes, args.batch_size)
                    rates["fan-out alone"].append(fan_out_alone(dsn, args.changes))
                    rates["delivery alone"].append(asyncio.run(drain(dsn, args.changes)))
                print("  " + ", ".join(f"{name} {rate[-1]:.0f}/s" for name, rate in rates.items()))
    finally:
        nginx.close()
    single = statistics.median(rates["single"])
    for name, rate in rates.items():
        median = statistics.median(rate)
        print(f"{name:>15}: {median:8.0f} changes/s (median), {median / single:.2f}x single")


if __name__ == "__main__":
    main()
