"""Fan-out finds every change through the primary key, in whatever order transactions commit
(the window alone: tests/unit/test_window.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import psycopg
import pytest
from conftest import template_of

from relay.db import Conn
from relay.tempcluster import NoPostgres, start_temp_cluster
from support.db import one_row
from support.delivery import fan_out, setup
from support.receivers import receiver
from support.worker import outbox_statuses, running, until
from support.worker import setup as hook_setup


@pytest.fixture(scope="module")
def server_dsn() -> Iterator[str]:
    """A cluster of this module's own: fan-out's gaps wait for every transaction running on the
    cluster, whatever its database, so another test's transactions (or another session's) would
    change what these tests count."""
    try:
        cluster = start_temp_cluster()
    except NoPostgres as exc:
        pytest.skip(f"no cluster of its own for the window's tests: {exc}")
    try:
        yield cluster.dsn
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def installed_template(server_dsn: str) -> Iterator[str]:
    with template_of(server_dsn) as name:
        yield name


def test_a_transaction_that_commits_after_a_later_one_is_fanned_out(
    rconn: Conn, relay_dsn: str
) -> None:
    setup(rconn)
    rconn.execute("INSERT INTO items VALUES (1, 0)")
    with psycopg.connect(relay_dsn) as early, psycopg.connect(relay_dsn) as aborted:
        early.execute("INSERT INTO items VALUES (2, 0)")  # takes its id first, commits last
        aborted.execute("INSERT INTO items VALUES (3, 0)")
        rconn.execute("INSERT INTO items VALUES (4, 0)")
        fan_out(rconn)
        assert fanned_out(rconn) == [1, 4]
        aborted.rollback()
        fan_out(rconn)
        assert fanned_out(rconn) == [1, 4]
        assert one_row(rconn.execute("SELECT count(DISTINCT lo) FROM relay.fan_out_gaps"))[0] == 1
        rconn.execute("INSERT INTO items VALUES (5, 0)")
        early.commit()
    fan_out(rconn)
    assert fanned_out(rconn) == [1, 2, 4, 5]
    # Every transaction that could hold a missing id has ended: nothing is left to watch.
    assert one_row(rconn.execute("SELECT count(*) FROM relay.fan_out_gaps"))[0] == 0
    assert one_row(rconn.execute("SELECT count(*) FROM relay.deliveries"))[0] == 4


def test_a_change_whose_transaction_began_after_the_last_one_to_end_is_fanned_out(
    rconn: Conn, relay_dsn: str
) -> None:
    """A snapshot lists running transactions only below one past the newest that had ended:
    the newest one running is not listed, and its change must not be taken for rolled back."""
    setup(rconn)
    with psycopg.connect(relay_dsn) as first, psycopg.connect(relay_dsn) as newest:
        first.execute("SELECT pg_current_xact_id()")  # the older transaction id, no change yet
        newest.execute("INSERT INTO items VALUES (1, 0)")  # a newer id, the lower outbox id
        first.execute("INSERT INTO items VALUES (2, 0)")
        first.commit()  # the newest to end is older than `newest`, still running
        fan_out(rconn)
        assert fanned_out(rconn) == [2]
        newest.commit()
    fan_out(rconn)
    assert fanned_out(rconn) == [1, 2]


def test_writers_of_several_statements_a_transaction_lose_no_change(relay_dsn: str) -> None:
    """Two writers, three statements a transaction, beside a running relay: every change is
    delivered (before the fix above, one in a few hundred stayed pending for ever)."""
    with psycopg.connect(relay_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, 100) g")

    def writer(offset: int) -> None:
        with psycopg.connect(relay_dsn, autocommit=True) as w:
            for n in range(300):
                with w.transaction():
                    for row in range(3):
                        w.execute(
                            "UPDATE items SET v = v + 1 WHERE id = %s",
                            ((n * 3 + row) % 50 + offset,),
                        )

    async def scenario() -> int:
        async with receiver() as r:
            with psycopg.connect(relay_dsn, autocommit=True) as conn:
                hook_setup(conn, r.url)
                async with running(relay_dsn):
                    threads = [threading.Thread(target=writer, args=(o,)) for o in (1, 51)]
                    for thread in threads:
                        thread.start()
                    for thread in threads:
                        await asyncio.to_thread(thread.join, 60)
                    await until(lambda: "pending" not in outbox_statuses(conn), timeout=30)
            return len(r.requests)

    assert asyncio.run(scenario()) == 1800


def test_a_long_transaction_costs_one_gap_not_a_rescan(rconn: Conn, relay_dsn: str) -> None:
    setup(rconn)
    with psycopg.connect(relay_dsn) as long:
        long.execute("INSERT INTO items VALUES (0, 0)")
        for n in range(1, 6):
            rconn.execute(
                "INSERT INTO items SELECT g, 0 FROM generate_series(%s::int, %s::int) g",
                (n * 100, n * 100 + 99),
            )
            fan_out(rconn)
        gaps = rconn.execute("SELECT DISTINCT lo, hi FROM relay.fan_out_gaps").fetchall()
        assert len(gaps) == 1 and gaps[0][0] == gaps[0][1]
        assert len(fanned_out(rconn)) == 500
    fan_out(rconn)
    assert len(fanned_out(rconn)) == 501


def test_outbox_ids_restarted_by_hand_are_read_from_the_start(rconn: Conn) -> None:
    setup(rconn)
    rconn.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, 5) g")
    fan_out(rconn)
    rconn.execute("TRUNCATE relay.outbox, relay.deliveries, relay.attempts RESTART IDENTITY")
    rconn.execute("INSERT INTO items VALUES (6, 0)")
    fan_out(rconn)
    assert fanned_out(rconn) == [6]


def test_a_requeued_change_is_fanned_out_again(rconn: Conn) -> None:
    setup(rconn)
    rconn.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, 3) g")
    fan_out(rconn)
    rconn.execute("UPDATE relay.deliveries SET status = 'failed' WHERE outbox_id = 2")
    rconn.execute("UPDATE relay.outbox SET status = 'failed' WHERE id = 2")
    rconn.execute("UPDATE relay.outbox SET status = 'pending' WHERE id = 2")
    assert fanned_out(rconn) == [1, 3]
    fan_out(rconn)
    assert fanned_out(rconn) == [1, 2, 3]
    assert (
        one_row(
            rconn.execute(
                "SELECT count(*) FROM relay.deliveries WHERE outbox_id = 2 AND status = 'pending'"
            )
        )[0]
        == 1
    )


def fanned_out(conn: Conn) -> list[int]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT (new ->> 'id')::int FROM relay.outbox WHERE fanned_out_at IS NOT NULL"
            " ORDER BY 1"
        )
    ]
