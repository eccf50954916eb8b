"""The contract between sql/queries/ and the code that runs it: every named query, as loaded
(its fragments put in place), prepares on a fresh install (a query only a rare path runs, an
error case or an upgrade's, fails here rather than in front of an operator), PostgreSQL knows
the type of each of its parameters from the query itself (none is sent as text of unknown type
for the server to guess), every query the store reads into a type (relay.store.Rows) returns
that type's fields and no other column, every name is one relay's code asks for, so no query
outlives its caller, and every fragment is one some query uses; a name given twice, or a
fragment unknown or unused, stops the loading."""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NotRequired

import psycopg
import pytest

from relay import sqlfiles, store
from relay.db import Conn
from relay.tempcluster import scratch_database

PARAMETER = re.compile(r"%\((\w+)\)s")
MARKER = re.compile(r"/\*> (\w+) \*/")
UNKNOWN_TYPES = {0, 705}
"""Type oids PostgreSQL gives a parameter it could not type: none, ``unknown``."""
RELAY = Path(__file__).resolve().parents[2] / "relay"
QUERIES = sqlfiles.sql_dir() / sqlfiles.QUERIES


def numbered(text: str) -> tuple[str, list[str]]:
    """The query with psycopg's named parameters as PostgreSQL's $1, $2 (a name used twice is
    one parameter, as psycopg sends it), and the names in their order."""
    names: list[str] = []

    def number(found: re.Match[str]) -> str:
        if found[1] not in names:
            names.append(found[1])
        return f"${names.index(found[1]) + 1}"

    return PARAMETER.sub(number, text).replace("%%", "%"), names


@pytest.fixture(scope="module")
def installed(server_dsn: str, installed_template: str) -> Iterator[Conn]:
    """One fresh install for every query (preparing changes nothing)."""
    with (
        scratch_database(server_dsn, "relay_queries", installed_template) as dsn,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        yield conn


def described(conn: Conn, name: str) -> psycopg.pq.abc.PGresult:
    """The query ``name`` prepared on ``conn``: its parameters' and columns' description."""
    text, _ = numbered(sqlfiles.query(name))
    prepared = conn.pgconn.prepare(f"described_{name}".encode(), text.encode())
    assert prepared.status == psycopg.pq.ExecStatus.COMMAND_OK, prepared.error_message.decode()
    return conn.pgconn.describe_prepared(f"described_{name}".encode())


def fields(row: Any) -> tuple[set[str], set[str]]:
    """A row type's fields, and those a row must have (a TypedDict's NotRequired ones and a
    dataclass's with a default may be missing)."""
    if dataclasses.is_dataclass(row):
        every = {f.name for f in dataclasses.fields(row)}
        required = {
            f.name
            for f in dataclasses.fields(row)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        return every, required
    # Read from the hints: under `from __future__ import annotations` Python 3.11's TypedDict
    # counts a NotRequired field in __required_keys__.
    hints = typing.get_type_hints(row, include_extras=True)
    optional = {name for name, hint in hints.items() if typing.get_origin(hint) is NotRequired}
    return set(hints), set(hints) - optional


TYPED = sorted(
    (value for value in vars(store).values() if isinstance(value, store.Rows)),
    key=lambda rows: rows.name,
)


@pytest.mark.parametrize("rows", TYPED, ids=[rows.name for rows in TYPED])
def test_each_query_read_into_a_type_returns_its_fields(
    installed: Conn, rows: store.Rows[Any]
) -> None:
    description = described(installed, rows.name)
    columns = [(description.fname(i) or b"").decode() for i in range(description.nfields)]
    every, required = fields(rows.row)
    assert len(columns) == len(set(columns)), f"a column named twice: {columns}"
    assert sorted(set(columns) - every) == [], f"columns {rows.row.__name__} has no field for"
    assert sorted(required - set(columns)) == [], f"fields of {rows.row.__name__} no column fills"


@pytest.mark.parametrize("name", sorted(sqlfiles.queries()))
def test_each_named_query_prepares_with_every_parameter_typed(installed: Conn, name: str) -> None:
    text, names = numbered(sqlfiles.query(name))
    prepared = installed.pgconn.prepare(name.encode(), text.encode())
    assert prepared.status == psycopg.pq.ExecStatus.COMMAND_OK, prepared.error_message.decode()
    described = installed.pgconn.describe_prepared(name.encode())
    assert described.nparams == len(names)
    untyped = [
        names[i] for i in range(described.nparams) if described.param_type(i) in UNKNOWN_TYPES
    ]
    assert untyped == [], f"give these a cast in the query: {untyped}"


def test_every_named_query_is_asked_for_by_name_in_relay() -> None:
    code = "".join(path.read_text() for path in RELAY.rglob("*.py"))
    named = set(re.findall(r'"(\w+)"', code))
    assert sorted(set(sqlfiles.queries()) - named) == []


def test_every_fragment_is_used_and_none_is_left_in_a_query() -> None:
    texts = [path.read_text() for path in sorted(QUERIES.glob("*.sql"))]
    defined = [name for text in texts for name in re.findall(r"^-- fragment: (\w+)", text, re.M)]
    used = {name for text in texts for name in MARKER.findall(text)}
    assert defined and sorted(set(defined) - used) == []
    assert [name for name, text in sqlfiles.queries().items() if "/*>" in text] == []


def write(folder: Path, **files: str) -> Path:
    """A folder of query files, ``name=text`` each (name.sql)."""
    folder.mkdir()
    for name, text in files.items():
        (folder / f"{name}.sql").write_text(text)
    return folder


def test_a_fragment_is_put_in_place_with_its_parameters(installed: Conn, tmp_path: Path) -> None:
    """psycopg's %(name)s in a fragment are the query's: sent with it, as if written there."""
    loaded = sqlfiles.load(
        write(
            tmp_path / "queries",
            fragments="-- fragment: limit\n-- What is said.\n%(n)s::int + 1\n",
            stage="-- name: one\nSELECT /*> limit */ AS n,\n       2 AS m;\n",
        )
    )
    assert loaded == {"one": "SELECT %(n)s::int + 1 AS n,\n       2 AS m"}
    assert installed.execute(loaded["one"], {"n": 41}).fetchone() == (42, 2)


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        (
            {"a": "-- name: one\nSELECT 1;\n", "b": "-- name: one\nSELECT 2;\n"},
            "query 'one' is defined twice: in a.sql and in b.sql",
        ),
        (
            {"a": "-- name: one\nSELECT /*> two */;\n"},
            "query 'one' (a.sql) uses fragment 'two', which no file of sql/queries defines",
        ),
        (
            {"a": "-- name: one\nSELECT 1;\n-- fragment: two\n2\n"},
            "fragments no query uses in sql/queries: ['two']",
        ),
        (
            {"a": "-- name: one\nSELECT /*> two */;\n-- fragment: two\n/*> two */\n"},
            "fragment 'two' (a.sql) uses itself",
        ),
    ],
    ids=["twice", "unknown", "unused", "itself"],
)
def test_a_query_file_that_cannot_load_says_why(
    tmp_path: Path, files: dict[str, str], problem: str
) -> None:
    with pytest.raises(RuntimeError, match=re.escape(problem)):
        sqlfiles.load(write(tmp_path / "queries", **files))


def test_a_missing_query_says_where_it_looked() -> None:
    with pytest.raises(KeyError, match=re.escape(f"{QUERIES}/*.sql")):
        sqlfiles.query("no_such_query")
