-- 0034 console log: the console's deliveries log finds an object's changes by its key
-- (docs/console.md): every delivery of a change of a row, under the row's key or, for a key
-- move, the key it moved from, oldest first. The relay's own row indexes hold the pending and
-- the failed deliveries (deliveries_row_order, deliveries_old_row_order, 0003 and 0009;
-- deliveries_failed_rows, deliveries_failed_old_rows, 0025); these hold the delivered ones.
-- Only those: a delivery enters them once, when it is delivered, not at every write of its
-- row (each attempt's update is a new row version, with an entry in every index that holds
-- it). Hash indexes: the key is only ever looked up by equality, and an entry is its 4-byte
-- hash rather than the key's text. They are on relay.deliveries, which the relay writes, never
-- on relay.outbox: an index of the outbox would cost every write the application makes to a
-- tracked table. What they cost is measured in docs/benchmarks.md (the console's deliveries
-- log).
CREATE INDEX deliveries_delivered_rows ON relay.deliveries USING hash (row_key)
    WHERE status = 'delivered';
CREATE INDEX deliveries_delivered_old_rows ON relay.deliveries USING hash (old_row_key)
    WHERE status = 'delivered' AND old_row_key IS NOT NULL;

INSERT INTO relay.migrations (version, name) VALUES (34, 'console_log');
