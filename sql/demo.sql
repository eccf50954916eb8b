-- The script `relay demo` runs on a scratch database, one step at a time. After each step it
-- shows what the step added to relay.outbox and the requests the relay (running meanwhile)
-- delivered to the demo's own receiver. Each step starts with a `-- step: <title>` line;
-- RECEIVER stands for the receiver's address.

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

-- step: Say where changes go: every order to "sales", paid ones to "payments"
-- "sales" signs as NetBox does, "payments" as Standard Webhooks says.
INSERT INTO relay.webhooks (name, payload_url, secret)
VALUES ('sales', 'http://RECEIVER/hooks/{{ model }}', 'demo-secret');
INSERT INTO relay.webhooks (name, payload_url, secret, signature, body_template)
VALUES ('payments', 'http://RECEIVER/payments',
        'whsec_ZGVtby1zZWNyZXQtZm9yLXBheW1lbnRz', 'standard',
        '{"order": {{ data.id }}, "total": {{ data.total }}, '
        || '"by": {{ username | tojson }}}');
INSERT INTO relay.event_rules (name, tables, webhook_id)
SELECT 'all orders', ARRAY['public.orders'], id
FROM relay.webhooks WHERE name = 'sales';
INSERT INTO relay.event_rules (name, tables, events, conditions, webhook_id)
SELECT 'order paid', ARRAY['public.orders'], ARRAY['update'],
       '{"and": [{"attr": "data.status", "value": "paid"},
                 {"attr": "status", "op": "changed"}]}',
       id
FROM relay.webhooks WHERE name = 'payments';

-- step: Two orders in one transaction, tagged with the user who placed them
BEGIN;
SET LOCAL relay.username = 'alice';
INSERT INTO public.orders (customer, total, card_token)
    VALUES ('ACME', 120.00, 'tok_1'), ('Initech', 75.50, 'tok_2');
COMMIT;

-- step: One order is paid; the other is saved unchanged, which records nothing
BEGIN;
SET LOCAL relay.username = 'bob';
UPDATE public.orders SET status = 'paid' WHERE customer = 'ACME';
UPDATE public.orders SET total = total WHERE customer = 'Initech';
COMMIT;

-- step: A transaction that rolls back leaves nothing behind
BEGIN;
DELETE FROM public.orders;
ROLLBACK;

-- step: An order is cancelled and deleted
DELETE FROM public.orders WHERE customer = 'Initech';
