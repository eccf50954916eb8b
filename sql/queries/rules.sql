-- The rules, the models and what relay preview reads to show what a change becomes
-- (relay/rules/, relay/cli/preview.py).

-- name: load_rules
-- The rules a relay matches changes against (enabled ones; all of them for `relay rules check`).
SELECT r.id, r.name, r.tables, r.events, r.conditions::text AS conditions,
       r.action_data::text AS action_data,
       w.id AS webhook_id, w.name AS webhook_name, w.payload_url, w.http_method,
       w.http_content_type, w.additional_headers, w.body_template, w.secret, w.signature,
       w.previous_secret, w.previous_secret_until,
       w.ssl_verification, w.ca_file_path, w.timeout_seconds, w.enabled AS webhook_enabled,
       w.max_attempts, w.retry_base_seconds, w.retry_max_seconds, w.batch_size, w.batch_wait_ms,
       w.concurrency, w.rate_limit, w.ordering, w.ordering_key, w.body_format,
       w.related::text AS related, w.coalesce_changes,
       w.paused_at IS NOT NULL AS webhook_paused
FROM relay.event_rules r
JOIN relay.webhooks w ON w.id = r.webhook_id
WHERE r.enabled OR %(everything)s
ORDER BY r.id;

-- name: tracked_columns
-- Every tracked table's columns as its changes' images hold them, for `relay rules check` to hold
-- conditions' paths against: whether the value is a plain JSON scalar (not an array, a composite
-- or a json-like type a path may go into), and whether exclude_columns leaves it out.
SELECT t.schema_name, t.table_name, a.attname::text AS column_name,
       pg_catalog.format_type(a.atttypid, a.atttypmod) AS column_type,
       ty.typcategory NOT IN ('A', 'C', 'U', 'X') AS scalar,
       a.attname::text = ANY (t.exclude_columns) AS excluded
FROM relay.tracked t
JOIN pg_catalog.pg_attribute a ON a.attrelid = t.tbl AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid
ORDER BY t.schema_name, t.table_name, a.attnum;

-- name: unused_webhooks
-- Webhooks no rule calls, for `relay rules check` (the same columns as load_rules').
SELECT w.id AS webhook_id, w.name AS webhook_name, w.payload_url, w.http_method,
       w.http_content_type, w.additional_headers, w.body_template, w.secret, w.signature,
       w.previous_secret, w.previous_secret_until,
       w.ssl_verification, w.ca_file_path, w.timeout_seconds, w.enabled AS webhook_enabled,
       w.max_attempts, w.retry_base_seconds, w.retry_max_seconds, w.batch_size, w.batch_wait_ms,
       w.concurrency, w.rate_limit, w.ordering, w.ordering_key, w.body_format,
       w.related::text AS related, w.coalesce_changes,
       w.paused_at IS NOT NULL AS webhook_paused
FROM relay.webhooks w
WHERE NOT EXISTS (SELECT FROM relay.event_rules r WHERE r.webhook_id = w.id)
ORDER BY w.id;

-- name: related_rows
-- The rows a webhook's `related` option nests (relay.related_rows, sql/functions/delivery.sql):
-- the position in %(keys)s of each key found, and its row's JSON text.
SELECT r.i, r."row"::text
FROM relay.related_rows(%(schema_name)s, %(table_name)s, %(fk_column)s, %(nested_as)s,
                        %(columns)s::text[], %(keys)s::text[]) r;

-- name: rules_version
-- Bumped by every statement that changes webhooks or event rules (0006).
SELECT version FROM relay.rules_version;

-- name: outbox_change
-- One outbox row for rendering; the images as their json text, so that numbers keep their exact
-- digits. With `coalesce` (a webhook that coalesces, 0031), the last change of a group is its
-- group's event: the op made of its first's and its own, its first's old image (as the claims
-- return it; change_group says when there is no event).
SELECT o.id, o.schema_name, o.table_name,
       CASE WHEN f.id IS NULL THEN o.op::text
            WHEN f.op = 'insert' THEN 'insert'
            WHEN o.op = 'delete' THEN 'delete'
            ELSE 'update' END AS op,
       CASE WHEN f.id IS NULL THEN o.old::text ELSE f.old::text END AS old,
       o.new::text, o.pk::text, o.username, o.request_id, o.request_path, o.request_method,
       o.txid::text, o.created_at
FROM relay.outbox o
LEFT JOIN LATERAL (
    SELECT f.id, f.op, f.old FROM relay.outbox f
    WHERE %(coalesce)s
      AND f.id = (SELECT min(m.id) FROM relay.outbox m WHERE m.coalesced_into = o.id)
) f ON true
WHERE o.id = %(id)s;

-- name: change_group
-- What a webhook that coalesces (0031) makes of a change, for relay preview: the change whose
-- event it is in (coalesced_into), or, for a group's last change, whether its group was
-- created and deleted in its transaction (no event at all).
SELECT o.coalesced_into,
       coalesce((SELECT f.op = 'insert' AND o.op = 'delete' FROM relay.outbox f
                 WHERE f.id = (SELECT min(m.id) FROM relay.outbox m
                               WHERE m.coalesced_into = o.id)), false) AS cancelled
FROM relay.outbox o WHERE o.id = %(id)s;

-- name: transaction_changes
-- The changes of a change's transaction that fan-out has not grouped yet, as
-- changes_to_fan_out returns them, when that change is one of them: relay preview groups them as
-- fan-out will (relay/delivery/coalesce.py) for a webhook that coalesces, before the relay has
-- (coalesced_into is written at fan-out). No index serves txid: this reads the outbox, once
-- per preview, never in the relay's loops.
SELECT o.id, true AS fresh,
       /*> fan_out_change */,
       o.webhook_id AS target, false AS requeued, NULL::bigint AS coalesced_into,
       NULL::bigint AS coalesced_from
FROM relay.outbox o
WHERE o.txid = (SELECT t.txid FROM relay.outbox t
                WHERE t.id = %(id)s AND t.status = 'pending' AND t.fanned_out_at IS NULL
                  AND t.requeued_at IS NULL)
  AND o.status = 'pending' AND o.fanned_out_at IS NULL AND o.requeued_at IS NULL
ORDER BY o.id;

-- name: load_models
-- Tables whose changes carry a model name, loaded with the rules: relay run and relay preview
-- name each change's model from this map rather than looking it up per change (2.4 us each
-- time, twice per change, at fan-out and at claim). relay.track bumps relay.rules_version when a model changes (0019).
SELECT schema_name, table_name, model FROM relay.tracked WHERE model IS NOT NULL;
