-- Claims: due deliveries and batches leased to a relay, and request slots
-- (relay/delivery/claim.py, claimer.py, pacing.py).

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
               /*> counted_bytes */
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
               /*> counted_bytes */
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
RETURNING /*> claimed_change */;

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
           /*> counted_bytes */
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
    SELECT /*> batch_member */, NULL::text AS order_key, NULL::bigint AS position
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
    SELECT /*> batch_member */, NULL::text AS order_key, NULL::bigint AS position
    FROM relay.deliveries d
    WHERE d.ctid = ANY(ARRAY(
        SELECT f.ctid
        FROM (SELECT row_key, max(outbox_id) AS upto FROM candidates GROUP BY row_key) c
        CROSS JOIN LATERAL (
            SELECT f.ctid FROM relay.deliveries f
            WHERE f.webhook_id = %(webhook_id)s AND f.row_key = c.row_key
              AND f.status = 'pending' AND f.outbox_id < c.upto
            ORDER BY f.outbox_id
            LIMIT %(batch_size)s) f))
      AND d.status = 'pending'
    FOR UPDATE OF d SKIP LOCKED
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
    SELECT /*> batch_member */, d.order_key, d.position
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
    RETURNING /*> claimed_change */,
              d.batch_id, d.batch_delivery_id, batch.again AS batch_again, d.position
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
