"""The console's tests' world: a private PostgreSQL that asks roles for their passwords (the
shared one trusts 127.0.0.1, and the console refuses roles PostgreSQL does not ask), people's
roles with the console's rights, and the console served on 127.0.0.1."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

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
