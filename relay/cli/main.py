"""The ``relay`` command line: every command, and how any of them fails.

Each group of commands lives in a module of its own (schema, tables, webhook, rule, rules,
preview, run, operate, backfill, replay, demo, receive, console); this one assembles them, so
``relay --help`` and this file list the same.
"""

from __future__ import annotations

import sys
from typing import Annotated

import psycopg
import typer

from relay._version import __version__
from relay.cli import (
    backfill,
    console,
    demo,
    operate,
    preview,
    receive,
    replay,
    rule,
    rules,
    run,
    schema,
    tables,
    webhook,
)
from relay.cli.common import out, say_error
from relay.db import explain, first_line

app = typer.Typer(
    help="PostgreSQL change-data-capture relay: row changes to signed webhooks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
for command in (
    schema.install,
    schema.uninstall,
    tables.track,
    tables.untrack,
    tables.tracked,
    demo.demo,
    run.run,
    run.config,
    operate.status,
    operate.retry,
    operate.purge,
    backfill.backfill,
    replay.replay,
    receive.receive,
    preview.preview,
    console.console,
):
    app.command()(command)
app.add_typer(webhook.webhook_app, name="webhook")
app.add_typer(rule.rule_app, name="rule")
app.add_typer(rules.rules_app, name="rules")
app.add_typer(schema.sql_app, name="sql")


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


def main() -> None:
    """Every way a command can fail ends in one line on stderr: a usage mistake or a database
    refusal names its fix (exit 2 where running again cannot help); anything else is a bug in
    relay, and says so."""
    try:
        code = app(standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
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
