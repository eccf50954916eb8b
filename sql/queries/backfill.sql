-- relay backfill (relay/cli/backfill.py).

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
