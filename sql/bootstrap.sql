-- Run before any migration: the schema and the table that records which migrations are in.
-- Both statements are idempotent so that install can run any number of times.
CREATE SCHEMA IF NOT EXISTS relay;
REVOKE ALL ON SCHEMA relay FROM PUBLIC;

CREATE TABLE IF NOT EXISTS relay.migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
