-- Every query relay's Python code runs, by name (relay.sqlfiles.query). Parameters use
-- psycopg's %(name)s style.

-- name: install_lock
-- Serialises concurrent installs, upgrades and uninstalls (psql's install.sql takes it too).
SELECT pg_advisory_xact_lock(hashtext('relay.install'));

-- name: migrations_table_exists
SELECT to_regclass('relay.migrations') IS NOT NULL;

-- name: applied_migrations
SELECT version FROM relay.migrations ORDER BY version;

-- name: definitions_state
-- The version and digest of the definitions last applied (0024); no row before any.
SELECT version, digest FROM relay.definitions;

-- name: definitions_applied
WITH gone AS (DELETE FROM relay.definitions)
INSERT INTO relay.definitions (version, digest) VALUES (%(version)s, %(digest)s);

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

-- name: demo_pending
SELECT count(*) FROM relay.outbox WHERE status = 'pending';

-- name: demo_summary
-- Each change of the demo, how it ended, and per webhook what became of it.
SELECT o.id, o.op::text, o.status::text,
       coalesce(string_agg(w.name || ' ' || d.status, ', ' ORDER BY w.name), '-')
FROM relay.outbox o
LEFT JOIN relay.deliveries d ON d.outbox_id = o.id
LEFT JOIN relay.webhooks w ON w.id = d.webhook_id
GROUP BY o.id
ORDER BY o.id;

-- name: demo_outbox_after
SELECT id, op, schema_name, table_name, pk::text, old::text, new::text, username, request_id
FROM relay.outbox WHERE id > %(after)s ORDER BY id;

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
SELECT o.id, true AS fresh, o.schema_name, o.table_name, o.op::text, o.pk::jsonb::text AS pk,
       relay.key_before(o.pk, o.old)::text AS old_pk,
       coalesce(octet_length(o.old::text), 0) + coalesce(octet_length(o.new::text), 0) AS bytes,
       coalesce(octet_length(o.old::text), 0) AS old_bytes,
       o.username, o.request_id, o.request_path, o.request_method, o.txid::text, o.created_at,
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

-- name: changes_to_fan_out
-- Fan-out runs in one relay at a time, so changes are matched in id order (see 0003): only the
-- relay that gets the lock (held until its transaction ends) sees rows; the others get none.
-- Three ways in (0012): ids after scanned_to (every visible row, fresh or not:
-- relay/delivery/window.py works out the gaps from them), fresh rows in gaps some of whose
-- transactions have ended, and re-queued changes. Each row carries the statement's snapshot.
-- The ids of a sequence that went back (TRUNCATE ... RESTART IDENTITY) are read from the start.
-- The row images stay in the database: matching needs them only for rules with conditions
-- (change_rows fetches those, as many bytes at a time as the relay may hold), and the size and
-- the key an UPDATE moved the row from are worked out here, so a 50 MB row costs the relay
-- nothing to fan out. The key is the jsonb text of pk: row keys are compared as text, and that
-- text is the same whether the change was captured as jsonb (before 0011) or json.
WITH lock AS MATERIALIZED (
    SELECT pg_try_advisory_xact_lock(hashtext('relay.fan_out')) AS held
), here AS MATERIALIZED (
    SELECT CASE WHEN coalesce(pg_sequence_last_value('relay.outbox_id_seq'), 0) < p.scanned_to
                THEN 0 ELSE p.scanned_to END AS scanned_to,
           p.scanned_to AS stored_to, pg_current_snapshot() AS snapshot
    FROM relay.fan_out_position p, lock WHERE lock.held
), ripe AS MATERIALIZED (
    SELECT DISTINCT g.lo, g.hi FROM relay.fan_out_gaps g, here
    WHERE pg_visible_in_snapshot(g.xid, here.snapshot)
), candidates AS MATERIALIZED (
    (SELECT a.id FROM here CROSS JOIN LATERAL (
         SELECT o.id FROM relay.outbox o WHERE o.id > here.scanned_to
         ORDER BY o.id LIMIT %(limit)s) a)
    UNION
    (SELECT g.id FROM ripe CROSS JOIN LATERAL (
         SELECT o.id FROM relay.outbox o
         WHERE o.id BETWEEN ripe.lo AND ripe.hi AND o.status = 'pending'
           AND o.fanned_out_at IS NULL
         ORDER BY o.id LIMIT %(limit)s) g
     ORDER BY g.id LIMIT %(limit)s)
    UNION
    (SELECT o.id FROM relay.outbox o
     WHERE o.status = 'pending' AND o.fanned_out_at IS NULL AND o.requeued_at IS NOT NULL
     ORDER BY o.id LIMIT %(limit)s)
)
-- Each way in is a lookup that starts where it must (LATERAL: the index scan starts at
-- scanned_to, and at each gap), and the rows are fetched by id: written as joins, the planner
-- read the outbox from its first id and scanned all of it for the gaps, whose cost grew with
-- the backlog (70 ms a call with 60,000 changes waiting; bench/throughput.py).
SELECT o.id, o.status = 'pending' AND o.fanned_out_at IS NULL AS fresh,
       o.schema_name, o.table_name, o.op::text, o.pk::jsonb::text AS pk,
       relay.key_before(o.pk, o.old)::text AS old_pk,
       coalesce(octet_length(o.old::text), 0) + coalesce(octet_length(o.new::text), 0) AS bytes,
       coalesce(octet_length(o.old::text), 0) AS old_bytes,
       o.username, o.request_id, o.request_path, o.request_method, o.txid::text,
       o.created_at, o.webhook_id AS target,
       o.requeued_at IS NOT NULL AS requeued, o.coalesced_into,
       -- A re-queued change that ended a group (0031): its first, to make its event again.
       CASE WHEN o.requeued_at IS NOT NULL
            THEN (SELECT min(m.id) FROM relay.outbox m WHERE m.coalesced_into = o.id)
       END AS coalesced_from,
       here.scanned_to, here.stored_to,
       ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(here.snapshot) x) AS running,
       pg_snapshot_xmax(here.snapshot)::text::bigint AS xmax, here.snapshot::text AS snapshot
FROM here LEFT JOIN relay.outbox o ON o.id = ANY(ARRAY(SELECT id FROM candidates))
ORDER BY o.id
LIMIT %(limit)s;

-- name: transaction_rest
-- What a full fan-out pass reads on, for webhooks ordered by transaction or key
-- (relay/delivery/fanout.py): the changes of the transactions it cut after its last id
-- (`after`), and every change between, visible in the pass's snapshot and not fanned out yet,
-- as changes_to_fan_out returns them. Fan-out asks again for the transactions this brings
-- (`txids`: those not asked before) until none goes further; then no transaction is split
-- around another, and none that committed before one the pass takes is left to a later pass
-- (0026_steering.sql). Only rows not fanned out yet are looked at, in outbox_to_fan_out: the
-- last id of the transactions is found by reading every such row after `after` (the backlog
-- past the pass, a heap fetch each for its txid: there is no index on txid, which every
-- captured change would pay for), and only for passes that were full.
WITH upto AS MATERIALIZED (
    SELECT max(o.id) AS id FROM relay.outbox o
    WHERE o.txid = ANY(%(txids)s::text[]::xid8[]) AND o.id > %(after)s
      AND o.status = 'pending' AND o.fanned_out_at IS NULL
)
SELECT o.id, true AS fresh, o.schema_name, o.table_name, o.op::text, o.pk::jsonb::text AS pk,
       relay.key_before(o.pk, o.old)::text AS old_pk,
       coalesce(octet_length(o.old::text), 0) + coalesce(octet_length(o.new::text), 0) AS bytes,
       coalesce(octet_length(o.old::text), 0) AS old_bytes,
       o.username, o.request_id, o.request_path, o.request_method, o.txid::text,
       o.created_at, o.webhook_id AS target,
       o.requeued_at IS NOT NULL AS requeued, o.coalesced_into,
       CASE WHEN o.requeued_at IS NOT NULL
            THEN (SELECT min(m.id) FROM relay.outbox m WHERE m.coalesced_into = o.id)
       END AS coalesced_from
FROM upto, relay.outbox o
WHERE o.id > %(after)s AND o.id <= upto.id
  AND o.status = 'pending' AND o.fanned_out_at IS NULL
  AND pg_visible_in_snapshot(o.txid, %(snapshot)s::pg_snapshot)
ORDER BY o.id;

-- name: newest_xid
-- A transaction id taken after changes_to_fan_out's snapshot (fan-out's own, in its transaction,
-- which writes anyway): a change that look missed belongs to a transaction below it
-- (relay/delivery/window.py, advance).
SELECT pg_current_xact_id()::text::bigint;

-- name: fan_out_gaps
SELECT lo, hi, array_agg(xid::text::bigint ORDER BY xid) AS xids
FROM relay.fan_out_gaps GROUP BY lo, hi ORDER BY lo;

-- name: move_fan_out_window
-- What fan-out has looked at (relay/delivery/window.py): its position and the gaps, written whole.
WITH position AS (
    UPDATE relay.fan_out_position SET scanned_to = %(scanned_to)s
), cleared AS (
    DELETE FROM relay.fan_out_gaps
)
INSERT INTO relay.fan_out_gaps (lo, hi, xid)
SELECT g.lo, g.hi, g.xid::text::xid8
FROM unnest(%(los)s::bigint[], %(his)s::bigint[], %(xids)s::bigint[]) AS g (lo, hi, xid);

-- name: change_rows
-- The row images of changes that rules with conditions must look at (see changes_to_fan_out).
SELECT id, old::text, new::text FROM relay.outbox WHERE id = ANY(%(ids)s::bigint[]);

-- name: add_deliveries
-- New deliveries; a delivery that failed before is armed again (a re-queued change), one that
-- succeeded is left alone, so a change goes again only to the webhooks that did not get it. A
-- re-armed delivery leaves its old batch: it goes in a new one, under a new delivery id (the
-- old batch's other changes may not be re-queued with it). A delivery with an order key (a
-- webhook ordered by transaction or key, 0026) takes its position in rank order (commit order,
-- relay/delivery/plan.py): the ranks are sorted before the positions are drawn. A re-armed one
-- keeps the position it had, so it goes back to its place. The order key follows the webhook's
-- ordering as the table has it (relay.order_key_now): a relay that has not yet reloaded its
-- rules after the ordering changed must not write deliveries of the old scope. Nor of a rule
-- or webhook removed since it loaded them (relay rule remove, the console, while the batch was
-- matched): their foreign keys refused the whole batch, and the relay started its session
-- again; the change no longer matches them, as it would not had it been fanned out after.
INSERT INTO relay.deliveries (outbox_id, webhook_id, rule_id, row_key, old_row_key, change_bytes,
                              order_key, position, coalesced_from)
SELECT g.outbox_id, g.webhook_id, g.rule_id, g.row_key, g.old_row_key, g.change_bytes,
       g.order_key,
       CASE WHEN g.order_key IS NOT NULL THEN nextval('relay.delivery_positions') END,
       g.coalesced_from
FROM (SELECT g.outbox_id, g.webhook_id, g.rule_id, g.row_key, g.old_row_key, g.change_bytes,
             relay.order_key_now(g.webhook_id, g.order_key) AS order_key, g.coalesced_from
      FROM unnest(%(outbox_ids)s::bigint[], %(webhook_ids)s::bigint[], %(rule_ids)s::bigint[],
                  %(row_keys)s::text[], %(old_row_keys)s::text[], %(change_bytes)s::bigint[],
                  %(order_keys)s::text[], %(ranks)s::bigint[], %(coalesced_froms)s::bigint[])
          AS g (outbox_id, webhook_id, rule_id, row_key, old_row_key, change_bytes, order_key,
                rank, coalesced_from)
      WHERE EXISTS (SELECT FROM relay.event_rules r WHERE r.id = g.rule_id)
        AND EXISTS (SELECT FROM relay.webhooks w WHERE w.id = g.webhook_id)
      ORDER BY g.rank OFFSET 0) g
ON CONFLICT (outbox_id, webhook_id) DO UPDATE
    SET status = 'pending', attempts = 0, next_attempt_at = now(), leased_until = NULL,
        earlier_attempts = relay.deliveries.earlier_attempts + relay.deliveries.attempts,
        leased_by = NULL, last_error = NULL, last_status_code = NULL, batch_id = NULL,
        batch_delivery_id = NULL, replay = false, old_row_key = EXCLUDED.old_row_key,
        change_bytes = EXCLUDED.change_bytes, order_key = EXCLUDED.order_key,
        coalesced_from = EXCLUDED.coalesced_from,
        position = CASE WHEN EXCLUDED.order_key IS NOT NULL
                        THEN coalesce(relay.deliveries.position, EXCLUDED.position) END
    WHERE relay.deliveries.status = 'failed';

-- name: rearm_deliveries
-- The deliveries of re-queued changes (`relay retry`, the SQL reset: relay.requeue), written as
-- add_deliveries writes new ones, while hold_deliveries holds every claim and outcome back: one
-- that failed before is armed again, one that succeeded is left alone. A failed one stays
-- failed, its reason saying why, when it is superseded (superseded_by, 0025_superseded.sql: a
-- later change of its row was delivered to the webhook after it failed) and nobody asked for it
-- anyway (send_superseded), or while a later change of its row (either key of a key move) is
-- in flight to the webhook: it would race that change to the receiver, and be superseded if
-- that one is delivered; the operator retries it once that is done. A webhook that never had
-- the change gets a new delivery, failed for the second reason too. The four lookups of a
-- later change in flight, one per pairing of keys, run for these deliveries only.
WITH given AS (
    SELECT g.outbox_id, g.webhook_id, g.rule_id, g.row_key, g.old_row_key, g.change_bytes,
           relay.order_key_now(g.webhook_id, g.order_key) AS order_key, g.rank, g.coalesced_from
    FROM unnest(%(outbox_ids)s::bigint[], %(webhook_ids)s::bigint[], %(rule_ids)s::bigint[],
                %(row_keys)s::text[], %(old_row_keys)s::text[], %(change_bytes)s::bigint[],
                %(order_keys)s::text[], %(ranks)s::bigint[], %(coalesced_froms)s::bigint[])
        AS g (outbox_id, webhook_id, rule_id, row_key, old_row_key, change_bytes, order_key,
              rank, coalesced_from)
    -- Not for a rule or webhook removed since the relay loaded them (as in add_deliveries).
    WHERE EXISTS (SELECT FROM relay.event_rules r WHERE r.id = g.rule_id)
      AND EXISTS (SELECT FROM relay.webhooks w WHERE w.id = g.webhook_id)
), judged AS MATERIALIZED (
    SELECT g.*, d.status::text AS was,
           CASE WHEN d.status = 'failed' AND d.superseded_by IS NOT NULL
                     AND NOT d.send_superseded
                THEN format('superseded: change %%s of this row was delivered after it',
                            d.superseded_by)
                WHEN f.outbox_id IS NOT NULL
                THEN format('not sent again: change %%s of this row was being sent to the webhook;'
                            ' retry it once that is done', f.outbox_id)
                WHEN s.batch_id IS NOT NULL
                THEN format('not sent again: batch %%s of its ordering key holds changes placed'
                            ' before and after it; retry it once that batch is done', s.batch_id)
           END AS kept
    FROM given g
    LEFT JOIN relay.deliveries d ON d.outbox_id = g.outbox_id AND d.webhook_id = g.webhook_id
    CROSS JOIN LATERAL (
        SELECT least(
            (SELECT min(e.outbox_id) FROM relay.deliveries e
             WHERE e.webhook_id = g.webhook_id AND e.row_key = g.row_key
               AND e.status = 'pending' AND e.outbox_id > g.outbox_id
               AND e.leased_until >= now()),
            (SELECT min(e.outbox_id) FROM relay.deliveries e
             WHERE e.webhook_id = g.webhook_id AND e.row_key = g.old_row_key
               AND e.status = 'pending' AND e.outbox_id > g.outbox_id
               AND e.leased_until >= now()),
            (SELECT min(e.outbox_id) FROM relay.deliveries e
             WHERE e.webhook_id = g.webhook_id AND e.old_row_key = g.row_key
               AND e.status = 'pending' AND e.outbox_id > g.outbox_id
               AND e.leased_until >= now()),
            (SELECT min(e.outbox_id) FROM relay.deliveries e
             WHERE e.webhook_id = g.webhook_id AND e.old_row_key = g.old_row_key
               AND e.status = 'pending' AND e.outbox_id > g.outbox_id
               AND e.leased_until >= now())) AS outbox_id
    ) f
    -- Ordered (0026): as in replay_rearm, a batch of its order key waiting to go again whole
    -- that holds changes placed before it and after it.
    LEFT JOIN LATERAL (
        SELECT b.batch_id FROM relay.deliveries b
        WHERE d.position IS NOT NULL AND g.order_key IS NOT NULL
          AND b.webhook_id = g.webhook_id AND b.order_key = g.order_key
          AND b.status = 'pending' AND b.batch_id IS NOT NULL AND b.position < d.position
          AND EXISTS (SELECT FROM relay.deliveries a
                      WHERE a.batch_id = b.batch_id AND a.status = 'pending'
                        AND a.position > d.position)
        LIMIT 1
    ) s ON true
), kept AS (
    UPDATE relay.deliveries d SET last_error = j.kept, send_superseded = false
    FROM judged j
    WHERE d.outbox_id = j.outbox_id AND d.webhook_id = j.webhook_id AND d.status = 'failed'
      AND j.was = 'failed' AND j.kept IS NOT NULL
)
-- Positions as in add_deliveries: a failed delivery armed again keeps its own (it goes back to
-- its place, and the later deliveries of its order key wait behind it); a new one, or one
-- failed at once, takes the next in rank order (only a pending delivery holds its key).
INSERT INTO relay.deliveries (outbox_id, webhook_id, rule_id, row_key, old_row_key, change_bytes,
                              status, last_error, order_key, position, coalesced_from)
SELECT outbox_id, webhook_id, rule_id, row_key, old_row_key, change_bytes,
       CASE WHEN kept IS NULL THEN 'pending' ELSE 'failed' END::relay.delivery_status, kept,
       order_key,
       CASE WHEN order_key IS NOT NULL THEN nextval('relay.delivery_positions') END,
       coalesced_from
FROM (SELECT * FROM judged WHERE was IS DISTINCT FROM 'failed' OR kept IS NULL
      ORDER BY rank OFFSET 0) j
ON CONFLICT (outbox_id, webhook_id) DO UPDATE
    SET status = 'pending', attempts = 0, next_attempt_at = now(), leased_until = NULL,
        earlier_attempts = relay.deliveries.earlier_attempts + relay.deliveries.attempts,
        leased_by = NULL, last_error = NULL, last_status_code = NULL, batch_id = NULL,
        batch_delivery_id = NULL, replay = false, old_row_key = EXCLUDED.old_row_key,
        change_bytes = EXCLUDED.change_bytes, order_key = EXCLUDED.order_key,
        coalesced_from = EXCLUDED.coalesced_from,
        position = CASE WHEN EXCLUDED.order_key IS NOT NULL
                        THEN coalesce(relay.deliveries.position, EXCLUDED.position) END
    WHERE relay.deliveries.status = 'failed';

-- name: add_failed_deliveries
-- Deliveries whose rule could not be judged for the change (relay/delivery/plan.py): written
-- failed at once, with the reason as their one attempt. As in add_deliveries, a delivery that
-- failed before (a re-queued change) is written again and one that succeeded is left alone.
WITH failed AS (
    SELECT *
    FROM unnest(%(outbox_ids)s::bigint[], %(webhook_ids)s::bigint[], %(rule_ids)s::bigint[],
                %(row_keys)s::text[], %(errors)s::text[], %(coalesced_froms)s::bigint[])
        AS f (outbox_id, webhook_id, rule_id, row_key, error, coalesced_from)
    -- Not for a rule or webhook removed since the relay loaded them (as in add_deliveries).
    WHERE EXISTS (SELECT FROM relay.event_rules r WHERE r.id = f.rule_id)
      AND EXISTS (SELECT FROM relay.webhooks w WHERE w.id = f.webhook_id)
), written AS (
    INSERT INTO relay.deliveries (outbox_id, webhook_id, rule_id, row_key, status, attempts,
                                  last_error, coalesced_from)
    SELECT outbox_id, webhook_id, rule_id, row_key, 'failed', 1, error, coalesced_from
    FROM failed
    ON CONFLICT (outbox_id, webhook_id) DO UPDATE
        SET status = 'failed', attempts = 1, rule_id = EXCLUDED.rule_id, next_attempt_at = now(),
            coalesced_from = EXCLUDED.coalesced_from,
            earlier_attempts = relay.deliveries.earlier_attempts + relay.deliveries.attempts,
            leased_until = NULL, leased_by = NULL, last_status_code = NULL, batch_id = NULL,
            batch_delivery_id = NULL, replay = false, last_error = EXCLUDED.last_error
        WHERE relay.deliveries.status = 'failed'
    RETURNING outbox_id, webhook_id, earlier_attempts + 1 AS attempt, last_error
)
INSERT INTO relay.attempts (outbox_id, webhook_id, attempt, duration_ms, error)
SELECT outbox_id, webhook_id, attempt, 0, last_error FROM written;

-- name: fail_changes
-- Changes that could not be matched against the rules at all (relay/delivery/plan.py): failed,
-- with the reason.
UPDATE relay.outbox o
SET status = 'failed', processed_at = now(), fanned_out_at = now(), last_error = f.error
FROM unnest(%(ids)s::bigint[], %(errors)s::text[]) AS f (id, error)
WHERE o.id = f.id AND o.status = 'pending';

-- name: mark_fanned_out
UPDATE relay.outbox SET fanned_out_at = now() WHERE id = ANY(%(ids)s::bigint[]);

-- name: claim_deliveries
-- Due deliveries nobody holds, leased to this relay for lease_seconds and returned with their
-- change. Per webhook, never more than per_webhook less what this relay holds (busy_counts):
-- per_webhook is twice webhook_concurrency (relay/delivery/claim.py, PREFETCH), so that the next
-- request is ready when one ends and a claimed delivery waits at most one request for its slot
-- (well inside its lease); and never one whose row has an earlier change still pending for the
-- same webhook (in flight or waiting for a retry).
--
-- Bytes: change_bytes of what is claimed fits in bytes_free (what the relay may still hold),
-- and per webhook in bytes_per_webhook less what it holds already (so one webhook's large
-- changes never take all the room). Within a webhook, deliveries are taken in due order up to
-- the first that does not fit; across webhooks, smallest first (counting those a webhook could
-- not take, which only ever holds back larger ones): a large change waits for room while small
-- ones keep flowing. A change over max_change_bytes counts nothing and comes without its
-- images: it is never read, and fails (relay/delivery/claim.py, Claimed.of). The byte columns
-- are int, so that the running sums add bigints, not numerics (max_body_bytes is at most 1 GiB).
-- With the key-move check, this costs 0.5 ms more per claim than counts alone (3.9 ms rather
-- than 3.4 for 128 of 20,000 pending, bench/claims.py). Webhooks the relay sends batches to
-- (batched_ids) are claimed by claim_batch instead, and a paused webhook's (paused_at set: by
-- the operator, or by relay for a dead endpoint) by nobody until it is resumed.
--
-- Limits per endpoint (docs/operations.md): a webhook whose window differs from per_webhook (its
-- concurrency, or what its rate limit lets it send in the next second: relay/delivery/claim.py,
-- window) is in window_ids/window_sizes. A webhook with a concurrency gets no more than its
-- concurrency less the requests leased to anyone for it (relay.leased_requests: counted under a
-- lock per webhook, so relays claiming at once never lease more between them), and no
-- prefetch: what is leased may all be in flight; but for the deliveries this relay has had
-- answered and whose outcome it is writing (answered_webhooks, answered_ids: pairs). A webhook
-- with a rate limit gets none while its next request slot (relay.webhook_pace) is more than
-- pace_ahead seconds away: what is claimed waits for its slot, and must not wait for its lease
-- to run out.
WITH limited AS MATERIALIZED (
    SELECT ARRAY(SELECT w.id FROM relay.webhooks w
                 WHERE w.concurrency IS NOT NULL
                   AND w.id <> ALL(%(batched_ids)s::bigint[])) AS ids
), leased AS MATERIALIZED (
    -- Not even called without such a webhook (a plpgsql call costs 0.2 ms).
    SELECT l.webhook, l.requests
    FROM limited,
         relay.leased_requests(limited.ids, %(relay_id)s, %(answered_webhooks)s::bigint[],
                               %(answered_ids)s::bigint[]) AS l
    WHERE cardinality(limited.ids) > 0
), room AS (
    SELECT w.id AS webhook_id,
           CASE WHEN w.rate_limit IS NOT NULL
                     AND pace.next_slot > now() + make_interval(secs => %(pace_ahead)s) THEN 0
                ELSE least(coalesce(win.size, %(per_webhook)s) - coalesce(busy.n, 0),
                           w.concurrency - leased.requests) END AS free,
           %(bytes_per_webhook)s - coalesce(busy.bytes, 0) AS bytes_free,
           EXISTS (SELECT FROM relay.deliveries m
                   WHERE m.webhook_id = w.id AND m.old_row_key IS NOT NULL
                     AND m.status = 'pending') AS moves,
           -- Deliveries with an order key pending (0026: a webhook ordered by transaction or
           -- key): one probe of deliveries_key_order, empty for webhooks in row scope. While
           -- there are, they are claimed in order (heads, below) and those without a key wait.
           EXISTS (SELECT FROM relay.deliveries k
                   WHERE k.webhook_id = w.id AND k.order_key IS NOT NULL
                     AND k.status = 'pending') AS ordered
    FROM relay.webhooks w
    LEFT JOIN unnest(%(busy_ids)s::bigint[], %(busy_counts)s::int[], %(busy_bytes)s::bigint[])
        AS busy (id, n, bytes) ON busy.id = w.id
    LEFT JOIN unnest(%(window_ids)s::bigint[], %(window_sizes)s::int[]) AS win (id, size)
        ON win.id = w.id
    LEFT JOIN leased ON leased.webhook = w.id
    LEFT JOIN relay.webhook_pace pace ON pace.webhook_id = w.id
    WHERE w.id <> ALL(%(batched_ids)s::bigint[])
      -- A paused webhook (0026_steering.sql) gets none: its deliveries wait, in order.
      AND w.paused_at IS NULL
), due AS (
    (SELECT c.ctid, c.next_attempt_at, c.outbox_id, c.bytes, room.webhook_id, room.bytes_free
    FROM room
    CROSS JOIN LATERAL (
        SELECT d.ctid, d.next_attempt_at, d.outbox_id,
               CASE WHEN d.change_bytes > %(max_change_bytes)s THEN 0
                    ELSE d.change_bytes::int END AS bytes
        FROM relay.deliveries d
        WHERE d.webhook_id = room.webhook_id
          AND d.status = 'pending'
          AND d.next_attempt_at <= now()
          AND (d.leased_until IS NULL OR d.leased_until < now())
          -- The earliest pending change of its row for this webhook. Written as a correlated
          -- min() rather than NOT EXISTS: it is then always an index lookup, even before the
          -- table has statistics (the anti-join chose a scan of every pending delivery).
          AND d.outbox_id = (
              SELECT min(e.outbox_id) FROM relay.deliveries e
              WHERE e.webhook_id = d.webhook_id AND e.row_key = d.row_key
                AND e.status = 'pending')
          -- Key moves (an UPDATE of the primary key, 0009_key_moves.sql): nothing earlier and
          -- pending may share a key with this delivery, whichever of their keys is old or new.
          -- Looked up only while the webhook has a key move pending (room.moves: one probe of
          -- an index that is otherwise empty).
          AND (NOT room.moves OR relay.clear_of_key_moves(d.webhook_id, d.outbox_id, d.row_key,
                                                          d.old_row_key))
        ORDER BY d.next_attempt_at, d.outbox_id
        LIMIT greatest(room.free, 0)
        FOR UPDATE OF d SKIP LOCKED
    ) c
    WHERE room.free > 0 AND NOT room.ordered
    LIMIT %(limit)s)
    UNION ALL
    -- Ordered webhooks (0026): of each order key only its head, the pending delivery with the
    -- smallest position, and only while nobody holds it and it is due: a key's deliveries go
    -- one at a time, in position order (commit order). The keys are walked one index probe
    -- each (a skip scan of deliveries_key_order): a webhook ordered by transaction has one.
    -- Per-row order holds because positions respect it (a later change of a row is in the same
    -- transaction, after it, or in one that waited for its row lock and so took its last id
    -- after this one's commit: relay/delivery/plan.py, commit_order); a row whose changes
    -- render different keys still waits for its earlier changes placed before it (by position,
    -- so that nothing ever waits for something placed after it: no two keys can wait for each
    -- other), its key moves included.
    SELECT c.ctid, c.next_attempt_at, c.outbox_id, c.bytes, room.webhook_id, room.bytes_free
    FROM room
    CROSS JOIN LATERAL (
        WITH RECURSIVE heads (order_key, position) AS (
            (SELECT e.order_key, e.position FROM relay.deliveries e
             WHERE e.webhook_id = room.webhook_id AND e.order_key IS NOT NULL
               AND e.status = 'pending'
             ORDER BY e.order_key, e.position LIMIT 1)
            UNION ALL
            SELECT n.order_key, n.position FROM heads h CROSS JOIN LATERAL (
                SELECT e.order_key, e.position FROM relay.deliveries e
                WHERE e.webhook_id = room.webhook_id AND e.order_key > h.order_key
                  AND e.status = 'pending'
                ORDER BY e.order_key, e.position LIMIT 1) n
        )
        SELECT d.ctid, d.next_attempt_at, d.outbox_id, d.position,
               CASE WHEN d.change_bytes > %(max_change_bytes)s THEN 0
                    ELSE d.change_bytes::int END AS bytes
        FROM heads
        JOIN relay.deliveries d ON d.webhook_id = room.webhook_id
                               AND d.order_key = heads.order_key
                               AND d.position = heads.position AND d.status = 'pending'
        WHERE d.next_attempt_at <= now()
          AND (d.leased_until IS NULL OR d.leased_until < now())
          AND relay.placed_first(d.webhook_id, d.outbox_id, d.position, d.row_key,
                                 d.old_row_key, room.moves)
        ORDER BY d.position
        LIMIT greatest(room.free, 0)
        FOR UPDATE OF d SKIP LOCKED
    ) c
    WHERE room.free > 0 AND room.ordered
    LIMIT %(limit)s
), taken AS (
    SELECT ctid FROM (
        SELECT ctid, bytes_free,
               sum(bytes) OVER (PARTITION BY webhook_id ORDER BY next_attempt_at, outbox_id
                                ROWS UNBOUNDED PRECEDING) AS webhook_running,
               sum(bytes) OVER (ORDER BY bytes, outbox_id ROWS UNBOUNDED PRECEDING) AS running
        FROM due) counted
    WHERE webhook_running <= bytes_free AND running <= %(bytes_free)s
)
-- The rows are locked, so their ctids stand: updating by ctid keeps this a lookup per claimed
-- row (a join on the key let the planner hash the whole table once the backlog grew). Rows
-- locked above but not taken are free again when the statement ends.
UPDATE relay.deliveries d
SET leased_until = now() + make_interval(secs => %(lease_seconds)s),
    leased_by = %(relay_id)s,
    attempts = d.attempts + 1
FROM relay.outbox o
WHERE d.ctid = ANY(ARRAY(SELECT ctid FROM taken)) AND o.id = d.outbox_id
RETURNING d.outbox_id, d.webhook_id, d.rule_id, d.attempts,
          d.earlier_attempts + d.attempts AS attempt_number, d.change_bytes, d.replay,
          d.id AS delivery_id,
          CASE WHEN d.send_superseded THEN d.superseded_by END AS superseded_by,
          CASE WHEN NOT d.send_superseded THEN d.superseded_by END AS superseded_unasked,
          o.id, o.schema_name, o.table_name, o.pk::text, o.username, o.request_id,
          o.request_path, o.request_method, o.txid::text, o.created_at,
          -- Coalesced (0031: coalesced_from, the group's first change): the group's op, and
          -- the first change's old image (the row before the transaction).
          CASE WHEN d.coalesced_from IS NULL THEN o.op::text
               ELSE coalesce((SELECT CASE WHEN f.op = 'insert' THEN 'insert'
                                          WHEN o.op = 'delete' THEN 'delete'
                                          ELSE 'update' END
                              FROM relay.outbox f WHERE f.id = d.coalesced_from), o.op::text)
          END AS op,
          CASE WHEN d.change_bytes > %(max_change_bytes)s THEN NULL
               WHEN d.coalesced_from IS NULL THEN o.old::text
               ELSE (SELECT f.old::text FROM relay.outbox f WHERE f.id = d.coalesced_from)
          END AS old,
          CASE WHEN d.change_bytes <= %(max_change_bytes)s THEN o.new::text END AS new;

-- name: claim_batch
-- One batch for a webhook that takes them (webhooks.batch_size > 1), leased to this relay.
--
-- A batch that was sent before and is due again goes whole or not at all, under its id, with
-- no regard to batch_size or to a later change of the body limit: a retry carries exactly the
-- same changes under the same delivery id, whichever relay sends it, so a receiver that drops
-- an id it has processed loses nothing. It waits while another relay holds any of it, while the
-- relay has not the room for all of it, or while any of its changes has an earlier pending
-- change of its row outside it (a re-queued or replayed one: then that change goes first, in a
-- new batch), its row's key included (a key move: relay.clear_of_key_moves; no batch holds a
-- key move and a change it waits for, so only changes outside it count).
--
-- Otherwise up to batch_size due deliveries nobody holds become a new batch, numbered from
-- relay.batch_ids, with a random delivery id of its own (batch_delivery_id, on each of its
-- deliveries: 0023). Per-row order: a delivery whose row has an earlier change in flight, waiting
-- for a retry or in another batch is passed over before the limit (so one busy row never holds
-- up the others), and so is one that waits for a key move (relay.clear_of_key_moves, for it and
-- every earlier pending change of its row, looked up only while the webhook has a key move
-- pending). The limit takes them in due order, and a change due later than a later change of
-- its row (one that a replay, `relay retry` or an SQL reset made pending again: due at that
-- moment) would be left out while the later one is taken, and every claim would then drop the
-- later one and come out empty. So the earlier pending changes of the chosen rows are added
-- (each is claimable: the chosen change's condition covers every earlier change of its row),
-- up to batch_size of them per row; after the rows are locked a change stays only with every
-- earlier pending change of its row (another relay may hold one); and the batch is the first
-- batch_size of those in id order (a set that holds every earlier change of its members still
-- does when cut by id). A batch may hold several changes of one row. In id order up to the
-- first that does not fit: the changes' bytes fit in bytes_free (a change over
-- max_change_bytes counts nothing and comes without its images), and the default body, about
-- twice their bytes (the new image is there twice) and BODY_OVERHEAD each
-- (relay/delivery/claim.py), in body_bytes.
--
-- A new batch that is not full waits until its oldest delivery has been due for wait_ms: then
-- nothing is claimed and the one row returned says, in wait_seconds, how long until it may go.
-- Otherwise one row per claimed delivery (wait_seconds NULL; batch_again when the batch is one
-- due again, which the relay sends whole or not at all); a row with a NULL outbox_id when
-- there is nothing to claim.
--
-- A webhook with a concurrency gets a batch only while fewer batches than that are leased to
-- anyone for it (relay.leased_requests, counted under a lock: see claim_deliveries); one with a
-- rate limit only while its next request slot is at most pace_ahead seconds away.
WITH moves AS MATERIALIZED (
    SELECT EXISTS (SELECT FROM relay.deliveries m
                   WHERE m.webhook_id = %(webhook_id)s AND m.old_row_key IS NOT NULL
                     AND m.status = 'pending') AS pending,
           -- A paused webhook (0026_steering.sql) gets no batch, new or again.
           EXISTS (SELECT FROM relay.webhooks w
                   WHERE w.id = %(webhook_id)s AND w.paused_at IS NOT NULL) AS paused
), ordered AS MATERIALIZED (
    -- Deliveries with an order key pending (0026, as in claim_deliveries): while there are,
    -- the batch is taken from them (runs, below), and those without a key wait.
    SELECT EXISTS (SELECT FROM relay.deliveries k
                   WHERE k.webhook_id = %(webhook_id)s AND k.order_key IS NOT NULL
                     AND k.status = 'pending') AS pending
), again AS MATERIALIZED (
    -- Claimed batches are due only when their lease ends (next_attempt_at, set below), so the
    -- batches in flight are not even read (deliveries_batch_due).
    SELECT d.batch_id, (array_agg(d.batch_delivery_id))[1] AS delivery_id
    FROM relay.deliveries d, moves
    WHERE d.webhook_id = %(webhook_id)s AND d.status = 'pending' AND d.batch_id IS NOT NULL
      AND d.next_attempt_at <= now() AND (d.leased_until IS NULL OR d.leased_until < now())
      AND NOT moves.paused
    GROUP BY d.batch_id, moves.pending
    HAVING NOT EXISTS (SELECT FROM relay.deliveries m
                       WHERE m.batch_id = d.batch_id AND m.status = 'pending'
                         AND (m.next_attempt_at > now() OR m.leased_until >= now()))
       AND bool_and((SELECT min(e.outbox_id) FROM relay.deliveries e
                     WHERE e.webhook_id = %(webhook_id)s AND e.row_key = d.row_key
                       AND e.status = 'pending' AND e.outbox_id < d.outbox_id
                       AND e.batch_id IS DISTINCT FROM d.batch_id
                       -- ordered: only those placed before it (relay.placed_first)
                       AND (d.position IS NULL OR e.position < d.position)) IS NULL)
       AND bool_and(CASE WHEN NOT moves.pending THEN true
                         WHEN d.position IS NULL
                         THEN relay.clear_of_key_moves(d.webhook_id, d.outbox_id, d.row_key,
                                                       d.old_row_key)
                         -- Ordered (0026): a batch may hold a key move and the change it
                         -- waits for (claimed by position); only changes outside it placed
                         -- before count, as in relay.placed_first.
                         ELSE NOT EXISTS (SELECT FROM relay.deliveries e
                                          WHERE e.webhook_id = %(webhook_id)s
                                            AND (e.old_row_key = d.row_key
                                                 OR e.row_key = d.old_row_key
                                                 OR e.old_row_key = d.old_row_key)
                                            AND e.status = 'pending'
                                            AND e.outbox_id < d.outbox_id
                                            AND e.position < d.position
                                            AND e.batch_id IS DISTINCT FROM d.batch_id)
                    END)
       -- Ordered (0026): nor while a delivery of its keys placed before it is pending outside
       -- it (one re-armed meanwhile goes first).
       AND bool_and(d.order_key IS NULL
                    OR NOT EXISTS (SELECT FROM relay.deliveries e
                                   WHERE e.webhook_id = %(webhook_id)s
                                     AND e.order_key = d.order_key AND e.status = 'pending'
                                     AND e.position < d.position
                                     AND e.batch_id IS DISTINCT FROM d.batch_id))
    ORDER BY min(d.outbox_id)
    LIMIT 1
), members AS MATERIALIZED (
    SELECT d.ctid, d.outbox_id, d.next_attempt_at,
           CASE WHEN d.change_bytes > %(max_change_bytes)s THEN 0
                ELSE d.change_bytes::int END AS bytes
    FROM relay.deliveries d, again
    WHERE d.batch_id = again.batch_id AND d.status = 'pending'
    FOR UPDATE OF d SKIP LOCKED
), whole AS MATERIALIZED (
    -- The batch again, if this relay locked all of it and has the room for all of it.
    SELECT ctid, outbox_id, next_attempt_at FROM members
    WHERE (SELECT count(*) FROM members) = (
              SELECT count(*) FROM relay.deliveries d, again
              WHERE d.batch_id = again.batch_id AND d.status = 'pending')
      AND (SELECT sum(bytes) FROM members) <= %(bytes_free)s
), candidates AS MATERIALIZED (
    SELECT d.ctid, d.outbox_id, d.row_key, d.next_attempt_at,
           CASE WHEN d.change_bytes > %(max_change_bytes)s THEN 0
                ELSE d.change_bytes::int END AS bytes,
           d.old_row_key, NULL::text AS order_key, NULL::bigint AS position
    FROM relay.deliveries d, moves, ordered
    WHERE NOT EXISTS (SELECT FROM again) AND NOT ordered.pending
      AND NOT moves.paused
      AND d.webhook_id = %(webhook_id)s
      AND d.status = 'pending'
      AND d.batch_id IS NULL
      AND d.next_attempt_at <= now()
      AND (d.leased_until IS NULL OR d.leased_until < now())
      -- A correlated min(), as in claim_deliveries, so that it is an index lookup.
      AND (SELECT min(e.outbox_id) FROM relay.deliveries e
           WHERE e.webhook_id = d.webhook_id AND e.row_key = d.row_key
             AND e.status = 'pending' AND e.outbox_id < d.outbox_id
             AND (e.batch_id IS NOT NULL OR e.next_attempt_at > now()
                  OR e.leased_until >= now())) IS NULL
      AND (NOT moves.pending
           OR relay.clear_of_key_moves(d.webhook_id, d.outbox_id, d.row_key, d.old_row_key)
              AND NOT EXISTS (SELECT FROM relay.deliveries e
                              WHERE e.webhook_id = d.webhook_id AND e.row_key = d.row_key
                                AND e.status = 'pending' AND e.outbox_id < d.outbox_id
                                AND NOT relay.clear_of_key_moves(e.webhook_id, e.outbox_id,
                                                                 e.row_key, e.old_row_key)))
    ORDER BY d.next_attempt_at, d.outbox_id
    LIMIT %(batch_size)s
    FOR UPDATE OF d SKIP LOCKED
), earlier AS MATERIALIZED (
    -- The earlier pending changes of the candidates' rows (one probe of deliveries_row_order
    -- per row, which finds none but after a re-queue or a replay), locked too.
    SELECT e.ctid, e.outbox_id, e.row_key, e.next_attempt_at,
           CASE WHEN e.change_bytes > %(max_change_bytes)s THEN 0
                ELSE e.change_bytes::int END AS bytes,
           e.old_row_key, NULL::text AS order_key, NULL::bigint AS position
    FROM relay.deliveries e
    WHERE e.ctid = ANY(ARRAY(
        SELECT f.ctid
        FROM (SELECT row_key, max(outbox_id) AS upto FROM candidates GROUP BY row_key) c
        CROSS JOIN LATERAL (
            SELECT f.ctid FROM relay.deliveries f
            WHERE f.webhook_id = %(webhook_id)s AND f.row_key = c.row_key
              AND f.status = 'pending' AND f.outbox_id < c.upto
            ORDER BY f.outbox_id
            LIMIT %(batch_size)s) f))
      AND e.status = 'pending'
    FOR UPDATE OF e SKIP LOCKED
), runs AS MATERIALIZED (
    -- Ordered webhooks (0026): of each order key (walked one index probe each, as in
    -- claim_deliveries), the run of pending deliveries from its head, in position order, up to
    -- the first that is held, waits for a retry or is in a batch: a batch is the next
    -- consecutive changes of its keys (of the webhook, by transaction), batch_size at most.
    SELECT r.ctid
    FROM ordered CROSS JOIN LATERAL (
        WITH RECURSIVE keys (order_key) AS (
            (SELECT e.order_key FROM relay.deliveries e
             WHERE e.webhook_id = %(webhook_id)s AND e.order_key IS NOT NULL
               AND e.status = 'pending'
             ORDER BY e.order_key LIMIT 1)
            UNION ALL
            SELECT n.order_key FROM keys k CROSS JOIN LATERAL (
                SELECT e.order_key FROM relay.deliveries e
                WHERE e.webhook_id = %(webhook_id)s AND e.order_key > k.order_key
                  AND e.status = 'pending'
                ORDER BY e.order_key LIMIT 1) n
        )
        SELECT f.ctid,
               bool_and(f.free) OVER (PARTITION BY keys.order_key ORDER BY f.position
                                      ROWS UNBOUNDED PRECEDING) AS open
        FROM keys CROSS JOIN LATERAL (
            SELECT e.ctid, e.position,
                   e.batch_id IS NULL AND e.next_attempt_at <= now()
                       AND (e.leased_until IS NULL OR e.leased_until < now()) AS free
            FROM relay.deliveries e
            WHERE e.webhook_id = %(webhook_id)s AND e.order_key = keys.order_key
              AND e.status = 'pending'
            ORDER BY e.position
            LIMIT %(batch_size)s) f
    ) r
    WHERE ordered.pending AND NOT EXISTS (SELECT FROM again) AND r.open
      AND NOT (SELECT paused FROM moves)
), heads AS MATERIALIZED (
    SELECT d.ctid, d.outbox_id, d.row_key, d.next_attempt_at,
           CASE WHEN d.change_bytes > %(max_change_bytes)s THEN 0
                ELSE d.change_bytes::int END AS bytes,
           d.old_row_key, d.order_key, d.position
    FROM relay.deliveries d
    WHERE d.ctid = ANY(ARRAY(SELECT ctid FROM runs)) AND d.status = 'pending'
      AND d.webhook_id = %(webhook_id)s AND d.batch_id IS NULL
      AND d.next_attempt_at <= now() AND (d.leased_until IS NULL OR d.leased_until < now())
    ORDER BY d.position
    LIMIT %(batch_size)s
    FOR UPDATE OF d SKIP LOCKED
), chosen AS MATERIALIZED (
    SELECT * FROM candidates
    UNION
    SELECT * FROM earlier
    UNION
    SELECT * FROM heads
), judged AS (
    -- Row scope: with every earlier pending change of its row. Ordered: with every pending
    -- delivery of its key placed before it, and no earlier change of its row placed before it
    -- pending under another key (relay.placed_first's rule; counted whether chosen or not,
    -- since it may itself be left out), and then only with every member of its key before it
    -- kept (in_order): each key keeps a run from its head.
    SELECT c.*,
           CASE WHEN c.position IS NULL
           THEN (SELECT min(e.outbox_id) FROM relay.deliveries e
                 WHERE e.webhook_id = %(webhook_id)s AND e.row_key = c.row_key
                   AND e.status = 'pending' AND e.outbox_id < c.outbox_id
                   AND e.outbox_id <> ALL(ARRAY(SELECT outbox_id FROM chosen))) IS NULL
           ELSE NOT EXISTS (SELECT FROM relay.deliveries e
                            WHERE e.webhook_id = %(webhook_id)s AND e.order_key = c.order_key
                              AND e.status = 'pending' AND e.position < c.position
                              AND e.outbox_id <> ALL(ARRAY(SELECT outbox_id FROM chosen)))
                AND NOT EXISTS (SELECT FROM relay.deliveries e
                                WHERE e.webhook_id = %(webhook_id)s
                                  AND (e.row_key = c.row_key
                                       OR moves.pending
                                          AND (e.old_row_key = c.row_key
                                               OR e.row_key = c.old_row_key
                                               OR e.old_row_key = c.old_row_key))
                                  AND e.status = 'pending' AND e.outbox_id < c.outbox_id
                                  AND e.position < c.position
                                  AND e.order_key IS DISTINCT FROM c.order_key)
           END AS passes
    FROM chosen c, moves
), in_order AS (
    SELECT * FROM (
        SELECT j.*,
               bool_and(j.passes) OVER (PARTITION BY j.order_key ORDER BY j.position
                                        ROWS UNBOUNDED PRECEDING) AS run
        FROM judged j) k
    WHERE CASE WHEN k.position IS NULL THEN k.passes ELSE k.run END
), fitting AS MATERIALIZED (
    -- In position order for ordered deliveries (position is NULL in row scope: outbox order).
    SELECT ctid, outbox_id, next_attempt_at FROM (
        SELECT ctid, outbox_id, next_attempt_at,
               sum(bytes) OVER (ORDER BY position, outbox_id ROWS UNBOUNDED PRECEDING)
                   AS running,
               sum(2 * bytes + %(body_overhead)s)
                   OVER (ORDER BY position, outbox_id ROWS UNBOUNDED PRECEDING) AS body,
               row_number() OVER (ORDER BY position, outbox_id) AS n
        FROM in_order) counted
    WHERE running <= %(bytes_free)s AND (body <= %(body_bytes)s OR n = 1)
      AND n <= %(batch_size)s
    UNION ALL
    SELECT ctid, outbox_id, next_attempt_at FROM whole
), ready AS MATERIALIZED (
    SELECT count(*) > 0 AS any,
           EXISTS (SELECT FROM again) OR count(*) >= %(batch_size)s
               OR count(*) < (SELECT count(*) FROM chosen)
               OR min(next_attempt_at) <= now() - make_interval(secs => %(wait_ms)s / 1000.0)
               AS go,
           extract(epoch FROM min(next_attempt_at)
                              + make_interval(secs => %(wait_ms)s / 1000.0) - now())::float8
               AS wait_seconds
    FROM fitting
), room AS MATERIALIZED (
    SELECT coalesce((SELECT w.concurrency > (SELECT l.requests
                                             FROM relay.leased_requests(
                                                 ARRAY[w.id], %(relay_id)s,
                                                 %(answered_webhooks)s::bigint[],
                                                 %(answered_ids)s::bigint[]) AS l)
                     FROM relay.webhooks w
                     WHERE w.id = %(webhook_id)s AND w.concurrency IS NOT NULL), true)
           AND NOT EXISTS (SELECT FROM relay.webhooks w
                           JOIN relay.webhook_pace pace ON pace.webhook_id = w.id
                           WHERE w.id = %(webhook_id)s AND w.rate_limit IS NOT NULL
                             AND pace.next_slot
                                 > now() + make_interval(secs => %(pace_ahead)s)) AS free
), batch AS MATERIALIZED (
    SELECT coalesce((SELECT batch_id FROM again), nextval('relay.batch_ids')) AS id,
           coalesce((SELECT delivery_id FROM again), gen_random_uuid()) AS delivery_id,
           EXISTS (SELECT FROM again) AS again
    FROM ready WHERE ready.any AND ready.go AND (SELECT free FROM room)
), claimed AS (
    UPDATE relay.deliveries d
    SET leased_until = now() + make_interval(secs => %(lease_seconds)s),
        next_attempt_at = now() + make_interval(secs => %(lease_seconds)s),
        leased_by = %(relay_id)s,
        attempts = d.attempts + 1,
        batch_id = batch.id,
        batch_delivery_id = batch.delivery_id
    FROM relay.outbox o, batch
    WHERE d.ctid = ANY(ARRAY(SELECT ctid FROM fitting)) AND o.id = d.outbox_id
    RETURNING d.outbox_id, d.webhook_id, d.rule_id, d.attempts,
              d.earlier_attempts + d.attempts AS attempt_number, d.change_bytes, d.batch_id,
              d.replay, d.id AS delivery_id, d.batch_delivery_id, batch.again AS batch_again,
              d.position,
              CASE WHEN d.send_superseded THEN d.superseded_by END AS superseded_by,
              CASE WHEN NOT d.send_superseded THEN d.superseded_by END AS superseded_unasked,
              o.id, o.schema_name, o.table_name, o.pk::text, o.username,
              o.request_id, o.request_path, o.request_method, o.txid::text, o.created_at,
              -- Coalesced (0031), as in claim_deliveries.
              CASE WHEN d.coalesced_from IS NULL THEN o.op::text
                   ELSE coalesce((SELECT CASE WHEN f.op = 'insert' THEN 'insert'
                                              WHEN o.op = 'delete' THEN 'delete'
                                              ELSE 'update' END
                                  FROM relay.outbox f WHERE f.id = d.coalesced_from),
                                 o.op::text)
              END AS op,
              CASE WHEN d.change_bytes > %(max_change_bytes)s THEN NULL
                   WHEN d.coalesced_from IS NULL THEN o.old::text
                   ELSE (SELECT f.old::text FROM relay.outbox f WHERE f.id = d.coalesced_from)
              END AS old,
              CASE WHEN d.change_bytes <= %(max_change_bytes)s THEN o.new::text END AS new
)
SELECT claimed.*,
       CASE WHEN ready.any AND NOT ready.go THEN greatest(ready.wait_seconds, 0.001) END
           AS wait_seconds
FROM ready LEFT JOIN claimed ON true
ORDER BY claimed.position, claimed.outbox_id;

-- name: take_slot
-- A request slot for a webhook with a rate limit, shared by every relay (relay.webhook_pace,
-- 0026): the slot is greatest(next_slot, now), and next_slot moves on by spacing/rate_limit,
-- atomically (the row's lock; a relay that waited for it sees the slot the other one left).
-- Returns how many seconds until the slot (0 or less: now); no row when the webhook has no
-- rate limit. clock_timestamp(), not now(): the slot is compared with when the relay sends.
WITH hook AS (
    SELECT w.id, make_interval(secs => %(spacing)s::float8 / w.rate_limit::float8) AS step
    FROM relay.webhooks w
    WHERE w.id = %(webhook_id)s AND w.rate_limit IS NOT NULL
)
INSERT INTO relay.webhook_pace AS p (webhook_id, next_slot)
SELECT hook.id, clock_timestamp() + hook.step FROM hook
ON CONFLICT (webhook_id) DO UPDATE
SET next_slot = greatest(p.next_slot, clock_timestamp()) + (SELECT step FROM hook)
RETURNING extract(epoch FROM p.next_slot - (SELECT step FROM hook) - clock_timestamp())::float8
    AS wait_seconds;

-- name: record_outcomes
-- Attempts and their outcomes, many at once (relay/delivery/record.py batches them). An outcome is
-- written only while this relay still holds the lease: a relay that lost it to another must
-- not overwrite what that one did. The attempt itself is logged either way, unless it was not
-- counted (a delivery given back unsent) or the delivery is gone: its webhook was removed
-- while the request was under way (relay webhook remove, the console), and its attempts went
-- with it (a primary key probe of the row the UPDATE below reads anyway; without it the
-- attempt's foreign key refused the whole batch).
--
-- A delivery that fails for good no longer holds its row back, so its later changes go on:
-- each one delivered marks the failed earlier deliveries of its row (either key of a key move)
-- to the same webhook as superseded by it (superseded_by, 0025_superseded.sql), so that sending
-- them again (`relay retry`, the SQL reset) leaves them failed unless asked. Two probes of the
-- small indexes of failed deliveries per change delivered (four for a key move); a delivery
-- that fails in this very statement is marked by the changes delivered in it (a batch may
-- carry a later change of the row of one that ran out of attempts). send_superseded, the
-- operator's leave to send a superseded delivery, is spent once it ends.
--
-- Each endpoint's health (relay.webhook_health, 0026_steering.sql): one upsert per webhook per
-- statement, not per delivery, from the attempts that reached for the endpoint (endpoint 'ok'
-- or 'failed'; NULL for what never left: a template of ours says nothing of the receiver).
-- failing_since is set by the first failure after a success and kept; a success in the
-- statement clears it. The rows are written in webhook order, so that two relays' statements
-- never wait for each other's rows crosswise.
--
-- Returns how many outcomes were written (those of deliveries whose lease this relay still
-- held), and the webhooks now failing for longer than their dead_after_seconds (NULL:
-- %(dead_after)s, RELAY_DEAD_AFTER_SECONDS) and not paused: the relay pauses them as dead
-- (pause_dead, a statement of its own: a write to relay.webhooks wakes every relay to reload
-- its rules, which no statement run thousands of times a second may do).
WITH outcome AS (
    SELECT (o ->> 0)::bigint AS outbox_id,
           (o ->> 1)::bigint AS webhook_id, (o ->> 2)::int AS attempt,
           (o ->> 3)::int AS duration_ms, (o ->> 4)::int AS status_code, o ->> 5 AS error,
           o ->> 6 AS excerpt, o ->> 7 AS status, (o ->> 8)::float8 AS retry_in,
           (o ->> 9)::bool AS counted, (o ->> 10)::bigint AS batch_id,
           (o ->> 11)::bool AS unbatch, coalesce((o ->> 12)::bool, false) AS replay,
           o ->> 13 AS endpoint,
           CASE WHEN json_typeof(o -> 14) = 'object' THEN (o -> 14)::jsonb END AS details
    -- One JSON array of [outbox_id, webhook_id, attempt, duration_ms, status_code, error,
    -- excerpt, status, retry_in, counted, batch_id, unbatch, replay, endpoint, details] per
    -- outcome (relay/delivery/record.py writes it). unbatch: the delivery leaves its batch
    -- unsent, to go in a later one (a batch too large to render or send whole keeps what fits).
    -- endpoint: 'ok', 'failed', or NULL when the request never left. details: the request as
    -- sent and the response's headers, masked (0035_attempt_details.sql), null when not kept;
    -- a batch's request is kept in the attempt of each of its deliveries, as its excerpt is.
    FROM json_array_elements(%(outcomes)s::json) AS o
), health AS (
    INSERT INTO relay.webhook_health AS h (webhook_id, failing_since, last_success_at,
                                           last_failure_at, last_error)
    SELECT o.webhook_id,
           CASE WHEN NOT bool_or(o.endpoint = 'ok') THEN now() END,
           CASE WHEN bool_or(o.endpoint = 'ok') THEN now() END,
           CASE WHEN bool_or(o.endpoint = 'failed') THEN now() END,
           (array_agg(o.error ORDER BY o.outbox_id DESC)
                FILTER (WHERE o.endpoint = 'failed' AND o.error IS NOT NULL))[1]
    FROM outcome o
    WHERE o.counted AND o.endpoint IN ('ok', 'failed')
      AND EXISTS (SELECT FROM relay.webhooks w WHERE w.id = o.webhook_id)
    GROUP BY o.webhook_id
    ORDER BY o.webhook_id
    ON CONFLICT (webhook_id) DO UPDATE
    SET failing_since = CASE WHEN EXCLUDED.last_success_at IS NOT NULL THEN NULL
                             ELSE coalesce(h.failing_since, EXCLUDED.failing_since) END,
        last_success_at = coalesce(EXCLUDED.last_success_at, h.last_success_at),
        last_failure_at = coalesce(EXCLUDED.last_failure_at, h.last_failure_at),
        last_error = coalesce(EXCLUDED.last_error, h.last_error)
    RETURNING h.webhook_id, h.failing_since
), attempt AS (
    INSERT INTO relay.attempts (outbox_id, webhook_id, attempt, duration_ms, status_code, error,
                                response_excerpt, batch_id, replay, details)
    SELECT outbox_id, webhook_id, attempt, duration_ms, status_code, error, excerpt, batch_id,
           replay, details
    FROM outcome
    WHERE counted
      AND EXISTS (SELECT FROM relay.deliveries d
                  WHERE d.outbox_id = outcome.outbox_id AND d.webhook_id = outcome.webhook_id)
), delivered AS MATERIALIZED (
    -- The keys of the changes this statement delivers, read only when it also fails one (a
    -- batch may carry a later change of the row of a change that ran out of attempts).
    SELECT d.webhook_id, d.outbox_id, k.key
    FROM outcome o
    JOIN relay.deliveries d ON d.outbox_id = o.outbox_id AND d.webhook_id = o.webhook_id
    CROSS JOIN LATERAL (VALUES (d.row_key), (d.old_row_key)) k (key)
    WHERE o.status = 'delivered' AND d.leased_by = %(relay_id)s AND k.key IS NOT NULL
), written AS (
    UPDATE relay.deliveries d
    SET status = outcome.status::relay.delivery_status,
        superseded_by = CASE WHEN outcome.status = 'failed'
                             THEN greatest(d.superseded_by,
                                           (SELECT max(x.outbox_id) FROM delivered x
                                            WHERE x.webhook_id = d.webhook_id
                                              AND x.key IN (d.row_key, d.old_row_key)
                                              AND x.outbox_id > d.outbox_id))
                             ELSE d.superseded_by END,
        send_superseded = d.send_superseded AND outcome.status = 'pending',
        attempts = d.attempts - (NOT outcome.counted)::int,
        next_attempt_at = now() + make_interval(secs => outcome.retry_in),
        leased_until = NULL,
        leased_by = NULL,
        batch_id = CASE WHEN outcome.unbatch THEN NULL ELSE d.batch_id END,
        batch_delivery_id = CASE WHEN outcome.unbatch THEN NULL ELSE d.batch_delivery_id END,
        last_status_code = outcome.status_code,
        last_error = outcome.error,
        delivered_at = CASE WHEN outcome.status = 'delivered' THEN now() END
    FROM outcome
    WHERE d.outbox_id = outcome.outbox_id AND d.webhook_id = outcome.webhook_id
      AND d.leased_by = %(relay_id)s
    RETURNING d.outbox_id, d.webhook_id, d.row_key, d.old_row_key, outcome.status
), superseded AS (
    UPDATE relay.deliveries f
    SET superseded_by = greatest(f.superseded_by, s.later)
    FROM (SELECT e.outbox_id, e.webhook_id, max(w.outbox_id) AS later
          FROM written w
          CROSS JOIN LATERAL (VALUES (w.row_key), (w.old_row_key)) k (key)
          CROSS JOIN LATERAL (
              SELECT e.outbox_id, e.webhook_id FROM relay.deliveries e
              WHERE e.webhook_id = w.webhook_id AND e.row_key = k.key
                AND e.status = 'failed' AND e.outbox_id < w.outbox_id
              UNION ALL
              SELECT e.outbox_id, e.webhook_id FROM relay.deliveries e
              WHERE e.webhook_id = w.webhook_id AND e.old_row_key = k.key
                AND e.status = 'failed' AND e.outbox_id < w.outbox_id) e
          WHERE w.status = 'delivered' AND k.key IS NOT NULL
          GROUP BY e.outbox_id, e.webhook_id) s
    WHERE f.outbox_id = s.outbox_id AND f.webhook_id = s.webhook_id AND f.status = 'failed'
)
SELECT (SELECT count(*) FROM written) AS written,
       ARRAY(SELECT h.webhook_id FROM health h JOIN relay.webhooks w ON w.id = h.webhook_id
             WHERE w.paused_at IS NULL
               AND h.failing_since <= now() - make_interval(
                   secs => coalesce(w.dead_after_seconds, %(dead_after)s))) AS dead;

-- name: pause_dead
-- Pause as dead (paused_reason 'dead') the webhooks record_outcomes named, if they still are:
-- failing without one success for longer than their dead_after_seconds (NULL: %(dead_after)s)
-- and not paused. Their pending deliveries wait, untouched, for `relay webhook resume`.
UPDATE relay.webhooks w
SET paused_at = now(), paused_reason = 'dead'
FROM relay.webhook_health h
WHERE w.id = ANY(%(ids)s::bigint[]) AND h.webhook_id = w.id AND w.paused_at IS NULL
  AND h.failing_since <= now() - make_interval(
      secs => coalesce(w.dead_after_seconds, %(dead_after)s))
RETURNING w.name, h.failing_since, h.last_error,
          coalesce(w.dead_after_seconds, %(dead_after)s)::float8 AS dead_after_seconds;

-- name: finish_changes
-- A change is delivered when all its deliveries are, failed as soon as one is, and skipped when
-- it has none left (the webhooks it was for were deleted while it waited: their deliveries go
-- with them). The rows are locked in id order first: two relays finishing overlapping sets of
-- changes (one change, two webhooks) must not deadlock.
WITH locked AS MATERIALIZED (
    SELECT id FROM relay.outbox
    WHERE id = ANY(%(ids)s::bigint[]) AND status = 'pending'
    ORDER BY id
    FOR UPDATE
)
UPDATE relay.outbox o
SET status = CASE WHEN s.deliveries = 0 THEN 'skipped'
                  WHEN s.failed THEN 'failed'
                  ELSE 'delivered' END::relay.change_status,
    processed_at = now(),
    attempts = s.attempts,
    last_error = CASE WHEN s.deliveries = 0 THEN 'the webhooks it was for were deleted'
                      ELSE s.error END
FROM (
    SELECT l.id AS outbox_id,
           count(d.outbox_id) AS deliveries,
           coalesce(bool_or(d.status = 'failed'), false) AS failed,
           coalesce(bool_and(d.status = 'delivered'), false) AS delivered,
           coalesce(sum(d.attempts), 0)::int AS attempts,
           min(d.last_error) FILTER (WHERE d.status = 'failed') AS error
    FROM locked l
    LEFT JOIN relay.deliveries d ON d.outbox_id = l.id
    GROUP BY l.id
) s
WHERE o.id = s.outbox_id AND o.status = 'pending'
  AND (s.failed OR s.delivered OR s.deliveries = 0);

-- name: unfinished_changes
-- Changes in progress with no delivery left pending: their relay stopped before finishing them.
SELECT o.id FROM relay.outbox o
WHERE o.status = 'pending' AND o.fanned_out_at IS NOT NULL
  AND NOT EXISTS (SELECT FROM relay.deliveries d WHERE d.outbox_id = o.id AND d.status = 'pending')
LIMIT %(limit)s;

-- name: skip_changes
-- Changes no webhook takes; a note ('' for none) says why when it is not plain: a change
-- coalesced into another (0031) names it.
UPDATE relay.outbox o
SET status = 'skipped', processed_at = now(), fanned_out_at = now(),
    last_error = nullif(s.note, '')
FROM unnest(%(ids)s::bigint[], %(notes)s::text[]) AS s (id, note)
WHERE o.id = s.id AND NOT EXISTS (
    SELECT FROM relay.deliveries d WHERE d.outbox_id = o.id);

-- name: mark_coalesced
-- The changes coalesced into a later change of their row in their transaction (0031): the
-- same for every coalescing webhook, kept so that a retry or a replay makes the same event.
UPDATE relay.outbox o SET coalesced_into = c.into_id
FROM unnest(%(ids)s::bigint[], %(into_ids)s::bigint[]) AS c (id, into_id)
WHERE o.id = c.id;

-- name: release_leases
-- On shutdown: what this relay claimed but did not finish is free for others at once (a claimed
-- batch was made due at its lease's end: claim_batch).
UPDATE relay.deliveries
SET leased_until = NULL, leased_by = NULL, attempts = greatest(attempts - 1, 0),
    next_attempt_at = least(next_attempt_at, now())
WHERE leased_by = %(relay_id)s AND status = 'pending';

-- name: purge_attempts
-- One batch of attempts older than the retention; the relay repeats it until a batch is short.
DELETE FROM relay.attempts
WHERE id IN (
    SELECT id FROM relay.attempts
    WHERE attempted_at < now() - make_interval(secs => %(seconds)s)
    ORDER BY attempted_at
    LIMIT %(limit)s);

-- name: refresh_statistics
SELECT relay.refresh_statistics();

-- name: session_check
-- At the start of each session of relay run: the schema version installed (a relay delivers
-- only on the schema it was built for: 0023) and the session's search path (relay/db.py pins
-- it; a connection pooler that dropped libpq's options would leave the role's own).
SELECT (SELECT max(version) FROM relay.migrations) AS version,
       pg_catalog.current_setting('search_path') AS search_path;

-- name: refresh_capture
-- Regenerate the capture functions of tables whose columns changed (0007): until then their
-- writes take the slower path that builds the statement from the catalogs.
SELECT relay.refresh_capture();

-- name: retry_failed
-- `relay retry`: the documented one-liner with its filters (each NULL means "any"). The requeue
-- trigger does the rest: the fan-out re-arms only the deliveries that failed (rearm_deliveries).
-- Returns how many changes it re-queued, and how many of their failed deliveries are
-- superseded (a later change of the row was delivered to that webhook after them): those stay
-- failed unless `superseded` asks for them (send_superseded). `ids`: these changes only (`relay
-- retry --id`, and the console's retries, a chunk at a time).
WITH requeued AS (
    UPDATE relay.outbox o SET status = 'pending'
    WHERE o.status = 'failed'
      AND (%(ids)s::bigint[] IS NULL OR o.id = ANY(%(ids)s::bigint[]))
      AND (%(since)s::timestamptz IS NULL OR o.created_at >= %(since)s::timestamptz)
      AND (%(webhook)s::text IS NULL OR EXISTS (
          SELECT FROM relay.deliveries d JOIN relay.webhooks w ON w.id = d.webhook_id
          WHERE d.outbox_id = o.id AND d.status = 'failed' AND w.name = %(webhook)s::text))
    RETURNING o.id
), superseded AS MATERIALIZED (
    SELECT d.outbox_id, d.webhook_id
    FROM requeued r JOIN relay.deliveries d ON d.outbox_id = r.id
    WHERE d.status = 'failed' AND d.superseded_by IS NOT NULL
), asked AS (
    UPDATE relay.deliveries d SET send_superseded = true
    FROM superseded s
    WHERE %(superseded)s AND d.outbox_id = s.outbox_id AND d.webhook_id = s.webhook_id
)
SELECT (SELECT count(*) FROM requeued) AS requeued, (SELECT count(*) FROM superseded) AS superseded;

-- name: delivery_id
-- The id a change's delivery to a webhook goes under (relay preview), when it has one.
SELECT id::text FROM relay.deliveries
WHERE outbox_id = %(outbox_id)s AND webhook_id = %(webhook_id)s;

-- name: webhook_exists
SELECT EXISTS (SELECT FROM relay.webhooks WHERE name = %(name)s);

-- name: status_backlog
-- `relay status`: changes waiting (some delivery still to make), the age of the oldest, and
-- the changes done (every delivery made): delivered to every webhook, failed for at least one,
-- or skipped (matched no webhook). A change fails as soon as one of its deliveries does, so
-- "failed" may count changes the other webhooks got: the per-webhook lines say which.
SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
       count(*) FILTER (WHERE status = 'pending' AND fanned_out_at IS NULL) AS not_matched_yet,
       extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending'))::float8
           AS oldest_pending_seconds,
       count(*) FILTER (WHERE status <> 'pending') AS done,
       count(*) FILTER (WHERE status = 'delivered') AS delivered,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'skipped') AS skipped
FROM relay.outbox;

-- name: status_webhooks
-- Per webhook: its state (disabled; paused by the operator or as dead, since when; failing
-- since, from relay.webhook_health: the breaker itself lives in each relay process; or
-- active), its deliveries (pending, in flight: leased now, delivered, failed), the age of the
-- change of its oldest pending delivery, its endpoint's last success and last error, its own
-- limits and retry policy (NULL: the relays' settings), and until when a rotated secret's
-- previous one still signs (NULL: it does not; 0033_secret_rotation.sql).
SELECT w.name, w.enabled,
       CASE WHEN NOT w.enabled THEN 'disabled'
            WHEN w.paused_reason = 'dead' THEN 'dead'
            WHEN w.paused_at IS NOT NULL THEN 'paused'
            WHEN h.failing_since IS NOT NULL THEN 'failing'
            ELSE 'active' END AS state,
       w.paused_at, w.paused_reason, h.failing_since, h.last_success_at, h.last_failure_at,
       h.last_error,
       w.concurrency, w.rate_limit::float8 AS rate_limit, w.dead_after_seconds, w.ordering,
       w.max_attempts, w.retry_base_seconds::float8 AS retry_base_seconds,
       w.retry_max_seconds::float8 AS retry_max_seconds,
       coalesce(d.pending, 0) AS pending, coalesce(d.in_flight, 0) AS in_flight,
       coalesce(d.delivered, 0) AS delivered, coalesce(d.failed, 0) AS failed,
       d.last_delivered_at,
       extract(epoch FROM now() - (
           SELECT o.created_at FROM relay.outbox o
           WHERE o.id = (SELECT min(p.outbox_id) FROM relay.deliveries p
                         WHERE p.webhook_id = w.id AND p.status = 'pending')))::float8
           AS oldest_pending_seconds,
       CASE WHEN w.previous_secret_until > now() THEN w.previous_secret_until END
           AS previous_secret_until
FROM relay.webhooks w
LEFT JOIN relay.webhook_health h ON h.webhook_id = w.id
LEFT JOIN (
    SELECT webhook_id,
           count(*) FILTER (WHERE status = 'pending') AS pending,
           count(*) FILTER (WHERE status = 'pending' AND leased_until > now()) AS in_flight,
           count(*) FILTER (WHERE status = 'delivered') AS delivered,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           max(delivered_at) AS last_delivered_at
    FROM relay.deliveries
    GROUP BY webhook_id
) d ON d.webhook_id = w.id
ORDER BY w.name;

-- name: webhook_gauges
-- The per-webhook gauges of /metrics, every few seconds (relay/delivery/fanout.py): pending
-- deliveries, those leased now, the age of the change of the oldest pending one, and the state
-- as status_webhooks says it. Only pending deliveries are read (the index deliveries_due).
SELECT w.name,
       CASE WHEN NOT w.enabled THEN 'disabled'
            WHEN w.paused_reason = 'dead' THEN 'dead'
            WHEN w.paused_at IS NOT NULL THEN 'paused'
            WHEN h.failing_since IS NOT NULL THEN 'failing'
            ELSE 'active' END AS state,
       coalesce(d.pending, 0) AS pending, coalesce(d.in_flight, 0) AS in_flight,
       coalesce(extract(epoch FROM now() - (SELECT o.created_at FROM relay.outbox o
                                            WHERE o.id = d.oldest)), 0)::float8
           AS oldest_pending_seconds
FROM relay.webhooks w
LEFT JOIN relay.webhook_health h ON h.webhook_id = w.id
LEFT JOIN (
    SELECT webhook_id, count(*) AS pending,
           count(*) FILTER (WHERE leased_until > now()) AS in_flight,
           min(outbox_id) AS oldest
    FROM relay.deliveries
    WHERE status = 'pending'
    GROUP BY webhook_id
) d ON d.webhook_id = w.id
ORDER BY w.name;

-- name: webhook_steering
-- `relay webhook pause`, `resume` and `disable`: the webhook's pause and how many of its
-- deliveries are pending (and would fail on disable).
SELECT w.id, w.enabled, w.paused_at, w.paused_reason,
       (SELECT count(*) FROM relay.deliveries d
        WHERE d.webhook_id = w.id AND d.status = 'pending') AS pending
FROM relay.webhooks w
WHERE w.name = %(name)s;

-- name: webhook_deliveries
-- The console's remove page: the deliveries of a webhook by status, which its removal deletes
-- (relay.deliveries' foreign key cascades, and their attempts with them).
SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'delivered') AS delivered
FROM relay.deliveries
WHERE webhook_id = %(webhook_id)s;

-- name: pause_webhook
-- `relay webhook pause`, or the SQL user's own UPDATE: no relay claims its deliveries until
-- it is resumed (claim_deliveries, claim_batch); matching goes on, so they wait, in order.
UPDATE relay.webhooks SET paused_at = now(), paused_reason = 'operator'
WHERE name = %(name)s AND paused_at IS NULL
RETURNING paused_at;

-- name: resume_webhook
-- `relay webhook resume`: its deliveries go out again, in order. Its endpoint's failing_since
-- is cleared too, so that the time to a dead endpoint counts again from the next failure
-- (otherwise a webhook paused as dead would be paused again by its first failed attempt).
WITH resumed AS (
    UPDATE relay.webhooks SET paused_at = NULL, paused_reason = NULL
    WHERE name = %(name)s AND paused_at IS NOT NULL
    RETURNING id
), cleared AS (
    UPDATE relay.webhook_health h SET failing_since = NULL
    FROM resumed r WHERE h.webhook_id = r.id
)
SELECT count(*) FROM resumed;

-- name: status_errors
SELECT a.attempted_at, w.name AS webhook, a.outbox_id, a.attempt, a.status_code, a.error
FROM relay.attempts a
JOIN relay.webhooks w ON w.id = a.webhook_id
WHERE a.error IS NOT NULL
ORDER BY a.attempted_at DESC
LIMIT %(limit)s;

-- name: relay_started
INSERT INTO relay.relays (relay_id, started_at, seen_at)
VALUES (%(relay_id)s, %(started_at)s, now())
ON CONFLICT (relay_id) DO UPDATE SET started_at = EXCLUDED.started_at, seen_at = now();

-- name: relay_seen
-- Every sweep: this relay is alive; relays not seen for a day are gone.
WITH gone AS (
    DELETE FROM relay.relays WHERE seen_at < now() - interval '1 day'
)
UPDATE relay.relays SET seen_at = now() WHERE relay_id = %(relay_id)s;

-- name: status_relays
-- Relays connected now (by their connections' application_name: visible to every role, unlike
-- backend_start), when each started (its own record) and the leases each holds. %(prefix)s is
-- how relay names its connections (relay/store.py, APPLICATION_PREFIX).
WITH connected AS (
    SELECT a.relay_id, a.connections, r.started_at AS since
    FROM (SELECT substr(application_name, length(%(prefix)s) + 1) AS relay_id,
                 count(*) AS connections
          FROM pg_stat_activity
          WHERE datname = current_database()
            AND starts_with(application_name, %(prefix)s)
          GROUP BY 1) a
    LEFT JOIN relay.relays r ON r.relay_id = a.relay_id
), leases AS (
    SELECT leased_by AS relay_id, count(*) AS leases, max(leased_until) AS leased_until
    FROM relay.deliveries
    WHERE status = 'pending' AND leased_by IS NOT NULL AND leased_until > now()
    GROUP BY 1
)
SELECT coalesce(c.relay_id, l.relay_id) AS relay_id, coalesce(c.connections, 0) AS connections,
       c.since, coalesce(l.leases, 0) AS leases, l.leased_until
FROM connected c
FULL JOIN leases l ON l.relay_id = c.relay_id
ORDER BY 1;

-- name: backlog_summary
-- The backlog gauges of /metrics: pending changes and the age of the oldest.
SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
FROM relay.outbox
WHERE status = 'pending';

-- name: purge_changes
-- One batch of finished changes (delivered, failed or skipped) older than the retention,
-- oldest first; their deliveries and attempts go with them. Rows another session holds are
-- left for the next batch, and so is a change being replayed (a delivery of it is pending),
-- and a change coalesced into another that is still there (0031: a retry or a replay of that
-- one makes its event again, from this one's old image): it goes in a batch after that one.
-- What went is counted in relay.purged_changes (for relay replay: 0027_purged.sql), its rows
-- taken in key order so that two purges at once never wait on each other crosswise. How many
-- went.
WITH gone AS (
    DELETE FROM relay.outbox
    WHERE id IN (
        SELECT o.id FROM relay.outbox o
        WHERE o.status <> 'pending'
          AND o.processed_at < now() - make_interval(secs => %(seconds)s)
          AND NOT EXISTS (SELECT FROM relay.deliveries d
                          WHERE d.outbox_id = o.id AND d.status = 'pending')
          AND NOT EXISTS (SELECT FROM relay.outbox x WHERE x.id = o.coalesced_into)
        ORDER BY o.processed_at
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED)
    RETURNING schema_name, table_name, created_at
), counted AS (
    INSERT INTO relay.purged_changes AS p
        (made_hour, schema_name, table_name, changes, first_made, last_made)
    SELECT date_trunc('hour', created_at, 'UTC'), schema_name, table_name, count(*),
           min(created_at), max(created_at)
    FROM gone
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3
    ON CONFLICT (made_hour, schema_name, table_name) DO UPDATE
    SET changes = p.changes + excluded.changes,
        first_made = least(p.first_made, excluded.first_made),
        last_made = greatest(p.last_made, excluded.last_made)
)
SELECT count(*) FROM gone;

-- name: count_purgeable
SELECT count(*) FROM relay.outbox o
WHERE o.status <> 'pending' AND o.processed_at < now() - make_interval(secs => %(seconds)s)
  AND NOT EXISTS (SELECT FROM relay.deliveries d WHERE d.outbox_id = o.id AND d.status = 'pending');

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

-- name: backfill_problem
-- Why the table cannot be backfilled, or NULL (see relay.backfill_problem).
SELECT relay.backfill_problem(to_regclass(%(table)s));

-- name: backfill_chunk
-- One chunk of a backfill (relay.backfill in 0021_backfill_replay.sql explains it): how many
-- rows it went past, 0 once complete.
SELECT relay.backfill(%(table)s::regclass, %(where)s, %(webhook)s, %(chunk)s, %(again)s);

-- name: backfill_progress
-- Where the backfill with these arguments stands (the latest one, finished or not).
SELECT b.id, b.rows_total, b.rows_done, b.started_at, b.finished_at
FROM relay.backfills b
WHERE b.tbl = %(table)s::regclass AND b.where_clause = coalesce(btrim(%(where)s), '')
  AND b.webhook_id IS NOT DISTINCT FROM (SELECT w.id FROM relay.webhooks w
                                         WHERE w.name = %(webhook)s)
ORDER BY b.id DESC
LIMIT 1;

-- name: status_backfills
-- `relay status`: backfills under way, and those that ended in the last day.
SELECT b.id, quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS table_name,
       w.name AS webhook, b.where_clause, b.rows_done, b.rows_total, b.started_at,
       b.updated_at, b.finished_at
FROM relay.backfills b
JOIN pg_catalog.pg_class c ON c.oid = b.tbl
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN relay.webhooks w ON w.id = b.webhook_id
WHERE b.finished_at IS NULL OR b.finished_at > now() - interval '1 day'
ORDER BY b.id;

-- name: webhook_state
SELECT id, enabled FROM relay.webhooks WHERE name = %(name)s;

-- name: purged_in_window
-- Changes made in `relay replay`'s window (of its table, when it names one) that retention
-- purged: how many, and when the first and last of them were made.
SELECT coalesce(sum(changes), 0), min(first_made), max(last_made)
FROM relay.purged_changes
WHERE last_made >= %(since)s
  AND (%(until)s::timestamptz IS NULL OR first_made < %(until)s::timestamptz)
  AND (%(schema_name)s::text IS NULL
       OR (schema_name, table_name) = (%(schema_name)s::text, %(table_name)s::text));

-- name: hold_deliveries
-- `relay replay`, first, and a fan-out that re-arms re-queued changes (rearm_deliveries): no
-- delivery is claimed, recorded or added by anyone else until the transaction commits (the
-- relays wait: a few seconds for a replay of 100,000 changes). Without it, a later change of a
-- row sent again could be claimed meanwhile, and race the earlier one to the receiver.
LOCK TABLE relay.deliveries IN SHARE ROW EXCLUSIVE MODE;

-- name: replay_busy
-- The rows the webhook has a delivery in flight of, under their key and, for a key move, the
-- key they moved from: a replayed change of such a row would overtake the later change in
-- flight, so the replay leaves those rows out.
SELECT coalesce(array_agg(DISTINCT k.key) FILTER (WHERE k.key IS NOT NULL), '{}')
FROM relay.deliveries d, LATERAL (VALUES (d.row_key), (d.old_row_key)) k (key)
WHERE d.webhook_id = %(webhook_id)s AND d.status = 'pending' AND d.leased_until >= now();

-- name: replay_rearm
-- `relay replay`: the webhook's deliveries of changes made in [since, until) (of one table when
-- given) whose last outcome is one of `statuses`, pending again, flagged replay, all due at
-- the replay transaction's now() (so they go in outbox order). Each keeps its delivery id (made
-- from the change and the webhook); the attempts it had count as earlier ones. Left out, and
-- counted: deliveries of rows with a delivery in flight (`busy`, from replay_busy), those
-- whose rule is gone or disabled (it would fail them at once: the rule that sent a change
-- renders it), and those superseded: a later change of their row (either key of a key move)
-- was delivered to the webhook and is not sent again by this replay, so the receiver would end
-- on the older image. With `superseded` these go too, marked (send_superseded, superseded_by:
-- the latest such change); without, a failed one's reason says which change superseded it. The
-- later changes are found in one pass over the webhook's deliveries after the first replayed
-- one. Pending deliveries are left alone.
WITH chosen AS MATERIALIZED (
    SELECT d.outbox_id, d.row_key, d.old_row_key, d.status::text AS was,
           d.row_key = ANY(%(busy)s::text[])
               OR coalesce(d.old_row_key = ANY(%(busy)s::text[]), false)
               -- Ordered (0026): a batch of its order key waiting to go again whole holds
               -- changes placed before it and after it; armed, it could go neither before
               -- that batch nor after it, and the key would wait for ever.
               OR d.order_key IS NOT NULL AND EXISTS (
                   SELECT FROM relay.deliveries b
                   WHERE b.webhook_id = d.webhook_id AND b.order_key = d.order_key
                     AND b.status = 'pending' AND b.batch_id IS NOT NULL
                     AND b.position < d.position
                     AND EXISTS (SELECT FROM relay.deliveries a
                                 WHERE a.batch_id = b.batch_id AND a.status = 'pending'
                                   AND a.position > d.position)) AS busy,
           r.id IS NULL AS ruleless
    FROM relay.deliveries d
    JOIN relay.outbox o ON o.id = d.outbox_id
    LEFT JOIN relay.event_rules r ON r.id = d.rule_id AND r.enabled
                                 AND r.webhook_id = d.webhook_id
    WHERE d.webhook_id = %(webhook_id)s AND d.status::text = ANY(%(statuses)s::text[])
      AND o.created_at >= %(since)s
      AND (%(until)s::timestamptz IS NULL OR o.created_at < %(until)s::timestamptz)
      AND (%(schema_name)s::text IS NULL
           OR o.schema_name = %(schema_name)s::text AND o.table_name = %(table_name)s::text)
), sent AS MATERIALIZED (
    SELECT * FROM chosen WHERE NOT busy AND NOT ruleless
), newest AS MATERIALIZED (
    -- Per key of the rows it sends, the newest change delivered to the webhook that it does
    -- not send again.
    SELECT k.key, max(e.outbox_id) AS outbox_id
    FROM relay.deliveries e, LATERAL (VALUES (e.row_key), (e.old_row_key)) k (key)
    WHERE e.webhook_id = %(webhook_id)s AND e.status = 'delivered'
      AND e.outbox_id > (SELECT min(outbox_id) FROM sent)
      AND e.outbox_id NOT IN (SELECT outbox_id FROM sent)
      AND k.key IN (SELECT row_key FROM sent UNION SELECT old_row_key FROM sent)
    GROUP BY k.key
), judged AS MATERIALIZED (
    SELECT c.outbox_id, c.was,
           nullif(greatest(CASE WHEN n.outbox_id > c.outbox_id THEN n.outbox_id ELSE 0 END,
                           CASE WHEN m.outbox_id > c.outbox_id THEN m.outbox_id ELSE 0 END),
                  0) AS later
    FROM sent c
    LEFT JOIN newest n ON n.key = c.row_key
    LEFT JOIN newest m ON m.key = c.old_row_key
), armed AS (
    UPDATE relay.deliveries d
    SET status = 'pending', attempts = 0, earlier_attempts = d.earlier_attempts + d.attempts,
        next_attempt_at = now(), leased_until = NULL, leased_by = NULL, last_error = NULL,
        last_status_code = NULL, batch_id = NULL, batch_delivery_id = NULL, replay = true,
        superseded_by = j.later, send_superseded = j.later IS NOT NULL
    FROM judged j
    WHERE d.outbox_id = j.outbox_id AND d.webhook_id = %(webhook_id)s
      AND (j.later IS NULL OR %(superseded)s)
    RETURNING j.was
), noted AS (
    UPDATE relay.deliveries d
    SET superseded_by = j.later,
        last_error = format('superseded: change %%s of this row was delivered after it', j.later)
    FROM judged j
    WHERE d.outbox_id = j.outbox_id AND d.webhook_id = %(webhook_id)s
      AND j.later IS NOT NULL AND NOT %(superseded)s AND j.was = 'failed'
)
SELECT (SELECT count(*) FROM armed WHERE was = 'delivered') AS delivered,
       (SELECT count(*) FROM armed WHERE was = 'failed') AS failed,
       (SELECT count(*) FROM chosen WHERE busy) AS busy,
       (SELECT count(*) FROM chosen WHERE ruleless AND NOT busy) AS ruleless,
       (SELECT count(*) FROM judged WHERE later IS NOT NULL) AS superseded;

-- name: replay_candidates
-- Changes made in [since, until) (of one table when given) that the webhook has no delivery of,
-- after `after`, in id order, as changes_to_fan_out returns them: `relay replay` matches them
-- against the webhook's rules (as any change: a backfill's webhook does not count). Changes
-- still pending are left to the fan-out. Coalescing (0031): a change coalesced into another
-- (coalesced_into) is not one the webhook never had when the webhook coalesces, or had its
-- group's event; for a webhook that coalesces, a group's last change comes with its first
-- (coalesced_from): the replay sends the group's event, as the fan-out would.
WITH hook AS MATERIALIZED (
    SELECT coalesce((SELECT w.coalesce_changes FROM relay.webhooks w
                     WHERE w.id = %(webhook_id)s), false) AS coalesces
)
SELECT o.id, true AS fresh, o.schema_name, o.table_name, o.op::text, o.pk::jsonb::text AS pk,
       relay.key_before(o.pk, o.old)::text AS old_pk,
       coalesce(octet_length(o.old::text), 0) + coalesce(octet_length(o.new::text), 0) AS bytes,
       coalesce(octet_length(o.old::text), 0) AS old_bytes,
       o.username, o.request_id, o.request_path, o.request_method, o.txid::text,
       o.created_at, NULL::bigint AS target,
       false AS requeued, CASE WHEN hook.coalesces THEN o.coalesced_into END AS coalesced_into,
       CASE WHEN hook.coalesces
            THEN (SELECT min(m.id) FROM relay.outbox m WHERE m.coalesced_into = o.id)
       END AS coalesced_from
FROM hook, relay.outbox o
WHERE o.id > %(after)s AND o.status <> 'pending'
  AND o.created_at >= %(since)s
  AND (%(until)s::timestamptz IS NULL OR o.created_at < %(until)s::timestamptz)
  AND (%(schema_name)s::text IS NULL
       OR o.schema_name = %(schema_name)s::text AND o.table_name = %(table_name)s::text)
  AND NOT EXISTS (SELECT FROM relay.deliveries d
                  WHERE d.outbox_id = o.id AND d.webhook_id = %(webhook_id)s)
  AND NOT (o.coalesced_into IS NOT NULL
           AND (hook.coalesces
                OR EXISTS (SELECT FROM relay.deliveries c
                           WHERE c.outbox_id = o.coalesced_into
                             AND c.webhook_id = %(webhook_id)s
                             AND c.coalesced_from IS NOT NULL)))
ORDER BY o.id
LIMIT %(limit)s;

-- name: change_heads
-- The first changes of coalesced groups (0031), as changes_to_fan_out returns rows: a retried
-- or replayed group's event is made again from its first change and its last.
SELECT o.id, true AS fresh, o.schema_name, o.table_name, o.op::text, o.pk::jsonb::text AS pk,
       relay.key_before(o.pk, o.old)::text AS old_pk,
       coalesce(octet_length(o.old::text), 0) + coalesce(octet_length(o.new::text), 0) AS bytes,
       coalesce(octet_length(o.old::text), 0) AS old_bytes,
       o.username, o.request_id, o.request_path, o.request_method, o.txid::text, o.created_at,
       NULL::bigint AS target,
       false AS requeued, o.coalesced_into, NULL::bigint AS coalesced_from
FROM relay.outbox o
WHERE o.id = ANY(%(ids)s::bigint[]);

-- name: add_replay_deliveries
-- Deliveries made by `relay replay` for changes the webhook never had: as add_deliveries, due
-- at the replay transaction's now() and flagged replay. Left out, and counted, as in
-- replay_rearm: those superseded by a change of their row delivered to the webhook (the ones
-- this replay sends again are pending by now), unless `superseded` asks for them (then they
-- go marked). Returns how many it added, and how many were superseded.
WITH given AS (
    SELECT *
    FROM unnest(%(outbox_ids)s::bigint[], %(webhook_ids)s::bigint[], %(rule_ids)s::bigint[],
                %(row_keys)s::text[], %(old_row_keys)s::text[], %(change_bytes)s::bigint[],
                %(coalesced_froms)s::bigint[])
        AS g (outbox_id, webhook_id, rule_id, row_key, old_row_key, change_bytes, coalesced_from)
), newest AS MATERIALIZED (
    SELECT e.webhook_id, k.key, max(e.outbox_id) AS outbox_id
    FROM relay.deliveries e, LATERAL (VALUES (e.row_key), (e.old_row_key)) k (key)
    WHERE e.webhook_id IN (SELECT webhook_id FROM given) AND e.status = 'delivered'
      AND e.outbox_id > (SELECT min(outbox_id) FROM given)
      AND k.key IN (SELECT row_key FROM given UNION SELECT old_row_key FROM given)
    GROUP BY e.webhook_id, k.key
), judged AS MATERIALIZED (
    SELECT g.*,
           nullif(greatest(CASE WHEN n.outbox_id > g.outbox_id THEN n.outbox_id ELSE 0 END,
                           CASE WHEN m.outbox_id > g.outbox_id THEN m.outbox_id ELSE 0 END),
                  0) AS later
    FROM given g
    LEFT JOIN newest n ON n.webhook_id = g.webhook_id AND n.key = g.row_key
    LEFT JOIN newest m ON m.webhook_id = g.webhook_id AND m.key = g.old_row_key
), added AS (
    INSERT INTO relay.deliveries (outbox_id, webhook_id, rule_id, row_key, old_row_key,
                                  change_bytes, next_attempt_at, replay, superseded_by,
                                  send_superseded, coalesced_from)
    SELECT outbox_id, webhook_id, rule_id, row_key, old_row_key, change_bytes, now(), true,
           later, later IS NOT NULL, coalesced_from
    FROM judged
    WHERE later IS NULL OR %(superseded)s
    ON CONFLICT (outbox_id, webhook_id) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM added) AS added,
       (SELECT count(*) FROM judged WHERE later IS NOT NULL) AS superseded;

-- name: console_outbox_ends
-- The outbox's first id and the id after its last (two probes of its primary key): where the
-- deliveries log's stretches of changes start and end. An empty outbox: 1 and 1.
SELECT coalesce(min(id), 1) AS first, coalesce(max(id), 0) + 1 AS past FROM relay.outbox;

-- name: console_outbox_bound
-- The outbox id from which changes were recorded at or after %(at)s: a binary search on the
-- outbox's primary key (a few dozen index probes, however long the outbox), so that the
-- deliveries log's time filters read an id range rather than every change's created_at (no
-- index of the outbox serves it, and none is added: each would slow every captured write).
-- Ids increase with time but for transactions that overlap (created_at is a change's
-- transaction's start): a change of one running across the moment may fall on either side.
-- Past the last change: the last id + 1; an empty outbox: 0.
WITH RECURSIVE search (lo, hi) AS (
    SELECT (SELECT min(id) FROM relay.outbox), (SELECT max(id) FROM relay.outbox) + 1
  UNION ALL
    SELECT CASE WHEN p.created_at < %(at)s::timestamptz THEN p.id + 1 ELSE s.lo END,
           CASE WHEN p.created_at < %(at)s::timestamptz THEN s.hi ELSE (s.lo + s.hi) / 2 END
    FROM search s
    CROSS JOIN LATERAL (SELECT o.id, o.created_at FROM relay.outbox o
                        WHERE o.id >= (s.lo + s.hi) / 2 ORDER BY o.id LIMIT 1) p
    WHERE s.lo < s.hi
)
SELECT coalesce((SELECT lo FROM search WHERE lo >= hi), 0) AS bound;

-- name: console_key_candidates
-- The row keys (relay.deliveries.row_key, as relay/delivery/plan.py row_key makes them) an
-- object's key typed in the console's deliveries log can be, for every tracked table (of
-- `schema` and `table` when given) with a primary key: its name (or model) and the jsonb text
-- of the key (as changes_to_fan_out reads it), its SHA-256 when longer than 2048 bytes.
-- `key_text`, the one value of a single-column key, is tried as a string and, given as
-- `key_raw` when it is a JSON number or literal, as that; `key_json`, a JSON object, must name
-- exactly the key's columns.
WITH tables AS (
    SELECT CASE WHEN t.model LIKE '%%.%%' THEN t.model
                ELSE t.schema_name || '.' || t.table_name END AS prefix,
           t.pk_columns AS cols
    FROM relay.tracked t
    WHERE (%(schema)s::text IS NULL OR t.schema_name = %(schema)s::text)
      AND (%(table)s::text IS NULL OR t.table_name = %(table)s::text)
      AND cardinality(t.pk_columns) > 0
), written AS (
    SELECT t.prefix, pg_catalog.jsonb_build_object(t.cols[1], %(key_text)s::text)::text AS pk
    FROM tables t WHERE cardinality(t.cols) = 1 AND %(key_text)s::text IS NOT NULL
    UNION ALL
    SELECT t.prefix, pg_catalog.jsonb_build_object(t.cols[1], %(key_raw)s::jsonb)::text
    FROM tables t WHERE cardinality(t.cols) = 1 AND %(key_raw)s::jsonb IS NOT NULL
    UNION ALL
    SELECT t.prefix, %(key_json)s::jsonb::text
    FROM tables t
    WHERE %(key_json)s::jsonb IS NOT NULL
      AND ARRAY(SELECT jsonb_object_keys(%(key_json)s::jsonb) ORDER BY 1)
          = ARRAY(SELECT unnest(t.cols) ORDER BY 1)
)
SELECT coalesce(array_agg(DISTINCT prefix || ':' || CASE
           WHEN octet_length(pk) > 2048
           THEN 'sha256:' || encode(sha256(convert_to(pk, 'UTF8')), 'hex')
           ELSE pk END), '{}') AS keys
FROM written;

-- name: console_deliveries
-- `relay console`'s deliveries log, newest first, a page at a time: each filter NULL means
-- "any". `event` is the change's operation; `from_id` and `to_id` the outbox ids of `since`
-- and `until` (console_outbox_bound), which keep the scan to that stretch of deliveries_pkey
-- and outbox_pkey, and created_at is checked too. Keyset pagination: the page after
-- (before_outbox, before_webhook) in the primary key's order, which deliveries_pkey serves
-- backwards. The id bounds are written on both tables' ids (the planner carries equalities
-- from one side of a join to the other, not ranges): without them, a merge join read the
-- outbox from its newest change down to the cursor, or every change for a stretch of time.
SELECT d.outbox_id, d.webhook_id, w.name AS webhook, d.status::text AS status, d.attempts,
       d.last_status_code, d.last_error, d.delivered_at, d.next_attempt_at,
       o.schema_name, o.table_name, o.op::text AS op, o.pk::text AS pk, o.created_at
FROM relay.deliveries d
JOIN relay.webhooks w ON w.id = d.webhook_id
JOIN relay.outbox o ON o.id = d.outbox_id
WHERE (%(webhook)s::text IS NULL OR w.name = %(webhook)s::text)
  AND (%(status)s::text IS NULL OR d.status::text = %(status)s::text)
  AND (%(schema)s::text IS NULL OR o.schema_name = %(schema)s::text)
  AND (%(table)s::text IS NULL OR o.table_name = %(table)s::text)
  AND (%(event)s::text IS NULL OR o.op::text = %(event)s::text)
  AND (%(from_id)s::bigint IS NULL OR d.outbox_id >= %(from_id)s::bigint)
  AND (%(to_id)s::bigint IS NULL OR d.outbox_id < %(to_id)s::bigint)
  AND (%(from_id)s::bigint IS NULL OR o.id >= %(from_id)s::bigint)
  AND (%(to_id)s::bigint IS NULL OR o.id < %(to_id)s::bigint)
  AND (%(since)s::timestamptz IS NULL OR o.created_at >= %(since)s::timestamptz)
  AND (%(until)s::timestamptz IS NULL OR o.created_at < %(until)s::timestamptz)
  AND (%(before_outbox)s::bigint IS NULL
       OR (d.outbox_id, d.webhook_id) < (%(before_outbox)s::bigint, %(before_webhook)s::bigint))
  AND (%(before_outbox)s::bigint IS NULL OR o.id <= %(before_outbox)s::bigint)
ORDER BY d.outbox_id DESC, d.webhook_id DESC
LIMIT %(limit)s;

-- name: console_key_deliveries
-- The deliveries log for an object's key: every delivery of a change of the row, under its key
-- or (a key move) the key it moved from, oldest first, with the other filters as in
-- console_deliveries. `keys` come from console_key_candidates. Each status is found through
-- its own indexes: the delivered through deliveries_delivered_rows and _old_rows (0034), the
-- pending and the failed per webhook through the relay's (deliveries_row_order,
-- deliveries_old_row_order, deliveries_failed_rows, deliveries_failed_old_rows: webhook_id
-- first). Keyset pagination on (outbox_id, webhook_id), after (after_outbox, after_webhook).
WITH found AS MATERIALIZED (
    SELECT e.outbox_id, e.webhook_id FROM relay.deliveries e
    WHERE e.status = 'delivered' AND e.row_key = ANY(%(keys)s::text[])
    UNION
    SELECT e.outbox_id, e.webhook_id FROM relay.deliveries e
    WHERE e.status = 'delivered' AND e.old_row_key IS NOT NULL
      AND e.old_row_key = ANY(%(keys)s::text[])
    UNION
    SELECT k.outbox_id, k.webhook_id
    FROM relay.webhooks h
    CROSS JOIN LATERAL (
        SELECT e.outbox_id, e.webhook_id FROM relay.deliveries e
        WHERE e.webhook_id = h.id AND e.status = 'pending' AND e.row_key = ANY(%(keys)s::text[])
        UNION ALL
        SELECT e.outbox_id, e.webhook_id FROM relay.deliveries e
        WHERE e.webhook_id = h.id AND e.status = 'pending' AND e.old_row_key IS NOT NULL
          AND e.old_row_key = ANY(%(keys)s::text[])
        UNION ALL
        SELECT e.outbox_id, e.webhook_id FROM relay.deliveries e
        WHERE e.webhook_id = h.id AND e.status = 'failed' AND e.row_key = ANY(%(keys)s::text[])
        UNION ALL
        SELECT e.outbox_id, e.webhook_id FROM relay.deliveries e
        WHERE e.webhook_id = h.id AND e.status = 'failed' AND e.old_row_key IS NOT NULL
          AND e.old_row_key = ANY(%(keys)s::text[])) k
)
SELECT d.outbox_id, d.webhook_id, w.name AS webhook, d.status::text AS status, d.attempts,
       d.last_status_code, d.last_error, d.delivered_at, d.next_attempt_at,
       o.schema_name, o.table_name, o.op::text AS op, o.pk::text AS pk, o.created_at
FROM found f
JOIN relay.deliveries d ON d.outbox_id = f.outbox_id AND d.webhook_id = f.webhook_id
JOIN relay.webhooks w ON w.id = d.webhook_id
JOIN relay.outbox o ON o.id = d.outbox_id
WHERE (%(webhook)s::text IS NULL OR w.name = %(webhook)s::text)
  AND (%(status)s::text IS NULL OR d.status::text = %(status)s::text)
  AND (%(schema)s::text IS NULL OR o.schema_name = %(schema)s::text)
  AND (%(table)s::text IS NULL OR o.table_name = %(table)s::text)
  AND (%(event)s::text IS NULL OR o.op::text = %(event)s::text)
  AND (%(from_id)s::bigint IS NULL OR d.outbox_id >= %(from_id)s::bigint)
  AND (%(to_id)s::bigint IS NULL OR d.outbox_id < %(to_id)s::bigint)
  AND (%(from_id)s::bigint IS NULL OR o.id >= %(from_id)s::bigint)
  AND (%(to_id)s::bigint IS NULL OR o.id < %(to_id)s::bigint)
  AND (%(since)s::timestamptz IS NULL OR o.created_at >= %(since)s::timestamptz)
  AND (%(until)s::timestamptz IS NULL OR o.created_at < %(until)s::timestamptz)
  AND (%(after_outbox)s::bigint IS NULL
       OR (d.outbox_id, d.webhook_id) > (%(after_outbox)s::bigint, %(after_webhook)s::bigint))
  AND (%(after_outbox)s::bigint IS NULL OR o.id >= %(after_outbox)s::bigint)
ORDER BY d.outbox_id, d.webhook_id
LIMIT %(limit)s;

-- name: console_failed_count
-- The console's bulk retry, its preview: the failed deliveries matching the log's filters (as
-- console_deliveries; `keys` NULL for any row) whose change is failed (one already re-queued
-- is not counted again), how many changes they are (what relay retry re-queues), and how
-- many of those deliveries are superseded (a later change of their row was delivered to the
-- webhook after them: they stay failed unless `superseded`, as with relay retry --superseded),
-- and the last of those changes (`through`: the confirm retries none recorded after it).
SELECT count(DISTINCT d.outbox_id) AS changes, count(*) AS deliveries,
       count(*) FILTER (WHERE d.superseded_by IS NOT NULL) AS superseded,
       coalesce(max(d.outbox_id), 0) AS through
FROM relay.deliveries d
JOIN relay.webhooks w ON w.id = d.webhook_id
JOIN relay.outbox o ON o.id = d.outbox_id
WHERE d.status = 'failed' AND o.status = 'failed'
  AND (%(webhook)s::text IS NULL OR w.name = %(webhook)s::text)
  AND (%(schema)s::text IS NULL OR o.schema_name = %(schema)s::text)
  AND (%(table)s::text IS NULL OR o.table_name = %(table)s::text)
  AND (%(event)s::text IS NULL OR o.op::text = %(event)s::text)
  AND (%(from_id)s::bigint IS NULL OR d.outbox_id >= %(from_id)s::bigint)
  AND (%(to_id)s::bigint IS NULL OR d.outbox_id < %(to_id)s::bigint)
  AND (%(from_id)s::bigint IS NULL OR o.id >= %(from_id)s::bigint)
  AND (%(to_id)s::bigint IS NULL OR o.id < %(to_id)s::bigint)
  AND (%(since)s::timestamptz IS NULL OR o.created_at >= %(since)s::timestamptz)
  AND (%(until)s::timestamptz IS NULL OR o.created_at < %(until)s::timestamptz)
  AND (%(keys)s::text[] IS NULL OR d.row_key = ANY(%(keys)s::text[])
       OR d.old_row_key = ANY(%(keys)s::text[]));

-- name: console_failed_changes
-- The console's bulk retry, a chunk at a time: the next `limit` changes after `after` (in id
-- order) that console_failed_count counts, up to `through` (the preview's last: NULL for no
-- bound); retry_failed re-queues them in a transaction of their own.
SELECT DISTINCT d.outbox_id
FROM relay.deliveries d
JOIN relay.webhooks w ON w.id = d.webhook_id
JOIN relay.outbox o ON o.id = d.outbox_id
WHERE d.status = 'failed' AND o.status = 'failed' AND d.outbox_id > %(after)s
  AND o.id > %(after)s
  AND (%(through)s::bigint IS NULL OR d.outbox_id <= %(through)s::bigint)
  AND (%(through)s::bigint IS NULL OR o.id <= %(through)s::bigint)
  AND (%(webhook)s::text IS NULL OR w.name = %(webhook)s::text)
  AND (%(schema)s::text IS NULL OR o.schema_name = %(schema)s::text)
  AND (%(table)s::text IS NULL OR o.table_name = %(table)s::text)
  AND (%(event)s::text IS NULL OR o.op::text = %(event)s::text)
  AND (%(from_id)s::bigint IS NULL OR d.outbox_id >= %(from_id)s::bigint)
  AND (%(to_id)s::bigint IS NULL OR d.outbox_id < %(to_id)s::bigint)
  AND (%(from_id)s::bigint IS NULL OR o.id >= %(from_id)s::bigint)
  AND (%(to_id)s::bigint IS NULL OR o.id < %(to_id)s::bigint)
  AND (%(since)s::timestamptz IS NULL OR o.created_at >= %(since)s::timestamptz)
  AND (%(until)s::timestamptz IS NULL OR o.created_at < %(until)s::timestamptz)
  AND (%(keys)s::text[] IS NULL OR d.row_key = ANY(%(keys)s::text[])
       OR d.old_row_key = ANY(%(keys)s::text[]))
ORDER BY d.outbox_id
LIMIT %(limit)s;

-- name: console_delivery
-- `relay console`'s page of one delivery: it, its webhook (by name and URL, never its secret),
-- and its change with both row images.
SELECT d.outbox_id, d.webhook_id, w.name AS webhook, w.payload_url, d.id::text AS delivery_id,
       d.status::text AS status, d.attempts, d.last_status_code, d.last_error, d.delivered_at,
       d.next_attempt_at, d.superseded_by, d.coalesced_from, d.row_key,
       o.schema_name, o.table_name, o.op::text AS op, o.pk::text AS pk, o.old::text AS old,
       o.new::text AS new, o.created_at, o.status::text AS change_status, o.username,
       o.request_id
FROM relay.deliveries d
JOIN relay.webhooks w ON w.id = d.webhook_id
JOIN relay.outbox o ON o.id = d.outbox_id
WHERE d.outbox_id = %(outbox_id)s AND d.webhook_id = %(webhook_id)s;

-- name: console_attempts
-- Every attempt of one delivery, in order (attempts_by_delivery), with what it kept of its
-- request and response (details: RELAY_ATTEMPT_DETAILS), as JSON text.
SELECT attempt, attempted_at, duration_ms, status_code, error, response_excerpt, replay,
       details::text AS details
FROM relay.attempts
WHERE outbox_id = %(outbox_id)s AND webhook_id = %(webhook_id)s
ORDER BY id;

-- name: console_audit_add
-- One action done through `relay console`, in the action's transaction; who and when are the
-- columns' defaults (session_user, now()): 0032_console.sql.
INSERT INTO relay.console_audit (action, target, detail, address)
VALUES (%(action)s, %(target)s, %(detail)s, %(address)s);

-- name: console_audit
-- The audit page, newest first, a page at a time (keyset on id: the primary key).
SELECT id, at, actor, action, target, detail, address
FROM relay.console_audit
WHERE %(before)s::bigint IS NULL OR id < %(before)s::bigint
ORDER BY id DESC
LIMIT %(limit)s;

-- name: console_activity
-- `relay console`'s overview chart: attempts in each minute (unit 'minute', step 1 minute) or
-- hour ('hour', 1 hour) of the last %(buckets)s, the current one last, delivered and failed
-- apart; empty ones too. Only the window's attempts are read (attempts_by_time), however long
-- the table: the window's start is written out, not taken from a subquery, so that the planner
-- sees how few rows it holds.
WITH counted AS (
    SELECT pg_catalog.date_trunc(%(unit)s, a.attempted_at) AS bucket,
           count(*) FILTER (WHERE a.error IS NULL) AS delivered,
           count(*) FILTER (WHERE a.error IS NOT NULL) AS failed
    FROM relay.attempts a
    WHERE a.attempted_at >= pg_catalog.date_trunc(%(unit)s, now())
                            - (%(buckets)s - 1) * %(step)s::interval
    GROUP BY 1
)
SELECT b.bucket AS start, coalesce(c.delivered, 0) AS delivered, coalesce(c.failed, 0) AS failed
FROM pg_catalog.generate_series(
         pg_catalog.date_trunc(%(unit)s, now()) - (%(buckets)s - 1) * %(step)s::interval,
         pg_catalog.date_trunc(%(unit)s, now()),
         %(step)s::interval) AS b (bucket)
LEFT JOIN counted c USING (bucket)
ORDER BY b.bucket;

-- name: console_failures
-- `relay console`'s overview: the webhooks whose attempts failed since %(since)s, most
-- failures first, with all their attempts since then (attempts_by_time, as console_activity).
SELECT w.name AS webhook,
       count(*) FILTER (WHERE a.error IS NOT NULL) AS failed,
       count(*) AS attempts
FROM relay.attempts a
JOIN relay.webhooks w ON w.id = a.webhook_id
WHERE a.attempted_at >= %(since)s
GROUP BY w.name
HAVING count(*) FILTER (WHERE a.error IS NOT NULL) > 0
ORDER BY failed DESC, w.name
LIMIT %(limit)s;
