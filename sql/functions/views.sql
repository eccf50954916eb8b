-- Views, after the functions they call.
--
-- Every view of schema relay is defined once, as it is now, in a file of sql/functions/; the
-- installer runs these files after the migrations, in one transaction (sql/install.sql).

-- The tracked tables with their current names and options, as `relay tracked` lists them:
-- capture_current is false between a DDL on the table and the regeneration of its capture
-- functions (docs/sql.md).
CREATE OR REPLACE VIEW relay.tracked AS
SELECT t.tbl,
       n.nspname           AS schema_name,
       c.relname           AS table_name,
       c.relkind = 'p'     AS partitioned,
       t.events,
       CASE WHEN t.update_attnums IS NOT NULL
            THEN relay.column_names(t.tbl, t.update_attnums) END AS update_columns,
       relay.column_names(t.tbl, t.exclude_attnums) AS exclude_columns,
       relay.column_names(t.tbl, relay.pk_attnums(t.tbl)) AS pk_columns,
       t.tracked_at,
       t.shape IS NOT DISTINCT FROM relay.shape(t.tbl) AS capture_current,
       t.model
FROM relay.tracked_tables t
JOIN pg_catalog.pg_class c ON c.oid = t.tbl
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace;
