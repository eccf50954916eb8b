-- 0017 names: webhook and rule names are one line of visible text.
--
-- relay prints names in its logs, its commands' output and its errors: a name holding a line
-- break split a log line in two, and one holding an escape sequence wrote to the operator's
-- terminal. New and renamed webhooks and rules are refused such names; names stored before are
-- left as they are (an upgrade must not fail on old data).
CREATE FUNCTION relay.check_name() RETURNS trigger
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

CREATE TRIGGER check_name BEFORE INSERT OR UPDATE OF name ON relay.webhooks
    FOR EACH ROW EXECUTE FUNCTION relay.check_name();
CREATE TRIGGER check_name BEFORE INSERT OR UPDATE OF name ON relay.event_rules
    FOR EACH ROW EXECUTE FUNCTION relay.check_name();

REVOKE ALL ON FUNCTION relay.check_name() FROM PUBLIC;

INSERT INTO relay.migrations (version, name) VALUES (17, 'names');
