-- 0026 steering: what an operator sets per webhook to steer its delivery, and what relay
-- records of each endpoint's health (docs/operations.md, "Steering a webhook").
--
-- paused_at / paused_reason: a paused webhook still gets deliveries (matching goes on); none is
-- claimed until it is resumed, then they go out in order. 'operator' is `relay webhook pause`
-- or the SQL user; 'dead' is relay itself, once the endpoint has failed for dead_after_seconds
-- without one success (record_outcomes and pause_dead in sql/queries.sql, run by
-- relay/delivery/record.py).
-- concurrency: requests in flight to the webhook across every relay and process of the
-- database (NULL: RELAY_WEBHOOK_CONCURRENCY). rate_limit: requests a second, spread evenly,
-- across relays (NULL: none). dead_after_seconds: NULL: RELAY_DEAD_AFTER_SECONDS.
-- ordering: which changes go out one after another: 'row' (each row's changes, in order),
-- 'transaction' (every change, one transaction after another), 'key' (changes whose
-- ordering_key template renders the same, in order).
ALTER TABLE relay.webhooks
    ADD COLUMN paused_at          timestamptz,
    ADD COLUMN paused_reason      text,
    ADD COLUMN concurrency        integer,
    ADD COLUMN rate_limit         numeric,
    ADD COLUMN dead_after_seconds integer,
    ADD COLUMN ordering           text NOT NULL DEFAULT 'row',
    ADD COLUMN ordering_key       text;

COMMENT ON COLUMN relay.webhooks.paused_at IS
    'Set: no delivery to this webhook is sent (they wait, and go out in order on resume). NULL: not paused.';
COMMENT ON COLUMN relay.webhooks.paused_reason IS
    'operator (relay webhook pause, or SQL) or dead (relay paused it: it failed for dead_after_seconds).';
COMMENT ON COLUMN relay.webhooks.concurrency IS
    'Requests in flight to this webhook across all relays; NULL: RELAY_WEBHOOK_CONCURRENCY.';
COMMENT ON COLUMN relay.webhooks.rate_limit IS
    'Requests per second to this webhook across all relays, evenly spaced; NULL: no limit.';
COMMENT ON COLUMN relay.webhooks.dead_after_seconds IS
    'How long the endpoint may fail without a success before relay pauses it; NULL: RELAY_DEAD_AFTER_SECONDS.';
COMMENT ON COLUMN relay.webhooks.ordering IS
    'row: each row''s changes in order; transaction: one transaction after another; key: per rendered ordering_key.';
COMMENT ON COLUMN relay.webhooks.ordering_key IS
    'With ordering = key: a Jinja2 template (as the body''s context); changes rendering the same key go out in order.';

-- What relay knows of each endpoint, written with the outcomes of each round (one row per
-- webhook, so relay.webhooks is written, and relays told to reload their rules, only when
-- something an operator cares about changes: a pause).
CREATE TABLE relay.webhook_health (
    webhook_id      bigint PRIMARY KEY REFERENCES relay.webhooks (id) ON DELETE CASCADE,
    failing_since   timestamptz,
    last_success_at timestamptz,
    last_failure_at timestamptz,
    last_error      text
);

COMMENT ON COLUMN relay.webhook_health.failing_since IS
    'The first failed attempt since the last success (NULL: the last attempt succeeded, or none was made).';

INSERT INTO relay.migrations (version, name) VALUES (26, 'steering');
