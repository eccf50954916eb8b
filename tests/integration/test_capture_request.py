"""The application's request behind each change: relay.request_path and relay.request_method,
recorded by capture as the application gave them (0028), and carried to the renderer's Change."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from relay.db import Conn
from relay.sqlfiles import query
from relay.store import AsyncStore, Store
from support.db import outbox, requests
from support.delivery import claim_parameters, fan_out
from support.hooks import add_rule, add_webhook

PATH = "/api/dcim/devices/"
METHOD = "POST"

HOSTILE = [
    "/api/" + "x" * 10_000,
    "/api/dcim/sites/Zürich-東京-🛰/?q=ﷺ&x=\u202e",
    '/it\'s "quoted" \\back\\slashed\\ $$; DROP TABLE t; -- %s %(x)s {{ 7*7 }}',
    "/line\r\nX-Injected: yes\n",
]
"""Paths an application (or whoever writes) may set: stored exactly as given."""


def tag(conn: Conn, path: str | None = PATH, method: str | None = METHOD) -> None:
    """What the application's tagging does: the two settings for the current transaction."""
    conn.execute(
        "SELECT set_config('relay.request_path', %s, true),"
        " set_config('relay.request_method', %s, true)",
        (path or "", method or ""),
    )


@pytest.mark.parametrize("partitioned", [False, True], ids=["plain", "partitioned"])
def test_every_event_records_the_request_its_transaction_was_tagged_with(
    rconn: Conn, partitioned: bool
) -> None:
    """Statement-level (one row and many, the pairing path of a many-row UPDATE) and row-level
    capture, TRUNCATE included; a transaction without them, or with them empty, records NULL
    (no fallback), and the tag ends with its transaction."""
    if partitioned:
        rconn.execute("CREATE TABLE t (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)")
        rconn.execute("CREATE TABLE t_1 PARTITION OF t FOR VALUES FROM (0) TO (100)")
        rconn.execute("CREATE TABLE t_2 PARTITION OF t FOR VALUES FROM (100) TO (200)")
    else:
        rconn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    rconn.execute("SELECT relay.track('t')")
    with rconn.transaction():
        tag(rconn)
        rconn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b'), (150, 'c')")
        rconn.execute("UPDATE t SET v = 'a2' WHERE id = 1")
        rconn.execute("UPDATE t SET v = v || '3'")
        rconn.execute("DELETE FROM t WHERE id = 2")
        rconn.execute("TRUNCATE t")
    tagged = requests(rconn)
    assert [op for op, _, _ in tagged] == ["insert"] * 3 + ["update"] * 4 + ["delete", "truncate"]
    assert {(path, method) for _, path, method in tagged} == {(PATH, METHOD)}

    rconn.execute("INSERT INTO t VALUES (3, 'x')")  # a new transaction: the tag is gone
    with rconn.transaction():
        tag(rconn, "", "")
        rconn.execute("UPDATE t SET v = 'y'")
        rconn.execute("DELETE FROM t")
    with rconn.transaction():
        tag(rconn, "/only/a/path", None)
        rconn.execute("INSERT INTO t VALUES (4, 'z')")
    assert requests(rconn)[len(tagged) :] == [
        ("insert", None, None),
        ("update", None, None),
        ("delete", None, None),
        ("insert", "/only/a/path", None),
    ]


def test_the_slow_path_of_a_table_changed_in_the_same_transaction_records_them(
    rconn: Conn,
) -> None:
    """A table whose columns changed in the writing transaction is captured by relay.capture_rows
    (relay.capture_row_stale for a partitioned one), which builds its statement anew: the same
    request is recorded."""
    rconn.execute("CREATE TABLE plain (id int PRIMARY KEY)")
    rconn.execute("CREATE TABLE parted (id int PRIMARY KEY) PARTITION BY RANGE (id)")
    rconn.execute("CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100)")
    rconn.execute("SELECT relay.track('plain'), relay.track('parted')")
    with rconn.transaction():
        tag(rconn)
        rconn.execute("ALTER TABLE plain ADD COLUMN v text")
        rconn.execute("ALTER TABLE parted ADD COLUMN v text")
        rconn.execute("INSERT INTO plain VALUES (1, 'a'), (2, 'b')")
        rconn.execute("UPDATE plain SET v = 'c'")
        rconn.execute("INSERT INTO parted VALUES (1, 'a')")
        rconn.execute("DELETE FROM parted")
    assert requests(rconn) == [
        ("insert", PATH, METHOD),
        ("insert", PATH, METHOD),
        ("update", PATH, METHOD),
        ("update", PATH, METHOD),
        ("insert", PATH, METHOD),
        ("delete", PATH, METHOD),
    ]


def test_a_session_setting_applies_to_every_transaction_until_reset(rconn: Conn) -> None:
    """Django runs in autocommit: its middleware sets the values for the session (SET, not SET
    LOCAL), and each statement is a transaction of its own."""
    rconn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    rconn.execute("SELECT relay.track('t')")
    rconn.execute("SET relay.request_path = '/api/ipam/prefixes/7/'")
    rconn.execute("SELECT set_config('relay.request_method', 'PATCH', false)")
    rconn.execute("INSERT INTO t VALUES (1)")
    rconn.execute("DELETE FROM t")
    rconn.execute("RESET relay.request_path")
    rconn.execute("RESET relay.request_method")
    rconn.execute("INSERT INTO t VALUES (2)")
    assert requests(rconn) == [
        ("insert", "/api/ipam/prefixes/7/", "PATCH"),
        ("delete", "/api/ipam/prefixes/7/", "PATCH"),
        ("insert", None, None),
    ]


def test_a_role_without_rights_on_relay_records_any_value_exactly(
    rconn: Conn, relay_dsn: str, make_role: Callable[..., str]
) -> None:
    """The values are the writer's word: any role that may write a tracked table sets them as it
    likes (a megabyte, unicode, quotes, backslashes, line breaks), and capture stores them as
    given, never failing the write; relay checks nothing of them."""
    rconn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    rconn.execute("SELECT relay.track('t')")
    app = make_role("app")
    rconn.execute(f"GRANT INSERT, UPDATE, DELETE, TRUNCATE ON t TO {app}")
    values = [*HOSTILE, "/" + "é" * 500_000]
    with psycopg.connect(psycopg.conninfo.make_conninfo(relay_dsn, user=app)) as app_conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app_conn.execute("SELECT count(*) FROM relay.outbox")
        app_conn.rollback()
        for i, value in enumerate(values):
            tag(app_conn, value, value[::-1])
            app_conn.execute("INSERT INTO t VALUES (%s)", (i,))
            app_conn.commit()
        tag(app_conn, values[0], "DELETE")
        app_conn.execute("TRUNCATE t")
        app_conn.commit()
    assert requests(rconn) == [
        *(("insert", value, value[::-1]) for value in values),
        ("truncate", values[0], "DELETE"),
    ]


def test_a_change_carries_its_request_through_every_query_that_reads_it(
    rconn: Conn, relay_dsn: str
) -> None:
    """The renderer's Change has the request of its change whichever way it was read: alone
    (outbox_change: relay preview), fanned out, claimed one at a time or in a batch, and every
    query returning changes for Change.from_row names the two columns."""
    rconn.execute("CREATE TABLE orders (id int PRIMARY KEY, v int)")
    rconn.execute("SELECT relay.track('orders')")
    add_rule(rconn, add_webhook(rconn, name="single"), name="single", tables=["public.orders"])
    with rconn.transaction():
        tag(rconn, HOSTILE[2], "PUT")
        rconn.execute("INSERT INTO orders VALUES (1, 0)")
    rconn.execute("INSERT INTO orders VALUES (2, 0)")
    first, second = (r["id"] for r in outbox(rconn))

    change = Store(rconn).change(first, {})
    assert change is not None and (change.request_path, change.request_method) == (
        HOSTILE[2],
        "PUT",
    )
    change = Store(rconn).change(second, {})
    assert change is not None and (change.request_path, change.request_method) == (None, None)

    assert fan_out(rconn) == 2

    async def claimed() -> list[tuple[int, str | None, str | None]]:
        async with await psycopg.AsyncConnection.connect(relay_dsn, autocommit=True) as aconn:
            rows = await AsyncStore(aconn).claim_deliveries(claim_parameters(), {})
        return sorted((c.change.id, c.change.request_path, c.change.request_method) for c in rows)

    assert asyncio.run(claimed()) == [(first, HOSTILE[2], "PUT"), (second, None, None)]

    for name in (
        "outbox_change",
        "changes_to_fan_out",
        "transaction_rest",
        "claim_deliveries",
        "claim_batch",
        "replay_candidates",
    ):
        text = query(name)
        assert "o.request_path" in text and "o.request_method" in text, name


def test_a_batch_claimed_from_the_store_carries_each_changes_request(
    rconn: Conn, relay_dsn: str
) -> None:
    rconn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    rconn.execute("SELECT relay.track('orders')")
    batched = add_webhook(rconn, name="batched", batch_size=10)
    add_rule(rconn, batched, name="batched", tables=["public.orders"])
    for i, value in enumerate(HOSTILE):
        with rconn.transaction():
            tag(rconn, value, "DELETE" if i % 2 else None)
            rconn.execute("INSERT INTO orders VALUES (%s)", (i,))
    fan_out(rconn)
    parameters: dict[str, Any] = {
        "webhook_id": batched,
        "batch_size": 10,
        "wait_ms": 0,
        "lease_seconds": 30.0,
        "relay_id": "r1",
        "bytes_free": 10**9,
        "max_change_bytes": 10**9,
        "body_bytes": 10**9,
        "body_overhead": 600,
        "pace_ahead": 1.0,
        "answered_webhooks": [],
        "answered_ids": [],
    }

    async def claimed() -> list[tuple[str | None, str | None]]:
        async with await psycopg.AsyncConnection.connect(relay_dsn, autocommit=True) as aconn:
            rows, _ = await AsyncStore(aconn).claim_batch(parameters, {})
        return [(c.change.request_path, c.change.request_method) for c in rows]

    assert asyncio.run(claimed()) == [
        (value, "DELETE" if i % 2 else None) for i, value in enumerate(HOSTILE)
    ]


"""A release whose capture knew nothing of the request's path and method (schema version 27)."""


def test_a_backfill_records_the_request_of_the_session_that_ran_it(rconn: Conn) -> None:
    """A snapshot is made by whoever runs relay.backfill: `relay backfill` sets no request
    (NULL), a backfill called inside a tagged transaction carries that transaction's."""
    rconn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    rconn.execute("INSERT INTO t SELECT generate_series(1, 3)")
    rconn.execute("SELECT relay.track('t')")
    rconn.execute("DO $$ BEGIN WHILE relay.backfill('t') > 0 LOOP END LOOP; END $$")
    with rconn.transaction():
        tag(rconn, "/api/resync/", "POST")
        rconn.execute(
            "DO $$ BEGIN PERFORM relay.backfill('t', again => true);"
            " WHILE relay.backfill('t') > 0 LOOP END LOOP; END $$"
        )
    assert (
        requests(rconn)
        == [("snapshot", None, None)] * 3 + [("snapshot", "/api/resync/", "POST")] * 3
    )
