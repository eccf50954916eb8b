"""`relay backfill` and relay.backfill: existing rows as snapshots, with real receivers."""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from relay.db import Conn
from support.cli import relay
from support.db import one_row
from support.receivers import Receiver, receiver
from support.worker import FAST, outbox_statuses, running, until


def hook(conn: Conn, name: str, url: str, events: list[str], conditions: str | None = None) -> None:
    conn.execute(
        "INSERT INTO relay.webhooks (name, payload_url, secret) VALUES (%s, %s, 's')", (name, url)
    )
    conn.execute(
        "INSERT INTO relay.event_rules (name, tables, events, conditions, webhook_id)"
        " SELECT %s, ARRAY['public.items'], %s, %s::jsonb, id FROM relay.webhooks WHERE name = %s",
        (name, events, conditions, name),
    )


def items(conn: Conn, rows: int, *, v_is_id: bool = False) -> None:
    """A tracked table of ``rows`` rows that existed before it was tracked (v 0, or its id)."""
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, token text)")
    conn.execute(
        "INSERT INTO items SELECT g, CASE WHEN %s THEN g ELSE 0 END, 'secret'"
        " FROM generate_series(1, %s) g",
        (v_is_id, rows),
    )
    conn.execute("SELECT relay.track('items', exclude_columns => ARRAY['token'])")


def bodies(r: Receiver) -> list[dict[str, Any]]:
    return [json.loads(request.body) for request in r.requests]


def started(*args: str, dsn: str) -> subprocess.Popen[str]:
    """``relay backfill *args`` running in the background, as a person starts it (to stop with
    Ctrl-C)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    return subprocess.Popen(
        [sys.executable, "-m", "relay", "backfill", *args],
        env={**env, "RELAY_DSN": dsn},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def delivered(conn: Conn) -> bool:
    """Nothing left pending (a change no rule takes ends skipped)."""
    return "pending" not in outbox_statuses(conn)


def test_backfill_sends_every_row_once_as_a_snapshot_in_key_order(
    rconn: Conn, relay_dsn: str
) -> None:
    items(rconn, 25)

    async def scenario() -> Receiver:
        async with receiver() as r:
            hook(rconn, "snap", r.url, ["insert", "snapshot"])
            done = await asyncio.to_thread(
                relay, "backfill", "public.items", "--batch", "7", dsn=relay_dsn
            )
            assert done.returncode == 0, done.stderr
            assert "backfill of public.items complete: 25 snapshots" in done.stdout
            assert not done.stdout.startswith("\n"), "no empty line left by a progress bar"
            async with running(relay_dsn):
                await until(lambda: delivered(rconn) and len(r.requests) == 25)
            return r

    r = asyncio.run(scenario())
    sent = bodies(r)
    assert sorted(body["data"]["id"] for body in sent) == list(range(1, 26))
    assert {body["event"] for body in sent} == {"snapshot"}
    assert all(body["snapshots"]["prechange"] is None for body in sent)
    assert all("token" not in body["data"] for body in sent), "excluded columns stay out"
    assert {request.headers["X-Relay-Event"] for request in r.requests} == {"public.items.snapshot"}
    keys = [
        row[0] for row in rconn.execute("SELECT (pk->>'id')::int FROM relay.outbox ORDER BY id")
    ]
    assert keys == list(range(1, 26)), "written in primary-key order"
    status = relay("status", dsn=relay_dsn)
    assert "public.items" in status.stdout and "25 of 25" in status.stdout


def test_a_backfill_for_one_webhook_goes_there_alone_and_keeps_its_conditions(
    rconn: Conn, relay_dsn: str
) -> None:
    items(rconn, 20, v_is_id=True)

    async def scenario() -> tuple[Receiver, Receiver]:
        async with receiver() as a, receiver() as b:
            # Neither rule names the snapshot event: --webhook sends them all the same.
            hook(rconn, "a", a.url, ["insert"], '{"attr": "data.v", "value": 10, "op": "gt"}')
            hook(rconn, "b", b.url, ["insert", "update"])
            nowhere = relay("backfill", "public.items", dsn=relay_dsn)
            assert nowhere.returncode == 2
            assert "no enabled rule takes snapshots of public.items" in nowhere.stderr
            done = await asyncio.to_thread(
                relay, "backfill", "public.items", "--webhook", "a", dsn=relay_dsn
            )
            assert done.returncode == 0, done.stderr
            async with running(relay_dsn):
                await until(lambda: len(a.requests) == 10 and delivered(rconn))
                await asyncio.sleep(0.3)
            return a, b

    a, b = asyncio.run(scenario())
    assert sorted(body["data"]["v"] for body in bodies(a)) == list(range(11, 21))
    assert b.requests == [], "only the webhook named receives the snapshots"
    skipped = one_row(rconn.execute("SELECT count(*) FROM relay.outbox WHERE status = 'skipped'"))
    assert skipped[0] == 10, "rows the conditions leave out are skipped, as any change"


def test_an_interrupted_backfill_goes_on_where_it_stopped_and_never_twice(
    rconn: Conn, relay_dsn: str
) -> None:
    items(rconn, 100)
    hook(rconn, "snap", "http://127.0.0.1:9/never", ["snapshot"])
    # Two chunks committed, then the run stopped (the SQL calls are what the command makes).
    assert one_row(rconn.execute("SELECT relay.backfill('items', chunk => 30)"))[0] == 30
    assert one_row(rconn.execute("SELECT relay.backfill('items', chunk => 30)"))[0] == 30
    status = relay("status", dsn=relay_dsn)
    assert "60 of 100" in status.stdout and "under way" in status.stdout

    resumed = relay("backfill", "public.items", "--batch", "25", dsn=relay_dsn)
    assert resumed.returncode == 0, resumed.stderr
    assert "complete: 100 snapshots (resumed)" in resumed.stdout
    count, distinct = one_row(
        rconn.execute("SELECT count(*), count(DISTINCT pk::text) FROM relay.outbox")
    )
    assert count == distinct == 100

    again = relay("backfill", "public.items", dsn=relay_dsn)
    assert again.returncode == 0
    assert "is complete (100 rows" in again.stdout and "--again" in again.stdout
    assert one_row(rconn.execute("SELECT count(*) FROM relay.outbox"))[0] == 100

    fresh = relay("backfill", "public.items", "--again", dsn=relay_dsn)
    assert fresh.returncode == 0, fresh.stderr
    assert one_row(rconn.execute("SELECT count(*) FROM relay.outbox"))[0] == 200


def test_a_chunk_locks_its_rows_so_a_snapshot_never_follows_a_newer_change(
    rconn: Conn, relay_dsn: str
) -> None:
    items(rconn, 10)
    hook(rconn, "snap", "http://127.0.0.1:9/never", ["snapshot", "update"])

    # A writer that got to row 5 first: the chunk gives up rather than wait long, and once the
    # writer commits, the snapshot (a later id) holds the row as the writer left it.
    with psycopg.connect(relay_dsn) as writer, psycopg.connect(relay_dsn, autocommit=True) as b:
        writer.execute("UPDATE items SET v = 1 WHERE id = 5")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            b.execute("SELECT relay.backfill('items')")
        writer.commit()
        b.execute("SELECT relay.backfill('items')")
    story = rconn.execute(
        "SELECT op::text, (coalesce(new, old)->>'v')::int FROM relay.outbox"
        " WHERE (pk->>'id')::int = 5 ORDER BY id"
    ).fetchall()
    assert story == [("update", 1), ("snapshot", 1)]

    # A chunk that got there first: the writer waits for the chunk's commit, so its change
    # comes after the snapshot.
    rconn.execute("SELECT relay.backfill('items', again => true)")  # completes the first one
    with psycopg.connect(relay_dsn) as chunk:
        chunk.execute("SELECT relay.backfill('items', again => true)")
        wrote = threading.Event()

        def write() -> None:
            with psycopg.connect(relay_dsn, autocommit=True) as w:
                w.execute("UPDATE items SET v = 2 WHERE id = 6")
            wrote.set()

        thread = threading.Thread(target=write)
        thread.start()
        assert not wrote.wait(0.5), "the writer waits for the chunk"
        chunk.commit()
        thread.join(10)
    story = rconn.execute(
        "SELECT op::text, (coalesce(new, old)->>'v')::int FROM relay.outbox"
        " WHERE (pk->>'id')::int = 6 ORDER BY id"
    ).fetchall()
    assert story[-2:] == [("snapshot", 0), ("update", 2)]


def test_a_backfill_racing_live_updates_never_delivers_an_older_image_after_a_newer(
    rconn: Conn, relay_dsn: str
) -> None:
    rows = 400
    items(rconn, rows)
    seen: dict[int, list[int]] = defaultdict(list)
    stop = threading.Event()

    def writer() -> None:
        pick = random.Random(7)
        with psycopg.connect(relay_dsn, autocommit=True) as w:
            for _ in range(400):
                if stop.is_set():
                    return
                time.sleep(0.002)
                first = pick.randint(1, rows - 3)
                # Several rows a transaction, as an application would.
                with w.transaction():
                    for row in range(first, first + 3):
                        w.execute("UPDATE items SET v = v + 1 WHERE id = %s", (row,))

    async def scenario() -> None:
        async with receiver() as r:
            hook(rconn, "snap", r.url, ["snapshot", "update"])
            threads = [threading.Thread(target=writer) for _ in range(2)]
            for thread in threads:
                thread.start()
            try:
                async with running(relay_dsn, FAST):
                    done = await asyncio.to_thread(
                        relay, "backfill", "public.items", "--batch", "10", dsn=relay_dsn
                    )
                    assert done.returncode == 0, done.stderr
                    await asyncio.sleep(0.3)
                    stop.set()
                    for thread in threads:
                        await asyncio.to_thread(thread.join, 10)
                    await until(lambda: delivered(rconn), timeout=60)
            finally:
                stop.set()
            for body in bodies(r):
                seen[body["data"]["id"]].append(body["data"]["v"])

    started = time.monotonic()
    asyncio.run(scenario())
    assert time.monotonic() - started < 90
    assert len(seen) == rows, "every row reached the receiver"
    final: dict[int, int] = dict(rconn.execute("SELECT id, v FROM items").fetchall())
    updates = one_row(rconn.execute("SELECT count(*) FROM relay.outbox WHERE op = 'update'"))[0]
    assert updates > 50, "the writers raced the backfill"
    for row, values in seen.items():
        assert values == sorted(values), f"row {row} went back in time: {values}"
        assert values[-1] == final[row], f"row {row} ended on {values[-1]}, not {final[row]}"


def test_backfill_refuses_what_it_cannot_do_in_one_line_each(rconn: Conn, relay_dsn: str) -> None:
    rconn.execute("CREATE TABLE keyless (v int)")
    rconn.execute("SELECT relay.track('keyless')")
    rconn.execute("CREATE TABLE untracked (id int PRIMARY KEY)")
    rconn.execute("CREATE TABLE parted (id int PRIMARY KEY) PARTITION BY RANGE (id)")
    rconn.execute("CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100)")
    rconn.execute("SELECT relay.track('parted')")
    rconn.execute("CREATE TYPE pair AS (a int, b int)")
    rconn.execute("CREATE TABLE paired (id pair PRIMARY KEY)")
    rconn.execute("SELECT relay.track('paired')")
    items(rconn, 3)
    hook(rconn, "snap", "http://127.0.0.1:9/", ["snapshot"])
    rconn.execute(
        "UPDATE relay.event_rules SET tables = ARRAY['public.items', 'public.keyless',"
        " 'public.untracked', 'public.parted', 'public.parted_1', 'public.paired']"
    )
    for args, message in [
        (["public.nope"], "no table named 'public.nope'"),
        (["a.b.c.d"], "no table named 'a.b.c.d'"),
        ([""], "no table named ''"),
        (["public.untracked"], "public.untracked is not tracked (relay track"),
        (["public.parted_1"], "is a partition of tracked table public.parted: backfill that table"),
        (["public.keyless"], "has no primary key"),
        (["public.paired"], 'primary key column "id" is of type public.pair'),
        (["public.items", "--where", "nonsense +"], "the where clause does not work"),
        (["public.items", "--where", "own_function(id)"], "the where clause does not work"),
        (["public.items", "--webhook", "nope"], "no webhook named 'nope'"),
        (["public.items", "--batch", "0"], "--batch"),
    ]:
        result = relay("backfill", *args, dsn=relay_dsn)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert one_row(rconn.execute("SELECT count(*) FROM relay.outbox"))[0] == 0
    # A partitioned table is backfilled through its parent, under the parent's name.
    rconn.execute("INSERT INTO parted VALUES (1), (2)")
    rconn.execute("TRUNCATE relay.outbox CASCADE")
    done = relay("backfill", "public.parted", dsn=relay_dsn)
    assert done.returncode == 0, done.stderr
    assert rconn.execute("SELECT DISTINCT table_name FROM relay.outbox").fetchall() == [("parted",)]
    # A table that inherits from a tracked one is not tracked with it; a where clause may end
    # in a comment.
    rconn.execute("CREATE TABLE kid () INHERITS (items)")
    rconn.execute("INSERT INTO kid VALUES (99, 9, 'x')")
    rconn.execute("TRUNCATE relay.outbox CASCADE")
    mine = relay("backfill", "public.items", "--where", "v >= 0 -- every row", dsn=relay_dsn)
    assert mine.returncode == 0, mine.stderr
    keys = rconn.execute("SELECT (pk->>'id')::int FROM relay.outbox ORDER BY id").fetchall()
    assert keys == [(1,), (2,), (3,)]


@pytest.mark.timing
def test_a_backfill_stopped_with_ctrl_c_says_so_and_the_same_command_finishes_it(
    rconn: Conn, relay_dsn: str
) -> None:
    items(rconn, 3000)
    hook(rconn, "snap", "http://127.0.0.1:9/never", ["snapshot"])
    slow = started("public.items", "--batch", "100", "--rate", "1000", dsn=relay_dsn)
    deadline = time.monotonic() + 20
    while one_row(rconn.execute("SELECT count(*) FROM relay.outbox"))[0] < 500:
        assert time.monotonic() < deadline, "the backfill did not start"
        time.sleep(0.05)
    slow.send_signal(signal.SIGINT)
    _, stderr = slow.communicate(timeout=20)
    assert slow.returncode == 130
    assert "interrupted after" in stderr and "run the same command again to go on" in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    written = one_row(rconn.execute("SELECT count(*) FROM relay.outbox"))[0]
    assert 500 <= written < 3000

    done = relay("backfill", "public.items", dsn=relay_dsn)
    assert done.returncode == 0, done.stderr
    count, distinct = one_row(
        rconn.execute("SELECT count(*), count(DISTINCT pk::text) FROM relay.outbox")
    )
    assert count == distinct == 3000, "nothing twice, nothing missed"


KEYS = {
    # table: (key columns, rows)
    "chars": ("k char(3) PRIMARY KEY", "VALUES ('aa'), ('ab'), ('ac'), ('ba')"),
    "bits": ("k bit(4) PRIMARY KEY", "VALUES (B'0001'), (B'0010'), (B'1000')"),
    "moods": ("k mood PRIMARY KEY", "VALUES ('sad'), ('happy'), ('meh')"),
    "checked": ("k checked_int PRIMARY KEY", "SELECT generate_series(1, 5)"),
    "dmoods": ("k dmood PRIMARY KEY", "VALUES ('sad'), ('happy')"),
    "pairs": (
        "a text, b timestamptz, PRIMARY KEY (a, b)",
        "SELECT chr(65 + g % 3), '2026-01-01'::timestamptz + g * interval '1.5 s'"
        " FROM generate_series(1, 7) g",
    ),
    "floats": ("k float8 PRIMARY KEY", "VALUES (0.1), (1e-300), (-2.5), (3.141592653589793)"),
    "numbers": ("k numeric PRIMARY KEY", "VALUES (1.50), (1.5000001), (-7), (1e20)"),
}


def test_backfill_pages_through_keys_of_any_type_once_each_and_runs_no_other_roles_code(
    rconn: Conn, relay_dsn: str
) -> None:
    rconn.execute("CREATE TABLE ran (what text)")
    rconn.execute("CREATE TYPE mood AS ENUM ('happy', 'meh', 'sad')")
    # Another role's code: a cast from the key's type to text, and a domain's CHECK.
    rconn.execute(
        "CREATE FUNCTION mood_text(mood) RETURNS text LANGUAGE plpgsql AS"
        " $$BEGIN INSERT INTO ran VALUES ('cast'); RETURN textin(enum_out($1)); END$$"
    )
    rconn.execute("CREATE CAST (mood AS text) WITH FUNCTION mood_text(mood)")
    rconn.execute(
        "CREATE FUNCTION positive(int) RETURNS boolean LANGUAGE plpgsql AS"
        " $$BEGIN INSERT INTO ran VALUES ('check'); RETURN $1 > 0; END$$"
    )
    rconn.execute("CREATE DOMAIN checked_int AS int CHECK (positive(VALUE))")
    rconn.execute("CREATE DOMAIN dmood AS mood")
    rules = []
    for table, (columns, rows) in KEYS.items():
        rconn.execute(f"CREATE TABLE {table} ({columns})")
        rconn.execute(f"INSERT INTO {table} {rows}")
        rconn.execute("SELECT relay.track(%s)", (table,))
        rules.append(f"public.{table}")
    rconn.execute("DELETE FROM ran")
    hook(rconn, "snap", "http://127.0.0.1:9/", ["snapshot"])
    rconn.execute("UPDATE relay.event_rules SET tables = %s", (rules,))
    for table in KEYS:
        done = relay("backfill", f"public.{table}", "--batch", "1", dsn=relay_dsn)
        assert done.returncode == 0, (table, done.stderr)
        sent = rconn.execute(
            "SELECT pk::text FROM relay.outbox WHERE table_name = %s ORDER BY id", (table,)
        ).fetchall()
        # What capture writes as the key, in the key index's order (PostgreSQL's ORDER BY).
        rconn.execute("SET TimeZone = 'UTC'")
        pk = one_row(rconn.execute("SELECT relay.pk_sql(%s::regclass, 'r')", (table,)))[0]
        order = "a, b" if table == "pairs" else "k"
        expected = rconn.execute(f"SELECT {pk}::text FROM {table} r ORDER BY {order}").fetchall()
        assert sent == expected, table
    assert rconn.execute("SELECT * FROM ran").fetchall() == []


def test_backfill_refuses_a_key_type_whose_cast_from_text_another_role_wrote(
    rconn: Conn, relay_dsn: str, make_role: Any
) -> None:
    app = make_role()
    rconn.execute(f"GRANT CREATE ON SCHEMA public TO {app}")
    with psycopg.connect(relay_dsn, user=app, autocommit=True) as conn:
        conn.execute("CREATE TYPE mood AS ENUM ('happy', 'sad')")
        conn.execute("CREATE TABLE moods (k mood PRIMARY KEY)")
        conn.execute("INSERT INTO moods VALUES ('happy'), ('sad')")
        conn.execute(
            "CREATE FUNCTION to_mood(text) RETURNS mood LANGUAGE sql AS $$SELECT 'sad'::mood$$"
        )
        conn.execute("CREATE CAST (text AS mood) WITH FUNCTION to_mood(text)")
        conn.execute(f"GRANT TRIGGER ON moods TO {conn.info.user}")
    rconn.execute("SELECT relay.track('public.moods')")
    hook(rconn, "snap", "http://127.0.0.1:9/", ["snapshot"])
    rconn.execute("UPDATE relay.event_rules SET tables = ARRAY['public.moods']")
    refused = relay("backfill", "public.moods", dsn=relay_dsn)
    assert refused.returncode == 2, refused.stderr
    assert "has a cast from text that a role other than a superuser wrote" in refused.stderr


@pytest.mark.timing
def test_ctrl_c_while_a_chunk_waits_for_a_locked_row_ends_in_one_line(
    rconn: Conn, relay_dsn: str
) -> None:
    items(rconn, 10)
    hook(rconn, "snap", "http://127.0.0.1:9/never", ["snapshot"])
    with psycopg.connect(relay_dsn) as holder:
        holder.execute("SELECT * FROM items WHERE id = 5 FOR UPDATE")
        waiting = started("public.items", dsn=relay_dsn)
        time.sleep(2.5)  # started, and trying the chunk again every 200 ms
        waiting.send_signal(signal.SIGINT)
        _, stderr = waiting.communicate(timeout=20)
    assert waiting.returncode == 130, stderr
    assert stderr.strip().splitlines() == [
        "error: interrupted after 0 snapshots (a chunk under way is undone): run the same"
        " command again to go on"
    ]
    assert one_row(rconn.execute("SELECT count(*) FROM relay.outbox"))[0] == 0


def test_backfill_refuses_keys_holding_a_domain_and_a_where_clause_cannot_undo_its_paging(
    rconn: Conn, relay_dsn: str
) -> None:
    rconn.execute("CREATE TABLE ran (what text)")
    rconn.execute(
        "CREATE FUNCTION positive(int) RETURNS boolean LANGUAGE plpgsql AS"
        " $$BEGIN INSERT INTO ran VALUES ('check'); RETURN $1 > 0; END$$"
    )
    rconn.execute("CREATE DOMAIN posint AS int CHECK (positive(VALUE))")
    rconn.execute("CREATE TYPE posrange AS RANGE (subtype = posint)")
    rconn.execute("CREATE TABLE arrays (k posint[] PRIMARY KEY)")
    rconn.execute("CREATE TABLE ranges (k posrange PRIMARY KEY)")
    rconn.execute("INSERT INTO arrays VALUES (ARRAY[1]), (ARRAY[2])")
    rconn.execute("INSERT INTO ranges VALUES (posrange(1, 2)), (posrange(2, 3))")
    items(rconn, 5)
    for table in ("arrays", "ranges"):
        rconn.execute("SELECT relay.track(%s)", (table,))
    hook(rconn, "snap", "http://127.0.0.1:9/", ["snapshot"])
    rconn.execute(
        "UPDATE relay.event_rules SET tables = ARRAY['public.arrays', 'public.ranges',"
        " 'public.items']"
    )
    rconn.execute("DELETE FROM ran")
    for table in ("arrays", "ranges"):
        refused = relay("backfill", f"public.{table}", "--batch", "1", dsn=relay_dsn)
        assert refused.returncode == 2, refused.stderr
        assert "holds values of public.posint, a domain or composite type" in refused.stderr
    assert rconn.execute("SELECT * FROM ran").fetchall() == []
    # A clause that closes relay's parentheses is refused before it can reach the paging.
    refused = relay(
        "backfill",
        "public.items",
        "--batch",
        "2",
        "--where",
        "v >= 0) OR (v < 0",
        dsn=relay_dsn,
    )
    assert refused.returncode == 2, refused.stderr
    assert "the where clause is not one condition" in refused.stderr
    assert one_row(rconn.execute("SELECT count(*) FROM relay.outbox"))[0] == 0


def test_a_where_clause_that_closes_its_parentheses_is_refused_before_any_row_is_written(
    rconn: Conn, relay_dsn: str
) -> None:
    """Issue 24's reproduction: on a 5-row table, chunks of 2, this clause wrote every row 4
    times."""
    items(rconn, 5, v_is_id=True)
    hook(rconn, "snap", "http://127.0.0.1:9/", ["snapshot"])
    clause = "v > 100) OR (true"
    refused = relay("backfill", "public.items", "--batch", "2", "--where", clause, dsn=relay_dsn)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines() == [
        "error: backfill of public.items: the where clause is not one condition: it closes a"
        " parenthesis it did not open, or is a query on its own (write EXISTS (SELECT ...))"
    ]
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="is not one condition"):
        rconn.execute("SELECT relay.backfill('items', %s, chunk => 2)", (clause,))
    assert one_row(rconn.execute("SELECT count(*) FROM relay.outbox"))[0] == 0
    assert one_row(rconn.execute("SELECT count(*) FROM relay.backfills"))[0] == 0
    # The same condition written as one narrows as it says.
    done = relay(
        "backfill", "public.items", "--batch", "2", "--where", "(v > 100) OR (v > 3)", dsn=relay_dsn
    )
    assert done.returncode == 0, done.stderr
    assert "complete: 2 snapshots" in done.stdout
    keys = rconn.execute("SELECT (pk->>'id')::int FROM relay.outbox ORDER BY id").fetchall()
    assert keys == [(4,), (5,)]


# Clauses that reach, or try to reach, out of their parentheses, and the words of their refusal.
REFUSED = [
    ("v > 100) OR (true", "is not one condition"),
    ("v > 100) OR (v <= 100", "is not one condition"),
    (r"token = E'\\') OR (true", "is not one condition"),  # E'\\' is one backslash
    (r"token = '\') OR (true --'", "is not one condition"),  # '\' is one backslash
    ("token = $$x$$) OR ($$y$$ = $$y$$", "is not one condition"),
    ("SELECT true", "is not one condition"),
    ("pg_catalog.nextval('public.counter') > 0) OR (true", "is not one condition"),
    # Turns standard_conforming_strings off as it runs (in the count), so that the chunk after
    # reads '\' as the start of a longer string and `) OR (true` outside it.
    (
        r"pg_catalog.set_config('standard_conforming_strings', 'off', false) IS NOT NULL"
        r" AND token = '\' || ') OR (true --'",
        "is not one condition",
    ),
    ("(v > 100", "the where clause does not work"),
    ("v > 100)", "the where clause does not work"),
    ("v > 100 /* ) OR (true", "the where clause does not work: unterminated /* comment"),
    ("v > 100) /* ", "the where clause does not work: unterminated /* comment"),
    ("token = ') OR (true", "the where clause does not work: unterminated quoted string"),
    ("token = $a$) OR (true", "the where clause does not work: unterminated dollar-quoted"),
    ("v > 100] OR ARRAY[true", "the where clause does not work"),
    ("v > 100 UNION SELECT true", "the where clause does not work"),
    ("v > 100) UNION (SELECT true", "the where clause does not work"),
    ("leak(v)", "the where clause does not work: function leak(integer) does not exist"),
    ("v > 100; DELETE FROM items", "holds a semicolon"),
    ("token = ';'", "holds a semicolon"),
]

# Clauses that only look as if they closed their parentheses, and the rows they select.
NARROWED = [
    ("token = ')'", [2]),
    ("token = ') OR (true'", [3]),
    ("token = $$) OR (true$$", [3]),
    ("token = $x$) OR (true$x$", [3]),
    (r"token = E'\) OR \(true'", [3]),
    (r"token = E'\') OR (true' OR v > 4", [5]),  # \' in an E'' string is a quote
    (r"token = '\'", [4]),
    (r"token = E'\\'", [4]),
    ("token = chr(59)", [5]),
    ("v > 3 -- ) OR (true", [4, 5]),
    ("v > 3 /* ) OR (true */", [4, 5]),
    ("v > 3 /* /* ) OR (true */ ) OR (true */", [4, 5]),
    ('"v" > 3', [4, 5]),
    ("(SELECT v > 3)", [4, 5]),
    ("id IN (SELECT i.id FROM public.items i WHERE i.v > 3)", [4, 5]),
    ("v > 2.5", [3, 4, 5]),  # int > numeric: pg_catalog's, not the trap in public
    ("pg_catalog.nextval('public.counter') > 0 AND v > 3", [4, 5]),
    ("public.leak(v)", [4, 5]),  # named with its schema: it runs, as the caller
]


def test_a_where_clause_is_one_condition_whatever_strings_comments_and_quotes_it_holds(
    rconn: Conn, relay_dsn: str, make_role: Any
) -> None:
    items(rconn, 5, v_is_id=True)
    for key, token in [(2, ")"), (3, ") OR (true"), (4, "\\"), (5, ";")]:
        rconn.execute("UPDATE items SET token = %s WHERE id = %s", (token, key))
    rconn.execute("TRUNCATE relay.outbox CASCADE")
    rconn.execute("CREATE SEQUENCE counter")
    rconn.execute("CREATE TABLE ran (what text, who text)")
    hook(rconn, "snap", "http://127.0.0.1:9/", ["snapshot"])
    # Another role's traps in public: a function, and an operator pg_catalog has no exact match
    # for (int > numeric).
    app = make_role()
    rconn.execute(f"GRANT CREATE ON SCHEMA public TO {app}")
    with psycopg.connect(relay_dsn, user=app, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION public.leak(int) RETURNS boolean LANGUAGE plpgsql AS"
            " $$BEGIN INSERT INTO public.ran VALUES ('leak', current_user); RETURN $1 > 3; END$$"
        )
        conn.execute(
            "CREATE FUNCTION public.trap(int, numeric) RETURNS boolean LANGUAGE plpgsql AS"
            " $$BEGIN INSERT INTO public.ran VALUES ('operator', current_user); RETURN true;"
            " END$$"
        )
        conn.execute(
            "CREATE OPERATOR public.> (LEFTARG = int, RIGHTARG = numeric, FUNCTION = public.trap)"
        )

    for clause, words in REFUSED:
        refused = relay(
            "backfill", "public.items", "--batch", "2", "--where", clause, dsn=relay_dsn
        )
        assert refused.returncode == 2, (clause, refused.stdout, refused.stderr)
        assert words in refused.stderr, (clause, refused.stderr)
        assert len(refused.stderr.strip().splitlines()) == 1, (clause, refused.stderr)
        with pytest.raises(psycopg.errors.InvalidParameterValue) as raised:
            rconn.execute("SELECT relay.backfill('items', %s, chunk => 2)", (clause,))
        assert words in str(raised.value), (clause, raised.value)
        assert one_row(rconn.execute("SELECT count(*) FROM relay.outbox"))[0] == 0, clause
        assert one_row(rconn.execute("SELECT count(*) FROM relay.backfills"))[0] == 0, clause
    # Refused before anything ran it: nextval is not undone by a rollback.
    assert one_row(rconn.execute("SELECT last_value, is_called FROM counter")) == (1, False)
    assert rconn.execute("SELECT * FROM ran").fetchall() == []

    for clause, selected in NARROWED:
        rconn.execute("TRUNCATE relay.outbox CASCADE")
        while one_row(rconn.execute("SELECT relay.backfill('items', %s, chunk => 2)", (clause,)))[
            0
        ]:
            pass
        keys = rconn.execute("SELECT (pk->>'id')::int FROM relay.outbox ORDER BY id").fetchall()
        assert [key for (key,) in keys] == selected, clause
    ran = rconn.execute("SELECT DISTINCT what, who FROM ran").fetchall()
    assert ran == [("leak", rconn.info.user)], "only the function named with its schema, as caller"
    # And through the command.
    rconn.execute("TRUNCATE relay.outbox CASCADE")
    done = relay("backfill", "public.items", "--where", "token = ') OR (true' -- )", dsn=relay_dsn)
    assert done.returncode == 0, done.stderr
    assert "complete: 1 snapshots" in done.stdout
    assert rconn.execute("SELECT (pk->>'id')::int FROM relay.outbox").fetchall() == [(3,)]


# Pieces of SQL that open, close or hide brackets, strings and comments.
PIECES = [
    "v > 2",
    "v < 4",
    "true",
    "false",
    "token",
    " = ",
    " OR ",
    " AND ",
    "NOT ",
    "(",
    ")",
    "[",
    "]",
    "ARRAY",
    ", ",
    "'",
    "''",
    "')'",
    "'('",
    r"E'",
    "\\",
    r"\'",
    "--",
    "\n",
    "/*",
    "*/",
    "$$",
    "$a$",
    "$$)$$",
    '"',
    '"v"',
    " UNION SELECT ",
    "SELECT ",
    " IS NULL",
    ";",
]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=9).map("".join))
@example("v > 2) OR (true")
@example("v > 2]) OR (ARRAY[true")
def test_whatever_the_where_clause_a_backfill_writes_each_selected_row_once_in_key_order(
    five: Conn, clause: str
) -> None:
    """Either relay.backfill refuses the clause, or its snapshots are rows of the table, each
    once, in key order, as many as its count found when it started."""
    try:
        with five.transaction(force_rollback=True):
            while one_row(
                five.execute("SELECT relay.backfill('items', %s, chunk => 2)", (clause,))
            )[0]:
                pass
            keys = [
                key
                for (key,) in five.execute(
                    "SELECT (pk->>'id')::int FROM relay.outbox ORDER BY id"
                ).fetchall()
            ]
            total = one_row(five.execute("SELECT rows_total FROM relay.backfills"))[0]
    except psycopg.errors.InvalidParameterValue:
        return
    assert keys == sorted(set(keys)), (clause, keys)
    assert set(keys) <= {1, 2, 3, 4, 5}, (clause, keys)
    assert len(keys) == total, (clause, keys, total)


@pytest.fixture
def five(rconn: Conn) -> Conn:
    """items, 5 rows with v = id."""
    items(rconn, 5, v_is_id=True)
    return rconn


def test_a_where_clause_too_long_to_keep_is_refused_in_one_line(
    rconn: Conn, relay_dsn: str
) -> None:
    """relay.backfills keeps each backfill's clause in a unique index, whose entries PostgreSQL
    caps near 2,700 bytes: a longer clause (a list of keys, say) ended in the index's own error,
    exit 1. It is refused first, saying how long it may be."""
    items(rconn, 5, v_is_id=True)
    hook(rconn, "snap", "http://127.0.0.1:9/", ["snapshot"])
    clause = "v::text <> '" + secrets.token_hex(1500) + "'"
    refused = relay("backfill", "public.items", "--where", clause, dsn=relay_dsn)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines() == [
        "error: backfill of public.items: the where clause is 3,013 bytes, over the 2,000 a "
        "backfill keeps: say it in fewer (a function of your own can hold a long condition)"
    ]
    assert one_row(rconn.execute("SELECT count(*) FROM relay.outbox"))[0] == 0
