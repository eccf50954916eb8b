-- What relay status and the metrics read, and the relays it lists (relay/cli/operate.py,
-- relay/delivery/metrics.py).

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

-- name: webhook_state
SELECT id, enabled FROM relay.webhooks WHERE name = %(name)s;
