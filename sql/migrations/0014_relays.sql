-- 0014 relays: each relay records when it started, for `relay status`.
--
-- status read a relay's start from pg_stat_activity, which hides the sessions of other roles
-- from a role without pg_read_all_stats: run as relay's owner, it showed "-" for a relay running
-- as the service role. The relays write it themselves; a row not refreshed for a day (its relay
-- is gone) is deleted by the next relay's sweep.
CREATE TABLE relay.relays (
    relay_id   text        PRIMARY KEY,
    started_at timestamptz NOT NULL,
    seen_at    timestamptz NOT NULL
);

INSERT INTO relay.migrations (version, name) VALUES (14, 'relays');
