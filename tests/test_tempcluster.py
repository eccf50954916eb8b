"""The throwaway cluster the harness (and later the demo) falls back on."""

from __future__ import annotations

import os

import psycopg
import pytest

from relay import schema
from relay.tempcluster import find_server_binaries, start_temp_cluster


def test_throwaway_cluster_starts_serves_relay_and_goes_away():
    if find_server_binaries() is None:
        pytest.skip("no PostgreSQL server binaries on this machine")
    cluster = start_temp_cluster()
    try:
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            schema.install(conn)
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
