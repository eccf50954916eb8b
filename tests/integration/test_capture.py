"""What lands in relay.outbox when tracked tables change."""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal

import psycopg
import pytest

from relay.db import Conn
from support.db import one_row, outbox


def test_insert_update_delete_truncate_are_recorded(rconn: Conn) -> None:
    rconn.execute("CREATE TABLE public.orders (id int PRIMARY KEY, status text, qty int)")
    rconn.execute("SELECT relay.track('public.orders')")

    rconn.execute("INSERT INTO orders VALUES (1, 'new', 2), (2, 'new', 5)")
    rconn.execute("UPDATE orders SET status = 'paid' WHERE id = 1")
    rconn.execute("DELETE FROM orders WHERE id = 2")
    rconn.execute("TRUNCATE orders")

    rows = outbox(rconn)
    assert [(r["op"], r["pk"]) for r in rows] == [
        ("insert", {"id": 1}),
        ("insert", {"id": 2}),
        ("update", {"id": 1}),
        ("delete", {"id": 2}),
        ("truncate", None),
    ]
    insert, _, update, delete, truncate = rows
    assert insert["new"] == {"id": 1, "status": "new", "qty": 2} and insert["old"] is None
    assert update["old"] == {"id": 1, "status": "new", "qty": 2}
    assert update["new"] == {"id": 1, "status": "paid", "qty": 2}
    assert delete["old"] == {"id": 2, "status": "new", "qty": 5} and delete["new"] is None
    assert truncate["old"] is None and truncate["new"] is None
    for row in rows:
        assert (row["schema_name"], row["table_name"]) == ("public", "orders")
        assert row["status"] == "pending" and row["attempts"] == 0
        assert "next_attempt_at" not in row and row["processed_at"] is None
        assert row["last_error"] is None and row["created_at"] is not None
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)


def test_update_that_changes_nothing_records_nothing(rconn: Conn) -> None:
    rconn.execute("CREATE TABLE t (id int PRIMARY KEY, v text, n numeric)")
    rconn.execute("SELECT relay.track('t')")
    rconn.execute("INSERT INTO t SELECT g, 'x', 1.0 FROM generate_series(1, 50) g")
    before = len(outbox(rconn))

    rconn.execute("UPDATE t SET v = v")
    rconn.execute("UPDATE t SET v = 'x', n = 1.0 WHERE id < 10")
    assert len(outbox(rconn)) == before

    # Only the rows that really changed, even within one statement.
    rconn.execute("UPDATE t SET v = CASE WHEN id % 10 = 0 THEN 'y' ELSE v END")
    changed = outbox(rconn, "op = 'update'")
    assert sorted(r["pk"]["id"] for r in changed) == [10, 20, 30, 40, 50]
    assert all(r["old"]["v"] == "x" and r["new"]["v"] == "y" for r in changed)


def test_events_option_limits_what_is_recorded(rconn: Conn) -> None:
    rconn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    rconn.execute("SELECT relay.track('t', events => ARRAY['insert', 'delete'])")
    rconn.execute("INSERT INTO t VALUES (1, 'a')")
    rconn.execute("UPDATE t SET v = 'b'")
    rconn.execute("DELETE FROM t")
    rconn.execute("TRUNCATE t")
    assert [r["op"] for r in outbox(rconn)] == ["insert", "delete"]


def test_update_columns_option_records_only_updates_touching_them(rconn: Conn) -> None:
    rconn.execute("CREATE TABLE t (id int PRIMARY KEY, status text, seen_at int)")
    rconn.execute("SELECT relay.track('t', update_columns => ARRAY['status'])")
    rconn.execute("INSERT INTO t VALUES (1, 'a', 0), (2, 'a', 0)")
    rconn.execute("UPDATE t SET seen_at = seen_at + 1")
    rconn.execute("UPDATE t SET status = 'b', seen_at = 5 WHERE id = 2")
    updates = outbox(rconn, "op = 'update'")
    assert len(updates) == 1
    assert updates[0]["old"] == {"id": 2, "status": "a", "seen_at": 1}
    assert updates[0]["new"] == {"id": 2, "status": "b", "seen_at": 5}


def test_excluded_columns_never_reach_the_outbox(rconn: Conn) -> None:
    rconn.execute("CREATE TABLE users (id int PRIMARY KEY, name text, password_hash text)")
    rconn.execute("SELECT relay.track('users', exclude_columns => ARRAY['password_hash'])")
    rconn.execute("INSERT INTO users VALUES (1, 'ann', 'h1')")
    rconn.execute("UPDATE users SET password_hash = 'h2'")  # nothing visible changed
    rconn.execute("UPDATE users SET name = 'anne', password_hash = 'h3'")
    rconn.execute("DELETE FROM users")
    rows = outbox(rconn)
    assert [r["op"] for r in rows] == ["insert", "update", "delete"]
    text = one_row(rconn.execute("SELECT string_agg(concat(old, new), ' ') FROM relay.outbox"))
    assert "password_hash" not in text[0] and "h1" not in text[0] and "h3" not in text[0]


def test_tracking_again_replaces_the_options(rconn: Conn) -> None:
    rconn.execute("CREATE TABLE t (id int PRIMARY KEY, v text, secret text)")
    rconn.execute("SELECT relay.track('t', exclude_columns => ARRAY['secret'])")
    rconn.execute("SELECT relay.track('t', events => ARRAY['update'])")
    rconn.execute("INSERT INTO t VALUES (1, 'a', 's')")
    rconn.execute("UPDATE t SET v = 'b'")
    rows = outbox(rconn)
    assert [r["op"] for r in rows] == ["update"]
    assert rows[0]["new"] == {"id": 1, "v": "b", "secret": "s"}
    tracked = rconn.execute("SELECT events, exclude_columns FROM relay.tracked").fetchall()
    assert tracked == [(["update"], [])]
    triggers = one_row(
        rconn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass")
    )[0]
    assert triggers == 1


def test_untrack_stops_capture_and_keeps_recorded_changes(rconn: Conn) -> None:
    rconn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    rconn.execute("SELECT relay.track('t')")
    rconn.execute("INSERT INTO t VALUES (1)")
    assert one_row(rconn.execute("SELECT relay.untrack('t')"))[0] is True
    rconn.execute("INSERT INTO t VALUES (2)")
    assert [r["new"] for r in outbox(rconn)] == [{"id": 1}]
    assert one_row(rconn.execute("SELECT count(*) FROM relay.tracked"))[0] == 0
    assert one_row(rconn.execute("SELECT relay.untrack('t')"))[0] is False
    assert (
        one_row(rconn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass"))[0]
        == 0
    )


def test_tracked_view_lists_tables_and_options(rconn: Conn) -> None:
    rconn.execute("CREATE TABLE a (x int, y int, z int, PRIMARY KEY (y, x))")
    rconn.execute("CREATE TABLE b (id int)")
    rconn.execute("SELECT relay.track('a', ARRAY['update'], ARRAY['x'], ARRAY['z'])")
    rconn.execute("SELECT relay.track('b')")
    rows = rconn.execute(
        "SELECT schema_name, table_name, events, update_columns, exclude_columns, pk_columns,"
        " partitioned FROM relay.tracked ORDER BY table_name"
    ).fetchall()
    assert rows == [
        ("public", "a", ["update"], ["x"], ["z"], ["y", "x"], False),
        ("public", "b", ["delete", "insert", "truncate", "update"], None, [], [], False),
    ]
    rconn.execute("DROP TABLE b")
    assert [r[0] for r in rconn.execute("SELECT table_name FROM relay.tracked")] == ["a"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("relay.track('t', ARRAY['upsert'])", 'unknown event "upsert"'),
        ("relay.track('t', ARRAY[]::text[])", "at least one"),
        ("relay.track('t', update_columns => ARRAY['nope'])", 'column "nope" does not exist'),
        ("relay.track('t', exclude_columns => ARRAY['nope'])", 'column "nope" does not exist'),
        ("relay.track('v')", "is not a table"),
        ("relay.track('relay.outbox')", "belongs to relay"),
        ("relay.track('missing')", 'relation "missing" does not exist'),
    ],
)
def test_bad_track_calls_are_refused_clearly(rconn: Conn, call: str, message: str) -> None:
    rconn.execute("CREATE TABLE t (id int)")
    rconn.execute("CREATE VIEW v AS SELECT 1 AS x")
    with pytest.raises(psycopg.Error, match=message):
        rconn.execute(f"SELECT {call}")
    assert one_row(rconn.execute("SELECT count(*) FROM relay.tracked"))[0] == 0


def test_rolled_back_changes_leave_nothing(rconn: Conn) -> None:
    rconn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    rconn.execute("SELECT relay.track('t')")
    with pytest.raises(psycopg.errors.UniqueViolation), rconn.transaction():
        rconn.execute("INSERT INTO t VALUES (1)")
        rconn.execute("INSERT INTO t VALUES (1)")
    with rconn.transaction():
        rconn.execute("INSERT INTO t VALUES (2)")
        with pytest.raises(psycopg.errors.DivisionByZero), rconn.transaction():
            rconn.execute("INSERT INTO t VALUES (3)")
            rconn.execute("SELECT 1/0")
    assert [r["new"] for r in outbox(rconn)] == [{"id": 2}]


def test_transaction_context_username_and_request_id(
    rconn: Conn, relay_dsn: str, make_role: Callable[..., str]
) -> None:
    rconn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    rconn.execute("SELECT relay.track('t')")
    app = make_role("app")
    rconn.execute(f"GRANT INSERT ON t TO {app}")
    app_dsn = psycopg.conninfo.make_conninfo(relay_dsn, user=app)
    with psycopg.connect(app_dsn) as app_conn:
        app_conn.execute("INSERT INTO t VALUES (1)")
        app_conn.execute("INSERT INTO t VALUES (2)")
        app_conn.commit()
        app_conn.execute("INSERT INTO t VALUES (3)")
        app_conn.commit()
        app_conn.execute("SET LOCAL relay.username = 'alice'")
        app_conn.execute("SET LOCAL relay.request_id = 'req-42'")
        app_conn.execute("INSERT INTO t VALUES (4)")
        app_conn.commit()
        app_conn.execute("INSERT INTO t VALUES (5)")  # SET LOCAL ended with its transaction
        app_conn.commit()
    rows = outbox(rconn)
    assert [r["username"] for r in rows] == [app, app, app, "alice", app]
    ids = [r["request_id"] for r in rows]
    assert ids[0] == ids[1] and len({ids[0], ids[2], ids[3], ids[4]}) == 4
    assert ids[3] == "req-42"
    assert rows[0]["txid"] == rows[1]["txid"] != rows[2]["txid"]


def test_txid_is_the_writing_transaction(rconn: Conn) -> None:
    rconn.execute("CREATE TABLE t (id int)")
    rconn.execute("SELECT relay.track('t')")
    with rconn.transaction():
        xid = one_row(rconn.execute("SELECT pg_current_xact_id()"))[0]
        rconn.execute("INSERT INTO t VALUES (1)")
    assert outbox(rconn)[0]["txid"] == xid


def test_changes_to_one_row_appear_in_commit_order(rconn: Conn, relay_dsn: str) -> None:
    """Writers racing on one row: outbox id order is the order their updates committed."""
    rconn.execute("CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL)")
    rconn.execute("INSERT INTO counter VALUES (1, 0)")
    rconn.execute("SELECT relay.track('counter', events => ARRAY['update'])")
    workers, rounds = 4, 25
    barrier = threading.Barrier(workers)

    def bump() -> None:
        with psycopg.connect(relay_dsn) as c:
            barrier.wait()
            for _ in range(rounds):
                c.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
                c.execute("SELECT pg_sleep(0.001)")
                c.commit()

    threads = [threading.Thread(target=bump) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen = [r["new"]["n"] for r in outbox(rconn)]
    assert seen == list(range(1, workers * rounds + 1))


def test_one_notify_per_statement_at_most(rconn: Conn, relay_dsn: str) -> None:
    rconn.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
    rconn.execute("SELECT relay.track('t')")
    with psycopg.connect(relay_dsn, autocommit=True) as listener:
        listener.execute("LISTEN relay_outbox")

        def received() -> int:
            return sum(1 for _ in listener.notifies(timeout=0.5))

        rconn.execute("INSERT INTO t SELECT g, 0 FROM generate_series(1, 1000) g")
        assert received() == 1
        with rconn.transaction():
            for i in range(5):
                rconn.execute("UPDATE t SET v = v + 1 WHERE id = %s", (i + 1,))
        assert 1 <= received() <= 5
        rconn.execute("UPDATE t SET v = v")  # records nothing, wakes nobody
        assert received() == 0
        with pytest.raises(psycopg.errors.DivisionByZero), rconn.transaction():
            rconn.execute("INSERT INTO t VALUES (5000, 1)")
            rconn.execute("SELECT 1/0")
        assert received() == 0


def test_rows_without_primary_key_pair_old_and_new_correctly(rconn: Conn) -> None:
    rconn.execute("CREATE TABLE log (a int, b text)")
    rconn.execute("SELECT relay.track('log')")
    rconn.execute("INSERT INTO log SELECT g, 'v' || g FROM generate_series(1, 500) g")
    rconn.execute("UPDATE log SET b = b || '!' WHERE a % 3 = 0")
    updates = outbox(rconn, "op = 'update'")
    assert len(updates) == 166
    for row in updates:
        assert row["pk"] is None
        assert row["new"]["a"] == row["old"]["a"]
        assert row["new"]["b"] == row["old"]["b"] + "!" == f"v{row['old']['a']}!"


def test_composite_primary_key(rconn: Conn) -> None:
    rconn.execute(
        "CREATE TABLE line (order_id int, line_no int, sku text, PRIMARY KEY (order_id, line_no))"
    )
    rconn.execute("SELECT relay.track('line')")
    rconn.execute("INSERT INTO line VALUES (7, 1, 'a'), (7, 2, 'b')")
    rconn.execute("UPDATE line SET sku = 'c' WHERE line_no = 2")
    rconn.execute("DELETE FROM line WHERE line_no = 1")
    assert [r["pk"] for r in outbox(rconn)] == [
        {"order_id": 7, "line_no": 1},
        {"order_id": 7, "line_no": 2},
        {"order_id": 7, "line_no": 2},
        {"order_id": 7, "line_no": 1},
    ]


def test_quoted_mixed_case_names(rconn: Conn) -> None:
    rconn.execute('CREATE SCHEMA "Sales Dept"')
    rconn.execute(
        'CREATE TABLE "Sales Dept"."Order Items" ("Item ID" int PRIMARY KEY, "Unit Price" int,'
        ' "select" text)'
    )
    rconn.execute(
        """SELECT relay.track('"Sales Dept"."Order Items"', update_columns => ARRAY['Unit Price'],
           exclude_columns => ARRAY['select'])"""
    )
    rconn.execute('INSERT INTO "Sales Dept"."Order Items" VALUES (1, 10, \'x\')')
    rconn.execute('UPDATE "Sales Dept"."Order Items" SET "select" = \'y\'')
    rconn.execute('UPDATE "Sales Dept"."Order Items" SET "Unit Price" = 11')
    rows = outbox(rconn)
    assert [(r["schema_name"], r["table_name"], r["op"]) for r in rows] == [
        ("Sales Dept", "Order Items", "insert"),
        ("Sales Dept", "Order Items", "update"),
    ]
    assert rows[1]["pk"] == {"Item ID": 1}
    assert rows[1]["new"] == {"Item ID": 1, "Unit Price": 11}


def test_partitioned_table_captures_every_partition_including_later_ones(rconn: Conn) -> None:
    rconn.execute(
        "CREATE TABLE events (id int, day int, v text, PRIMARY KEY (id, day))"
        " PARTITION BY RANGE (day)"
    )
    rconn.execute("CREATE TABLE events_1 PARTITION OF events FOR VALUES FROM (0) TO (10)")
    rconn.execute("SELECT relay.track('events')")
    rconn.execute("CREATE TABLE events_2 PARTITION OF events FOR VALUES FROM (10) TO (20)")
    rconn.execute("CREATE TABLE events_3 (LIKE events)")
    rconn.execute("ALTER TABLE events ATTACH PARTITION events_3 FOR VALUES FROM (20) TO (30)")

    rconn.execute("INSERT INTO events VALUES (1, 5, 'a'), (2, 15, 'b'), (3, 25, 'c')")
    rconn.execute("INSERT INTO events_2 VALUES (4, 16, 'direct')")
    rconn.execute("UPDATE events SET v = 'a2' WHERE id = 1")
    rconn.execute("UPDATE events SET v = v")
    rconn.execute("DELETE FROM events_3 WHERE id = 3")
    rconn.execute("TRUNCATE events")

    rows = outbox(rconn)
    assert {(r["schema_name"], r["table_name"]) for r in rows} == {("public", "events")}
    assert [(r["op"], r["pk"]) for r in rows] == [
        ("insert", {"id": 1, "day": 5}),
        ("insert", {"id": 2, "day": 15}),
        ("insert", {"id": 3, "day": 25}),
        ("insert", {"id": 4, "day": 16}),
        ("update", {"id": 1, "day": 5}),
        ("delete", {"id": 3, "day": 25}),
        ("truncate", None),
    ]
    assert rows[4]["old"]["v"] == "a" and rows[4]["new"]["v"] == "a2"
    with pytest.raises(psycopg.Error, match="is a partition of"):
        rconn.execute("SELECT relay.track('events_1')")


def test_partition_tracked_alone_blocks_tracking_its_parent(rconn: Conn) -> None:
    rconn.execute("CREATE TABLE m (id int, k int) PARTITION BY LIST (k)")
    rconn.execute("CREATE TABLE m1 PARTITION OF m FOR VALUES IN (1)")
    rconn.execute("SELECT relay.track('m1')")
    with pytest.raises(psycopg.Error, match="is tracked on its own"):
        rconn.execute("SELECT relay.track('m')")


def test_generated_columns_and_common_types(rconn: Conn) -> None:
    rconn.execute("CREATE TYPE mood AS ENUM ('sad', 'happy')")
    rconn.execute("CREATE DOMAIN positive AS int CHECK (VALUE > 0)")
    rconn.execute("""
        CREATE TABLE kinds (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            doc jsonb, tags text[], grid int[], amount numeric(12, 4), raw bytea,
            at timestamptz, feeling mood, qty positive, big text, flag boolean, ratio float8,
            total numeric GENERATED ALWAYS AS (amount * 2) STORED)""")
    rconn.execute("SELECT relay.track('kinds')")
    big = "lorem ipsum " * 20_000  # TOASTed and compressed on disk
    rconn.execute(
        """INSERT INTO kinds (doc, tags, grid, amount, raw, at, feeling, qty, big, flag, ratio)
           VALUES ('{"a": [1, {"b": null}]}', ARRAY['x', 'y "z"'], '{{1,2},{3,4}}', 12.5,
                   '\\xdeadbeef', '2026-01-02 03:04:05+00', 'happy', 3, %s, true, 0.25)""",
        (big,),
    )
    rconn.execute("UPDATE kinds SET qty = 4")
    new = outbox(rconn)[0]["new"]
    assert new["doc"] == {"a": [1, {"b": None}]}
    assert new["tags"] == ["x", 'y "z"'] and new["grid"] == [[1, 2], [3, 4]]
    assert new["amount"] == Decimal("12.5000") and new["total"] == Decimal("25.0000")
    assert new["raw"] == "\\xdeadbeef" and new["at"] == "2026-01-02T03:04:05+00:00"
    assert new["feeling"] == "happy" and new["qty"] == 3 and new["flag"] is True
    assert new["ratio"] == 0.25 and new["big"] == big and len(new["id"]) == 36
    update = outbox(rconn)[1]
    assert update["old"]["qty"] == 3 and update["new"]["qty"] == 4
    assert update["new"]["big"] == big and update["pk"] == {"id": new["id"]}


def test_bulk_statement_after_single_row_ones_is_complete(rconn: Conn) -> None:
    """The capture plan is cached per session: a big statement after small ones still pairs."""
    rconn.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
    rconn.execute("INSERT INTO t SELECT g, 0 FROM generate_series(1, 20000) g")
    rconn.execute("SELECT relay.track('t')")
    for i in range(1, 8):
        rconn.execute("UPDATE t SET v = 1 WHERE id = %s", (i,))
    rconn.execute("UPDATE t SET v = v + 10")
    counts = rconn.execute(
        "SELECT count(*), count(*) FILTER (WHERE (new->>'v')::int = (old->>'v')::int + 10)"
        " FROM relay.outbox WHERE op = 'update' AND id > 7"
    ).fetchone()
    assert counts == (20000, 20000)


def test_column_names_cannot_confuse_capture(rconn: Conn) -> None:
    """Columns named like the capture code's own aliases and variables change nothing."""
    names = "a b c i j k n o r t ctx excluded pk_cols watched row_data relay_old relay_new".split()  # noqa: SIM905
    columns = ", ".join(f"{name} int" for name in names)
    rconn.execute(f"CREATE TABLE odd (id int PRIMARY KEY, {columns})")
    rconn.execute("CREATE TABLE odd_nopk (x int, n int, r int)")
    rconn.execute("SELECT relay.track('odd', exclude_columns => ARRAY['excluded'])")
    rconn.execute("SELECT relay.track('odd_nopk')")
    values = ", ".join(str(v) for v in range(len(names)))
    rconn.execute(f"INSERT INTO odd VALUES (1, {values}), (2, {values})")
    rconn.execute("UPDATE odd SET n = n + 100 WHERE id = 1")  # one-row path
    rconn.execute("UPDATE odd SET r = r + 100")  # multi-row path
    rconn.execute("DELETE FROM odd WHERE id = 2")
    rconn.execute("INSERT INTO odd_nopk VALUES (1, 2, 3), (4, 5, 6)")
    rconn.execute("UPDATE odd_nopk SET n = n + 1")
    rows = outbox(rconn, "table_name = 'odd'")
    assert [r["op"] for r in rows] == ["insert", "insert", "update", "update", "update", "delete"]
    first = rows[2]
    assert first["old"]["n"] == names.index("n") and first["new"]["n"] == names.index("n") + 100
    assert "excluded" not in first["new"] and first["pk"] == {"id": 1}
    assert {r["pk"]["id"] for r in rows[3:5]} == {1, 2}
    assert all(r["new"]["r"] == r["old"]["r"] + 100 for r in rows[3:5])
    nopk = outbox(rconn, "table_name = 'odd_nopk' AND op = 'update'")
    assert sorted((r["old"]["n"], r["new"]["n"]) for r in nopk) == [(2, 3), (5, 6)]


def test_values_json_has_no_number_for_are_captured_without_failing_the_write(rconn: Conn) -> None:
    """Capture must never make an application's write fail: odd values become JSON strings."""
    rconn.execute("CREATE TYPE part AS (sku text, qty int)")
    rconn.execute(
        "CREATE TABLE odd_values (id int PRIMARY KEY, n numeric, f float8, at timestamptz,"
        " raw bytea, note text, parts part[], big text)"
    )
    rconn.execute("SELECT relay.track('odd_values')")
    big = "é" * (5 * 1024 * 1024)  # 10 MB of UTF-8
    rconn.execute(
        """INSERT INTO odd_values VALUES
           (1, 'NaN', 'NaN', 'infinity', '\\x00ff', '😀 مرحبا שלום', ARRAY[ROW('a', 1)::part], ''),
           (2, 'Infinity', '-Infinity', '-infinity', '', E'tab\\tnew\\nline', '{}', %s)""",
        (big,),
    )
    rows = {r["new"]["id"]: r["new"] for r in outbox(rconn)}
    assert rows[1]["n"] == "NaN" and rows[1]["f"] == "NaN" and rows[1]["at"] == "infinity"
    assert rows[1]["raw"] == "\\x00ff" and rows[1]["note"] == "😀 مرحبا שלום"
    assert rows[1]["parts"] == [{"sku": "a", "qty": 1}]
    assert rows[2]["n"] == "Infinity" and rows[2]["f"] == "-Infinity"
    assert rows[2]["note"] == "tab\tnew\nline" and len(rows[2]["big"]) == len(big)
