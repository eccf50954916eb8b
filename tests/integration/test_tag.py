"""relay.tag: an application tags its transaction's changes in one line, with psycopg or
SQLAlchemy, and is told clearly when there is no transaction to tag."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import relay
from relay.capture.tag import CLEAR, statement
from relay.db import Conn
from support.db import one_row


def tags(rconn: Conn) -> list[tuple[str, str]]:
    return rconn.execute("SELECT username, request_id FROM relay.outbox ORDER BY id").fetchall()


@pytest.fixture
def items(rconn: Conn) -> Conn:
    rconn.execute("CREATE TABLE items (id int PRIMARY KEY)")
    rconn.execute("SELECT relay.track('items')")
    return rconn


def test_psycopg_tags_one_transaction_and_refuses_autocommit(items: Conn, relay_dsn: str) -> None:
    with psycopg.connect(relay_dsn, autocommit=True) as conn:
        with pytest.raises(relay.NoTransaction, match=r"conn\.transaction"):
            relay.tag(conn, username="alice")
        with conn.transaction():
            relay.tag(conn, username="alice", request_id="req-1")
            conn.execute("INSERT INTO items VALUES (1), (2)")
        conn.execute("INSERT INTO items VALUES (3)")  # the next transaction is not tagged
        role = one_row(conn.execute("SELECT session_user"))[0]
    with psycopg.connect(relay_dsn) as conn:  # not autocommit: the tag opens the transaction
        relay.tag(conn, request_id="req-2")
        conn.execute("INSERT INTO items VALUES (4)")
        conn.commit()
    recorded = tags(items)
    assert recorded[:2] == [("alice", "req-1")] * 2
    assert recorded[2][0] == role and recorded[2][1] not in ("req-1", "req-2")
    assert recorded[3] == (role, "req-2")


def test_a_failed_transaction_is_not_tagged(items: Conn, relay_dsn: str) -> None:
    with psycopg.connect(relay_dsn) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        with pytest.raises(relay.NoTransaction, match="roll it back first"):
            relay.tag(conn, username="alice")


def test_sqlalchemy_sessions_and_connections(items: Conn, relay_dsn: str) -> None:
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(relay_dsn))
    try:
        with Session(engine) as session, session.begin():
            relay.tag(session, username="bob", request_id="from-a-session")
            session.execute(text("INSERT INTO items VALUES (1)"))
        with engine.begin() as connection:
            relay.tag(connection, username="carol")
            connection.execute(text("INSERT INTO items VALUES (2)"))
        autocommit = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        with autocommit as connection, pytest.raises(relay.NoTransaction, match="AUTOCOMMIT"):
            relay.tag(connection, username="dave")
    finally:
        engine.dispose()
    recorded = tags(items)
    assert recorded[0] == ("bob", "from-a-session")
    assert recorded[1][0] == "carol"
    assert len(recorded) == 2


def test_any_cursor_factory_and_a_sqlalchemy_async_session(items: Conn, relay_dsn: str) -> None:
    with psycopg.connect(relay_dsn, cursor_factory=psycopg.RawCursor) as conn:
        relay.tag(conn, username="raw")  # its own cursor: %s, whatever conn.cursor() makes
        conn.execute("INSERT INTO items VALUES ($1)", (1,))

    async def scenario() -> None:
        engine = create_async_engine(
            "postgresql+psycopg://",
            async_creator=lambda: psycopg.AsyncConnection.connect(relay_dsn),
        )
        try:
            async with AsyncSession(engine) as session, session.begin():
                await session.run_sync(relay.tag, username="async-session")
                await session.execute(text("INSERT INTO items VALUES (2)"))
        finally:
            await engine.dispose()

    asyncio.run(scenario())
    assert [name for name, _ in tags(items)] == ["raw", "async-session"]


def test_asyncio_psycopg(items: Conn, relay_dsn: str) -> None:
    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(relay_dsn, autocommit=True) as conn:
            with pytest.raises(relay.NoTransaction):
                await relay.atag(conn, username="erin")
            async with conn.transaction():
                await relay.atag(conn, username="erin", request_id="async")
                await conn.execute("INSERT INTO items VALUES (1)")

    asyncio.run(scenario())
    assert tags(items) == [("erin", "async")]


def test_hostile_values_are_recorded_exactly(items: Conn, relay_dsn: str) -> None:
    names = ["o'brien\"; DROP TABLE items; --", "名前 ✓", "x" * 10_000, "%s %(x)s {}"]
    with psycopg.connect(relay_dsn) as conn:
        for number, name in enumerate(names):
            relay.tag(conn, username=name, request_id=name[::-1])
            conn.execute("INSERT INTO items VALUES (%s)", (number,))
            conn.commit()
    assert tags(items) == [(name, name[::-1]) for name in names]


def test_bad_arguments_say_what_is_wrong(relay_dsn: str) -> None:
    with psycopg.connect(relay_dsn) as conn:
        with pytest.raises(ValueError, match="give username, request_id, path or method"):
            relay.tag(conn)
        with pytest.raises(TypeError, match="username must be a str"):
            relay.tag(conn, username=7)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="request_id holds a NUL"):
            relay.tag(conn, request_id="a\x00b")
        with pytest.raises(ValueError, match="username is empty"):
            relay.tag(conn, username="")
        with pytest.raises(TypeError, match="path must be a str"):
            relay.tag(conn, path=b"/api/")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="method holds a NUL"):
            relay.tag(conn, method="GE\x00T")
        with pytest.raises(ValueError, match="path is empty"):
            relay.tag(conn, username="alice", path="")
        with pytest.raises(TypeError, match="takes a psycopg AsyncConnection"):
            asyncio.run(relay.atag(conn, username="x"))  # type: ignore[arg-type]
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # nothing ran
    with pytest.raises(TypeError, match="not str"):
        relay.tag("postgresql://", username="x")  # type: ignore[arg-type]


def session_settings(conn: psycopg.Connection[tuple[Any, ...]]) -> tuple[str, ...]:
    names = ("username", "request_id", "request_path", "request_method")
    calls = ", ".join(f"coalesce(current_setting('relay.{name}', true), '')" for name in names)
    return one_row(conn.execute(f"SELECT {calls}"))


def test_path_and_method_are_set_for_the_transaction_beside_the_user(
    items: Conn, relay_dsn: str
) -> None:
    """What capture stores of them is its own test; here: the settings it reads, set for the
    transaction only, alone or with the others, hostile text exactly."""
    with psycopg.connect(relay_dsn) as conn:
        relay.tag(conn, path="/api/dcim/devices/", method="POST")
        assert session_settings(conn) == ("", "", "/api/dcim/devices/", "POST")
        conn.execute("INSERT INTO items VALUES (1)")
        conn.commit()
        assert session_settings(conn) == ("", "", "", "")  # ended with the transaction
        odd = "/api/o'brien/名前/%s/" + "x" * 10_000
        relay.tag(conn, username="alice", request_id="req-3", path=odd, method="PATCH")
        assert session_settings(conn) == ("alice", "req-3", odd, "PATCH")
        conn.execute("INSERT INTO items VALUES (2)")
        conn.commit()

    async def scenario() -> tuple[str, ...]:
        async with await psycopg.AsyncConnection.connect(relay_dsn) as conn:
            await relay.atag(conn, method="DELETE")
            cursor = await conn.execute("SELECT current_setting('relay.request_method', true)")
            row = await cursor.fetchone()
            assert row is not None
            return tuple(row)

    assert asyncio.run(scenario()) == ("DELETE",)
    recorded = tags(items)  # the user and request id as before
    assert recorded[1] == ("alice", "req-3")


def test_a_replacing_statement_clears_what_it_is_not_given(relay_dsn: str) -> None:
    """The Django middleware's: a user who logged out must not stay on the session."""
    with psycopg.connect(relay_dsn, autocommit=True) as conn:
        sql, params = statement("alice", "req-1", path="/a", method="GET", local=False)
        conn.execute(sql, params)
        assert session_settings(conn) == ("alice", "req-1", "/a", "GET")
        sql, params = statement(None, "req-2", local=False, replace=True)
        conn.execute(sql, params)
        assert session_settings(conn) == ("", "req-2", "", "")
        conn.execute(CLEAR)
        assert session_settings(conn) == ("", "", "", "")
