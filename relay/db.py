"""Opening connections, and turning connection failures into one line a person can act on.

Every connection relay opens goes through :func:`connect` or :func:`aconnect`, so that the first
statement of every session sets the search path no other role can write to (see
:data:`SEARCH_PATH`) and the session settings relay runs with (:data:`SESSION`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
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
"""The search path of every session relay opens, set by its first statement (see :func:`_pin`).
PostgreSQL resolves every unqualified function, operator and type name
through it, picking the best match over every schema on the path: with ``"$user", public`` (the
default), an operator another role creates in ``public`` or in a schema named like relay's role,
for argument types ``pg_catalog`` has no exact match for, would run inside relay's queries with
relay's rights. Only a superuser can write to ``pg_catalog``, and ``pg_temp`` (last, so that it
is never searched first) holds only what this session creates. relay's own objects are always
named with their schema."""


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


SESSION = {
    "statement_timeout": "0",
    "lock_timeout": "0",
    "idle_in_transaction_session_timeout": "0",
}
"""Settings every relay session sets for itself, over a role's or a database's (ALTER ROLE ...
SET): timeouts tuned for an application's queries would stop relay's long statements (install,
status on a large outbox, a purge batch, waiting for a replay's lock); relay bounds its own
work (leases, batches, backfill's own lock_timeout per chunk). A value the operator gives in the
connection's options (the DSN's, PGOPTIONS, a service file's) is the operator's choice for
relay, and wins."""

_OPTION = re.compile(r"(?:-c\s*|--)([A-Za-z0-9_.-]+)=")


def _given(options: str) -> set[str]:
    """The settings a libpq ``options`` string sets (``-c name=value``, ``--name=value``)."""
    return {name.lower().replace("-", "_") for name in _OPTION.findall(options)}


def _pin(conn_options: str, settings: Mapping[str, str]) -> bytes:
    """The first statements of every session relay opens: SET commands, which resolve no
    function, operator or type, so nothing another role made on the session's own search path
    can run in them. The search path first, then :data:`SESSION` and ``settings``, but those the
    connection's own options give (the DSN's, PGOPTIONS, a service file's: the operator's
    choice). Set by statements rather than in the startup packet, they hold through a pooler
    that drops libpq's options (PgBouncer's ignore_startup_parameters), and a service file's
    options are kept."""
    given = _given(conn_options)
    wanted = {name: value for name, value in {**SESSION, **settings}.items() if name not in given}
    statements = [f"SET search_path = {SEARCH_PATH}"]
    statements += [f"SET {name} = '{value}'" for name, value in wanted.items()]
    return "; ".join(statements).encode()


def path_problem(search_path: str) -> str | None:
    """Why a session on ``search_path`` may not run relay's SQL, or None when it is
    :data:`SEARCH_PATH` (as every session relay opens sets it first: another path means another
    server session answers, as behind a pooler that shares them between clients)."""
    if search_path.replace(" ", "") == SEARCH_PATH:
        return None
    return (
        f"the session's search_path is {search_path!r}, not {SEARCH_PATH!r}: relay needs "
        "sessions of its own (a pooler in transaction mode shares them); connect relay to "
        "PostgreSQL directly, or through a pooler in session mode"
    )


def _parameters(dsn: str, application_name: str | None) -> dict[str, Any]:
    return {
        "application_name": application_name or f"relay/{__version__}",
        "connect_timeout": conninfo_to_dict(dsn).get("connect_timeout") or 10,
    }


def connect(
    dsn: str,
    *,
    autocommit: bool = True,
    application_name: str | None = None,
    settings: Mapping[str, str] | None = None,
) -> Conn:
    """A connection that pg_stat_activity shows as ``relay/<version>`` (or
    ``application_name``), autocommit unless asked otherwise, its first statement run: the
    search path pinned, :data:`SESSION` and ``settings`` set. A DSN libpq cannot read, or a
    server not reached within 10 s, raises :class:`DatabaseUnavailable` with a one-line
    message."""
    problem = dsn_problem(dsn)
    if problem is not None:
        raise DatabaseUnavailable(problem)
    try:
        conn = psycopg.connect(dsn, autocommit=autocommit, **_parameters(dsn, application_name))
    except psycopg.OperationalError as exc:
        detail = one_line(exc)
        raise DatabaseUnavailable(
            f"cannot connect to the database: {detail}", refused=refused(exc), detail=detail
        ) from exc
    try:
        conn.execute(_pin(conn.info.get_parameters().get("options", ""), settings or {}))
        if not autocommit:
            conn.commit()  # a session setting made in a transaction ends with it
    except BaseException:
        conn.close()
        raise
    return conn


async def aconnect(
    dsn: str, *, application_name: str | None = None, settings: Mapping[str, str] | None = None
) -> AConn:
    """As :func:`connect`, for asyncio, always autocommit; connection failures are psycopg's own
    (``relay run`` retries them with backoff, and says when the server refuses)."""
    conn = await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, **_parameters(dsn, application_name)
    )
    try:
        await conn.execute(_pin(conn.info.get_parameters().get("options", ""), settings or {}))
    except BaseException:
        await conn.close()
        raise
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


NOT_INSTALLED = "relay is not installed in this database: run `relay install` as its owner"

NO_RIGHTS = (
    "grant the role its rights with sql/service_role.sql (again after each upgrade), or run this "
    "as relay's owner"
)


def explain(exc: psycopg.Error) -> tuple[str, int]:
    """One line for a database error, naming the fix where there is a usual one, and the exit
    code: 2 for what running the command again cannot change (relay missing, rights, a name
    taken, a value the database's checks refuse: a bad option), 1 for the database refusing
    what was asked otherwise."""
    primary = exc.diag.message_primary or first_line(exc)
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return f"{primary}: {NO_RIGHTS}", 2
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.InvalidSchemaName) and (
        '"relay' in primary or "schema relay" in primary
    ):
        return NOT_INSTALLED, 2
    if isinstance(exc, psycopg.errors.UniqueViolation):
        detail = exc.diag.message_detail or primary
        return f"{detail} Choose another name, or change or remove the existing one.", 2
    if exc.diag.message_hint:
        primary += f" (hint: {exc.diag.message_hint})"
    refused_value = (psycopg.IntegrityError, psycopg.DataError, psycopg.errors.FeatureNotSupported)
    if isinstance(exc, refused_value):  # InvalidParameterValue is a DataError
        return primary, 2
    return primary, 1
