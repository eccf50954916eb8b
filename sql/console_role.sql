-- The rights a person needs to use `relay console` (docs/console.md): see the webhooks, the
-- deliveries, the tracked tables and the audit, pause and resume a webhook, send a failed
-- change again, and record each such action in relay.console_audit. Nothing more: no
-- webhook's secret, no rule, no change of tracking, no schema.
--
-- Run it as the role that installed relay (the owner of schema relay), after creating a login
-- role for the person (or a group role that people's roles are members of):
--
--     CREATE ROLE alice LOGIN PASSWORD '...';
--     psql "$DSN" -v ON_ERROR_STOP=1 -v role=alice -f sql/console_role.sql
--
-- Run it again after every upgrade: later versions may need more.
BEGIN;
SET LOCAL search_path = pg_catalog, pg_temp;
GRANT USAGE ON SCHEMA relay TO :"role";
-- Which schema version is installed (the console refuses another one).
GRANT SELECT ON relay.migrations TO :"role";
-- The overview and the deliveries log: changes, deliveries, attempts, relays, backfills.
GRANT SELECT ON relay.outbox, relay.deliveries, relay.attempts, relay.relays, relay.backfills,
    relay.webhook_health TO :"role";
-- Webhooks without their secrets (the console never shows or needs one; previous_secret_until
-- is only when a rotated secret's previous one stops signing: 0033_secret_rotation.sql).
GRANT SELECT (id, name, payload_url, enabled, paused_at, paused_reason, concurrency, rate_limit,
    dead_after_seconds, ordering, max_attempts, retry_base_seconds, retry_max_seconds,
    previous_secret_until)
    ON relay.webhooks TO :"role";
-- Pause and resume (relay webhook pause / resume): the pause, and the endpoint's failing_since
-- that a resume clears.
GRANT UPDATE (paused_at, paused_reason) ON relay.webhooks TO :"role";
GRANT UPDATE (failing_since) ON relay.webhook_health TO :"role";
-- Retry (relay retry): a failed change made pending again (the requeue trigger does the rest),
-- its superseded deliveries sent when asked.
GRANT UPDATE (status) ON relay.outbox TO :"role";
GRANT UPDATE (send_superseded) ON relay.deliveries TO :"role";
-- The audit: read it, and add entries whose who and when the database fills (0032_console.sql).
GRANT SELECT, INSERT (action, target, detail, address) ON relay.console_audit TO :"role";
-- The tracked tables page: what is tracked, with its options (relay tracked), through the
-- view relay.tracked and the functions it calls (as sql/service_role.sql grants them); the
-- backfills are read above.
GRANT SELECT ON relay.tracked, relay.tracked_tables TO :"role";
GRANT EXECUTE ON FUNCTION relay.column_names(oid, int2[]), relay.pk_attnums(oid),
    relay.shape(oid), relay.reached_types(oid), relay.tracked_ancestor(oid) TO :"role";
COMMIT;
