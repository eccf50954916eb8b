-- The script `relay demo` runs on a scratch database, one step at a time, showing after each
-- step what it added to relay.outbox. Each step starts with a `-- step: <title>` line.

-- step: An application table, as it might already exist
CREATE TABLE public.orders (
    id         serial PRIMARY KEY,
    customer   text NOT NULL,
    status     text NOT NULL DEFAULT 'new',
    total      numeric(10, 2) NOT NULL,
    card_token text
);

-- step: Track it, keeping the card token out of the outbox
SELECT relay.track('public.orders', exclude_columns => ARRAY['card_token']);

-- step: Two orders in one transaction, tagged with the user who placed them
BEGIN;
SET LOCAL relay.username = 'alice';
INSERT INTO orders (customer, total, card_token)
    VALUES ('ACME', 120.00, 'tok_1'), ('Initech', 75.50, 'tok_2');
COMMIT;

-- step: One order is paid; the other is saved without any change, which records nothing
UPDATE orders SET status = 'paid' WHERE customer = 'ACME';
UPDATE orders SET total = total WHERE customer = 'Initech';

-- step: A transaction that rolls back leaves nothing behind
BEGIN;
DELETE FROM orders;
ROLLBACK;

-- step: An order is cancelled and deleted
DELETE FROM orders WHERE customer = 'Initech';

-- step: Say where changes go: a webhook, and a rule sending paid orders to it
INSERT INTO relay.webhooks (name, payload_url, secret)
VALUES ('sales', 'http://127.0.0.1:9000/hooks/{{ model }}', 'demo-secret');
INSERT INTO relay.event_rules (name, tables, events, conditions, webhook_id)
SELECT 'order paid', ARRAY['public.orders'], ARRAY['update'],
       '{"and": [{"attr": "data.status", "value": "paid"},
                 {"attr": "status", "op": "changed"}]}',
       id
FROM relay.webhooks WHERE name = 'sales';
