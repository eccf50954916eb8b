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
from relay.store import Installed, Store
from relay.tempcluster import scratch_database
from support.db import install_up_to, one_row

SQL = Path(__file__).resolve().parents[2] / "sql"

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
    installed = Store(conn).install()
    assert [m.version for m in installed.migrations] == list(
        range(1, sqlfiles.latest_version() + 1)
    )
    assert installed.definitions
    assert Store(conn).installed_version() == sqlfiles.latest_version()
    tables = {
        r[0]
        for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'relay'::regnamespace"
        )
    }
    assert {"outbox", "tracked", "migrations", "tracked_tables"} <= tables


def test_psql_install_prints_one_line_saying_what_it_did(db_dsn: str, conn: Conn) -> None:
    """``psql -f sql/install.sql`` prints no query result (the advisory lock's, a migration's
    SELECT of each table's capture: empty tables of output), only one line of what it did;
    its errors still reach stderr."""
    latest = sqlfiles.latest_version()

    def as_readme(dsn: str) -> subprocess.CompletedProcess[str]:
        """The README's command, not quieted (-q) as the other tests' (no psqlrc: -X)."""
        exe = shutil.which("psql")
        if exe is None:
            pytest.skip("psql is not installed")
        command = [exe, "-X", dsn, "-v", "ON_ERROR_STOP=1", "-f", str(SQL / "install.sql")]
        return subprocess.run(command, capture_output=True, text=True, check=False)

    conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    fresh = as_readme(db_dsn)
    assert (fresh.returncode, fresh.stderr) == (0, "")
    assert fresh.stdout == f"relay installed: schema version {latest}\n"
    conn.execute("SELECT relay.track('orders')")
    again = as_readme(db_dsn)
    assert (again.returncode, again.stderr) == (0, "")
    assert again.stdout == f"relay up to date: schema version {latest}\n"
    # An install one migration behind: the last is applied, and said so.
    last = sqlfiles.migrations()[-1]
    conn.execute("DELETE FROM relay.migrations WHERE version = %s", (last.version,))
    # What 0035 made.
    conn.execute("ALTER TABLE relay.attempts DROP COLUMN details")
    upgraded = as_readme(db_dsn)
    assert (upgraded.returncode, upgraded.stderr) == (0, "")
    assert upgraded.stdout == f"relay upgraded: schema version {latest - 1} to {latest}\n"
    conn.execute("INSERT INTO relay.migrations (version, name) VALUES (%s, 'later')", (latest + 1,))
    refused = as_readme(db_dsn)
    assert refused.returncode != 0 and refused.stdout == ""
    assert f"relay schema is at version {latest + 1}, newer than" in refused.stderr


def test_install_twice_changes_nothing(conn: Conn) -> None:
    Store(conn).install()
    before = conn.execute(FINGERPRINT).fetchall()
    assert Store(conn).install() == Installed([], definitions=False)
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
    # Python sees psql's migrations as applied; it writes the definitions once more (psql records
    # no digest of them), to the same effect.
    assert Store(conn).install() == Installed([], definitions=True)
    assert conn.execute(FINGERPRINT).fetchall() == via_psql
    assert Store(conn).install() == Installed([], definitions=False)

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


def test_install_sql_applies_every_definition_file_after_the_migrations() -> None:
    """Every function and view is defined in a file of sql/functions/, each applied by every
    install (relay/sqlfiles.py reads the list from install.sql)."""
    text = (SQL / "install.sql").read_text()
    files = sorted(f"functions/{p.name}" for p in (SQL / "functions").glob("*.sql"))
    assert sorted(sqlfiles.definitions()[:-1]) == files
    assert sqlfiles.definitions()[-1] == "definitions.sql"
    assert text.index("\\ir functions/") > text.rindex("\\ir migrations/")


def test_install_sql_lists_every_migration_in_order() -> None:
    text = (SQL / "install.sql").read_text()
    latest = sqlfiles.latest_version()
    assert f"IF (SELECT max(version) FROM relay.migrations) > {latest} THEN" in text
    assert f"newer than this install.sql ({latest})" in text
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
        installed = Store(conn).install()
        assert [m.name for m in installed.migrations] == ["extra"]
        assert Store(conn).installed_version() == n
        assert Store(conn).install() == Installed([], definitions=False)
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


@pytest.mark.parametrize("how", ["relay install", "psql"])
def test_an_older_release_never_installs_over_a_later_releases_functions(
    conn: Conn, db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A later release that changed a function and added no migration (a function's change is
    an edit of its file, and of the definitions' version) installs; then this release's
    install runs on a host not yet upgraded: one line, exit 2, and the later release's functions
    stay."""
    newer = tmp_path / "sql"
    shutil.copytree(SQL, newer)
    with (newer / "functions" / "rules.sql").open("a") as later:
        later.write(
            "CREATE OR REPLACE FUNCTION relay.is_model_name(name text) RETURNS boolean\n"
            "LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT name IS NOT NULL $$;\n"
        )
    version = sqlfiles.definitions_version()
    install_sql = newer / "install.sql"
    install_sql.write_text(
        install_sql.read_text().replace(
            f"\\set relay_definitions {version}\n", f"\\set relay_definitions {version + 1}\n"
        )
    )
    Store(conn).install()
    monkeypatch.setattr(sqlfiles, "sql_dir", lambda: newer)
    Store(conn).install()
    monkeypatch.undo()
    later_release = conn.execute(FINGERPRINT).fetchall()
    if how == "psql":
        done = psql(db_dsn, "-f", str(SQL / "install.sql"))
        assert done.returncode != 0
        assert "relay's functions in this database are newer than this install.sql's" in (
            done.stderr
        )
    else:
        command = [sys.executable, "-m", "relay", "install", "--dsn", db_dsn]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [
            "error: relay's functions in this database are newer than this relay's: run the "
            "relay install of the release that installed them"
        ]
    assert conn.execute(FINGERPRINT).fetchall() == later_release


LOCK = Path(__file__).resolve().parents[1] / "definitions.lock"
"""Each version the definitions have had, with the digest of their files: a change to a file of
sql/functions/ (or sql/definitions.sql) must come with a new version, or an older release's
install could not tell it is older."""


def test_a_change_to_the_definitions_comes_with_a_new_version() -> None:
    lines = [line.split() for line in LOCK.read_text().splitlines() if line.strip()]
    versions = {int(version): digest for version, digest in lines}
    version, digest = sqlfiles.definitions_version(), sqlfiles.definitions_digest()
    following = max(versions) + 1
    assert versions.get(version) == digest, (
        f"the definitions changed: set relay_definitions to {following} in sql/install.sql and "
        f"add the line '{following} {digest}' to tests/definitions.lock"
        if version in versions
        else f"add the line '{version} {digest}' to tests/definitions.lock"
    )
    assert version == max(versions), "relay_definitions went back"


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


CATALOG = """
SELECT 'column', c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), ''), a.attnum::text
FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
WHERE c.relnamespace = 'relay'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'relation', relname || ':' || relkind::text || ':'
       || coalesce(array_to_string(reloptions, ','), '') || ':'
       || coalesce(array_to_string(relacl, ','), ''), ''
FROM pg_class WHERE relnamespace = 'relay'::regnamespace
UNION ALL
SELECT 'index', pg_get_indexdef(indexrelid), ''
FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = 'relay'::regnamespace
UNION ALL
SELECT 'constraint', conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid), ''
FROM pg_constraint WHERE connamespace = 'relay'::regnamespace
UNION ALL
SELECT 'trigger', pg_get_triggerdef(t.oid), ''
FROM pg_trigger t WHERE NOT t.tgisinternal
UNION ALL
SELECT 'function', pg_get_functiondef(p.oid), coalesce(array_to_string(p.proacl, ','), '')
FROM pg_proc p WHERE p.pronamespace = 'relay'::regnamespace
UNION ALL
SELECT 'view', c.relname || ' ' || pg_get_viewdef(c.oid), ''
FROM pg_class c WHERE c.relnamespace = 'relay'::regnamespace AND c.relkind = 'v'
UNION ALL
SELECT 'enum', t.typname || ' ' || string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder), ''
FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
WHERE t.typnamespace = 'relay'::regnamespace GROUP BY t.typname
UNION ALL
SELECT 'tracked', format('%s %s %s %s %s', tbl::regclass, events, update_attnums, exclude_attnums,
                         shape IS NOT DISTINCT FROM relay.shape(tbl)), ''
FROM relay.tracked_tables
UNION ALL
SELECT 'migration', version || ' ' || name, '' FROM relay.migrations
"""
"""Everything an install leaves in the database's catalogs: schema relay's tables, columns (with
defaults), indexes, constraints, functions (whole definitions, rights), views, types, the triggers
on every table, and what relay.track recorded."""


def _catalog(conn: Conn) -> list[tuple[str, ...]]:
    """CATALOG, with what differs between two databases written the same: the tracked table's
    oid (in its capture functions' names) as T, the digest of its shape (relay.shape, made
    from oids) as SHAPE."""
    oid = str(one_row(conn.execute("SELECT 'public.t'::regclass::oid"))[0])
    rows = conn.execute(CATALOG).fetchall()
    return sorted(
        tuple(re.sub(r"'[0-9a-f]{32}'", "SHAPE", str(v).replace(oid, "T")) for v in row)
        for row in rows
    )


def _tracked_with_changes(conn: Conn) -> None:
    conn.execute("CREATE TABLE public.t (id int PRIMARY KEY, v text)")
    conn.execute("SELECT relay.track('public.t')")
    conn.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 3) g")
    conn.execute("UPDATE t SET v = 'w' WHERE id = 2")


def test_an_upgrade_from_every_earlier_version_ends_as_a_fresh_install(
    server_dsn: str, conn: Conn
) -> None:
    """From each schema version relay has had, with a table tracked and changes pending, relay
    install makes exactly what a fresh install makes: tables, columns, indexes, constraints,
    triggers, and every function and view, definition and rights; and the changes are kept."""
    Store(conn).install()
    _tracked_with_changes(conn)
    fresh = _catalog(conn)
    differences = {}
    for version in range(1, sqlfiles.latest_version()):
        with (
            scratch_database(server_dsn, "relay_upgrade") as dsn,
            psycopg.connect(dsn, autocommit=True) as old,
        ):
            install_up_to(old, version)
            _tracked_with_changes(old)
            Store(old).install()
            upgraded = _catalog(old)
            if upgraded != fresh:
                differences[version] = (
                    [row for row in upgraded if row not in fresh],
                    [row for row in fresh if row not in upgraded],
                )
            assert one_row(old.execute("SELECT count(*) FROM relay.outbox"))[0] == 4
    assert differences == {}


def test_every_function_and_view_is_defined_once_in_sql_functions(conn: Conn) -> None:
    """The only definition of each function and view of schema relay is in sql/functions/ (the
    capture functions relay.track generates per table aside); migrations from 0024 on define
    none, so that none restates a body."""
    defined: list[str] = []
    for path in sorted((SQL / "functions").glob("*.sql")):
        defined += re.findall(
            r"^CREATE OR REPLACE (?:FUNCTION|VIEW) relay\.(\w+)", path.read_text(), re.M
        )
    assert sorted(defined) == sorted(set(defined)), "defined twice"
    Store(conn).install()
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    conn.execute("SELECT relay.track('t')")
    installed = {
        r[0]
        for r in conn.execute(
            "SELECT proname FROM pg_proc WHERE pronamespace = 'relay'::regnamespace"
            " AND proname !~ '^capture_[0-9]+_' UNION SELECT relname FROM pg_class"
            " WHERE relnamespace = 'relay'::regnamespace AND relkind = 'v'"
        )
    }
    assert installed == set(defined)
    for migration in sqlfiles.migrations()[23:]:
        assert not re.search(r"CREATE (OR REPLACE )?(FUNCTION|VIEW)", migration.sql), migration


_KEYWORDS = {"coalesce", "nullif", "row", "array", "exists", "case", "when", "then", "else",
             "end", "select", "from", "with", "ordinality", "order", "by", "null", "is", "not",
             "and", "or", "where", "in", "any", "all", "u", "s"}  # fmt: skip


def test_functions_without_a_pinned_search_path_name_everything_with_its_schema() -> None:
    """A function left without SET search_path (so that PostgreSQL can inline it) is read with
    its caller's search path: every function, operator and type in it must be named with its
    schema, or a caller whose path holds another role's schema would run that role's code."""
    checked = 0
    for path in sorted((SQL / "functions").glob("*.sql")):
        for header, body in re.findall(
            r"^(CREATE OR REPLACE FUNCTION relay\.\w+.*?) AS \$\$(.*?)\$\$;",
            path.read_text(),
            re.M | re.S,
        ):
            if "search_path" in header:
                continue
            checked += 1
            code = re.sub(r"'(?:[^']|'')*'", "''", body)  # string literals out
            casts = re.findall(r"::\s*(\w+)\b(?!\.)", code)
            code = re.sub(r"OPERATOR\(pg_catalog\.[^)]+\)", " ", code)
            code = re.sub(r"\b(?:pg_catalog|relay)\.\w+", " ", code)
            name = header.split("(")[0]
            code = code.replace("::", " ").replace("(*)", "()")
            assert not re.search(r"[=<>~!@#%^&|*/+-]", code), (name, code)
            calls = {c.lower() for c in re.findall(r"\b(\w+)\s*\(", code)} - _KEYWORDS
            assert not calls, (name, calls)
            assert not casts, (name, casts)
    assert checked >= 5  # relay.text_value and the others capture inlines


@pytest.mark.parametrize("how", ["relay install", "psql"])
def test_an_older_install_refuses_a_newer_schema_and_changes_nothing(
    conn: Conn, db_dsn: str, how: str
) -> None:
    """An older release's install on a schema upgraded past it: one line, exit 2, and no
    function of the newer schema replaced by an older one."""
    Store(conn).install()
    newer = sqlfiles.latest_version() + 1
    conn.execute("INSERT INTO relay.migrations (version, name) VALUES (%s, 'future')", (newer,))
    conn.execute("DELETE FROM relay.definitions")  # as if its functions were other files'
    before = conn.execute(FINGERPRINT).fetchall()
    if how == "psql":
        done = psql(db_dsn, "-f", str(SQL / "install.sql"))
        assert done.returncode != 0
        assert f"relay schema is at version {newer}, newer than this install.sql" in done.stderr
    else:
        done = subprocess.run(
            [sys.executable, "-m", "relay", "install", "--dsn", db_dsn],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [
            f"error: relay schema is at version {newer}, newer than this relay "
            f"({newer - 1}): run the relay install of the release that installed it"
        ]
    assert conn.execute(FINGERPRINT).fetchall() == before
