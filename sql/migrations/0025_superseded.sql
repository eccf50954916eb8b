-- 0025 superseded: a change sent again is never the stale image a receiver ends on, unless asked.
--
-- A delivery that failed for good no longer holds its row back, so the row's later changes go
-- on. Sending the failed one again afterwards (`relay retry`, the SQL reset, `relay replay`)
-- used to deliver the older image last: the receiver ended on stale data, and nothing said so.
-- Now such a delivery is superseded: a later change of its row (its key, or either key of a key
-- move) was delivered to the same webhook after it failed. It stays failed, saying which change
-- superseded it, unless the operator asks for it (send_superseded: `relay retry --superseded`,
-- `relay replay --superseded`); then it goes with X-Relay-Superseded naming that change.
--
-- superseded_by is written when the later change is delivered (record_outcomes), so that a
-- retry or a reset reads it from the failed delivery itself: finding the later changes of a
-- row among the delivered ones would take an index of every delivery ever made. Failed
-- deliveries are few (and leave these indexes when they are armed again or purged), so the two
-- indexes below, which that write probes, stay small.
ALTER TABLE relay.deliveries
    ADD COLUMN superseded_by   bigint,
    ADD COLUMN send_superseded boolean NOT NULL DEFAULT false;

COMMENT ON COLUMN relay.deliveries.superseded_by IS
    'The latest change of the same row delivered to the webhook after this delivery failed (NULL: none).';
COMMENT ON COLUMN relay.deliveries.send_superseded IS
    'Send it although superseded (relay retry/replay --superseded), marked X-Relay-Superseded; cleared when it ends.';

CREATE INDEX deliveries_failed_rows ON relay.deliveries (webhook_id, row_key, outbox_id)
    WHERE status = 'failed';
CREATE INDEX deliveries_failed_old_rows ON relay.deliveries (webhook_id, old_row_key, outbox_id)
    WHERE status = 'failed' AND old_row_key IS NOT NULL;

-- Failed deliveries that later changes of their rows superseded before this upgrade: one pass
-- over the deliveries, the newest delivered change per webhook and key.
WITH newest AS (
    SELECT d.webhook_id, k.key, max(d.outbox_id) AS outbox_id
    FROM relay.deliveries d, LATERAL (VALUES (d.row_key), (d.old_row_key)) k (key)
    WHERE d.status = 'delivered' AND k.key IS NOT NULL
    GROUP BY d.webhook_id, k.key
), later AS (
    SELECT f.outbox_id, f.webhook_id, max(n.outbox_id) AS outbox_id_later
    FROM relay.deliveries f, LATERAL (VALUES (f.row_key), (f.old_row_key)) k (key)
    JOIN newest n ON n.key = k.key
    WHERE f.status = 'failed' AND n.webhook_id = f.webhook_id AND n.outbox_id > f.outbox_id
    GROUP BY f.outbox_id, f.webhook_id
)
UPDATE relay.deliveries f SET superseded_by = l.outbox_id_later
FROM later l
WHERE f.outbox_id = l.outbox_id AND f.webhook_id = l.webhook_id;

INSERT INTO relay.migrations (version, name) VALUES (25, 'superseded');
