"""The console's tests' world: a private PostgreSQL that asks roles for their passwords (the
shared one trusts 127.0.0.1, and the console refuses roles PostgreSQL does not ask), people's
roles with the console's rights, the console served on 127.0.0.1, and an HTTP client that signs
in as a person does. The fixtures ``cluster`` and ``dsn`` are registered for every test module
by tests/conftest.py (``pytest_plugins``): each console test module has its own cluster."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp import web
from psycopg import sql
from psycopg.conninfo import make_conninfo

from relay.console.app import REQUEST_LINE_BYTES, Config, make_app
from relay.store import Store
from relay.tempcluster import TempCluster, find_server_binaries, start_temp_cluster

PASSWORD = "correct horse battery staple"


@contextmanager
def password_cluster() -> Iterator[TempCluster]:
    """A private cluster on 127.0.0.1: ``postgres`` trusted (the tests' own administration),
    every other role asked its password (scram-sha-256)."""
    if find_server_binaries() is None:
        pytest.skip("no PostgreSQL server binaries to start a cluster that asks for passwords")
    cluster = start_temp_cluster()
    try:
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            row = conn.execute("SHOW hba_file").fetchone()
            assert row is not None
        hba = Path(row[0])
        hba.write_text(
            "host all postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n" + hba.read_text()
        )
        cluster.reload()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def cluster() -> Iterator[TempCluster]:
    """One password-asking cluster per test module (starting one takes seconds)."""
    with password_cluster() as started:
        yield started


@contextmanager
def relay_database(cluster: TempCluster) -> Iterator[str]:
    """A new database with relay installed, as ``postgres``; dropped after."""
    name = f"console_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(cluster.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(cluster.dsn, dbname=name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            Store(conn).install()
        yield dsn
    finally:
        with psycopg.connect(cluster.dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def dsn(cluster: TempCluster) -> Iterator[str]:
    """A database of its own for one test, relay installed, on the module's cluster."""
    with relay_database(cluster) as made:
        yield made


def person(dsn: str, prefix: str, *, rights: bool = True) -> str:
    """A login role with :data:`PASSWORD`, given the console's rights as docs/console.md says
    (``relay sql console-role --role NAME | psql``) unless ``rights`` is False. Roles are the
    cluster's: the cluster goes at the end of the module."""
    name = f"{prefix}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(PASSWORD)
            )
        )
    if rights:
        psql = shutil.which("psql")
        if psql is None:
            pytest.skip("psql is not installed")
        grants = subprocess.run(
            [sys.executable, "-m", "relay", "sql", "console-role", "--role", name],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        subprocess.run(
            [psql, "-X", "-q", dsn, "-v", "ON_ERROR_STOP=1", "-f", "-"],
            input=grants,
            check=True,
            capture_output=True,
            text=True,
        )
    return name


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def serving(dsn: str, **config: Any) -> AsyncIterator[str]:
    """The console for ``dsn`` on 127.0.0.1; its base URL."""
    app = make_app(Config(dsn=dsn, **config))
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=0.2,
        max_line_size=REQUEST_LINE_BYTES,
    )
    await runner.setup()
    port = _free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


#: Every field of the webhook form, filled.
WEBHOOK = {
    "name": "orders",
    "url": "http://127.0.0.1:9/hook",
    "method": "PUT",
    "content-type": "application/json",
    "header": "X-Team: ops\r\nX-Id: {{ data.id }}",
    "body-template": '{"id": {{ data.id }}}',
    "signature": "netbox",
    "ssl-verification": "on",
    "ca-file": "",
    "timeout": "7.5",
    "max-attempts": "4",
    "retry-base-seconds": "2",
    "retry-max-seconds": "60",
    "batch-size": "1",
    "batch-wait-ms": "0",
    "concurrency": "3",
    "rate-limit": "2.5",
    "dead-after": "2h",
    "ordering": "key",
    "ordering-key": "{{ data.id }}",
    "body-format": "netbox4",
    "related": "",
    "coalesce": "on",
    "enabled": "on",
    "secret": "first-secret",
}


def owner(dsn: str) -> str:
    """A login role with the rights of relay's owner (a member of the role that installed it)."""
    name = person(dsn, "owner", rights=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT postgres TO {}").format(sql.Identifier(name)))
    return name


def service(dsn: str) -> str:
    """A login role with the service's rights (``relay sql service-role``): it may not change
    webhooks or rules."""
    name = person(dsn, "service", rights=False)
    grants = subprocess.run(
        [sys.executable, "-m", "relay", "sql", "service-role", "--role", name],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    subprocess.run(
        ["psql", "-X", "-q", dsn, "-v", "ON_ERROR_STOP=1", "-f", "-"],
        input=grants,
        check=True,
        capture_output=True,
        text=True,
    )
    return name


def scalar(dsn: str, statement: str, *params: Any) -> Any:
    """The first column of the statement's first row, None without a row."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(statement, params).fetchone()
        return row[0] if row else None


def audit(dsn: str) -> list[tuple[Any, ...]]:
    """The console's audit, oldest first."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT actor, action, target, detail, address FROM relay.console_audit ORDER BY id"
        ).fetchall()


def http_client() -> aiohttp.ClientSession:
    """A client that keeps the console's cookies."""
    # Cookies for 127.0.0.1 (an IP address: aiohttp's jar keeps them only when told to).
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def _token(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]+)"', html)
    assert found, f"no {name} in the page"
    return found[1]


async def sign_in(
    client: aiohttp.ClientSession, base: str, role: str, password: str = PASSWORD
) -> aiohttp.ClientResponse:
    """The sign-in form filled and posted as a person does; the answer, not followed."""
    form = await client.get(f"{base}/login")
    token = _token(await form.text(), "token")
    data = {"token": token, "role": role, "password": password}
    return await client.post(f"{base}/login", data=data, allow_redirects=False)


async def csrf(client: aiohttp.ClientSession, base: str) -> str:
    """The CSRF token the signed-in client's pages carry."""
    page = await client.get(f"{base}/")
    return _token(await page.text(), "csrf")


def problem(html: str) -> str:
    """What the form's problem line says."""
    found = re.search(r'<p class="problem" role="alert"[^>]*>(.*?)</p>', html, re.S)
    assert found, "no problem on the page"
    return found[1]
