"""What rendering templates in render processes costs, and what it buys: side by side.

    .venv/bin/python bench/render.py [--renders 3000] [--changes 5000] [--rounds 3]
        [--seconds 6]

1. Renders per second of one templated webhook (the Slack message of docs/rules.md): in this
   process, as `relay run` rendered before (on its event loop), and through a RenderPool, one
   at a time and 16 at once (a webhook's slots), with the CPU this process spends per render.
   The default body (no template) never leaves the process: its rate is the same code either way.
2. Delivery throughput of that webhook: a Worker drains --changes inserts to nginx, rendering
   on its event loop (before) or in render processes (now), --rounds each, alternating.
3. A templated webhook's commit-to-receipt delay, alone and beside a webhook on the same
   changes whose template is stuck in one C call (every one of its renders is stopped at the
   deadline, 1.5 s): `relay run` as a process, a change every 20 ms for --seconds, receipts at
   a receiver process on 127.0.0.1.
Needs nginx (apt-get install nginx-light).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import (
    Nginx,
    drain,
    free_port,
    load,
    percentile,
    receiver_process,
    start_relay,
    stop_relay,
    write_steadily,
)

import relay.delivery.worker
from relay.model import Change, Request, Webhook
from relay.render.pool import RenderPool
from relay.render.request import Renderer
from relay.service import logs
from relay.tempcluster import postgres_server, scratch_database

DELIVERY = "5d3c1e2a-7b4f-4e0a-9c1d-2f6b8a9e0c11"
"""The delivery id the requests here go under (relay.deliveries.id in a running relay)."""

SLACK = (
    '{"text": {{ ("Order " ~ data.id ~ " paid: " ~ data.total ~ " EUR by " ~ data.customer'
    ' ~ " (" ~ username ~ ")") | tojson }}}'
)
STUCK = "{{ ([[0]] * 200000)|sum(start=[])|length }}"
CHANGE = Change.of(
    id=41,
    schema_name="public",
    table_name="orders",
    op="update",
    old={"id": 7, "status": "new", "total": "120.00", "customer": "ACME"},
    new={"id": 7, "status": "paid", "total": "120.00", "customer": "ACME"},
    pk={"id": 7},
    username="alice",
    request_id="req-1",
    txid="812",
    created_at=datetime(2026, 11, 22, tzinfo=UTC),
)


class OnTheLoop:
    """How `relay run` rendered before render processes: in its own process, on its loop."""

    def __init__(self, env_allow: list[str]) -> None:
        self._renderer = Renderer(env_allow)

    async def request(
        self,
        webhook: Webhook,
        change: Change,
        action_data: Mapping[str, Any] | None = None,
        *,
        timestamp: int,
        delivery_id: str,
    ) -> Request:
        return self._renderer.request(
            webhook, change, action_data, timestamp=timestamp, delivery_id=delivery_id
        )

    async def close(self) -> None:
        pass


async def rate(
    render: Callable[[], Awaitable[Any]], count: int, at_once: int
) -> tuple[float, float]:
    """Renders per second, and this process's CPU microseconds per render."""
    cpu, started = time.process_time(), time.monotonic()
    for _ in range(count // at_once):
        await asyncio.gather(*(render() for _ in range(at_once)))
    elapsed = time.monotonic() - started
    return count / elapsed, (time.process_time() - cpu) / count * 1e6


async def render_rates(count: int) -> None:
    templated = Webhook(
        id=1, name="slack", payload_url="https://example.test/", body_template=SLACK
    )
    plain = replace(templated, id=2, body_template="")
    renderer, pool = Renderer(), RenderPool()
    try:
        await pool.request(
            templated, CHANGE, timestamp=0, delivery_id=DELIVERY
        )  # started, and a spare
        await asyncio.sleep(2)

        async def here(webhook: Webhook = templated) -> Request:
            return renderer.request(webhook, CHANGE, timestamp=0, delivery_id=DELIVERY)

        async def there(webhook: Webhook = templated) -> Request:
            return await pool.request(webhook, CHANGE, timestamp=0, delivery_id=DELIVERY)

        rows = [
            ("template, in this process (before)", here, 1),
            ("template, render process, 1 at a time", there, 1),
            ("template, render process, 16 at once", there, 16),
            ("default body, in this process (both)", lambda: here(plain), 1),
        ]
        for label, render, at_once in rows:
            per_second, cpu = await rate(render, count, at_once)
            print(f"  {label:<40} {per_second:8.0f} renders/s, {cpu:5.0f} µs CPU here each")
    finally:
        await pool.close()


def templated_load(dsn: str, url: str, changes: int, body: str = SLACK) -> None:
    load(dsn, url, changes)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE relay.webhooks SET body_template = %s", (body,))


def delays(server: str, url: str, seconds: float, stuck: bool) -> list[float]:
    """Commit-to-receipt delays (ms) of a templated webhook, with or without a stuck one."""
    port = free_port()
    ready = multiprocessing.Event()
    ours, theirs = multiprocessing.Pipe()
    receiver = multiprocessing.Process(target=receiver_process, args=(port, ready, theirs))
    receiver.start()
    ready.wait(10)
    with scratch_database(server, "relay_rd") as dsn:
        templated_load(dsn, f"http://127.0.0.1:{port}/hook", 0, '{"data": {"id": {{ data.id }}}}')
        with psycopg.connect(dsn, autocommit=True) as conn:
            if stuck:
                conn.execute(
                    "INSERT INTO relay.webhooks (name, payload_url, body_template)"
                    " VALUES ('stuck', %s, %s)",
                    (url, STUCK),
                )
                conn.execute(
                    "INSERT INTO relay.event_rules (name, tables, webhook_id) SELECT 'stuck',"
                    " ARRAY['public.items'], id FROM relay.webhooks WHERE name = 'stuck'"
                )
            process = start_relay(dsn)
            committed: dict[int, float] = {}
            try:
                conn.execute("INSERT INTO items VALUES (0, 'warm-up', 0)")
                time.sleep(3)  # connected, render processes started
                write_steadily(conn, int(seconds * 50), seconds, committed=committed)
                time.sleep(3)
            finally:
                stop_relay(process)
    ours.send("done")
    arrived = ours.recv()
    receiver.join(10)
    return [(when - committed[key]) * 1000 for key, when in arrived if key in committed]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("RELAY_DSN"))
    parser.add_argument("--renders", type=int, default=3000)
    parser.add_argument("--changes", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6)
    args = parser.parse_args()
    logs.configure(file=open(os.devnull, "w"))  # noqa: SIM115 (open for the whole run)
    print(f"{os.cpu_count()} CPUs; renders of the Slack template, {args.renders} each:")
    asyncio.run(render_rates(args.renders))
    nginx = Nginx("relay-nginx-")
    url = nginx.url
    try:
        with postgres_server(args.dsn) as server:
            print(f"delivery of {args.changes} templated changes to nginx, {args.rounds} rounds:")
            rates: dict[str, list[float]] = {"on the loop": [], "render processes": []}
            for _ in range(args.rounds):
                for label, renders in (
                    ("on the loop", OnTheLoop),
                    ("render processes", RenderPool),
                ):
                    with (
                        mock.patch.object(relay.delivery.worker, "RenderPool", renders),
                        scratch_database(server, "relay_rt") as dsn,
                    ):
                        templated_load(dsn, url, args.changes)
                        rates[label].append(asyncio.run(drain(dsn, args.changes)))
            for label, found in rates.items():
                shown = ", ".join(f"{r:.0f}" for r in found)
                print(f"  {label:<17} {statistics.median(found):6.0f} deliveries/s ({shown})")
            print(f"delay of a templated webhook, a change every 20 ms for {args.seconds:g} s:")
            for stuck in (False, True):
                waits = delays(server, url, args.seconds, stuck)
                label = "beside a stuck template" if stuck else "alone"
                print(
                    f"  {label:<24} p50 {percentile(waits, 0.5):6.1f} ms, p99"
                    f" {percentile(waits, 0.99):6.1f} ms, max {max(waits):6.1f} ms"
                    f" ({len(waits)} changes)"
                )
    finally:
        nginx.close()


if __name__ == "__main__":
    main()
