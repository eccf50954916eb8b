-- 0010 change bytes: deliveries know how large their change is, so that a relay claims by
-- bytes, not only by count (claim_deliveries in sql/queries.sql, relay/delivery/holding.py).
--
-- Twenty 50 MB rows, inserted then updated, once took a relay to 7.3 GB: a claim brought a
-- thousand changes into memory whatever their size. Now a claim takes only what fits in the
-- room the relay has left, and a change over RELAY_MAX_BODY_BYTES is never read at all.

-- octet_length(old::text) + octet_length(new::text): the JSON a claim brings into the relay,
-- known before reading it. Fan-out works it out in the database.
ALTER TABLE relay.deliveries ADD COLUMN change_bytes bigint NOT NULL DEFAULT 0;

-- Deliveries pending at upgrade get their size as fan-out now writes it (this renders each
-- pending change's JSON once: about a second per 100,000 small changes).
UPDATE relay.deliveries d
SET change_bytes = coalesce(octet_length(o.old::text), 0) + coalesce(octet_length(o.new::text), 0)
FROM relay.outbox o
WHERE o.id = d.outbox_id AND d.status = 'pending';

INSERT INTO relay.migrations (version, name) VALUES (10, 'change_bytes');
