-- Pieces of SQL that several queries share, each written once under a `-- fragment: <name>`
-- line and put where a query (or another fragment) says /*> <name> */ when relay.sqlfiles loads
-- the queries, its lines after the first indented to the marker's column. The comment lines
-- that open a fragment say what it is and are not put in; its last line must not end in a
-- comment (that would hide the rest of the line it is put in). A fragment no query uses, or a
-- name no fragment has, stops the queries from loading. Parameters use psycopg's %(name)s
-- style, as in the queries: the query that uses the fragment is sent with them.

-- fragment: too_large
-- The byte cap: a delivery whose change (both images) is over max_change_bytes is claimed
-- without its images, counts nothing against the room a relay has, and fails
-- (relay/delivery/claim.py, Claimed.of). `d` is the delivery.
d.change_bytes > %(max_change_bytes)s

-- fragment: counted_bytes
-- What a delivery `d` counts against a relay's room (bytes_free, bytes_per_webhook, body_bytes):
-- its change's bytes, nothing over the byte cap. int, so that the running sums over it add
-- bigints, not numerics (max_body_bytes is at most 1 GiB).
CASE WHEN /*> too_large */ THEN 0
     ELSE d.change_bytes::int END AS bytes

-- fragment: batch_member
-- A delivery `d` a batch may take, as claim_batch's candidates, earlier and heads list it (then
-- its order_key and position).
d.ctid, d.outbox_id, d.row_key, d.next_attempt_at,
/*> counted_bytes */,
d.old_row_key

-- fragment: claimed_change
-- A claimed delivery `d` and its change `o` (relay/store.py, _claimed): what claim_deliveries
-- and claim_batch return for each delivery they lease.
d.outbox_id, d.webhook_id, d.rule_id, d.attempts,
d.earlier_attempts + d.attempts AS attempt_number, d.change_bytes, d.replay,
d.id AS delivery_id,
CASE WHEN d.send_superseded THEN d.superseded_by END AS superseded_by,
CASE WHEN NOT d.send_superseded THEN d.superseded_by END AS superseded_unasked,
o.id, o.schema_name, o.table_name, o.pk::text, o.username, o.request_id,
o.request_path, o.request_method, o.txid::text, o.created_at,
-- Coalesced (0031: coalesced_from, the group's first change): the group's op, and
-- the first change's old image (the row before the transaction).
CASE WHEN d.coalesced_from IS NULL THEN o.op::text
     ELSE coalesce((SELECT CASE WHEN f.op = 'insert' THEN 'insert'
                                WHEN o.op = 'delete' THEN 'delete'
                                ELSE 'update' END
                    FROM relay.outbox f WHERE f.id = d.coalesced_from), o.op::text)
END AS op,
CASE WHEN /*> too_large */ THEN NULL
     WHEN d.coalesced_from IS NULL THEN o.old::text
     ELSE (SELECT f.old::text FROM relay.outbox f WHERE f.id = d.coalesced_from)
END AS old,
CASE WHEN NOT /*> too_large */ THEN o.new::text END AS new

-- fragment: fan_out_change
-- A change `o` as fan-out looks at it (relay/store.py, FanOutRow), after its id and `fresh`:
-- its names, its key and the key an UPDATE moved the row from, its size in bytes (both images)
-- and its old image's, and where it came from. changes_to_fan_out, transaction_changes,
-- transaction_rest, replay_candidates and change_heads return it.
o.schema_name, o.table_name, o.op::text, o.pk::jsonb::text AS pk,
relay.key_before(o.pk, o.old)::text AS old_pk,
coalesce(octet_length(o.old::text), 0) + coalesce(octet_length(o.new::text), 0) AS bytes,
coalesce(octet_length(o.old::text), 0) AS old_bytes,
o.username, o.request_id, o.request_path, o.request_method, o.txid::text, o.created_at
