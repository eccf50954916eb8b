-- 0015 webhook retry: a retry policy per webhook.
--
-- A receiver that is down for a day and one that must be told within a minute want different
-- retries. max_attempts, retry_base_seconds and retry_max_seconds override the relay's
-- RELAY_MAX_ATTEMPTS, RELAY_RETRY_BASE_SECONDS and RELAY_RETRY_MAX_SECONDS for this webhook's
-- deliveries; NULL (the default) keeps the relay's setting.
ALTER TABLE relay.webhooks
    ADD COLUMN max_attempts       integer,
    ADD COLUMN retry_base_seconds numeric,
    ADD COLUMN retry_max_seconds  numeric;

COMMENT ON COLUMN relay.webhooks.max_attempts IS
    'Attempts per delivery before it fails for good; NULL: the relay''s RELAY_MAX_ATTEMPTS.';
COMMENT ON COLUMN relay.webhooks.retry_base_seconds IS
    'First retry delay, each later one four times longer; NULL: RELAY_RETRY_BASE_SECONDS.';
COMMENT ON COLUMN relay.webhooks.retry_max_seconds IS
    'No retry of this webhook waits longer; NULL: RELAY_RETRY_MAX_SECONDS.';

CREATE FUNCTION relay.check_webhook_retry() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.max_attempts < 1 OR NEW.max_attempts > 1000 THEN
        RAISE EXCEPTION 'webhook "%": max_attempts must be from 1 to 1000 (NULL: the relay''s RELAY_MAX_ATTEMPTS)',
            NEW.name USING ERRCODE = 'check_violation';
    END IF;
    -- At least a millisecond: a smaller delay is a busy loop, and a float cannot hold every
    -- positive numeric (1e-400 is 0 in Python).
    IF NEW.retry_base_seconds < 0.001 OR NEW.retry_base_seconds > 86400 THEN
        RAISE EXCEPTION 'webhook "%": retry_base_seconds must be from 0.001 to 86400 (NULL: the relay''s RELAY_RETRY_BASE_SECONDS)',
            NEW.name USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.retry_max_seconds < 0.001 OR NEW.retry_max_seconds > 2592000 THEN
        RAISE EXCEPTION 'webhook "%": retry_max_seconds must be from 0.001 to 2592000 (30 days; NULL: the relay''s RELAY_RETRY_MAX_SECONDS)',
            NEW.name USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.retry_max_seconds < NEW.retry_base_seconds THEN
        RAISE EXCEPTION 'webhook "%": retry_max_seconds (%) is below retry_base_seconds (%)',
            NEW.name, NEW.retry_max_seconds, NEW.retry_base_seconds USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER check_webhook_retry BEFORE INSERT OR UPDATE ON relay.webhooks
    FOR EACH ROW EXECUTE FUNCTION relay.check_webhook_retry();

REVOKE ALL ON FUNCTION relay.check_webhook_retry() FROM PUBLIC;

INSERT INTO relay.migrations (version, name) VALUES (15, 'webhook_retry');
