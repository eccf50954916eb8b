"""The throwaway cluster the harness (and later the demo) falls back on."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from relay.store import Store
from relay.tempcluster import find_server_binaries, start_temp_cluster


def test_throwaway_cluster_starts_serves_relay_and_goes_away() -> None:
    if find_server_binaries() is None:
        pytest.skip("no PostgreSQL server binaries on this machine")
    cluster = start_temp_cluster()
    try:
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            Store(conn).install()
            conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
            conn.execute("SELECT relay.track('t')")
            conn.execute("INSERT INTO t VALUES (1)")
            assert conn.execute("SELECT op FROM relay.outbox").fetchall() == [("insert",)]
            server_user = conn.execute(
                "SELECT usename FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            ).fetchone()
            assert server_user == ("postgres",)
    finally:
        cluster.stop()
    assert not cluster.root.exists()
    if os.geteuid() == 0:
        assert cluster._run_as is not None and cluster._run_as.pw_uid != 0


def test_without_server_or_binaries_the_message_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import relay.tempcluster as tc

    monkeypatch.setattr(tc, "find_server_binaries", lambda: None)
    with pytest.raises(tc.NoPostgres, match=r"apt-get install postgresql\) or set RELAY_TEST_DSN"):
        tc.start_temp_cluster()


def test_an_unreachable_explicit_dsn_stops_the_run_with_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    tests = Path(__file__).parents[1]
    env = dict(os.environ, RELAY_TEST_DSN="postgresql://postgres@127.0.0.1:1/none")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(tests / "integration" / "test_capture.py::test_txid_is_the_writing_transaction"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
        timeout=120,
    )
    assert result.returncode == 3
    assert (
        "no PostgreSQL for the tests: cannot connect to postgresql://postgres@127.0.0.1:1/none"
        in result.stdout + result.stderr
    )
