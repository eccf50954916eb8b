"""No object another role creates runs inside a session relay opens.

An application role that may create objects in a schema on the search path of relay's roles
(``public``, or a schema it names after relay's role: ``"$user"``) sets every trap of
tests/support/traps.py there. Then relay is installed (by psql's install.sql, or by ``relay
install``), the service role runs ``relay run --processes 2`` through a full delivery cycle
(single and batched webhooks, failures and retries, a key move, a delete), and every command a
user runs is run: status, retry, replay, backfill, preview, purge, tracked, webhook and rule
commands, rules check, untrack. No trap runs, and nothing fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from relay.db import connect
from support import pooler, traps
from support.cli import in_process, relay
from support.receivers import free_port, receiver
from support.worker import until

SQL = Path(__file__).resolve().parents[2] / "sql"
PINNED = "-c search_path=pg_catalog,pg_temp"
"""The test's own connections look only in pg_catalog, so that they spring no trap themselves."""

FAST = {
    "RELAY_POLL_INTERVAL": "0.2",
    "RELAY_RETRY_BASE_SECONDS": "0.05",
    "RELAY_RETRY_MAX_SECONDS": "0.2",
    "RELAY_LEASE_SECONDS": "5",
    "RELAY_SHUTDOWN_GRACE_SECONDS": "1",
    "RELAY_BREAKER_FAILURES": "1000",
}


SECRETS = {"HOOK_SECRET": "s3cr3t", "STANDARD_SECRET": "whsec_" + "c2VjcmV0IHNlY3JldCBzZWNyZXQ="}


def _connect(dsn: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(dsn, autocommit=True, options=PINNED)


def _psql(dsn: str, path: Path, *variables: str, input_text: str | None = None) -> None:
    """Run a file of sql/ with psql as a DBA would, with the role's own search path."""
    argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *variables, "-f", str(path), dsn]
    done = subprocess.run(
        argv, input=input_text, capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def template(server_dsn: str) -> Iterator[dict[str, str]]:
    """A database holding every trap, set by an application role in public and in schemas named
    after relay's owner (the installing superuser here: the worst case) and its service role;
    each test gets a copy (setting the traps takes seconds, copying them does not)."""
    suffix = uuid.uuid4().hex[:8]
    app, service, name = f"app_{suffix}", f"svc_{suffix}", f"relay_traps_{suffix}"
    owner = str(conninfo_to_dict(server_dsn).get("user") or "postgres")
    with _connect(server_dsn) as admin:
        for role in (app, service):
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        admin.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(name), sql.Identifier(app)
            )
        )
    dsn = make_conninfo(server_dsn, dbname=name)
    try:
        with _connect(dsn) as admin:
            admin.execute(
                sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(app))
            )
        with _connect(make_conninfo(dsn, user=app)) as conn:
            for schema in (owner, service):
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
                conn.execute(
                    sql.SQL("GRANT USAGE ON SCHEMA {} TO PUBLIC").format(sql.Identifier(schema))
                )
            for schema in ("public", owner, service):
                traps.set_traps(conn, schema)
            conn.execute(
                "CREATE TABLE public.items (id int PRIMARY KEY, v smallint, price numeric,"
                " note text, at timestamptz DEFAULT now())"
            )
        yield {"name": name, "app": app, "service": service}
    finally:
        with _connect(server_dsn) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            for role in (app, service):
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture
def trapped(server_dsn: str, template: dict[str, str]) -> Iterator[dict[str, str]]:
    """A copy of the template database, for one test."""
    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    with _connect(server_dsn) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template["name"])
            )
        )
    dsn = make_conninfo(server_dsn, dbname=name)
    try:
        yield {
            "owner": dsn,
            "app": make_conninfo(dsn, user=template["app"]),
            "service": make_conninfo(dsn, user=template["service"]),
            "service_name": template["service"],
        }
        with _connect(dsn) as admin:
            assert traps.calls(admin) == 0, traps.log(admin)
    finally:
        with _connect(server_dsn) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _sprung(dsn: str) -> tuple[int, list[tuple[str, str]]]:
    with _connect(dsn) as conn:
        return traps.calls(conn), traps.log(conn)


def _statuses(dsn: str) -> dict[str, int]:
    """The changes by status, and as "deliveries pending" the deliveries still to go (a replay
    makes deliveries of finished changes pending again)."""
    with _connect(dsn) as conn:
        rows = conn.execute(
            "SELECT status::text, count(*) FROM relay.outbox GROUP BY 1"
            " UNION ALL SELECT 'deliveries pending', count(*) FROM relay.deliveries"
            " WHERE status = 'pending'"
        ).fetchall()
    return {status: n for status, n in rows if n}


def _ok(*args: str, dsn: str) -> str:
    """A command that must succeed (in this process: relay run is a process of its own, and no
    command needs the receiver)."""
    done = in_process(*args, dsn=dsn, env=SECRETS)
    assert done.returncode == 0, f"relay {' '.join(args)}: {done.stderr}"
    return done.stdout


class _Relay:
    """``relay run --processes 2`` as the service role, in a process of its own."""

    def __init__(self, dsn: str) -> None:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        environment.update(FAST, RELAY_DSN=dsn, RELAY_METRICS_ADDRESS=f"127.0.0.1:{free_port()}")
        # The role's own options, as a DBA might set them, cannot undo relay's search path.
        environment["PGOPTIONS"] = "-c search_path=public"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "relay", "run", "--processes", "2"],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        _, stderr = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, stderr
        return stderr


@pytest.mark.parametrize("installer", ["psql", "relay install"])
def test_no_trap_another_role_sets_runs_in_any_session_relay_opens(
    trapped: dict[str, str], installer: str
) -> None:
    """The traps are set before relay is installed. By psql's install.sql, with the installing
    role's own search path: every object relay creates resolves its names in pg_catalog. By
    relay install, with PGOPTIONS pinning the path as a careful DBA would (so that the install
    itself springs nothing, even before relay pinned it): every session after is on its own."""
    owner, service, app = trapped["owner"], trapped["service"], trapped["app"]
    if installer == "psql":
        _psql(owner, SQL / "install.sql")
    else:
        done = relay("install", dsn=owner, env={"PGOPTIONS": PINNED})
        assert done.returncode == 0, done.stderr
    _psql(owner, SQL / "service_role.sql", "-v", f"role={trapped['service_name']}")
    assert _sprung(owner) == (0, [])

    answered = 0

    async def answer(request: web.Request) -> web.StreamResponse:
        # Every third request fails: retries, of single changes and of batches.
        nonlocal answered
        answered += 1
        return web.Response(status=503 if answered % 3 == 0 else 200)

    async def scenario() -> None:
        async with receiver(answer) as hook:
            _ok("track", "items", "--exclude-columns", "note", dsn=owner)
            _ok("webhook", "add", "single", "--url", hook.url, "--secret-env", "HOOK_SECRET",
                "--header", "X-Item: {{ data.id }}", "--retry-base-seconds", "0.05",
                dsn=owner)  # fmt: skip
            _ok("webhook", "add", "batched", "--url", hook.url + "?b=1", "--batch-size", "3",
                "--batch-wait-ms", "50", "--signature", "standard", "--secret-env",
                "STANDARD_SECRET", "--retry-base-seconds", "0.05", dsn=owner)  # fmt: skip
            _ok("webhook", "add", "dead", "--url", f"http://127.0.0.1:{free_port()}/",
                "--max-attempts", "1", dsn=owner)  # fmt: skip
            _ok("rule", "add", "single", "--webhook", "single", "--table", "public.items",
                "--event", "insert", "--event", "update", "--event", "delete",
                "--event", "snapshot", "--conditions",
                '{"and": [{"attr": "data.v", "op": "gte", "value": 0}]}', dsn=owner)  # fmt: skip
            _ok("rule", "add", "batched", "--webhook", "batched", "--table", "public.items",
                dsn=owner)  # fmt: skip
            _ok("rule", "add", "dead", "--webhook", "dead", "--table", "public.items",
                "--event", "delete", dsn=owner)  # fmt: skip
            _ok("rules", "check", dsn=owner)

            runner = _Relay(service)
            try:
                with _connect(app) as conn:
                    conn.execute(
                        "INSERT INTO public.items (id, v, price, note)"
                        " SELECT g, g::smallint, g / 3.0, 'n' || g FROM generate_series(1, 12) g"
                    )
                    conn.execute(
                        "UPDATE public.items SET v = v + 1, price = price * 2 WHERE id <= 6"
                    )
                    conn.execute("UPDATE public.items SET id = 100 WHERE id = 1")  # a key move
                    conn.execute("DELETE FROM public.items WHERE id = 12")
                # a change fails as soon as one of its deliveries does: wait for the others too
                await until(
                    lambda: not {"pending", "deliveries pending"} & set(_statuses(owner)),
                    timeout=60,
                )
                assert _statuses(owner) == {"delivered": 19, "failed": 1}, _sprung(owner)

                for command in (
                    ["status"],
                    ["status", "--json", "--errors", "20"],
                    ["tracked"],
                    ["webhook", "list"],
                    ["webhook", "show", "batched"],
                    ["rule", "list"],
                    ["rule", "show", "single"],
                    ["rules", "check"],
                    ["config"],
                    ["preview", "--rule", "single", "--outbox-id", "1"],
                    ["preview", "--rule", "batched", "--outbox-id", "1", "--outbox-id", "2"],
                ):
                    _ok(*command, dsn=service)
                _ok("webhook", "edit", "single", "--timeout", "5", dsn=owner)
                _ok("retry", "--webhook", "dead", dsn=service)
                _ok("replay", "--webhook", "single", "--since", "1h", dsn=owner)
                _ok("replay", "--webhook", "batched", "--since", "1h", "--status", "all",
                    dsn=owner)  # fmt: skip
                _ok("backfill", "items", "--batch", "4", "--webhook", "single", dsn=owner)
                await until(
                    lambda: not {"pending", "deliveries pending"} & set(_statuses(owner)),
                    timeout=60,
                )
                _ok("purge", "--older-than", "0s", dsn=service)
            finally:
                log = runner.stop()
            assert "relay session failed" not in log, log
            _ok("untrack", "public.items", dsn=owner)
            _ok("rule", "remove", "dead", dsn=owner)
            _ok("webhook", "remove", "dead", dsn=owner)

    asyncio.run(scenario())
    assert _sprung(owner) == (0, [])
    with _connect(owner) as conn:
        assert conn.execute("SELECT count(*) FROM relay.outbox").fetchone() == (0,)


def test_through_a_pooler_that_drops_the_startup_options_nothing_runs_either(
    trapped: dict[str, str],
) -> None:
    """Between relay and PostgreSQL, a pooler that drops libpq's options (PgBouncer with
    `ignore_startup_parameters = options`): each session starts on the role's own search path,
    where the traps are, and relay's first statement pins it. relay install and the commands
    work through it, and no trap runs (the fixture checks)."""
    owner, service = trapped["owner"], trapped["service"]
    given = conninfo_to_dict(owner)
    upstream = (str(given.get("host") or "127.0.0.1"), int(given.get("port") or 5432))
    with pooler.dropping_options(*upstream) as (host, port):
        through = make_conninfo(owner, host=host, port=str(port))
        _ok("install", dsn=through)
        _psql(owner, SQL / "service_role.sql", "-v", f"role={trapped['service_name']}")
        as_service = make_conninfo(service, host=host, port=str(port))
        for command, dsn in (
            (["track", "items"], through),
            (["webhook", "add", "w", "--url", "http://127.0.0.1:9/"], through),
            (["rule", "add", "r", "--webhook", "w", "--table", "public.items"], through),
            (["status"], as_service),
            (["retry"], through),
            (["replay", "--webhook", "w", "--since", "1h"], through),
            (["rules", "check"], as_service),
        ):
            _ok(*command, dsn=dsn)
        with connect(as_service) as conn:
            assert conn.execute("SHOW search_path").fetchone() == ("pg_catalog, pg_temp",)


def _sql_blocks(path: Path, holding: str = "") -> list[str]:
    """The ```sql blocks of a page (those holding ``holding``), as written."""
    blocks = re.findall(r"^```sql\n(.*?)^```", path.read_text(), re.M | re.S)
    return [block for block in blocks if holding in block]


def test_related_rows_spring_no_trap(trapped: dict[str, str]) -> None:
    """A webhook's related option (relay.related_rows, run by the service role on the tables
    the application owns), and `relay rules check` trying it, beside every trap: the rows
    arrive, nothing of the application role's runs (the fixture counts the traps' calls)."""
    owner, service, app = trapped["owner"], trapped["service"], trapped["app"]
    done = relay("install", dsn=owner, env={"PGOPTIONS": PINNED})
    assert done.returncode == 0, done.stderr
    _psql(owner, SQL / "service_role.sql", "-v", f"role={trapped['service_name']}")
    with _connect(app) as conn:
        conn.execute(
            "CREATE TABLE public.sites (id bigint PRIMARY KEY, name text, price numeric,"
            " at timestamptz DEFAULT now())"
        )
        conn.execute(
            "CREATE TABLE public.devices (id int PRIMARY KEY,"
            " site_id bigint REFERENCES public.sites)"
        )
        conn.execute(f"GRANT SELECT ON public.sites TO {trapped['service_name']}")
        conn.execute("INSERT INTO public.sites VALUES (1, 'one', 1.50), (2, 'two', 2)")

    async def scenario() -> list[bytes]:
        async with receiver() as hook:
            _ok("track", "public.devices", dsn=owner)
            _ok("webhook", "add", "h", "--url", hook.url, "--related",
                '{"site_id": ["name", "price", "at"]}', dsn=owner)  # fmt: skip
            _ok("rule", "add", "h", "--webhook", "h", "--table", "public.devices", dsn=owner)
            _ok("rules", "check", dsn=service)
            runner = _Relay(service)
            try:
                with _connect(app) as conn:
                    conn.execute("INSERT INTO public.devices VALUES (1, 1), (2, 2), (3, NULL)")
                await until(lambda: len(hook.requests) == 3, timeout=30)
            finally:
                runner.stop()
            return [request.body for request in hook.requests]

    bodies = {json.loads(body)["data"]["id"]: body for body in asyncio.run(scenario())}
    sites = {key: json.loads(body)["data"]["site"] for key, body in bodies.items()}
    assert {key: site and site["name"] for key, site in sites.items()} == {
        1: "one",
        2: "two",
        3: None,
    }
    assert b'"price" : 1.50' in bodies[1]  # its digits, as the capture writes them


def test_the_sql_the_docs_give_operators_runs_no_trap_in_their_own_session(
    relay_dsn: str, make_role: Callable[..., str]
) -> None:
    """An operator runs the SQL of docs/operations.md (resets, the superseded leave, backfill,
    replay) and README's outbox query in psql as relay's owner, with the role's own search
    path. An application role allowed to create in public has an operator there for
    (anyenum, text), which PostgreSQL picks over pg_catalog's for `status = 'failed'` on
    relay's enums: before, it ran with the owner's rights and read every webhook's secret.
    Each block now starts by pinning the search path, and nothing of the role's runs."""
    app = make_role("app")
    with _connect(relay_dsn) as owner:
        owner.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(app)))
        owner.execute("CREATE TABLE public.orders (id int PRIMARY KEY, status text)")
        owner.execute("SELECT relay.track('public.orders')")
        for name in ("crm", "orders"):
            owner.execute(
                "INSERT INTO relay.webhooks (name, payload_url, secret)"
                " VALUES (%s, 'http://127.0.0.1:9/', 'the-secret')",
                (name,),
            )
            owner.execute(
                "INSERT INTO relay.event_rules (name, tables, webhook_id)"
                " SELECT %s, ARRAY['public.orders'], id FROM relay.webhooks WHERE name = %s",
                (name, name),
            )
        owner.execute("INSERT INTO public.orders SELECT g, 'new' FROM generate_series(1, 3) g")
        owner.execute("UPDATE relay.outbox SET status = 'failed' WHERE id = 1")
    with _connect(make_conninfo(relay_dsn, user=app)) as conn:
        conn.execute("CREATE TABLE public.seen (who text, secrets text)")
        conn.execute("GRANT INSERT ON public.seen TO PUBLIC")
        conn.execute(
            "CREATE FUNCTION public.eq(anyenum, text) RETURNS boolean LANGUAGE plpgsql AS $$"
            " BEGIN"
            "   INSERT INTO public.seen SELECT current_user,"
            "     (SELECT string_agg(secret, ',') FROM relay.webhooks);"
            "   RETURN $1::text = $2;"
            " END $$"
        )
        conn.execute(
            "CREATE OPERATOR public.= (leftarg = anyenum, rightarg = text, function = public.eq)"
        )
    docs = Path(__file__).resolve().parents[2]
    blocks = _sql_blocks(docs / "docs" / "operations.md")
    blocks += _sql_blocks(docs / "README.md", "FROM relay.outbox WHERE status")
    assert len(blocks) == 6
    for block in blocks:
        _psql(relay_dsn, Path("/dev/stdin"), input_text=block)
    with _connect(relay_dsn) as owner:
        assert owner.execute("SELECT * FROM public.seen").fetchall() == []


def test_options_a_connection_service_file_gives_are_kept(
    db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator names the database by a service of pg_service.conf (`service=app`), which
    sets options of its own: relay's sessions keep them, as they keep the DSN's and
    PGOPTIONS', with relay's search path after them."""
    given = conninfo_to_dict(db_dsn)
    lines = [f"{key}={value}" for key, value in given.items() if key != "options"]
    (tmp_path / "pg_service.conf").write_text(
        "[app]\n" + "\n".join(lines) + "\noptions=-c work_mem=77MB\n"
    )
    monkeypatch.setenv("PGSERVICEFILE", str(tmp_path / "pg_service.conf"))
    monkeypatch.delenv("PGOPTIONS", raising=False)
    with connect("service=app") as conn:
        assert conn.execute("SHOW search_path").fetchone() == ("pg_catalog, pg_temp",)
        assert conn.execute("SHOW work_mem").fetchone() == ("77MB",)
