-- 0021 backfill and replay: send the rows that exist, send again what was sent.
--
-- Backfill (relay.backfill, `relay backfill`): one outbox row per existing row of a tracked
-- table, op 'snapshot', in primary-key order, a chunk per call (per transaction), resumable
-- from relay.backfills. It goes through fan-out like any change, so it keeps every guarantee of
-- one. Per-row order beside live writes: each chunk takes FOR SHARE locks on its rows before it
-- writes their snapshots. A writer that updates or deletes one of them meanwhile waits for the
-- chunk's commit, so its change gets a later outbox id than the snapshot. A writer that got
-- there first makes the chunk wait for its commit, and the snapshot (later id) then holds the
-- row as that writer left it. Either way a snapshot is never delivered after a newer change of
-- its row. The chunk gives up after lock_timeout rather than hold up a writer long
-- enough to risk a deadlock in the application (relay backfill tries the chunk again).
--
-- Replay (`relay replay`): deliveries of changes still in the outbox made pending again for one
-- webhook, flagged replay so that the attempt log and the request (X-Relay-Replay) say so.

ALTER TYPE relay.change_op ADD VALUE 'snapshot';

-- A change for one webhook only (a backfill with a webhook): fan-out matches it against that
-- webhook's rules alone, whatever events they name. No foreign key: a change for a webhook
-- deleted since is skipped, never sent to every rule instead.
ALTER TABLE relay.outbox ADD COLUMN webhook_id bigint;

ALTER TABLE relay.deliveries ADD COLUMN replay boolean NOT NULL DEFAULT false;
ALTER TABLE relay.attempts ADD COLUMN replay boolean NOT NULL DEFAULT false;

COMMENT ON COLUMN relay.outbox.webhook_id IS
    'Only this webhook receives the change (a backfill for one webhook); NULL: every matching rule.';
COMMENT ON COLUMN relay.deliveries.replay IS
    'Made pending again by relay replay: its attempts are logged as replays.';
COMMENT ON COLUMN relay.attempts.replay IS 'The attempt was a replay (relay replay).';

-- Rules may name the snapshot event (changes written by relay.backfill).
CREATE OR REPLACE FUNCTION relay.check_event_rule() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    bad     text;
    problem text;
BEGIN
    IF btrim(NEW.name) = '' THEN
        RAISE EXCEPTION 'event rule name must not be empty' USING ERRCODE = 'check_violation';
    END IF;
    NEW.events := ARRAY(SELECT DISTINCT lower(e) FROM unnest(NEW.events) e ORDER BY 1);
    IF cardinality(NEW.events) = 0 THEN
        RAISE EXCEPTION 'event rule "%": events must name at least one of insert, update, delete, truncate, snapshot',
            NEW.name USING ERRCODE = 'check_violation';
    END IF;
    SELECT e INTO bad FROM unnest(NEW.events) e
    WHERE e IS NULL OR e NOT IN ('insert', 'update', 'delete', 'truncate', 'snapshot') LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'event rule "%": unknown event "%" (use insert, update, delete, truncate or snapshot)',
            NEW.name, bad USING ERRCODE = 'check_violation';
    END IF;
    IF cardinality(NEW.tables) = 0 THEN
        RAISE EXCEPTION 'event rule "%": tables must name at least one schema.table', NEW.name
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT t INTO bad FROM unnest(NEW.tables) t
    WHERE t IS NULL OR t !~ '^("([^"]|"")+"|[^."]+)\.("([^"]|"")+"|[^."]+)$' LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'event rule "%": "%" is not a schema-qualified table name such as public.orders (double-quote a name that holds a dot: "my.schema"."my.table")',
            NEW.name, bad USING ERRCODE = 'check_violation';
    END IF;
    problem := relay.conditions_problem(NEW.conditions);
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'event rule "%": %', NEW.name, problem USING ERRCODE = 'check_violation';
    END IF;
    IF jsonb_typeof(NEW.action_data) <> 'object' THEN
        RAISE EXCEPTION 'event rule "%": action_data must be a JSON object', NEW.name
            USING ERRCODE = 'check_violation';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

-- One row per backfill: where it is (the key of the last row it went past, as text) and how far.
-- A run with the same table, filter and webhook goes on from last_key while finished_at is NULL.
CREATE TABLE relay.backfills (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tbl          regclass    NOT NULL,
    where_clause text        NOT NULL DEFAULT '',
    webhook_id   bigint      REFERENCES relay.webhooks (id) ON DELETE CASCADE,
    last_key     text[],
    rows_total   bigint      NOT NULL,
    rows_done    bigint      NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE UNIQUE INDEX backfills_running ON relay.backfills (tbl, where_clause, coalesce(webhook_id, 0))
    WHERE finished_at IS NULL;

COMMENT ON TABLE relay.backfills IS
    'Backfills (relay.backfill): where each is, rows_total counted when it started.';

-- A type with its domains taken off (a domain over a domain too), and the type modifier that
-- applies: the base type's own values, read without any domain's CHECK.
CREATE FUNCTION relay.base_type(typ oid, mod integer, OUT base oid, OUT typmod integer)
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
CREATE FUNCTION relay.type_children(typ oid) RETURNS SETOF oid
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
CREATE FUNCTION relay.typed_inside(typ oid) RETURNS regtype
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
CREATE FUNCTION relay.backfill_keys(tbl oid)
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
CREATE FUNCTION relay.backfill_source(tbl oid) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN relkind = 'p' THEN '' ELSE 'ONLY ' END || oid::regclass::text
    FROM pg_class WHERE oid = tbl
$$;

-- Why a table cannot be backfilled (not tracked, a partition of a tracked table, no primary
-- key, a key it cannot page through), or NULL: relay backfill asks before anything else.
CREATE FUNCTION relay.backfill_problem(tbl oid) RETURNS text
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

-- The statement that writes one chunk of a backfill of tbl (relay.backfill runs it with the
-- last key as text in $1, the chunk's size in $2 and the webhook in $3): the next keys in key
-- order, read without locks; then those rows, locked FOR SHARE, as they are now (a row changed
-- meanwhile is read as its writer left it; one deleted, or no longer selected by the condition,
-- is left out: its live change speaks for it); their snapshots, written in key order. Returns
-- the keys it went past, the snapshots it wrote, and the last key as text.
CREATE FUNCTION relay.backfill_sql(tbl oid, condition text, resume boolean) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
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
        cols, relay.backfill_source(tbl),
        CASE WHEN condition = '' THEN 'true' ELSE '(' || condition || E'\n)' END,
        after, ordered,
        relay.image_sql(tbl, 'r', (relay.options_of(tbl)).excluded), relay.pk_sql(tbl, 'r'),
        same, names, lasts, newest);
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
CREATE FUNCTION relay.backfill(tbl regclass, where_clause text DEFAULT NULL,
                               webhook text DEFAULT NULL, chunk integer DEFAULT 1000,
                               again boolean DEFAULT false) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD'
SET IntervalStyle = 'postgres' SET bytea_output = 'hex' SET extra_float_digits = 1
SET lc_monetary = 'C' SET row_security = off SET lock_timeout = '200ms' AS $$
DECLARE
    condition text := coalesce(nullif(btrim(where_clause), ''), '');
    problem   text;
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
        BEGIN
            EXECUTE format('SELECT count(*) FROM %s r WHERE %s', relay.backfill_source(tbl),
                           CASE WHEN condition = '' THEN 'true' ELSE '(' || condition || E'\n)' END)
                INTO total;
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

REVOKE ALL ON FUNCTION relay.backfill(regclass, text, text, integer, boolean),
    relay.backfill_keys(oid), relay.backfill_sql(oid, text, boolean), relay.backfill_source(oid),
    relay.backfill_problem(oid), relay.base_type(oid, integer), relay.typed_inside(oid),
    relay.type_children(oid) FROM PUBLIC;

-- A replay's deliveries must outlive retention until they are sent: purge_changes skips a
-- change with a delivery pending (through the primary key of relay.deliveries).

INSERT INTO relay.migrations (version, name) VALUES (21, 'backfill_replay');
