-- 0009 key moves: an UPDATE that changes a row's primary key keeps per-row order under both
-- keys (claim_deliveries in sql/queries.sql).
--
-- The capture keys an UPDATE by its new primary key only. A receiver whose first attempt at
-- "created 10" failed then got "updated 10 -> 11" first: the update, keyed 11, waited for
-- nothing. Now a delivery also carries the key its change moved the row from; it waits for
-- pending changes of either key, and later changes of either key wait for it (a chain
-- 10 -> 11 -> 12, or a new row 10 after the move, included).

-- The primary key an UPDATE moved its row from, when it changed the key: the key columns (those
-- of pk, which the capture built from the new image) taken from the old image. NULL when the key
-- stayed, and for inserts (no old image) and deletes (pk is the old key). jsonb both times, so
-- its text is byte for byte what pk::text is for the same values: the earlier changes of the old
-- key carry exactly that text as their row key.
CREATE FUNCTION relay.key_before(pk jsonb, old jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT nullif((SELECT jsonb_object_agg(k, old -> k) FROM jsonb_object_keys(pk) k), pk)
$$;
REVOKE ALL ON FUNCTION relay.key_before(jsonb, jsonb) FROM PUBLIC;

-- The row key (as row_key) of the primary key a key move came from; NULL for other changes.
ALTER TABLE relay.deliveries ADD COLUMN old_row_key text;

-- Pending key moves only: almost always empty; relay.clear_of_key_moves looks up old keys here.
CREATE INDEX deliveries_old_row_order ON relay.deliveries (webhook_id, old_row_key, outbox_id)
    WHERE status = 'pending' AND old_row_key IS NOT NULL;

-- Whether no earlier delivery pending for the webhook shares a key with this one (row key
-- `key`, and `old_key` for a key move) through a key move: its old key is one of ours, or ours
-- is its new key. The claim calls it only while the webhook has a key move pending: planned
-- into every claim, these lookups cost 0.2 ms a claim for a rare case. SQL, not plpgsql, and no
-- SET clause: under 10 us a call rather than 50 (only pg_catalog and schema-qualified names are
-- used). Old keys are counted, not min() or EXISTS: those were planned, before statistics,
-- as a walk of the primary key in outbox_id order, 100,000 entries per candidate (a claim took
-- minutes); the count is a lookup in the partial index below.
CREATE FUNCTION relay.clear_of_key_moves(webhook bigint, outbox bigint, key text, old_key text)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT (SELECT count(*) FROM relay.deliveries e
            WHERE e.webhook_id = webhook AND e.old_row_key = key
              AND e.outbox_id < outbox AND e.status = 'pending') = 0
       AND (old_key IS NULL OR (
            (SELECT count(*) FROM relay.deliveries e
             WHERE e.webhook_id = webhook AND e.old_row_key = old_key
               AND e.outbox_id < outbox AND e.status = 'pending') = 0
            AND outbox <= coalesce((SELECT min(e.outbox_id) FROM relay.deliveries e
                                    WHERE e.webhook_id = webhook AND e.row_key = old_key
                                      AND e.status = 'pending'), outbox)))
$$;
REVOKE ALL ON FUNCTION relay.clear_of_key_moves(bigint, bigint, text, text) FROM PUBLIC;

-- Key moves pending at upgrade get their old key as fan-out now writes it.
UPDATE relay.deliveries d
SET old_row_key = o.schema_name || '.' || o.table_name || ':' || relay.key_before(o.pk, o.old)::text
FROM relay.outbox o
WHERE o.id = d.outbox_id AND d.status = 'pending' AND o.op = 'update';

INSERT INTO relay.migrations (version, name) VALUES (9, 'key_moves');
