-- 0018: relay.outbox loses next_attempt_at.
--
-- It was never set: since 0003 retries are due per webhook (relay.deliveries.next_attempt_at), and
-- only relay.requeue() still wrote the column, to reset it to null. A column documented as "when
-- a retry is due" that is always null misled whoever read it. Dropping it is a catalog change (no
-- rewrite of the table).
CREATE OR REPLACE FUNCTION relay.requeue() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    NEW.fanned_out_at := NULL;
    NEW.processed_at := NULL;
    NEW.last_error := NULL;
    NEW.requeued_at := now();
    PERFORM pg_notify('relay_outbox', '');
    RETURN NEW;
END
$$;

ALTER TABLE relay.outbox DROP COLUMN next_attempt_at;

INSERT INTO relay.migrations (version, name) VALUES (18, 'outbox_next_attempt');
