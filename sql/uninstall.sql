-- Plain SQL (no psql meta-commands), so `relay uninstall` runs this very file.
-- Remove relay from the current database: every capture trigger it added, then the schema with
-- the outbox and everything else in it. Tracked tables and their data are left untouched.
--
--     psql "$DSN" -v ON_ERROR_STOP=1 -f sql/uninstall.sql
BEGIN;
SELECT pg_advisory_xact_lock(hashtext('relay.install'));
DO $$
DECLARE
    t record;
BEGIN
    IF to_regnamespace('relay') IS NULL THEN
        RETURN;
    END IF;
    -- Only the triggers on the tables themselves: clones on partitions go with their parent's.
    FOR t IN
        SELECT tg.tgname, tg.tgrelid::regclass AS tbl
        FROM pg_trigger tg
        JOIN pg_proc p ON p.oid = tg.tgfoid
        WHERE p.pronamespace = 'relay'::regnamespace AND tg.tgparentid = 0
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.tbl);
    END LOOP;
    DROP SCHEMA relay CASCADE;
END
$$;
COMMIT;
