-- Capture: relay.track and relay.untrack, and what they generate for each tracked table (its
-- capture functions and triggers, sql/migrations/0007_trusted_capture.sql explains the design),
-- and the helpers those functions call.
--
-- Every function of schema relay is defined once, as it is now, in a file of sql/functions/; the
-- installer runs these files after the migrations, in one transaction (sql/install.sql), then
-- regenerates every tracked table's capture functions.

-- Who made a change and in which transaction, as a FROM item computed once per statement (a
-- function call there cost 5 microseconds more per statement; an md5 of the transaction id
-- another 4). See relay.change_context for the meaning; the request id derived from the
-- transaction id is the 64-bit transaction id written as a UUID: the same for every change of
-- a transaction, different for every other transaction, also across restarts. The request's
-- path and method are the application's word (relay.request_path, relay.request_method:
-- 0029_request.sql), recorded as given, and NULL when it gave none: nothing else knows them.
CREATE OR REPLACE FUNCTION relay.context_sql() RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT '(SELECT coalesce(nullif(pg_catalog.current_setting(''relay.username'', true), ''''), '
           'session_user::pg_catalog.text) AS username, '
           'coalesce(nullif(pg_catalog.current_setting(''relay.request_id'', true), ''''), '
           'pg_catalog.lpad(pg_catalog.to_hex(pg_catalog.pg_current_xact_id()::pg_catalog.text'
           '::pg_catalog.int8), 32, ''0'')::pg_catalog.uuid::pg_catalog.text) AS request_id, '
           'pg_catalog.pg_current_xact_id() AS txid, pg_catalog.clock_timestamp() AS at, '
           'nullif(pg_catalog.current_setting(''relay.request_path'', true), '''') '
           'AS request_path, '
           'nullif(pg_catalog.current_setting(''relay.request_method'', true), '''') '
           'AS request_method) x'
$$;

-- The context of relay.context_sql for the capture of TRUNCATE, which has no rows to join it
-- to. Without a SET clause so that PostgreSQL inlines it: every name in it is qualified.
CREATE OR REPLACE FUNCTION relay.change_context() RETURNS relay.change_context
LANGUAGE sql VOLATILE AS $$
    SELECT ROW(
        coalesce(nullif(pg_catalog.current_setting('relay.username', true), ''),
                 session_user::pg_catalog.text),
        coalesce(nullif(pg_catalog.current_setting('relay.request_id', true), ''),
                 pg_catalog.lpad(pg_catalog.to_hex(
                     pg_catalog.pg_current_xact_id()::pg_catalog.text::pg_catalog.int8), 32, '0')
                 ::pg_catalog.uuid::pg_catalog.text),
        pg_catalog.pg_current_xact_id(),
        pg_catalog.clock_timestamp(),
        nullif(pg_catalog.current_setting('relay.request_path', true), ''),
        nullif(pg_catalog.current_setting('relay.request_method', true), ''))
        ::relay.change_context
$$;

-- A value of a type that is not PostgreSQL's own, as a JSON string of its text output. format()
-- calls the type's output function directly; a cast (to json or text) could be anyone's code.
-- Without a SET clause, so that PostgreSQL inlines it into the capture functions: every name and
-- operator in it is qualified.
CREATE OR REPLACE FUNCTION relay.text_value(value anyelement) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN pg_catalog.num_nulls(value) OPERATOR(pg_catalog.=) 1 THEN NULL
                ELSE pg_catalog.to_json(pg_catalog.format('%s', value)) END
$$;

-- An array of such values: a JSON array of their text outputs when it has one dimension, else
-- the array's text output (inlined as relay.text_value is).
CREATE OR REPLACE FUNCTION relay.text_array_value(value anyarray) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN pg_catalog.num_nulls(value) OPERATOR(pg_catalog.=) 1 THEN NULL
        WHEN pg_catalog.cardinality(value) OPERATOR(pg_catalog.=) 0 THEN '[]'::pg_catalog.json
        WHEN pg_catalog.array_ndims(value) OPERATOR(pg_catalog.=) 1 THEN (
            SELECT pg_catalog.json_agg(CASE WHEN pg_catalog.num_nulls(e) OPERATOR(pg_catalog.=) 1 THEN NULL
                                            ELSE pg_catalog.to_json(pg_catalog.format('%s', e))
                                       END ORDER BY i)
            FROM pg_catalog.unnest(value) WITH ORDINALITY u(e, i))
        ELSE pg_catalog.to_json(pg_catalog.format('%s', value))
    END
$$;

-- One JSON object of the members of several (json_build_object takes at most 100 arguments, so
-- a table of more than 50 columns is written 50 columns at a time).
CREATE OR REPLACE FUNCTION relay.json_join(parts json[]) RETURNS json
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ('{' || string_agg(substr(p::text, 2, length(p::text) - 2), ', ' ORDER BY i)
            || '}')::json
    FROM unnest(parts) WITH ORDINALITY u(p, i)
$$;

-- The current names of some columns, in the given order; dropped columns are left out.
CREATE OR REPLACE FUNCTION relay.column_names(tbl oid, attnums int2[]) RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY(
        SELECT a.attname::text FROM unnest(attnums) WITH ORDINALITY u(attnum, i)
        JOIN pg_attribute a ON a.attrelid = tbl AND a.attnum = u.attnum
        WHERE NOT a.attisdropped ORDER BY u.i)
$$;

-- The primary-key columns of a table, in key order (empty without a primary key).
CREATE OR REPLACE FUNCTION relay.pk_attnums(tbl oid) RETURNS int2[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT i.indkey::int2[] FROM pg_index i
                     WHERE i.indrelid = tbl AND i.indisprimary), '{}')
$$;

-- The tracked table whose capture covers tbl's rows from above (a tracked partitioned ancestor),
-- or NULL: such a table's own capture stays silent, so each change is recorded once.
CREATE OR REPLACE FUNCTION relay.tracked_ancestor(tbl oid) RETURNS oid
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT a.relid::oid FROM pg_partition_ancestors(tbl) WITH ORDINALITY a(relid, depth)
    WHERE a.relid <> tbl AND a.relid IN (SELECT t.tbl FROM relay.tracked_tables t)
    ORDER BY a.depth DESC LIMIT 1
$$;

-- The settings a value's text depends on, each with the value capture pins it to, for the types
-- that depend on it: the text of a timestamptz (and a range of them), an interval, a bytea, a
-- float and money, and the dates inside a range.
CREATE OR REPLACE FUNCTION relay.output_settings() RETURNS TABLE (setting text, value text, types regtype[])
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    VALUES ('TimeZone', 'UTC', ARRAY['timestamptz', 'tstzrange', 'tstzmultirange']::regtype[]),
           ('DateStyle', 'ISO, YMD', ARRAY['daterange', 'tsrange', 'tstzrange', 'datemultirange',
                                          'tsmultirange', 'tstzmultirange']::regtype[]),
           ('IntervalStyle', 'postgres', ARRAY['interval']::regtype[]),
           ('bytea_output', 'hex', ARRAY['bytea']::regtype[]),
           ('extra_float_digits', '1', ARRAY['float4', 'float8']::regtype[]),
           ('lc_monetary', 'C', ARRAY['money']::regtype[])
$$;

-- Every type a table's values are made of: its columns' types, and below them domains' base
-- types, arrays' elements, composites' fields, ranges' subtypes and multiranges' ranges.
CREATE OR REPLACE FUNCTION relay.reached_types(tbl oid) RETURNS SETOF oid
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE reached (typ) AS (
        SELECT a.atttypid FROM pg_attribute a
        WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
        UNION
        SELECT below.typ FROM reached r JOIN pg_type t ON t.oid = r.typ
        CROSS JOIN LATERAL (
            SELECT t.typbasetype WHERE t.typtype = 'd'
            UNION ALL
            SELECT t.typelem WHERE t.typsubscript = 'array_subscript_handler'::regproc
            UNION ALL
            SELECT f.atttypid FROM pg_attribute f
            WHERE t.typtype = 'c' AND f.attrelid = t.typrelid AND f.attnum > 0
              AND NOT f.attisdropped
            UNION ALL
            SELECT g.rngsubtype FROM pg_range g WHERE g.rngtypid = t.oid
            UNION ALL
            SELECT g.rngtypid FROM pg_range g WHERE g.rngmultitypid = t.oid) below (typ)
    )
    SELECT typ FROM reached
$$;

-- Everything the generated statements of a table depend on, as one fingerprint: its oid and
-- names, column numbers and types, the fields of the composite types its columns hold (at any
-- depth), the primary key, and whether a tracked ancestor covers it.
CREATE OR REPLACE FUNCTION relay.shape(tbl oid) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT md5(concat_ws('|', c.oid::text, quote_ident(n.nspname), quote_ident(c.relname),
        c.relkind::text,
        (SELECT string_agg(a.attnum::text || ' ' || quote_ident(a.attname) || ' '
                           || a.atttypid::text, ',' ORDER BY a.attnum)
         FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
        (SELECT string_agg(t.oid::text || '.' || f.attnum::text || ' ' || quote_ident(f.attname)
                           || ' ' || f.atttypid::text, ',' ORDER BY t.oid, f.attnum)
         FROM relay.reached_types(c.oid) r
         JOIN pg_type t ON t.oid = r AND t.typtype = 'c' AND t.oid >= 16384
         JOIN pg_attribute f ON f.attrelid = t.typrelid AND f.attnum > 0 AND NOT f.attisdropped),
        relay.pk_attnums(c.oid)::text,
        relay.tracked_ancestor(c.oid)::text))
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = tbl
$$;

-- Planned into the generated functions' first query (see the top of this file). Declared
-- IMMUTABLE so that the planner evaluates it once, when it plans; it must never raise.
CREATE OR REPLACE FUNCTION relay.shape_matches(tbl oid, expected text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN relay.shape(tbl) IS NOT DISTINCT FROM expected;
END
$$;

-- ROW(...) of the watched columns of a row (`source` as in relay.image_sql); NULL when every
-- column is watched (update_columns NULL) or when all watched columns are gone.
CREATE OR REPLACE FUNCTION relay.watched_row_sql(tbl oid, watched int2[], source text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'ROW(' || string_agg(source || '.' || quote_ident(n), ', ') || ')'
    FROM unnest(relay.column_names(tbl, watched)) n
$$;

-- Whether a watched column changed between two rows, compared byte for byte (no equality
-- operator, which a type's owner could define): NULL when every column is watched, 'false' when
-- all watched columns are gone (no update is recorded then).
CREATE OR REPLACE FUNCTION relay.watched_sql(tbl oid, watched int2[], old_ref text, new_ref text)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN watched IS NULL THEN NULL
        WHEN relay.watched_row_sql(tbl, watched, old_ref) IS NULL THEN 'false'
        ELSE format('NOT pg_catalog.record_image_eq(%s, %s)',
                    relay.watched_row_sql(tbl, watched, old_ref),
                    relay.watched_row_sql(tbl, watched, new_ref))
    END
$$;

-- The options a table is tracked with (all events and no column options when it is not).
CREATE OR REPLACE FUNCTION relay.options_of(tbl oid,
                                 OUT events text[], OUT watched int2[], OUT excluded int2[])
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(t.events, ARRAY['insert', 'update', 'delete', 'truncate']),
           t.update_attnums, coalesce(t.exclude_attnums, '{}')
    FROM (SELECT 1) one LEFT JOIN relay.tracked_tables t ON t.tbl = options_of.tbl
$$;

-- Which tracked table a row-level function records for: its own, or, when its own is gone (a
-- dump restored under other oids), the topmost tracked table above the partition written.
CREATE OR REPLACE FUNCTION relay.row_capture_target(own oid, relid oid) RETURNS oid
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN EXISTS (SELECT FROM pg_class WHERE oid = own) THEN own ELSE (
        SELECT a.relid::oid FROM pg_partition_ancestors(relid) WITH ORDINALITY a(relid, depth)
        WHERE a.relid IN (SELECT t.tbl FROM relay.tracked_tables t)
        ORDER BY a.depth DESC LIMIT 1) END
$$;

-- Wakes the relays once per transaction that recorded changes (NOTIFY is delivered at commit, so
-- one is all a listener can use), unless relay.notify is 'off': two-phase commit cannot PREPARE a
-- transaction that sent NOTIFY, so its users turn it off (per database, role or transaction) and
-- the relays find the changes when they poll.
CREATE OR REPLACE FUNCTION relay.wake() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('relay.notify', true) IS DISTINCT FROM 'off' THEN
        PERFORM pg_notify('relay_outbox', '');
    END IF;
    PERFORM set_config('relay.woken', 'on', true);
END
$$;

-- A generated function no longer fits its table: ask running relays to regenerate it.
CREATE OR REPLACE FUNCTION relay.capture_stale() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('relay.notify', true) IS DISTINCT FROM 'off' THEN
        PERFORM pg_notify('relay_capture', '');
    END IF;
END
$$;

-- The SET clauses of a capture function. Every function pins search_path. The settings a value's
-- text depends on are pinned only where the table holds such values (each costs about a
-- microsecond per call); user-defined ranges may hold anything, so they pin them all. The slow
-- path (relay.capture_rows) pins them all.
CREATE OR REPLACE FUNCTION relay.capture_settings(tbl oid) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'SET search_path = pg_catalog, pg_temp'
        || coalesce((SELECT string_agg(format(' SET %I = %L', o.setting, o.value), '')
                     FROM relay.output_settings() o
                     WHERE tbl IS NULL OR EXISTS (
                         SELECT FROM relay.reached_types(tbl) r
                         WHERE r = ANY (o.types::oid[])
                            OR r >= 16384 AND EXISTS (SELECT FROM pg_range g
                                                      WHERE r IN (g.rngtypid, g.rngmultitypid)))
                        -- A many-dimensional array of composites is written as its text, with
                        -- the dates and times of their fields in it.
                        OR o.setting = 'DateStyle' AND EXISTS (
                            SELECT FROM relay.reached_types(tbl) r JOIN pg_type t ON t.oid = r
                            WHERE t.typtype = 'c' AND r >= 16384)
                           AND EXISTS (
                            SELECT FROM relay.reached_types(tbl) r
                            WHERE r = ANY ('{date,timestamp,timestamptz,time,timetz}'::regtype[]
                                           ::oid[]))),
                    '')
$$;

-- Old and new rows of an UPDATE of many rows pair with a hash join (see relay.capture_sql),
-- planned under these settings; the one-row path needs none. Set only around the many-row
-- statement (as SET clauses on the function they cost every call 4 microseconds) and put back
-- after it: returns the values it replaced, and sets `restore` instead when given it.
CREATE OR REPLACE FUNCTION relay.pairing_settings(restore text[] DEFAULT NULL) RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    names  text[] := ARRAY['enable_nestloop', 'enable_mergejoin', 'jit', 'work_mem'];
    values text[] := coalesce(restore, ARRAY['off', 'off', 'off', '64MB']);
    before text[] := ARRAY(SELECT current_setting(n) FROM unnest(names) n);
BEGIN
    FOR i IN 1..cardinality(names) LOOP
        PERFORM set_config(names[i], values[i], true);
    END LOOP;
    RETURN before;
END
$$;

-- The slow path of a statement-level capture function that no longer fits its table: the call
-- its function runs with EXECUTE, handing its transition tables' rows over as arrays (a called
-- function cannot see them) to relay.capture_rows.
CREATE OR REPLACE FUNCTION relay.capture_rows_call(tbl oid, event text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('SELECT relay.capture_rows(%s, %L, %s, %s)', tbl, event,
                  CASE WHEN event = 'insert' THEN format('NULL::%s[]', tbl::regclass)
                       ELSE format('ARRAY(SELECT ROW(r.*)::%s FROM relay_old r)', tbl::regclass)
                  END,
                  CASE WHEN event = 'delete' THEN format('NULL::%s[]', tbl::regclass)
                       ELSE format('ARRAY(SELECT ROW(r.*)::%s FROM relay_new r)', tbl::regclass)
                  END)
$$;

-- Records one statement's rows of a table whose generated capture is behind its columns: the
-- statement built from the catalogs as they are now, with every output setting pinned (the values
-- of relay.output_settings()). Asks the relays to regenerate the table's capture functions.
CREATE OR REPLACE FUNCTION relay.capture_rows(tbl oid, event text, old_rows anyarray, new_rows anyarray)
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD'
SET IntervalStyle = 'postgres' SET bytea_output = 'hex' SET extra_float_digits = 1
SET lc_monetary = 'C' AS $$
DECLARE
    statement text := relay.capture_sql(tbl, event, false, 'pg_catalog.unnest($1)',
                                        'pg_catalog.unnest($2)');
    recorded  bigint;
    saved     text[];
BEGIN
    PERFORM relay.capture_stale();
    IF statement IS NULL THEN
        RETURN;
    END IF;
    IF event = 'update' THEN
        saved := relay.pairing_settings();
    END IF;
    EXECUTE statement USING old_rows, new_rows;
    GET DIAGNOSTICS recorded = ROW_COUNT;
    IF event = 'update' THEN
        PERFORM relay.pairing_settings(saved);
    END IF;
    IF recorded > 0 AND current_setting('relay.woken', true) IS DISTINCT FROM 'on' THEN
        PERFORM relay.wake();
    END IF;
END
$$;

-- The same for one row of a partitioned table (row-level capture), `own` being the tracked table
-- the calling function was made for.
CREATE OR REPLACE FUNCTION relay.capture_row_stale(own oid, relid oid, op text,
                                        old_row anyelement, new_row anyelement)
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD'
SET IntervalStyle = 'postgres' SET bytea_output = 'hex' SET extra_float_digits = 1
SET lc_monetary = 'C' AS $$
DECLARE
    statement text := relay.capture_row_sql(relay.row_capture_target(own, relid), op,
                                            '($1)', '($2)');
    recorded  bigint;
BEGIN
    PERFORM relay.capture_stale();
    IF statement IS NULL THEN
        RETURN;
    END IF;
    EXECUTE statement USING old_row, new_row;
    GET DIAGNOSTICS recorded = ROW_COUNT;
    IF recorded > 0 AND current_setting('relay.woken', true) IS DISTINCT FROM 'on' THEN
        PERFORM relay.wake();
    END IF;
END
$$;

-- The body of relay.capture_<oid>_<event>(), for the table as it is now.
CREATE OR REPLACE FUNCTION relay.capture_body(tbl oid, event text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    shape   text := relay.shape(tbl);
    counted text := 'GET DIAGNOSTICS relay_rows = ROW_COUNT; ';
    wake    text := 'IF relay_rows > 0 AND current_setting(''relay.woken'', true) '
                    'IS DISTINCT FROM ''on'' THEN PERFORM relay.wake(); END IF; ';
    fitting text;
    source  text := CASE event WHEN 'delete' THEN 'relay_old' ELSE 'relay_new' END;
    token   text := format('relay.shape_%s', tbl);
BEGIN
    IF event = 'truncate' THEN
        RETURN 'DECLARE relay_rows bigint; BEGIN '
            'INSERT INTO relay.outbox (schema_name, table_name, op, username, request_id, txid, '
            'created_at, request_path, request_method) '
            'SELECT TG_TABLE_SCHEMA, TG_TABLE_NAME, ''truncate'', x.username, x.request_id, '
            'x.txid, x.at, x.request_path, x.request_method FROM relay.change_context() x; '
            || counted || wake || 'RETURN NULL; END';
    ELSIF event = 'row' THEN
        -- Once per transaction, unless the transaction changed catalogs since (see the top). Not
        -- shape_matches: a plan-time constant is exactly what this check must not be.
        RETURN format(
            '#variable_conflict use_variable '
            'DECLARE relay_rows bigint; relay_token text; BEGIN '
            'relay_token := CASE WHEN current_setting(''track_counts'') = ''on'' THEN %L '
            '|| pg_current_xact_id()::text || ''/'' || (pg_stat_get_xact_tuples_inserted(1249) '
            '+ pg_stat_get_xact_tuples_updated(1249) + pg_stat_get_xact_tuples_updated(1259) '
            '+ pg_stat_get_xact_tuples_inserted(2610) + pg_stat_get_xact_tuples_deleted(2610))'
            '::text END; '
            'IF relay_token IS NULL OR current_setting(%L, true) IS DISTINCT FROM relay_token THEN '
            'IF relay.shape(%s) IS DISTINCT FROM %L THEN '
            'PERFORM relay.capture_row_stale(%s, TG_RELID, TG_OP, OLD, NEW); '
            'RETURN NULL; END IF; '
            'IF relay_token IS NOT NULL THEN PERFORM set_config(%L, relay_token, false); END IF; '
            'END IF; '
            'IF TG_OP = ''INSERT'' THEN %s ELSIF TG_OP = ''UPDATE'' THEN %s ELSE %s END IF; '
            'RETURN NULL; END',
            shape, token, tbl, shape, tbl, token,
            coalesce(relay.capture_row_sql(tbl, 'INSERT', 'OLD', 'NEW') || '; ' || counted || wake,
                     'NULL;'),
            coalesce(relay.capture_row_sql(tbl, 'UPDATE', 'OLD', 'NEW') || '; ' || counted || wake,
                     'NULL;'),
            coalesce(relay.capture_row_sql(tbl, 'DELETE', 'OLD', 'NEW') || '; ' || counted || wake,
                     'NULL;'));
    END IF;
    IF relay.capture_sql(tbl, event, false) IS NULL THEN
        -- A tracked ancestor records this table's changes: nothing to do while that holds.
        fitting := 'RETURN NULL; ';
    ELSIF event = 'update' THEN
        fitting := format('IF relay_rows = 1 THEN %s; %s'
                          'ELSE relay_saved := relay.pairing_settings(); %s; %s'
                          'PERFORM relay.pairing_settings(relay_saved); END IF; ',
                          relay.capture_sql(tbl, event, true), counted,
                          relay.capture_sql(tbl, event, false), counted);
    ELSE
        fitting := relay.capture_sql(tbl, event, false) || '; ' || counted;
    END IF;
    RETURN format(
        '#variable_conflict use_variable '
        'DECLARE relay_fresh boolean; relay_rows bigint; relay_saved text[]; BEGIN '
        'SELECT relay.shape_matches(%s, %L), count(*) INTO relay_fresh, relay_rows '
        'FROM (SELECT FROM %s LIMIT 2) s; '
        'IF relay_rows = 0 THEN RETURN NULL; END IF; '
        'IF relay_fresh AND TG_RELID = %s THEN %s'
        'ELSE EXECUTE relay.capture_rows_call(TG_RELID, %L); RETURN NULL; END IF; '
        '%s RETURN NULL; END',
        tbl, shape, source, tbl, fitting, event, wake);
END
$$;

-- The events a table's capture functions are made for: one function per statement-level event of
-- a plain table; a partitioned table has one row-level function for its row events (cloned onto
-- every partition with its trigger) and a statement-level one for TRUNCATE.
CREATE OR REPLACE FUNCTION relay.capture_events(tbl oid, events text[]) RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN (SELECT relkind FROM pg_class WHERE oid = tbl) = 'p' THEN
               ARRAY(SELECT e FROM unnest(ARRAY['row', 'truncate']) e
                     WHERE e = 'truncate' AND 'truncate' = ANY (events)
                        OR e = 'row' AND events && ARRAY['insert', 'update', 'delete'])
           ELSE events END
$$;

-- (Re)writes the capture functions of a tracked table for the table as it is now, and records
-- the fingerprint they were made for. Only functions are written: triggers are relay.track's.
CREATE OR REPLACE FUNCTION relay.write_capture(tbl oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    event text;
BEGIN
    FOREACH event IN ARRAY relay.capture_events(tbl, (relay.options_of(tbl)).events) LOOP
        -- The body goes in as a quoted literal: no name in it can end it early.
        EXECUTE format('CREATE OR REPLACE FUNCTION relay.%I() RETURNS trigger '
                       'LANGUAGE plpgsql SECURITY DEFINER %s AS %L',
                       format('capture_%s_%s', tbl, event), relay.capture_settings(tbl),
                       relay.capture_body(tbl, event));
        EXECUTE format('REVOKE ALL ON FUNCTION relay.%I() FROM PUBLIC',
                       format('capture_%s_%s', tbl, event));
        -- Relay's owner's, whoever wrote it: a function a superuser wrote (relay track run by a
        -- DBA) would run with a superuser's rights in every writer's session.
        EXECUTE format('ALTER FUNCTION relay.%I() OWNER TO %s', format('capture_%s_%s', tbl, event),
                       (SELECT n.nspowner::regrole FROM pg_namespace n WHERE n.nspname = 'relay'));
    END LOOP;
    UPDATE relay.tracked_tables t SET shape = relay.shape(write_capture.tbl)
    WHERE t.tbl = write_capture.tbl;
END
$$;

-- Drops the capture functions of a table that are not in `keep`, and with them (CASCADE) their
-- triggers: dropping a trigger directly needs the table's ownership, dropping it with its
-- function does not.
CREATE OR REPLACE FUNCTION relay.drop_capture(tbl oid, keep text[] DEFAULT '{}') RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fn      regprocedure;
    dropped boolean := false;
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = 'relay'::regnamespace
          AND p.proname ~ ('^capture_' || tbl || '_(insert|update|delete|truncate|row)$')
          AND NOT substr(p.proname, length('capture_' || tbl || '_') + 1) = ANY (keep)
    LOOP
        EXECUTE format('DROP FUNCTION %s CASCADE', fn);
        dropped := true;
    END LOOP;
    RETURN dropped;
END
$$;

-- Regenerates the capture functions of every tracked table whose shape changed since they were
-- written (relay run calls it when notified on relay_capture, and every lease period). Runs with
-- the rights of relay's owner, who owns the functions; it needs no right on the tables.
CREATE OR REPLACE FUNCTION relay.refresh_capture() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    stale   oid;
    n       integer := 0;
BEGIN
    FOR stale IN
        SELECT t.tbl FROM relay.tracked_tables t
        WHERE t.shape IS DISTINCT FROM relay.shape(t.tbl)
          AND EXISTS (SELECT FROM pg_class c WHERE c.oid = t.tbl)
        ORDER BY t.tbl
        FOR UPDATE OF t SKIP LOCKED
    LOOP
        PERFORM relay.write_capture(stale);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- Writes a tracked table's capture functions and points its triggers at them, for the events it
-- is tracked for; capture of other events goes, with its functions. Runs with the caller's
-- rights: triggers need the TRIGGER privilege on the table (on a partitioned table, on each of
-- its partitions too), never its ownership.
CREATE OR REPLACE FUNCTION relay.install_capture(tbl regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    events text[] := (relay.options_of(tbl)).events;
    event  text;
BEGIN
    PERFORM relay.write_capture(tbl);
    PERFORM relay.drop_capture(tbl, relay.capture_events(tbl, events));
    FOREACH event IN ARRAY relay.capture_events(tbl, events) LOOP
        IF event = 'row' THEN
            EXECUTE format(
                'CREATE OR REPLACE TRIGGER %I AFTER %s ON %s '
                'FOR EACH ROW EXECUTE FUNCTION relay.%I()',
                'relay_capture_row_' || tbl::oid,
                (SELECT string_agg(upper(e), ' OR ') FROM unnest(events) e WHERE e <> 'truncate'),
                tbl, format('capture_%s_row', tbl::oid));
        ELSE
            EXECUTE format(
                'CREATE OR REPLACE TRIGGER %I AFTER %s ON %s %s '
                'FOR EACH STATEMENT EXECUTE FUNCTION relay.%I()',
                'relay_capture_' || event, upper(event), tbl,
                CASE event WHEN 'insert' THEN 'REFERENCING NEW TABLE AS relay_new'
                           WHEN 'update' THEN 'REFERENCING OLD TABLE AS relay_old NEW TABLE AS relay_new'
                           WHEN 'delete' THEN 'REFERENCING OLD TABLE AS relay_old'
                           ELSE '' END,
                format('capture_%s_%s', tbl::oid, event));
        END IF;
    END LOOP;
END
$$;

-- The SQL expression for one value `col` of type `typ`, as an argument of json_build_object or
-- json_agg: the value itself for PostgreSQL's own types (json and jsonb included: json keeps
-- their text), an object built field by field for a composite, an array built element by element
-- for an array of composites, the text output for anything else. A composite's fields cannot
-- change type while a table column uses it (PostgreSQL refuses), so the expressions stay safe;
-- fields added, renamed or dropped later show in relay.shape, and relay.refresh_capture catches
-- up.
CREATE OR REPLACE FUNCTION relay.value_sql(col text, typ oid, depth integer DEFAULT 0)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    base  oid := typ;
    below oid;
    elem  oid;
    kind  "char";
    rel   oid;
BEGIN
    -- Look through domains, as to_json does (a domain's own casts are never consulted).
    LOOP
        SELECT t.typbasetype INTO below FROM pg_type t WHERE t.oid = base AND t.typtype = 'd';
        EXIT WHEN NOT FOUND;
        base := below;
    END LOOP;
    SELECT t.typtype, t.typrelid,
           CASE WHEN t.typsubscript = 'array_subscript_handler'::regproc THEN t.typelem END
    INTO kind, rel, elem FROM pg_type t WHERE t.oid = base;
    -- 16384 is FirstNormalObjectId: below it, types that came with PostgreSQL itself.
    IF base < 16384 THEN
        -- Taken as it is by json_build_object or json_agg, which treat it as to_json does.
        RETURN col;
    ELSIF depth >= 8 THEN
        RETURN format('relay.text_value(%s)', col);
    ELSIF kind = 'c' THEN
        RETURN format('CASE WHEN pg_catalog.num_nulls(%s) = 1 THEN NULL ELSE %s END', col,
                      relay.fields_sql(rel, col, depth + 1));
    ELSIF elem IS NOT NULL THEN
        LOOP
            SELECT t.typbasetype INTO below FROM pg_type t WHERE t.oid = elem AND t.typtype = 'd';
            EXIT WHEN NOT FOUND;
            elem := below;
        END LOOP;
        IF (SELECT t.typtype FROM pg_type t WHERE t.oid = elem) = 'c' THEN
            RETURN format(
                'CASE WHEN pg_catalog.num_nulls(%1$s) = 1 THEN NULL '
                'WHEN pg_catalog.cardinality(%1$s) = 0 THEN ''[]''::pg_catalog.json '
                'WHEN pg_catalog.array_ndims(%1$s) = 1 THEN (SELECT pg_catalog.json_agg(%2$s '
                'ORDER BY s%3$s.k) FROM pg_catalog.generate_subscripts(%1$s, 1) s%3$s(k)) '
                'ELSE pg_catalog.to_json(pg_catalog.format(''%%s'', %1$s)) END',
                col, relay.value_sql(format('(%s)[s%s.k]', col, depth), elem, depth + 1), depth);
        END IF;
        RETURN format('relay.text_array_value(%s)', col);
    ELSE
        RETURN format('relay.text_value(%s)', col);
    END IF;
END
$$;

-- json_build_object(...) of the columns (or a composite's fields) of relation `rel`, taken from
-- `source` (a table alias, NEW or $1 at depth 0; a composite value below), less the `excluded`
-- ones; 50 columns per call, joined by relay.json_join.
CREATE OR REPLACE FUNCTION relay.fields_sql(rel oid, source text, depth integer,
                                            excluded int2[] DEFAULT '{}') RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE count(*)
               WHEN 0 THEN '''{}''::pg_catalog.json'
               WHEN 1 THEN min(chunk)
               ELSE 'relay.json_join(ARRAY[' || string_agg(chunk, ', ' ORDER BY grp) || '])'
           END
    FROM (
        SELECT grp, format('pg_catalog.json_build_object(%s)',
                           string_agg(format('%L, %s', attname,
                                             relay.value_sql(
                                                 format(CASE WHEN depth = 0 THEN '%s.%I'
                                                             ELSE '(%s).%I' END, source, attname),
                                                 atttypid, depth)),
                                      ', ' ORDER BY attnum)) AS chunk
        FROM (SELECT a.attname, a.attnum, a.atttypid,
                     (row_number() OVER (ORDER BY a.attnum) - 1) / 50 AS grp
              FROM pg_attribute a
              WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
                AND a.attnum <> ALL (excluded)) cols
        GROUP BY grp) chunks
$$;

-- The json image of one row of tbl (current columns, less the excluded ones), where `source` is
-- how the row is referred to: a one-letter table alias, NEW, OLD or ($1). One to_json call when
-- every type the table holds is PostgreSQL's own and no column is excluded.
CREATE OR REPLACE FUNCTION relay.image_sql(tbl oid, source text, excluded int2[]) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN cardinality(excluded) = 0
             AND NOT EXISTS (SELECT FROM relay.reached_types(tbl) r WHERE r >= 16384)
        THEN format('pg_catalog.to_json(%s)',
                    CASE WHEN source ~ '^[a-z]$' THEN source || '.*' ELSE source END)
        ELSE relay.fields_sql(tbl, source, 0, excluded)
    END
$$;

-- The primary key of a row (`source` as in relay.image_sql), as json_build_object of its key
-- columns, written as in the images; NULL without a primary key.
CREATE OR REPLACE FUNCTION relay.pk_sql(tbl oid, source text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(
        'pg_catalog.json_build_object('
            || string_agg(format('%L, %s', a.attname,
                                 relay.value_sql(source || '.' || quote_ident(a.attname),
                                                 a.atttypid)), ', ' ORDER BY k.i) || ')',
        'NULL::pg_catalog.json')
    FROM unnest(relay.pk_attnums(tbl)) WITH ORDINALITY k(attnum, i)
    JOIN pg_attribute a ON a.attrelid = tbl AND a.attnum = k.attnum
$$;

-- The INSERT INTO relay.outbox that records one statement's rows of `event` (insert, update,
-- delete) on a plain table, from `old_rows` and `new_rows` (its transition tables, or arrays of
-- their rows); `single` when the statement touched one row. NULL when a tracked ancestor records
-- them.
--
-- Old and new rows of an UPDATE are paired by position: PostgreSQL appends each updated row's old
-- and new versions to the two transition tables together. Most statements touch one row, and
-- starting a join costs more than the capture itself, so a one-row statement takes a plain
-- two-table product; bigger ones pair by position with a hash join (relay.pairing_settings pins
-- the join method: the plan is cached per session, and a nested loop planned for a small
-- statement would be quadratic on the next million-row one), pairing old and new images only
-- (hashing whole rows as well doubled what the hash join held, and made it spill to disk).
-- `OFFSET 0` keeps each image computed once. Rows whose images are the same text are not
-- recorded (compared after excluded columns are left out).
CREATE OR REPLACE FUNCTION relay.capture_sql(tbl oid, event text, single boolean,
                                             old_rows text DEFAULT 'relay_old',
                                             new_rows text DEFAULT 'relay_new') RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    opts     record := relay.options_of(tbl);
    names    text;
    context  text := relay.context_sql();
    watched  text;
    distinct_images text := '';
BEGIN
    IF relay.tracked_ancestor(tbl) IS NOT NULL OR NOT event = ANY (opts.events) THEN
        RETURN NULL;
    END IF;
    SELECT format('%L, %L', n.nspname, c.relname) INTO names
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl;
    IF event = 'insert' THEN
        RETURN format(
            'INSERT INTO relay.outbox (schema_name, table_name, op, new, pk, username, request_id, '
            'txid, created_at, request_path, request_method) '
            'SELECT %s, ''insert'', c.n, c.k, x.username, x.request_id, x.txid, x.at, '
            'x.request_path, x.request_method '
            'FROM (SELECT %s AS n, %s AS k FROM %s t OFFSET 0) c, %s',
            names, relay.image_sql(tbl, 't', opts.excluded), relay.pk_sql(tbl, 't'), new_rows,
            context);
    ELSIF event = 'delete' THEN
        RETURN format(
            'INSERT INTO relay.outbox (schema_name, table_name, op, old, pk, username, request_id, '
            'txid, created_at, request_path, request_method) '
            'SELECT %s, ''delete'', c.o, c.k, x.username, x.request_id, x.txid, x.at, '
            'x.request_path, x.request_method '
            'FROM (SELECT %s AS o, %s AS k FROM %s t OFFSET 0) c, %s',
            names, relay.image_sql(tbl, 't', opts.excluded), relay.pk_sql(tbl, 't'), old_rows,
            context);
    END IF;
    IF cardinality(opts.excluded) > 0 THEN
        distinct_images := ' AND c.o::pg_catalog.text OPERATOR(pg_catalog.<>) '
                           'c.n::pg_catalog.text';
    END IF;
    watched := relay.watched_sql(tbl, opts.watched, 'a', 'b');
    IF single THEN
        RETURN format(
            'INSERT INTO relay.outbox (schema_name, table_name, op, old, new, pk, username, '
            'request_id, txid, created_at, request_path, request_method) '
            'SELECT %s, ''update'', c.o, c.n, c.k, x.username, x.request_id, x.txid, x.at, '
            'x.request_path, x.request_method '
            'FROM (SELECT %s AS o, %s AS n, %s AS k FROM %s a, %s b '
            'WHERE NOT pg_catalog.record_image_eq(a.*, b.*)%s OFFSET 0) c, %s WHERE true%s',
            names, relay.image_sql(tbl, 'a', opts.excluded),
            relay.image_sql(tbl, 'b', opts.excluded), relay.pk_sql(tbl, 'b'), old_rows, new_rows,
            coalesce(' AND ' || watched, ''), context, distinct_images);
    END IF;
    -- The watched columns travel as a row of their own (ROW(...) AS w) to be compared after the
    -- pairing.
    RETURN format(
        'INSERT INTO relay.outbox (schema_name, table_name, op, old, new, pk, username, '
        'request_id, txid, created_at, request_path, request_method) '
        'SELECT %s, ''update'', o.j, n.j, n.k, x.username, x.request_id, x.txid, x.at, '
        'x.request_path, x.request_method '
        'FROM (SELECT row_number() OVER () AS i%s, %s AS j FROM %s a) o '
        'JOIN (SELECT row_number() OVER () AS i%s, %s AS j, %s AS k FROM %s b) n '
        'ON n.i OPERATOR(pg_catalog.=) o.i, %s '
        'WHERE o.j::pg_catalog.text OPERATOR(pg_catalog.<>) n.j::pg_catalog.text%s',
        names,
        coalesce(', ' || relay.watched_row_sql(tbl, opts.watched, 'a') || ' AS w', ''),
        relay.image_sql(tbl, 'a', opts.excluded), old_rows,
        coalesce(', ' || relay.watched_row_sql(tbl, opts.watched, 'b') || ' AS w', ''),
        relay.image_sql(tbl, 'b', opts.excluded), relay.pk_sql(tbl, 'b'), new_rows, context,
        CASE WHEN watched IS NULL THEN ''
             WHEN watched = 'false' THEN ' AND false'
             ELSE ' AND NOT pg_catalog.record_image_eq(o.w, n.w)' END);
END
$$;

-- The INSERT INTO relay.outbox that records one row's change on a partitioned table (row-level
-- capture), the old and new rows being `old_ref` and `new_ref` (OLD and NEW in the generated
-- function; ($1) and ($2) when run with EXECUTE ... USING OLD, NEW), comparing json images as
-- text. NULL when a tracked ancestor records it, or the event is not tracked.
CREATE OR REPLACE FUNCTION relay.capture_row_sql(tbl oid, op text, old_ref text, new_ref text)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    opts    record := relay.options_of(tbl);
    event   text := lower(op);
    names   text;
    context text := relay.context_sql();
    watched text;
BEGIN
    SELECT format('%L, %L', n.nspname, c.relname) INTO names
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl;
    IF names IS NULL OR relay.tracked_ancestor(tbl) IS NOT NULL
       OR NOT event = ANY (opts.events) THEN
        RETURN NULL;
    END IF;
    IF event = 'insert' THEN
        RETURN format(
            'INSERT INTO relay.outbox (schema_name, table_name, op, new, pk, username, request_id, '
            'txid, created_at, request_path, request_method) '
            'SELECT %s, ''insert'', c.n, c.k, x.username, x.request_id, x.txid, x.at, '
            'x.request_path, x.request_method FROM (SELECT %s AS n, %s AS k OFFSET 0) c, %s',
            names, relay.image_sql(tbl, new_ref, opts.excluded), relay.pk_sql(tbl, new_ref),
            context);
    ELSIF event = 'delete' THEN
        RETURN format(
            'INSERT INTO relay.outbox (schema_name, table_name, op, old, pk, username, request_id, '
            'txid, created_at, request_path, request_method) '
            'SELECT %s, ''delete'', c.o, c.k, x.username, x.request_id, x.txid, x.at, '
            'x.request_path, x.request_method FROM (SELECT %s AS o, %s AS k OFFSET 0) c, %s',
            names, relay.image_sql(tbl, old_ref, opts.excluded), relay.pk_sql(tbl, old_ref),
            context);
    END IF;
    watched := relay.watched_sql(tbl, opts.watched, old_ref, new_ref);
    RETURN format(
        'INSERT INTO relay.outbox (schema_name, table_name, op, old, new, pk, username, '
        'request_id, txid, created_at, request_path, request_method) '
        'SELECT %s, ''update'', c.o, c.n, c.k, x.username, x.request_id, x.txid, x.at, '
        'x.request_path, x.request_method '
        'FROM (SELECT %s AS o, %s AS n, %s AS k WHERE NOT pg_catalog.record_image_eq(%s, %s)%s '
        'OFFSET 0) c, %s%s',
        names, relay.image_sql(tbl, old_ref, opts.excluded),
        relay.image_sql(tbl, new_ref, opts.excluded), relay.pk_sql(tbl, new_ref), old_ref, new_ref,
        coalesce(' AND ' || watched, ''), context,
        CASE WHEN cardinality(opts.excluded) > 0
             THEN ' WHERE c.o::pg_catalog.text OPERATOR(pg_catalog.<>) c.n::pg_catalog.text'
             ELSE '' END);
END
$$;

-- relay.track's checks and work, without the model (relay.track below adds it).
CREATE OR REPLACE FUNCTION relay.track_options(
    tbl             regclass,
    events          text[] DEFAULT ARRAY['insert', 'update', 'delete', 'truncate'],
    update_columns  text[] DEFAULT NULL,
    exclude_columns text[] DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel       pg_class;
    bad       text;
    relative  regclass;
    watched_attnums  int2[];
    excluded_attnums int2[];
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
    IF rel.relpersistence = 't' THEN
        RAISE EXCEPTION 'relay.track: % is a temporary table; only permanent tables can be tracked', tbl;
    END IF;
    -- Triggers on an inheritance parent do not fire for rows written to its children, nor a
    -- child's for rows written through the parent: either would lose changes.
    IF NOT rel.relispartition AND EXISTS (SELECT FROM pg_inherits WHERE inhrelid = tbl) THEN
        RAISE EXCEPTION 'relay.track: % inherits from another table (table inheritance is not supported; partitioned tables are)', tbl;
    END IF;
    IF rel.relkind = 'r' AND EXISTS (SELECT FROM pg_inherits WHERE inhparent = tbl) THEN
        RAISE EXCEPTION 'relay.track: % has inheriting tables (table inheritance is not supported; partitioned tables are)', tbl;
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

    SELECT c INTO bad FROM unnest(update_columns || exclude_columns) c
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
    watched_attnums := CASE WHEN update_columns IS NOT NULL THEN ARRAY(
        SELECT a.attnum FROM unnest(update_columns) WITH ORDINALITY u(name, i)
        JOIN pg_attribute a ON a.attrelid = tbl AND a.attname = u.name ORDER BY u.i) END;
    excluded_attnums := ARRAY(
        SELECT a.attnum FROM unnest(exclude_columns) WITH ORDINALITY u(name, i)
        JOIN pg_attribute a ON a.attrelid = tbl AND a.attname = u.name ORDER BY u.i);
    -- The key orders a row's changes; without it every row of the table would share one queue.
    SELECT a.attname INTO bad FROM pg_attribute a
    WHERE a.attrelid = tbl AND a.attnum = ANY (excluded_attnums)
      AND a.attnum = ANY (relay.pk_attnums(tbl))
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'relay.track: column "%" is part of the primary key of % and cannot be excluded (changes of a row are ordered by their key)', bad, tbl;
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

    INSERT INTO relay.tracked_tables AS t (tbl, events, update_attnums, exclude_attnums)
    VALUES (tbl, events, watched_attnums, excluded_attnums)
    ON CONFLICT ON CONSTRAINT tracked_tables_pkey DO UPDATE
        SET events = EXCLUDED.events, update_attnums = EXCLUDED.update_attnums,
            exclude_attnums = EXCLUDED.exclude_attnums, tracked_at = now();
    PERFORM relay.install_capture(tbl);
END
$$;

-- Capture changes of a table into the outbox (docs/sql.md, relay.track): relay.track_options's
-- checks and work, and the model name its changes carry (NULL: the table name). Calling it again
-- replaces the options.
CREATE OR REPLACE FUNCTION relay.track(
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

-- Stop capturing a table: its triggers and generated functions go; changes already in the
-- outbox stay. Whether it was tracked.
CREATE OR REPLACE FUNCTION relay.untrack(tbl regclass) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    gone        oid;
    was_tracked boolean;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'relay.untrack: table must not be null';
    END IF;
    was_tracked := relay.drop_capture(tbl);
    DELETE FROM relay.tracked_tables t WHERE t.tbl = untrack.tbl;
    -- Tables dropped while tracked leave their functions behind: clear those too.
    FOR gone IN
        DELETE FROM relay.tracked_tables t
        WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = t.tbl) RETURNING t.tbl
    LOOP
        PERFORM relay.drop_capture(gone);
    END LOOP;
    RETURN was_tracked;
END
$$;
