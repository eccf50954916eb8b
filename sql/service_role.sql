-- Least privilege for the relay service: the rights `relay run` needs, and no more.
--
-- Run it as the role that installed relay (the owner of schema relay), after creating a login
-- role for the service:
--
--     CREATE ROLE relay_service LOGIN PASSWORD '...';
--     psql "$DSN" -v ON_ERROR_STOP=1 -v role=relay_service -f sql/service_role.sql
--
-- Run it again after every upgrade: later migrations add what later versions need.
-- The service cannot track or untrack tables, change the schema, or write changes of its own
-- into the outbox; applications that write tracked tables need none of these grants.
BEGIN;
-- Type names in the signatures below are pg_catalog's, whatever the session's search path.
SET LOCAL search_path = pg_catalog, pg_temp;
GRANT USAGE ON SCHEMA relay TO :"role";
-- Read changes, record their outcome (status, attempts...), and purge finished ones.
GRANT SELECT, UPDATE (status, attempts, last_error, processed_at, fanned_out_at, coalesced_into),
    DELETE ON relay.outbox TO :"role";
-- Count what it purges, for relay replay (see 0027_purged.sql).
GRANT SELECT, INSERT, UPDATE ON relay.purged_changes TO :"role";
-- Its own bookkeeping: deliveries per webhook and the attempt log.
GRANT SELECT, INSERT, UPDATE, DELETE ON relay.deliveries, relay.attempts TO :"role";
-- Number the batches it sends (see 0020_batches.sql).
GRANT USAGE ON SEQUENCE relay.batch_ids TO :"role";
-- Place deliveries of ordered webhooks in commit order (see 0026_steering.sql).
GRANT USAGE ON SEQUENCE relay.delivery_positions TO :"role";
-- Where fan-out has looked (see 0012_fan_out_window.sql); the id sequence only to notice a
-- restart.
GRANT SELECT, UPDATE ON relay.fan_out_position TO :"role";
GRANT SELECT, INSERT, DELETE ON relay.fan_out_gaps TO :"role";
GRANT SELECT ON SEQUENCE relay.outbox_id_seq TO :"role";
-- When each relay started, for `relay status` (see 0014_relays.sql).
GRANT SELECT, INSERT, UPDATE, DELETE ON relay.relays TO :"role";
-- Know what is tracked and which schema version is installed (the view relay.tracked calls
-- these read-only functions).
GRANT SELECT ON relay.tracked, relay.tracked_tables, relay.migrations TO :"role";
GRANT EXECUTE ON FUNCTION relay.column_names(oid, int2[]), relay.pk_attnums(oid),
    relay.shape(oid), relay.reached_types(oid), relay.tracked_ancestor(oid) TO :"role";
-- Regenerate the capture functions of a table whose columns changed (see 0007_trusted_capture.sql).
GRANT EXECUTE ON FUNCTION relay.refresh_capture() TO :"role";
-- Read webhooks (secrets included: it signs with them) and event rules; never change them.
GRANT SELECT ON relay.webhooks, relay.event_rules, relay.rules_version TO :"role";
-- Relay pauses a webhook whose endpoint stays dead (0026_steering.sql), and records each
-- endpoint's health.
GRANT UPDATE (paused_at, paused_reason) ON relay.webhooks TO :"role";
GRANT SELECT, INSERT, UPDATE, DELETE ON relay.webhook_health TO :"role";
-- Pace requests to a webhook with a rate limit across relays (0026_steering.sql), and count
-- the requests leased for one with a concurrency.
GRANT SELECT, INSERT, UPDATE ON relay.webhook_pace TO :"role";
GRANT EXECUTE ON FUNCTION relay.leased_requests(bigint[], text, bigint[], bigint[]) TO :"role";
-- Write a delivery in its webhook's ordering as the table has it (relay.order_key_now).
GRANT EXECUTE ON FUNCTION relay.order_key_now(bigint, text) TO :"role";
-- Refresh the delivery tables' statistics after a burst (see 0004_statistics.sql).
GRANT EXECUTE ON FUNCTION relay.refresh_statistics() TO :"role";
-- Match changes and claim them in order across key moves (see 0009_key_moves.sql; keys read
-- from json images: 0011_json_images.sql).
GRANT EXECUTE ON FUNCTION relay.key_before(json, json), relay.key_before_escaped(json, json),
    relay.clear_of_key_moves(bigint, bigint, text, text),
    relay.placed_first(bigint, bigint, bigint, text, text, boolean) TO :"role";
-- Read the rows a webhook's `related` option nests (0030_related.sql), building their JSON as
-- the capture builds images. The referenced tables themselves need a GRANT SELECT of their
-- own (docs/operations.md): this file cannot know them.
GRANT EXECUTE ON FUNCTION relay.related_rows(text, text, text, text, text[], text[]),
    relay.fields_sql(oid, text, integer, int2[]), relay.value_sql(text, oid, integer),
    relay.text_value(anyelement), relay.text_array_value(anyarray), relay.json_join(json[])
    TO :"role";
-- Show backfills in `relay status` (see 0021_backfill_replay.sql); it cannot start one.
GRANT SELECT ON relay.backfills TO :"role";
COMMIT;
