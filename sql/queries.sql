-- Every query relay's Python code runs, by name (relay.sqlfiles.query). Parameters use
-- psycopg's %(name)s style.

-- name: install_lock
-- Serialises concurrent installs, upgrades and uninstalls (psql's install.sql takes it too).
SELECT pg_advisory_xact_lock(hashtext('relay.install'));

-- name: migrations_table_exists
SELECT to_regclass('relay.migrations') IS NOT NULL;

-- name: applied_migrations
SELECT version FROM relay.migrations ORDER BY version;

-- name: track
SELECT relay.track(
    %(table)s::regclass,
    coalesce(%(events)s::text[], ARRAY['insert', 'update', 'delete', 'truncate']),
    %(update_columns)s::text[],
    %(exclude_columns)s::text[]);

-- name: untrack
SELECT relay.untrack(%(table)s::regclass);

-- name: list_tracked
SELECT schema_name, table_name, partitioned, events, update_columns, exclude_columns,
       pk_columns, tracked_at
FROM relay.tracked
ORDER BY schema_name, table_name;

-- name: demo_outbox_after
SELECT id, op, schema_name, table_name, pk::text, old::text, new::text, username, request_id
FROM relay.outbox WHERE id > %(after)s ORDER BY id;
