"""Settings as an operator gives them: environment, env file, and `relay config`."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from relay import sqlfiles
from relay.cli.tempcluster import find_server_binaries, start_temp_cluster
from relay.store import Store
from support.cli import relay_env as relay
from support.db import one_row


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
