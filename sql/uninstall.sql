-- Plain SQL (no psql meta-commands), so `relay uninstall` runs this very file.
-- Remove relay from the current database: schema relay with the outbox and everything else in
-- it, and with its capture functions every capture trigger (dropping a function with CASCADE
-- removes the triggers that use it; dropping a trigger directly would need the table's
-- ownership). Tracked tables and their data are left untouched.
--
--     psql "$DSN" -v ON_ERROR_STOP=1 -f sql/uninstall.sql
BEGIN;
SET LOCAL search_path = pg_catalog, pg_temp;
SELECT pg_advisory_xact_lock(hashtext('relay.install'));
DROP SCHEMA IF EXISTS relay CASCADE;
COMMIT;
