"""Opening connections, and turning connection failures into one line a person can act on."""

from __future__ import annotations

from typing import Any, TypeAlias

import psycopg
from psycopg.conninfo import conninfo_to_dict

from relay._version import __version__

DSN_PROBLEM = (
    "not a connection string: give a libpq string ('host=db dbname=app user=relay') or a URI "
    "('postgresql://relay@db/app')"
)
"""Said of a connection string libpq cannot parse. Never libpq's own words: they quote the
string, password included."""

Conn: TypeAlias = psycopg.Connection[tuple[Any, ...]]
"""A synchronous connection with plain tuple rows (used by the CLI and admin commands)."""


class DatabaseUnavailable(Exception):
    """The database could not be reached or refused us: a configuration problem, not a bug."""


DSN_EMPTY = (
    "is empty: give a connection string (libpq's defaults alone, if that is what you mean, are "
    "'postgresql://')"
)
"""Said of an empty connection string: libpq would take it for its defaults (the local socket,
a database named after the OS user) and a command such as ``relay uninstall`` would act on a
database nobody named."""


def dsn_problem(dsn: str) -> str | None:
    """Why ``dsn`` cannot be used (empty, or libpq cannot read it), without connecting; None
    when it can."""
    if not dsn.strip():
        return DSN_EMPTY
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return DSN_PROBLEM
    return None


def connect(dsn: str, *, autocommit: bool = True) -> Conn:
    """A connection that pg_stat_activity shows as ``relay/<version>``, autocommit unless asked
    otherwise. A DSN libpq cannot read, or a server not reached within 10 s, raises
    :class:`DatabaseUnavailable` with a one-line message."""
    problem = dsn_problem(dsn)
    if problem is not None:
        raise DatabaseUnavailable(problem)
    try:
        return psycopg.connect(
            dsn,
            autocommit=autocommit,
            application_name=f"relay/{__version__}",
            connect_timeout=10,
        )
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {one_line(exc)}") from exc


_PASSING = ("starting up", "shutting down", "in recovery", "too many clients", "terminating")


def refused(exc: psycopg.OperationalError) -> bool:
    """The server answered and said no (unknown role or database, wrong password, pg_hba):
    waiting will not help. A server that is down, starting or full is a passing outage."""
    text = str(exc)
    return "FATAL:" in text and not any(words in text for words in _PASSING)


def one_line(exc: BaseException) -> str:
    """An error's whole message joined into one line, for errors whose later lines carry the cause
    (libpq's connection failures), where :func:`first_line` would lose it."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def first_line(exc: BaseException) -> str:
    """An error's first line, or its type's name when it has no message: short enough for a log
    field or a stored reason."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
