"""Every command, given each kind of bad input, answers in one line: no traceback, the problem
and its fix, exit 2 for what running it again cannot change."""

from __future__ import annotations

import socket
import subprocess
import sys
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import psycopg
import pytest
import typer.main
from psycopg.conninfo import make_conninfo

from relay import sqlfiles
from relay.cli.main import app, main
from relay.store import Store
from support.cli import relay

# Every subcommand that talks to a database, with arguments that are otherwise fine.
DATABASE_COMMANDS = [
    ["install"],
    ["uninstall", "--yes"],
    ["track", "t"],
    ["untrack", "t"],
    ["tracked"],
    ["run"],
    ["status"],
    ["retry", "--id", "1"],
    ["purge", "--older-than", "1d"],
    ["backfill", "public.t"],
    ["replay", "--webhook", "w", "--since", "1h"],
    ["preview", "--rule", "r", "--outbox-id", "1"],
    ["webhook", "add", "w", "--url", "http://127.0.0.1:9/"],
    ["webhook", "list"],
    ["webhook", "show", "w"],
    ["webhook", "remove", "w"],
    ["rule", "add", "r", "--webhook", "w", "--table", "public.t"],
    ["rule", "list"],
    ["rule", "show", "r"],
    ["rule", "remove", "r"],
    ["webhook", "disable", "w"],
    ["rule", "enable", "r"],
    ["webhook", "edit", "w", "--url", "http://127.0.0.1:9/"],
    ["rule", "edit", "r", "--event", "insert"],
    ["rules", "check"],
]
ALL_COMMANDS = [
    *DATABASE_COMMANDS,
    ["config"],
    ["receive"],
    ["demo"],
    ["sql", "install"],
    ["sql", "service-role"],
]


def one_line(done: subprocess.CompletedProcess[str], code: int, *words: str) -> str | None:
    """What is wrong with how a command failed, or None."""
    lines = done.stderr.strip().splitlines()
    if "Traceback" in done.stderr or len(lines) != 1 or not lines[0].startswith("error: "):
        return f"not one 'error:' line: {done.stderr!r}"
    if done.returncode != code:
        return f"exit {done.returncode}, not {code}: {lines[0]}"
    missing = [w for w in words if w not in lines[0]]
    return f"{lines[0]!r} does not say {missing}" if missing else None


def check(
    commands: Iterable[Sequence[str]],
    code: int,
    *words: str,
    dsn: str | None = None,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> None:
    problems = {}
    for command in commands:
        done = relay(*command, *extra, dsn=dsn, env=env)
        problem = one_line(done, code, *words)
        if problem:
            problems[" ".join(command)] = problem
    assert problems == {}


def test_an_unknown_option() -> None:
    check(ALL_COMMANDS, 2, "No such option: --bogus", "--help", extra=["--bogus"])


@pytest.mark.parametrize("given", ["--dsn", "RELAY_DSN"])
def test_a_connection_string_libpq_cannot_read_without_showing_the_password(given: str) -> None:
    """libpq's own message quotes the string: the password must not reach the terminal."""
    dsn = "host=db password=top secret"
    problems = {}
    for command in DATABASE_COMMANDS:
        done = relay(*command, "--dsn", dsn) if given == "--dsn" else relay(*command, dsn=dsn)
        problem = one_line(done, 2, "not a connection string")
        if problem or "secret" in done.stderr + done.stdout:
            problems[" ".join(command)] = problem or "shows the password"
    assert problems == {}
    check(DATABASE_COMMANDS, 2, "not a connection string", dsn="mysql://x@y/z")


def test_an_empty_connection_string_is_refused_not_taken_for_libpq_defaults() -> None:
    """``--dsn ""`` would reach the local socket's database named after the OS user: found by
    an attack run that installed and uninstalled relay there. Refused before connecting; an
    empty RELAY_DSN (``RELAY_DSN=`` in an env file) counts as unset."""
    problems = {}
    for command in DATABASE_COMMANDS:
        for empty in ("", "  "):
            done = relay(*command, "--dsn", empty)
            problem = one_line(done, 2, "is empty", "'postgresql://'")
            if problem:
                problems[f"{' '.join(command)} --dsn {empty!r}"] = problem
    assert problems == {}
    unset = relay("run", env={"RELAY_DSN": ""})
    assert one_line(unset, 2, "no database given") is None


def test_a_server_that_is_not_there() -> None:
    dead = "postgresql://postgres@127.0.0.1:1/none"
    # relay run waits for a server that is down: it is the one command that does not give up.
    check([c for c in DATABASE_COMMANDS if c != ["run"]], 2, "cannot connect", dsn=dead)


def test_a_database_without_relay(db_dsn: str) -> None:
    commands = [c for c in DATABASE_COMMANDS if c[0] not in ("install", "uninstall")]
    check(commands, 2, "relay is not installed", "relay install", dsn=db_dsn)


def test_a_role_without_the_service_grants(db_dsn: str, make_role: Callable[..., str]) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        Store(conn).install()
    stranger = make_conninfo(db_dsn, user=make_role("stranger"))
    commands = [c for c in DATABASE_COMMANDS if c[0] not in ("install", "uninstall")]
    check(commands, 2, "permission denied", "sql/service_role.sql", dsn=stranger)


def test_relay_run_as_a_role_that_sees_the_schema_but_not_the_rules(
    db_dsn: str, make_role: Callable[..., str]
) -> None:
    """Past the start-up check (it may read relay.migrations) but without the other grants:
    relay run used to wait for rules it could never read, logging a timeout every 30 s. It
    stops at once, saying which grant is missing, with exit 2, with one process or several."""
    role = make_role("halfway")
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        Store(conn).install()
        conn.execute(f'GRANT USAGE ON SCHEMA relay TO "{role}"')
        conn.execute(f'GRANT SELECT ON relay.migrations TO "{role}"')
    halfway = make_conninfo(db_dsn, user=role)
    check([["run"]], 2, "permission denied", "sql/service_role.sql", dsn=halfway)
    several = relay("run", "--processes", "2", dsn=halfway)
    assert several.returncode == 2
    errors = [line for line in several.stderr.splitlines() if line.startswith("error:")]
    # The process that failed first (the other may be stopped before it fails), then the parent.
    assert len(errors) in (2, 3), several.stderr
    assert all("sql/service_role.sql" in line for line in errors[:-1])
    assert "exited with code 2" in errors[-1] and "stopping all of them" in errors[-1]


def test_a_bad_setting(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        Store(conn).install()
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("SELECT relay.track('t')")
        conn.execute("INSERT INTO relay.webhooks (name, payload_url) VALUES ('w', 'http://x/')")
        conn.execute(
            "INSERT INTO relay.event_rules (name, tables, webhook_id)"
            " SELECT 'r', ARRAY['public.t'], id FROM relay.webhooks"
        )
        conn.execute("INSERT INTO t VALUES (1)")
    readers = [["run"], ["config"], ["preview", "--rule", "r", "--outbox-id", "1"]]
    for name, value, says in [
        ("RELAY_BATCH_SIZE", "0", "must be a whole number from 1 to 10000, not '0'"),
        ("RELAY_METRICS_ADDRESS", "9287", "is not host:port"),
    ]:
        check(readers, 2, name, says, dsn=db_dsn, env={name: value})


def test_made_up_rows_that_are_not_json_objects(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        Store(conn).install()
    for new, says in [("{id:9}", "--new is not JSON"), ("[1]", "--new must be a JSON object")]:
        command = ["preview", "--rule", "r", "--table", "public.t", "--new", new]
        check([command], 2, says, dsn=db_dsn)


def test_a_name_taken_twice(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        Store(conn).install()
    assert relay("webhook", "add", "w", "--url", "http://127.0.0.1:9/", dsn=db_dsn).returncode == 0
    again = ["webhook", "add", "w", "--url", "http://127.0.0.1:9/"]
    check([again], 2, "(name)=(w) already exists", "Choose another name", dsn=db_dsn)


def test_a_receiver_port_that_cannot_be_listened_on() -> None:
    check([["receive", "--port", "99999"]], 2, "Invalid value for '--port'")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = relay("receive", "--port", port)
    assert one_line(done, 2, "cannot listen on", "Address already in use") is None
    assert "listening" not in done.stdout


def test_names_with_brackets_are_text_not_styles(db_dsn: str) -> None:
    """A name, URL or template may hold "[/]" or "[bold]": printed as written, never a crash."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        Store(conn).install()
    added = relay("webhook", "add", "[/]x", "--url", "http://127.0.0.1:9/[bold]", dsn=db_dsn)
    assert added.returncode == 0 and added.stdout == "webhook [/]x added\n", added
    shown = relay("webhook", "show", "[/]x", dsn=db_dsn)
    assert (
        "name: [/]x\n" in shown.stdout
        and "payload_url: http://127.0.0.1:9/[bold]\n" in shown.stdout
    )
    assert "[/]x" in relay("webhook", "list", dsn=db_dsn).stdout
    assert one_line(relay("webhook", "show", "[bold]y", dsn=db_dsn), 2, "'[bold]y'") is None


def test_names_with_control_characters_are_refused_in_one_line(db_dsn: str) -> None:
    """A line break or an escape sequence in a name would split log lines and write to the
    operator's terminal: refused by the database, whoever writes the row."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        Store(conn).install()
    for name in ["esc\x1b[31mred", "two\nlines", "c1\x9bx", "sep\u2028x"]:
        done = relay("webhook", "add", name, "--url", "http://127.0.0.1:9/", dsn=db_dsn)
        assert one_line(done, 2, "holds a control character or a line break") is None
        assert "\x1b" not in done.stderr
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO relay.webhooks (name, payload_url) VALUES ('w', 'http://x/')")
        with pytest.raises(psycopg.errors.CheckViolation, match="event rule name"):
            conn.execute(
                "INSERT INTO relay.event_rules (name, tables, webhook_id)"
                " SELECT E'r\\n', ARRAY['public.t'], id FROM relay.webhooks"
            )
        assert conn.execute("SELECT count(*) FROM relay.webhooks").fetchone() == (1,)
        # A name stored before 0017 (its check bypassed here) is shown escaped.
        conn.execute("ALTER TABLE relay.webhooks DISABLE TRIGGER check_name")
        conn.execute("UPDATE relay.webhooks SET name = E'old\\x1b[2J\\nname'")
    for command in (["webhook", "list"], ["status"], ["webhook", "show", "old\x1b[2J\nname"]):
        shown = relay(*command, dsn=db_dsn)
        assert shown.returncode == 0, shown
        assert "\x1b" not in shown.stdout and "old\\x1b[2J" in shown.stdout


def _commands(group: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    """Every command under ``group`` (a click group of typer's), by its path."""
    for name, command in getattr(group, "commands", {}).items():
        if getattr(command, "commands", None):
            yield from _commands(command, [*path, name])
        else:
            yield [*path, name], command


def numeric_options() -> list[tuple[list[str], str, float | None, float | None]]:
    """Every number a command takes: (the command with its other arguments, the option, its
    lowest and highest value)."""
    found = []
    for path, command in _commands(typer.main.get_command(app), []):
        base = next((c for c in ALL_COMMANDS if c[: len(path)] == path), path)
        for param in command.params:
            annotation = param.type_descriptor.annotation
            if typing.get_origin(annotation) is list:
                (annotation,) = typing.get_args(annotation)
            if annotation in (int, float):
                found.append((base, param.opts[0], param.min, param.max))
    return found


def in_process(args: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``relay *args`` in this process (quick: the values are refused before anything runs; a
    value let through meets an unreachable database, and says so instead of the option)."""
    argv = sys.argv
    sys.argv = [
        "relay",
        *args,
        *(["--dsn", "postgresql://127.0.0.1:1/x"] if _takes_dsn(args) else []),
    ]
    try:
        with pytest.raises(SystemExit) as ended:
            main()
    finally:
        sys.argv = argv
    code = ended.value.code
    return code if isinstance(code, int) else 1, capsys.readouterr().err


def _takes_dsn(args: Sequence[str]) -> bool:
    return list(args[:1]) not in (["config"], ["receive"], ["demo"], ["sql"])


def test_every_number_a_command_takes_has_a_range(capsys: pytest.CaptureFixture[str]) -> None:
    """`relay status --errors -1` and `--errors 99999999999999999999`, `relay retry --id
    99999999999999999999999` ended with the database's words and exit 1. Every numeric option
    of every command (an option added later too) has both bounds, and refuses what is past
    them, not a number, or not finite, in one line, exit 2."""
    options = numeric_options()
    assert len(options) >= 20, options
    problems = {}
    for base, option, low, high in options:
        if low is None or high is None:
            problems[f"{base[0]} {option}"] = "no range"
            continue
        bad = ["-1", "99999999999999999999", "x", "nan", "inf", "-inf", "1e400", "", "1,5"]
        bad += [str(high * 2 + 1), str(low - 1)] + (["0"] if low > 0 else [])
        for value in bad:
            code, said = in_process([*base, option, value], capsys)
            lines = said.strip().splitlines()
            if code != 2 or len(lines) != 1 or f"Invalid value for '{option}'" not in lines[0]:
                problems[f"{' '.join(base)} {option} {value!r}"] = f"exit {code}: {said!r}"
    assert problems == {}


def test_every_age_and_time_a_command_takes_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    """An age past a century took now() - interval out of PostgreSQL's range: `relay purge
    --older-than 5000000w` said "timestamp out of range", exit 1."""
    problems = {}
    for base, option in [
        (["retry"], "--since"),
        (["purge"], "--older-than"),
        (["replay", "--webhook", "w"], "--since"),
        (["replay", "--webhook", "w", "--since", "1d"], "--until"),
    ]:
        for value in [
            "-1d",
            "1e400d",
            "99999999999999999999w",
            "36501d",
            "5000000w",
            "nan",
            "inf",
            "x",
            "",
            "10000-01-01",
            "2026-13-01",
        ]:
            code, said = in_process([*base, option, value], capsys)
            lines = said.strip().splitlines()
            if code != 2 or len(lines) != 1 or option not in lines[0]:
                problems[f"{' '.join(base)} {option} {value!r}"] = f"exit {code}: {said!r}"
    assert problems == {}


def test_a_schema_older_or_newer_than_the_relay(db_dsn: str) -> None:
    """`relay status` against a database at migration 10 ended in a raw SQL error: every
    command but install and uninstall says which version it found and to run `relay install`."""
    with psycopg.connect(db_dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(sqlfiles.read("bootstrap.sql").encode())
        for migration in sqlfiles.migrations()[:10]:
            conn.execute(migration.sql.encode())
    commands = [c for c in DATABASE_COMMANDS if c[0] not in ("install", "uninstall")]
    latest = sqlfiles.latest_version()
    check(commands, 2, f"relay schema is at version 10, this relay needs {latest}", dsn=db_dsn)
    check(commands, 2, "run `relay install` as the schema's owner", dsn=db_dsn)
    upgraded = relay("install", dsn=db_dsn)
    assert upgraded.returncode == 0, upgraded.stderr
    assert relay("status", dsn=db_dsn).returncode == 0
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO relay.migrations (version, name) VALUES (%s, 'future')", (latest + 1,)
        )
    newer = [
        ["status"],
        ["webhook", "list"],
        ["run"],
        ["preview", "--rule", "r", "--outbox-id", "1"],
    ]
    check(newer, 2, f"is at version {latest + 1}, newer than this relay", dsn=db_dsn)
    assert relay("uninstall", "--yes", dsn=db_dsn).returncode == 0


def test_every_webhook_and_rule_command_refuses_bad_input_with_exit_2(relay_dsn: str) -> None:
    """docs/rules.md and docs/operations.md promise exit 2 for a bad option; a value the
    database's checks refused (`webhook add --method FOO`), an unset --secret-env and a webhook
    still in use ended with exit 1."""
    url = ["--url", "http://127.0.0.1:9/"]
    assert relay("webhook", "add", "w", *url, dsn=relay_dsn).returncode == 0
    rule = ["--webhook", "w", "--table", "public.t"]
    assert relay("rule", "add", "r", *rule, dsn=relay_dsn).returncode == 0
    webhook_options = [
        (["--method", "FOO"], 'unknown http_method "FOO"'),
        (["--signature", "rot13"], 'unknown signature "rot13"'),
        (["--url", "ftp://127.0.0.1/x"], "is not an http:// or https:// URL"),
        (["--secret-env", "RELAY_TEST_UNSET_SECRET"], "RELAY_TEST_UNSET_SECRET is not set"),
        (["--ca-file", "/etc/ssl/x.pem", "--no-ssl-verification"], "ssl_verification is off"),
        (["--max-attempts", "0"], "'--max-attempts'"),
        (["--retry-base-seconds", "9", "--retry-max-seconds", "1"], "is below retry_base"),
        (["--header", "no colon here"], "additional_headers"),
    ]
    commands = []
    for options, says in webhook_options:
        commands.append((["webhook", "add", "w2", *url, *options], says))
        if "--url" not in options:
            commands.append((["webhook", "edit", "w", *options], says))
    for options, says in [
        (["--table", "orders"], "is not a schema-qualified table name"),
        (["--event", "upsert"], 'unknown event "upsert"'),
        (["--conditions", '{"attr": "data.x", "op": "nope", "value": 1}'], "nope"),
        (["--conditions", "{not json"], "--conditions is not valid JSON"),
        (["--action-data", "[1]"], "action_data must be a JSON object"),
        (["--webhook", "nosuch"], "no webhook named 'nosuch'"),
    ]:
        add_options = options if "--webhook" in options else ["--webhook", "w", *options]
        if "--table" not in add_options:
            add_options += ["--table", "public.t"]
        commands.append((["rule", "add", "r2", *add_options], says))
        commands.append((["rule", "edit", "r", *options], says))
    commands += [
        (["webhook", "add", "bad\nname", *url], "holds a control character"),
        (["rule", "add", "bad\x1bname", *rule], "holds a control character"),
        (["webhook", "remove", "w"], "is used by rule(s) r"),
        (["webhook", "show", "nosuch"], "no webhook named 'nosuch'"),
        (["rule", "enable", "nosuch"], "no rule named 'nosuch'"),
        (["preview", "--rule", "r"], "give --outbox-id N, or --table T"),
    ]
    problems = {}
    for command, says in commands:
        problem = one_line(relay(*command, dsn=relay_dsn), 2, says)
        if problem:
            problems[" ".join(command)] = problem
    assert problems == {}
    listed = relay("webhook", "list", dsn=relay_dsn).stdout
    assert "w2" not in listed and "POST" in listed  # nothing refused was stored
