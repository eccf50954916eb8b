-- 0022 backfill where: a backfill's where clause can only narrow the rows.
--
-- relay.backfill writes the where clause into its statements as text, in parentheses. Text that
-- closed them reached the rest of the statement: `v > 100) OR (true` made every chunk write every
-- row of the table. relay.backfill_where now checks the clause with PostgreSQL's own parser,
-- right before each statement that holds it, and is the one place that puts it into SQL.

-- The where clause of a backfill of tbl, checked, as SQL to put after WHERE or AND: the clause
-- in parentheses, the closing one on a line of its own (it ends a trailing -- comment); 'true'
-- for ''. Why it can only narrow the rows:
--
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
CREATE FUNCTION relay.backfill_where(tbl oid, where_clause text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    source text := relay.backfill_source(tbl);
BEGIN
    IF where_clause = '' THEN
        RETURN 'true';
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

-- As in 0021, but the condition is relay.backfill_where's: checked right before the chunk
-- statement it goes into. Volatile: the check plans statements (EXPLAIN).
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
        '                            txid, created_at, webhook_id) '
        '  SELECT %9$s, ''snapshot'', c.n, c.k, x.username, x.request_id, x.txid, x.at, $3 '
        '  FROM rows c, relay.change_context() x ORDER BY %5$s RETURNING 1) '
        'SELECT (SELECT count(*) FROM keys), (SELECT count(*) FROM written), '
        '       (SELECT ARRAY[%10$s] FROM keys ORDER BY %11$s LIMIT 1)',
        cols, relay.backfill_source(tbl), relay.backfill_where(tbl, condition),
        after, ordered,
        relay.image_sql(tbl, 'r', (relay.options_of(tbl)).excluded), relay.pk_sql(tbl, 'r'),
        same, names, lasts, newest);
END
$$;

-- As in 0021, but the count's condition is relay.backfill_where's too, and the clause is read
-- with standard_conforming_strings on whatever the session's setting (a backslash in a string
-- is a backslash), so that it means the same in every session that goes on with the backfill.
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

REVOKE ALL ON FUNCTION relay.backfill_where(oid, text) FROM PUBLIC;

INSERT INTO relay.migrations (version, name) VALUES (22, 'backfill_where');
