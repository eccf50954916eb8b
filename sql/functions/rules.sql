-- Rules: the checks the webhook and event rule tables' triggers run, and the announcement of
-- every change to them.
--
-- Every function of schema relay is defined once, as it is now, in a file of sql/functions/; the
-- installer runs these files after the migrations, in one transaction (sql/install.sql).

-- Webhook and rule names are one line of visible text: relay prints names in its logs, its
-- commands' output and its errors, where a line break would split a log line in two and an
-- escape sequence would write to the operator's terminal. (Names stored before 0017 are left as
-- they are: an upgrade must not fail on old data.)
CREATE OR REPLACE FUNCTION relay.check_name() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.name ~ '[[:cntrl:]\u0080-\u009f\u2028\u2029]' THEN
        RAISE EXCEPTION '% name % holds a control character or a line break; use visible characters',
            CASE TG_TABLE_NAME WHEN 'webhooks' THEN 'webhook' ELSE 'event rule' END,
            to_json(NEW.name) USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

-- A model name (relay.track's model, the "model" of the webhook context: NetBox receivers
-- expect "device", object type "dcim.device", rather than a table name): 1 to 200 printable
-- ASCII characters without spaces, neither starting nor ending with a dot. No control, format or
-- line-separator character can reach a receiver's logs or an operator's terminal through it.
-- Without a SET clause (the operator is named with its schema).
CREATE OR REPLACE FUNCTION relay.is_model_name(name text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT name OPERATOR(pg_catalog.~) '^[!-\-/-~]([!-~]{0,198}[!-\-/-~])?$'
$$;

-- Levels of arrays and objects in doc (a scalar is 0, [] is 1), counted no further than cap + 1.
CREATE OR REPLACE FUNCTION relay.json_depth(doc jsonb, cap integer) RETURNS integer
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE walk (node, depth) AS (
        SELECT doc, 0
        UNION ALL
        SELECT children.child, walk.depth + 1
        FROM walk
        CROSS JOIN LATERAL (
            SELECT value FROM jsonb_array_elements(
                CASE WHEN jsonb_typeof(walk.node) = 'array' THEN walk.node END)
            UNION ALL
            SELECT value FROM jsonb_each(
                CASE WHEN jsonb_typeof(walk.node) = 'object' THEN walk.node END)
        ) AS children (child)
        WHERE walk.depth < cap
    )
    SELECT coalesce(max(depth + (jsonb_typeof(node) IN ('array', 'object'))::integer), 0)
    FROM walk
$$;

-- What is wrong with a conditions document (NetBox's syntax), or NULL, in the words
-- relay/rules/conditions.py's validate() uses: the tables' triggers refuse what relay could not
-- run. Documents nested more than 32 levels deep are refused (relay evaluates conditions
-- recursively). Both sides stay in step (a property test holds them to the same answers);
-- regular expressions are compiled by relay only (RE2 syntax).
CREATE OR REPLACE FUNCTION relay.conditions_problem(doc jsonb, here text DEFAULT 'conditions')
RETURNS text LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    logic   text;
    item    jsonb;
    i       integer := 0;
    problem text;
    op      text;
    unknown text;
BEGIN
    IF doc IS NULL OR doc = 'null'::jsonb OR doc = '{}'::jsonb THEN
        RETURN NULL;
    END IF;
    IF relay.json_depth(doc, 32) > 32 THEN
        RETURN format('%s: nested more than 32 levels deep', here);
    END IF;
    IF jsonb_typeof(doc) <> 'object' THEN
        RETURN format('%s must be an object, not %s', here, jsonb_typeof(doc));
    END IF;
    IF doc ? 'and' OR doc ? 'or' THEN
        logic := CASE WHEN doc ? 'and' THEN 'and' ELSE 'or' END;
        IF (SELECT count(*) FROM jsonb_object_keys(doc)) <> 1 THEN
            RETURN format('%s: a set holds only one key, "and" or "or"', here);
        END IF;
        IF jsonb_typeof(doc -> logic) <> 'array' OR jsonb_array_length(doc -> logic) = 0 THEN
            RETURN format('%s.%s must be a non-empty list', here, logic);
        END IF;
        FOR item IN SELECT jsonb_array_elements(doc -> logic) LOOP
            problem := relay.conditions_problem(item, format('%s.%s[%s]', here, logic, i));
            IF problem IS NOT NULL THEN
                RETURN problem;
            END IF;
            i := i + 1;
        END LOOP;
        RETURN NULL;
    END IF;
    SELECT string_agg(k, ', ' ORDER BY k) INTO unknown FROM jsonb_object_keys(doc) k
    WHERE k NOT IN ('attr', 'op', 'value', 'negate');
    IF unknown IS NOT NULL THEN
        RETURN format('%s: unknown key(s) %s', here, unknown);
    END IF;
    IF jsonb_typeof(doc -> 'attr') IS DISTINCT FROM 'string'
       OR doc ->> 'attr' = '' OR '' = ANY (string_to_array(doc ->> 'attr', '.')) THEN
        RETURN format('%s: "attr" must be a dotted path such as "data.status"', here);
    END IF;
    op := CASE WHEN NOT doc ? 'op' THEN 'eq'
               WHEN jsonb_typeof(doc -> 'op') = 'string' THEN doc ->> 'op'
               ELSE (doc -> 'op')::text END;
    IF op NOT IN ('eq', 'gt', 'gte', 'lt', 'lte', 'in', 'contains', 'regex', 'changed',
                  'unchanged') THEN
        RETURN format('%s: unknown op "%s" (use one of eq, gt, gte, lt, lte, in, contains, '
                      'regex, changed, unchanged)', here, op);
    END IF;
    IF doc ? 'negate' AND jsonb_typeof(doc -> 'negate') <> 'boolean' THEN
        RETURN format('%s: "negate" must be true or false', here);
    END IF;
    IF op IN ('changed', 'unchanged') THEN
        IF doc ? 'value' THEN
            RETURN format('%s: op "%s" takes no "value"', here, op);
        END IF;
        RETURN NULL;
    END IF;
    IF NOT doc ? 'value' THEN
        RETURN format('%s: op "%s" needs a "value"', here, op);
    END IF;
    IF op = 'in' AND jsonb_typeof(doc -> 'value') <> 'array' THEN
        RETURN format('%s: op "in" needs a list "value"', here);
    END IF;
    IF op = 'regex' AND jsonb_typeof(doc -> 'value') <> 'string' THEN
        RETURN format('%s: op "regex" needs a string "value"', here);
    END IF;
    RETURN NULL;
END
$$;

-- A webhook as relay can send it, refused in relay's words when it cannot be: its method, a
-- literal URL, its signature and secrets, its CA file and timeout, its steering, its default
-- body's format.
CREATE OR REPLACE FUNCTION relay.check_webhook() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    line    text;
    fk      text;
    columns jsonb;
BEGIN
    IF btrim(NEW.name) = '' THEN
        RAISE EXCEPTION 'webhook name must not be empty' USING ERRCODE = 'check_violation';
    END IF;
    NEW.http_method := upper(NEW.http_method);
    IF NEW.http_method NOT IN ('GET', 'POST', 'PUT', 'PATCH', 'DELETE') THEN
        RAISE EXCEPTION 'webhook "%": unknown http_method "%" (use GET, POST, PUT, PATCH or DELETE)',
            NEW.name, NEW.http_method USING ERRCODE = 'check_violation';
    END IF;
    -- A URL with Jinja2 in it is checked when it is rendered; a literal one is checked here.
    IF NEW.payload_url !~ '\{[{%]'
       AND NEW.payload_url !~* '^https?://([^/?#@\s]+@)?(\[[0-9a-f:.]+\]|[^/?#:@\s\[\]]+)(:[0-9]{1,5})?([/?#]\S*)?$'
    THEN
        RAISE EXCEPTION 'webhook "%": payload_url "%" is not an http:// or https:// URL with a host',
            NEW.name, NEW.payload_url USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.signature NOT IN ('netbox', 'standard', 'none') THEN
        RAISE EXCEPTION 'webhook "%": unknown signature "%" (use netbox, standard or none)',
            NEW.name, NEW.signature USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.signature = 'standard' THEN
        FOREACH line IN ARRAY regexp_split_to_array(NEW.secret, '\n') LOOP
            IF btrim(line) <> '' AND btrim(line) !~ '^whsec_[A-Za-z0-9+/]+={0,2}$' THEN
                RAISE EXCEPTION 'webhook "%": a Standard Webhooks secret is "whsec_" followed by base64, one per line',
                    NEW.name USING ERRCODE = 'check_violation';
            END IF;
        END LOOP;
        -- A rotation's previous secret signs beside it until its period ends
        -- (0033_secret_rotation.sql): one of another scheme, left by a change of signature in
        -- SQL, would fail every request of the period.
        IF NEW.previous_secret_until > now() THEN
            FOREACH line IN ARRAY regexp_split_to_array(NEW.previous_secret, '\n') LOOP
                IF btrim(line) <> '' AND btrim(line) !~ '^whsec_[A-Za-z0-9+/]+={0,2}$' THEN
                    RAISE EXCEPTION 'webhook "%": previous_secret cannot sign with signature standard (a Standard Webhooks secret is "whsec_" followed by base64): set previous_secret = '''', previous_secret_until = NULL with the change of signature',
                        NEW.name USING ERRCODE = 'check_violation';
                END IF;
            END LOOP;
        END IF;
    END IF;
    IF NEW.ca_file_path IS NOT NULL AND NOT NEW.ssl_verification THEN
        RAISE EXCEPTION 'webhook "%": ca_file_path is set but ssl_verification is off; turn verification on or clear the CA file',
            NEW.name USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.timeout_seconds <= 0 OR NEW.timeout_seconds > 300 THEN
        RAISE EXCEPTION 'webhook "%": timeout_seconds must be more than 0 and at most 300', NEW.name
            USING ERRCODE = 'check_violation';
    END IF;
    -- Steering (0026_steering.sql).
    IF (NEW.paused_at IS NULL) <> (NEW.paused_reason IS NULL)
       OR NEW.paused_reason NOT IN ('operator', 'dead') THEN
        RAISE EXCEPTION 'webhook "%": paused_at and paused_reason (operator or dead) are set together, or both NULL',
            NEW.name USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.concurrency < 1 OR NEW.concurrency > 10000 THEN
        RAISE EXCEPTION 'webhook "%": concurrency must be from 1 to 10000 (NULL: the relay''s RELAY_WEBHOOK_CONCURRENCY)',
            NEW.name USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.rate_limit < 0.001 OR NEW.rate_limit > 100000 THEN
        RAISE EXCEPTION 'webhook "%": rate_limit must be from 0.001 to 100000 requests a second (NULL: no limit)',
            NEW.name USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.dead_after_seconds < 60 OR NEW.dead_after_seconds > 31536000 THEN
        RAISE EXCEPTION 'webhook "%": dead_after_seconds must be from 60 to 31536000 (a year; NULL: the relay''s RELAY_DEAD_AFTER_SECONDS)',
            NEW.name USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.ordering NOT IN ('row', 'transaction', 'key') THEN
        RAISE EXCEPTION 'webhook "%": unknown ordering "%" (use row, transaction or key)',
            NEW.name, NEW.ordering USING ERRCODE = 'check_violation';
    END IF;
    IF (NEW.ordering = 'key') <> (coalesce(btrim(NEW.ordering_key), '') <> '') THEN
        RAISE EXCEPTION 'webhook "%": ordering_key is a template given with ordering = key, and only then',
            NEW.name USING ERRCODE = 'check_violation';
    END IF;
    -- The default body's shape (0028_body_format.sql).
    IF NEW.body_format NOT IN ('relay', 'netbox4') THEN
        RAISE EXCEPTION 'webhook "%": unknown body_format "%" (use relay or netbox4)',
            NEW.name, NEW.body_format USING ERRCODE = 'check_violation';
    END IF;
    -- related (0030_related.sql): NULL, or an object of at most 20 foreign-key column names,
    -- each to a list of 1 to 50 distinct names of the referenced table's columns; names are
    -- non-empty and at most 63 bytes (what PostgreSQL keeps of a name). Two columns may not
    -- nest under one name (site_id nests as site, any other column as <column>_object:
    -- relay/model.py's related_name). Whether the tables have such foreign keys and columns is
    -- the relay's to find when it sends (relay.related_rows), and `relay rules check`'s. Checked
    -- here, not in a function of its own: the service role, which may pause a webhook, may run
    -- no function of relay's but those it is granted.
    IF NEW.related IS NOT NULL
       AND (TG_OP = 'INSERT' OR NEW.related IS DISTINCT FROM OLD.related) THEN
        IF jsonb_typeof(NEW.related) <> 'object' OR NEW.related = '{}'::jsonb
           OR (SELECT count(*) FROM jsonb_object_keys(NEW.related)) > 20 THEN
            RAISE EXCEPTION 'webhook "%": related is an object of 1 to 20 foreign-key columns, each to a list of columns of the row it references: {"site_id": ["name", "slug"]}',
                NEW.name USING ERRCODE = 'check_violation';
        END IF;
        FOR fk, columns IN SELECT e.key, e.value FROM jsonb_each(NEW.related) e LOOP
            IF btrim(fk) = '' OR octet_length(fk) > 63 THEN
                RAISE EXCEPTION 'webhook "%": related: % is not a column name (1 to 63 bytes)',
                    NEW.name, to_json(fk) USING ERRCODE = 'check_violation';
            END IF;
            IF (CASE WHEN jsonb_typeof(columns) <> 'array' THEN true
                     ELSE jsonb_array_length(columns) NOT BETWEEN 1 AND 50 END)
               OR EXISTS (SELECT FROM jsonb_array_elements(columns) c
                          WHERE jsonb_typeof(c) <> 'string' OR btrim(c #>> '{}') = ''
                             OR octet_length(c #>> '{}') > 63)
               OR (SELECT count(DISTINCT c) <> count(*) FROM jsonb_array_elements_text(columns) c)
            THEN
                RAISE EXCEPTION 'webhook "%": related: % takes a list of 1 to 50 distinct column names (1 to 63 bytes each) of the row it references',
                    NEW.name, to_json(fk) USING ERRCODE = 'check_violation';
            END IF;
        END LOOP;
        IF (SELECT count(DISTINCT CASE WHEN k ~ '._id$' THEN left(k, -3) ELSE k || '_object' END)
            FROM jsonb_object_keys(NEW.related) k) <> (SELECT count(*) FROM jsonb_object_keys(NEW.related)) THEN
            RAISE EXCEPTION 'webhook "%": related: two of its columns would nest under one name (site_id nests as site, another column as <column>_object)',
                NEW.name USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.ordering IS DISTINCT FROM OLD.ordering THEN
        PERFORM relay.rekey_deliveries(NEW.id, OLD.ordering, NEW.ordering);
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.rate_limit IS DISTINCT FROM OLD.rate_limit THEN
        PERFORM relay.forget_pace(NEW.id);
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

-- A Content-Type with a line break, or a literal URL whose host has an empty label or one
-- over 63 characters, could never be sent (the HTTP client and the resolver refuse them).
CREATE OR REPLACE FUNCTION relay.check_webhook_request() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    host text;
BEGIN
    IF NEW.http_content_type ~ '[\x01-\x1f\x7f]' THEN
        RAISE EXCEPTION 'webhook "%": http_content_type must be one line, without control characters',
            NEW.name USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.payload_url !~ '\{[{%]' THEN
        host := substring(NEW.payload_url FROM '^[A-Za-z]+://(?:[^/?#@\s]+@)?([^/?#:@\s\[\]]+)');
        IF host ~ '^\.|\.\.|[^.]{64}' THEN
            RAISE EXCEPTION 'webhook "%": payload_url host "%" has an empty label or one longer than 63 characters',
                NEW.name, host USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

-- A webhook's own retry policy (NULL: the relay's settings).
CREATE OR REPLACE FUNCTION relay.check_webhook_retry() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.max_attempts < 1 OR NEW.max_attempts > 1000 THEN
        RAISE EXCEPTION 'webhook "%": max_attempts must be from 1 to 1000 (NULL: the relay''s RELAY_MAX_ATTEMPTS)',
            NEW.name USING ERRCODE = 'check_violation';
    END IF;
    -- At least a millisecond: a smaller delay is a busy loop, and a float cannot hold every
    -- positive numeric (1e-400 is 0 in Python).
    IF NEW.retry_base_seconds < 0.001 OR NEW.retry_base_seconds > 86400 THEN
        RAISE EXCEPTION 'webhook "%": retry_base_seconds must be from 0.001 to 86400 (NULL: the relay''s RELAY_RETRY_BASE_SECONDS)',
            NEW.name USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.retry_max_seconds < 0.001 OR NEW.retry_max_seconds > 2592000 THEN
        RAISE EXCEPTION 'webhook "%": retry_max_seconds must be from 0.001 to 2592000 (30 days; NULL: the relay''s RELAY_RETRY_MAX_SECONDS)',
            NEW.name USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.retry_max_seconds < NEW.retry_base_seconds THEN
        RAISE EXCEPTION 'webhook "%": retry_max_seconds (%) is below retry_base_seconds (%)',
            NEW.name, NEW.retry_max_seconds, NEW.retry_base_seconds USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

-- A webhook's batches (0020): changes per request, and how long a batch that is not full may
-- wait.
CREATE OR REPLACE FUNCTION relay.check_webhook_batch() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.batch_size < 1 OR NEW.batch_size > 1000 THEN
        RAISE EXCEPTION 'webhook "%": batch_size must be from 1 to 1000 (1: one change per request)',
            NEW.name USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.batch_wait_ms < 0 OR NEW.batch_wait_ms > 60000 THEN
        RAISE EXCEPTION 'webhook "%": batch_wait_ms must be from 0 to 60000 (one minute)',
            NEW.name USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

-- An event rule as relay can match it: events (the snapshot event is what relay.backfill
-- writes), schema-qualified table names, conditions (relay.conditions_problem), action data.
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

-- A webhook's ordering changed (0026_steering.sql; relay.check_webhook calls this): its
-- deliveries not yet delivered take the scope of the new ordering, so that none of them waits
-- under the old one while a later change of its row goes out under the new one. Pending
-- deliveries fanned out in row scope hold no position, and the claim of an ordered webhook
-- passed them over (placed_first counts only those placed before) and sent the later change
-- first. To row: pending deliveries drop their key and position (the claim's row scope then
-- orders each row by id). To transaction or key from row: the deliveries without a position,
-- pending and failed (a retry re-arms a failed one in its place), take positions in id order,
-- before every delivery fanned out from now on, the pending ones under the order key '' (what
-- their ordering_key would render is not known here: they go one after another). Under the
-- lock hold_deliveries takes, so that a fan-out writing under the old ordering commits first
-- (and is re-keyed here) or writes after this commits (and add_deliveries follows the
-- webhook's ordering: relay.order_key_now). Run with the rights of the role that changes the
-- ordering (relay's owner: nothing here runs with rights another role lacks).
CREATE OR REPLACE FUNCTION relay.rekey_deliveries(webhook bigint, was text, ordering text)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    LOCK TABLE relay.deliveries IN SHARE ROW EXCLUSIVE MODE;
    IF ordering = 'row' THEN
        UPDATE relay.deliveries d SET order_key = NULL, position = NULL
        WHERE d.webhook_id = webhook AND d.status = 'pending' AND d.order_key IS NOT NULL;
    ELSIF was = 'row' THEN
        WITH placed AS (
            SELECT p.outbox_id, nextval('relay.delivery_positions') AS position
            FROM (SELECT d.outbox_id FROM relay.deliveries d
                  WHERE d.webhook_id = webhook AND d.status IN ('pending', 'failed')
                    AND d.position IS NULL
                  ORDER BY d.outbox_id OFFSET 0) p
        )
        UPDATE relay.deliveries d
        SET position = placed.position,
            order_key = CASE WHEN d.status = 'pending' THEN coalesce(d.order_key, '') END
        FROM placed
        WHERE d.webhook_id = webhook AND d.outbox_id = placed.outbox_id;
    END IF;
END
$$;

-- A webhook's rate_limit changed (relay.check_webhook calls this): its next request slot
-- (relay.webhook_pace, 0026_steering.sql) was booked under the old limit, and a limit raised
-- from 0.001 would otherwise send nothing until the slot it booked 17.5 minutes ahead. The next
-- request takes a slot under the new limit. Run with the rights of the role that changes the
-- limit (relay's owner).
CREATE OR REPLACE FUNCTION relay.forget_pace(webhook bigint) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM relay.webhook_pace WHERE webhook_id = webhook;
$$;

-- Every statement that changes webhooks or event rules bumps relay.rules_version and wakes
-- the relays (LISTEN relay_rules), which reload their rules. SECURITY DEFINER: a role allowed to
-- change rules need not be allowed to write relay.rules_version.
CREATE OR REPLACE FUNCTION relay.announce_rules_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE relay.rules_version SET version = version + 1;
    PERFORM pg_notify('relay_rules', TG_TABLE_NAME);
    RETURN NULL;
END
$$;
