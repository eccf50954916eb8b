"""Fuzz `relay run`: random rows of every column type, random rules, conditions and templates.

    .venv/bin/python bench/fuzz.py [--minutes 3] [--seed N]

For --minutes, hypothesis draws round after round: a transaction of inserts, updates and
deletes (now and then a truncate) on a tracked table with a column of each common PostgreSQL
type, with hostile values among the ordinary ones (5,001-digit and infinite numerics, JSON
nested 1,000 deep, NaN, emoji, control characters, 100 KB texts, arrays with NULLs); and every
few rounds a new set of webhooks and rules replacing the last one (the old ones are disabled):
random conditions over the columns (odd paths, numbers of every form, patterns RE2 refuses or
that backtrack for ever in other engines, documents the database refuses, written unchecked),
random body, URL and header templates (many of them broken), Content-Types with line breaks,
bad secrets. One `relay run` process delivers to a receiver process on 127.0.0.1 that answers
200, 500, 503 with Retry-After, 410, slowly (past the webhook's timeout) or by closing the
connection, at random. Every URL's host is 127.0.0.1: templates only fill in the path.

At the end it waits for everything to settle and fails (exit 1) unless: `relay run` never
exited, never logged a failed session, and every change ended delivered, failed with a reason
or skipped, with no delivery pending or leased, none past RELAY_MAX_ATTEMPTS, every reason one
line. It prints the figures and the most frequent reasons.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psycopg
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import free_port

from relay.store import Store
from relay.tempcluster import postgres_server, scratch_database

MAX_ATTEMPTS = 4
ROUNDS_PER_RULE_SET = 60
"""About two seconds, on average, before the webhooks and rules are replaced (the old ones
disabled)."""
RELAY_SETTINGS = {
    "RELAY_POLL_INTERVAL": "0.5",
    "RELAY_RETRY_BASE_SECONDS": "0.2",
    "RELAY_RETRY_MAX_SECONDS": "2",
    "RELAY_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    "RELAY_LEASE_SECONDS": "10",
    "RELAY_BREAKER_FAILURES": "5",
    "RELAY_BREAKER_COOLDOWN_SECONDS": "1",
    "RELAY_LOG_FORMAT": "json",
}
TABLE = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE fuzz (
    k int PRIMARY KEY, i2 smallint, i8 bigint, n numeric, n2 numeric(10,2), f4 real,
    f8 double precision, b boolean, t text, vc varchar(20), ch char(3), by bytea,
    ts timestamptz, tsn timestamp, d date, tm time, iv interval, u uuid, j jsonb, js json,
    ia int[], ta text[], ip inet, mac macaddr, r int4range, pt point, m mood, bits varbit,
    mn money, x xml, tsv tsvector
);
SELECT relay.track('fuzz');
"""
COLUMNS = {
    "i2": "smallint",
    "i8": "bigint",
    "n": "numeric",
    "n2": "numeric(10,2)",
    "f4": "real",
    "f8": "double precision",
    "b": "boolean",
    "t": "text",
    "vc": "varchar(20)",
    "ch": "char(3)",
    "by": "bytea",
    "ts": "timestamptz",
    "tsn": "timestamp",
    "d": "date",
    "tm": "time",
    "iv": "interval",
    "u": "uuid",
    "j": "jsonb",
    "js": "json",
    "ia": "int[]",
    "ta": "text[]",
    "ip": "inet",
    "mac": "macaddr",
    "r": "int4range",
    "pt": "point",
    "m": "mood",
    "bits": "varbit",
    "mn": "money",
    "x": "xml",
    "tsv": "tsvector",
}
HOSTILE_SQL = {
    "n": [
        "('1' || repeat('0', 5000))::numeric",
        "'NaN'::numeric",
        "'Infinity'::numeric",
        "'-Infinity'::numeric",
        "('0.' || repeat('0', 900) || '1')::numeric",
    ],
    "j": [
        "('[' || repeat('[', 1000) || repeat(']', 1000) || ']')::jsonb",
        "('{\"a\": ' || repeat('{\"a\": ', 500) || '1' || repeat('}', 500) || '}')::jsonb",
        "('{\"big\": 1' || repeat('0', 5000) || '}')::jsonb",
        "jsonb_build_object('s', repeat('é', 100000))",
    ],
    "t": ["repeat('x', 100000)", "repeat('a', 40) || 'b'", "E'a\\r\\nX-Evil: 1'"],
    "f8": ["'NaN'::float8", "'Infinity'::float8", "'-0'::float8"],
}
ALWAYS = {"date": "now()"}

text = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=30)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["a", "b", "0", "²", "x"]), children, max_size=4)
    ),
    max_leaves=10,
)
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "i2": st.integers(-(2**15), 2**15 - 1),
    "i8": st.integers(-(2**63), 2**63 - 1),
    "n": st.decimals(allow_nan=False, allow_infinity=False).map(str),
    "n2": st.decimals(min_value=-(10**7), max_value=10**7, places=2).map(str),
    "f4": st.floats(width=32, allow_nan=False),
    "f8": st.floats(),
    "b": st.booleans(),
    "t": text,
    "vc": st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=20),
    "ch": st.text("abc☃", min_size=0, max_size=3),
    "by": st.binary(max_size=40),
    "ts": st.datetimes(timezones=st.timezones()).map(str),
    "tsn": st.datetimes().map(str),
    "d": st.dates().map(str),
    "tm": st.times().map(str),
    "iv": st.integers(-(10**9), 10**9).map(lambda s: f"{s} seconds"),
    "u": st.uuids().map(str),
    "j": json_values.map(Jsonb),
    "js": json_values.map(json.dumps),
    "ia": st.lists(st.none() | st.integers(-(2**31), 2**31 - 1), max_size=5),
    "ta": st.lists(st.none() | text, max_size=5),
    "ip": st.ip_addresses().map(str),
    "mac": st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b)),
    "r": st.tuples(st.integers(-100, 100), st.integers(-100, 100)).map(
        lambda p: f"[{min(p)},{max(p)})"
    ),
    "pt": st.tuples(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6)).map(lambda p: f"({p[0]},{p[1]})"),
    "m": st.sampled_from(["sad", "ok", "happy"]),
    "bits": st.text("01", max_size=20),
    "mn": st.integers(-(10**9), 10**9).map(lambda c: f"{c / 100:.2f}"),
    "x": text.map(lambda s: f"<a>{s.replace('<', '').replace('&', '')}</a>"),
    "tsv": text,
}

PATHS = [f"data.{c}" for c in COLUMNS] + [
    "data.j.a",
    "data.j.0",
    "data.j.-1.a",
    "data.j.²",
    "data.j.--1",
    "data.ia.0",
    "data.ta.-1",
    "data.j." + "9" * 30,
    "event",
    "data.k",
    "model",
    "snapshots.prechange.n",
]
GOOD_PATTERNS = ["(a+)+$", r"\d+", "(?i)HAPPY|sad", r"\p{L}+", ".*é", "x*"]
PATTERNS = GOOD_PATTERNS * 4 + ["(", "(?=a)", r"(a)\1", "a{1001}"]  # the last four: not RE2
BODIES = [
    "",
    "",
    "",
    "{{ data.n }}",
    "{{ data.n | int }}",
    '{"j": {{ data.j | tojson }}, "n": {{ data.n | tojson }}}',
    "{{ data | tojson }}",
    "{{ data.t | upper }} {{ data.ta | join(',') }}",
    "{% for x in data.ia or [] %}{{ x * 2 }},{% endfor %}",
    "{{ 1 / data.i2 }}",
    "{{ data.missing.deeper }}",
    "{{ data.t * 100000 }}",
    "{{ data.j ",
    "{{ data.f8 + 1 }}",
    "{{ snapshots.prechange.n }} -> {{ snapshots.postchange.n }}",
]
HEADERS = ["", "", "X-T: {{ data.t }}", "{{ data.t }}: x", "X-K: {{ data.k }}\nX-M: {{ data.m }}"]
CONTENT_TYPES = ["application/json"] * 8 + ["text/plain; charset=utf-8", "a\r\nX-Evil: 1"]


def leaf(draw: st.DrawFn) -> dict[str, Any]:
    path = draw(st.sampled_from(PATHS))
    op = draw(
        st.sampled_from(["eq", "gt", "gte", "lt", "lte", "in", "contains", "regex", "changed"])
    )
    condition: dict[str, Any] = {"attr": path, "op": op}
    if op == "regex":
        condition["value"] = draw(st.sampled_from(PATTERNS))
    elif op == "in":
        condition["value"] = draw(st.lists(json_values, max_size=4))
    elif op != "changed":
        condition["value"] = draw(json_values | st.sampled_from([100, 7.5, 1.2e2, "1E+5000"]))
    if draw(st.booleans()):
        condition["negate"] = True
    return condition


@st.composite
def conditions(draw: st.DrawFn, depth: int = 0) -> Any:
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return None
    if choice == 1 and depth == 0 and draw(st.booleans()):  # past the limit: written unchecked
        document: Any = leaf(draw)
        for _ in range(draw(st.integers(16, 40))):
            document = {"and": [document]}
        return document
    if choice <= 3 and depth < 3:
        key = draw(st.sampled_from(["and", "or"]))
        return {key: draw(st.lists(conditions(depth + 1), min_size=1, max_size=3))}
    return leaf(draw)


@st.composite
def webhook(draw: st.DrawFn, port: int) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    url = draw(
        st.sampled_from(
            [
                f"{base}/hook",
                f"{base}/hook",
                f"{base}/hook",
                f"{base}/hook/{{{{ data.k }}}}?t={{{{ data.t }}}}",
                f"{base}/hook/{{{{ data.k }}}}?t={{{{ data.t }}}}",
                f"{base}:{{{{ data.k }}}}/hook",  # renders to a bad port
                "ftp://127.0.0.1/{{ data.k }}",
                "http://" + "a" * 64 + ".invalid/hook",  # refused before any lookup
            ]
        )
    )
    signature = draw(st.sampled_from(["netbox", "standard", "none"]))
    secret = draw(
        st.sampled_from(
            ["s3cr3t-value"] * 3 + ["whsec_c2VjcmV0LXZhbHVl"] * 3 + ["whsec_not base64"]
        )
    )
    return {
        "payload_url": url,
        "body_template": draw(st.sampled_from(BODIES)),
        "additional_headers": draw(st.sampled_from(HEADERS)),
        "http_content_type": draw(st.sampled_from(CONTENT_TYPES)),
        "signature": signature,
        "secret": secret,
        "timeout_seconds": 1,
    }


T = TypeVar("T")


class Draw(Protocol):
    """What hypothesis passes to a composite strategy, and what data.draw is."""

    def __call__(self, strategy: st.SearchStrategy[T], /) -> T: ...


def operation(draw: Draw) -> tuple[str, str, list[Any]]:
    """One statement on the fuzz table: SQL and parameters."""
    kind = draw(st.sampled_from(["insert"] * 5 + ["update"] * 4 + ["delete", "truncate"]))
    key = draw(st.integers(1, 50))
    if kind == "truncate" and draw(st.integers(0, 19)) == 0:
        return kind, "TRUNCATE fuzz", []
    if kind == "delete":
        return kind, "DELETE FROM fuzz WHERE k = %s", [key]
    columns = draw(st.lists(st.sampled_from(list(COLUMNS)), min_size=1, max_size=8, unique=True))
    expressions, parameters = [], []
    for column in columns:
        hostile = HOSTILE_SQL.get(column)
        if hostile and draw(st.integers(0, 9)) == 0:
            expressions.append(draw(st.sampled_from(hostile)))
        else:
            expressions.append(f"%s::{COLUMNS[column]}")
            parameters.append(draw(VALUES[column]))
    if kind == "update":
        sets = ", ".join(f"{c} = {e}" for c, e in zip(columns, expressions, strict=True))
        return kind, f"UPDATE fuzz SET {sets} WHERE k = %s", [*parameters, key]
    names = ", ".join(["k", *columns])
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns)
    sql = (
        f"INSERT INTO fuzz ({names}) VALUES (%s, {', '.join(expressions)})"
        f" ON CONFLICT (k) DO UPDATE SET {updates}"
    )
    return kind, sql, [key, *parameters]


def replace_rules(
    conn: psycopg.Connection[Any], hooks: list[dict[str, Any]], docs: list[Any], generation: int
) -> None:
    """Disable the last set, add this one; rows the database refuses are written unchecked, as
    rows saved before a check existed would be."""
    with conn.transaction():  # some of them would not pass the checks again
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("UPDATE relay.event_rules SET enabled = false")
        conn.execute("UPDATE relay.webhooks SET enabled = false")
    for number, (hook, doc) in enumerate(zip(hooks, docs, strict=True)):
        name = f"g{generation}-{number}"
        columns = {"name": name, **hook}
        insert_hook = (
            f"INSERT INTO relay.webhooks ({', '.join(columns)})"
            f" VALUES ({', '.join(['%s'] * len(columns))})"
        )
        insert_rule = (
            "INSERT INTO relay.event_rules (name, tables, conditions, webhook_id)"
            " SELECT %s, ARRAY['public.fuzz'], %s, id FROM relay.webhooks WHERE name = %s"
        )
        rule_values = (name, None if doc is None else Jsonb(doc), name)
        try:
            with conn.transaction():
                conn.execute(insert_hook, list(columns.values()))
                conn.execute(insert_rule, rule_values)
        except psycopg.errors.CheckViolation:
            with conn.transaction():
                conn.execute("SET LOCAL session_replication_role = replica")
                conn.execute(insert_hook, list(columns.values()))
                conn.execute(insert_rule, rule_values)
    conn.execute("UPDATE relay.rules_version SET version = version + 1")
    conn.execute("NOTIFY relay_rules")


def receiver(port: int, ready: Any) -> None:
    """Answers at random: mostly 200, sometimes an error, slowly, or not at all."""
    import logging

    from aiohttp import web

    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)  # e.g. 100 KB headers it refuses

    async def hook(request: web.Request) -> web.StreamResponse:
        await request.read()
        roll = random.random()
        if roll < 0.75:
            return web.Response(text="ok")
        if roll < 0.83:
            return web.Response(status=500)
        if roll < 0.88:
            return web.Response(status=503, headers={"Retry-After": "1"})
        if roll < 0.91:
            return web.Response(status=410)
        if roll < 0.95:
            await asyncio.sleep(1.5)  # past the webhooks' 1 s timeout
            return web.Response(text="late")
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", hook)
    ready.set()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def start_relay(dsn: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RELAY_DSN": dsn, **RELAY_SETTINGS}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "relay", "run"], env=env, stdout=out, stderr=out
        )


class Fuzz:
    def __init__(self, dsn: str, port: int, log: Path, deadline: float, seed: int) -> None:
        self.conn: psycopg.Connection[Any] = psycopg.connect(dsn, autocommit=True)
        self.dsn, self.port, self.log, self.deadline = dsn, port, log, deadline
        self.relay = start_relay(dsn, log)
        self.seed = seed
        self.chance = random.Random(seed)
        self.crashes = 0
        self.rounds = self.refused = self.generation = 0
        self.statements: Counter[str] = Counter()

    def check_alive(self) -> None:
        if self.relay.poll() is not None:
            self.crashes += 1
            print(f"  relay run exited with {self.relay.returncode}: started again", flush=True)
            self.relay = start_relay(self.dsn, self.log)

    def run(self) -> None:
        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(st.data())
        def one_round(data: st.DataObject) -> None:
            # Everything is drawn every round, used or not: hypothesis wants each example to
            # draw the same way, whatever state the run is in.
            count = data.draw(st.integers(2, 6))
            hooks = [data.draw(webhook(self.port)) for _ in range(count)]
            docs = [data.draw(conditions()) for _ in range(count)]
            statements = [operation(data.draw) for _ in range(data.draw(st.integers(1, 8)))]
            if time.monotonic() > self.deadline:
                return
            # Not every n-th round: the first example of each call is hypothesis's simplest.
            if not self.generation or self.chance.random() < 1 / ROUNDS_PER_RULE_SET:
                self.generation += 1
                replace_rules(self.conn, hooks, docs, self.generation)
            self.rounds += 1
            try:
                with self.conn.transaction():
                    for kind, sql, parameters in statements:
                        self.conn.execute(sql, parameters)
                        self.statements[kind] += 1
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise
            except psycopg.Error:
                self.refused += 1  # a value PostgreSQL itself refuses: nothing was recorded
            self.check_alive()

        calls = 0
        while time.monotonic() < self.deadline:
            seed(self.seed + calls)(one_round)()  # new examples each call, reproducible
            calls += 1
            time.sleep(0.05)


def settle(conn: psycopg.Connection[Any], seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM relay.outbox WHERE status = 'pending')"
            " + (SELECT count(*) FROM relay.deliveries WHERE status = 'pending')"
        ).fetchone()
        if row and row[0] == 0:
            break
        time.sleep(0.5)
    return time.monotonic() - started


def report(fuzz: Fuzz, minutes: float, settled: float) -> list[str]:
    conn = fuzz.conn
    problems = []
    outbox = dict(
        conn.execute("SELECT status::text, count(*) FROM relay.outbox GROUP BY 1").fetchall()
    )
    deliveries = dict(
        conn.execute("SELECT status::text, count(*) FROM relay.deliveries GROUP BY 1").fetchall()
    )
    attempts = conn.execute(
        "SELECT count(*), coalesce(max(attempt), 0) FROM relay.attempts"
    ).fetchone()
    made, highest = attempts if attempts else (0, 0)
    leased = conn.execute(
        "SELECT count(*) FROM relay.deliveries WHERE leased_by IS NOT NULL"
    ).fetchone()
    too_many = conn.execute(
        "SELECT count(*) FROM relay.deliveries WHERE attempts > %s", (MAX_ATTEMPTS,)
    ).fetchone()
    no_reason = conn.execute(
        "SELECT count(*) FROM relay.outbox WHERE status = 'failed' AND last_error IS NULL"
    ).fetchone()
    reasons = conn.execute(
        "SELECT last_error FROM relay.deliveries WHERE status = 'failed'"
        " UNION ALL SELECT last_error FROM relay.outbox WHERE status = 'failed'"
        " UNION ALL SELECT error FROM relay.attempts WHERE error IS NOT NULL"
    ).fetchall()
    multiline = sum(1 for (r,) in reasons if r and ("\n" in r or "\r" in r))
    sessions = sum(
        1
        for line in fuzz.log.read_text(errors="replace").splitlines()
        if "relay session failed" in line
    )
    print(
        f"{minutes:g} minutes, {fuzz.rounds} rounds, {fuzz.generation} rule sets, seed {fuzz.seed}"
    )
    print(f"  statements: {dict(fuzz.statements)}; transactions PostgreSQL refused: {fuzz.refused}")
    print(f"  changes: {outbox}; deliveries: {deliveries}")
    print(f"  attempts: {made}, highest attempt number {highest}")
    print(f"  settled {settled:.1f} s after the writer stopped")
    print(f"  crashes: {fuzz.crashes}; failed sessions: {sessions}")
    shown = Counter(_shape(r) for (r,) in reasons if r)
    print("  most frequent reasons:")
    for reason, count in shown.most_common(25):
        print(f"    {count:6}  {reason}")
    if fuzz.crashes:
        problems.append(f"relay run exited {fuzz.crashes} times")
    if sessions:
        problems.append(f"{sessions} failed sessions")
    stuck = outbox.get("pending", 0) + deliveries.get("pending", 0)
    if stuck:
        problems.append(f"{stuck} changes or deliveries still pending")
    for label, row in (
        ("leased", leased),
        ("past the attempt limit", too_many),
        ("failed without a reason", no_reason),
    ):
        if row and row[0]:
            problems.append(f"{row[0]} deliveries {label}")
    if multiline:
        problems.append(f"{multiline} reasons on more than one line")
    return problems


def _shape(reason: str) -> str:
    """A reason with its varying parts (rule names, values) cut, to count kinds of failure."""
    reason = re.sub(r"'g\d+-\d+'", "'…'", reason)
    return reason.split("(found")[0].split(" rendered to ")[0][:110]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("RELAY_DSN"))
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    chosen = args.seed if args.seed is not None else random.randrange(2**32)
    random.seed(chosen)
    port = free_port()
    ready = multiprocessing.Event()
    serving = multiprocessing.Process(target=receiver, args=(port, ready), daemon=True)
    serving.start()
    ready.wait(10)
    log = Path(tempfile.mkdtemp(prefix="relay-fuzz-")) / "relay.log"
    try:
        with postgres_server(args.dsn) as server, scratch_database(server, "relay_fuzz") as dsn:
            with psycopg.connect(dsn, autocommit=True) as conn:
                Store(conn).install()
                conn.execute(TABLE)
            fuzz = Fuzz(dsn, port, log, time.monotonic() + args.minutes * 60, chosen)
            try:
                fuzz.run()
                settled = settle(fuzz.conn, 180)
                fuzz.check_alive()
                problems = report(fuzz, args.minutes, settled)
            finally:
                fuzz.relay.send_signal(signal.SIGTERM)
                fuzz.relay.wait(30)
                fuzz.conn.close()
    finally:
        serving.kill()
    print(f"  relay log: {log}")
    if problems:
        sys.exit("FAILED: " + "; ".join(problems))
    print("OK: no crash, nothing stuck, every change delivered, failed with a reason, or skipped")


if __name__ == "__main__":
    main()
