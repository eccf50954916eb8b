-- 0011 json images: the outbox keeps row images and keys as json text, not jsonb.
--
-- Why (docs/benchmarks.md, "Capture"): the relay only ever reads images as text, yet every
-- application write paid for building a jsonb tree and serialising it. A 1,000,000-row UPDATE
-- of pgbench_accounts took 12.4 s tracked with jsonb images and 10.0 s with json (2.6 s
-- untracked). What changes for readers:
-- * The text of an image is what PostgreSQL's json functions write: `{"id" : 1, "name" : "x"}`,
--   keys in column order; a json column's value is kept exactly as stored (jsonb could not hold
--   a \u0000 escape or a huge exponent, which were written as strings before); floats keep
--   their shortest exact digits (to_jsonb rounded them to 15).
-- * SQL on images uses the json operators (->, ->>, #>>), which work as before; jsonb ones
--   (@>, ?, =) need a cast: new::jsonb.
-- * The relay orders a row's changes by the key's jsonb text (pk::jsonb::text): the same text
--   as before this migration, so changes captured before and after it keep their order.
--
-- A table whose columns are all of PostgreSQL's own types (and with no excluded column) gets
-- its images from to_json(row) in one call: for those types to_json never looks for a cast, and
-- the generated function's first query stops before any image is built when a column of another
-- type appears (relay.shape_matches, 0007).

ALTER TABLE relay.outbox
    ALTER COLUMN old TYPE json USING old::json,
    ALTER COLUMN new TYPE json USING new::json,
    ALTER COLUMN pk TYPE json USING pk::json;

DROP FUNCTION relay.text_value(anyelement), relay.text_array_value(anyarray);

-- A value of a type that is not PostgreSQL's own, as a JSON string of its text output. format()
-- calls the type's output function directly; a cast (to json or text) could be anyone's code.
CREATE FUNCTION relay.text_value(value anyelement) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN pg_catalog.num_nulls(value) = 1 THEN NULL
                ELSE pg_catalog.to_json(pg_catalog.format('%s', value)) END
$$;

-- An array of such values: a JSON array of their text outputs when it has one dimension, else
-- the array's text output.
CREATE FUNCTION relay.text_array_value(value anyarray) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN pg_catalog.num_nulls(value) = 1 THEN NULL
        WHEN pg_catalog.cardinality(value) = 0 THEN '[]'::pg_catalog.json
        WHEN pg_catalog.array_ndims(value) = 1 THEN (
            SELECT pg_catalog.json_agg(CASE WHEN pg_catalog.num_nulls(e) = 1 THEN NULL
                                            ELSE pg_catalog.to_json(pg_catalog.format('%s', e))
                                       END ORDER BY i)
            FROM pg_catalog.unnest(value) WITH ORDINALITY u(e, i))
        ELSE pg_catalog.to_json(pg_catalog.format('%s', value))
    END
$$;

-- One JSON object of the members of several (json_build_object takes at most 100 arguments, so
-- a table of more than 50 columns is written 50 columns at a time).
CREATE FUNCTION relay.json_join(parts json[]) RETURNS json
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ('{' || string_agg(substr(p::text, 2, length(p::text) - 2), ', ' ORDER BY i)
            || '}')::json
    FROM unnest(parts) WITH ORDINALITY u(p, i)
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

-- The primary key an UPDATE moved its row from (see 0009), from json images: the key columns
-- taken from the old image, as jsonb, NULL when the key stayed. Only the key's members are
-- converted to jsonb (their types all have btree ordering, which json lacks, so they hold no
-- json value jsonb refuses), never the whole image. PostgreSQL's json operators fail on an image
-- holding a \u0000 escape or a lone surrogate anywhere (a json column's value may): such images,
-- the only ones with a \u escape but for control characters, take relay.key_before_escaped.
DROP FUNCTION relay.key_before(jsonb, jsonb);
CREATE FUNCTION relay.key_before_escaped(pk json, old json) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN nullif((SELECT jsonb_object_agg(k, (old -> k)::jsonb) FROM json_object_keys(pk) k),
                  pk::jsonb);
EXCEPTION WHEN untranslatable_character OR invalid_text_representation THEN
    -- A key member holds no such escape (it is a value to_json wrote: it escapes only control
    -- characters): blank them all out and read the key. Escaped backslashes are written as
    -- \u005c first (the same character), so that a text holding a backslash and "u0000" is
    -- left as it is.
    old := regexp_replace(replace(old::text, '\\', '\u005c'),
                          '\\u(0000|[dD][89a-fA-F][0-9a-fA-F]{2})', '\\ufffd', 'g');
    RETURN nullif((SELECT jsonb_object_agg(k, (old -> k)::jsonb) FROM json_object_keys(pk) k),
                  pk::jsonb);
END
$$;
REVOKE ALL ON FUNCTION relay.key_before_escaped(json, json) FROM PUBLIC;

CREATE FUNCTION relay.key_before(pk json, old json) RETURNS jsonb
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN strpos(old::text, '\u') = 0
                THEN nullif((SELECT jsonb_object_agg(k, (old -> k)::jsonb)
                             FROM json_object_keys(pk) k), pk::jsonb)
                ELSE relay.key_before_escaped(pk, old) END
$$;
REVOKE ALL ON FUNCTION relay.key_before(json, json) FROM PUBLIC;

-- As in 0007, with json images: rows whose images are the same text are not recorded (compared
-- after excluded columns are left out); the many-row UPDATE pairs old and new images only
-- (hashing whole rows as well doubled what the hash join held, and made it spill to disk).
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
            'txid, created_at) '
            'SELECT %s, ''insert'', c.n, c.k, x.username, x.request_id, x.txid, x.at '
            'FROM (SELECT %s AS n, %s AS k FROM %s t OFFSET 0) c, %s',
            names, relay.image_sql(tbl, 't', opts.excluded), relay.pk_sql(tbl, 't'), new_rows,
            context);
    ELSIF event = 'delete' THEN
        RETURN format(
            'INSERT INTO relay.outbox (schema_name, table_name, op, old, pk, username, request_id, '
            'txid, created_at) '
            'SELECT %s, ''delete'', c.o, c.k, x.username, x.request_id, x.txid, x.at '
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
            'request_id, txid, created_at) '
            'SELECT %s, ''update'', c.o, c.n, c.k, x.username, x.request_id, x.txid, x.at '
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
        'request_id, txid, created_at) '
        'SELECT %s, ''update'', o.j, n.j, n.k, x.username, x.request_id, x.txid, x.at '
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

-- As in 0007, comparing json images as text.
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
            'txid, created_at) SELECT %s, ''insert'', c.n, c.k, x.username, x.request_id, x.txid, '
            'x.at FROM (SELECT %s AS n, %s AS k OFFSET 0) c, %s',
            names, relay.image_sql(tbl, new_ref, opts.excluded), relay.pk_sql(tbl, new_ref),
            context);
    ELSIF event = 'delete' THEN
        RETURN format(
            'INSERT INTO relay.outbox (schema_name, table_name, op, old, pk, username, request_id, '
            'txid, created_at) SELECT %s, ''delete'', c.o, c.k, x.username, x.request_id, x.txid, '
            'x.at FROM (SELECT %s AS o, %s AS k OFFSET 0) c, %s',
            names, relay.image_sql(tbl, old_ref, opts.excluded), relay.pk_sql(tbl, old_ref),
            context);
    END IF;
    watched := relay.watched_sql(tbl, opts.watched, old_ref, new_ref);
    RETURN format(
        'INSERT INTO relay.outbox (schema_name, table_name, op, old, new, pk, username, '
        'request_id, txid, created_at) '
        'SELECT %s, ''update'', c.o, c.n, c.k, x.username, x.request_id, x.txid, x.at '
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

-- Every tracked table's capture functions, written again for json images.
SELECT relay.write_capture(t.tbl) FROM relay.tracked_tables t
WHERE EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = t.tbl);

DROP FUNCTION relay.json_value(json), relay.json_value_checked(json),
    relay.json_array_value(json[]);

INSERT INTO relay.migrations (version, name) VALUES (11, 'json_images');
