-- 0027 purged: what retention (relay run's RELAY_RETENTION_DAYS, relay purge) deleted from the
-- outbox, counted per table and hour the changes were made, so that `relay replay` warns that
-- a window's changes cannot be sent again only when some of them were purged (the oldest change
-- the outbox holds could not say it: on a young outbox, or after a quiet week, nothing older
-- was ever purged). One row per table and hour in which purged changes had been made; first_made
-- and last_made bound them exactly, the hour only groups them.
CREATE TABLE relay.purged_changes (
    made_hour   timestamptz NOT NULL,
    schema_name text NOT NULL,
    table_name  text NOT NULL,
    changes     bigint NOT NULL,
    first_made  timestamptz NOT NULL,
    last_made   timestamptz NOT NULL,
    PRIMARY KEY (made_hour, schema_name, table_name)
);

COMMENT ON TABLE relay.purged_changes IS
    'Changes retention purged from relay.outbox, per table and UTC hour made: relay replay warns when its window holds some.';

INSERT INTO relay.migrations (version, name) VALUES (27, 'purged');
