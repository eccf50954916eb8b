"""Opening connections, and turning connection failures into one line a person can act on.

Every connection relay opens goes through :func:`connect` or :func:`aconnect`, so that every
session starts with the search path no other role can write to (see :data:`SEARCH_PATH`).
"""

from __future__ import annotations

import os
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

AConn: TypeAlias = psycopg.AsyncConnection[Any]
"""An asyncio connection (``relay run``'s stages and the rule watcher)."""

SEARCH_PATH = "pg_catalog,pg_temp"
"""The search path of every session relay opens, set in the startup packet before any statement
runs. PostgreSQL resolves every unqualified function, operator and type name through it, picking
the best match over every schema on the path: with ``"$user", public`` (the default), an operator
another role creates in ``public`` or in a schema named like relay's role, for argument types
``pg_catalog`` has no exact match for, would run inside relay's queries with relay's rights. Only a
superuser can write to ``pg_catalog``, and ``pg_temp`` (last, so that it is never searched first)
holds only what this session creates. relay's own objects are always named with their schema."""


class DatabaseUnavailable(Exception):
    """The database could not be reached or refused us: a configuration problem, not a bug.
    ``refused`` when the server answered and said no (see :func:`refused`): waiting will not
    help, where an outage may pass; ``detail`` is then the server's words, in one line."""

    def __init__(self, message: str, *, refused: bool = False, detail: str = "") -> None:
        super().__init__(message)
        self.refused = refused
        self.detail = detail


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


SESSION_TIMEOUTS = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
"""Timeouts a role or database may set for its sessions, which relay's sessions set for
themselves (to none): they are tuned for an application's queries, and relay's long statements
(install, status on a large outbox, a purge batch, waiting for a replay's lock) are not those.
relay bounds its own work: leases, batches, backfill's own lock_timeout per chunk."""


def session_options() -> str:
    """The ``-c name=value`` options every relay session starts with, first (see
    :func:`startup_parameters`): they win over ALTER ROLE and ALTER DATABASE settings, so that
    a role with ``statement_timeout = '1ms'`` cannot stop relay; the operator's own options,
    after them, still win over them (the server takes the last of a setting)."""
    return " ".join(f"-c {name}=0" for name in SESSION_TIMEOUTS)


def startup_parameters(
    dsn: str, *, application_name: str | None = None, options: str = ""
) -> dict[str, Any]:
    """The connection parameters every relay session starts with: :func:`session_options`, then
    the DSN's own ``options`` (or PGOPTIONS, as libpq would), then ``options``, then the search
    path, last so that nothing before it can undo it."""
    given = conninfo_to_dict(dsn)
    own = given.get("options") or os.environ.get("PGOPTIONS")
    pinned = f"-c search_path={SEARCH_PATH}"
    return {
        "application_name": application_name or f"relay/{__version__}",
        "options": " ".join(str(o) for o in (session_options(), own, options, pinned) if o),
        "connect_timeout": given.get("connect_timeout") or 10,
    }


_CURRENT_PATH = "SELECT pg_catalog.current_setting('search_path')"
"""The one statement a session runs before relay knows its search path is pinned: every name in
it is qualified, so no object on any path can take its place."""


def path_problem(search_path: str) -> str | None:
    """Why a session on ``search_path`` may not run relay's SQL (something between relay and
    PostgreSQL dropped the startup options), or None when it is :data:`SEARCH_PATH`."""
    if search_path.replace(" ", "") == SEARCH_PATH:
        return None
    return (
        f"the session's search_path is {search_path!r}, not {SEARCH_PATH!r}: something "
        "between relay and PostgreSQL (a connection pooler) dropped the startup options; "
        "connect relay to PostgreSQL directly or let the options through"
    )


def _unpinned(search_path: str) -> DatabaseUnavailable | None:
    problem = path_problem(search_path)
    if problem is None:
        return None
    return DatabaseUnavailable(f"cannot use the database: {problem}", refused=True, detail=problem)


def connect(
    dsn: str,
    *,
    autocommit: bool = True,
    application_name: str | None = None,
    options: str = "",
) -> Conn:
    """A connection that pg_stat_activity shows as ``relay/<version>`` (or
    ``application_name``), autocommit unless asked otherwise, on the pinned search path. A DSN
    libpq cannot read, a server not reached within 10 s, or a session that is not on the
    pinned path (:func:`path_problem`), raises :class:`DatabaseUnavailable` with a one-line
    message."""
    problem = dsn_problem(dsn)
    if problem is not None:
        raise DatabaseUnavailable(problem)
    parameters = startup_parameters(dsn, application_name=application_name, options=options)
    try:
        conn = psycopg.connect(dsn, autocommit=autocommit, **parameters)
        row = conn.execute(_CURRENT_PATH).fetchone()
    except psycopg.OperationalError as exc:
        detail = one_line(exc)
        raise DatabaseUnavailable(
            f"cannot connect to the database: {detail}", refused=refused(exc), detail=detail
        ) from exc
    if not autocommit:
        conn.rollback()
    unpinned = _unpinned(str(row[0]) if row else "")
    if unpinned is not None:
        conn.close()
        raise unpinned
    return conn


async def aconnect(dsn: str, *, application_name: str | None = None, options: str = "") -> AConn:
    """As :func:`connect`, for asyncio, always autocommit; connection failures are psycopg's own
    (``relay run`` retries them with backoff, and says when the server refuses), a session off
    the pinned path a :class:`DatabaseUnavailable` (waiting will not help)."""
    parameters = startup_parameters(dsn, application_name=application_name, options=options)
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, **parameters)
    try:
        row = await (await conn.execute(_CURRENT_PATH)).fetchone()
    except BaseException:
        await conn.close()
        raise
    unpinned = _unpinned(str(row[0]) if row else "")
    if unpinned is not None:
        await conn.close()
        raise unpinned
    return conn


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
