"""The ``relay`` command line."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from datetime import datetime
from typing import Annotated, Any

import psycopg
import typer
from rich.table import Table

from relay import sqlfiles
from relay._version import __version__
from relay.cli.common import (
    Dsn,
    EnvFile,
    OptionalDsn,
    add_row,
    dsn_of,
    explain,
    fail,
    group,
    load_settings,
    out,
    print_table,
    say_error,
    styled,
)
from relay.cli.common import database as _database
from relay.cli.webhooks import preview, rule_app, rules_app, webhook_app
from relay.db import first_line
from relay.rules import ruleset
from relay.settings import comma_list
from relay.store import Store

app = typer.Typer(
    help="PostgreSQL change-data-capture relay: row changes to signed webhooks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(webhook_app, name="webhook")
app.add_typer(rule_app, name="rule")
app.add_typer(rules_app, name="rules")
app.command()(preview)


def _split(value: str | None) -> list[str] | None:
    return None if value is None else comma_list(value)


def _version_callback(show: bool) -> None:
    if show:
        out.print(f"relay {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Show version."),
    ] = False,
) -> None:
    """PostgreSQL change-data-capture relay: row changes to signed webhooks."""


@app.command()
def install(dsn: Dsn) -> None:
    """Create or upgrade schema relay in an existing database (safe to run again)."""
    with _database(dsn) as conn:
        before = Store(conn).installed_version()
        applied = Store(conn).install()
    if not applied:
        out.print(f"relay schema is up to date (version {before})", highlight=False)
        return
    for migration in applied:
        out.print(f"applied {migration.version:04d}_{migration.name}", highlight=False)
    out.print(f"relay schema is at version {applied[-1].version}", highlight=False)


@app.command()
def uninstall(
    dsn: Dsn,
    yes: Annotated[bool, typer.Option("--yes", help="Really remove it.")] = False,
) -> None:
    """Remove every capture trigger and schema relay, with the outbox and its history."""
    if not yes:
        fail("this drops schema relay and every change it holds; add --yes to confirm", 2)
    with _database(dsn) as conn:
        Store(conn).uninstall()
    out.print("relay removed", highlight=False)


@app.command()
def track(
    table: Annotated[str, typer.Argument(help="Table to capture, e.g. public.orders.")],
    dsn: Dsn,
    events: Annotated[
        str | None,
        typer.Option(help="Comma-separated subset of insert,update,delete,truncate (default all)."),
    ] = None,
    update_columns: Annotated[
        str | None,
        typer.Option(help="Record an UPDATE only when one of these columns changed."),
    ] = None,
    exclude_columns: Annotated[
        str | None,
        typer.Option(help="Columns never written to the outbox (secrets, tokens)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help='Model name webhooks see, e.g. dcim.device: model "device", object_type '
            '"dcim.device" (default: the table name).'
        ),
    ] = None,
) -> None:
    """Capture changes to TABLE into the outbox (running it again replaces the options)."""
    with _database(dsn) as conn:
        Store(conn).track(
            table,
            events=_split(events),
            update_columns=_split(update_columns),
            exclude_columns=_split(exclude_columns),
            model=model,
        )
    out.print(f"tracking {table}", highlight=False)


@app.command()
def untrack(
    table: Annotated[str, typer.Argument(help="Table to stop capturing.")],
    dsn: Dsn,
) -> None:
    """Stop capturing TABLE (changes already in the outbox stay)."""
    with _database(dsn) as conn:
        was_tracked = Store(conn).untrack(table)
    out.print(f"{'untracked' if was_tracked else 'was not tracked:'} {table}", highlight=False)


@app.command()
def tracked(dsn: Dsn) -> None:
    """List the tracked tables and their options."""
    with _database(dsn) as conn:
        rows = Store(conn).tracked()
    table = Table(
        "table",
        "model",
        "events",
        "update columns",
        "excluded",
        "primary key",
        "partitioned",
        "capture",
    )
    for row in rows:
        add_row(
            table,
            ruleset.rule_table(row.schema_name, row.table_name),
            row.model or "-",
            ",".join(row.events),
            ",".join(row.update_columns or []) or "any",
            ",".join(row.exclude_columns) or "-",
            ",".join(row.pk_columns) or "(none)",
            "yes" if row.partitioned else "no",
            "current" if row.capture_current else "catching up after DDL",
        )
    print_table(table)


@app.command()
def demo(
    dsn: Annotated[
        str | None,
        typer.Option(
            "--dsn",
            envvar="RELAY_DSN",
            help="Server to make the scratch database on (default: 127.0.0.1:5432, or a "
            "throwaway cluster).",
        ),
    ] = None,
) -> None:
    """Show relay at work on a scratch database that is dropped afterwards."""
    from relay.cli import demo as demo_module
    from relay.cli.tempcluster import NoPostgres

    try:
        demo_module.run(styled, dsn)
    except NoPostgres as exc:
        fail(str(exc), 2)


@app.command()
def run(dsn: OptionalDsn = None, env_file: EnvFile = None) -> None:
    """Deliver changes to webhooks until SIGTERM or SIGINT (knobs: RELAY_* variables)."""
    from relay.db import one_line
    from relay.service.process import CannotServe, serve

    settings = load_settings(env_file)
    database = dsn_of(dsn, settings)
    _preflight(database)
    try:
        serve(settings, database)
    except CannotServe as exc:
        fail(str(exc), 2)
    except psycopg.errors.InsufficientPrivilege as exc:
        fail(
            f"the database refused an operation: {one_line(exc)} (grant the service role its "
            "rights with sql/service_role.sql, again after each upgrade)",
            2,
        )


def _preflight(dsn: str) -> None:
    """Refuse to start on what waiting cannot fix: a server that says no to us, relay not
    installed, or a schema older or newer than this relay. A server that is down is waited
    for (relay run retries with backoff)."""
    import psycopg

    from relay.db import one_line, refused

    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        if refused(exc):
            fail(f"the database refused the relay: {one_line(exc)}", 2)
        return
    with conn:
        version = Store(conn).installed_version()
    latest = sqlfiles.latest_version()
    if version == 0:
        fail(
            "relay is not installed in this database (or this role may not see schema relay: "
            "run sql/service_role.sql for it): run `relay install` as the database's owner",
            2,
        )
    if version < latest:
        fail(
            f"relay schema is at version {version}, this relay needs {latest}: run "
            "`relay install` as the schema's owner (then sql/service_role.sql for the service)",
            2,
        )
    if version > latest:
        fail(
            f"relay schema is at version {version}, newer than this relay ({latest}): "
            "upgrade the relay",
            2,
        )


@app.command()
def config(
    env_file: EnvFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the effective settings (environment, then env file, then defaults), secrets
    masked."""
    shown = load_settings(env_file).shown()
    if as_json:
        out.print_json(data=shown)
        return
    table = Table("setting", "value")
    for name, value in shown.items():
        add_row(table, name, "" if value is None else str(value))
    print_table(table)


def _retries(webhook: dict[str, Any]) -> str:
    """A webhook's own retry policy in a few words; "relay's" where the relay settings decide."""
    attempts, base, cap = (
        webhook[key] for key in ("max_attempts", "retry_base_seconds", "retry_max_seconds")
    )
    if attempts is None and base is None and cap is None:
        return "relay's"
    relays = "relay's"
    return (
        f"{relays if attempts is None else attempts} attempts, "
        f"first after {relays if base is None else f'{base:g} s'}, "
        f"at most {relays if cap is None else f'{cap:g} s'}"
    )


@app.command()
def status(
    dsn: Dsn,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    errors: Annotated[int, typer.Option(help="How many recent errors to show.")] = 5,
) -> None:
    """Backlog, per-webhook counts, recent errors and the relays at work."""
    with _database(dsn) as conn:
        current = Store(conn).status(errors)
    if as_json:
        out.print_json(data=_plain(dataclasses.asdict(current)))
        return
    b = current.backlog
    oldest = b["oldest_pending_seconds"]
    out.print(
        f"[bold]backlog[/] {b['pending']} pending ({b['not_matched_yet']} not matched yet), "
        f"oldest {'-' if oldest is None else f'{oldest:.1f} s'}; "
        f"{b['delivered']} delivered, {b['failed']} failed, {b['skipped']} skipped",
        highlight=False,
        markup=True,
    )
    hooks = Table(
        "webhook", "enabled", "pending", "delivered", "failed", "last delivered", "retries"
    )
    for w in current.webhooks:
        add_row(
            hooks,
            w["name"],
            "yes" if w["enabled"] else "no",
            str(w["pending"]),
            str(w["delivered"]),
            str(w["failed"]),
            _when(w["last_delivered_at"]),
            _retries(w),
        )
    print_table(hooks)
    if current.errors:
        recent = Table("when", "webhook", "change", "attempt", "status", "error")
        for e in current.errors:
            add_row(
                recent,
                _when(e["attempted_at"]),
                e["webhook"],
                str(e["outbox_id"]),
                str(e["attempt"]),
                str(e["status_code"] or "-"),
                e["error"],
            )
        print_table(recent)
    relays = Table("relay", "connections", "since", "leases held")
    for r in current.relays:
        add_row(relays, r["relay_id"], str(r["connections"]), _when(r["since"]), str(r["leases"]))
    if current.relays:
        print_table(relays)
    else:
        out.print("no relay is connected", highlight=False)


def _plain(value: Any) -> Any:
    """JSON's types: times as ISO 8601."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _when(moment: object) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if hasattr(moment, "strftime") else "-"


@app.command()
def retry(
    dsn: Dsn,
    webhook: Annotated[
        str | None, typer.Option(help="Only changes that failed for this webhook.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only changes made since then: an age (2h, 7d) or a time (ISO 8601)."),
    ] = None,
    change_id: Annotated[int | None, typer.Option("--id", help="Only this change.")] = None,
) -> None:
    """Send failed changes again, only to the webhooks that did not get them."""
    from relay.cli.ages import parse_since

    try:
        moment = parse_since(since) if since else None
    except ValueError as exc:
        fail(f"--since: {exc}", 2)
    with _database(dsn) as conn:
        store = Store(conn)
        if webhook is not None and not store.webhook_exists(webhook):
            fail(f"no webhook named {webhook!r}")
        requeued = store.retry_failed(change_id=change_id, since=moment, webhook=webhook)
    out.print(f"requeued {requeued} failed change{'' if requeued == 1 else 's'}", highlight=False)


@app.command()
def purge(
    dsn: Dsn,
    older_than: Annotated[
        str, typer.Option("--older-than", help="Age of the finished changes to delete: 7d, 12h...")
    ],
    batch: Annotated[int, typer.Option(min=1, help="Changes deleted per transaction.")] = 5000,
) -> None:
    """Delete finished changes (delivered, failed, skipped) older than an age, with their
    deliveries and attempts, in short transactions; pending changes are never touched."""
    from rich.progress import Progress

    from relay.cli.ages import parse_age
    from relay.delivery import maintenance

    try:
        seconds = parse_age(older_than).total_seconds()
    except ValueError as exc:
        fail(f"--older-than: {exc}", 2)
    with _database(dsn) as conn:
        store = Store(conn)
        total = store.count_purgeable(seconds)

        async def delete(limit: int) -> int:
            # The worker's purge loop, on this command's blocking connection: nothing else
            # runs on this event loop.
            return store.purge_changes(seconds, limit)

        with Progress(console=out, transient=True) as progress:
            task = progress.add_task("deleting", total=total)
            deleted, _ = asyncio.run(
                maintenance.purge(delete, batch, progress=lambda n: progress.advance(task, n))
            )
    out.print(
        f"deleted {deleted} finished change{'' if deleted == 1 else 's'} older than {older_than}",
        highlight=False,
    )


@app.command()
def receive(
    port: Annotated[int, typer.Option(help="Port to listen on (1-65535).")] = 9000,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    secret: Annotated[
        str | None,
        typer.Option(help="Check each request's signature with this secret (say valid/invalid)."),
    ] = None,
    status: Annotated[int, typer.Option(help="HTTP status to answer with.")] = 200,
) -> None:
    """A webhook receiver for trying relay out: prints every request it gets."""
    from relay.cli.receive import serve

    if not 100 <= status <= 599:
        fail(f"--status {status} is not an HTTP status", 2)
    if not 1 <= port <= 65535:
        fail(f"--port {port} is not a TCP port: give one from 1 to 65535", 2)
    try:
        serve(host, port, secret, status)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else first_line(exc)
        fail(f"cannot listen on {host}:{port}: {reason}: give another --port or --host", 2)


sql_app = group("Print the SQL relay runs, for psql, from the installed package.")
app.add_typer(sql_app, name="sql")


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
    if role is not None:
        if not role or "\n" in role or "\x00" in role:
            fail("--role: give the name of a login role", 2)
        sys.stdout.write("\\set role '" + role.replace("'", "''") + "'\n")
    sys.stdout.write(sqlfiles.script("service_role.sql"))


def main() -> None:
    """Every way a command can fail ends in one line on stderr: a usage mistake or a database
    refusal names its fix (exit 2 where running again cannot help); anything else is a bug in
    relay, and says so."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        _last_words("interrupted", 130)
    except psycopg.Error as exc:
        _last_words(*explain(exc))
    except Exception as exc:
        # A usage mistake (Typer's command-line parser's exceptions: they know how to say it and
        # their exit code); else the last line of defence: no traceback reaches the operator.
        say, usage_code = getattr(exc, "format_message", None), getattr(exc, "exit_code", None)
        if callable(say) and isinstance(usage_code, int):
            message, ctx = str(say()), getattr(exc, "ctx", None)
            if not message:  # a group called with no command: it printed its help
                sys.exit(usage_code)
            where = ctx.command_path if ctx is not None else "relay"
            _last_words(f"{message} (see `{where} --help`)", usage_code)
        _last_words(
            f"unexpected {type(exc).__name__}: {first_line(exc)} (a bug in relay: please report "
            "it with the command that caused it)",
            1,
        )
    sys.exit(code if isinstance(code, int) else 0)


def _last_words(message: str, code: int) -> None:
    say_error(message)
    sys.exit(code)
