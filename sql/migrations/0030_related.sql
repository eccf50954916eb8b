-- 0030 related: a webhook may nest chosen columns of the rows its changes' foreign keys
-- reference in `data`, as NetBox's webhooks nest related objects (site: {id, name, slug}).
-- {"site_id": ["name", "slug"]}: the relay reads them when it renders (relay.related_rows), with
-- its own rights, never in the writer's transaction. relay.check_webhook checks the shape.
ALTER TABLE relay.webhooks ADD COLUMN related jsonb;

COMMENT ON COLUMN relay.webhooks.related IS
    'Foreign-key column -> columns of the referenced row to nest in data (docs/rules.md, Related rows); NULL: none.';

INSERT INTO relay.migrations (version, name) VALUES (30, 'related');
