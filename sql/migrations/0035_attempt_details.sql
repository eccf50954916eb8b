-- 0035 attempt details: what an attempt kept of its request as sent (method, URL with its user
-- part and query values masked, headers with credentials and signatures masked, the body's
-- first 4 KiB) and of its response's headers, as relay/delivery/details.py writes them, for
-- the console's delivery page. Which attempts keep them is RELAY_ATTEMPT_DETAILS: by default
-- the failed ones only; a delivered attempt leaves the column NULL, which costs a row nothing
-- (relay.attempts has a null bitmap already: status_code, error and response_excerpt).
--
-- A nullable column without a default: adding it changes the catalog only, however many
-- attempts there are, and the attempts recorded before keep NULL.
ALTER TABLE relay.attempts ADD COLUMN details jsonb;

COMMENT ON COLUMN relay.attempts.details IS
    'The request as sent ({"request": {method, url, headers: [[name, value]...], body, body_bytes, body_cut}}) and the response''s headers ({"response": {headers}}), credentials and signatures masked; NULL when RELAY_ATTEMPT_DETAILS kept none (by default, a delivered attempt).';

INSERT INTO relay.migrations (version, name) VALUES (35, 'attempt_details');
