"""Capture that cannot be turned against relay: hostile types, renamed columns, writers' session
settings, values jsonb cannot hold, and table shapes (issue: trust the capture)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from relay.db import Conn
from relay.model import loads
from relay.store import Store
from relay.tempcluster import find_server_binaries, scratch_database, start_temp_cluster
from support.db import one_row, outbox
from support.receivers import receiver
from support.worker import FAST, running, setup, until


@pytest.fixture
def split(db_dsn: str, make_role: Callable[..., str], conn: Conn) -> dict[str, str]:
    """relay installed by a role with only CREATE on the database; an application role that owns
    its schema, its types and its tables, and grants the installer TRIGGER on them."""
    installer, app = make_role("installer"), make_role("app")
    conn.execute(
        sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
            sql.Identifier(conn.info.dbname), sql.Identifier(installer)
        )
    )
    conn.execute(f"CREATE SCHEMA app AUTHORIZATION {app}")
    conn.execute(f"GRANT USAGE ON SCHEMA app TO {installer}")
    with psycopg.connect(make_conninfo(db_dsn, user=installer), autocommit=True) as inst:
        Store(inst).install()
        inst.execute(
            "INSERT INTO relay.webhooks (name, payload_url, secret)"
            " VALUES ('orders', 'https://hooks.example.com/orders', 'TOPSECRET')"
        )
    return {
        "installer": make_conninfo(db_dsn, user=installer),
        "app": make_conninfo(db_dsn, user=app),
        "app_name": app,
        "installer_name": installer,
    }


# A cast function that, if relay ever called it with its owner's rights, would read the
# webhooks' secrets, redirect a webhook, and try to make its author superuser. It records every
# call it gets in a table anyone may write, so the test sees whether it ran at all.
EVIL = """
CREATE TABLE app.calls (who text, secrets text);
GRANT INSERT ON app.calls TO PUBLIC;
CREATE FUNCTION app.evil(v {type}) RETURNS json LANGUAGE plpgsql AS $f$
DECLARE s text;
BEGIN
    BEGIN
        SELECT string_agg(secret, ',') INTO s FROM relay.webhooks;
        UPDATE relay.webhooks SET payload_url = 'http://127.0.0.1:9/attacker';
        EXECUTE format('ALTER ROLE %I SUPERUSER', '{app}');
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    INSERT INTO app.calls VALUES (current_user, s);
    RETURN to_json(v::text);
END $f$;
CREATE CAST ({type} AS json) WITH FUNCTION app.evil({type});
"""

EXPLOITS = {
    "enum": (
        "CREATE TYPE app.status AS ENUM ('new', 'paid')",
        "app.status",
        "status app.status",
        "'new'",
    ),
    "composite holding an enum": (
        "CREATE TYPE app.status AS ENUM ('new', 'paid');"
        " CREATE TYPE app.pair AS (n int, s app.status)",
        "app.status",
        "p app.pair",
        "ROW(1, 'paid')::app.pair",
    ),
    "cast on the composite itself": (
        "CREATE TYPE app.pair AS (n int, s text)",
        "app.pair",
        "p app.pair",
        "ROW(1, 'x')::app.pair",
    ),
    "domain over an enum": (
        "CREATE TYPE app.status AS ENUM ('new', 'paid'); CREATE DOMAIN app.dstatus AS app.status",
        "app.status",
        "d app.dstatus",
        "'new'",
    ),
    "array of enums": (
        "CREATE TYPE app.status AS ENUM ('new', 'paid')",
        "app.status",
        "a app.status[]",
        "ARRAY['new', 'paid']::app.status[]",
    ),
    "range over an enum": (
        "CREATE TYPE app.status AS ENUM ('new', 'paid');"
        " CREATE TYPE app.srange AS RANGE (subtype = app.status)",
        "app.srange",
        "r app.srange",
        "app.srange('new', 'paid')",
    ),
}


@pytest.mark.parametrize("kind", list(EXPLOITS))
def test_a_cast_to_json_of_the_applications_type_never_runs_with_relays_rights(
    split: dict[str, str], kind: str
) -> None:
    types, cast_type, column, value = EXPLOITS[kind]
    with psycopg.connect(split["app"], autocommit=True) as app:
        app.execute(types)
        app.execute(EVIL.format(type=cast_type, app=split["app_name"]))
        app.execute(f"CREATE TABLE app.orders (id int PRIMARY KEY, {column})")
        app.execute(f"GRANT TRIGGER ON app.orders TO {split['installer_name']}")
    with psycopg.connect(split["installer"], autocommit=True) as inst:
        Store(inst).track("app.orders")
    with psycopg.connect(split["app"], autocommit=True) as app:
        app.execute(f"INSERT INTO app.orders VALUES (1, {value})")
        app.execute("UPDATE app.orders SET id = 2")
        app.execute("DELETE FROM app.orders")
        calls = app.execute("SELECT who, secrets FROM app.calls").fetchall()
        superuser = app.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        assert superuser.fetchone() == (False,)
    assert calls == [], f"the application's cast ran inside capture: {calls}"
    with psycopg.connect(split["installer"], autocommit=True) as inst:
        url = inst.execute("SELECT payload_url FROM relay.webhooks").fetchone()
        rows = outbox(inst)
    assert url == ("https://hooks.example.com/orders",)
    assert [r["op"] for r in rows] == ["insert", "update", "delete"]
    assert all("TOPSECRET" not in str(r) for r in rows)


@pytest.mark.parametrize("kind", list(EXPLOITS))
@pytest.mark.parametrize("partitioned", [False, True], ids=["plain", "partitioned"])
@pytest.mark.parametrize("same_transaction", [False, True], ids=["later", "same-transaction"])
def test_a_column_of_the_applications_type_added_to_a_table_captured_by_to_json_is_safe(
    split: dict[str, str], kind: str, partitioned: bool, same_transaction: bool
) -> None:
    """A table of PostgreSQL's own types has its images made by one to_json(row) call, which
    would call a cast: the table's owner adds a column of its own type to it, with a cast, and
    writes at once (in the ALTER's transaction, or the next). Capture notices before building
    any image, and writes the new column as its text."""
    types, cast_type, column, value = EXPLOITS[kind]
    with psycopg.connect(split["app"], autocommit=True) as app:
        app.execute(types)
        app.execute(EVIL.format(type=cast_type, app=split["app_name"]))
        app.execute(
            "CREATE TABLE app.orders (id int PRIMARY KEY, total numeric)"
            + (" PARTITION BY RANGE (id)" if partitioned else "")
        )
        if partitioned:
            app.execute(
                "CREATE TABLE app.orders_1 PARTITION OF app.orders FOR VALUES FROM (0) TO (100)"
            )
            app.execute(f"GRANT TRIGGER ON app.orders_1 TO {split['installer_name']}")
        app.execute(f"GRANT TRIGGER ON app.orders TO {split['installer_name']}")
    with psycopg.connect(split["installer"], autocommit=True) as inst:
        Store(inst).track("app.orders")
    with psycopg.connect(split["app"], autocommit=True) as app:
        app.execute("INSERT INTO app.orders VALUES (1, 1.50)")  # captured by to_json
        with app.transaction():
            app.execute(f"ALTER TABLE app.orders ADD COLUMN {column}")
            if same_transaction:
                app.execute(f"INSERT INTO app.orders VALUES (2, 2, {value})")
        if not same_transaction:
            app.execute(f"INSERT INTO app.orders VALUES (2, 2, {value})")
        app.execute("UPDATE app.orders SET total = 3 WHERE id = 2")
        calls = app.execute("SELECT who, secrets FROM app.calls").fetchall()
    assert calls == [], f"the application's cast ran inside capture: {calls}"
    with psycopg.connect(split["installer"], autocommit=True) as inst:
        assert inst.execute("SELECT payload_url FROM relay.webhooks").fetchone() == (
            "https://hooks.example.com/orders",
        )
        rows = outbox(inst)
    assert [r["op"] for r in rows] == ["insert", "insert", "update"]
    assert rows[0]["new"] == {"id": 1, "total": 1.5}
    assert column.split()[0] in rows[1]["new"] and column.split()[0] in rows[2]["new"]


def test_with_a_superuser_installer_the_cast_still_cannot_make_its_author_superuser(
    server_dsn: str, db_dsn: str, make_role: Callable[..., str], rconn: Conn
) -> None:
    """relay installed by a superuser (rconn): the cast would run as superuser if called."""
    app = make_role("app")
    rconn.execute(f"CREATE SCHEMA app AUTHORIZATION {app}")
    with psycopg.connect(make_conninfo(db_dsn, user=app), autocommit=True) as conn:
        conn.execute("CREATE TYPE app.status AS ENUM ('new', 'paid')")
        conn.execute(EVIL.format(type="app.status", app=app))
        conn.execute("CREATE TABLE app.orders (id int PRIMARY KEY, status app.status)")
    Store(rconn).track("app.orders")
    with psycopg.connect(make_conninfo(db_dsn, user=app), autocommit=True) as conn:
        conn.execute("INSERT INTO app.orders VALUES (1, 'new')")
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        assert admin.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = %s", (app,)
        ).fetchone() == (False,)
    assert rconn.execute("SELECT count(*) FROM app.calls").fetchone() == (0,)
    assert outbox(rconn)[0]["new"] == {"id": 1, "status": "new"}


def test_values_of_application_types_are_captured_as_their_text(rconn: Conn) -> None:
    """Enums, ranges and domains over them are their text; composites are objects built field
    by field; arrays are arrays (docs/sql.md, 'Images')."""
    rconn.execute("CREATE TYPE status AS ENUM ('new', 'paid')")
    rconn.execute("CREATE TYPE srange AS RANGE (subtype = status)")
    rconn.execute("CREATE DOMAIN dstatus AS status")
    rconn.execute("CREATE TYPE item AS (sku text, qty numeric, s status, tags status[])")
    rconn.execute(
        "CREATE TABLE t (id int PRIMARY KEY, s status, r srange, d dstatus, a status[],"
        " m status[], l item, ls item[], ids int[], n numeric)"
    )
    Store(rconn).track("t")
    rconn.execute(
        """INSERT INTO t VALUES (1, 'paid', srange('new', 'paid'), 'new',
           ARRAY['new', NULL]::status[], '{{new,paid},{paid,new}}', ROW('a', 1.50, 'new', '{paid}'),
           ARRAY[ROW('b', 2, NULL, NULL)::item, NULL], '{1,2}', 120.00),
           (2, NULL, NULL, NULL, '{}', NULL, NULL, '{}', NULL, NULL)"""
    )
    first, second = (r["new"] for r in outbox(rconn))
    assert first == {
        "id": 1,
        "s": "paid",
        "r": "[new,paid)",
        "d": "new",
        "a": ["new", None],
        "m": "{{new,paid},{paid,new}}",
        "l": {"sku": "a", "qty": 1.5, "s": "new", "tags": ["paid"]},
        "ls": [{"sku": "b", "qty": 2, "s": None, "tags": None}, None],
        "ids": [1, 2],
        "n": 120,
    }
    assert second == {
        "id": 2,
        "s": None,
        "r": None,
        "d": None,
        "a": [],
        "m": None,
        "l": None,
        "ls": [],
        "ids": None,
        "n": None,
    }


def test_every_security_definer_function_is_relays_own_with_a_pinned_search_path(
    split: dict[str, str], conn: Conn
) -> None:
    """The functions that run with relay's owner's rights: owned by the installing role (not a
    superuser here), search_path pinned to pg_catalog then pg_temp, not callable by PUBLIC, and
    exactly the expected set, so that a new one is reviewed."""
    with psycopg.connect(split["app"], autocommit=True) as app:
        app.execute("CREATE TABLE app.plain (id int PRIMARY KEY)")
        app.execute("CREATE TABLE app.parted (id int PRIMARY KEY) PARTITION BY RANGE (id)")
        app.execute("CREATE TABLE app.parted_1 PARTITION OF app.parted FOR VALUES FROM (0) TO (9)")
        app.execute(
            f"GRANT TRIGGER ON app.plain, app.parted, app.parted_1 TO {split['installer_name']}"
        )
    with psycopg.connect(split["installer"], autocommit=True) as inst:
        Store(inst).track("app.plain")
        Store(inst).track("app.parted")
        plain, parted = (
            one_row(inst.execute("SELECT %s::regclass::oid", (name,)))[0]
            for name in ("app.plain", "app.parted")
        )
    rows = conn.execute(
        """SELECT p.proname, pg_get_userbyid(p.proowner), p.proconfig, p.proacl,
                  r.rolsuper, r.rolcreaterole, r.rolbypassrls
           FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner
           WHERE p.pronamespace = 'relay'::regnamespace AND p.prosecdef ORDER BY 1"""
    ).fetchall()
    expected = {
        "announce_rules_change",
        "refresh_capture",
        "refresh_statistics",
        *(f"capture_{plain}_{e}" for e in ("insert", "update", "delete", "truncate")),
        f"capture_{parted}_row",
        f"capture_{parted}_truncate",
    }
    assert {r[0] for r in rows} == expected
    for name, owner, config, acl, superuser, createrole, bypassrls in rows:
        assert owner == split["installer_name"], name
        assert not (superuser or createrole or bypassrls), name
        assert "search_path=pg_catalog, pg_temp" in config, name
        assert not any(item.startswith("=") for item in (acl or [])), f"{name}: PUBLIC may run it"


def test_application_roles_can_call_no_relay_function(split: dict[str, str]) -> None:
    with psycopg.connect(split["app"], autocommit=True) as app:
        for call in [
            "SELECT relay.refresh_capture()",
            "SELECT relay.refresh_statistics()",
            "SELECT relay.capture_sql(1, 'insert', false)",
            "SELECT relay.shape(1)",
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(call)


def test_options_follow_a_renamed_column_and_survive_a_dropped_one(rconn: Conn) -> None:
    rconn.execute("CREATE TABLE users (id int PRIMARY KEY, name text, password_hash text, qty int)")
    rconn.execute("CREATE TABLE stock (id int PRIMARY KEY, quantity int, note text)")
    Store(rconn).track("users", exclude_columns=["password_hash"])
    Store(rconn).track("stock", events=["update"], update_columns=["quantity"])
    rconn.execute("INSERT INTO users VALUES (1, 'a', 'h1', 1), (2, 'b', 'h2', 2)")
    rconn.execute("INSERT INTO stock VALUES (1, 10, 'x')")

    rconn.execute("ALTER TABLE users RENAME password_hash TO pw_hash")
    rconn.execute("ALTER TABLE stock RENAME quantity TO qty_on_hand")
    rconn.execute("INSERT INTO users VALUES (3, 'c', 'h3', 3)")
    rconn.execute("UPDATE users SET pw_hash = 'new' WHERE id = 1")  # only the secret: nothing
    rconn.execute("UPDATE users SET name = 'bb', pw_hash = 'h2b' WHERE id = 2")
    rconn.execute("UPDATE stock SET qty_on_hand = 11")  # watched: recorded
    rconn.execute("UPDATE stock SET note = 'y'")  # not watched: nothing
    tracked = rconn.execute(
        "SELECT table_name, update_columns, exclude_columns FROM relay.tracked ORDER BY 1"
    ).fetchall()
    assert tracked == [("stock", ["qty_on_hand"], []), ("users", None, ["pw_hash"])]

    rconn.execute("ALTER TABLE users DROP COLUMN pw_hash")
    rconn.execute("ALTER TABLE stock DROP COLUMN qty_on_hand")
    rconn.execute("INSERT INTO users VALUES (4, 'd', 4)")
    rconn.execute("UPDATE users SET qty = 40 WHERE id = 4")
    rconn.execute("DELETE FROM users WHERE id = 4")
    rconn.execute("UPDATE stock SET note = 'z'")  # the watched column is gone: nothing
    rows = outbox(rconn)
    assert all(
        "pw_hash" not in (r["new"] or {})
        and "password_hash" not in (r["new"] or {})
        and "pw_hash" not in (r["old"] or {})
        for r in rows
    )
    users = [(r["op"], r["pk"]["id"]) for r in rows if r["table_name"] == "users"]
    assert users == [
        ("insert", 1),
        ("insert", 2),
        ("insert", 3),
        ("update", 2),
        ("insert", 4),
        ("update", 4),
        ("delete", 4),
    ]
    stock = [(r["op"], r["new"]) for r in rows if r["table_name"] == "stock"]
    assert stock == [("update", {"id": 1, "qty_on_hand": 11, "note": "x"})]
    assert rconn.execute(
        "SELECT update_columns, exclude_columns FROM relay.tracked ORDER BY table_name"
    ).fetchall() == [([], []), (None, [])]


def test_ddl_on_a_tracked_table_is_followed_at_once_and_regenerated_later(rconn: Conn) -> None:
    """Between a DDL and the relay's regeneration, writes take the catalog-built path: same
    images, current names; relay.tracked says the functions are behind."""
    rconn.execute("CREATE TABLE t (id int PRIMARY KEY, a int, b text)")
    Store(rconn).track("t")
    rconn.execute("INSERT INTO t VALUES (1, 1, 'x')")  # plans the capture in this session
    rconn.execute("ALTER TABLE t RENAME a TO aa")
    rconn.execute("ALTER TABLE t ADD COLUMN c numeric DEFAULT 1.50")
    rconn.execute("ALTER TABLE t DROP COLUMN b")
    rconn.execute("UPDATE t SET aa = 2")
    assert rconn.execute("SELECT capture_current FROM relay.tracked").fetchone() == (False,)
    assert rconn.execute("SELECT relay.refresh_capture()").fetchone() == (1,)
    assert rconn.execute("SELECT capture_current FROM relay.tracked").fetchone() == (True,)
    rconn.execute("UPDATE t SET aa = 3")
    rconn.execute("ALTER TABLE t RENAME TO t2")
    rconn.execute("UPDATE t2 SET aa = 4")
    rows = outbox(rconn)
    assert [(r["table_name"], r["new"]) for r in rows] == [
        ("t", {"id": 1, "a": 1, "b": "x"}),
        ("t", {"id": 1, "aa": 2, "c": 1.5}),
        ("t", {"id": 1, "aa": 3, "c": 1.5}),
        ("t2", {"id": 1, "aa": 4, "c": 1.5}),
    ]


SESSION_SETTINGS = [
    "SET bytea_output = escape",
    "SET extra_float_digits = -15",
    "SET IntervalStyle = iso_8601",
    "SET TimeZone = 'Asia/Kathmandu'",
    "SET DateStyle = 'SQL, DMY'",
    "SET lc_monetary = 'C'",
    "SET DateStyle = 'Postgres, DMY'; SET TimeZone = 'Asia/Kathmandu'",
]


@pytest.mark.parametrize("setting", SESSION_SETTINGS)
def test_the_image_and_the_row_key_do_not_depend_on_the_writers_session(
    relay_dsn: str, setting: str
) -> None:
    """The same row written from a default session and from one with `setting`."""
    with psycopg.connect(relay_dsn, autocommit=True) as conn:
        conn.execute("CREATE TYPE stamp AS (d date, at timestamptz)")
        conn.execute(
            "CREATE TABLE v (b bytea, f float8, i interval, at timestamptz, d date,"
            " m money, fs float8[], dr daterange, grid stamp[], PRIMARY KEY (b, f, i, at))"
        )
        Store(conn).track("v")
    row = (
        "'\\x00ff41', 0.1::float8 + 0.2::float8, '1 day 02:03:04', '2024-05-06 07:08:09.5+00',"
        " '2024-05-06', 12.5, ARRAY[1.5e300, 0.1], '[2024-01-01,2024-02-01)',"
        " ARRAY[ARRAY[ROW('2024-05-06', '2024-05-06 07:08:09.5+00')::stamp]]"
    )
    images = []
    for session in ("RESET ALL", setting):
        with psycopg.connect(relay_dsn, autocommit=True) as conn:
            conn.execute(session)
            conn.execute(f"INSERT INTO v VALUES ({row})")
            conn.execute("DELETE FROM v")
            images.append(
                one_row(
                    conn.execute(
                        "SELECT new::text, pk::text FROM relay.outbox WHERE op = 'insert'"
                        " ORDER BY id DESC LIMIT 1"
                    )
                )
            )
    assert images[0] == images[1]
    image = loads(images[0][0])
    assert image["b"] == "\\x00ff41" and image["f"] == Decimal("0.30000000000000004")
    assert image["i"] == "1 day 02:03:04" and image["at"] == "2024-05-06T07:08:09.5+00:00"
    assert image["dr"] == "[2024-01-01,2024-02-01)"
    assert image["grid"] == '{{"(2024-05-06,\\"2024-05-06 07:08:09.5+00\\")"}}'


def test_partitioned_tables_capture_the_same_way_in_every_session(
    rconn: Conn, relay_dsn: str
) -> None:
    rconn.execute(
        "CREATE TABLE p (id int, at timestamptz, b bytea, PRIMARY KEY (id, at))"
        " PARTITION BY RANGE (id)"
    )
    rconn.execute("CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (100)")
    Store(rconn).track("p")
    for session in ("RESET ALL", "SET TimeZone = 'America/St_Johns'", "SET bytea_output = escape"):
        with psycopg.connect(relay_dsn, autocommit=True) as conn:
            conn.execute(session)
            conn.execute("INSERT INTO p VALUES (1, '2024-01-01 00:00+00', '\\xff')")
            conn.execute("DELETE FROM p")
    rows = outbox(rconn)
    assert len({str(r["pk"]) for r in rows}) == 1
    assert {r["pk"]["at"] for r in rows} == {"2024-01-01T00:00:00+00:00"}
    assert {(r["new"] or r["old"])["b"] for r in rows} == {"\\xff"}


def test_json_values_jsonb_cannot_hold_never_fail_the_write(rconn: Conn) -> None:
    """\\u0000 and numbers outside numeric's range are valid json but not jsonb: the write still
    succeeds, and the image holds the value exactly as it was stored (docs/sql.md)."""
    rconn.execute("CREATE TABLE j (id int PRIMARY KEY, doc json, docs json[], secret json)")
    rconn.execute("CREATE TABLE k (id int PRIMARY KEY, doc json)")
    Store(rconn).track("j", exclude_columns=["secret"])
    Store(rconn).track("k")
    nul = '{"a": "\\u0000"}'
    huge = "[1e1000000]"
    rconn.execute(
        "INSERT INTO j VALUES (1, %s, ARRAY[%s::json], %s), (2, %s, NULL, %s), (3, '{\"ok\": 1}',"
        " NULL, %s)",
        (nul, huge, nul, huge, huge, nul),
    )
    rconn.execute("UPDATE j SET id = id + 10")
    rconn.execute("DELETE FROM j WHERE id = 11")
    rconn.execute("INSERT INTO k VALUES (1, %s)", (nul,))  # row by row: the one-row path
    rconn.execute("UPDATE k SET doc = %s", (huge,))
    rconn.execute("DELETE FROM k")
    rows = outbox(rconn)
    assert [r["op"] for r in rows] == ["insert"] * 3 + ["update"] * 3 + ["delete"] + [
        "insert",
        "update",
        "delete",
    ]
    # As the relay reads them (json -> on an image holding \\u0000 fails in PostgreSQL).
    images: list[tuple[Any, Any]] = [
        (loads(new) if new else None, loads(old) if old else None)
        for new, old in rconn.execute("SELECT new::text, old::text FROM relay.outbox ORDER BY id")
    ]
    assert images[0][0]["doc"] == {"a": "\x00"} and images[0][0]["docs"] == [[Decimal("1e1000000")]]
    assert images[1][0]["doc"] == [Decimal("1e1000000")] and images[2][0]["doc"] == {"ok": 1}
    assert all("secret" not in (new or old) for new, old in images)
    assert images[-3][0]["doc"] == {"a": "\x00"} and images[-2][0]["doc"] == [Decimal("1e1000000")]


def test_tables_that_cannot_be_captured_faithfully_are_refused(rconn: Conn) -> None:
    rconn.execute("CREATE TABLE parent (id int PRIMARY KEY)")
    rconn.execute("CREATE TABLE child (extra int) INHERITS (parent)")
    rconn.execute("CREATE TEMPORARY TABLE scratch (id int)")
    rconn.execute("CREATE TABLE keyed (id int PRIMARY KEY, secret text)")
    for call, message in [
        ("SELECT relay.track('parent')", "has inheriting tables"),
        ("SELECT relay.track('child')", "inherits from another table"),
        ("SELECT relay.track('scratch')", "is a temporary table"),
        (
            "SELECT relay.track('keyed', exclude_columns => ARRAY['id'])",
            'column "id" is part of the primary key',
        ),
    ]:
        with pytest.raises(psycopg.errors.RaiseException, match=message):
            rconn.execute(call)
    assert rconn.execute("SELECT count(*) FROM relay.tracked").fetchone() == (0,)


def test_attaching_a_tracked_table_under_a_tracked_parent_records_each_change_once(
    rconn: Conn,
) -> None:
    rconn.execute("CREATE TABLE m (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)")
    rconn.execute("CREATE TABLE m1 PARTITION OF m FOR VALUES FROM (0) TO (10)")
    rconn.execute("CREATE TABLE lone (id int PRIMARY KEY, v text)")
    rconn.execute("CREATE TABLE sub (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)")
    rconn.execute("CREATE TABLE sub1 PARTITION OF sub FOR VALUES FROM (20) TO (30)")
    for table in ("m", "lone", "sub"):
        Store(rconn).track(table)
    rconn.execute("INSERT INTO lone VALUES (15, 'before')")  # plans lone's capture
    rconn.execute("ALTER TABLE m ATTACH PARTITION lone FOR VALUES FROM (10) TO (20)")
    rconn.execute("ALTER TABLE m ATTACH PARTITION sub FOR VALUES FROM (20) TO (30)")
    rconn.execute("INSERT INTO m VALUES (1, 'a'), (11, 'b'), (21, 'c')")
    rconn.execute("INSERT INTO lone VALUES (12, 'd')")
    rconn.execute("INSERT INTO sub VALUES (22, 'e')")
    rconn.execute("UPDATE m SET v = v || '!'")
    rconn.execute("SELECT relay.refresh_capture()")
    rconn.execute("DELETE FROM lone")
    rows = outbox(rconn)
    counted = [(r["op"], r["table_name"], (r["new"] or r["old"])["id"]) for r in rows]
    assert counted[0] == ("insert", "lone", 15)
    later = counted[1:]
    assert sorted(later) == sorted(
        [("insert", "m", i) for i in (1, 11, 21, 12, 22)]
        + [("update", "m", i) for i in (1, 11, 12, 15, 21, 22)]
        + [("delete", "m", i) for i in (11, 12, 15)]
    )
    rconn.execute("ALTER TABLE m DETACH PARTITION lone")
    rconn.execute("INSERT INTO lone VALUES (16, 'f')")
    assert outbox(rconn)[-1]["table_name"] == "lone"


@pytest.fixture(scope="module")
def two_phase_server() -> Iterator[str]:
    """A private cluster that allows prepared transactions (the shared one may not)."""
    if find_server_binaries() is None:
        pytest.skip("no PostgreSQL server binaries to start a private cluster")
    cluster = start_temp_cluster(max_prepared_transactions="5")
    try:
        yield cluster.dsn
    finally:
        cluster.stop()


def test_two_phase_commit_writes_are_captured_and_delivered_with_notify_off(
    two_phase_server: str,
) -> None:
    """PREPARE TRANSACTION refuses a transaction that sent NOTIFY; with relay.notify = off (here
    for the role, as a two-phase application would set it) the change commits with COMMIT
    PREPARED and the relay delivers it by polling."""
    with scratch_database(two_phase_server, "relay_2pc") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            Store(conn).install()
            conn.execute("CREATE ROLE xa LOGIN SUPERUSER")
            conn.execute("ALTER ROLE xa SET relay.notify = off")

        async def scenario() -> list[int]:
            async with receiver() as r:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    setup(conn, r.url)
                    conn.execute("BEGIN")
                    conn.execute("INSERT INTO items VALUES (1, 0)")
                    with pytest.raises(psycopg.errors.FeatureNotSupported, match="NOTIFY"):
                        conn.execute("PREPARE TRANSACTION 'no_setting'")
                async with running(dsn, FAST):
                    with psycopg.connect(make_conninfo(dsn, user="xa"), autocommit=True) as xa:
                        xa.execute("BEGIN")
                        xa.execute("INSERT INTO items VALUES (2, 0), (3, 0)")
                        xa.execute("PREPARE TRANSACTION 'relay_2pc'")
                        xa.execute("COMMIT PREPARED 'relay_2pc'")
                    await until(lambda: len(r.requests) == 2)
                return sorted(json.loads(req.body)["data"]["id"] for req in r.requests)

        assert asyncio.run(scenario()) == [2, 3]
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP ROLE IF EXISTS xa")


def test_rules_can_name_tables_whose_names_hold_dots(rconn: Conn, relay_dsn: str) -> None:
    rconn.execute('CREATE SCHEMA "we.ird"')
    rconn.execute('CREATE TABLE "we.ird"."v1.2" (id int PRIMARY KEY)')
    rconn.execute('CREATE TABLE "we.ird".plain (id int PRIMARY KEY)')
    Store(rconn).track('"we.ird"."v1.2"')
    Store(rconn).track('"we.ird".plain')
    with pytest.raises(psycopg.errors.CheckViolation, match="double-quote a name"):
        rconn.execute(
            "INSERT INTO relay.event_rules (name, tables, webhook_id)"
            " VALUES ('bad', ARRAY['we.ird.v1.2'], 1)"
        )

    async def scenario() -> list[str]:
        async with receiver() as r:
            rconn.execute(
                "INSERT INTO relay.webhooks (name, payload_url) VALUES ('h', %s)", (r.url,)
            )
            rconn.execute(
                "INSERT INTO relay.event_rules (name, tables, webhook_id) SELECT 'dots',"
                """ ARRAY['"we.ird"."v1.2"', '"we.ird".plain'], id FROM relay.webhooks"""
            )
            async with running(relay_dsn, FAST):
                rconn.execute('INSERT INTO "we.ird"."v1.2" VALUES (1)')
                rconn.execute('INSERT INTO "we.ird".plain VALUES (2)')
                await until(lambda: len(r.requests) == 2)
            return sorted(req.headers["X-Relay-Event"] for req in r.requests)

    assert asyncio.run(scenario()) == ["we.ird.plain.created", "we.ird.v1.2.created"]


def test_hostile_names_cannot_inject_into_the_generated_functions(
    split: dict[str, str], conn: Conn
) -> None:
    """Schema, table and column names that end literals, dollar quotes and statements: the
    generated capture functions quote every name, and their bodies go in as one literal."""
    hostile = ["$f$", "$$", "a'b", 'q"q', "x; DROP TABLE app.victim; --", "new\nline", "\\"]
    conn.execute(
        sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
            sql.Identifier("$f$"), sql.Identifier(split["app_name"])
        )
    )
    with psycopg.connect(split["app"], autocommit=True) as app:
        app.execute("CREATE TABLE app.victim (id int)")
        columns = sql.SQL(", ").join(
            sql.SQL("{} text").format(sql.Identifier(name)) for name in hostile
        )
        table = sql.Identifier("$f$", "t'; $$ --")
        app.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, {})").format(table, columns))
        app.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier("$f$"), sql.Identifier(split["installer_name"])
            )
        )
        app.execute(
            sql.SQL("GRANT TRIGGER ON {} TO {}").format(
                table, sql.Identifier(split["installer_name"])
            )
        )
    with psycopg.connect(split["installer"], autocommit=True) as inst:
        name = one_row(inst.execute("SELECT %s::regclass::text", (table.as_string(inst),)))[0]
        Store(inst).track(name, exclude_columns=["a'b"], update_columns=["$$", "\\"])
    with psycopg.connect(split["app"], autocommit=True) as app:
        values = ", ".join(["%s"] * len(hostile))
        app.execute(sql.SQL("INSERT INTO {} VALUES (1, " + values + ")").format(table), hostile)
        app.execute(sql.SQL("UPDATE {} SET {} = 'changed'").format(table, sql.Identifier("$$")))
        assert app.execute("SELECT to_regclass('app.victim')").fetchone() == ("app.victim",)
    with psycopg.connect(split["installer"], autocommit=True) as inst:
        rows = outbox(inst)
    assert [(r["op"], r["schema_name"], r["table_name"]) for r in rows] == [
        ("insert", "$f$", "t'; $$ --"),
        ("update", "$f$", "t'; $$ --"),
    ]
    expected = {"id": 1, **{name: name for name in hostile if name != "a'b"}}
    assert rows[0]["new"] == expected
    assert rows[1]["new"] == {**expected, "$$": "changed"}


def test_partitioned_tables_follow_ddl_row_by_row(rconn: Conn, relay_dsn: str) -> None:
    """Row-level capture checks its table once per transaction, and again after the
    transaction's own DDL: every write right after a change of columns is recorded with the
    columns as they are."""
    rconn.execute("CREATE TABLE p (id int PRIMARY KEY, a int, b text) PARTITION BY RANGE (id)")
    rconn.execute("CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (100)")
    Store(rconn).track("p", exclude_columns=["b"])
    with psycopg.connect(relay_dsn) as conn:  # one transaction
        conn.execute("INSERT INTO p VALUES (1, 1, 'secret')")
        conn.execute("ALTER TABLE p RENAME a TO aa")
        conn.execute("INSERT INTO p VALUES (2, 2, 'secret')")
        conn.execute("ALTER TABLE p RENAME b TO bb")
        conn.execute("ALTER TABLE p ADD COLUMN c int DEFAULT 7")
        conn.execute("UPDATE p SET aa = aa + 10 WHERE id = 1")
        conn.execute("DELETE FROM p WHERE id = 2")
    rconn.execute("SELECT relay.refresh_capture()")
    rconn.execute("INSERT INTO p VALUES (3, 3, 'secret')")
    rows = [(r["op"], r["new"] or r["old"]) for r in outbox(rconn)]
    assert rows == [
        ("insert", {"id": 1, "a": 1}),
        ("insert", {"id": 2, "aa": 2}),
        ("update", {"id": 1, "aa": 11, "c": 7}),
        ("delete", {"id": 2, "aa": 2, "c": 7}),
        ("insert", {"id": 3, "aa": 3, "c": 7}),
    ]
