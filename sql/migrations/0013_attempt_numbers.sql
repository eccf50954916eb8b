-- 0013 attempt numbers: a delivery's attempts are numbered across re-queues.
--
-- Re-queueing a failed change (`UPDATE relay.outbox SET status = 'pending'`) arms its failed
-- deliveries again with `attempts` at 0, so that RELAY_MAX_ATTEMPTS applies afresh; relay.attempts
-- then held two "attempt 1" rows for one delivery. `earlier_attempts` keeps what the delivery
-- made before its last re-queue: an attempt's number is earlier_attempts + attempts.
ALTER TABLE relay.deliveries ADD COLUMN earlier_attempts integer NOT NULL DEFAULT 0;

-- Deliveries re-queued before this migration: what relay.attempts already holds for them.
UPDATE relay.deliveries d
SET earlier_attempts = greatest(a.logged - d.attempts, 0)
FROM (SELECT outbox_id, webhook_id, count(*) AS logged FROM relay.attempts
      GROUP BY outbox_id, webhook_id) a
WHERE a.outbox_id = d.outbox_id AND a.webhook_id = d.webhook_id AND a.logged > d.attempts;

INSERT INTO relay.migrations (version, name) VALUES (13, 'attempt_numbers');
