-- Run by every install after sql/functions/ (sql/install.sql; relay install): functions made by
-- those files for the first time may be called by PUBLIC until this says otherwise, and each
-- tracked table's capture functions are generated again by the generators just installed.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA relay FROM PUBLIC;
DO $$
BEGIN
    PERFORM relay.write_capture(t.tbl)
    FROM relay.tracked_tables t JOIN pg_catalog.pg_class c ON c.oid = t.tbl  -- not dropped
    ORDER BY t.tbl;
END
$$;
