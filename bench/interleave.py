"""Random interleavings of writes, key moves, replays, retries, SQL resets and restarts, seed
after seed, against a real relay and a flaky receiver (tests/support/interleave.py).

    .venv/bin/python bench/interleave.py [--minutes 5] [--seed N] [--steps 25]
        [--ordering row|transaction|key] [--ordering-key '{{ pk.id % 2 }}']

Each seed gets a database of its own on RELAY_TEST_DSN, the server on 127.0.0.1:5432, or a
throwaway cluster. The seeds run one after the other from --seed (random when not given, and
printed first). After each, once the receiver is healthy again, nothing may be left pending,
no relay session may have failed, and per-row order must hold at the receiver (outside
replays), the receiver ending on the latest change of every row it heard of. The first seed
that breaks one prints what broke and the steps it took, and the command exits 1: keep that
seed as a case of tests/integration/test_interleavings.py once it is fixed. --ordering orders
both webhooks by transaction or by a key template (0026; tests/integration/test_ordering_scope.py
keeps its seeds).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from relay.store import Store
from relay.tempcluster import postgres_server, scratch_database
from support.interleave import interleave


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--ordering", default="row", choices=["row", "transaction", "key"])
    parser.add_argument("--ordering-key", default=None)
    args = parser.parse_args()
    first = random.randrange(1_000_000) if args.seed is None else args.seed
    print(f"seeds from {first}, {args.steps} steps each, for {args.minutes:g} minutes")
    deadline = time.monotonic() + args.minutes * 60
    seed = first
    with postgres_server(os.environ.get("RELAY_TEST_DSN")) as server:
        while time.monotonic() < deadline:
            with scratch_database(server, "relay_interleave") as dsn:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    Store(conn).install()
                run = asyncio.run(
                    interleave(dsn, seed, args.steps, args.ordering, args.ordering_key)
                )
            problems = run.problems()
            taken = sum(len(t.changes) for t in run.taken)
            print(f"seed {seed}: {len(run.steps)} steps, {taken} changes taken", flush=True)
            if problems:
                print("\n".join([*problems, "steps:", *run.steps]))
                sys.exit(1)
            seed += 1
    print(f"{seed - first} seeds, no problem")


if __name__ == "__main__":
    main()
