-- 0001 capture: the outbox, the trigger functions that fill it, and track/untrack.
--
-- Design notes (the figures behind them are in docs/benchmarks.md):
-- * Capture is generic: one set of functions for every table. Per-table options travel as
--   trigger arguments, so a tracked table's trigger never reads a configuration table and a
--   dropped or renamed column can never make a user's write fail.
-- * Plain tables get statement-level triggers with transition tables: one INSERT ... SELECT per
--   statement however many rows it touched. Partitioned tables get a row-level trigger instead,
--   because only row-level triggers are cloned onto partitions (existing and future ones) and
--   fire for writes aimed at a partition directly.
-- * The capture functions are SECURITY DEFINER, owned by whoever installed relay: roles that
--   write tracked tables need no rights at all on schema relay.

-- Enums rather than CHECK constraints: PostgreSQL re-plans a table's CHECK expressions for every
-- INSERT statement, which the trigger pays on each captured statement; an enum checks for free.
CREATE TYPE relay.change_op AS ENUM ('insert', 'update', 'delete', 'truncate');
CREATE TYPE relay.change_status AS ENUM ('pending', 'delivered', 'failed', 'skipped');

CREATE TABLE relay.outbox (
    -- The only index: it makes every change addressable (retries, joins, purges) by one key.
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    schema_name     text                NOT NULL,
    table_name      text                NOT NULL,
    op              relay.change_op     NOT NULL,
    old             jsonb,
    new             jsonb,
    pk              jsonb,
    username        text,
    request_id      text,
    txid            xid8                NOT NULL,
    created_at      timestamptz         NOT NULL DEFAULT clock_timestamp(),
    status          relay.change_status NOT NULL DEFAULT 'pending',
    attempts        integer             NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    last_error      text,
    processed_at    timestamptz
);

COMMENT ON TABLE relay.outbox IS
    'One row per captured change, written by the capture triggers in the writer''s transaction.';

-- What relay.track() was asked for, per table. The triggers carry the same options as their
-- arguments; this table exists so that people and relay.tracked can read them back.
CREATE TABLE relay.tracked_tables (
    tbl             regclass PRIMARY KEY,
    events          text[]      NOT NULL,
    update_columns  text[],
    exclude_columns text[],
    pk_columns      text[],
    tracked_at      timestamptz NOT NULL DEFAULT now()
);

CREATE VIEW relay.tracked AS
SELECT t.tbl,
       n.nspname           AS schema_name,
       c.relname           AS table_name,
       c.relkind = 'p'     AS partitioned,
       t.events,
       t.update_columns,
       t.exclude_columns,
       t.pk_columns,
       t.tracked_at
FROM relay.tracked_tables t
JOIN pg_catalog.pg_class c ON c.oid = t.tbl
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace;

-- Who made a change and in which transaction: `SET LOCAL relay.username / relay.request_id`
-- when the application gives them; otherwise the session's login role, and an id derived from
-- the transaction id (the same for every change of a transaction, different across transactions
-- and across server restarts). Computed once per statement, not per row.
CREATE TYPE relay.change_context AS (username text, request_id text, txid xid8, at timestamptz);

-- No SET clause on these SQL helpers: it would stop PostgreSQL from inlining them into the
-- capture functions (which set a safe search_path themselves), and they only call pg_catalog.
CREATE FUNCTION relay.change_context() RETURNS relay.change_context
LANGUAGE sql VOLATILE AS $$
    SELECT ROW(
        coalesce(nullif(current_setting('relay.username', true), ''), session_user::text),
        coalesce(nullif(current_setting('relay.request_id', true), ''),
                 md5(pg_current_xact_id()::text || pg_postmaster_start_time()::text)::uuid::text),
        pg_current_xact_id(),
        clock_timestamp())::relay.change_context
$$;

-- The primary-key columns of a row, for tables whose key has several columns.
CREATE FUNCTION relay.pick(row_data jsonb, keys text[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_object_agg(k, row_data -> k) FROM unnest(keys) k
$$;

-- The primary key of a row image: null without key columns. A single expression, declared no
-- less volatile than what it calls (jsonb_build_object is STABLE), so PostgreSQL inlines it.
CREATE FUNCTION relay.pk_of(row_data jsonb, keys text[]) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE cardinality(keys)
               WHEN 0 THEN NULL
               WHEN 1 THEN jsonb_build_object(keys[1], row_data -> keys[1])
               ELSE relay.pick(row_data, keys)
           END
$$;

-- Whether any of the named columns differs between two row images (update_columns).
CREATE FUNCTION relay.any_changed(old_row jsonb, new_row jsonb, keys text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT EXISTS (SELECT FROM unnest(keys) k WHERE old_row -> k IS DISTINCT FROM new_row -> k)
$$;

-- Trigger arguments, shared by every capture function:
--   TG_ARGV[0] primary-key columns (text[] literal, '{}' when the table has no primary key)
--   TG_ARGV[1] excluded columns (text[] literal, '{}' for none)
--   TG_ARGV[2] update columns (text[] literal, '' for "any column")
--   TG_ARGV[3], TG_ARGV[4] schema and table name (row-level capture on partitioned tables only,
--   where TG_TABLE_NAME would name the partition rather than the tracked parent)
--
-- Whole rows are referenced as alias.* and variables win over columns (use_variable), so that a
-- tracked table's column names can never change what these queries mean. `OFFSET 0` keeps each
-- row's jsonb image computed once: without it PostgreSQL would pull the subquery up and
-- evaluate to_jsonb again wherever the image is used.
--
-- Listeners are woken by one NOTIFY per transaction: a transaction-local setting remembers that
-- it was sent. NOTIFY is only delivered at commit, so one is all a listener can use.

CREATE FUNCTION relay.capture_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    pk_cols  text[] := TG_ARGV[0];
    excluded text[] := TG_ARGV[1];
    ctx      relay.change_context := relay.change_context();
BEGIN
    INSERT INTO relay.outbox (schema_name, table_name, op, new, pk, username, request_id, txid,
                              created_at)
    SELECT TG_TABLE_SCHEMA, TG_TABLE_NAME, 'insert', c.n,
           relay.pk_of(c.n, pk_cols),
           ctx.username, ctx.request_id, ctx.txid, ctx.at
    FROM (SELECT to_jsonb(t.*) - excluded AS n FROM relay_new t OFFSET 0) c;
    IF FOUND AND current_setting('relay.woken', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_notify('relay_outbox', ''), set_config('relay.woken', 'on', true);
    END IF;
    RETURN NULL;
END
$$;

-- Old and new rows are paired by position: PostgreSQL appends each updated row's old and new
-- versions to the two transition tables together. Rows whose stored image did not change are
-- dropped by record image equality (cheap; comparing the jsonb images is not).
-- Most statements touch one row, and starting a join plan costs more than the capture itself,
-- so one-row statements take a plain two-table product; only bigger ones pair by position.
-- That join is pinned to a hash join (the plan is cached for the session, and a nested loop
-- planned for a small statement would be quadratic on the next million-row one), with work_mem
-- raised for this function only so that big statements pair in memory rather than on disk.
CREATE FUNCTION relay.capture_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET enable_nestloop = off SET enable_mergejoin = off
SET jit = off SET work_mem = '64MB' AS $$
#variable_conflict use_variable
DECLARE
    pk_cols  text[] := TG_ARGV[0];
    excluded text[] := TG_ARGV[1];
    watched  text[] := nullif(TG_ARGV[2], '');
    ctx      relay.change_context := relay.change_context();
BEGIN
    IF NOT EXISTS (SELECT FROM relay_new OFFSET 1) THEN
        INSERT INTO relay.outbox (schema_name, table_name, op, old, new, pk, username,
                                  request_id, txid, created_at)
        SELECT TG_TABLE_SCHEMA, TG_TABLE_NAME, 'update', c.o, c.n,
               relay.pk_of(c.n, pk_cols),
               ctx.username, ctx.request_id, ctx.txid, ctx.at
        FROM (SELECT to_jsonb(a.*) - excluded AS o, to_jsonb(b.*) - excluded AS n
              FROM relay_old a, relay_new b
              WHERE NOT record_image_eq(a.*, b.*) OFFSET 0) c
        WHERE (cardinality(excluded) = 0 OR c.o <> c.n)
          AND (watched IS NULL OR relay.any_changed(c.o, c.n, watched));
    ELSE
        INSERT INTO relay.outbox (schema_name, table_name, op, old, new, pk, username,
                                  request_id, txid, created_at)
        SELECT TG_TABLE_SCHEMA, TG_TABLE_NAME, 'update', o.j, n.j,
               relay.pk_of(n.j, pk_cols),
               ctx.username, ctx.request_id, ctx.txid, ctx.at
        FROM (SELECT row_number() OVER () AS i, ROW(t.*) AS r, to_jsonb(t.*) - excluded AS j
              FROM relay_old t) o
        JOIN (SELECT row_number() OVER () AS i, ROW(t.*) AS r, to_jsonb(t.*) - excluded AS j
              FROM relay_new t) n ON n.i = o.i
        WHERE NOT o.r OPERATOR(pg_catalog.*=) n.r
          AND (cardinality(excluded) = 0 OR o.j <> n.j)
          AND (watched IS NULL OR relay.any_changed(o.j, n.j, watched));
    END IF;
    IF FOUND AND current_setting('relay.woken', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_notify('relay_outbox', ''), set_config('relay.woken', 'on', true);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION relay.capture_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    pk_cols  text[] := TG_ARGV[0];
    excluded text[] := TG_ARGV[1];
    ctx      relay.change_context := relay.change_context();
BEGIN
    INSERT INTO relay.outbox (schema_name, table_name, op, old, pk, username, request_id, txid,
                              created_at)
    SELECT TG_TABLE_SCHEMA, TG_TABLE_NAME, 'delete', c.o,
           relay.pk_of(c.o, pk_cols),
           ctx.username, ctx.request_id, ctx.txid, ctx.at
    FROM (SELECT to_jsonb(t.*) - excluded AS o FROM relay_old t OFFSET 0) c;
    IF FOUND AND current_setting('relay.woken', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_notify('relay_outbox', ''), set_config('relay.woken', 'on', true);
    END IF;
    RETURN NULL;
END
$$;

-- TRUNCATE of a partitioned table fires its own statement trigger, so TG_TABLE_NAME is right.
CREATE FUNCTION relay.capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    ctx relay.change_context := relay.change_context();
BEGIN
    INSERT INTO relay.outbox (schema_name, table_name, op, username, request_id, txid, created_at)
    VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, 'truncate',
            ctx.username, ctx.request_id, ctx.txid, ctx.at);
    IF current_setting('relay.woken', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_notify('relay_outbox', ''), set_config('relay.woken', 'on', true);
    END IF;
    RETURN NULL;
END
$$;

-- Row-level capture, used for partitioned tables only (see the top of this file). A row that an
-- UPDATE moves to another partition is seen by PostgreSQL's row triggers as a delete from the old
-- partition and an insert into the new one, and is recorded that way.
CREATE FUNCTION relay.capture_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    pk_cols  text[] := TG_ARGV[0];
    excluded text[] := TG_ARGV[1];
    watched  text[] := nullif(TG_ARGV[2], '');
    o        jsonb;
    n        jsonb;
    ctx      relay.change_context;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF OLD OPERATOR(pg_catalog.*=) NEW THEN
            RETURN NULL;
        END IF;
        o := to_jsonb(OLD) - excluded;
        n := to_jsonb(NEW) - excluded;
        IF (cardinality(excluded) > 0 AND o = n)
           OR (watched IS NOT NULL AND NOT relay.any_changed(o, n, watched)) THEN
            RETURN NULL;
        END IF;
    ELSIF TG_OP = 'INSERT' THEN
        n := to_jsonb(NEW) - excluded;
    ELSE
        o := to_jsonb(OLD) - excluded;
    END IF;
    ctx := relay.change_context();
    INSERT INTO relay.outbox (schema_name, table_name, op, old, new, pk, username, request_id,
                              txid, created_at)
    VALUES (TG_ARGV[3], TG_ARGV[4], lower(TG_OP)::relay.change_op, o, n,
            relay.pk_of(coalesce(n, o), pk_cols),
            ctx.username, ctx.request_id, ctx.txid, ctx.at);
    IF current_setting('relay.woken', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_notify('relay_outbox', ''), set_config('relay.woken', 'on', true);
    END IF;
    RETURN NULL;
END
$$;

-- Runs with the caller's rights: attaching triggers needs TRIGGER on the table, as it should.
CREATE FUNCTION relay.untrack(tbl regclass) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    trigger_name name;
    was_tracked  boolean := false;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'relay.untrack: table must not be null';
    END IF;
    FOR trigger_name IN
        SELECT tg.tgname FROM pg_trigger tg
        JOIN pg_proc p ON p.oid = tg.tgfoid
        WHERE tg.tgrelid = tbl AND p.pronamespace = 'relay'::regnamespace AND tg.tgparentid = 0
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', trigger_name, tbl);
        was_tracked := true;
    END LOOP;
    DELETE FROM relay.tracked_tables t
    WHERE t.tbl = untrack.tbl
       OR NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = t.tbl);
    RETURN was_tracked;
END
$$;

CREATE FUNCTION relay.track(
    tbl             regclass,
    events          text[] DEFAULT ARRAY['insert', 'update', 'delete', 'truncate'],
    update_columns  text[] DEFAULT NULL,
    exclude_columns text[] DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel         pg_class;
    pk_cols     text[];
    excluded    text[] := coalesce(exclude_columns, '{}');
    bad         text;
    args        text;
    relative    regclass;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'relay.track: table must not be null';
    END IF;
    SELECT * INTO rel FROM pg_class WHERE oid = tbl;
    IF rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'relay.track: % is not a table (only tables and partitioned tables can be tracked)', tbl;
    END IF;
    IF rel.relnamespace = 'relay'::regnamespace THEN
        RAISE EXCEPTION 'relay.track: % belongs to relay itself and cannot be tracked', tbl;
    END IF;

    events := ARRAY(SELECT DISTINCT lower(e) FROM unnest(events) e ORDER BY 1);
    IF events IS NULL OR cardinality(events) = 0 THEN
        RAISE EXCEPTION 'relay.track: events must name at least one of insert, update, delete, truncate';
    END IF;
    SELECT e INTO bad FROM unnest(events) e
    WHERE e IS NULL OR e NOT IN ('insert', 'update', 'delete', 'truncate') LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'relay.track: unknown event "%" (use insert, update, delete or truncate)', bad;
    END IF;

    SELECT c INTO bad FROM unnest(update_columns || excluded) c
    WHERE NOT EXISTS (SELECT FROM pg_attribute a
                      WHERE a.attrelid = tbl AND a.attname = c AND a.attnum > 0
                        AND NOT a.attisdropped)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'relay.track: column "%" does not exist in %', bad, tbl;
    END IF;
    IF cardinality(update_columns) = 0 THEN
        RAISE EXCEPTION 'relay.track: update_columns must be NULL (any column) or name at least one column';
    END IF;

    -- A partition must not be captured twice: once through its parent and once on its own.
    SELECT a INTO relative FROM pg_partition_ancestors(tbl) a
    WHERE a <> tbl AND a IN (SELECT t.tbl FROM relay.tracked_tables t) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'relay.track: % is a partition of %, which is tracked already', tbl, relative;
    END IF;
    SELECT p.relid INTO relative FROM pg_partition_tree(tbl) p
    WHERE p.relid <> tbl AND p.relid IN (SELECT t.tbl FROM relay.tracked_tables t) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'relay.track: partition % of % is tracked on its own; untrack it first', relative, tbl;
    END IF;

    pk_cols := ARRAY(
        SELECT a.attname::text
        FROM pg_index i
        CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = tbl AND i.indisprimary
        ORDER BY k.ord);

    PERFORM relay.untrack(tbl);

    args := format('%L, %L, %L, %L, %L', pk_cols, excluded, coalesce(update_columns::text, ''),
                   (SELECT nspname FROM pg_namespace WHERE oid = rel.relnamespace), rel.relname);
    IF rel.relkind = 'p' THEN
        IF events && ARRAY['insert', 'update', 'delete'] THEN
            EXECUTE format(
                'CREATE TRIGGER relay_capture_row AFTER %s ON %s '
                'FOR EACH ROW EXECUTE FUNCTION relay.capture_row(%s)',
                (SELECT string_agg(upper(e), ' OR ') FROM unnest(events) e WHERE e <> 'truncate'),
                tbl, args);
        END IF;
    ELSE
        IF 'insert' = ANY (events) THEN
            EXECUTE format(
                'CREATE TRIGGER relay_capture_insert AFTER INSERT ON %s '
                'REFERENCING NEW TABLE AS relay_new '
                'FOR EACH STATEMENT EXECUTE FUNCTION relay.capture_insert(%s)', tbl, args);
        END IF;
        IF 'update' = ANY (events) THEN
            EXECUTE format(
                'CREATE TRIGGER relay_capture_update AFTER UPDATE ON %s '
                'REFERENCING OLD TABLE AS relay_old NEW TABLE AS relay_new '
                'FOR EACH STATEMENT EXECUTE FUNCTION relay.capture_update(%s)', tbl, args);
        END IF;
        IF 'delete' = ANY (events) THEN
            EXECUTE format(
                'CREATE TRIGGER relay_capture_delete AFTER DELETE ON %s '
                'REFERENCING OLD TABLE AS relay_old '
                'FOR EACH STATEMENT EXECUTE FUNCTION relay.capture_delete(%s)', tbl, args);
        END IF;
    END IF;
    IF 'truncate' = ANY (events) THEN
        EXECUTE format(
            'CREATE TRIGGER relay_capture_truncate AFTER TRUNCATE ON %s '
            'FOR EACH STATEMENT EXECUTE FUNCTION relay.capture_truncate(%s)', tbl, args);
    END IF;

    INSERT INTO relay.tracked_tables (tbl, events, update_columns, exclude_columns, pk_columns)
    VALUES (tbl, events, update_columns, excluded, pk_cols);
END
$$;

-- Nothing in schema relay is for PUBLIC; the installing role owns it all. See
-- sql/service_role.sql for the rights the relay service needs.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA relay FROM PUBLIC;

INSERT INTO relay.migrations (version, name) VALUES (1, 'capture');
