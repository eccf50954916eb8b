-- 0003 delivery: per-webhook delivery state, the attempt log, and re-queueing with plain SQL.
--
-- How a change travels (relay/delivery/worker.py drives it, with the queries in sql/queries.sql):
-- 1. Fan-out: one relay at a time takes outbox rows that are pending and not yet fanned out, in
--    id order, matches them against the rules and writes one relay.deliveries row per webhook
--    (or marks the change 'skipped'). Id order is safe for per-row ordering: two changes to one
--    row commit in id order, because the second writer waits for the first one's row lock.
-- 2. Delivery: any number of relays lease due deliveries (FOR UPDATE SKIP LOCKED, then a lease
--    that outlives a crash only by lease_seconds), never a delivery while an earlier change to
--    the same row is still pending for the same webhook, send them, and record the outcome.
-- 3. The outbox row becomes 'delivered' when all its deliveries are, 'failed' when one fails.

-- Set once a change has been matched against the rules. NULL on insert, so it costs the
-- writers nothing but the partial index below, which keeps finding new work independent of
-- how many finished changes the outbox holds.
ALTER TABLE relay.outbox ADD COLUMN fanned_out_at timestamptz;
CREATE INDEX outbox_to_fan_out ON relay.outbox (id)
    WHERE status = 'pending' AND fanned_out_at IS NULL;
-- Changes in progress, for the sweep that finishes changes whose relay died between recording
-- its last delivery and finishing the change. A new row is not in it (not fanned out yet), so
-- writers never pay for this one.
CREATE INDEX outbox_in_progress ON relay.outbox (id)
    WHERE status = 'pending' AND fanned_out_at IS NOT NULL;

CREATE TYPE relay.delivery_status AS ENUM ('pending', 'delivered', 'failed');

CREATE TABLE relay.deliveries (
    outbox_id        bigint                NOT NULL REFERENCES relay.outbox (id) ON DELETE CASCADE,
    webhook_id       bigint                NOT NULL REFERENCES relay.webhooks (id) ON DELETE CASCADE,
    rule_id          bigint                REFERENCES relay.event_rules (id) ON DELETE SET NULL,
    -- Which row of which table the change is about: deliveries of one row to one webhook go out
    -- in outbox order. Changes to tables without a primary key each get a key of their own.
    row_key          text                  NOT NULL,
    status           relay.delivery_status NOT NULL DEFAULT 'pending',
    attempts         integer               NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz           NOT NULL DEFAULT now(),
    leased_until     timestamptz,
    leased_by        text,
    last_status_code integer,
    last_error       text,
    delivered_at     timestamptz,
    PRIMARY KEY (outbox_id, webhook_id)
);
CREATE INDEX deliveries_due ON relay.deliveries (webhook_id, next_attempt_at, outbox_id)
    WHERE status = 'pending';
CREATE INDEX deliveries_row_order ON relay.deliveries (webhook_id, row_key, outbox_id)
    WHERE status = 'pending';

CREATE TABLE relay.attempts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    outbox_id        bigint      NOT NULL,
    webhook_id       bigint      NOT NULL,
    attempt          integer     NOT NULL,
    attempted_at     timestamptz NOT NULL DEFAULT now(),
    duration_ms      integer     NOT NULL,
    status_code      integer,
    error            text,
    response_excerpt text,
    FOREIGN KEY (outbox_id, webhook_id) REFERENCES relay.deliveries ON DELETE CASCADE
);
CREATE INDEX attempts_by_delivery ON relay.attempts (outbox_id, webhook_id);
CREATE INDEX attempts_by_time ON relay.attempts (attempted_at);

-- `UPDATE relay.outbox SET status = 'pending' WHERE status = 'failed' AND ...` is all it takes
-- to send a change again: this trigger makes the row look new to the fan-out (which re-arms
-- only the deliveries that failed) and wakes the relays. Writers only INSERT into the outbox,
-- so it costs them nothing.
CREATE FUNCTION relay.requeue() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    NEW.fanned_out_at := NULL;
    NEW.processed_at := NULL;
    NEW.next_attempt_at := NULL;
    NEW.last_error := NULL;
    PERFORM pg_notify('relay_outbox', '');
    RETURN NEW;
END
$$;

CREATE TRIGGER requeue BEFORE UPDATE OF status ON relay.outbox
    FOR EACH ROW WHEN (NEW.status = 'pending' AND OLD.status <> 'pending')
    EXECUTE FUNCTION relay.requeue();

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA relay FROM PUBLIC;

INSERT INTO relay.migrations (version, name) VALUES (3, 'delivery');
