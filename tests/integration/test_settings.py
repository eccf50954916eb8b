"""Settings as an operator gives them: environment, env file, and `relay config`."""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from pydantic import ByteSize

from relay import settings, sqlfiles
from relay.db import Conn
from relay.settings import Settings, SettingsError
from relay.store import Store
from relay.tempcluster import find_server_binaries, start_temp_cluster
from support.cli import relay_env as relay
from support.db import one_row
from support.hooks import add
from support.receivers import receiver
from support.worker import running, sql, until


def test_config_shows_the_effective_settings_with_the_password_masked(tmp_path: Path) -> None:
    env_file = tmp_path / "relay.env"
    env_file.write_text(
        "RELAY_DSN=postgresql://relay:s3cr3t-pw@db.example/app\n"
        "RELAY_BATCH_SIZE=250\n"
        "RELAY_POLL_INTERVAL=5\n"
    )
    result = relay("config", "--env-file", str(env_file), "--json", RELAY_POLL_INTERVAL="0.5")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["RELAY_BATCH_SIZE"] == 250  # from the file
    assert shown["RELAY_POLL_INTERVAL"] == 0.5  # the environment wins over the file
    assert shown["RELAY_WEBHOOK_CONCURRENCY"] == 16  # the default
    assert "s3cr3t-pw" not in result.stdout
    assert "password=******" in shown["RELAY_DSN"] and "host=db.example" in shown["RELAY_DSN"]
    table = relay("config", RELAY_DSN="host=db password=s3cr3t-pw dbname=app")
    assert table.returncode == 0 and "s3cr3t-pw" not in table.stdout
    assert "RELAY_ATTEMPT_RETENTION_DAYS" in table.stdout


def test_a_bad_setting_stops_with_one_line_naming_it_and_exit_2(tmp_path: Path) -> None:
    for args, env, named in [
        (["config"], {"RELAY_BATCH_SIZE": "many"}, "RELAY_BATCH_SIZE"),
        (["run"], {"RELAY_DSN": "dbname=x", "RELAY_LOG_FORMAT": "xml"}, "RELAY_LOG_FORMAT"),
        (["run"], {}, "RELAY_DSN"),
        (["run", "--env-file", str(tmp_path / "missing.env")], {}, "missing.env"),
        (["run"], {"RELAY_DSN": "dbname=x", "RELAY_METRICS_ADDRESS": "9089"}, "METRICS_ADDRESS"),
    ]:
        result = relay(*args, **env)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0]


def test_a_misspelled_setting_is_refused_with_the_closest_name(tmp_path: Path) -> None:
    env_file = tmp_path / "relay.env"
    env_file.write_text("RELAY_DSN=dbname=x\nRELAY_BATCHSIZE=5\n")
    for args, env, said in [
        (["config"], {"RELAY_MAX_ATEMPTS": "3"}, "did you mean RELAY_MAX_ATTEMPTS?"),
        (["run", "--env-file", str(env_file)], {}, "did you mean RELAY_BATCH_SIZE?"),
        (["config"], {"RELAY_COLOUR": "blue"}, "RELAY_COLOUR is not a relay setting"),
    ]:
        result = relay(*args, **env)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and said in lines[0], lines
    # Variables templates may read can share the prefix; the test harness's own are not settings.
    allowed = relay(
        "config",
        RELAY_TOKEN_A="x",
        RELAY_TEMPLATE_ENV_ALLOW="RELAY_TOKEN_*",
        RELAY_TEST_DSN="dbname=x",
    )
    assert allowed.returncode == 0, allowed.stderr


def test_a_metrics_address_in_use_stops_the_relay_with_exit_2(relay_dsn: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = relay("run", RELAY_DSN=relay_dsn, RELAY_METRICS_ADDRESS=address)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: RELAY_METRICS_ADDRESS: cannot listen on {address}: Address already in use"
    ]


def test_relay_run_refuses_a_database_it_cannot_use(db_dsn: str, server_dsn: str) -> None:
    unknown_role = make_conninfo(db_dsn, user="no_such_role_xyz")
    cases = [
        (unknown_role, "the database refused the relay: connection failed"),
        (db_dsn, "relay is not installed in this database"),
    ]
    for dsn, message in cases:
        result = relay("run", RELAY_DSN=dsn)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        Store(conn).install()
        conn.execute(
            "DELETE FROM relay.migrations WHERE version = %s", (sqlfiles.latest_version(),)
        )
    old = relay("run", RELAY_DSN=db_dsn)
    assert old.returncode == 2
    assert f"needs {sqlfiles.latest_version()}: run `relay install`" in old.stderr


def test_relay_run_refuses_a_wrong_password() -> None:
    """On a private cluster that asks for passwords (the shared one trusts 127.0.0.1)."""
    if find_server_binaries() is None:
        pytest.skip("no PostgreSQL server binaries to start a private cluster")
    cluster = start_temp_cluster()
    try:
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            conn.execute("CREATE ROLE relay_pw LOGIN PASSWORD 'right-password'")
            hba = Path(one_row(conn.execute("SHOW hba_file"))[0])
        hba.write_text("host all relay_pw 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        cluster.reload()
        wrong = make_conninfo(cluster.dsn, user="relay_pw", password="wrong-password")
        result = relay("run", RELAY_DSN=wrong)
    finally:
        cluster.stop()
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "the database refused the relay" in lines[0]
    assert "password authentication failed" in lines[0]
    assert "wrong-password" not in result.stderr


NUMERIC = [
    name
    for name, field in Settings.model_fields.items()
    if field.annotation in (int, float, ByteSize)
]
PAST_ANY_RANGE = ["-1", "1e300", "inf", "-inf", "nan", "99999999999999999999999", "many", ""]


def test_every_numeric_setting_has_a_finite_range() -> None:
    """A numeric setting added later without a range fails here: no field may hold a number of
    another type (an optional one, say), and each has both bounds, finite."""
    for name, field in Settings.model_fields.items():
        if name not in NUMERIC:
            assert not any(
                kind in str(field.annotation) for kind in ("int", "float", "Decimal", "Byte")
            ), f"{name}: a number of a type without a range check ({field.annotation})"
    assert len(NUMERIC) == 17
    for name in NUMERIC:
        field = Settings.model_fields[name]
        bounds = [m for m in field.metadata if hasattr(m, "ge") or hasattr(m, "le")]
        low = [m.ge for m in bounds if getattr(m, "ge", None) is not None]
        high = [m.le for m in bounds if getattr(m, "le", None) is not None]
        assert len(low) == len(high) == 1, f"{name} needs ge= and le="
        assert math.isfinite(low[0]) and math.isfinite(high[0]) and low[0] <= high[0]
        if field.annotation is float:
            assert any(getattr(m, "allow_inf_nan", True) is False for m in field.metadata), name


@pytest.mark.parametrize("name", NUMERIC)
def test_a_number_past_its_range_is_refused_naming_the_range(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RELAY_LEASE_SECONDS=inf, RELAY_RETENTION_DAYS=1e300 and RELAY_WEBHOOK_CONCURRENCY=
    99999999999999999999999 passed and made relay run fail every session; now every value
    past a numeric setting's range is refused with the range, and both ends are taken."""
    variable = f"RELAY_{name.upper()}"
    for key in [k for k in os.environ if k.startswith("RELAY_")]:
        monkeypatch.delenv(key)
    low, high = _ends(name)
    below = "-1" if low == 0 else str(low / 2) if low > 1 else "0"
    for value in [*PAST_ANY_RANGE, below, str(high * 2)]:
        monkeypatch.setenv(variable, value)
        with pytest.raises(SettingsError) as refused:
            settings.load()
        said = str(refused.value)
        assert said.startswith(f"{variable}: must be {_range(name, low, high)}, not "), said
        assert "\n" not in said
    for value in (low, high):
        monkeypatch.setenv(variable, str(value))
        if name == "max_held_bytes":  # at least 6 x RELAY_MAX_BODY_BYTES: the smallest body
            monkeypatch.setenv("RELAY_MAX_BODY_BYTES", str(min(value // 6, 1 << 30)))
        if name == "max_body_bytes":
            monkeypatch.setenv("RELAY_MAX_HELD_BYTES", str(value * 6))
        assert getattr(settings.load(), name) == value


def _range(name: str, low: Any, high: Any) -> str:
    """The range as the error says it."""
    if name == "max_held_bytes":
        return "a size from 6 x RELAY_MAX_BODY_BYTES to 1.0TiB (5MB, 32MiB or a number of bytes)"
    if Settings.model_fields[name].annotation is ByteSize:
        low, high = ByteSize(low).human_readable(), ByteSize(high).human_readable()
        return f"a size from {low} to {high} (5MB, 32MiB or a number of bytes)"
    kind = "a whole number" if Settings.model_fields[name].annotation is int else "a number"
    return f"{kind} from {_plain(low)} to {_plain(high)}"


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _ends(name: str) -> tuple[Any, Any]:
    field = Settings.model_fields[name]
    low = next(m.ge for m in field.metadata if getattr(m, "ge", None) is not None)
    high = next(m.le for m in field.metadata if getattr(m, "le", None) is not None)
    return low, high


def test_the_settings_of_the_issue_stop_every_command_that_reads_settings(
    relay_dsn: str,
) -> None:
    """They passed `relay config` (exit 0) and made `relay run` fail every session, for ever."""
    readers = [
        ["config"],
        ["run"],
        ["rules", "check"],
        ["preview", "--rule", "r", "--table", "public.t", "--new", '{"id": 1}'],
        ["webhook", "add", "w", "--url", "http://127.0.0.1:9/"],
        ["replay", "--webhook", "w", "--since", "1h"],
    ]
    for variable, value, says in [
        ("RELAY_LEASE_SECONDS", "inf", "a number from 1 to 86400, not 'inf'"),
        ("RELAY_RETENTION_DAYS", "1e300", "a number from 0 to 36500, not '1e300'"),
        ("RELAY_WEBHOOK_CONCURRENCY", "9" * 23, "a whole number from 1 to 10000, not '999"),
    ]:
        for command in readers:
            result = relay(*command, RELAY_DSN=relay_dsn, **{variable: value})
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 2, (command, result.stderr)
            assert lines == [f"error: {variable}: must be {lines[0].split(' must be ')[1]}"]
            assert says in lines[0], (command, lines)


def test_relay_run_delivers_at_either_end_of_every_range(rconn: Conn, relay_dsn: str) -> None:
    """The ranges hold what PostgreSQL and Python can: every numeric setting at its lowest, then
    at its highest, and a change is delivered (the purge of the highest retention runs too)."""
    rconn.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
    rconn.execute("SELECT relay.track('items')")
    ends = {name: _ends(name) for name in NUMERIC}
    lowest = {name: low for name, (low, _) in ends.items()}
    lowest["max_held_bytes"] = 6 * lowest["max_body_bytes"]
    highest = {name: high for name, (_, high) in ends.items()}

    async def deliver(values: dict[str, Any], row: int) -> None:
        async with receiver() as r:
            add(rconn, f"hook{row}", payload_url=r.url, table="public.items")
            async with running(relay_dsn, Settings(**values)):
                await sql(relay_dsn, f"INSERT INTO items VALUES ({row}, 0)")
                await until(lambda: len(r.requests) == 1, timeout=20)
            rconn.execute("DELETE FROM relay.event_rules")

    asyncio.run(deliver(lowest, 1))
    asyncio.run(deliver(highest, 2))


def test_an_env_file_is_read_whole_or_refused_naming_the_line(tmp_path: Path) -> None:
    """A line python-dotenv cannot read was skipped with a warning printed twice, so a setting
    went missing; a file not in UTF-8 was "a bug in relay" (exit 1); /dev/null "did not
    exist"."""
    good = "# relay\n\nRELAY_BATCH_SIZE=250\nexport RELAY_POLL_INTERVAL='5'\n"
    for name, text, says in [
        ("words.env", good + "RELAY_LEASE_SECONDS 30\n", "line 5: not NAME=value"),
        ("bare.env", good + "\nRELAY_LEASE_SECONDS\n", "line 6: not NAME=value"),
        ("quote.env", "RELAY_BATCH_SIZE='250\n", "line 1: not NAME=value"),
    ]:
        env_file = tmp_path / name
        env_file.write_text(text)
        for command in (["config"], ["run"]):
            result = relay(*command, "--env-file", str(env_file))
            assert result.returncode == 2, result.stderr
            assert result.stderr.splitlines() == [
                f"error: env file {env_file}, {says}, a comment or a blank line: correct or "
                "remove it"
            ]
    latin = tmp_path / "latin.env"
    latin.write_bytes(b"RELAY_BATCH_SIZE=5\n# caf\xe9\n")
    result = relay("config", "--env-file", str(latin))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: env file {latin}, line 2: not UTF-8 text: save the file as UTF-8"
    ]
    assert relay("config", "--env-file", str(tmp_path)).stderr.splitlines() == [
        f"error: env file {tmp_path} cannot be read: Is a directory"
    ]
    empty = relay("config", "--json", "--env-file", "/dev/null")
    assert empty.returncode == 0, empty.stderr
    assert json.loads(empty.stdout)["RELAY_BATCH_SIZE"] == 1000
    (tmp_path / "good.env").write_text(good)
    read = relay("config", "--json", "--env-file", str(tmp_path / "good.env"))
    shown = json.loads(read.stdout)
    assert (shown["RELAY_BATCH_SIZE"], shown["RELAY_POLL_INTERVAL"], read.stderr) == (250, 5, "")
