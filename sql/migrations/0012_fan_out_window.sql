-- 0012 fan-out window: fan-out finds new changes through the primary key, so that writers no
-- longer pay for an index of their own.
--
-- Every captured row used to enter outbox_to_fan_out (pending and not fanned out), an index
-- that only the relay reads: a second index insertion per change, at the right-hand edge of a
-- btree that every writer shares (docs/benchmarks.md, "Capture"). Now:
-- * fan-out remembers `scanned_to`, the id up to which it has looked, and reads the ids after it
--   in order (the primary key);
-- * an id below the highest it saw but not visible yet belongs to a transaction that was still
--   running then (ids are taken after the transaction has its id, so an id below a committed one
--   was taken by a transaction that started before that commit). Such ids are kept as gaps,
--   with the transactions that were running: a gap is read again once one of them has ended,
--   and forgotten once all have. A long transaction costs one small gap, not a rescan of
--   everything after it;
-- * re-queued changes (`UPDATE relay.outbox SET status = 'pending'`) get `requeued_at` and are
--   found through a partial index that new rows never enter.
-- relay/delivery/window.py holds the bookkeeping; changes_to_fan_out in sql/queries.sql reads all three.

ALTER TABLE relay.outbox ADD COLUMN requeued_at timestamptz;

CREATE TABLE relay.fan_out_position (
    one        boolean PRIMARY KEY DEFAULT true CHECK (one),
    scanned_to bigint  NOT NULL
);

-- Ids lo..hi were not visible when fan-out passed them, while transaction xid (one row for each
-- of those running then) was. A handful of rows at most, rewritten whole by each fan-out pass
-- that changes them.
CREATE TABLE relay.fan_out_gaps (
    lo  bigint NOT NULL,
    hi  bigint NOT NULL,
    xid xid8   NOT NULL
);

-- The migration holds the outbox exclusively (DROP INDEX), so every id taken so far belongs to a
-- transaction that has ended: fan-out goes on from the first change not fanned out yet.
DROP INDEX relay.outbox_to_fan_out;
INSERT INTO relay.fan_out_position (scanned_to)
SELECT coalesce((SELECT min(id) - 1 FROM relay.outbox
                 WHERE status = 'pending' AND fanned_out_at IS NULL),
                (SELECT max(id) FROM relay.outbox), 0);

CREATE INDEX outbox_requeued ON relay.outbox (id)
    WHERE status = 'pending' AND fanned_out_at IS NULL AND requeued_at IS NOT NULL;

CREATE OR REPLACE FUNCTION relay.requeue() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    NEW.fanned_out_at := NULL;
    NEW.processed_at := NULL;
    NEW.next_attempt_at := NULL;
    NEW.last_error := NULL;
    NEW.requeued_at := now();
    PERFORM pg_notify('relay_outbox', '');
    RETURN NEW;
END
$$;

INSERT INTO relay.migrations (version, name) VALUES (12, 'fan_out_window');
