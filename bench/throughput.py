"""Delivery throughput: relay draining a backlog, against the ceiling, in one run.

    .venv/bin/python bench/throughput.py [--changes 20000] [--concurrency 64]

1. Starts nginx on 127.0.0.1 answering 200 to everything (the receiver), and a scratch database
   (on $RELAY_DSN's server, 127.0.0.1:5432, or a throwaway cluster).
2. Loads the outbox with --changes inserts into a tracked table, one webhook, one rule.
3. Relay: a Worker (the code behind `relay run`) drains the backlog; deliveries per second from
   start to the last change marked delivered (fan-out, claims, sends and records included).
4. Ceiling: a bare aiohttp client posts the same signed requests to the same nginx, with the
   same concurrency, as fast as it can.
Prints both rates and their ratio. Needs nginx (apt-get install nginx-light).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psycopg
from psycopg.rows import dict_row

from relay import logs, rules, schema
from relay.render import Renderer
from relay.settings import Settings
from relay.tempcluster import postgres_server, scratch_database
from relay.worker import Worker

NGINX_CONF = """
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location / {{ return 200 "ok"; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_nginx(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        sys.exit("nginx not found: apt-get install nginx-light")
    port = free_port()
    conf = root / "nginx.conf"
    conf.write_text(NGINX_CONF.format(root=root, port=port))
    process = subprocess.Popen([nginx, "-c", str(conf), "-p", str(root), "-g", "daemon off;"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process, f"http://127.0.0.1:{port}/hook"
        time.sleep(0.05)
    process.kill()
    sys.exit(f"nginx did not start; see {root}/error.log")


def load(dsn: str, url: str, changes: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        schema.install(conn)
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text, qty int)")
        conn.execute("SELECT relay.track('items')")
        conn.execute(
            "INSERT INTO relay.webhooks (name, payload_url, secret) VALUES ('bench', %s, 's')",
            (url,),
        )
        conn.execute(
            "INSERT INTO relay.event_rules (name, tables, webhook_id)"
            " SELECT 'bench', ARRAY['public.items'], id FROM relay.webhooks"
        )
        conn.execute(
            "INSERT INTO items SELECT g, 'item ' || g, g %% 100 FROM generate_series(1, %s) g",
            (changes,),
        )


async def drain(dsn: str, changes: int, concurrency: int) -> float:
    settings = Settings(webhook_concurrency=concurrency, batch_size=500, poll_interval=0.5)
    worker = Worker(settings, dsn, relay_id="bench")
    stop = asyncio.Event()
    started = time.monotonic()
    task = asyncio.create_task(worker.run(stop))
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            cur = await conn.execute("SELECT count(*) FROM relay.outbox WHERE status = 'pending'")
            row = await cur.fetchone()
            if row and row[0] == 0:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.1)
    elapsed = time.monotonic() - started
    stop.set()
    await task
    return changes / elapsed


async def ceiling(dsn: str, concurrency: int) -> tuple[float, int]:
    """The same requests relay sent, rendered first, posted as fast as aiohttp can."""
    with psycopg.connect(dsn) as conn:
        ruleset = rules.load(conn)
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(
                "SELECT id, schema_name, table_name, op::text, old::text, new::text, pk::text,"
                " username, request_id, txid::text, created_at FROM relay.outbox ORDER BY id"
            ).fetchall()
    renderer = Renderer()
    requests = []
    for row in rows:
        change = rules.change_from_row(row)
        rule = ruleset.matching(change)[0]
        requests.append(renderer.request(rule.webhook, change, rule.action_data, timestamp=0))
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(requests)):
        queue.put_nowait(index)
    ok = 0

    async def post(session: aiohttp.ClientSession) -> None:
        nonlocal ok
        while not queue.empty():
            request = requests[queue.get_nowait()]
            async with session.post(
                request.url, data=request.body, headers=request.headers
            ) as response:
                await response.read()
                ok += response.status == 200

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.monotonic()
        await asyncio.gather(*(post(session) for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    return len(requests) / elapsed, ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("RELAY_DSN"))
    parser.add_argument("--changes", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    # Logged as `relay run` logs (a JSON line per delivery), to a file nobody reads.
    logs.configure(file=open(os.devnull, "w"))  # noqa: SIM115 (open for the whole run)
    root = Path(tempfile.mkdtemp(prefix="relay-nginx-"))
    os.chmod(root, 0o755)
    nginx, url = start_nginx(root)
    try:
        with postgres_server(args.dsn) as server, scratch_database(server, "relay_tp") as dsn:
            load(dsn, url, args.changes)
            print(
                f"{args.changes} changes, concurrency {args.concurrency}, "
                f"{os.cpu_count()} CPUs, receiver nginx at {url}"
            )
            relay_rate = asyncio.run(drain(dsn, args.changes, args.concurrency))
            print(f"  relay drained the backlog:  {relay_rate:8.0f} deliveries/s")
            bare_rate, ok = asyncio.run(ceiling(dsn, args.concurrency))
            assert ok == args.changes, f"only {ok} of the ceiling's requests got 200"
            print(f"  bare aiohttp (the ceiling): {bare_rate:8.0f} requests/s")
            print(f"  ratio: {relay_rate / bare_rate:.2f}")
    finally:
        nginx.terminate()
        nginx.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
