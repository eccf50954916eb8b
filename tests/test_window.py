"""Fan-out finds every change through the primary key, in whatever order transactions commit."""

from __future__ import annotations

import psycopg

from relay.db import Conn
from relay.delivery.window import Gap, Window, advance
from support.db import one_row
from support.delivery import fan_out, setup


def test_ids_missing_below_a_seen_one_wait_for_the_transactions_running() -> None:
    moved = advance(Window(10), 10, [11, 14, 15, 18], running=[7, 9], full=False)
    assert moved == Window(18, (Gap(12, 13, (7, 9)), Gap(16, 17, (7, 9))))
    # With nothing running, a missing id belongs to a transaction that rolled back.
    assert advance(Window(10), 10, [11, 14], running=[], full=False) == Window(14)
    # Nothing new: the window stays where it was.
    assert advance(Window(10), 10, [], running=[5], full=False) == Window(10)


def test_a_gap_is_read_again_when_one_of_its_transactions_ends_and_forgotten_when_all_have() -> (
    None
):
    window = Window(20, (Gap(12, 13, (7, 9)),))
    assert advance(window, 20, [], running=[7, 9], full=False) == window
    assert advance(window, 20, [12], running=[9], full=False) == Window(20, (Gap(12, 13, (9,)),))
    assert advance(window, 20, [12, 13, 21], running=[], full=False) == Window(21)


def test_a_full_batch_keeps_the_gaps_it_did_not_read_to_their_end() -> None:
    window = Window(20, (Gap(5, 9, (7,)), Gap(12, 13, (7,))))
    assert advance(window, 20, [5, 6], running=[], full=True) == window
    assert advance(window, 20, [7, 9, 12], running=[], full=False) == Window(20)


def test_ids_that_start_again_are_read_from_the_start() -> None:
    window = Window(500, (Gap(300, 301, (7,)),))
    assert advance(window, 0, [1, 2], running=[7], full=False) == Window(2)


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
