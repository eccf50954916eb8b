-- 0033 console log: the console's deliveries log finds an object's changes by its key
-- (docs/console.md): every delivery of a change of a row, under the row's key or, for a key
-- move, the key it moved from, oldest first. The relay's own row indexes hold only pending or
-- failed deliveries (deliveries_row_order, deliveries_failed_rows), so these hold them all.
-- They are on relay.deliveries, which the relay writes, never on relay.outbox: an index of the
-- outbox would cost every write the application makes to a tracked table. What they cost the
-- fan-out is measured in docs/benchmarks.md (the console's deliveries log).
CREATE INDEX deliveries_by_row ON relay.deliveries (row_key, outbox_id);
CREATE INDEX deliveries_by_old_row ON relay.deliveries (old_row_key, outbox_id)
    WHERE old_row_key IS NOT NULL;

INSERT INTO relay.migrations (version, name) VALUES (33, 'console_log');
