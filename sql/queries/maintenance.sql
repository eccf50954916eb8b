-- Maintenance: purging history and refreshing statistics (relay/delivery/maintenance.py and
-- relay purge).

-- name: purge_attempts
-- One batch of attempts older than the retention; the relay repeats it until a batch is short.
DELETE FROM relay.attempts
WHERE id IN (
    SELECT id FROM relay.attempts
    WHERE attempted_at < now() - make_interval(secs => %(seconds)s)
    ORDER BY attempted_at
    LIMIT %(limit)s);

-- name: refresh_statistics
SELECT relay.refresh_statistics();

-- name: purge_changes
-- One batch of finished changes (delivered, failed or skipped) older than the retention,
-- oldest first; their deliveries and attempts go with them. Rows another session holds are
-- left for the next batch, and so is a change being replayed (a delivery of it is pending),
-- and a change coalesced into another that is still there (0031: a retry or a replay of that
-- one makes its event again, from this one's old image): it goes in a batch after that one.
-- What went is counted in relay.purged_changes (for relay replay: 0027_purged.sql), its rows
-- taken in key order so that two purges at once never wait on each other crosswise. How many
-- went.
WITH gone AS (
    DELETE FROM relay.outbox
    WHERE id IN (
        SELECT o.id FROM relay.outbox o
        WHERE o.status <> 'pending'
          AND o.processed_at < now() - make_interval(secs => %(seconds)s)
          AND NOT EXISTS (SELECT FROM relay.deliveries d
                          WHERE d.outbox_id = o.id AND d.status = 'pending')
          AND NOT EXISTS (SELECT FROM relay.outbox x WHERE x.id = o.coalesced_into)
        ORDER BY o.processed_at
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED)
    RETURNING schema_name, table_name, created_at
), counted AS (
    INSERT INTO relay.purged_changes AS p
        (made_hour, schema_name, table_name, changes, first_made, last_made)
    SELECT date_trunc('hour', created_at, 'UTC'), schema_name, table_name, count(*),
           min(created_at), max(created_at)
    FROM gone
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3
    ON CONFLICT (made_hour, schema_name, table_name) DO UPDATE
    SET changes = p.changes + excluded.changes,
        first_made = least(p.first_made, excluded.first_made),
        last_made = greatest(p.last_made, excluded.last_made)
)
SELECT count(*) FROM gone;

-- name: count_purgeable
SELECT count(*) FROM relay.outbox o
WHERE o.status <> 'pending' AND o.processed_at < now() - make_interval(secs => %(seconds)s)
  AND NOT EXISTS (SELECT FROM relay.deliveries d WHERE d.outbox_id = o.id AND d.status = 'pending');
