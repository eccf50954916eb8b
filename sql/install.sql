-- Install or upgrade relay in the current database, without Python:
--
--     psql "$DSN" -v ON_ERROR_STOP=1 -f sql/install.sql
--
-- Every migration in sql/migrations/ is listed below in order; each runs only if it is not yet
-- recorded in relay.migrations, so running it on an older install applies only what is new.
-- Then every file of sql/functions/, the only definition of each function and view of schema
-- relay (CREATE OR REPLACE: running this file twice changes nothing), and sql/definitions.sql.
-- `relay install` applies the same files the same way.
\set ON_ERROR_STOP on
\set QUIET on
-- Query results (the advisory lock's, a migration's SELECT that writes each table's capture)
-- are nobody's business: they go nowhere. Errors, warnings and notices still go to stderr; the
-- one line on stdout is the summary at the end.
\o /dev/null
-- The version of the definitions below (sql/functions/, sql/definitions.sql): one more with every
-- change to them, so that an install never puts older ones over newer ones (tests/definitions.lock).
\set relay_definitions 2
SET client_min_messages = warning;
BEGIN;
-- Every name below resolves in pg_catalog or is qualified with relay: the installing session's
-- own search path (a schema another role can create objects in, such as public) must not decide
-- which operator an index predicate, a default or a view is built with (docs/security.md).
-- relay install (relay/db.py) opens its session on the same path.
SET LOCAL search_path = pg_catalog, pg_temp;
SELECT pg_advisory_xact_lock(hashtext('relay.install'));
\ir bootstrap.sql
SELECT coalesce(max(version), 0) AS relay_before FROM relay.migrations \gset
-- An older release's definitions must never replace a newer schema's (they would undo it).
DO $$
BEGIN
    IF (SELECT max(version) FROM relay.migrations) > 35 THEN
        RAISE EXCEPTION 'relay schema is at version %, newer than this install.sql (35): run the install.sql of the release that installed it',
            (SELECT max(version) FROM relay.migrations);
    END IF;
END
$$;

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 1) AS relay_apply \gset
\if :relay_apply
\ir migrations/0001_capture.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 2) AS relay_apply \gset
\if :relay_apply
\ir migrations/0002_rules.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 3) AS relay_apply \gset
\if :relay_apply
\ir migrations/0003_delivery.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 4) AS relay_apply \gset
\if :relay_apply
\ir migrations/0004_statistics.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 5) AS relay_apply \gset
\if :relay_apply
\ir migrations/0005_retention.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 6) AS relay_apply \gset
\if :relay_apply
\ir migrations/0006_rules_version.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 7) AS relay_apply \gset
\if :relay_apply
\ir migrations/0007_trusted_capture.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 8) AS relay_apply \gset
\if :relay_apply
\ir migrations/0008_robust.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 9) AS relay_apply \gset
\if :relay_apply
\ir migrations/0009_key_moves.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 10) AS relay_apply \gset
\if :relay_apply
\ir migrations/0010_change_bytes.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 11) AS relay_apply \gset
\if :relay_apply
\ir migrations/0011_json_images.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 12) AS relay_apply \gset
\if :relay_apply
\ir migrations/0012_fan_out_window.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 13) AS relay_apply \gset
\if :relay_apply
\ir migrations/0013_attempt_numbers.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 14) AS relay_apply \gset
\if :relay_apply
\ir migrations/0014_relays.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 15) AS relay_apply \gset
\if :relay_apply
\ir migrations/0015_webhook_retry.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 16) AS relay_apply \gset
\if :relay_apply
\ir migrations/0016_model.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 17) AS relay_apply \gset
\if :relay_apply
\ir migrations/0017_names.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 18) AS relay_apply \gset
\if :relay_apply
\ir migrations/0018_outbox_next_attempt.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 19) AS relay_apply \gset
\if :relay_apply
\ir migrations/0019_models_with_rules.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 20) AS relay_apply \gset
\if :relay_apply
\ir migrations/0020_batches.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 21) AS relay_apply \gset
\if :relay_apply
\ir migrations/0021_backfill_replay.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 22) AS relay_apply \gset
\if :relay_apply
\ir migrations/0022_backfill_where.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 23) AS relay_apply \gset
\if :relay_apply
\ir migrations/0023_delivery_ids.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 24) AS relay_apply \gset
\if :relay_apply
\ir migrations/0024_functions.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 25) AS relay_apply \gset
\if :relay_apply
\ir migrations/0025_superseded.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 26) AS relay_apply \gset
\if :relay_apply
\ir migrations/0026_steering.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 27) AS relay_apply \gset
\if :relay_apply
\ir migrations/0027_purged.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 28) AS relay_apply \gset
\if :relay_apply
\ir migrations/0028_body_format.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 29) AS relay_apply \gset
\if :relay_apply
\ir migrations/0029_request.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 30) AS relay_apply \gset
\if :relay_apply
\ir migrations/0030_related.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 31) AS relay_apply \gset
\if :relay_apply
\ir migrations/0031_coalesce.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 32) AS relay_apply \gset
\if :relay_apply
\ir migrations/0032_console.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 33) AS relay_apply \gset
\if :relay_apply
\ir migrations/0033_secret_rotation.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 34) AS relay_apply \gset
\if :relay_apply
\ir migrations/0034_console_log.sql
\endif

SELECT NOT EXISTS (SELECT FROM relay.migrations WHERE version = 35) AS relay_apply \gset
\if :relay_apply
\ir migrations/0035_attempt_details.sql
\endif

-- Definitions newer than these are left as they are: this install.sql is an older release's.
SELECT coalesce(max(version), 0) > :relay_definitions AS relay_newer FROM relay.definitions \gset
\if :relay_newer
DO $$
BEGIN
    RAISE EXCEPTION 'relay''s functions in this database are newer than this install.sql''s: run the install.sql of the release that installed them';
END
$$;
\endif

-- Every function and view as it is now, in this order (views last: they call functions), then
-- what follows them (relay install applies the same files: relay/sqlfiles.py reads this list).
\ir functions/capture.sql
\ir functions/rules.sql
\ir functions/delivery.sql
\ir functions/backfill.sql
\ir functions/views.sql
\ir definitions.sql
DELETE FROM relay.definitions;
INSERT INTO relay.definitions (version) VALUES (:relay_definitions);

-- The one line this prints (on the pinned search path, as every statement above).
SELECT CASE WHEN :relay_before = 0 THEN 'relay installed: schema version ' || max(version)
            WHEN :relay_before = max(version) THEN 'relay up to date: schema version '
                || max(version)
            ELSE 'relay upgraded: schema version ' || :relay_before || ' to ' || max(version)
       END AS relay_done
FROM relay.migrations \gset
COMMIT;
\o
\echo :relay_done
