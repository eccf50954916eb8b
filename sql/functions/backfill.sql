-- Backfill: relay.backfill writes snapshots of a tracked table's rows into the outbox, a chunk
-- per call, in key order, resumable from relay.backfills (docs/sql.md).
--
-- Every function of schema relay is defined once, as it is now, in a file of sql/functions/; the
-- installer runs these files after the migrations, in one transaction (sql/install.sql).

-- A type with its domains taken off (a domain over a domain too), and the type modifier that
-- applies: the base type's own values, read without any domain's CHECK.
CREATE OR REPLACE FUNCTION relay.base_type(typ oid, mod integer, OUT base oid, OUT typmod integer)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t record;
BEGIN
    base := typ;
    base_type.typmod := mod;
    LOOP
        SELECT typtype, typbasetype, typtypmod INTO t FROM pg_type WHERE oid = base;
        EXIT WHEN t.typtype IS DISTINCT FROM 'd';
        base := t.typbasetype;
        IF t.typtypmod <> -1 THEN
            base_type.typmod := t.typtypmod;
        END IF;
    END LOOP;
END
$$;

-- The types a type's values are made of, one level down.
CREATE OR REPLACE FUNCTION relay.type_children(typ oid) RETURNS SETOF oid
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ty.typelem FROM pg_type ty
    WHERE ty.oid = typ AND ty.typcategory = 'A' AND ty.typelem <> 0
    UNION ALL
    SELECT ty.typbasetype FROM pg_type ty WHERE ty.oid = typ AND ty.typtype = 'd'
    UNION ALL
    SELECT g.rngsubtype FROM pg_range g WHERE g.rngtypid = typ
    UNION ALL
    SELECT g.rngtypid FROM pg_range g WHERE g.rngmultitypid = typ
    UNION ALL
    SELECT a.atttypid FROM pg_type ty JOIN pg_attribute a ON a.attrelid = ty.typrelid
    WHERE ty.oid = typ AND ty.typtype = 'c' AND a.attnum > 0 AND NOT a.attisdropped
$$;

-- The first domain or composite type found inside a type (its array elements, range subtype, a
-- multirange's range, a domain's base, a composite's fields, at any depth), or NULL. Reading
-- such a value from text runs the domain's CHECK, which another role may have written.
CREATE OR REPLACE FUNCTION relay.typed_inside(typ oid) RETURNS regtype
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE inside(t) AS (
        SELECT c.child FROM pg_type ty, LATERAL relay.type_children(ty.oid) c(child)
        WHERE ty.oid = typ
        UNION
        SELECT c.child FROM inside, LATERAL relay.type_children(inside.t) c(child)
    )
    SELECT ty.oid::regtype FROM inside JOIN pg_type ty ON ty.oid = inside.t
    WHERE ty.typtype IN ('d', 'c') LIMIT 1
$$;

-- The primary key's columns of a table, in order, with what paging by them takes: the type to
-- read a key's text back as, and the operators of the key index's operator class (the order
-- the index and ORDER BY ... USING keep, whatever the search_path or a column's type: citext
-- orders case-blind). A key is written as text by its type's output function (format('%s'),
-- which runs no cast) and read back with a cast from text to the column's type, or a domain's
-- base type (casting to the domain would run its CHECK expressions), with its type modifier
-- (char(3) stays char(3)). Refused: a key of a composite type or holding a domain or composite
-- type inside (an array of a domain, a range over one: reading it runs the domain's CHECK), and
-- a key whose type has a cast from text running a function that a role other than a superuser
-- owns (another role's code would run with the rights of whoever runs the backfill).
CREATE OR REPLACE FUNCTION relay.backfill_keys(tbl oid)
RETURNS TABLE (i bigint, name text, expr text, value_type text, lt text, eq text, ge text,
               gt text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT k.i, a.attname::text AS name, a.atttypid AS declared, d.base,
               -- A domain's key is read as its base type (no CHECK runs: a relabelling), so
               -- that the base type's operators apply (a domain over an enum has none by name).
               CASE WHEN d.base <> a.atttypid
                    THEN format('r.%I::%s', a.attname, format_type(d.base, d.typmod))
                    ELSE format('r.%I', a.attname) END AS expr,
               format_type(d.base, d.typmod) AS value_type,
               oc.opcfamily, oc.opcintype, oc.opcmethod
        FROM pg_index x
        CROSS JOIN LATERAL unnest(x.indkey::int2[], x.indclass::oid[])
            WITH ORDINALITY k(attnum, opclass, i)
        JOIN pg_attribute a ON a.attrelid = tbl AND a.attnum = k.attnum
        CROSS JOIN LATERAL relay.base_type(a.atttypid, a.atttypmod) d
        JOIN pg_opclass oc ON oc.oid = k.opclass
        WHERE x.indrelid = tbl AND x.indisprimary
        ORDER BY k.i
    LOOP
        IF (SELECT typtype FROM pg_type WHERE oid = col.base) NOT IN ('b', 'e', 'r') THEN
            RAISE EXCEPTION '%: primary key column "%" is of type %, which a backfill cannot page through',
                tbl::regclass, col.name, format_type(col.base, NULL)
                USING ERRCODE = 'feature_not_supported';
        END IF;
        IF relay.typed_inside(col.base) IS NOT NULL THEN
            RAISE EXCEPTION '%: primary key column "%" holds values of %, a domain or composite type, whose input a backfill will not run (its CHECK may be another role''s code)',
                tbl::regclass, col.name, relay.typed_inside(col.base)
                USING ERRCODE = 'feature_not_supported';
        END IF;
        IF EXISTS (SELECT FROM pg_cast c JOIN pg_proc p ON p.oid = c.castfunc
                   JOIN pg_roles o ON o.oid = p.proowner
                   WHERE c.castsource = 'text'::regtype AND c.casttarget = col.base
                     AND NOT o.rolsuper) THEN
            RAISE EXCEPTION '%: the type of primary key column "%" (%) has a cast from text that a role other than a superuser wrote, which a backfill will not run',
                tbl::regclass, col.name, format_type(col.base, NULL)
                USING ERRCODE = 'feature_not_supported';
        END IF;
        RETURN QUERY
        SELECT col.i, col.name, col.expr, col.value_type,
               max(op) FILTER (WHERE m.amopstrategy = 1), max(op) FILTER (WHERE m.amopstrategy = 3),
               max(op) FILTER (WHERE m.amopstrategy = 4), max(op) FILTER (WHERE m.amopstrategy = 5)
        FROM pg_amop m
        JOIN pg_operator o ON o.oid = m.amopopr
        JOIN pg_namespace n ON n.oid = o.oprnamespace
        CROSS JOIN LATERAL (SELECT format('OPERATOR(%I.%s)', n.nspname, o.oprname) AS op) f
        WHERE m.amopfamily = col.opcfamily AND m.amopmethod = col.opcmethod
          AND m.amoplefttype = col.opcintype AND m.amoprighttype = col.opcintype;
    END LOOP;
END
$$;

-- The rows a backfill reads: the table's own (ONLY: a table that inherits from it is not
-- tracked with it), or for a partitioned table, its partitions' (as capture records them).
CREATE OR REPLACE FUNCTION relay.backfill_source(tbl oid) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN relkind = 'p' THEN '' ELSE 'ONLY ' END || oid::regclass::text
    FROM pg_class WHERE oid = tbl
$$;

-- The where clause of a backfill of tbl, checked, as SQL to put after WHERE or AND: the clause
-- in parentheses, the closing one on a line of its own (it ends a trailing -- comment); 'true'
-- for ''. Why it can only narrow the rows:
--
-- * It is at most 2,000 bytes: relay.backfills keeps it in a unique index (backfills_running),
--   whose entries PostgreSQL caps near 2,700 bytes.
-- * It holds no semicolon, not even in a string. Without one, whatever PostgreSQL makes of the
--   text is one statement: neither the checks below nor the statements that use the clause can
--   run a second one.
-- * PostgreSQL plans it twice without running it (EXPLAIN), as WHERE (clause) and as
--   WHERE ARRAY[clause] IS NOT NULL, each ending in text that closes no string, dollar quote,
--   quoted name or comment: a clause that leaves one open fails. So the clause is read the same
--   way, token for token, in both and in the statements that use it. PostgreSQL's grammar pairs
--   every ( with a ) and every [ with a ] inside one construct, so a clause that parses between
--   ( and ) and between [ and ] neither closes a bracket it did not open nor leaves one open: the
--   first would have to be a ) in one place and a ] in the other, the second closed by both. It
--   is one condition, and the parentheses around it in every statement are relay's own,
--   whatever strings, dollar quotes, E'' escapes and comments it holds.
-- * The tokens depend on standard_conforming_strings (a backslash in a string), which a clause
--   can change as it runs (set_config). So the check is made again right before each statement
--   that holds the clause, after the statements before it have run it: a clause read differently
--   the second time fails there instead of reaching out.
--
-- Its functions run with the caller's rights, as often as PostgreSQL evaluates it (the count,
-- then twice a row in each chunk; one declared IMMUTABLE may also run as a check plans it). Names
-- in it resolve in pg_catalog only (search_path), so another role's function or operator runs
-- only where the clause names it with its schema.
CREATE OR REPLACE FUNCTION relay.backfill_where(tbl oid, where_clause text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    source text := relay.backfill_source(tbl);
BEGIN
    IF where_clause = '' THEN
        RETURN 'true';
    END IF;
    IF octet_length(where_clause) > 2000 THEN
        RAISE EXCEPTION 'backfill of %: the where clause is % bytes, over the 2,000 a backfill keeps: say it in fewer (a function of your own can hold a long condition)',
            tbl::regclass, to_char(octet_length(where_clause), 'FM999,999,999')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF strpos(where_clause, ';') > 0 THEN
        RAISE EXCEPTION 'backfill of %: the where clause holds a semicolon, which it may not even in a string (write chr(59))',
            tbl::regclass USING ERRCODE = 'invalid_parameter_value';
    END IF;
    BEGIN
        EXECUTE format(E'EXPLAIN SELECT FROM %s r WHERE (%s\n)', source, where_clause);
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE;  -- the table or a row policy refuses the caller: say so as it is
    WHEN syntax_error_or_access_rule_violation OR data_exception THEN
        RAISE EXCEPTION 'backfill of %: the where clause does not work: % (it is SQL on the table''s columns; call functions by schema-qualified names)',
            tbl::regclass, SQLERRM USING ERRCODE = 'invalid_parameter_value';
    END;
    BEGIN
        EXECUTE format(E'EXPLAIN SELECT FROM %s r WHERE ARRAY[%s\n] IS NOT NULL', source,
                       where_clause);
    EXCEPTION WHEN syntax_error THEN
        RAISE EXCEPTION 'backfill of %: the where clause is not one condition: it closes a parenthesis it did not open, or is a query on its own (write EXISTS (SELECT ...))',
            tbl::regclass USING ERRCODE = 'invalid_parameter_value';
    END;
    RETURN format(E'(%s\n)', where_clause);
END
$$;

-- The statement that writes one chunk of a backfill of tbl (relay.backfill runs it with the
-- last key as text in $1, the chunk's size in $2 and the webhook in $3): the next keys in key
-- order, read without locks; then those rows, locked FOR SHARE, as they are now (a row changed
-- meanwhile is read as its writer left it; one deleted, or no longer selected by the condition,
-- is left out: its live change speaks for it); their snapshots, written in key order. Returns
-- the keys it went past, the snapshots it wrote, and the last key as text. The condition is
-- relay.backfill_where's, checked right before the statement it goes into; volatile, since the
-- check plans statements (EXPLAIN).
CREATE OR REPLACE FUNCTION relay.backfill_sql(tbl oid, condition text, resume boolean)
RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cols    text;
    ordered text;
    newest  text;
    same    text;
    lasts   text;
    after   text := '';
    names   text;
    k       record;
BEGIN
    -- One pass over the key columns, last first, each piece put in front of the others'. The
    -- paging condition, (k1, k2, ...) after the last key in the index's order, is spelt out
    -- column by column (a row comparison would look its operators up by name), led by
    -- k1 >= its last value so that it is an index range.
    FOR k IN SELECT * FROM relay.backfill_keys(tbl) ORDER BY i DESC LOOP
        cols := concat_ws(', ', format('%s AS relay_key_%s', k.expr, k.i), cols);
        ordered := concat_ws(', ', format('relay_key_%s USING %s', k.i, k.lt), ordered);
        newest := concat_ws(', ', format('relay_key_%s USING %s', k.i, k.gt), newest);
        same := concat_ws(' AND ', format('%s %s keys.relay_key_%s', k.expr, k.eq, k.i), same);
        lasts := concat_ws(', ', format('pg_catalog.format(%L, relay_key_%s)', '%s', k.i), lasts);
        IF resume THEN
            after := CASE WHEN after = ''
                          THEN format('%s %s $1[%s]::%s', k.expr, k.gt, k.i, k.value_type)
                          ELSE format('(%s %s $1[%s]::%s OR %s %s $1[%s]::%s AND %s)',
                                      k.expr, k.gt, k.i, k.value_type,
                                      k.expr, k.eq, k.i, k.value_type, after) END;
            IF k.i = 1 THEN
                after := format(' AND %s %s $1[1]::%s AND %s', k.expr, k.ge, k.value_type,
                                after);
            END IF;
        END IF;
    END LOOP;
    IF cols IS NULL THEN
        RAISE EXCEPTION '% has no primary key, which a backfill needs to go in order and resume',
            tbl::regclass USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT format('%L, %L', n.nspname, c.relname) INTO names
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl;
    RETURN format(
        'WITH keys AS MATERIALIZED ('
        '  SELECT %1$s FROM (SELECT * FROM %2$s r WHERE true%4$s) r WHERE %3$s '
        '  ORDER BY %5$s LIMIT $2), '
        'rows AS MATERIALIZED ('
        '  SELECT %6$s AS n, %7$s AS k, %1$s FROM %2$s r '
        '  WHERE EXISTS (SELECT FROM keys WHERE %8$s) AND %3$s FOR SHARE OF r), '
        'written AS ('
        '  INSERT INTO relay.outbox (schema_name, table_name, op, new, pk, username, request_id, '
        '                            txid, created_at, webhook_id, request_path, request_method) '
        '  SELECT %9$s, ''snapshot'', c.n, c.k, x.username, x.request_id, x.txid, x.at, $3, '
        '         x.request_path, x.request_method '
        '  FROM rows c, relay.change_context() x ORDER BY %5$s RETURNING 1) '
        'SELECT (SELECT count(*) FROM keys), (SELECT count(*) FROM written), '
        '       (SELECT ARRAY[%10$s] FROM keys ORDER BY %11$s LIMIT 1)',
        cols, relay.backfill_source(tbl), relay.backfill_where(tbl, condition),
        after, ordered,
        relay.image_sql(tbl, 'r', (relay.options_of(tbl)).excluded), relay.pk_sql(tbl, 'r'),
        same, names, lasts, newest);
END
$$;

-- Why a table cannot be backfilled (not tracked, a partition of a tracked table, no primary
-- key, a key it cannot page through), or NULL: relay backfill asks before anything else.
CREATE OR REPLACE FUNCTION relay.backfill_problem(tbl oid) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM relay.tracked_tables t WHERE t.tbl = backfill_problem.tbl) THEN
        IF relay.tracked_ancestor(tbl) IS NOT NULL THEN
            RETURN format('%s is a partition of tracked table %s: backfill that table',
                          tbl::regclass, relay.tracked_ancestor(tbl)::regclass);
        END IF;
        RETURN format('%s is not tracked (relay track %s first)', tbl::regclass, tbl::regclass);
    END IF;
    PERFORM relay.backfill_sql(tbl, '', true);
    RETURN NULL;
EXCEPTION WHEN invalid_parameter_value OR feature_not_supported THEN
    RETURN SQLERRM;
END
$$;

-- One chunk of a backfill of tbl: snapshots of up to `chunk` more rows (those `where_clause`
-- selects, an SQL condition on the table's columns; functions in it must be schema-qualified),
-- for `webhook` alone or, when NULL, for every rule. Returns how many rows it went past: 0 once
-- the backfill is complete (a row deleted or changed under it counts, its live change goes).
-- Call it until it returns 0, committing in between:
--
--     DO $$ BEGIN WHILE relay.backfill('public.orders') > 0 LOOP COMMIT; END LOOP; END $$;
--
-- A call after an interruption goes on where the last committed chunk ended; a call once it is
-- complete does nothing, unless `again` starts a new one. Runs with the caller's rights (the
-- rows are read as the caller would read them, and it needs INSERT on relay.outbox): nobody
-- else may call it, and nothing in it runs with relay's rights. Row security is off: a policy
-- that would hide rows makes it fail rather than leave them out. Output settings are pinned as
-- capture pins them, so a snapshot's image is the text an INSERT of that row would have had.
-- The where clause is read with standard_conforming_strings on whatever the session's setting
-- (a backslash in a string is a backslash), so that it means the same in every session that
-- goes on with the backfill (relay.backfill_where).
CREATE OR REPLACE FUNCTION relay.backfill(tbl regclass, where_clause text DEFAULT NULL,
                                          webhook text DEFAULT NULL, chunk integer DEFAULT 1000,
                                          again boolean DEFAULT false) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD'
SET IntervalStyle = 'postgres' SET bytea_output = 'hex' SET extra_float_digits = 1
SET lc_monetary = 'C' SET row_security = off SET lock_timeout = '200ms'
SET standard_conforming_strings = on AS $$
DECLARE
    condition text := coalesce(nullif(btrim(where_clause), ''), '');
    problem   text;
    counting  text;
    hook      bigint;
    job       relay.backfills;
    total     bigint;
    passed    bigint;
    written   bigint;
    last      text[];
BEGIN
    IF chunk IS NULL OR chunk < 1 OR chunk > 1000000 THEN
        RAISE EXCEPTION 'backfill: chunk must be from 1 to 1000000 rows'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    problem := relay.backfill_problem(tbl);
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'backfill: %', problem USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF webhook IS NOT NULL THEN
        SELECT w.id INTO hook FROM relay.webhooks w WHERE w.name = webhook;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'backfill: no webhook named "%"', webhook
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    SELECT * INTO job FROM relay.backfills b
    WHERE b.tbl = backfill.tbl AND b.where_clause = condition
      AND b.webhook_id IS NOT DISTINCT FROM hook
    ORDER BY b.id DESC LIMIT 1 FOR UPDATE;
    IF NOT FOUND OR job.finished_at IS NOT NULL AND again THEN
        counting := format('SELECT count(*) FROM %s r WHERE %s', relay.backfill_source(tbl),
                           relay.backfill_where(tbl, condition));
        BEGIN
            EXECUTE counting INTO total;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE;  -- the table or a row policy refuses the caller: say so as it is
        WHEN syntax_error_or_access_rule_violation OR data_exception THEN
            RAISE EXCEPTION 'backfill of %: the where clause does not work: % (it is SQL on the table''s columns; call functions by schema-qualified names)',
                tbl, SQLERRM USING ERRCODE = 'invalid_parameter_value';
        END;
        INSERT INTO relay.backfills (tbl, where_clause, webhook_id, rows_total)
        VALUES (tbl, condition, hook, total)
        ON CONFLICT DO NOTHING;
        -- ON CONFLICT: another session started the same backfill meanwhile; go on with it.
        SELECT * INTO job FROM relay.backfills b
        WHERE b.tbl = backfill.tbl AND b.where_clause = condition
          AND b.webhook_id IS NOT DISTINCT FROM hook AND b.finished_at IS NULL
        ORDER BY b.id DESC LIMIT 1 FOR UPDATE;
    ELSIF job.finished_at IS NOT NULL THEN
        RETURN 0;
    END IF;
    EXECUTE relay.backfill_sql(tbl, condition, job.last_key IS NOT NULL)
    INTO passed, written, last
    USING job.last_key, chunk, hook;
    UPDATE relay.backfills b
    SET last_key = coalesce(last, b.last_key), rows_done = b.rows_done + written,
        updated_at = now(), finished_at = CASE WHEN passed = 0 THEN now() END
    WHERE b.id = job.id;
    IF written > 0 THEN
        PERFORM relay.wake();
    END IF;
    RETURN passed;
END
$$;
