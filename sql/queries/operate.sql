-- An operator's commands on webhooks and failed deliveries: relay retry, pause, resume
-- (relay/cli/operate.py, webhook.py).

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
