"""Property: any value PostgreSQL stores in a tracked table is captured, and the write succeeds.

Hypothesis writes rows of hostile values of many column types (built-in, application-defined,
json that jsonb cannot hold, extremes of every range) through INSERT, UPDATE and DELETE, one
session with odd settings; each write must succeed and leave one outbox row whose images hold
every column.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from relay.db import Conn
from relay.store import Store
from support.db import one_row

TEXT = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=40
) | st.sampled_from(["", "NULL", "\\", "\\u0000", '"', "'", "😀", "\u202e", "a\nb", "{", "("])
JSON_TEXT = st.sampled_from(
    [
        '{"a": "\\u0000"}',
        "[1e1000000]",
        '{"\\u0000": 1}',
        "-1e-20000",
        '"x"',
        "null",
        "[]",
        '{"a": {"b": [1, 2.50, true]}}',
        '{"a": 1, "a": 2}',
    ]
)
JSONABLE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | TEXT
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
TZ = st.sampled_from(
    [dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=45)), dt.timezone(dt.timedelta(hours=-12))]
)

# column name -> (SQL type, strategy for its values)
COLUMNS = {
    "i2": ("int2", st.integers(-(2**15), 2**15 - 1)),
    "i8": ("int8", st.integers(-(2**63), 2**63 - 1)),
    "n": (
        "numeric",
        st.decimals(allow_nan=True, allow_infinity=True, places=None).filter(
            lambda d: not d.is_snan()
        )
        | st.sampled_from([Decimal("1e1000"), Decimal("-0.000"), Decimal("120.00")]),
    ),
    "f": ("float8", st.floats(allow_nan=True, allow_infinity=True)),
    "r": ("real", st.floats(width=32, allow_nan=True, allow_infinity=True)),
    "t": ("text", TEXT),
    "vc": ("varchar(50)", TEXT),
    "b": ("bytea", st.binary(max_size=20)),
    "bo": ("bool", st.booleans()),
    "d": ("date", st.dates()),
    "ts": ("timestamp", st.datetimes()),
    "tz": ("timestamptz", st.datetimes(timezones=TZ)),
    "tm": ("time", st.times()),
    "iv": (
        "interval",
        st.timedeltas(min_value=dt.timedelta(days=-(10**5)), max_value=dt.timedelta(days=10**5)),
    ),
    "u": ("uuid", st.uuids()),
    "j": ("json", JSON_TEXT),
    "jb": ("jsonb", JSONABLE.map(Jsonb)),
    "ta": ("text[]", st.lists(TEXT | st.none(), max_size=4)),
    "ia": ("int4[]", st.lists(st.integers(-(2**31), 2**31 - 1), max_size=4)),
    "ja": ("json[]", st.lists(JSON_TEXT, max_size=2)),
    "mood": ("mood", st.sampled_from(["ok", "sad", "a,b", 'q"uote', " "])),
    "moods": ("mood[]", st.lists(st.sampled_from(["ok", "sad", "a,b"]) | st.none(), max_size=3)),
    "pair": ("pair", st.tuples(st.integers(-5, 5) | st.none(), TEXT | st.none())),
    "rng": ("moodrange", st.sampled_from([None, "[ok,sad)", "empty", "(,)"])),
}
NAMES = list(COLUMNS)


def literal(name: str, value: Any) -> tuple[str, list[Any]]:
    """The SQL for a value of column `name`, and the parameters psycopg sends with it."""
    sql_type = COLUMNS[name][0]
    if value is None:
        return "NULL", []
    if name == "pair":
        return "ROW(%s::int, %s::text)::pair", list(value)
    if name in ("ja", "moods"):
        items = ["NULL" if v is None else json.dumps(v) for v in value]
        return f"%s::text::{sql_type}", ["{" + ",".join(items) + "}"]
    if name in ("f", "r"):
        text = {"inf": "Infinity", "-inf": "-Infinity"}.get(repr(value), repr(value))
        return f"%s::text::{sql_type}", [text]
    if name in ("j", "mood", "rng", "n"):
        return f"%s::text::{sql_type}", [str(value)]
    return f"%s::{sql_type}", [value]


ROWS = st.fixed_dictionaries(
    {name: st.none() | strategy for name, (_, strategy) in COLUMNS.items()}
)


@pytest.fixture
def hostile_table(rconn: Conn) -> Conn:
    rconn.execute("CREATE TYPE mood AS ENUM ('ok', 'sad', 'a,b', 'q\"uote', ' ')")
    rconn.execute("CREATE TYPE moodrange AS RANGE (subtype = mood)")
    rconn.execute("CREATE TYPE pair AS (a int, b text)")
    columns = ", ".join(f"{name} {sql_type}" for name, (sql_type, _) in COLUMNS.items())
    rconn.execute(f"CREATE TABLE hostile (id serial PRIMARY KEY, {columns})")
    rconn.execute("CREATE TABLE untracked (LIKE hostile)")
    Store(rconn).track("hostile", exclude_columns=["vc"])
    rconn.execute(
        "SET bytea_output = escape; SET extra_float_digits = -15; SET TimeZone = 'Pacific/Chatham';"
        " SET IntervalStyle = sql_standard; SET DateStyle = 'German, DMY'"
    )
    return rconn


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(first=ROWS, second=ROWS)
def test_every_value_is_captured_and_the_write_succeeds(
    hostile_table: Conn, first: dict[str, Any], second: dict[str, Any]
) -> None:
    conn = hostile_table
    conn.execute("TRUNCATE relay.outbox CASCADE")
    inserted = [literal(name, first[name]) for name in NAMES]
    updated = [literal(name, second[name]) for name in NAMES]
    insert = (
        f"INSERT INTO {{}} (id, {', '.join(NAMES)})"
        f" VALUES (%s, {', '.join(sql for sql, _ in inserted)})"
    )
    update = (
        "UPDATE {} SET "
        + ", ".join(f"{name} = {sql}" for name, (sql, _) in zip(NAMES, updated, strict=True))
        + " WHERE id = %s"
    )
    insert_params = [param for _, params in inserted for param in params]
    update_params = [param for _, params in updated for param in params]
    row_id = one_row(conn.execute("SELECT nextval('hostile_id_seq')"))[0]
    try:  # values PostgreSQL itself refuses (a date out of its range...) are never stored
        with conn.transaction(force_rollback=True):
            conn.execute(insert.format("untracked"), [row_id, *insert_params])
            conn.execute(update.format("untracked"), [*update_params, row_id])
    except psycopg.DataError:
        return
    conn.execute(insert.format("hostile"), [row_id, *insert_params])
    conn.execute(update.format("hostile"), [*update_params, row_id])
    conn.execute("DELETE FROM hostile WHERE id = %s", (row_id,))
    rows = conn.execute(
        "SELECT op::text, old::text, new::text, pk::text FROM relay.outbox ORDER BY id"
    ).fetchall()
    ops = [r[0] for r in rows]
    assert ops in (["insert", "update", "delete"], ["insert", "delete"])
    expected_keys = {"id", *NAMES} - {"vc"}
    for _, old, new, pk in rows:
        for image in (old, new):
            if image is not None:
                assert set(json.loads(image)) == expected_keys
        assert json.loads(pk) == {"id": row_id}
