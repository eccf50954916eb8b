-- relay demo (relay/cli/demo.py).

-- name: demo_pending
SELECT count(*) FROM relay.outbox WHERE status = 'pending';

-- name: demo_summary
-- Each change of the demo, how it ended, and per webhook what became of it.
SELECT o.id, o.op::text, o.status::text,
       coalesce(string_agg(w.name || ' ' || d.status, ', ' ORDER BY w.name), '-')
FROM relay.outbox o
LEFT JOIN relay.deliveries d ON d.outbox_id = o.id
LEFT JOIN relay.webhooks w ON w.id = d.webhook_id
GROUP BY o.id
ORDER BY o.id;

-- name: demo_outbox_after
SELECT id, op, schema_name, table_name, pk::text, old::text, new::text, username, request_id
FROM relay.outbox WHERE id > %(after)s ORDER BY id;
