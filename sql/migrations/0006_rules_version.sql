-- 0006 rules version: a change committed after a rule is matched against that rule.
--
-- Relays reload their rules when told on channel relay_rules, a moment later. A change
-- committed in that moment would have been matched against the rules as they were before. Now
-- every statement that changes webhooks or event rules also bumps relay.rules_version, and the
-- fan-out reads the version after reading the changes it is about to match: if the rules it
-- holds are older, it reloads them first (relay/delivery/fanout.py).
CREATE TABLE relay.rules_version (
    one     boolean PRIMARY KEY DEFAULT true CHECK (one),
    version bigint  NOT NULL
);
INSERT INTO relay.rules_version (version) VALUES (1);

CREATE OR REPLACE FUNCTION relay.announce_rules_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE relay.rules_version SET version = version + 1;
    PERFORM pg_notify('relay_rules', TG_TABLE_NAME);
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION relay.announce_rules_change() FROM PUBLIC;

INSERT INTO relay.migrations (version, name) VALUES (6, 'rules_version');
