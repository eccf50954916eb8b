-- 0019: a table's model name travels with the rules.
--
-- relay run used to look up each change's model in relay.tracked twice (at fan-out and at
-- claim: 2.4 us each, three catalog probes per row). It now loads every table's model with the
-- rules (load_models in sql/queries.sql), so a change to a model must reach running relays as a
-- rule change does: the same bump of relay.rules_version and NOTIFY relay_rules (0006).
CREATE TRIGGER announce_models_change
    AFTER INSERT OR DELETE OR UPDATE OF model ON relay.tracked_tables
    FOR EACH STATEMENT EXECUTE FUNCTION relay.announce_rules_change();

INSERT INTO relay.migrations (version, name) VALUES (19, 'models_with_rules');
