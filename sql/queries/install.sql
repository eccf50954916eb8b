-- Installing and upgrading relay, and the relay's check of its session (relay/store.py,
-- Store.install; relay/delivery/worker.py).

-- name: install_lock
-- Serialises concurrent installs, upgrades and uninstalls (psql's install.sql takes it too).
SELECT pg_advisory_xact_lock(hashtext('relay.install'));

-- name: migrations_table_exists
SELECT to_regclass('relay.migrations') IS NOT NULL;

-- name: applied_migrations
SELECT version FROM relay.migrations ORDER BY version;

-- name: definitions_state
-- The version and digest of the definitions last applied (0024); no row before any.
SELECT version, digest FROM relay.definitions;

-- name: definitions_applied
WITH gone AS (DELETE FROM relay.definitions)
INSERT INTO relay.definitions (version, digest) VALUES (%(version)s, %(digest)s);

-- name: session_check
-- At the start of each session of relay run: the schema version installed (a relay delivers
-- only on the schema it was built for: 0023) and the session's search path (relay/db.py pins
-- it; a connection pooler that dropped libpq's options would leave the role's own).
SELECT (SELECT max(version) FROM relay.migrations) AS version,
       pg_catalog.current_setting('search_path') AS search_path;
