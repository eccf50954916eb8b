-- 0029 request: the path and method of the application's request that made a change, as NetBox
-- 4 gives them to webhooks and templates (`request: {id, path, method, user}`). The application
-- sets relay.request_path and relay.request_method beside relay.username and relay.request_id
-- (relay.tag, relay.contrib.django); capture records them as given (relay.context_sql and
-- relay.change_context in sql/functions/capture.sql). A change made outside a request has
-- none: NULL, with no fallback (unlike username and request_id, there is nothing true to put).
--
-- Nullable columns without a default: adding them changes the catalog only, however big the
-- outbox is, and the changes recorded before keep NULL.
ALTER TABLE relay.outbox
    ADD COLUMN request_path   text,
    ADD COLUMN request_method text;

COMMENT ON COLUMN relay.outbox.request_path IS
    'relay.request_path of the writing transaction: the application''s request path, as it said (not verified); NULL outside a request.';
COMMENT ON COLUMN relay.outbox.request_method IS
    'relay.request_method of the writing transaction: the application''s HTTP method, as it said (not verified); NULL outside a request.';

-- Appended, so that the attributes before keep their places; relay.change_context() is defined
-- again with them (sql/functions/capture.sql) in the same transaction.
ALTER TYPE relay.change_context
    ADD ATTRIBUTE request_path text,
    ADD ATTRIBUTE request_method text;

INSERT INTO relay.migrations (version, name) VALUES (29, 'request');
