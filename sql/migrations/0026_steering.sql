-- 0026 steering: what an operator sets per webhook to steer its delivery, and what relay
-- records of each endpoint's health (docs/operations.md, "Steering a webhook").
--
-- paused_at / paused_reason: a paused webhook still gets deliveries (matching goes on); none is
-- claimed until it is resumed, then they go out in order. 'operator' is `relay webhook pause`
-- or the SQL user; 'dead' is relay itself, once the endpoint has failed for dead_after_seconds
-- without one success (record_outcomes and pause_dead in sql/queries.sql, run by
-- relay/delivery/record.py).
-- concurrency: requests in flight to the webhook across every relay and process of the
-- database (NULL: RELAY_WEBHOOK_CONCURRENCY, which each relay process applies on its own).
-- rate_limit: requests a second, spread evenly,
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
    'Requests in flight to this webhook across all relays; NULL: RELAY_WEBHOOK_CONCURRENCY per relay process.';
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

-- Limits per endpoint (issue 25; docs/operations.md, "Limits per endpoint"). A webhook's
-- concurrency counts the requests leased to anyone for it: the claim counts them with
-- relay.leased_requests (sql/functions/delivery.sql) through this index, which holds only the
-- deliveries leased and not yet recorded (record_outcomes clears leased_until), so the count is
-- a short range scan however long the backlog.
CREATE INDEX deliveries_leased ON relay.deliveries (webhook_id, leased_until)
    INCLUDE (batch_id)
    WHERE status = 'pending' AND leased_until IS NOT NULL;

-- A webhook's rate limit: the time of its next free request slot, shared by every relay. Each
-- request takes the slot greatest(next_slot, now) and moves it on by 1.05/rate_limit, in one
-- statement (take_slot, sql/queries.sql), then waits until its slot before it is sent.
CREATE TABLE relay.webhook_pace (
    webhook_id bigint PRIMARY KEY REFERENCES relay.webhooks (id) ON DELETE CASCADE,
    next_slot  timestamptz NOT NULL
);

COMMENT ON COLUMN relay.webhook_pace.next_slot IS
    'When the next request to this webhook may be sent (rate_limit); a time past: now.';

-- Ordering scope (issue 25; docs/reliability.md, "Ordering scope"). A delivery to a webhook
-- whose ordering is not 'row' gets, at fan-out, an order key (transaction: '' for every change;
-- key: its ordering_key rendered, held as its SHA-256 past 2,048 bytes as row keys are) and a
-- position from delivery_positions, in commit order: passes in turn, and within a pass
-- transactions by their largest outbox id, each transaction's changes together in id order
-- (relay/delivery/plan.py, commit_order). The claim takes, of each order key, only the pending
-- delivery with the smallest position. Row-scope deliveries keep both NULL and are claimed as
-- before. A failed delivery leaves the key (it is not pending); a re-armed one (relay retry,
-- the SQL reset, relay replay) keeps its position, so it goes back to its place.
CREATE SEQUENCE relay.delivery_positions;
ALTER TABLE relay.deliveries
    ADD COLUMN order_key text,
    ADD COLUMN position  bigint;
CREATE INDEX deliveries_key_order ON relay.deliveries (webhook_id, order_key, position)
    WHERE status = 'pending' AND order_key IS NOT NULL;
-- A fan-out pass cut by its limit reads on to the end of the transactions it cut
-- (transaction_rest), so that one transaction is never split around another. No index on
-- outbox.txid for it: one cost the writers 30% on a 100,000-row INSERT (docs/benchmarks.md),
-- whether any webhook is ordered or not; the read-on walks outbox_to_fan_out instead, and only
-- for ordered webhooks.

COMMENT ON COLUMN relay.deliveries.order_key IS
    'Webhooks with ordering transaction or key: deliveries with the same order_key go one after another, by position. NULL: row scope.';
COMMENT ON COLUMN relay.deliveries.position IS
    'Place in commit order among the webhook''s deliveries of the same order_key (relay.delivery_positions).';

INSERT INTO relay.migrations (version, name) VALUES (26, 'steering');
