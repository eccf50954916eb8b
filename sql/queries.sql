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

-- name: load_rules
-- The rules a relay matches changes against (enabled ones; all of them for `relay rules check`).
SELECT r.id, r.name, r.tables, r.events, r.conditions::text AS conditions,
       r.action_data::text AS action_data,
       w.id AS webhook_id, w.name AS webhook_name, w.payload_url, w.http_method,
       w.http_content_type, w.additional_headers, w.body_template, w.secret, w.signature,
       w.ssl_verification, w.ca_file_path, w.timeout_seconds, w.enabled AS webhook_enabled
FROM relay.event_rules r
JOIN relay.webhooks w ON w.id = r.webhook_id
WHERE r.enabled OR %(everything)s
ORDER BY r.id;

-- name: outbox_change
-- One outbox row for rendering; jsonb as text so that numbers keep their exact digits.
SELECT id, schema_name, table_name, op::text, old::text, new::text, pk::text, username,
       request_id, txid::text, created_at
FROM relay.outbox WHERE id = %(id)s;
