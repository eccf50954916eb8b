-- Fan-out: the changes read in id order and the deliveries they become
-- (relay/delivery/fanout.py, window.py, plan.py).

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
       /*> fan_out_change */,
       o.webhook_id AS target,
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
SELECT o.id, true AS fresh,
       /*> fan_out_change */,
       o.webhook_id AS target,
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
