-- Outcomes: what a relay writes once a request is answered (relay/delivery/record.py), and the
-- leases it gives back when it stops.

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

-- name: release_leases
-- On shutdown: what this relay claimed but did not finish is free for others at once (a claimed
-- batch was made due at its lease's end: claim_batch).
UPDATE relay.deliveries
SET leased_until = NULL, leased_by = NULL, attempts = greatest(attempts - 1, 0),
    next_attempt_at = least(next_attempt_at, now())
WHERE leased_by = %(relay_id)s AND status = 'pending';
