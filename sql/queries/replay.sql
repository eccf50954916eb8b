-- relay replay (relay/delivery/replay.py, relay/cli/replay.py).

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
SELECT o.id, true AS fresh,
       /*> fan_out_change */,
       NULL::bigint AS target,
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
SELECT o.id, true AS fresh,
       /*> fan_out_change */,
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
