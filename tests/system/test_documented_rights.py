"""The rights the README documents are enough for every command documented for each role, and
delivery ids that stay unique across databases and reinstalls.

The installer holds CREATE on the database and TRIGGER on the tables it tracks (on a partitioned
table, on each partition too), and nothing else. The service role holds what
sql/service_role.sql grants. Every command runs as a person would run it: the `relay` CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from relay import sqlfiles
from relay.db import Conn
from relay.tempcluster import scratch_database
from support.cli import relay
from support.db import one_row, outbox
from support.delivery import fan_out

SQL = Path(__file__).resolve().parents[2] / "sql"


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


@pytest.fixture
def world(db_dsn: str, make_role: Callable[..., str], conn: Conn) -> dict[str, str]:
    """An application that owns its tables (one plain, one partitioned) and grants the installer
    TRIGGER on them; an installer with CREATE on the database and nothing more."""
    installer, app, service = make_role("installer"), make_role("app"), make_role("svc")
    conn.execute(
        sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
            sql.Identifier(conn.info.dbname), sql.Identifier(installer)
        )
    )
    conn.execute(f"GRANT CREATE ON SCHEMA public TO {app}")
    app_dsn = make_conninfo(db_dsn, user=app)
    with psycopg.connect(app_dsn, autocommit=True) as a:
        a.execute("CREATE TABLE orders (id int PRIMARY KEY, total int, token text)")
        a.execute("CREATE TABLE events (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)")
        a.execute("CREATE TABLE events_1 PARTITION OF events FOR VALUES FROM (0) TO (100)")
        a.execute(f"GRANT TRIGGER ON orders, events, events_1 TO {installer}")
    return {
        "installer": make_conninfo(db_dsn, user=installer),
        "app": app_dsn,
        "service": make_conninfo(db_dsn, user=service),
        "service_name": service,
    }


def installed(world: dict[str, str]) -> None:
    ok(relay("install", dsn=world["installer"]))
    ok(relay("track", "public.orders", "--exclude-columns", "token", dsn=world["installer"]))
    ok(relay("track", "public.events", dsn=world["installer"]))


def grant_service(world: dict[str, str]) -> None:
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed")
    result = subprocess.run(
        [
            psql,
            world["installer"],
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            f"role={world['service_name']}",
            "-f",
            str(SQL / "service_role.sql"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def write(world: dict[str, str], *statements: str) -> None:
    with psycopg.connect(world["app"], autocommit=True) as app:
        for statement in statements:
            app.execute(statement)


def recorded(world: dict[str, str]) -> list[tuple[str, str]]:
    with psycopg.connect(world["installer"], autocommit=True) as inst:
        return [(r["op"], r["table_name"]) for r in outbox(inst)]


def test_installer_installs(world: dict[str, str]) -> None:
    assert "relay schema is at version" in ok(relay("install", dsn=world["installer"]))
    with psycopg.connect(world["installer"]) as inst:
        assert not one_row(
            inst.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        )[0]


def test_installer_upgrades_a_database_with_tracked_tables(world: dict[str, str]) -> None:
    """An install of the previous version, with tables tracked by its triggers, upgraded by the
    same role with `relay install`: capture goes on under the new functions."""
    previous = sqlfiles.migrations()[:-1]
    with psycopg.connect(world["installer"], autocommit=True) as inst, inst.transaction():
        inst.execute(sqlfiles.read("bootstrap.sql").encode())
        for migration in previous:
            inst.execute(migration.sql.encode())
        inst.execute("SELECT relay.track('orders', exclude_columns => ARRAY['token'])")
        inst.execute("SELECT relay.track('events')")
    write(world, "INSERT INTO orders VALUES (1, 10, 't')", "INSERT INTO events VALUES (1, 'a')")
    assert f"applied {sqlfiles.migrations()[-1].version:04d}" in ok(
        relay("install", dsn=world["installer"])
    )
    write(world, "UPDATE orders SET total = 11", "UPDATE events SET v = 'b'")
    assert recorded(world) == [
        ("insert", "orders"),
        ("insert", "events"),
        ("update", "orders"),
        ("update", "events"),
    ]
    with psycopg.connect(world["installer"]) as inst:
        tracked = inst.execute(
            "SELECT table_name, exclude_columns, capture_current FROM relay.tracked ORDER BY 1"
        ).fetchall()
    assert tracked == [("events", [], True), ("orders", ["token"], True)]


def test_installer_tracks(world: dict[str, str]) -> None:
    installed(world)
    write(world, "INSERT INTO orders VALUES (1, 10, 't')", "INSERT INTO events VALUES (1, 'a')")
    assert recorded(world) == [("insert", "orders"), ("insert", "events")]


def test_installer_tracks_again_with_other_options(world: dict[str, str]) -> None:
    installed(world)
    ok(
        relay(
            "track",
            "public.orders",
            "--events",
            "update",
            "--update-columns",
            "total",
            dsn=world["installer"],
        )
    )
    ok(relay("track", "public.events", "--events", "delete", dsn=world["installer"]))
    write(
        world,
        "INSERT INTO orders VALUES (1, 10, 't')",
        "UPDATE orders SET token = 'u'",
        "UPDATE orders SET total = 11",
        "INSERT INTO events VALUES (1, 'a')",
        "DELETE FROM events",
    )
    assert recorded(world) == [("update", "orders"), ("delete", "events")]


def test_installer_untracks(world: dict[str, str]) -> None:
    installed(world)
    ok(relay("untrack", "public.orders", dsn=world["installer"]))
    ok(relay("untrack", "public.events", dsn=world["installer"]))
    write(world, "INSERT INTO orders VALUES (1, 10, 't')", "INSERT INTO events VALUES (1, 'a')")
    assert recorded(world) == []
    with psycopg.connect(world["app"]) as app:
        assert app.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'relay%'"
        ).fetchone() == (0,)


@pytest.mark.parametrize("how", ["relay uninstall", "psql -f sql/uninstall.sql"])
def test_installer_uninstalls(world: dict[str, str], how: str) -> None:
    installed(world)
    if how == "relay uninstall":
        ok(relay("uninstall", "--yes", dsn=world["installer"]))
    else:
        psql = shutil.which("psql")
        if psql is None:
            pytest.skip("psql is not installed")
        result = subprocess.run(
            [
                psql,
                world["installer"],
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-f",
                str(SQL / "uninstall.sql"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    write(world, "INSERT INTO orders VALUES (1, 10, 't')", "INSERT INTO events VALUES (1, 'a')")
    with psycopg.connect(world["app"]) as app:
        assert app.execute("SELECT to_regnamespace('relay')").fetchone() == (None,)
        assert app.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'relay%'"
        ).fetchone() == (0,)


def test_owner_manages_webhooks_and_rules(world: dict[str, str]) -> None:
    installed(world)
    inst = world["installer"]
    ok(relay("webhook", "add", "orders", "--url", "http://127.0.0.1:9/x", dsn=inst))
    ok(
        relay(
            "rule", "add", "all orders", "--webhook", "orders", "--table", "public.orders", dsn=inst
        )
    )
    ok(relay("rule", "remove", "all orders", dsn=inst))
    ok(relay("webhook", "remove", "orders", dsn=inst))


@pytest.fixture
def serviced(world: dict[str, str]) -> dict[str, str]:
    installed(world)
    inst = world["installer"]
    ok(relay("webhook", "add", "orders", "--url", "http://127.0.0.1:9/x", dsn=inst))
    ok(
        relay(
            "rule", "add", "all orders", "--webhook", "orders", "--table", "public.orders", dsn=inst
        )
    )
    grant_service(world)
    write(world, "INSERT INTO orders VALUES (1, 10, 't')")
    return world


def test_service_reads_status(serviced: dict[str, str]) -> None:
    status = json.loads(ok(relay("status", "--json", dsn=serviced["service"])))
    assert status["backlog"]["pending"] == 1


def test_service_previews(serviced: dict[str, str]) -> None:
    out = ok(relay("preview", "--rule", "all orders", "--outbox-id", "1", dsn=serviced["service"]))
    assert "X-Relay-Delivery" in out and json.loads(out.splitlines()[-1])["data"]["total"] == 10


def test_service_lists_and_checks_webhooks_and_rules(serviced: dict[str, str]) -> None:
    service = serviced["service"]
    assert "orders" in ok(relay("webhook", "list", dsn=service))
    assert "http://127.0.0.1:9/x" in ok(relay("webhook", "show", "orders", dsn=service))
    assert "all orders" in ok(relay("rule", "list", dsn=service))
    assert "public.orders" in ok(relay("rule", "show", "all orders", dsn=service))
    assert "no problems" in ok(relay("rules", "check", dsn=service))
    assert "orders" in ok(relay("tracked", dsn=service))


def test_service_retries_and_purges(serviced: dict[str, str]) -> None:
    with psycopg.connect(serviced["installer"], autocommit=True) as inst:
        inst.execute(
            "UPDATE relay.outbox SET status = 'failed', processed_at = now() - '2 days'"
            "::interval, fanned_out_at = now()"
        )
    ok(relay("retry", "--id", "1", dsn=serviced["service"]))
    with psycopg.connect(serviced["installer"], autocommit=True) as inst:
        assert [r["status"] for r in outbox(inst)] == ["pending"]
        inst.execute(
            "UPDATE relay.outbox SET status = 'delivered', processed_at = now()"
            " - '2 days'::interval"
        )
    ok(relay("purge", "--older-than", "1d", dsn=serviced["service"]))
    with psycopg.connect(serviced["installer"], autocommit=True) as inst:
        assert outbox(inst) == []


def test_service_runs_the_relay(serviced: dict[str, str]) -> None:
    """`relay run` as the service role until it has regenerated a table's capture after DDL
    (the part of running that the other tests of it do not cover: see test_privileges for
    delivery as the service role)."""
    write(serviced, "ALTER TABLE orders ADD COLUMN note text")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(RELAY_DSN=serviced["service"], RELAY_POLL_INTERVAL="0.2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with psycopg.connect(serviced["installer"], autocommit=True) as inst:
            for _ in range(100):
                current = inst.execute(
                    "SELECT capture_current FROM relay.tracked WHERE table_name = 'orders'"
                ).fetchone()
                if current == (True,):
                    break
                proc.poll()
                assert proc.returncode is None, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.1)
            assert current == (True,)
        # relay's owner cannot see the service role's sessions in pg_stat_activity, yet status
        # says when the relay started.
        status = json.loads(ok(relay("status", "--json", dsn=serviced["installer"])))
        assert [r["since"] is not None for r in status["relays"]] == [True]
    finally:
        proc.terminate()
        proc.wait(10)


def delivery_header(dsn: str) -> str:
    out = ok(relay("preview", "--rule", "all", "--outbox-id", "1", dsn=dsn))
    return next(line for line in out.splitlines() if line.startswith("X-Relay-Delivery: "))


def change_and_rule(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY)")
        conn.execute("SELECT relay.track('t')")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute(
            "INSERT INTO relay.webhooks (name, payload_url) VALUES ('h', 'http://127.0.0.1:9/')"
        )
        conn.execute(
            "INSERT INTO relay.event_rules (name, tables, webhook_id)"
            " SELECT 'all', ARRAY['public.t'], id FROM relay.webhooks"
        )
        assert fan_out(conn) == 1


def test_delivery_ids_differ_across_databases_and_reinstalls(
    server_dsn: str, relay_dsn: str
) -> None:
    """Change 1 to webhook 1 in two databases, and in one database before and after a reinstall:
    a receiver that drops duplicates by delivery id must see three different ids (each drawn
    when its delivery is made: relay.deliveries.id)."""

    change_and_rule(relay_dsn)
    first = delivery_header(relay_dsn)
    assert first == delivery_header(relay_dsn)  # stable: every retry sends the same id
    with scratch_database(server_dsn, "relay_other") as other:
        ok(relay("install", dsn=other))
        change_and_rule(other)
        second = delivery_header(other)
    ok(relay("uninstall", "--yes", dsn=relay_dsn))
    with psycopg.connect(relay_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE t")
    ok(relay("install", dsn=relay_dsn))
    change_and_rule(relay_dsn)
    third = delivery_header(relay_dsn)
    assert len({first, second, third}) == 3


OWNED_BY_OTHERS = """
SELECT 'function ' || p.oid::regprocedure::text FROM pg_proc p
WHERE p.pronamespace = 'relay'::regnamespace AND p.proowner <> current_user::regrole
UNION ALL
SELECT 'relation ' || c.oid::regclass::text FROM pg_class c
WHERE c.relnamespace = 'relay'::regnamespace AND c.relowner <> current_user::regrole
UNION ALL
SELECT 'type ' || t.oid::regtype::text FROM pg_type t
WHERE t.typnamespace = 'relay'::regnamespace AND t.typowner <> current_user::regrole
"""


def test_what_a_superuser_makes_in_schema_relay_belongs_to_relays_owner(
    world: dict[str, str], db_dsn: str
) -> None:
    """A DBA, as a superuser, upgrades an install (from version 23, so the upgrade makes a
    table) that a role without superuser rights owns, and tracks a table. Before: the capture
    functions it wrote were SECURITY DEFINER functions of the superuser, so every write to the
    table ran relay's capture with a superuser's rights, and what the upgrade made was the
    superuser's, so relay's owner could neither upgrade again nor regenerate capture after DDL
    (permission denied). Now all of it is relay's owner's, whoever made it."""
    with psycopg.connect(world["installer"], autocommit=True) as inst, inst.transaction():
        inst.execute(sqlfiles.read("bootstrap.sql").encode())
        for migration in sqlfiles.migrations()[:23]:
            inst.execute(migration.sql.encode())
        inst.execute("SELECT relay.track('events')")
    ok(relay("install", dsn=db_dsn))
    ok(relay("track", "public.orders", dsn=db_dsn))
    with psycopg.connect(world["installer"], autocommit=True) as inst:
        assert inst.execute(OWNED_BY_OTHERS).fetchall() == []
    write(world, "ALTER TABLE orders ADD COLUMN note text", "INSERT INTO orders VALUES (1, 1)")
    with psycopg.connect(world["installer"], autocommit=True) as inst:
        assert one_row(inst.execute("SELECT relay.refresh_capture()"))[0] == 1
        inst.execute("UPDATE relay.definitions SET digest = 'an earlier release'")
    ok(relay("install", dsn=world["installer"]))
    assert recorded(world) == [("insert", "orders")]
