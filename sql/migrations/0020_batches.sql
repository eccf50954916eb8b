-- 0020 batches: a webhook may take many changes in one request.
--
-- One request per change caps a relay at what CPython can send one at a time. A webhook with
-- batch_size > 1 gets up to that many changes in one request (a JSON array by default), signed
-- once, under one delivery id. A batch is written down when it is claimed (batch_id on each
-- of its deliveries, from relay.batch_ids), so a retry sends exactly the same changes under
-- the same id, whichever relay makes it; the attempt log keeps the batch of every attempt.
-- relay/delivery/worker.py and claim_batch in sql/queries.sql use them.
ALTER TABLE relay.webhooks
    ADD COLUMN batch_size    integer NOT NULL DEFAULT 1,
    ADD COLUMN batch_wait_ms integer NOT NULL DEFAULT 0;

COMMENT ON COLUMN relay.webhooks.batch_size IS
    'Changes per request, at most (1: one request per change, the body one object; more: a JSON array).';
COMMENT ON COLUMN relay.webhooks.batch_wait_ms IS
    'How long a batch that is not full may wait for more changes before it goes, in milliseconds.';

CREATE FUNCTION relay.check_webhook_batch() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.batch_size < 1 OR NEW.batch_size > 1000 THEN
        RAISE EXCEPTION 'webhook "%": batch_size must be from 1 to 1000 (1: one change per request)',
            NEW.name USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.batch_wait_ms < 0 OR NEW.batch_wait_ms > 60000 THEN
        RAISE EXCEPTION 'webhook "%": batch_wait_ms must be from 0 to 60000 (one minute)',
            NEW.name USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER check_webhook_batch BEFORE INSERT OR UPDATE ON relay.webhooks
    FOR EACH ROW EXECUTE FUNCTION relay.check_webhook_batch();

REVOKE ALL ON FUNCTION relay.check_webhook_batch() FROM PUBLIC;

CREATE SEQUENCE relay.batch_ids;

-- The batch that carries a delivery (NULL: not sent in a batch yet), and per attempt.
ALTER TABLE relay.deliveries ADD COLUMN batch_id bigint;
ALTER TABLE relay.attempts ADD COLUMN batch_id bigint;

-- Batches due again, found without reading the rest of the backlog or the batches in flight
-- (a claimed batch is due again only when its lease ends: claim_batch sets next_attempt_at so),
-- and a batch's members by its id.
CREATE INDEX deliveries_batch_due ON relay.deliveries (webhook_id, next_attempt_at)
    WHERE status = 'pending' AND batch_id IS NOT NULL;
CREATE INDEX deliveries_batch_members ON relay.deliveries (batch_id)
    WHERE status = 'pending' AND batch_id IS NOT NULL;

INSERT INTO relay.migrations (version, name) VALUES (20, 'batches');
