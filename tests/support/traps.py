"""Traps another role can set for relay's sessions: operators and functions in a schema on their
search path that PostgreSQL would pick over pg_catalog's own inside relay's queries.

PostgreSQL resolves an unqualified operator or function by the best match over every schema on
the search path; an exact match in any schema beats one that needs an implicit cast in
pg_catalog. So a role that may create objects in ``public`` (the default before PostgreSQL 15,
and wherever an application owns it), or in a schema named after relay's role (``"$user"``),
makes these for every pair of common types pg_catalog has no exact operator for, and same-named
functions with nearby argument types for every function relay's SQL calls. Each trap counts its
calls in ``trapper.calls`` (a sequence: the count survives the caller's rollback), logs its name in
``trapper.log`` when the caller's transaction commits, and returns NULL.
"""

from __future__ import annotations

import re
from pathlib import Path

from psycopg import sql

from relay.db import Conn

SQL = Path(__file__).resolve().parents[2] / "sql"

TYPES = [
    "smallint",
    "integer",
    "bigint",
    "numeric",
    "real",
    "double precision",
    "text",
    "character varying",
    "character",
    "name",
    "boolean",
    "timestamp with time zone",
    "timestamp without time zone",
    "date",
    "interval",
    "json",
    "jsonb",
    "bytea",
    "uuid",
    "oid",
    "xid8",
    "regclass",
    "bigint[]",
    "text[]",
    "integer[]",
    "anyelement",
    "anyarray",
    "anyenum",
    "anynonarray",
    "anycompatible",
]
"""Argument types of the traps: PostgreSQL's common ones, their arrays, and the polymorphic
pseudo-types (an exact match for them beats nothing, but a polymorphic trap beats a cast)."""

OPERATORS = [
    "=", "<>", "<", ">", "<=", ">=", "+", "-", "*", "/", "%", "||", "~~", "!~~", "~", "@>", "<@",
    "&&", "->", "->>", "#>", "#>>", "?", "^",
]  # fmt: skip
"""The operators relay's SQL (or any SQL) uses most."""

_BOOLEAN_OPERATORS = {"=", "<>", "<", ">", "<=", ">=", "~~", "!~~", "~", "@>", "<@", "&&", "?"}

_CALL = re.compile(r"(?<![.\w])([a-z_][a-z0-9_]*)\s*\(", re.IGNORECASE)
_NOT_FUNCTIONS = {
    "and", "or", "not", "in", "any", "all", "exists", "values", "as", "on", "over", "using",
    "filter", "coalesce", "nullif", "greatest", "least", "array", "row", "case", "when", "then",
    "cast", "select", "from", "where", "returns", "table", "function", "trigger", "index",
    "references", "primary", "key", "unique", "check", "default", "lateral", "with", "insert",
    "into", "update", "set", "delete", "returning", "partition", "by", "order", "group",
}  # fmt: skip


def called_functions() -> list[str]:
    """Every unqualified name relay's SQL calls like a function (queries, migrations, install
    scripts): the names a same-named trap could take the place of."""
    names: set[str] = set()
    for path in SQL.rglob("*.sql"):
        for match in _CALL.finditer(path.read_text(encoding="utf-8")):
            name = match[1].lower()
            if name not in _NOT_FUNCTIONS:
                names.add(name)
    return sorted(names)


_SETUP = """
CREATE SCHEMA IF NOT EXISTS trapper;
GRANT USAGE ON SCHEMA trapper TO PUBLIC;
CREATE SEQUENCE IF NOT EXISTS trapper.calls;
GRANT USAGE, SELECT ON SEQUENCE trapper.calls TO PUBLIC;
CREATE TABLE IF NOT EXISTS trapper.log (name text, by_role text DEFAULT current_user);
GRANT INSERT ON trapper.log TO PUBLIC;
"""

# Everything in the generator is qualified: it runs on the application's own connection, but it
# must make what it means to make whatever path that connection has.
_GENERATE = r"""
DO $generate$
DECLARE
    target text := %(schema)s;
    types text[] := %(types)s;
    ops text[] := %(operators)s;
    boolean_ops text[] := %(boolean_operators)s;
    names text[] := %(functions)s;
    l text; r text; op text; ret text; fn text; n int := 0;
    p record; args text[]; variant text[]; i int; t text; kind "char";
    body text := 'BEGIN PERFORM pg_catalog.nextval(''trapper.calls''); '
                 'INSERT INTO trapper.log (name) VALUES (%%L); RETURN NULL; END';
BEGIN
    -- Operators for every pair pg_catalog has no exact match for.
    FOREACH l IN ARRAY types LOOP
        FOREACH r IN ARRAY types LOOP
            FOREACH ret IN ARRAY ARRAY['boolean', l] LOOP
                n := n + 1;
                fn := pg_catalog.format('%%I.trap_op_%%s', target, n);
                EXECUTE pg_catalog.format(
                    'CREATE FUNCTION %%s(%%s, %%s) RETURNS %%s LANGUAGE plpgsql AS %%L',
                    fn, l, r, ret, pg_catalog.format(body, fn || '(' || l || ', ' || r || ')'));
                FOREACH op IN ARRAY ops LOOP
                    CONTINUE WHEN (ret = 'boolean') <> (op = ANY(boolean_ops));
                    CONTINUE WHEN ret = 'boolean' AND l = 'boolean' AND NOT op = ANY(boolean_ops);
                    CONTINUE WHEN EXISTS (
                        SELECT FROM pg_catalog.pg_operator o
                        WHERE o.oprnamespace = 'pg_catalog'::pg_catalog.regnamespace
                          AND o.oprname = op AND o.oprleft = l::pg_catalog.regtype
                          AND o.oprright = r::pg_catalog.regtype);
                    BEGIN
                        EXECUTE pg_catalog.format(
                            'CREATE OPERATOR %%I.%%s '
                            '(LEFTARG = %%s, RIGHTARG = %%s, FUNCTION = %%s)',
                            target, op, l, r, fn);
                    EXCEPTION WHEN duplicate_function OR invalid_function_definition THEN
                        NULL;  -- a polymorphic pair PostgreSQL does not allow
                    END;
                END LOOP;
            END LOOP;
        END LOOP;
    END LOOP;

    -- Same-named functions: for each signature pg_catalog has for a name relay's SQL calls,
    -- the same with one argument of another type (polymorphic and "any" arguments included),
    -- and for a variadic one, two and four arguments of each type.
    FOR p IN
        SELECT f.proname, f.prokind, f.provariadic <> 0 AS variadic,
               pg_catalog.array_agg(pg_catalog.format_type(a.t, NULL) ORDER BY a.i) AS args
        FROM pg_catalog.pg_proc f
        CROSS JOIN LATERAL pg_catalog.unnest(f.proargtypes::pg_catalog.oid[])
            WITH ORDINALITY a (t, i)
        WHERE f.pronamespace = 'pg_catalog'::pg_catalog.regnamespace
          AND f.proname = ANY(names) AND f.prokind IN ('f', 'a')
        GROUP BY f.oid, f.proname, f.prokind, f.provariadic
        HAVING pg_catalog.bool_and(pg_catalog.format_type(a.t, NULL) NOT IN
                   ('internal', 'cstring', 'trigger', 'event_trigger', 'record'))
    LOOP
        FOREACH t IN ARRAY types LOOP
            FOR i IN 1 .. pg_catalog.cardinality(p.args) + CASE WHEN p.variadic THEN 2 ELSE 0 END
            LOOP
                IF i <= pg_catalog.cardinality(p.args) THEN
                    variant := p.args;
                    variant[i] := t;
                ELSIF i = pg_catalog.cardinality(p.args) + 1 THEN
                    variant := ARRAY['text', t];
                ELSE
                    variant := ARRAY['text', t, 'text', t];
                END IF;
                variant := pg_catalog.array_replace(variant, '"any"', 'text');
                CONTINUE WHEN EXISTS (
                    SELECT FROM pg_catalog.pg_proc f
                    WHERE f.pronamespace = 'pg_catalog'::pg_catalog.regnamespace
                      AND f.proname = p.proname
                      AND f.proargtypes::pg_catalog.oid[] = (
                          SELECT pg_catalog.array_agg(v::pg_catalog.regtype::pg_catalog.oid
                                                      ORDER BY k)
                          FROM pg_catalog.unnest(variant) WITH ORDINALITY u (v, k)));
                ret := CASE WHEN variant[1] LIKE 'any%%' THEN variant[1] ELSE 'text' END;
                n := n + 1;
                fn := pg_catalog.format('%%I.trap_fn_%%s', target, n);
                BEGIN
                    IF p.prokind = 'a' THEN
                        EXECUTE pg_catalog.format(
                            'CREATE FUNCTION %%s(text, %%s) RETURNS text LANGUAGE plpgsql AS %%L',
                            fn, pg_catalog.array_to_string(variant, ', '),
                            pg_catalog.format(body, p.proname));
                        EXECUTE pg_catalog.format(
                            'CREATE AGGREGATE %%I.%%I(%%s) (SFUNC = %%s, STYPE = text)',
                            target, p.proname, pg_catalog.array_to_string(variant, ', '), fn);
                    ELSE
                        EXECUTE pg_catalog.format(
                            'CREATE FUNCTION %%I.%%I(%%s) RETURNS %%s LANGUAGE plpgsql AS %%L',
                            target, p.proname, pg_catalog.array_to_string(variant, ', '), ret,
                            pg_catalog.format(body, p.proname || '(' ||
                                pg_catalog.array_to_string(variant, ', ') || ')'));
                    END IF;
                EXCEPTION WHEN duplicate_function OR invalid_function_definition
                              OR datatype_mismatch OR wrong_object_type THEN
                    NULL;  -- made already (two signatures gave one variant), or not allowed
                END;
            END LOOP;
        END LOOP;
    END LOOP;
END
$generate$;
"""


def set_traps(conn: Conn, schema: str) -> None:
    """Set every trap in ``schema`` (which ``conn``'s role must be able to create objects in)."""
    conn.execute(_SETUP)
    statement = _GENERATE % {
        "schema": sql.Literal(schema).as_string(conn),
        "types": sql.Literal(TYPES).as_string(conn),
        "operators": sql.Literal(OPERATORS).as_string(conn),
        "boolean_operators": sql.Literal(sorted(_BOOLEAN_OPERATORS)).as_string(conn),
        "functions": sql.Literal(called_functions()).as_string(conn),
    }
    conn.execute(statement.encode())


def calls(conn: Conn) -> int:
    """How many times any trap ran, in any session, committed or not."""
    row = conn.execute(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM trapper.calls"
    ).fetchone()
    return int(row[0]) if row else 0


def log(conn: Conn) -> list[tuple[str, str]]:
    """Which traps ran, as whom (from transactions that committed)."""
    return [(r[0], r[1]) for r in conn.execute("SELECT name, by_role FROM trapper.log")]


def count(conn: Conn, schema: str) -> tuple[int, int]:
    """How many operators and functions ``schema`` holds: the traps set."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM pg_operator WHERE oprnamespace = %s::regnamespace),"
        " (SELECT count(*) FROM pg_proc WHERE pronamespace = %s::regnamespace)",
        (schema, schema),
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])
