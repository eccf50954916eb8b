"""Tagging an application's changes with who made them and why: ``relay.tag(conn, ...)``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.pq import TransactionStatus

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection as SAConnection
    from sqlalchemy.orm import Session

__all__ = ["CLEAR", "NoTransaction", "atag", "statement", "tag"]

CLEAR = (
    "SELECT pg_catalog.set_config('relay.username', '', false), "
    "pg_catalog.set_config('relay.request_id', '', false)"
)
"""Untags a database session (an empty value is no tag: changes fall back to the defaults)."""


class NoTransaction(RuntimeError):
    """relay.tag was given a connection with no transaction to tag: the values would apply to
    nothing (``SET LOCAL`` outside a transaction is silently a no-op in PostgreSQL)."""


def statement(
    username: str | None, request_id: str | None, *, local: bool = True
) -> tuple[str, list[str]]:
    """The SQL that sets the given values and its parameters (for callers with a cursor of
    their own, such as the Django middleware). ``local``: for this transaction only."""
    values = {"relay.username": username, "relay.request_id": request_id}
    given = {name: value for name, value in values.items() if value is not None}
    if not given:
        raise ValueError("relay.tag: give username, request_id or both")
    for name, value in given.items():
        if not isinstance(value, str):
            raise TypeError(f"relay.tag: {name.split('.')[1]} must be a str, not {type(value)}")
        if "\x00" in value:
            raise ValueError(f"relay.tag: {name.split('.')[1]} holds a NUL character")
        if not value:
            raise ValueError(
                f"relay.tag: {name.split('.')[1]} is empty (leave it out, or None, to keep "
                "the default)"
            )
    scope = "true" if local else "false"
    calls = ", ".join(f"pg_catalog.set_config('{name}', %s, {scope})" for name in given)
    return f"SELECT {calls}", list(given.values())


def tag(
    conn: psycopg.Connection[Any] | SAConnection | Session,
    *,
    username: str | None = None,
    request_id: str | None = None,
) -> None:
    """Make every change the current transaction records carry ``username`` and/or
    ``request_id`` (in relay.outbox, and as the webhook's ``username`` and ``request_id``).
    ``conn`` is a psycopg connection or a SQLAlchemy Connection or Session; the values end
    with the transaction. Raises :class:`NoTransaction` where they would apply to nothing: an
    autocommit connection outside ``conn.transaction()``, or a failed transaction."""
    sql, params = statement(username, request_id)
    if isinstance(conn, psycopg.Connection):
        _check(conn, "wrap the writes in `with conn.transaction():` and tag inside it")
        with psycopg.Cursor(conn) as cursor:  # not conn.cursor(): its factory may be any
            cursor.execute(sql, params)
        return
    connection = _sqlalchemy_connection(conn)
    # psycopg's own connection, also under an AsyncSession's run_sync (an async adapter then)
    driver = connection.connection.driver_connection
    if not isinstance(driver, psycopg.Connection | psycopg.AsyncConnection):
        raise TypeError("relay.tag: the SQLAlchemy engine must use psycopg 3 (postgresql+psycopg)")
    _check(driver, "use a transaction (`with engine.begin() as conn:`), not AUTOCOMMIT")
    connection.exec_driver_sql(sql, tuple(params))


async def atag(
    conn: psycopg.AsyncConnection[Any],
    *,
    username: str | None = None,
    request_id: str | None = None,
) -> None:
    """:func:`tag` for an asyncio psycopg connection. (A SQLAlchemy AsyncSession tags with
    ``await session.run_sync(relay.tag, username=...)``.)"""
    if not isinstance(conn, psycopg.AsyncConnection):
        raise TypeError(f"relay.atag takes a psycopg AsyncConnection, not {type(conn).__name__}")
    sql, params = statement(username, request_id)
    _check(conn, "wrap the writes in `async with conn.transaction():` and tag inside it")
    async with psycopg.AsyncCursor(conn) as cursor:
        await cursor.execute(sql, params)


def _check(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], fix: str) -> None:
    status = conn.info.transaction_status
    if status == TransactionStatus.INERROR:
        raise NoTransaction("relay.tag: the transaction has failed; roll it back first")
    if conn.autocommit and status == TransactionStatus.IDLE:
        raise NoTransaction(
            f"relay.tag: no transaction is open (the connection is in autocommit): {fix}"
        )


def _sqlalchemy_connection(conn: object) -> SAConnection:
    """The SQLAlchemy Connection behind ``conn`` (a Session's begins its transaction).
    SQLAlchemy is imported here, not above: a psycopg-only application need not load it."""
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    if isinstance(conn, Session):
        return conn.connection()
    if isinstance(conn, Connection):
        return conn
    raise TypeError(
        "relay.tag takes a psycopg Connection or a SQLAlchemy Connection or Session, "
        f"not {type(conn).__name__}"
    )
