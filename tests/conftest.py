"""Test harness: a real PostgreSQL, and a fresh database for every test.

The server is, in order: $RELAY_TEST_DSN, the one on 127.0.0.1:5432 (as role postgres), or a
throwaway cluster started from the server binaries on this machine. When none can be had the
run stops with one line saying what is missing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from relay import schema
from relay.tempcluster import LOCAL_DSN, NoPostgres, TempCluster, reachable, start_temp_cluster

Conn = psycopg.Connection[tuple[object, ...]]


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """A DSN with the right to create databases and roles."""
    explicit = os.environ.get("RELAY_TEST_DSN")
    if explicit:
        if not reachable(explicit):
            pytest.exit(f"RELAY_TEST_DSN is set but cannot be connected to: {explicit}", 3)
        yield explicit
        return
    if reachable(LOCAL_DSN):
        yield LOCAL_DSN
        return
    cluster: TempCluster | None = None
    try:
        cluster = start_temp_cluster()
    except NoPostgres as exc:
        pytest.exit(f"no PostgreSQL for the tests: {exc}", 3)
    try:
        yield cluster.dsn
    finally:
        cluster.stop()


@pytest.fixture
def db_dsn(server_dsn: str) -> Iterator[str]:
    """A new, empty database of its own for one test."""
    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(server_dsn, dbname=name)
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def conn(db_dsn: str) -> Iterator[Conn]:
    with psycopg.connect(db_dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def relay_dsn(db_dsn: str) -> str:
    """A database with relay installed."""
    with psycopg.connect(db_dsn, autocommit=True) as connection:
        schema.install(connection)
    return db_dsn


@pytest.fixture
def rconn(relay_dsn: str) -> Iterator[Conn]:
    """An autocommit connection, as the installing role, to a database with relay installed."""
    with psycopg.connect(relay_dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def make_role(server_dsn: str, db_dsn: str) -> Iterator[object]:
    """Creates login roles for a test (roles are cluster-wide, so they are dropped after it)."""
    created: list[str] = []

    def make(prefix: str = "app") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        created.append(name)
        return name

    yield make
    with psycopg.connect(db_dsn, autocommit=True) as test_db:
        for name in created:
            test_db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        for name in created:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))

