"""What every ``relay`` command shares: consoles, the --dsn option, failing clearly, and the
webhook and rule commands' sessions on the admin (relay/admin.py)."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import psycopg
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from relay import sqlfiles
from relay.db import (
    NOT_INSTALLED,
    Conn,
    DatabaseUnavailable,
    connect,
    dsn_problem,
    explain,
    first_line,
)
from relay.rules import edits
from relay.store import Store, TableName

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from relay import admin as admin  # the commands' modules import it from here
    from relay.settings import Settings

# Without a terminal (a pipe, a file, a log) nothing is wrapped: a name or a SQL statement cut
# in the middle cannot be pasted back. On a terminal, its width.
_STDOUT: dict[str, Any] = {
    "soft_wrap": not sys.stdout.isatty(),
    "width": None if sys.stdout.isatty() else 10_000,
}
# Names, URLs and templates hold brackets: styles are asked for by markup=True.
out = Console(**_STDOUT, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)


BIGINT_MAX = 2**63 - 1
"""The largest id a bigint holds (relay.outbox's ids): every id option's upper bound, so that a
larger one is a usage error, not the database's "bigint out of range"."""


def _readable_dsn(value: str | None) -> str | None:
    """--dsn (or RELAY_DSN) that is empty or that libpq cannot read ends the command before
    anything runs."""
    problem = None if value is None else dsn_problem(value)
    if problem is not None:
        fail(f"--dsn (or RELAY_DSN): {problem}", 2)
    return value


Dsn = Annotated[
    str,
    typer.Option(
        "--dsn",
        envvar="RELAY_DSN",
        help="libpq connection string or URI of the database (or set RELAY_DSN).",
        show_default=False,
        callback=_readable_dsn,
    ),
]


EnvFile = Annotated[
    Path | None,
    typer.Option(
        "--env-file",
        envvar="RELAY_ENV_FILE",
        help="Read RELAY_* settings from this file too (NAME=value lines, as systemd's "
        "EnvironmentFile); the environment wins.",
        show_default=False,
    ),
]

OptionalDsn = Annotated[
    str | None,
    typer.Option(
        "--dsn",
        help="libpq connection string or URI of the database (default: RELAY_DSN, from the "
        "environment or the env file).",
        show_default=False,
        callback=_readable_dsn,
    ),
]


def group(help_text: str) -> typer.Typer:
    """A group of commands. Help in plain text: whole option names whatever the width (rich's
    boxes cut them at 80 columns), flags without a type."""
    return typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=None)


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""What would break an error's one line or write to the terminal: control characters (the
escape sequences' ESC among them) and Unicode's line and paragraph separators."""


def visible(text: str, keep: str = "") -> str:
    """``text`` with control characters and line separators escaped (``\\x1b``, ``\\n``),
    but those in ``keep``: what comes from elsewhere never drives the terminal."""
    return _UNPRINTABLE.sub(
        lambda m: m.group() if m.group() in keep else m.group().encode("unicode_escape").decode(),
        text,
    )


def say_error(message: str) -> None:
    """One line on stderr: the message's own brackets are text (a name such as "[/]" is not
    markup), and control characters and line breaks are shown escaped (\\n, \\x1b)."""
    err.print(
        f"[bold red]error:[/] {escape(visible(message))}",
        highlight=False,
        soft_wrap=True,
        markup=True,
    )


def fail(message: str, code: int = 1) -> NoReturn:
    """End the command with ``message`` as one line on stderr (see :func:`say_error`) and exit
    status ``code``: 2 for configuration, 1 for a refusal. Never returns."""
    say_error(message)
    raise typer.Exit(code)


@contextmanager
def database(dsn: str, *, installed: bool = True) -> Iterator[Conn]:
    """A connection whose failures end the command with one clear line; unless ``installed`` is
    False (install and uninstall), to a database whose relay schema is the one this relay
    knows (else the command ends saying to install or upgrade: an older schema's missing
    columns would otherwise come back as raw SQL errors).

    Exit code 2 means the database could not be used at all (configuration); 1 means it
    refused what we asked (a bad table name, missing rights...).
    """
    try:
        conn = connect(dsn)
    except DatabaseUnavailable as exc:
        fail(str(exc), 2)
    try:
        with conn:
            if installed:
                require_schema(conn)
            yield conn
    except psycopg.Error as exc:
        fail(*explain(exc))


def table_named(store: Store, table: str) -> TableName:
    """The table a name on the command line means (qualified as written; unqualified, in the
    role's own schema, then public), or the command ends: exit 2, naming the fix (relay's own
    absence is found first, by :func:`database`)."""
    try:
        found = store.table_name(table)
    except (psycopg.errors.InvalidName, psycopg.errors.SyntaxError):
        found = None  # not even a name: '', 'a.b.c.d'
    if found is None:
        fail(f"no table named {table!r}: name it as in SQL, e.g. public.orders", 2)
    return found


def schema_problem(version: int) -> str | None:
    """Why a relay schema at ``version`` cannot be used by this relay, or None when it can."""
    latest = sqlfiles.latest_version()
    if version == 0:
        return NOT_INSTALLED
    if version < latest:
        return (
            f"relay schema is at version {version}, this relay needs {latest}: run "
            "`relay install` as the schema's owner (then sql/service_role.sql for the service)"
        )
    if version > latest:
        return (
            f"relay schema is at version {version}, newer than this relay ({latest}): run the "
            "relay of the release that installed it"
        )
    return None


def require_schema(conn: Conn) -> None:
    """End the command (exit 2) unless relay's schema in ``conn``'s database is the one this
    relay knows."""
    problem = schema_problem(Store(conn).installed_version())
    if problem is not None:
        fail(problem, 2)


def add_row(table: Table, *values: str) -> None:
    """A row whose values are shown as text: no control character in a stored name or error
    reaches the terminal (names are refused them since 0017, but older rows may hold some)."""
    table.add_row(*(visible(value) for value in values))


def print_table(table: Table) -> None:
    """Print a table that never cuts a value short, however narrow the terminal."""
    for column in table.columns:
        column.overflow = "fold"
    out.print(table)


def print_fields(fields: Mapping[str, Any]) -> None:
    """One ``key: value`` line per field, for the ``show`` commands: values keep their line breaks
    and tabs (a template reads as written), but no other control character reaches the terminal."""
    for key, value in fields.items():
        shown = visible(str(value), keep="\n\t")  # templates keep their lines
        out.print(
            f"[bold]{key}:[/] {escape(shown)}",
            highlight=False,
            soft_wrap=True,
            markup=True,
        )


class LazyModule:
    """Module ``name``'s attributes, the module imported when one is first read: for a module
    only some of a group's commands use, so that every other command, and ``relay --version``,
    starts without it (SQLAlchemy: a tenth of a second). Imported by the import system, under
    its lock, whatever thread reads first. Type-check against the module itself
    (``if TYPE_CHECKING: from ... import module``)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)


def load_settings(env_file: Path | None) -> Settings:
    """The effective settings; a bad one ends the command with one line naming it, exit 2.
    (pydantic is imported here, by the commands that read settings, not by every command.)"""
    from relay import settings as settings_module
    from relay.settings import SettingsError

    try:
        return settings_module.load(env_file)
    except SettingsError as exc:
        fail(str(exc), 2)


def dsn_of(dsn: str | None, settings: Settings) -> str:
    """The database a command talks to: ``--dsn`` when given, else RELAY_DSN from the settings; with
    neither, the command ends (exit 2)."""
    chosen = dsn or settings.dsn
    if not chosen:
        fail("RELAY_DSN: no database given (set RELAY_DSN, or use --dsn or --env-file)", 2)
    return chosen


# SQLAlchemy, when a command reads or writes webhooks and rules, not at every start.
if not TYPE_CHECKING:
    admin = LazyModule("relay.admin")

Row = TypeVar("Row")
"""A webhook's or a rule's mapped row (relay/admin.py)."""
Checked = TypeVar("Checked")


@contextmanager
def admin_session(dsn: str) -> Iterator[Session]:
    """A session whose database errors end the command with the database's own words, on a
    database whose relay schema this relay knows."""
    import sqlalchemy.exc

    try:
        with admin.session(dsn) as db:
            raw = db.connection().connection.driver_connection
            assert isinstance(raw, psycopg.Connection), "admin.session connects with psycopg"
            require_schema(raw)
            yield db
    except DatabaseUnavailable as exc:
        fail(str(exc), 2)
    except sqlalchemy.exc.DBAPIError as exc:
        if isinstance(exc.orig, psycopg.Error):
            fail(*explain(exc.orig))
        fail(first_line(exc.orig or exc))


def split_all(values: list[str] | None) -> list[str] | None:
    """Repeated options, each of which may hold a comma-separated list, as one list (None when
    none was given)."""
    from relay.settings import comma_list  # here: other commands start without pydantic

    return comma_list(*values) if values else None


def checked(check: Callable[..., Checked], *values: Any) -> Checked:
    """``check``'s value, or the command ends with its one line (exit 2)."""
    try:
        return check(*values)
    except edits.Invalid as exc:
        fail(str(exc), 2)


def switch(kind: str, find: Callable[[Session, str], Any], name: str, dsn: str, on: bool) -> None:
    """Enable or disable the webhook or rule ``name`` (``find`` looks it up by name)."""
    with admin_session(dsn) as db:
        named(kind, find, db, name).enabled = on
    out.print(f"{kind} {name} {'enabled' if on else 'disabled'}", highlight=False)


def remove(
    kind: str,
    find: Callable[[Session, str], Row | None],
    name: str,
    dsn: str,
    refuse: Callable[[Row], str | None] = lambda row: None,
) -> None:
    """Delete the webhook or rule ``name``, unless ``refuse`` says why not."""
    with admin_session(dsn) as db:
        row = named(kind, find, db, name)
        why_not = refuse(row)
        if why_not:
            fail(why_not, 2)
        db.delete(row)
    out.print(f"{kind} {name} removed", highlight=False)


def named(kind: str, find: Callable[[Session, str], Row | None], db: Session, name: str) -> Row:
    """The webhook or rule ``name``, or the command ends saying there is none."""
    row = find(db, name)
    if row is None:
        fail(f"no {kind} named {name!r} (relay {kind} list shows them)", 2)
    return row
