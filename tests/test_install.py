"""Installing, upgrading and removing relay, from Python and from plain psql."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from relay import sqlfiles
from relay.db import Conn
from relay.store import Store
from support.db import one_row

SQL = Path(__file__).resolve().parent.parent / "sql"

FINGERPRINT = """
SELECT 'rel', relname || ':' || relkind::text FROM pg_class
WHERE relnamespace = 'relay'::regnamespace
UNION ALL
SELECT 'fn', proname || ':' || md5(prosrc) || ':' || coalesce(array_to_string(proconfig, ','), '')
       || ':' || prosecdef FROM pg_proc WHERE pronamespace = 'relay'::regnamespace
UNION ALL
SELECT 'con', conname || ':' || pg_get_constraintdef(oid) FROM pg_constraint
WHERE connamespace = 'relay'::regnamespace
UNION ALL
SELECT 'mig', version || ':' || name FROM relay.migrations
ORDER BY 1, 2
"""


def psql(dsn: str, *args: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("psql")
    if exe is None:
        pytest.skip("psql is not installed")
    return subprocess.run(
        [exe, dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", *args],
        input=input_text,
        capture_output=True,
        text=True,
        check=False,
    )


def test_install_creates_the_schema_and_records_the_version(conn: Conn) -> None:
    assert Store(conn).installed_version() == 0
    applied = Store(conn).install()
    assert [m.version for m in applied] == list(range(1, sqlfiles.latest_version() + 1))
    assert Store(conn).installed_version() == sqlfiles.latest_version()
    tables = {
        r[0]
        for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'relay'::regnamespace"
        )
    }
    assert {"outbox", "tracked", "migrations", "tracked_tables"} <= tables


def test_install_twice_changes_nothing(conn: Conn) -> None:
    Store(conn).install()
    before = conn.execute(FINGERPRINT).fetchall()
    assert Store(conn).install() == []
    assert conn.execute(FINGERPRINT).fetchall() == before


def test_psql_install_matches_python_install_and_is_repeatable(
    db_dsn: str, server_dsn: str, conn: Conn
) -> None:
    first = psql(db_dsn, "-f", str(SQL / "install.sql"))
    assert first.returncode == 0, first.stderr
    via_psql = conn.execute(FINGERPRINT).fetchall()
    again = psql(db_dsn, "-f", str(SQL / "install.sql"))
    assert again.returncode == 0, again.stderr
    assert conn.execute(FINGERPRINT).fetchall() == via_psql
    assert Store(conn).install() == []  # Python sees psql's install as complete

    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS relay_fingerprint WITH (FORCE)")
        admin.execute("CREATE DATABASE relay_fingerprint")
    try:
        other = psycopg.conninfo.make_conninfo(server_dsn, dbname="relay_fingerprint")
        with psycopg.connect(other, autocommit=True) as c:
            Store(c).install()
            assert c.execute(FINGERPRINT).fetchall() == via_psql
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute("DROP DATABASE relay_fingerprint WITH (FORCE)")


def test_relay_sql_prints_scripts_psql_runs_without_a_checkout(
    db_dsn: str, conn: Conn, make_role: Callable[..., str]
) -> None:
    """`relay sql ...` prints the packaged SQL in one piece (no file includes), for psql."""
    service = make_role("service")

    def through_psql(*command: str) -> None:
        printed = subprocess.run(
            [sys.executable, "-m", "relay", "sql", *command],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "\\ir " not in printed
        done = psql(db_dsn, "-f", "-", input_text=printed)
        assert done.returncode == 0, done.stderr

    through_psql("install")
    through_psql("install")  # an upgrade with nothing new to do
    assert Store(conn).installed_version() == sqlfiles.latest_version()
    through_psql("service-role", "--role", service)
    assert conn.execute(
        "SELECT has_table_privilege(%s, 'relay.relays', 'INSERT')", (service,)
    ).fetchone() == (True,)
    through_psql("uninstall")
    assert Store(conn).installed_version() == 0


def test_install_sql_lists_every_migration_in_order() -> None:
    text = (SQL / "install.sql").read_text()
    listed = re.findall(r"^\\ir migrations/(\S+)$", text, re.M)
    assert listed == [m.path.name for m in sqlfiles.migrations()]
    # Each behind its own guard: a psql upgrade applies exactly the migrations not recorded.
    for m in sqlfiles.migrations():
        guarded = (
            f"WHERE version = {m.version}) AS relay_apply \\gset\n\\if :relay_apply\n"
            f"\\ir migrations/{m.path.name}\n\\endif\n"
        )
        assert guarded in text, m.path.name
    for m in sqlfiles.migrations():
        recorded = re.search(
            r"INSERT INTO relay\.migrations \(version, name\) VALUES \((\d+), '(\w+)'\)", m.sql
        )
        assert recorded and (int(recorded[1]), recorded[2]) == (m.version, m.name)


def test_upgrade_applies_only_new_migrations(
    conn: Conn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Store(conn).install()
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    conn.execute("SELECT relay.track('t')")
    conn.execute("INSERT INTO t VALUES (1)")

    newer = tmp_path / "sql"
    shutil.copytree(SQL, newer)
    n = sqlfiles.latest_version() + 1
    (newer / "migrations" / f"{n:04d}_extra.sql").write_text(
        "CREATE TABLE relay.extra (x int);\n"
        f"INSERT INTO relay.migrations (version, name) VALUES ({n}, 'extra');\n"
    )
    monkeypatch.setattr(sqlfiles, "sql_dir", lambda: newer)
    sqlfiles.migrations.cache_clear()
    try:
        applied = Store(conn).install()
        assert [m.name for m in applied] == ["extra"]
        assert Store(conn).installed_version() == n
        assert Store(conn).install() == []
    finally:
        sqlfiles.migrations.cache_clear()
    # What the older version held is still there and still working.
    conn.execute("INSERT INTO t VALUES (2)")
    assert one_row(conn.execute("SELECT count(*) FROM relay.outbox"))[0] == 2


def test_failed_migration_leaves_the_install_as_it_was(
    conn: Conn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    newer = tmp_path / "sql"
    shutil.copytree(SQL, newer)
    n = sqlfiles.latest_version() + 1
    (newer / "migrations" / f"{n:04d}_broken.sql").write_text("CREATE TABLE relay.x (;\n")
    monkeypatch.setattr(sqlfiles, "sql_dir", lambda: newer)
    sqlfiles.migrations.cache_clear()
    try:
        with pytest.raises(psycopg.errors.SyntaxError):
            Store(conn).install()
    finally:
        sqlfiles.migrations.cache_clear()
    assert Store(conn).installed_version() == 0


@pytest.mark.parametrize("how", ["python", "psql"])
def test_uninstall_removes_triggers_and_schema_but_not_user_data(
    conn: Conn, db_dsn: str, how: str
) -> None:
    Store(conn).install()
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    conn.execute("CREATE TABLE p (id int, k int) PARTITION BY LIST (k)")
    conn.execute("CREATE TABLE p1 PARTITION OF p FOR VALUES IN (1)")
    conn.execute("SELECT relay.track('t'), relay.track('p')")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.execute("INSERT INTO p VALUES (1, 1)")

    if how == "python":
        Store(conn).uninstall()
    else:
        result = psql(db_dsn, "-f", str(SQL / "uninstall.sql"))
        assert result.returncode == 0, result.stderr

    assert one_row(conn.execute("SELECT to_regnamespace('relay')"))[0] is None
    assert one_row(conn.execute("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal"))[0] == 0
    conn.execute("INSERT INTO t VALUES (2)")
    conn.execute("INSERT INTO p VALUES (2, 1)")
    assert one_row(conn.execute("SELECT count(*) FROM t"))[0] == 2
    Store(conn).uninstall()  # nothing left to remove is not an error
