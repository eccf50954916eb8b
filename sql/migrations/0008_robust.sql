-- 0008 robust: the database refuses what relay could not run, in the same words as relay.
--
-- relay.conditions_problem now also refuses documents nested more than 32 levels deep (values
-- included), the limit relay/rules/conditions.py's validate() has: relay evaluates conditions
-- recursively, and a document nested a thousand levels deep was accepted here and then stopped
-- `relay run` when it loaded the rule. Both sides stay in step (a property test holds them to the
-- same answers); regular expressions are still compiled by relay only (RE2 syntax).
--
-- Webhooks: a Content-Type with a line break, or a literal URL whose host has an empty label or
-- one over 63 characters, could never be sent (the HTTP client and the resolver refuse them);
-- they are now refused when saved. Rows saved before this migration fail their deliveries with
-- the same reason instead (relay/render/request.py).

-- Levels of arrays and objects in doc (a scalar is 0, [] is 1), counted no further than cap + 1.
CREATE FUNCTION relay.json_depth(doc jsonb, cap integer) RETURNS integer
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


CREATE FUNCTION relay.check_webhook_request() RETURNS trigger
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

CREATE TRIGGER check_webhook_request BEFORE INSERT OR UPDATE ON relay.webhooks
    FOR EACH ROW EXECUTE FUNCTION relay.check_webhook_request();

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA relay FROM PUBLIC;

INSERT INTO relay.migrations (version, name) VALUES (8, 'robust');
