"""Test harness: a real PostgreSQL, and a fresh database for every test.

The server is, in order: $RELAY_TEST_DSN, the one on 127.0.0.1:5432 (as role postgres), or a
throwaway cluster started from the server binaries on this machine. When none can be had the
run stops with one line saying what is missing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

from relay.db import Conn
from relay.store import Store
from relay.tempcluster import NoPostgres, postgres_server, scratch_database

# The console tests' ``cluster`` and ``dsn`` (a password-asking cluster per module, a database
# with relay installed per test), defined once for the console modules of tests/integration and
# tests/system.
pytest_plugins = ["support.console"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--systemd",
        action="store_true",
        help="also run tests/system/test_systemd.py: relay installed as docs/deploy.md says, "
        "under a real systemd in a systemd-nspawn container (root; about a minute)",
    )


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """A DSN with the right to create databases and roles."""
    try:
        server = postgres_server(os.environ.get("RELAY_TEST_DSN"))
        dsn = server.__enter__()
    except NoPostgres as exc:
        pytest.exit(f"no PostgreSQL for the tests: {exc}", 3)
    try:
        yield dsn
    finally:
        server.__exit__(None, None, None)


@contextmanager
def template_of(server_dsn: str) -> Iterator[str]:
    """The name of a database with relay installed, on the server, dropped when the block
    ends. Nobody connects to it after the install (PostgreSQL copies only a database nobody is
    connected to)."""
    with scratch_database(server_dsn, "relay_template") as dsn:
        with psycopg.connect(dsn, autocommit=True) as connection:
            Store(connection).install()
        yield str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])


@pytest.fixture(scope="session")
def installed_template(server_dsn: str) -> Iterator[str]:
    """Made once per run: a test that wants relay installed gets a copy of it (CREATE DATABASE
    ... TEMPLATE), several times quicker than running every migration again."""
    with template_of(server_dsn) as name:
        yield name


@pytest.fixture
def db_dsn(request: pytest.FixtureRequest, server_dsn: str) -> Iterator[str]:
    """A new database of its own for one test: empty, or a copy of the installed template when
    the test also asks for relay installed (``relay_dsn`` or ``rconn``), so that both name the
    same database."""
    template = None
    if {"relay_dsn", "rconn"} & set(request.fixturenames):
        template = request.getfixturevalue("installed_template")
    with scratch_database(server_dsn, "relay_test", template) as dsn:
        yield dsn


@pytest.fixture
def conn(db_dsn: str) -> Iterator[Conn]:
    with psycopg.connect(db_dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def relay_dsn(db_dsn: str) -> str:
    """A database with relay installed (db_dsn, copied from the installed template)."""
    return db_dsn


@pytest.fixture
def rconn(relay_dsn: str) -> Iterator[Conn]:
    """An autocommit connection, as the installing role, to a database with relay installed."""
    with psycopg.connect(relay_dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def make_role(server_dsn: str, db_dsn: str) -> Iterator[Callable[..., str]]:
    """Creates login roles for a test (roles are cluster-wide, so they are dropped after it)."""
    created: list[str] = []

    def make(prefix: str = "app") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        created.append(name)
        return name

    yield make
    # The roles own objects in the test's database: drop it first (db_dsn tolerates that).
    dbname = psycopg.conninfo.conninfo_to_dict(db_dsn)["dbname"]
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(dbname)))
        )
        for name in created:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
