"""The delivery protocol in SQL: fan-out, leases, per-row order, requeue with plain SQL."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg.rows import dict_row

from relay.db import Conn
from relay.sqlfiles import query
from support.db import one_row, outbox
from support.delivery import claim, claim_batch, claim_parameters, fan_out, finish, setup
from support.hooks import add_rule, add_webhook


def test_fan_out_makes_one_delivery_per_matching_webhook_and_skips_the_rest(rconn: Conn) -> None:
    a, b = setup(rconn)
    rconn.execute("INSERT INTO items VALUES (1, 0)")
    rconn.execute("UPDATE items SET v = 1")
    rconn.execute("INSERT INTO notes VALUES ('no rule')")
    fan_out(rconn)
    deliveries = rconn.execute(
        "SELECT outbox_id, webhook_id, row_key FROM relay.deliveries ORDER BY 1, 2"
    ).fetchall()
    ids = [r["id"] for r in outbox(rconn)]
    assert deliveries == [
        (ids[0], a, 'public.items:{"id": 1}'),
        (ids[1], a, 'public.items:{"id": 1}'),
        (ids[1], b, 'public.items:{"id": 1}'),
    ]
    assert [r["status"] for r in outbox(rconn)] == ["pending", "pending", "skipped"]
    assert fan_out(rconn) == 0  # nothing left to fan out


def test_only_one_relay_fans_out_at_a_time(rconn: Conn, relay_dsn: str) -> None:
    setup(rconn)
    rconn.execute("INSERT INTO items VALUES (1, 0), (2, 0)")
    with psycopg.connect(relay_dsn) as first, psycopg.connect(relay_dsn) as second:
        assert len(first.execute(query("changes_to_fan_out"), {"limit": 10}).fetchall()) == 2
        assert second.execute(query("changes_to_fan_out"), {"limit": 10}).fetchall() == []
        first.rollback()  # the lock goes with the transaction
        assert len(second.execute(query("changes_to_fan_out"), {"limit": 10}).fetchall()) == 2


def test_changes_to_one_row_are_claimed_one_at_a_time_in_order(rconn: Conn) -> None:
    a, b = setup(rconn)  # b's own order is independent: leave it out
    rconn.execute("INSERT INTO items VALUES (1, 0), (2, 0)")
    rconn.execute("UPDATE items SET v = 1 WHERE id = 1")
    rconn.execute("UPDATE items SET v = 2 WHERE id = 1")
    fan_out(rconn)
    first, second, third, _ = [r["id"] for r in outbox(rconn)]
    only_a: dict[str, Any] = {"paused": [b]}
    assert claim(rconn, **only_a) == [(first, a), (second, a)]  # row 1's first change, row 2
    assert claim(rconn, **only_a) == []  # row 1's next change waits while the first is out
    finish(rconn, first, a, "pending", retry_in=0)  # a failed attempt, retry due now
    assert claim(rconn, **only_a) == [(first, a)]  # the retry goes before the later change
    finish(rconn, first, a, "delivered")
    assert claim(rconn, **only_a) == [(third, a)]


def test_a_lease_expires_and_the_old_holder_cannot_overwrite(rconn: Conn) -> None:
    a, _ = setup(rconn)
    rconn.execute("INSERT INTO items VALUES (1, 0)")
    fan_out(rconn)
    change = outbox(rconn)[0]["id"]
    assert claim(rconn, "dead", lease=0.2) == [(change, a)]
    assert claim(rconn, "alive") == []
    time.sleep(0.3)
    assert claim(rconn, "alive") == [(change, a)]
    assert finish(rconn, change, a, "delivered", relay_id="dead") == 0
    assert finish(rconn, change, a, "delivered", relay_id="alive") == 1
    assert outbox(rconn)[0]["status"] == "delivered"


def test_two_relays_claim_disjoint_work(rconn: Conn, relay_dsn: str) -> None:
    setup(rconn)
    rconn.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, 50) g")
    fan_out(rconn)
    with psycopg.connect(relay_dsn) as one, psycopg.connect(relay_dsn) as two:
        first = claim(one, "one")  # transaction still open: rows locked
        second = claim(two, "two")
        one.commit()
        two.commit()
    assert len(first) + len(second) == 50 and not set(first) & set(second)


def test_requeue_with_plain_sql_resends_only_to_webhooks_that_failed(rconn: Conn) -> None:
    a, b = setup(rconn)
    rconn.execute("INSERT INTO items VALUES (1, 0)")
    rconn.execute("UPDATE items SET v = 1")
    fan_out(rconn)
    update = outbox(rconn)[1]["id"]
    claim(rconn)
    finish(rconn, outbox(rconn)[0]["id"], a, "delivered")
    claim(rconn)
    finish(rconn, update, a, "delivered")
    finish(rconn, update, b, "failed")
    assert outbox(rconn)[1]["status"] == "failed"

    rconn.execute("UPDATE relay.outbox SET status = 'pending' WHERE status = 'failed'")
    row = outbox(rconn)[1]
    assert row["fanned_out_at"] is None and row["processed_at"] is None
    fan_out(rconn)
    states = rconn.execute(
        "SELECT webhook_id, status::text, attempts FROM relay.deliveries"
        " WHERE outbox_id = %s ORDER BY 1",
        (update,),
    ).fetchall()
    assert states == [(a, "delivered", 1), (b, "pending", 0)]
    assert claim(rconn) == [(update, b)]
    finish(rconn, update, b, "delivered")
    assert outbox(rconn)[1]["status"] == "delivered"


def test_busy_webhooks_get_only_their_free_slots(rconn: Conn) -> None:
    a, b = setup(rconn)
    rconn.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, 10) g")
    rconn.execute("UPDATE items SET v = 1")
    fan_out(rconn)
    assert {w for _, w in claim(rconn, paused=[a])} == {b}
    rows = rconn.execute(
        query("claim_deliveries"), claim_parameters(per_webhook=4, busy={a: (1, 0)})
    ).fetchall()
    assert sorted(r[1] for r in rows) == [a, a, a]


def test_documented_one_liners(rconn: Conn) -> None:
    """docs/operations.md: retry one webhook's failures; drop a poisoned change."""
    a, _ = setup(rconn)
    rconn.execute("INSERT INTO items VALUES (1, 0), (2, 0)")
    fan_out(rconn)
    first, second = [r["id"] for r in outbox(rconn)]
    claim(rconn)
    finish(rconn, first, a, "failed")
    finish(rconn, second, a, "delivered")
    assert [r["status"] for r in outbox(rconn)] == ["failed", "delivered"]

    rconn.execute("""
        UPDATE relay.outbox o SET status = 'pending'
        FROM relay.deliveries d JOIN relay.webhooks w ON w.id = d.webhook_id
        WHERE d.outbox_id = o.id AND d.status = 'failed' AND w.name = 'a'
          AND o.status = 'failed' AND o.created_at > current_date""")
    fan_out(rconn)
    assert claim(rconn) == [(first, a)]

    rconn.execute(
        "UPDATE relay.deliveries SET status = 'failed', last_error = 'dropped by operator'"
        " WHERE outbox_id = %s AND status = 'pending'",
        (first,),
    )
    rconn.execute(
        "UPDATE relay.outbox SET status = 'failed', processed_at = now() WHERE id = %s", (first,)
    )
    assert outbox(rconn)[0]["status"] == "failed"
    assert claim(rconn) == []


def test_a_key_move_is_claimed_after_the_old_key_and_before_what_follows(rconn: Conn) -> None:
    a, b = setup(rconn)
    rconn.execute("INSERT INTO items VALUES (10, 0)")
    rconn.execute("UPDATE items SET id = 11 WHERE id = 10")
    rconn.execute("INSERT INTO items VALUES (10, 1)")  # a new row takes the old key
    rconn.execute("UPDATE items SET v = 2 WHERE id = 11")
    fan_out(rconn)
    created, moved, reused, later = [r["id"] for r in outbox(rconn)]
    keys = rconn.execute(
        "SELECT row_key, old_row_key FROM relay.deliveries"
        " WHERE outbox_id = %s AND webhook_id = %s",
        (moved, a),
    ).fetchone()
    assert keys == ('public.items:{"id": 11}', 'public.items:{"id": 10}')
    only_a: dict[str, Any] = {"paused": [b]}
    assert claim(rconn, **only_a) == [(created, a)]  # everything else waits for it
    finish(rconn, created, a, "delivered")
    assert claim(rconn, **only_a) == [(moved, a)]  # the new row 10 and row 11 wait for the move
    finish(rconn, moved, a, "pending", retry_in=0)
    assert claim(rconn, **only_a) == [(moved, a)]  # its retry still goes first
    finish(rconn, moved, a, "delivered")
    assert claim(rconn, **only_a) == [(reused, a), (later, a)]


def test_claims_take_only_what_fits_in_the_bytes_left(rconn: Conn) -> None:
    a, b = setup(rconn)
    rconn.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, 6) g")
    fan_out(rconn)
    size = one_row(rconn.execute("SELECT max(change_bytes) FROM relay.deliveries"))[0]
    assert size == len('{"id":1,"v":0}')  # octet_length of the JSON text

    def take(**room: Any) -> int:
        params = claim_parameters(**{"lease": 0.001, "busy": {b: (100, 0)}, **room})
        rows = rconn.execute(query("claim_deliveries"), params).fetchall()
        time.sleep(0.01)  # the lease runs out: the next call may take them again
        return len(rows)

    assert take(room=6 * size) == 6
    assert take(room=4 * size) == 4
    assert take(room=size - 1) == 0
    # A webhook already holding bytes gets only what is left of its share.
    assert take(room=10 * size, bytes_per_webhook=3 * size, busy={a: (0, size), b: (100, 0)}) == 2


def test_a_change_over_the_limit_is_claimed_without_its_images_and_costs_nothing(
    rconn: Conn,
) -> None:
    _, b = setup(rconn)
    rconn.execute("INSERT INTO items VALUES (1, 0)")
    fan_out(rconn)
    params = claim_parameters(busy={b: (100, 0)}, room=0, max_change=5)
    with rconn.cursor(row_factory=dict_row) as cur:
        (row,) = cur.execute(query("claim_deliveries"), params).fetchall()
    assert (row["outbox_id"], row["old"], row["new"]) == (outbox(rconn)[0]["id"], None, None)
    assert row["change_bytes"] > 5


def test_key_moves_are_found_in_images_postgresql_cannot_parse_as_text(rconn: Conn) -> None:
    """A json column may hold \\u0000 or a lone surrogate: PostgreSQL's json operators fail on
    such an image, yet fan-out still finds the key an UPDATE moved the row from."""
    rconn.execute("CREATE TABLE docs (id text PRIMARY KEY, doc json)")
    rconn.execute("SELECT relay.track('docs')")
    hook = add_webhook(rconn, name="docs")
    add_rule(rconn, hook, name="docs", tables=["public.docs"])
    rconn.execute(
        """INSERT INTO docs VALUES ('a\\u0000', '{"x": "\\u0000"}'), ('b', '"\\ud800"')"""
    )
    rconn.execute("UPDATE docs SET id = id || '2'")
    fan_out(rconn)
    keys = rconn.execute(
        "SELECT d.row_key, d.old_row_key FROM relay.deliveries d JOIN relay.outbox o"
        " ON o.id = d.outbox_id WHERE o.op = 'update' ORDER BY d.row_key"
    ).fetchall()
    assert keys == [
        ('public.docs:{"id": "a\\\\u00002"}', 'public.docs:{"id": "a\\\\u0000"}'),
        ('public.docs:{"id": "b2"}', 'public.docs:{"id": "b"}'),
    ]


def batched_key_move(conn: Conn) -> tuple[int, list[int]]:
    """A batched webhook (batch_size 2) and row 10 inserted, moved to key 11, then updated
    twice: the webhook and the four changes."""
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
    conn.execute("SELECT relay.track('items')")
    hook = add_webhook(conn, name="batched", batch_size=2)
    add_rule(conn, hook, name="all", tables=["public.items"])
    conn.execute("INSERT INTO items VALUES (10, 0)")
    conn.execute("UPDATE items SET id = 11 WHERE id = 10")
    conn.execute("UPDATE items SET v = 1 WHERE id = 11")
    conn.execute("UPDATE items SET v = 2 WHERE id = 11")
    fan_out(conn)
    return hook, [r["id"] for r in outbox(conn)]


def test_a_batch_claim_reaches_an_earlier_change_due_after_the_later_ones(rconn: Conn) -> None:
    """The insert of row 10 is due after the later changes (made pending again, by SQL, at
    that moment). The updates of row 11 wait for the key move, which waits for the insert: a
    claim that took the updates (due first) and then dropped them took nothing, for ever."""
    hook, (created, moved, *_) = batched_key_move(rconn)
    rconn.execute(
        "UPDATE relay.deliveries SET next_attempt_at = now() - CASE outbox_id WHEN %s"
        " THEN interval '1 second' ELSE interval '1 minute' END",
        (created,),
    )
    assert claim_batch(rconn, hook, 2) == [created]
    finish(rconn, created, hook, "delivered")
    assert claim_batch(rconn, hook, 2, relay_id="r2") == [moved, moved + 1]


def test_a_batch_retry_waits_for_an_earlier_change_of_the_key_it_moved_from(rconn: Conn) -> None:
    """The key move went in a batch and waits for its retry; the insert of the key it moved
    from failed before it and is sent again (`relay retry`): the batch must wait for it."""
    hook, (created, moved, *_) = batched_key_move(rconn)
    rconn.execute("UPDATE relay.deliveries SET status = 'failed' WHERE outbox_id = %s", (created,))
    assert claim_batch(rconn, hook, 2) == [moved, moved + 1]
    for change in (moved, moved + 1):
        finish(rconn, change, hook, "pending", retry_in=0)  # a 503: the batch is due again
    rconn.execute(
        "UPDATE relay.deliveries SET status = 'pending', next_attempt_at = now()"
        " WHERE outbox_id = %s",
        (created,),
    )
    assert claim_batch(rconn, hook, 2, relay_id="r2") == [created]
