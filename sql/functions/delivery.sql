-- Delivery: what the delivery tables' triggers and relay run's queries call.
--
-- Every function of schema relay is defined once, as it is now, in a file of sql/functions/; the
-- installer runs these files after the migrations, in one transaction (sql/install.sql).

-- `UPDATE relay.outbox SET status = 'pending' WHERE status = 'failed' AND ...` is all it takes
-- to send a change again: this trigger makes the row look new to the fan-out (which re-arms
-- only the deliveries that failed; requeued_at lets it find the row without a scan) and wakes
-- the relays. Writers only INSERT into the outbox, so it costs them nothing.
CREATE OR REPLACE FUNCTION relay.requeue() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    NEW.fanned_out_at := NULL;
    NEW.processed_at := NULL;
    NEW.last_error := NULL;
    NEW.requeued_at := now();
    PERFORM pg_notify('relay_outbox', '');
    RETURN NEW;
END
$$;

-- Fresh planner statistics for the delivery tables, on the relay's request. A burst of changes
-- (the first backlog after install, a bulk UPDATE) fills relay.outbox and relay.deliveries long
-- before autovacuum's next look. relay run calls this after its first 5,000 changes of a
-- session and again each time that count doubles; the service role does not own the tables,
-- hence SECURITY DEFINER. Measured before the claim query was made robust to missing
-- statistics: 300 ms per claim without them, 3 ms with.
CREATE OR REPLACE FUNCTION relay.refresh_statistics() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    ANALYZE relay.deliveries;
    ANALYZE relay.outbox;
END
$$;

-- The key a row had before an UPDATE that changed it (a key move), as jsonb like pk; NULL when
-- the UPDATE left the key as it was. Key members are read from the old image, whose json may
-- hold escapes jsonb refuses (\u0000, lone surrogates): relay.key_before_escaped reads those.
CREATE OR REPLACE FUNCTION relay.key_before_escaped(pk json, old json) RETURNS jsonb
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

CREATE OR REPLACE FUNCTION relay.key_before(pk json, old json) RETURNS jsonb
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN strpos(old::text, '\u') = 0
                THEN nullif((SELECT jsonb_object_agg(k, (old -> k)::jsonb)
                             FROM json_object_keys(pk) k), pk::jsonb)
                ELSE relay.key_before_escaped(pk, old) END
$$;

-- Whether no earlier delivery pending for the webhook shares a key with this one (row key
-- `key`, and `old_key` for a key move) through a key move: its old key is one of ours, or ours
-- is its new key. The claim calls it only while the webhook has a key move pending: planned
-- into every claim, these lookups cost 0.2 ms a claim for a rare case. SQL, not plpgsql, and no
-- SET clause, so that PostgreSQL inlines it: under 10 us a call rather than 50. Inlined, it is
-- read with the caller's search path: so every function and operator in it is named with its
-- schema. Old keys are counted, not min() or EXISTS: those were planned, before statistics, as a
-- walk of the primary key in outbox_id order, 100,000 entries per candidate (a claim took
-- minutes); the count is a lookup in the partial index deliveries_old_keys.
CREATE OR REPLACE FUNCTION relay.clear_of_key_moves(webhook bigint, outbox bigint, key text,
                                                    old_key text)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT (SELECT pg_catalog.count(*) FROM relay.deliveries e
            WHERE e.webhook_id OPERATOR(pg_catalog.=) webhook
              AND e.old_row_key OPERATOR(pg_catalog.=) key
              AND e.outbox_id OPERATOR(pg_catalog.<) outbox
              AND e.status OPERATOR(pg_catalog.=) 'pending'::relay.delivery_status)
           OPERATOR(pg_catalog.=) 0
       AND (old_key IS NULL OR (
            (SELECT pg_catalog.count(*) FROM relay.deliveries e
             WHERE e.webhook_id OPERATOR(pg_catalog.=) webhook
               AND e.old_row_key OPERATOR(pg_catalog.=) old_key
               AND e.outbox_id OPERATOR(pg_catalog.<) outbox
               AND e.status OPERATOR(pg_catalog.=) 'pending'::relay.delivery_status)
            OPERATOR(pg_catalog.=) 0
            AND outbox OPERATOR(pg_catalog.<=) coalesce(
                (SELECT pg_catalog.min(e.outbox_id) FROM relay.deliveries e
                 WHERE e.webhook_id OPERATOR(pg_catalog.=) webhook
                   AND e.row_key OPERATOR(pg_catalog.=) old_key
                   AND e.status OPERATOR(pg_catalog.=) 'pending'::relay.delivery_status),
                outbox)))
$$;

-- The requests leased to anyone for each of these webhooks (a batch is one request; a lease past
-- its end counts nothing: its relay died or gave up), for the claim of a webhook with a
-- concurrency (sql/queries.sql, claim_deliveries and claim_batch), but the deliveries the
-- claiming relay (relay_id) holds and names as answered (answered_webhooks, answered_outbox:
-- pairs): their receiver has answered and their outcome is on its way to the database, so they
-- are not in flight, and the next request may go now rather than a write later.
-- Each webhook's count is taken under a transaction lock of its own, taken in id order, so two
-- relays claiming for the same webhook count one after the other: the second counts, with a
-- snapshot taken after the lock, what the first leased, and together they never lease more
-- than the webhook's concurrency.
-- plpgsql and VOLATILE for that fresh snapshot: a count in the claim statement itself would see
-- the statement's snapshot, taken before the lock. The count reads deliveries_leased (0026).
CREATE OR REPLACE FUNCTION relay.leased_requests(webhooks bigint[], relay_id text,
                                                 answered_webhooks bigint[],
                                                 answered_outbox bigint[])
RETURNS TABLE (webhook bigint, requests bigint)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    hook bigint;
BEGIN
    FOREACH hook IN ARRAY ARRAY(SELECT DISTINCT u.id FROM unnest(webhooks) AS u (id) ORDER BY u.id)
    LOOP
        PERFORM pg_advisory_xact_lock(hashtext('relay.leased_requests'),
                                      (hook % 2147483647)::int);
    END LOOP;
    RETURN QUERY
        SELECT u.id,
               (SELECT count(*) FILTER (WHERE d.batch_id IS NULL) + count(DISTINCT d.batch_id)
                FROM relay.deliveries d
                WHERE d.webhook_id = u.id AND d.status = 'pending'
                  AND d.leased_until IS NOT NULL AND d.leased_until >= now()
                  AND NOT (d.leased_by = relay_id AND (d.webhook_id, d.outbox_id) IN (
                      SELECT a.webhook, a.outbox
                      FROM unnest(answered_webhooks, answered_outbox) AS a (webhook, outbox))))
        FROM unnest(webhooks) AS u (id);
END
$$;

-- Per-row order for ordered webhooks (0026_steering.sql): whether no pending delivery to the
-- webhook placed before this one (a smaller position) is of an earlier change of its row, under
-- either key of a key move (old keys looked up only while the webhook has a key move pending:
-- moves). Only deliveries placed before count, so that nothing ever waits for a delivery placed
-- after it and two order keys can never wait for each other. Inlined as clear_of_key_moves is
-- (no SET clause, everything named with its schema), and counts rather than EXISTS for the
-- same reason.
CREATE OR REPLACE FUNCTION relay.placed_first(webhook bigint, outbox bigint, placed bigint,
                                              key text, old_key text, moves boolean)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT (SELECT pg_catalog.count(*) FROM relay.deliveries e
            WHERE e.webhook_id OPERATOR(pg_catalog.=) webhook
              AND e.row_key OPERATOR(pg_catalog.=) key
              AND e.outbox_id OPERATOR(pg_catalog.<) outbox
              AND e.status OPERATOR(pg_catalog.=) 'pending'::relay.delivery_status
              AND e.position OPERATOR(pg_catalog.<) placed)
           OPERATOR(pg_catalog.=) 0
       AND (NOT moves OR (
            (SELECT pg_catalog.count(*) FROM relay.deliveries e
             WHERE e.webhook_id OPERATOR(pg_catalog.=) webhook
               AND e.old_row_key OPERATOR(pg_catalog.=) key
               AND e.outbox_id OPERATOR(pg_catalog.<) outbox
               AND e.status OPERATOR(pg_catalog.=) 'pending'::relay.delivery_status
               AND e.position OPERATOR(pg_catalog.<) placed)
            OPERATOR(pg_catalog.=) 0
            AND (old_key IS NULL OR (
                 (SELECT pg_catalog.count(*) FROM relay.deliveries e
                  WHERE e.webhook_id OPERATOR(pg_catalog.=) webhook
                    AND e.old_row_key OPERATOR(pg_catalog.=) old_key
                    AND e.outbox_id OPERATOR(pg_catalog.<) outbox
                    AND e.status OPERATOR(pg_catalog.=) 'pending'::relay.delivery_status
                    AND e.position OPERATOR(pg_catalog.<) placed)
                 OPERATOR(pg_catalog.=) 0
                 AND (SELECT pg_catalog.count(*) FROM relay.deliveries e
                      WHERE e.webhook_id OPERATOR(pg_catalog.=) webhook
                        AND e.row_key OPERATOR(pg_catalog.=) old_key
                        AND e.outbox_id OPERATOR(pg_catalog.<) outbox
                        AND e.status OPERATOR(pg_catalog.=) 'pending'::relay.delivery_status
                        AND e.position OPERATOR(pg_catalog.<) placed)
                 OPERATOR(pg_catalog.=) 0))))
$$;

-- The order key a delivery is written with (add_deliveries, rearm_deliveries): the rendered
-- one (plan.py), unless the webhook's ordering, as relay.webhooks has it now, says otherwise: a
-- relay that fanned out under rules from before an ordering change (it reloads them within a
-- second) would write a key in row scope, or none in an ordered one, and a row's changes would
-- then be claimed under two scopes, the later first (relay.rekey_deliveries, rules.sql). In
-- key scope a delivery written without a key takes '' (its key is not known here).
CREATE OR REPLACE FUNCTION relay.order_key_now(webhook bigint, rendered text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN w.ordering = 'row' THEN NULL
                WHEN w.ordering = 'transaction' THEN ''
                ELSE coalesce(rendered, '') END
    FROM relay.webhooks w WHERE w.id = webhook
$$;

-- The fence: a session of `relay run` (its connections are named 'relay run <relay id>') may
-- write deliveries only if it was built for the schema version installed. Each such session
-- says which in its startup options (relay.schema_version; relay/delivery/worker.py); a relay
-- of a release before 0023 says nothing. So a relay left running across an upgrade, by
-- mistake or on another host, stops delivering the moment the upgrade commits: its claims fail
-- with this error, and nothing goes out under ids of its own making, until it is restarted on
-- the new release (which then refuses to start on a schema newer than itself). A statement
-- trigger: it costs a statement, not a row.
CREATE OR REPLACE FUNCTION relay.refuse_other_releases() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    built     text := coalesce(nullif(current_setting('relay.schema_version', true), ''),
                               'an older one');
    installed text := (SELECT max(version)::text FROM relay.migrations);
BEGIN
    IF built IS DISTINCT FROM installed THEN
        RAISE EXCEPTION 'this relay was built for relay schema version %, the database has %: run the relay of the release that installed it',
            built, installed USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN NULL;
END
$$;

-- The rows a webhook's `related` option nests in `data` (0028_related.sql; docs/rules.md):
-- for `fk_column` of the tracked table schema_name.table_name, the rows of the table its
-- single-column foreign key references whose key is one of `keys` (the key values' text, as the
-- captured image writes them), each as JSON of the key and `columns`, built as the capture builds
-- an image (relay.fields_sql: no cast to json, no operator of another role: a column of another
-- role's type is written as its text output). Returns the position in `keys` of each key found;
-- a key not found has no row. Nothing when the table has no column `fk_column` (a webhook's
-- rules may cover tables that do not).
--
-- relay run calls it when it renders, once per claim and (table, column): with the service
-- role's rights (not SECURITY DEFINER), which must include SELECT on the referenced table
-- (the error says which GRANT to run). Only code PostgreSQL itself defines runs: the key must be
-- of a type of pg_catalog, cast from text with that type's input and compared with
-- OPERATOR(pg_catalog.=); a table with row-level security is refused (its policies are its
-- owner's code; row_security = off makes sure none applies unseen); the search path is pinned.
CREATE OR REPLACE FUNCTION relay.related_rows(schema_name text, table_name text,
                                              fk_column text, nested_as text, columns text[],
                                              keys text[])
RETURNS TABLE (i bigint, "row" json)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp SET row_security = off AS $$
DECLARE
    tbl      oid;
    what     text;
    ref_what text;
    fk_num   int2;
    refs     int;
    ref      oid;
    ref_nsp  name;
    ref_name name;
    ref_kind "char";
    ref_rls  boolean;
    key_num  int2;
    key_col  name;
    key_nsp  name;
    key_type name;
    wanted   int2[];
    missing  text;
BEGIN
    SELECT c.oid, format('%I.%I', n.nspname, c.relname) INTO tbl, what
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = schema_name AND c.relname = table_name;
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'related: table %.% does not exist', quote_ident(schema_name),
            quote_ident(table_name);
    END IF;
    SELECT a.attnum INTO fk_num FROM pg_attribute a
    WHERE a.attrelid = tbl AND a.attname = fk_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF fk_num IS NULL THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = nested_as
               AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'related: % has a column % already, which the row % references would hide under the same name: take % out of related',
            what, quote_ident(nested_as), quote_ident(fk_column), to_json(fk_column);
    END IF;
    -- Its single-column foreign keys, each to the referenced table itself (a foreign key to a
    -- partitioned table has a constraint per partition too: those are left out).
    SELECT count(DISTINCT (k.confrelid, k.confkey[1])), min(k.confrelid), min(k.confkey[1])
    INTO refs, ref, key_num
    FROM pg_constraint k JOIN pg_class r ON r.oid = k.confrelid
    WHERE k.conrelid = tbl AND k.contype = 'f' AND k.conkey = ARRAY[fk_num]
      AND NOT r.relispartition;
    IF refs = 0 THEN
        IF EXISTS (SELECT FROM pg_constraint k
                   WHERE k.conrelid = tbl AND k.contype = 'f' AND fk_num = ANY (k.conkey)) THEN
            RAISE EXCEPTION 'related: %.% is part of a foreign key of several columns: only a single-column foreign key can be followed',
                what, quote_ident(fk_column);
        END IF;
        RAISE EXCEPTION 'related: %.% is not a foreign key: take % out of related, or add the foreign key',
            what, quote_ident(fk_column), to_json(fk_column);
    ELSIF refs > 1 THEN
        RAISE EXCEPTION 'related: %.% has foreign keys to more than one table: relay cannot tell which row to nest',
            what, quote_ident(fk_column);
    END IF;
    SELECT n.nspname, c.relname, c.relkind, c.relrowsecurity
    INTO ref_nsp, ref_name, ref_kind, ref_rls
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ref;
    ref_what := format('%I.%I', ref_nsp, ref_name);
    IF ref_rls THEN
        RAISE EXCEPTION 'related: % has row-level security: relay does not read it (its policies are code of another role)',
            ref_what;
    END IF;
    SELECT a.attname, n.nspname, t.typname INTO key_col, key_nsp, key_type
    FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
    JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE a.attrelid = ref AND a.attnum = key_num;
    IF key_nsp <> 'pg_catalog' THEN
        RAISE EXCEPTION 'related: the key %.% is of type %.%, not one of PostgreSQL''s own: relay compares only keys of pg_catalog types (another type brings its own = operator)',
            ref_what, quote_ident(key_col), quote_ident(key_nsp), quote_ident(key_type);
    END IF;
    -- The object-identifier aliases (regclass, regproc, regtype, regrole...) read their text by
    -- looking the name up: a key naming something dropped since would fail the whole lookup,
    -- and every delivery waiting on it, for ever (not as a value the type cannot read).
    IF key_type LIKE 'reg%' THEN
        RAISE EXCEPTION 'related: the key %.% is of type %, whose values are names looked up when read: relay follows keys of value types only (integers, text, uuid...)',
            ref_what, quote_ident(key_col), key_type;
    END IF;
    SELECT string_agg(to_json(c)::text, ', ' ORDER BY o) INTO missing
    FROM unnest(columns) WITH ORDINALITY u(c, o)
    WHERE NOT EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = ref AND a.attname = u.c
                      AND a.attnum > 0 AND NOT a.attisdropped);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'related: % (which %.% references) has no column %', ref_what, what,
            quote_ident(fk_column), missing;
    END IF;
    wanted := ARRAY(SELECT a.attnum FROM pg_attribute a
                    WHERE a.attrelid = ref AND (a.attname = ANY (columns) OR a.attnum = key_num)
                      AND a.attnum > 0 AND NOT a.attisdropped);
    IF NOT has_schema_privilege(ref_nsp, 'USAGE')
       OR EXISTS (SELECT FROM unnest(wanted) w WHERE NOT has_column_privilege(ref, w, 'SELECT')) THEN
        RAISE EXCEPTION 'related: % cannot read %: run GRANT USAGE ON SCHEMA % TO %; GRANT SELECT ON % TO %',
            quote_ident(current_user), ref_what, quote_ident(ref_nsp), quote_ident(current_user),
            ref_what, quote_ident(current_user)
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT k.i, %s FROM pg_catalog.unnest($1) WITH ORDINALITY k(v, i) '
        'JOIN %s %s r ON r.%I OPERATOR(pg_catalog.=) k.v::pg_catalog.%I',
        relay.fields_sql(ref, 'r', 0,
                         ARRAY(SELECT a.attnum FROM pg_attribute a
                               WHERE a.attrelid = ref AND a.attnum > 0
                                 AND a.attnum <> ALL (wanted))),
        CASE WHEN ref_kind = 'p' THEN '' ELSE 'ONLY' END, ref_what, key_col, key_type)
    USING keys;
END
$$;
