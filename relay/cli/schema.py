"""``relay install``, ``relay uninstall`` and ``relay sql``: putting relay into a database."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from relay import sqlfiles
from relay.cli.common import (
    Dsn,
    fail,
    group,
    out,
)
from relay.cli.common import database as _database
from relay.store import NewerDefinitions, NewerSchema, Store


def install(dsn: Dsn) -> None:
    """Create or upgrade schema relay in an existing database (safe to run again)."""
    with _database(dsn, installed=False) as conn:
        before = Store(conn).installed_version()
        try:
            installed = Store(conn).install()
        except (NewerSchema, NewerDefinitions) as exc:
            fail(str(exc), 2)
    if not installed.migrations:
        more = "; functions and views written again" if installed.definitions else ""
        out.print(f"relay schema is up to date (version {before}){more}", highlight=False)
        return
    for migration in installed.migrations:
        out.print(f"applied {migration.version:04d}_{migration.name}", highlight=False)
    out.print(f"relay schema is at version {installed.migrations[-1].version}", highlight=False)


def uninstall(
    dsn: Dsn,
    yes: Annotated[bool, typer.Option("--yes", help="Really remove it.")] = False,
) -> None:
    """Remove every capture trigger and schema relay, with the outbox and its history."""
    if not yes:
        fail("this drops schema relay and every change it holds; add --yes to confirm", 2)
    with _database(dsn, installed=False) as conn:
        Store(conn).uninstall()
    out.print("relay removed", highlight=False)


sql_app = group("Print the SQL relay runs, for psql, from the installed package.")


@sql_app.command("install")
def sql_install() -> None:
    """Install or upgrade relay (what `relay install` runs): psql "$DSN" -f -."""
    sys.stdout.write(sqlfiles.script("install.sql"))


@sql_app.command("uninstall")
def sql_uninstall() -> None:
    """Remove relay and its capture triggers (what `relay uninstall` runs)."""
    sys.stdout.write(sqlfiles.script("uninstall.sql"))


@sql_app.command("service-role")
def sql_service_role(
    role: Annotated[
        str | None,
        typer.Option(help="The service's login role (else give psql -v role=NAME)."),
    ] = None,
) -> None:
    """The grants `relay run` needs, to run as relay's owner: psql "$DSN" -f -."""
    _role_script(role, "service_role.sql")


@sql_app.command("console-role")
def sql_console_role(
    role: Annotated[
        str | None,
        typer.Option(help="A person's login role (else give psql -v role=NAME)."),
    ] = None,
) -> None:
    """The grants a person needs to use `relay console`, to run as relay's owner:
    psql "$DSN" -f -."""
    _role_script(role, "console_role.sql")


def _role_script(role: str | None, name: str) -> None:
    """Print a grants file, the role set first when given (psql's \\set, quoted)."""
    if role is not None:
        if not role or "\n" in role or "\x00" in role:
            fail("--role: give the name of a login role", 2)
        sys.stdout.write("\\set role '" + role.replace("'", "''") + "'\n")
    sys.stdout.write(sqlfiles.script(name))
