-- 0028 body_format: the shape of a webhook's default body (the body when body_template is
-- empty), per webhook (docs/rules.md, "Body formats"). 'relay': NetBox 3's keys and relay's own,
-- as every default body was before this column. 'netbox4': NetBox 4's, exactly event, timestamp,
-- object_type, data, request {id, path, method, user}, snapshots. relay.check_webhook refuses any
-- other value.
ALTER TABLE relay.webhooks
    ADD COLUMN body_format text NOT NULL DEFAULT 'relay';

COMMENT ON COLUMN relay.webhooks.body_format IS
    'The default body''s shape: relay (NetBox 3''s keys and relay''s) or netbox4 (NetBox 4''s); a body_template, when set, wins.';

INSERT INTO relay.migrations (version, name) VALUES (28, 'body_format');
