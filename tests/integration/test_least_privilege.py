"""Who may do what: relay installs without superuser, and applications need no rights on it."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from structlog.testing import capture_logs

from relay.db import Conn
from relay.delivery import fanout
from relay.settings import Settings
from relay.store import Store
from support.cli import relay
from support.db import one_row, outbox
from support.receivers import free_port, receiver
from support.worker import FAST, running, until

SQL = Path(__file__).resolve().parents[2] / "sql"


@pytest.fixture
def roles(db_dsn: str, make_role: Callable[..., str], conn: Conn) -> dict[str, str]:
    """An installer with only CREATE on the database; an application that owns its table."""
    installer, app = make_role("installer"), make_role("app")
    dbname = conn.info.dbname
    conn.execute(f'GRANT CREATE ON DATABASE "{dbname}" TO {installer}')
    conn.execute(f"GRANT CREATE ON SCHEMA public TO {app}")
    with psycopg.connect(make_conninfo(db_dsn, user=app), autocommit=True) as a:
        a.execute("CREATE TABLE public.orders (id int PRIMARY KEY, total int)")
        a.execute(f"GRANT TRIGGER ON public.orders TO {installer}")
    return {
        "installer": make_conninfo(db_dsn, user=installer),
        "app": make_conninfo(db_dsn, user=app),
        "app_name": app,
        "installer_name": installer,
    }


def analyzed(conn: Conn) -> bool:
    """relay.deliveries has been analyzed (relay.refresh_statistics ran)."""
    row = conn.execute(
        "SELECT last_analyze IS NOT NULL FROM pg_stat_all_tables"
        " WHERE relid = 'relay.deliveries'::regclass"
    ).fetchone()
    return bool(row and row[0])


def test_installer_needs_no_superuser_and_app_needs_no_rights(roles: dict[str, str]) -> None:
    with psycopg.connect(roles["installer"], autocommit=True) as inst:
        assert not one_row(
            inst.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        )[0]
        Store(inst).install()
        Store(inst).track("public.orders")

    with psycopg.connect(roles["app"], autocommit=True) as app:
        app.execute("INSERT INTO orders VALUES (1, 10)")
        app.execute("UPDATE orders SET total = 20")
        forbidden = [
            "SELECT * FROM relay.outbox",
            "INSERT INTO relay.outbox (schema_name, table_name, op, txid)"
            " VALUES ('public', 'orders', 'insert', pg_current_xact_id())",
            "UPDATE relay.outbox SET status = 'delivered'",
            "SELECT * FROM relay.tracked",
            "SELECT relay.untrack('public.orders')",
            "SELECT relay.track('public.orders', ARRAY['insert'])",
        ]
        for statement in forbidden:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement)

    with psycopg.connect(roles["installer"], autocommit=True) as inst:
        rows = outbox(inst)
    assert [(r["op"], r["username"]) for r in rows] == [
        ("insert", roles["app_name"]),
        ("update", roles["app_name"]),
    ]


def test_backfill_reads_with_its_callers_rights_and_a_policy_cannot_hide_rows(
    roles: dict[str, str],
) -> None:
    with psycopg.connect(roles["installer"], autocommit=True) as inst:
        Store(inst).install()
        Store(inst).track("public.orders")
    with psycopg.connect(roles["app"], autocommit=True) as app:
        app.execute("INSERT INTO orders VALUES (1, 10), (2, 20)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("SELECT relay.backfill('public.orders')")
    with (
        psycopg.connect(roles["installer"], autocommit=True) as inst,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="orders"),
    ):
        inst.execute("SELECT relay.backfill('public.orders')")  # may not read the table
    with psycopg.connect(roles["installer"], autocommit=True) as inst:
        inst.execute(
            "INSERT INTO relay.webhooks (name, payload_url, secret)"
            " VALUES ('h', 'http://127.0.0.1:9/', 's')"
        )
        inst.execute(
            "INSERT INTO relay.event_rules (name, tables, events, webhook_id)"
            " SELECT 'r', ARRAY['public.orders'], ARRAY['snapshot'], id FROM relay.webhooks"
        )
    refused = relay("backfill", "public.orders", dsn=roles["installer"])
    assert refused.returncode == 2, refused.stderr
    assert "permission denied for table orders: a backfill reads public.orders with the rights" in (
        refused.stderr
    )
    assert len(refused.stderr.strip().splitlines()) == 1
    with psycopg.connect(roles["app"], autocommit=True) as app:
        # Reading, and locking rows, which takes UPDATE on a column (nothing is updated).
        app.execute(f"GRANT SELECT, UPDATE (id) ON orders TO {roles['installer_name']}")
        app.execute("ALTER TABLE orders ENABLE ROW LEVEL SECURITY")
        app.execute("CREATE POLICY big_only ON orders USING (total > 15)")
    with (
        psycopg.connect(roles["installer"], autocommit=True) as inst,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"),
    ):
        inst.execute("SELECT relay.backfill('public.orders')")  # not a silent half backfill
    with psycopg.connect(roles["app"], autocommit=True) as app:
        app.execute("ALTER TABLE orders DISABLE ROW LEVEL SECURITY")
    with psycopg.connect(roles["installer"], autocommit=True) as inst:
        while one_row(inst.execute("SELECT relay.backfill('public.orders')"))[0]:
            pass
        snapshots = inst.execute(
            "SELECT new::text FROM relay.outbox WHERE op = 'snapshot' ORDER BY id"
        ).fetchall()
    assert snapshots == [('{"id":1,"total":10}',), ('{"id":2,"total":20}',)]


def grant_service_role(roles: dict[str, str], service: str) -> None:
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed")
    result = subprocess.run(
        [
            psql,
            roles["installer"],
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            f"role={service}",
            "-f",
            str(SQL / "service_role.sql"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_service_role_grants(
    roles: dict[str, str], make_role: Callable[..., str], db_dsn: str
) -> None:
    service = make_role("svc")
    with psycopg.connect(roles["installer"], autocommit=True) as inst:
        Store(inst).install()
        Store(inst).track("public.orders")
    grant_service_role(roles, service)
    with psycopg.connect(roles["app"], autocommit=True) as app:
        app.execute("INSERT INTO orders VALUES (1, 10), (2, 20)")

    with psycopg.connect(make_conninfo(db_dsn, user=service), autocommit=True) as svc:
        assert one_row(svc.execute("SELECT count(*) FROM relay.outbox"))[0] == 2
        svc.execute(
            "UPDATE relay.outbox SET status = 'delivered', processed_at = now()"
            " WHERE new->>'id' = '1'"
        )
        svc.execute("DELETE FROM relay.outbox WHERE status = 'delivered'")
        assert one_row(svc.execute("SELECT count(*) FROM relay.tracked"))[0] == 1
        for statement in [
            "INSERT INTO relay.outbox (schema_name, table_name, op, txid)"
            " VALUES ('public', 'orders', 'insert', pg_current_xact_id())",
            "UPDATE relay.outbox SET new = '{}'",
            "SELECT relay.untrack('public.orders')",
            "SELECT * FROM public.orders",
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                svc.execute(statement)


def test_relay_run_works_with_the_service_role_alone(
    roles: dict[str, str],
    make_role: Callable[..., str],
    db_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole delivery path (fan-out, claims, outcomes, statistics, purge) as the service
    role: what sql/service_role.sql grants is enough, also for a table in a schema the service
    role has no right to (shop), with a model name, to a webhook with a concurrency and a rate
    limit (relay.leased_requests, relay.webhook_pace), to a webhook ordered by transaction
    (positions drawn from relay.delivery_positions, relay.placed_first), and to one that
    coalesces (relay.outbox.coalesced_into written)."""
    service = make_role("svc")
    with psycopg.connect(db_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA shop AUTHORIZATION {roles['app_name']}")
    with psycopg.connect(roles["app"], autocommit=True) as app:
        app.execute("CREATE TABLE shop.items (id int PRIMARY KEY)")
        app.execute(f"GRANT USAGE ON SCHEMA shop TO {roles['installer_name']}")
        app.execute(f"GRANT TRIGGER ON shop.items TO {roles['installer_name']}")
    with psycopg.connect(roles["installer"], autocommit=True) as inst:
        Store(inst).install()
        Store(inst).track("public.orders")
        Store(inst).track("shop.items", model="shop.item")
    grant_service_role(roles, service)
    service_dsn = make_conninfo(db_dsn, user=service)
    settings = Settings(**{**FAST.model_dump(), "attempt_retention_days": 1})
    monkeypatch.setattr(fanout, "ANALYZE_AFTER_CHANGES", 10)  # reach refresh_statistics

    async def scenario() -> int:
        async with receiver() as r:
            with psycopg.connect(roles["installer"], autocommit=True) as inst:
                inst.execute(
                    "INSERT INTO relay.webhooks (name, payload_url, secret, concurrency,"
                    " rate_limit) VALUES ('h', %s, 's', 4, 200)",
                    (r.url,),
                )
                inst.execute(
                    "INSERT INTO relay.event_rules (name, tables, webhook_id)"
                    " SELECT 'r', ARRAY['public.orders', 'shop.items'], id FROM relay.webhooks"
                )
                inst.execute(
                    "INSERT INTO relay.webhooks (name, payload_url, secret, ordering)"
                    " VALUES ('o', %s, 's', 'transaction')",
                    (r.url,),
                )
                inst.execute(
                    "INSERT INTO relay.event_rules (name, tables, webhook_id)"
                    " SELECT 'ro', ARRAY['public.orders'], id FROM relay.webhooks WHERE name = 'o'"
                )
                inst.execute(
                    "INSERT INTO relay.webhooks (name, payload_url, secret, coalesce_changes)"
                    " VALUES ('c', %s, 's', true)",
                    (r.url,),
                )
                inst.execute(
                    "INSERT INTO relay.event_rules (name, tables, webhook_id)"
                    " SELECT 'rc', ARRAY['public.orders'], id FROM relay.webhooks WHERE name = 'c'"
                )
            async with running(service_dsn, settings):
                with psycopg.connect(roles["app"], autocommit=True) as app:
                    app.execute("INSERT INTO orders SELECT g, g FROM generate_series(1, 19) g")
                    app.execute("INSERT INTO shop.items VALUES (1)")
                    with app.transaction():
                        app.execute("UPDATE orders SET total = 0 WHERE id = 1")
                        app.execute("UPDATE orders SET total = 1 WHERE id = 1")
                # h: every change; o: those of orders; c: those of orders, the two updates as one
                await until(lambda: len(r.requests) == 22 + 21 + 20)
                models = {json.loads(request.body)["model"] for request in r.requests}
                assert models == {"orders", "item"}
                with psycopg.connect(roles["installer"]) as inst:
                    await until(lambda: {row["status"] for row in outbox(inst)} == {"delivered"})
                    # The statistics are refreshed on a connection of its own, as the service.
                    await until(lambda: analyzed(inst))
            return len(r.requests)

    with capture_logs() as logs:
        assert asyncio.run(scenario()) == 22 + 21 + 20
    assert not [entry for entry in logs if entry["log_level"] in ("warning", "error")]


def test_an_application_role_that_does_not_own_the_table_cannot_turn_capture_off(
    roles: dict[str, str], make_role: Callable[..., str]
) -> None:
    writer = make_role("writer")
    with psycopg.connect(roles["app"], autocommit=True) as owner:
        owner.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON orders TO {writer}")
    with psycopg.connect(roles["installer"], autocommit=True) as inst:
        Store(inst).install()
        Store(inst).track("public.orders")
    with psycopg.connect(make_conninfo(roles["app"], user=writer), autocommit=True) as app:
        for statement in [
            "ALTER TABLE orders DISABLE TRIGGER ALL",
            "ALTER TABLE orders DISABLE TRIGGER USER",
            "SET session_replication_role = replica",
            "DROP TRIGGER IF EXISTS relay_capture_insert ON orders",
            "SELECT relay.untrack('public.orders')",
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement)
        app.execute("INSERT INTO orders VALUES (7, 70)")
    with psycopg.connect(roles["installer"], autocommit=True) as inst:
        rows = outbox(inst)
    assert [(r["op"], r["username"]) for r in rows] == [("insert", writer)]


def test_the_service_role_records_health_and_pauses_a_dead_endpoint(
    roles: dict[str, str], make_role: Callable[..., str], db_dsn: str
) -> None:
    """What sql/service_role.sql grants is enough to record each endpoint's health and to pause
    a webhook as dead (relay.webhooks' paused_at and paused_reason, nothing else)."""
    service = make_role("svc")
    with psycopg.connect(roles["installer"], autocommit=True) as inst:
        Store(inst).install()
        Store(inst).track("public.orders")
        inst.execute(
            "INSERT INTO relay.webhooks (name, payload_url, secret) VALUES ('h', %s, 's')",
            (f"http://127.0.0.1:{free_port()}/hook",),
        )
        inst.execute(
            "INSERT INTO relay.event_rules (name, tables, webhook_id)"
            " SELECT 'r', ARRAY['public.orders'], id FROM relay.webhooks"
        )
    grant_service_role(roles, service)
    settings = Settings(
        **{**FAST.model_dump(), "dead_after_seconds": 1, "breaker_cooldown_seconds": 0.2}
    )

    def paused() -> tuple[object, ...] | None:
        with psycopg.connect(roles["installer"]) as inst:
            row = inst.execute(
                "SELECT w.paused_reason, h.failing_since IS NOT NULL FROM relay.webhooks w"
                " JOIN relay.webhook_health h ON h.webhook_id = w.id"
            ).fetchone()
        return tuple(row) if row else None

    async def scenario() -> None:
        async with running(make_conninfo(db_dsn, user=service), settings):
            with psycopg.connect(roles["app"], autocommit=True) as app:
                app.execute("INSERT INTO orders VALUES (1, 1)")
            await until(lambda: paused() == ("dead", True), timeout=20)

    with capture_logs() as logs:
        asyncio.run(scenario())
    assert [e["webhook"] for e in logs if e["event"] == "webhook paused as dead"] == ["h"]
    assert not [e for e in logs if e["log_level"] == "error"]
