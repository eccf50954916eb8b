-- Statements bench/capture.py runs, by name. {queue} etc. are filled in by the script.

-- name: track_relay
SELECT relay.track(t) FROM unnest(ARRAY['pgbench_accounts', 'pgbench_branches',
                                         'pgbench_tellers', 'pgbench_history']::regclass[]) t;

-- name: untrack_relay
SELECT relay.untrack(t) FROM unnest(ARRAY['pgbench_accounts', 'pgbench_branches',
                                           'pgbench_tellers', 'pgbench_history']::regclass[]) t;

-- name: setup_pgq
CREATE EXTENSION IF NOT EXISTS pgq;
SELECT pgq.create_queue('bench') WHERE NOT EXISTS (
    SELECT FROM pgq.queue WHERE queue_name = 'bench');

-- name: track_pgq
CREATE TRIGGER bench_pgq AFTER INSERT OR UPDATE OR DELETE ON pgbench_accounts
    FOR EACH ROW EXECUTE FUNCTION pgq.logutriga('bench');
CREATE TRIGGER bench_pgq AFTER INSERT OR UPDATE OR DELETE ON pgbench_branches
    FOR EACH ROW EXECUTE FUNCTION pgq.logutriga('bench');
CREATE TRIGGER bench_pgq AFTER INSERT OR UPDATE OR DELETE ON pgbench_tellers
    FOR EACH ROW EXECUTE FUNCTION pgq.logutriga('bench');
-- pgbench_history has no primary key, which logutriga needs for deletes: it is told one.
CREATE TRIGGER bench_pgq AFTER INSERT OR UPDATE OR DELETE ON pgbench_history
    FOR EACH ROW EXECUTE FUNCTION pgq.logutriga('bench', 'pkey=aid');

-- name: untrack_pgq
DROP TRIGGER IF EXISTS bench_pgq ON pgbench_accounts;
DROP TRIGGER IF EXISTS bench_pgq ON pgbench_branches;
DROP TRIGGER IF EXISTS bench_pgq ON pgbench_tellers;
DROP TRIGGER IF EXISTS bench_pgq ON pgbench_history;

-- name: setup_rowtrigger
-- The reference point: the least a PL/pgSQL row trigger can do to keep a change as JSON.
CREATE TABLE IF NOT EXISTS bench_changes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tbl text NOT NULL, op text NOT NULL, row_data jsonb);
CREATE OR REPLACE FUNCTION bench_minimal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_changes (tbl, op, row_data)
    VALUES (TG_TABLE_NAME, TG_OP, to_jsonb(CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END));
    RETURN NULL;
END $$;

-- name: track_rowtrigger
CREATE TRIGGER bench_row AFTER INSERT OR UPDATE OR DELETE ON pgbench_accounts
    FOR EACH ROW EXECUTE FUNCTION bench_minimal();
CREATE TRIGGER bench_row AFTER INSERT OR UPDATE OR DELETE ON pgbench_branches
    FOR EACH ROW EXECUTE FUNCTION bench_minimal();
CREATE TRIGGER bench_row AFTER INSERT OR UPDATE OR DELETE ON pgbench_tellers
    FOR EACH ROW EXECUTE FUNCTION bench_minimal();
CREATE TRIGGER bench_row AFTER INSERT OR UPDATE OR DELETE ON pgbench_history
    FOR EACH ROW EXECUTE FUNCTION bench_minimal();

-- name: untrack_rowtrigger
DROP TRIGGER IF EXISTS bench_row ON pgbench_accounts;
DROP TRIGGER IF EXISTS bench_row ON pgbench_branches;
DROP TRIGGER IF EXISTS bench_row ON pgbench_tellers;
DROP TRIGGER IF EXISTS bench_row ON pgbench_history;

-- name: empty_queues
TRUNCATE relay.outbox, relay.deliveries, relay.attempts;
TRUNCATE bench_changes;

-- name: empty_pgq
SELECT pgq.drop_queue('bench', true);
SELECT pgq.create_queue('bench');

-- name: bulk_update
UPDATE pgbench_accounts SET abalance = abalance + 1;

-- name: bulk_insert
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime)
SELECT 1, 1, g, 1, now() FROM generate_series(1, 100000) g;

-- name: bulk_delete
DELETE FROM pgbench_history;

-- name: empty_history
TRUNCATE pgbench_history;

-- name: settle
VACUUM pgbench_accounts;

-- name: count_outbox
SELECT count(*) FROM relay.outbox;
