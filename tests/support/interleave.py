"""Random interleavings of writes, replays, retries, SQL resets and restarts, against a real
relay and a receiver on 127.0.0.1 that fails some requests and is slow on others; then what
must hold once the receiver is healthy again (tests/integration/test_interleavings.py runs a
few seeds, bench/interleave.py as many as it has minutes for).

Per seed: a table of a few rows, a batched webhook and a single-change one (each with two
attempts per change, so that changes fail for good), and a sequence of steps drawn from the
seed: inserts, updates, primary-key updates and deletes (one to three in a transaction), pauses,
`relay replay` (either webhook, any --status), `relay retry`, the SQL reset, a restart of the
relay. The receiver's answers and delays are drawn from the seed too, but when each request
comes depends on timing, so a seed replays the same steps, not always the same run.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from aiohttp import web
from structlog.testing import capture_logs

from relay.delivery.worker import Worker
from relay.settings import Settings
from support.cli import relay
from support.receivers import receiver

KEYS = range(1, 6)
"""The primary keys rows take (and move between)."""
DRAIN_SECONDS = 40.0


@dataclass
class Taken:
    """One request the receiver answered 200 to: per change, its outbox id, the key it is
    about and, for a key move, the key it moved from."""

    webhook: str
    replay: bool
    changes: list[tuple[int, int, int | None]]


@dataclass
class Run:
    """What a seed did and what the receiver took."""

    seed: int
    steps: list[str] = field(default_factory=list)
    taken: list[Taken] = field(default_factory=list)
    failed_sessions: list[str] = field(default_factory=list)
    drained: bool = False
    left: list[tuple[Any, ...]] = field(default_factory=list)
    delivered: set[tuple[str, int]] = field(default_factory=set)
    """(webhook, change) of the deliveries that ended delivered."""

    def problems(self) -> list[str]:
        """What broke a promise: something left pending, a relay session that failed, a
        change of a row taken after a later change of that row (outside replays), or a
        receiver that did not end on the newest change of a row delivered to it (a replay
        whose later change then failed for good leaves it on an older one: that later change
        did not end delivered)."""
        found = []
        if not self.drained:
            found.append(f"not drained within {DRAIN_SECONDS:.0f} s: {self.left}")
        found += [f"a relay session failed: {line}" for line in self.failed_sessions]
        found += self._order()
        return found

    def _order(self) -> list[str]:
        found = []
        newest: dict[tuple[str, int], int] = {}
        told: dict[tuple[str, int], list[int]] = {}
        for taken in self.taken:
            for change, key, old in taken.changes:
                for k in {key, old} - {None}:
                    assert k is not None
                    row = (taken.webhook, k)
                    if not taken.replay and change < newest.get(row, 0):
                        found.append(
                            f"{taken.webhook}: change {change} of row {k} taken after change "
                            f"{newest[row]}"
                        )
                    if not taken.replay:
                        newest[row] = max(newest.get(row, 0), change)
                    told.setdefault(row, []).append(change)
        for row, changes in sorted(told.items()):
            ended = max((c for c in changes if (row[0], c) in self.delivered), default=None)
            if ended is not None and changes[-1] != ended:
                found.append(
                    f"{row[0]}: row {row[1]} ended on change {changes[-1]}, not on {ended}, the "
                    f"newest delivered (taken: {changes})"
                )
        return found


def _changes(body: Any) -> list[tuple[int, int, int | None]]:
    items = body if isinstance(body, list) else [body]
    found = []
    for item in items:
        key = item["pk"]["id"]
        before = item["snapshots"]["prechange"]
        moved = before["id"] if before and item["event"] == "updated" else None
        found.append((item["id"], key, moved if moved != key else None))
    return found


async def interleave(
    dsn: str, seed: int, steps: int = 25, ordering: str = "row", ordering_key: str | None = None
) -> Run:
    """Run one seed against the relay schema at ``dsn`` (an empty database with relay
    installed) and say what happened; both webhooks ordered by ``ordering`` (0026)."""
    draw = random.Random(seed)
    answers = random.Random(seed + 1)
    run = Run(seed)
    state = {"healthy": False}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        if not state["healthy"]:
            roll = answers.random()
            if roll < 0.2:
                return web.Response(status=500)
            if roll < 0.4:
                await asyncio.sleep(answers.uniform(0.05, 0.4))
        replay = request.headers.get("X-Relay-Replay") == "true"
        run.taken.append(Taken(request.path.strip("/"), replay, _changes(json.loads(body))))
        return web.Response(text="ok")

    settings = Settings(
        poll_interval=0.2,
        retry_base_seconds=0.05,
        retry_max_seconds=0.2,
        lease_seconds=5,
        shutdown_grace_seconds=1,
        webhook_concurrency=draw.choice([1, 2]),
        breaker_failures=1000,
    )
    async with receiver(hook) as r:
        base = r.url.rsplit("/", 1)[0]
        with psycopg.connect(dsn, autocommit=True) as conn:
            _setup(conn, base, draw)
            conn.execute(
                "UPDATE relay.webhooks SET ordering = %s, ordering_key = %s",
                (ordering, ordering_key),
            )
            with capture_logs() as logs:
                async with _relay(dsn, settings) as relays:
                    present: set[int] = set()
                    for _ in range(steps):
                        run.steps.append(await _step(conn, dsn, draw, present, relays))
                    state["healthy"] = True
                    run.drained = await _drained(conn)
                    run.delivered = {
                        (str(name), int(change))
                        for name, change in conn.execute(
                            "SELECT w.name, d.outbox_id FROM relay.deliveries d"
                            " JOIN relay.webhooks w ON w.id = d.webhook_id"
                            " WHERE d.status = 'delivered'"
                        )
                    }
                    if not run.drained:
                        run.left = conn.execute(
                            "SELECT d.outbox_id, w.name, d.status::text, d.batch_id,"
                            " d.next_attempt_at <= now(), d.leased_until FROM relay.deliveries d"
                            " JOIN relay.webhooks w ON w.id = d.webhook_id"
                            " WHERE d.status = 'pending' ORDER BY 1"
                        ).fetchall()
            run.failed_sessions = [
                str(entry.get("error"))
                for entry in logs
                if entry["event"] == "relay session failed"
            ]
    return run


def _setup(conn: psycopg.Connection[Any], base: str, draw: random.Random) -> None:
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL DEFAULT 0)")
    conn.execute("SELECT relay.track('items')")
    batch = draw.choice([2, 3])
    wait = draw.choice([0, 50])
    for name, size, wait_ms in (("batched", batch, wait), ("single", 1, 0)):
        conn.execute(
            "INSERT INTO relay.webhooks (name, payload_url, secret, batch_size, batch_wait_ms,"
            " max_attempts) VALUES (%s, %s, 's', %s, %s, 2)",
            (name, f"{base}/{name}", size, wait_ms),
        )
        conn.execute(
            "INSERT INTO relay.event_rules (name, tables, webhook_id)"
            " SELECT %s, ARRAY['public.items'], id FROM relay.webhooks WHERE name = %s",
            (name, name),
        )


class _Relays:
    """The relay under test, which a step may restart."""

    def __init__(self, dsn: str, settings: Settings) -> None:
        self.dsn = dsn
        self.settings = settings
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(Worker(self.settings, self.dsn).run(self.stop))

    async def halt(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 15)


@asynccontextmanager
async def _relay(dsn: str, settings: Settings) -> AsyncIterator[_Relays]:
    relays = _Relays(dsn, settings)
    relays.start()
    try:
        yield relays
    finally:
        await relays.halt()


async def _step(
    conn: psycopg.Connection[Any],
    dsn: str,
    draw: random.Random,
    present: set[int],
    relays: _Relays,
) -> str:
    """One step drawn from ``draw``; what it did, in a few words."""
    roll = draw.random()
    if roll < 0.55:
        return _write(conn, draw, present)
    if roll < 0.7:
        seconds = draw.uniform(0.05, 0.5)
        await asyncio.sleep(seconds)
        return f"pause {seconds:.2f} s"
    if roll < 0.8:
        hook = draw.choice(["batched", "single"])
        status = draw.choice(["all", "delivered", "failed"])
        args = ("replay", "--webhook", hook, "--since", "1h", "--status", status)
        done = await asyncio.to_thread(relay, *args, dsn=dsn)
        assert done.returncode == 0, done.stderr
        return f"relay replay {hook} {status}: {done.stdout.strip()} {done.stderr.strip()}"
    if roll < 0.87:
        done = await asyncio.to_thread(relay, "retry", dsn=dsn)
        assert done.returncode == 0, done.stderr
        return f"relay retry: {done.stdout.strip()} {done.stderr.strip()}"
    if roll < 0.94:
        reset = conn.execute("UPDATE relay.outbox SET status = 'pending' WHERE status = 'failed'")
        return f"SQL reset of {reset.rowcount} failed change(s)"
    await relays.halt()
    relays.start()
    return "relay restarted"


def _write(conn: psycopg.Connection[Any], draw: random.Random, present: set[int]) -> str:
    """One to three changes of rows in a transaction."""
    done = []
    with conn.transaction():
        for _ in range(draw.choice([1, 1, 2, 3])):
            absent = sorted(set(KEYS) - present)
            kinds = (["insert"] if absent else []) + (["update", "delete"] if present else [])
            if present and absent:
                kinds.append("move")
            kind = draw.choice(kinds)
            if kind == "insert":
                key = draw.choice(absent)
                conn.execute("INSERT INTO items (id) VALUES (%s)", (key,))
                present.add(key)
                done.append(f"insert {key}")
            elif kind == "update":
                key = draw.choice(sorted(present))
                conn.execute("UPDATE items SET v = v + 1 WHERE id = %s", (key,))
                done.append(f"update {key}")
            elif kind == "delete":
                key = draw.choice(sorted(present))
                conn.execute("DELETE FROM items WHERE id = %s", (key,))
                present.discard(key)
                done.append(f"delete {key}")
            else:
                key, to = draw.choice(sorted(present)), draw.choice(absent)
                conn.execute("UPDATE items SET id = %s WHERE id = %s", (to, key))
                present.discard(key)
                present.add(to)
                done.append(f"move {key} -> {to}")
    return ", ".join(done)


async def _drained(conn: psycopg.Connection[Any]) -> bool:
    """Whether nothing is left pending (deliveries or changes) within DRAIN_SECONDS."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_SECONDS
    while loop.time() < deadline:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM relay.deliveries WHERE status = 'pending')"
            " + (SELECT count(*) FROM relay.outbox WHERE status = 'pending')"
        ).fetchone()
        if row is not None and row[0] == 0:
            return True
        await asyncio.sleep(0.1)
    return False
