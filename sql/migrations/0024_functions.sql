-- 0024 functions: every function and view of schema relay is now defined once, as it is now, in
-- sql/functions/, which every install applies after the migrations, in the same transaction
-- (sql/install.sql); migrations hold only what cannot be run again. Every install records here
-- the version of the definitions it applied (install.sql's relay_definitions, bumped with every
-- change to them), and refuses to put older ones over newer ones: a release's functions can
-- change with the schema version unchanged. relay install also records the digest of the files,
-- and skips them when they have not changed (psql's install.sql cannot compute it, and applies
-- them every time: CREATE OR REPLACE of the same text).
CREATE TABLE relay.definitions (
    version    integer     NOT NULL,
    digest     text,
    applied_at timestamptz NOT NULL DEFAULT now()
);
-- Any role relay's owner lets into the schema may see which (relay install as the service role
-- finds there that there is nothing to do).
GRANT SELECT ON relay.definitions TO PUBLIC;

INSERT INTO relay.migrations (version, name) VALUES (24, 'functions');
