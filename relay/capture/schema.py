"""Installing, upgrading and removing relay's schema.

``relay install`` and ``psql -f sql/install.sql`` run the very same migration files and record
each in ``relay.migrations``, so either can upgrade what the other installed.
"""

from __future__ import annotations

from typing import Any

from relay import sqlfiles
from relay.db import Conn
from relay.sqlfiles import Migration, query


def latest_version() -> int:
    return sqlfiles.migrations()[-1].version


def installed_version(conn: Conn) -> int:
    """The highest migration applied, or 0 when relay is not installed."""
    (exists,) = _one(conn, query("migrations_table_exists"))
    if not exists:
        return 0
    versions = [row[0] for row in conn.execute(query("applied_migrations"))]
    return int(max(versions, default=0))


def install(conn: Conn) -> list[Migration]:
    """Apply, in one transaction, every migration the database does not have yet."""
    with conn.transaction():
        conn.execute(query("install_lock"))
        conn.execute(sqlfiles.read("bootstrap.sql").encode())
        applied = {row[0] for row in conn.execute(query("applied_migrations"))}
        pending = [m for m in sqlfiles.migrations() if m.version not in applied]
        for migration in pending:
            conn.execute(migration.sql.encode())
    return pending


def uninstall(conn: Conn) -> None:
    """Drop every capture trigger relay added, then schema relay and all it holds."""
    conn.execute(sqlfiles.read("uninstall.sql").encode())


def _one(conn: Conn, sql: str) -> tuple[Any, ...]:
    row = conn.execute(sql).fetchone()
    assert row is not None, "query returned no row"
    return row
