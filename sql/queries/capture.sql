-- The tracked tables and their capture (relay track, relay untrack, relay/cli/tables.py), and a
-- table named on the command line.

-- name: track
SELECT relay.track(
    %(table)s::regclass,
    coalesce(%(events)s::text[], ARRAY['insert', 'update', 'delete', 'truncate']),
    %(update_columns)s::text[],
    %(exclude_columns)s::text[],
    %(model)s::text);

-- name: untrack
SELECT relay.untrack(%(table)s::regclass);

-- name: list_tracked
SELECT schema_name, table_name, partitioned, events, update_columns, exclude_columns,
       pk_columns, tracked_at, capture_current, model
FROM relay.tracked
ORDER BY schema_name, table_name;

-- name: refresh_capture
-- Regenerate the capture functions of tables whose columns changed (0007): until then their
-- writes take the slower path that builds the statement from the catalogs.
SELECT relay.refresh_capture();

-- name: names_as_written
-- For the next statement only (relay/store.py, Store.table_name): an unqualified table name given
-- on the command line is looked up as PostgreSQL's default search path would, in the schema named
-- after the role, then in public. relay's sessions otherwise search pg_catalog alone (relay/db.py,
-- SEARCH_PATH), where no user table is; table_oid, run on this path, resolves no operator or
-- function another role could have written (every name in it is qualified), and the next
-- statement, names_pinned, puts pg_catalog's path back.
SELECT pg_catalog.set_config('search_path', '"$user", public', true);

-- name: table_oid
SELECT pg_catalog.to_regclass(%(table)s::pg_catalog.text)::pg_catalog.oid;

-- name: names_pinned
SELECT pg_catalog.set_config('search_path', %(search_path)s::pg_catalog.text, true);

-- name: table_name
-- A table by oid, with its names and a schema-qualified name any statement may refer to it by.
SELECT n.nspname AS schema_name, c.relname AS table_name,
       quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = %(oid)s;
