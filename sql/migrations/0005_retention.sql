-- 0005 retention: finding finished changes by age, and keeping the queue tables vacuumed.
--
-- `relay purge` and the relay's own retention (RELAY_RETENTION_DAYS) delete finished changes
-- (their deliveries and attempts go with them, ON DELETE CASCADE) oldest first, a batch at a
-- time. This index finds them without reading the changes still in flight; writers never pay
-- for it (a new change is pending, outside its predicate).
CREATE INDEX outbox_finished ON relay.outbox (processed_at) WHERE status <> 'pending';

-- Queue tables: rows are inserted, updated a few times and deleted. Vacuum after 2% of them
-- changed instead of PostgreSQL's default 20%, so that space freed by the purge is reused
-- before the tables grow.
ALTER TABLE relay.outbox SET (autovacuum_vacuum_scale_factor = 0.02,
                              autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE relay.deliveries SET (autovacuum_vacuum_scale_factor = 0.02,
                                  autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE relay.attempts SET (autovacuum_vacuum_scale_factor = 0.02,
                                autovacuum_analyze_scale_factor = 0.02);

INSERT INTO relay.migrations (version, name) VALUES (5, 'retention');
