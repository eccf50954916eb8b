-- relay console's pages (relay/console/).

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
