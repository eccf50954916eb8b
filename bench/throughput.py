"""Delivery throughput, latency and memory: relay against a bare client, in one run.

    .venv/bin/python bench/throughput.py [--changes 50000] [--rounds 3] [--concurrency 64]
        [--rate 1000 --seconds 20] [--backlog 1000000 --backlog-seconds 30]

1. Starts nginx on 127.0.0.1 answering 200 to everything (the receiver), and scratch databases
   (on $RELAY_DSN's server, 127.0.0.1:5432, or a throwaway cluster).
2. Throughput, --rounds times: loads the outbox with --changes inserts into a tracked table (one
   webhook, one rule); a Worker (the code behind `relay run`) drains it; deliveries per second
   from start to the last change marked delivered (fan-out, claims, sends and records
   included). Then the ceiling: a bare aiohttp client posts the same signed requests to the
   same nginx, with the same concurrency, as fast as it can. Prints the medians and their ratio,
   and the relay's CPU per delivery (this process's CPU time during the drain: steadier than
   the rate on a busy machine).
3. Latency: `relay run` (a separate process) delivers to a small receiver process while this
   one commits --rate changes a second for --seconds (ten rows per transaction); commit to
   receipt, p50 and p99.
4. Backlog: `relay run` works for --backlog-seconds on a queue of --backlog changes, and on one
   a tenth that size; the median delivery rate of each (counted at nginx), their ratio (it
   must not fall as the backlog grows) and the relay's peak RSS (VmHWM). --backlog 0 skips it.
Needs nginx (apt-get install nginx-light).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from psycopg.rows import dict_row

from relay.delivery.worker import Worker
from relay.model import Change
from relay.render.request import Renderer
from relay.rules import ruleset
from relay.service import logs
from relay.settings import Settings
from relay.store import Store
from relay.tempcluster import postgres_server, scratch_database

DELIVERY = "5d3c1e2a-7b4f-4e0a-9c1d-2f6b8a9e0c11"
"""The delivery id the requests here go under (relay.deliveries.id in a running relay)."""

NGINX_CONF = """
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 4096; }}
http {{
    log_format receipt {log_format};
    access_log {root}/access.log receipt buffer=64k flush=1s;
    client_body_temp_path {root}/body;
    client_max_body_size 0;
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


class Nginx:
    """nginx answering 200 to everything, in a folder of its own; its access log
    (``root / "access.log"``) gets one ``log_format`` line per request (flushed every second)."""

    def __init__(self, prefix: str, log_format: str = '"1"') -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            sys.exit("nginx not found: apt-get install nginx-light")
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        os.chmod(self.root, 0o755)
        port = free_port()
        conf = self.root / "nginx.conf"
        conf.write_text(NGINX_CONF.format(root=self.root, port=port, log_format=log_format))
        self.process = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(self.root), "-g", "daemon off;"]
        )
        self.url = f"http://127.0.0.1:{port}/hook"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)
        self.process.kill()
        sys.exit(f"nginx did not start; see {self.root}/error.log")

    def stop(self) -> None:
        """Stop gracefully: the access log is flushed whole (and can still be read)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
        self.process.wait()

    def close(self) -> None:
        """Stop, and remove the folder with its logs."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def load(dsn: str, url: str, changes: int, batch_size: int = 1, batch_wait_ms: int = 0) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        Store(conn).install()
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text, qty int)")
        conn.execute("SELECT relay.track('items')")
        conn.execute(
            "INSERT INTO relay.webhooks (name, payload_url, secret, batch_size, batch_wait_ms)"
            " VALUES ('bench', %s, 's', %s, %s)",
            (url, batch_size, batch_wait_ms),
        )
        conn.execute(
            "INSERT INTO relay.event_rules (name, tables, webhook_id)"
            " SELECT 'bench', ARRAY['public.items'], id FROM relay.webhooks"
        )
        conn.execute(
            "INSERT INTO items SELECT g, 'item ' || g, g %% 100 FROM generate_series(1, %s) g",
            (changes,),
        )


PENDING = (
    "SELECT NOT EXISTS (SELECT FROM relay.outbox WHERE status = 'pending'"
    " AND fanned_out_at IS NULL) AND NOT EXISTS (SELECT FROM relay.outbox"
    " WHERE status = 'pending' AND fanned_out_at IS NOT NULL)"
)
"""Nothing pending, asked through the two partial indexes that cover pending changes (a count
of the outbox cost PostgreSQL 15 ms a look with 60,000 changes, taken from what it measures)."""


async def drain(
    dsn: str,
    changes: int,
    concurrency: int = 64,
    done: str = PENDING,
    **more: Any,
) -> float:
    """Deliveries per second of a Worker (the code behind `relay run`) from its start until
    the query ``done`` says true (by default: no change pending); ``more`` are more of
    the relay's (RELAY_ATTEMPT_DETAILS, say)."""
    settings = Settings(webhook_concurrency=concurrency, poll_interval=0.5, **more)
    worker = Worker(settings, dsn, relay_id="bench")
    stop = asyncio.Event()
    started = time.monotonic()
    task = asyncio.create_task(worker.run(stop))
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            cur = await conn.execute(done)
            row = await cur.fetchone()
            if row and row[0]:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
    elapsed = time.monotonic() - started
    stop.set()
    await task
    return changes / elapsed


async def ceiling(dsn: str, concurrency: int) -> tuple[float, int]:
    """The same requests relay sent, rendered first, posted as fast as aiohttp can."""
    with psycopg.connect(dsn) as conn:
        loaded = ruleset.load(conn)
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(
                "SELECT id, schema_name, table_name, op::text, old::text, new::text, pk::text,"
                " username, request_id, request_path, request_method, txid::text, created_at,"
                " NULL AS model"
                " FROM relay.outbox ORDER BY id"
            ).fetchall()
    renderer = Renderer()
    requests = []
    for row in rows:
        change = Change.from_row(row, row["old"], row["new"])
        rule = loaded.matching(change)[0]
        requests.append(
            renderer.request(
                rule.webhook, change, rule.action_data, timestamp=0, delivery_id=DELIVERY
            )
        )
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


def receiver_process(port: int, ready: Any, results: Any) -> None:
    """A receiver in its own process: notes when each change (data.id) arrived."""
    from aiohttp import web

    arrived: list[tuple[int, float]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.json()
        now = time.time()
        for change in body if isinstance(body, list) else [body]:
            arrived.append((int(change["data"]["id"]), now))
        return web.Response(text="ok")

    asyncio.run(serve_until_asked(hook, port, ready, results, arrived))


async def serve_until_asked(
    hook: Callable[[Any], Any], port: int, ready: Any, results: Any, noted: object
) -> None:
    """Serves POST /hook on 127.0.0.1:``port`` until the parent asks (any message on
    ``results``), then sends it ``noted``: what the receivers of the benches saw."""
    from aiohttp import web

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    ready.set()
    while not results.poll():
        await asyncio.sleep(0.05)
    results.recv()
    results.send(noted)
    await runner.cleanup()


def start_relay(dsn: str, **settings: str) -> subprocess.Popen[bytes]:
    """`relay run`, as an operator runs it, logging to nowhere; ``settings`` are RELAY_*
    variables by their lower-case names."""
    env = {**os.environ, "RELAY_DSN": dsn, "RELAY_POLL_INTERVAL": "1"}
    env.update({f"RELAY_{name.upper()}": value for name, value in settings.items()})
    return subprocess.Popen(
        [sys.executable, "-m", "relay", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_relay(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU the processes have used so far (those that are gone count 0)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def pids_named(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def family(pid: int) -> list[int]:
    """The process and its children (relay run --processes N's parent and its N processes)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *map(int, children)]


def processes_rate(
    server: str, url: str, changes: int, processes: int, concurrency: int
) -> tuple[float, dict[str, float]]:
    """`relay run --processes N` draining ``changes``: deliveries per second from its first
    delivery to its last (so that starting the processes does not count), and the CPU seconds
    relay, PostgreSQL and nginx used over that stretch."""
    with scratch_database(server, "relay_np") as dsn:
        load(dsn, url, changes)
        relay = start_relay(dsn, webhook_concurrency=str(concurrency), processes=str(processes))
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                started = "SELECT EXISTS (SELECT FROM relay.outbox WHERE status = 'delivered')"
                deadline = time.monotonic() + 60
                while not one(conn, started):
                    if time.monotonic() > deadline:
                        sys.exit("relay run --processes did not start delivering")
                    time.sleep(0.01)
                began = time.monotonic()
                first = one(conn, "SELECT count(*) FROM relay.outbox WHERE status = 'delivered'")
                groups: dict[str, Callable[[], list[int]]] = {
                    "relay": lambda: family(relay.pid),
                    "postgres": lambda: pids_named("postgres"),
                    "nginx": lambda: pids_named("nginx"),
                }
                cpu_before = {name: cpu_seconds(pids()) for name, pids in groups.items()}
                while not one(conn, PENDING):
                    time.sleep(0.05)
                elapsed = time.monotonic() - began
                cpu = {
                    name: cpu_seconds(pids()) - cpu_before[name] for name, pids in groups.items()
                }
        finally:
            stop_relay(relay)
    return (changes - first) / elapsed, cpu


def one(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()
    return row[0] if row else None


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def write_steadily(
    conn: psycopg.Connection[Any],
    changes: int,
    seconds: float,
    *,
    committed: dict[int, float] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Insert items 1..``changes``, ten rows per transaction, evenly over ``seconds`` (on a
    fixed schedule, so a slow commit does not lower the rate); note each row's commit time in
    ``committed``; give up early when ``stop`` is set."""
    per_commit = 10
    started = time.monotonic()
    for first in range(1, changes + 1, per_commit):
        if stop is not None and stop.is_set():
            return
        pause = started + (first - 1) * seconds / changes - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        last = min(first + per_commit - 1, changes)
        conn.execute(
            "INSERT INTO items SELECT g, 'item', 1 FROM generate_series(%s::int, %s::int) g",
            (first, last),
        )
        if committed is not None:
            now = time.time()
            committed.update((key, now) for key in range(first, last + 1))


def latency(
    server: str, rate: int, seconds: float, concurrency: int, batch_size: int = 1, wait_ms: int = 0
) -> tuple[float, float, int]:
    """Commit-to-receipt latency (p50, p99, in ms) at a steady ``rate`` of changes a second,
    to a webhook with ``batch_size`` and ``wait_ms`` (batch_wait_ms)."""
    port = free_port()
    ready = multiprocessing.Event()
    ours, theirs = multiprocessing.Pipe()
    receiver = multiprocessing.Process(target=receiver_process, args=(port, ready, theirs))
    receiver.start()
    ready.wait(10)
    with scratch_database(server, "relay_lat") as dsn:
        load(dsn, f"http://127.0.0.1:{port}/hook", 0, batch_size, wait_ms)
        relay = start_relay(dsn, webhook_concurrency=str(concurrency))
        committed: dict[int, float] = {}
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("INSERT INTO items VALUES (0, 'warm-up', 0)")
                wait_delivered(conn, 30)  # the relay is up and connected
                write_steadily(conn, int(rate * seconds), seconds, committed=committed)
                wait_delivered(conn, 30)
        finally:
            stop_relay(relay)
    ours.send("done")
    arrived = ours.recv()
    receiver.join(10)
    waits = [(when - committed[key]) * 1000 for key, when in arrived if key in committed]
    return percentile(waits, 0.5), percentile(waits, 0.99), len(waits)


def wait_delivered(conn: psycopg.Connection[Any], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        row = conn.execute("SELECT count(*) FROM relay.outbox WHERE status = 'pending'").fetchone()
        if row and row[0] == 0:
            return
        time.sleep(0.05)
    sys.exit("the relay did not deliver everything in time")


def vm_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def receipts(root: Path) -> int:
    """Requests nginx has answered so far (one byte per access log line, flushed each second)."""
    log = root / "access.log"
    return log.stat().st_size // 2 if log.exists() else 0


def backlog(
    server: str, root: Path, url: str, changes: int, seconds: float, concurrency: int
) -> tuple[float, int]:
    """`relay run` working through ``changes`` for ``seconds``: its median delivery rate over
    stretches of the run, and its peak RSS in kB."""
    with scratch_database(server, "relay_big") as dsn:
        started = time.monotonic()
        load(dsn, url, changes)
        loaded = time.monotonic() - started
        relay = start_relay(dsn, webhook_concurrency=str(concurrency))
        rates = []
        try:
            stretch = max(seconds / 6, 1.0)
            first = done = receipts(root)
            began = time.monotonic()
            while time.monotonic() - began < seconds and done - first < changes:
                time.sleep(stretch)
                now_done = receipts(root)
                rates.append((now_done - done) / stretch)
                done = now_done
            peak = vm_kb(relay.pid, "VmHWM")
        finally:
            stop_relay(relay)
    print(
        f"  {changes:>9} queued (loaded in {loaded:.0f} s): {done - first} delivered in"
        f" {time.monotonic() - began:.0f} s; per {stretch:.0f} s:"
        f" {', '.join(f'{r:.0f}' for r in rates)}; peak RSS {peak / 1024:.0f} MB"
    )
    return statistics.median(rates), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("RELAY_DSN"))
    parser.add_argument("--changes", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--backlog-seconds", type=float, default=30)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--batch-wait-ms", type=int, default=50)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--processes-changes", type=int, default=60_000)
    args = parser.parse_args()
    # Logged as `relay run` logs (a JSON line per delivery), to a file nobody reads.
    logs.configure(file=open(os.devnull, "w"))  # noqa: SIM115 (open for the whole run)
    nginx = Nginx("relay-nginx-")
    root, url = nginx.root, nginx.url
    try:
        with postgres_server(args.dsn) as server:
            print(f"{os.cpu_count()} CPUs, receiver nginx at {url}, concurrency {args.concurrency}")
            print(f"throughput, {args.changes} changes, {args.rounds} rounds:")
            relay_rates, bare_rates, cpu_costs, batch_rates = [], [], [], []
            for _ in range(args.rounds):
                with scratch_database(server, "relay_tp") as dsn:
                    load(dsn, url, args.changes)
                    cpu = time.process_time()  # this process runs nothing but the Worker
                    relay_rates.append(asyncio.run(drain(dsn, args.changes, args.concurrency)))
                    cpu_costs.append((time.process_time() - cpu) / args.changes * 1e6)
                    bare, ok = asyncio.run(ceiling(dsn, args.concurrency))
                    assert ok == args.changes, f"only {ok} of the ceiling's requests got 200"
                    bare_rates.append(bare)
                with scratch_database(server, "relay_tb") as dsn:
                    load(dsn, url, args.changes, args.batch_size)
                    batch_rates.append(asyncio.run(drain(dsn, args.changes, args.concurrency)))
                print(
                    f"  relay {relay_rates[-1]:8.0f} deliveries/s ({cpu_costs[-1]:.0f} us of CPU"
                    f" each), bare {bare:8.0f} requests/s, batches of {args.batch_size}"
                    f" {batch_rates[-1]:8.0f} changes/s"
                )
            relay_rate = statistics.median(relay_rates)
            bare_rate = statistics.median(bare_rates)
            batch_rate = statistics.median(batch_rates)
            print(f"  relay drained the backlog:  {relay_rate:8.0f} deliveries/s (median)")
            print(f"  bare aiohttp (the ceiling): {bare_rate:8.0f} requests/s (median)")
            print(f"  ratio: {relay_rate / bare_rate:.2f}")
            print(f"  relay CPU per delivery: {statistics.median(cpu_costs):.1f} us (median)")
            print(
                f"  batch_size {args.batch_size}: {batch_rate:8.0f} changes/s (median),"
                f" {batch_rate / relay_rate:.1f}x single-change mode"
            )
            if args.processes > 1 and args.processes_changes:
                print(
                    f"processes, `relay run` draining {args.processes_changes} changes,"
                    f" {args.rounds} rounds:"
                )
                ones: list[float] = []
                manys: list[float] = []
                for _ in range(args.rounds):
                    for count, rates in ((1, ones), (args.processes, manys)):
                        rate, split_cpu = processes_rate(
                            server, url, args.processes_changes, count, args.concurrency
                        )
                        rates.append(rate)
                        split = ", ".join(f"{name} {sec:.1f}" for name, sec in split_cpu.items())
                        print(f"  --processes {count}: {rate:8.0f} deliveries/s; CPU s: {split}")
                print(
                    f"  --processes {args.processes} / 1: "
                    f"{statistics.median(manys) / statistics.median(ones):.2f} (medians"
                    f" {statistics.median(manys):.0f} / {statistics.median(ones):.0f})"
                )
            if args.rate and args.seconds:
                print(f"latency, {args.rate} changes/s for {args.seconds:g} s:")
                p50, p99, count = latency(server, args.rate, args.seconds, args.concurrency)
                print(f"  commit to receipt: p50 {p50:.1f} ms, p99 {p99:.1f} ms ({count} changes)")
                p50, p99, count = latency(
                    server,
                    args.rate,
                    args.seconds,
                    args.concurrency,
                    args.batch_size,
                    args.batch_wait_ms,
                )
                print(
                    f"  batch_size {args.batch_size}, batch_wait_ms {args.batch_wait_ms}:"
                    f" p50 {p50:.1f} ms, p99 {p99:.1f} ms ({count} changes)"
                )
            if args.backlog:
                print(f"backlog, `relay run` for {args.backlog_seconds:g} s each:")
                small, _ = backlog(
                    server, root, url, args.backlog // 10, args.backlog_seconds, args.concurrency
                )
                large, peak = backlog(
                    server, root, url, args.backlog, args.backlog_seconds, args.concurrency
                )
                print(
                    f"  rate with {args.backlog} queued / with {args.backlog // 10}:"
                    f" {large / small:.2f}; peak RSS {peak / 1024:.0f} MB"
                )
    finally:
        nginx.close()


if __name__ == "__main__":
    main()
