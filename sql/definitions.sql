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
-- Everything in schema relay is relay's owner's, whoever ran the install or `relay track` (a
-- superuser, say): a SECURITY DEFINER function of a superuser would run with its rights, and a
-- table or function relay's owner does not own would stop it upgrading relay or regenerating
-- capture. Objects an earlier install or track left to another role are given back here too
-- (only a superuser, or a member of both roles, may; relay's owner itself has nothing to give).
DO $$
DECLARE
    owner     regrole := (SELECT nspowner FROM pg_namespace WHERE nspname = 'relay');
    statement text;
BEGIN
    FOR statement IN
        SELECT format('ALTER %s %s OWNER TO %s',
                      CASE p.prokind WHEN 'a' THEN 'AGGREGATE' WHEN 'p' THEN 'PROCEDURE'
                                     ELSE 'FUNCTION' END, p.oid::regprocedure, owner)
        FROM pg_proc p
        WHERE p.pronamespace = 'relay'::regnamespace AND p.proowner <> owner
        UNION ALL
        SELECT format('ALTER %s %s OWNER TO %s',
                      CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                     WHEN 'S' THEN 'SEQUENCE' WHEN 'c' THEN 'TYPE'
                                     ELSE 'TABLE' END, c.oid::regclass, owner)
        FROM pg_class c
        WHERE c.relnamespace = 'relay'::regnamespace AND c.relowner <> owner
          AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'c')
          -- A sequence a table's column owns goes with its table.
          AND NOT (c.relkind = 'S' AND EXISTS (
              SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                AND d.objid = c.oid AND d.deptype IN ('a', 'i')))
        UNION ALL
        SELECT format('ALTER %s %s OWNER TO %s',
                      CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, t.oid::regtype, owner)
        FROM pg_type t
        WHERE t.typnamespace = 'relay'::regnamespace AND t.typowner <> owner
          AND t.typtype IN ('e', 'd', 'r')
    LOOP
        EXECUTE statement;
    END LOOP;
END
$$;
