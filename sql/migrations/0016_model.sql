-- 0016 model: the name a table's changes carry as "model" in the webhook context.
--
-- NetBox receivers expect NetBox's model names ("device", object type "dcim.device"), not a
-- table name such as dcim_device. relay.track(..., model => 'dcim.device') records one per
-- table; the relay reads it with each change (relay/model.py: "model" is the part after the
-- last dot, "object_type" the whole name when it has a dot). NULL: the table name, as before.

-- A model name: 1 to 200 printable ASCII characters without spaces, neither starting nor ending
-- with a dot (the part after the last dot must not be empty). No control, format or
-- line-separator character can reach a receiver's logs or an operator's terminal through it.
CREATE FUNCTION relay.is_model_name(name text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT name OPERATOR(pg_catalog.~) '^[!-\-/-~]([!-~]{0,198}[!-\-/-~])?$'
$$;

ALTER TABLE relay.tracked_tables ADD COLUMN model text
    CONSTRAINT tracked_tables_model_check CHECK (relay.is_model_name(model));

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

-- relay.track keeps its checks under another name; the new relay.track adds the model. (Two
-- functions named relay.track with defaults would make relay.track('t') ambiguous.)
ALTER FUNCTION relay.track(regclass, text[], text[], text[]) RENAME TO track_options;

CREATE FUNCTION relay.track(
    tbl             regclass,
    events          text[] DEFAULT ARRAY['insert', 'update', 'delete', 'truncate'],
    update_columns  text[] DEFAULT NULL,
    exclude_columns text[] DEFAULT NULL,
    model           text   DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT relay.is_model_name(model) THEN
        RAISE EXCEPTION 'relay.track: model % is not a model name such as device or dcim.device (1 to 200 printable ASCII characters without spaces, neither starting nor ending with a dot)',
            pg_catalog.quote_literal(model);
    END IF;
    PERFORM relay.track_options(tbl, events, update_columns, exclude_columns);
    UPDATE relay.tracked_tables t SET model = track.model WHERE t.tbl = track.tbl;
END
$$;

REVOKE ALL ON FUNCTION relay.track(regclass, text[], text[], text[], text) FROM PUBLIC;
REVOKE ALL ON FUNCTION relay.is_model_name(text) FROM PUBLIC;

INSERT INTO relay.migrations (version, name) VALUES (16, 'model');
