"""Tagging an application's changes with who made them and why: ``relay.tag(conn, ...)``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.pq import TransactionStatus

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection as SAConnection
    from sqlalchemy.orm import Session

__all__ = ["CLEAR", "NoTransaction", "atag", "statement", "tag"]

_ARGUMENTS = {
    "relay.username": "username",
    "relay.request_id": "request_id",
    "relay.request_path": "path",
    "relay.request_method": "method",
}
"""The session settings capture reads, each with the keyword argument that sets it."""

CLEAR = "SELECT " + ", ".join(f"pg_catalog.set_config('{name}', '', false)" for name in _ARGUMENTS)
"""Untags a database session (an empty value is no tag: changes fall back to the defaults)."""


class NoTransaction(RuntimeError):
    """relay.tag was given a connection with no transaction to tag: the values would apply to
    nothing (``SET LOCAL`` outside a transaction is silently a no-op in PostgreSQL)."""


def statement(
    username: str | None = None,
    request_id: str | None = None,
    *,
    path: str | None = None,
    method: str | None = None,
    local: bool = True,
    replace: bool = False,
) -> tuple[str, list[str]]:
    """The SQL that sets the given values and its parameters (for callers with a cursor of
    their own, such as the Django middleware). ``local``: for this transaction only.
    ``replace``: the settings not given are cleared, so a value set earlier in the session (a
    user who has since logged out) is not left behind."""
    values = dict(zip(_ARGUMENTS, (username, request_id, path, method), strict=True))
    given = {name: value for name, value in values.items() if value is not None}
    if not given and not replace:
        raise ValueError("relay.tag: give username, request_id, path or method")
    for name, value in given.items():
        argument = _ARGUMENTS[name]
        if not isinstance(value, str):
            raise TypeError(f"relay.tag: {argument} must be a str, not {type(value)}")
        if "\x00" in value:
            raise ValueError(f"relay.tag: {argument} holds a NUL character")
        if not value:
            raise ValueError(
                f"relay.tag: {argument} is empty (leave it out, or None, to keep the default)"
            )
    chosen = tuple(_ARGUMENTS) if replace else tuple(given)
    scope = "true" if local else "false"
    calls = ", ".join(f"pg_catalog.set_config('{name}', %s, {scope})" for name in chosen)
    return f"SELECT {calls}", [given.get(name, "") for name in chosen]


def tag(
    conn: psycopg.Connection[Any] | SAConnection | Session,
    *,
    username: str | None = None,
    request_id: str | None = None,
    path: str | None = None,
    method: str | None = None,
) -> None:
    """Make every change the current transaction records carry ``username``, ``request_id``,
    and the HTTP request's ``path`` and ``method``, those given (in relay.outbox, and as the
    webhook's ``username``, ``request_id`` and NetBox 4's ``request``).
    ``conn`` is a psycopg connection or a SQLAlchemy Connection or Session; the values end
    with the transaction. Raises :class:`NoTransaction` where they would apply to nothing: an
    autocommit connection outside ``conn.transaction()``, or a failed transaction."""
    sql, params = statement(username, request_id, path=path, method=method)
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
    path: str | None = None,
    method: str | None = None,
) -> None:
    """:func:`tag` for an asyncio psycopg connection. (A SQLAlchemy AsyncSession tags with
    ``await session.run_sync(relay.tag, username=...)``.)"""
    if not isinstance(conn, psycopg.AsyncConnection):
        raise TypeError(f"relay.atag takes a psycopg AsyncConnection, not {type(conn).__name__}")
    sql, params = statement(username, request_id, path=path, method=method)
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
