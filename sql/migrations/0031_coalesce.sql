-- 0031 coalesce: one event per row per transaction, for the webhooks that ask for it
-- (docs/rules.md, "Coalescing"). Fan-out groups a transaction's changes to one row (following
-- key moves) and matches a coalescing webhook's rules against the group as one change: its
-- first change's old image, its last change's new image, and an op made of the first's and the
-- last's (relay/delivery/coalesce.py). The delivery is the row of the group's last change, and
-- names the group's first (coalesced_from): the claims read that change's op and old image. The
-- group's other changes are marked on the outbox (coalesced_into, the last change's id), the
-- same for every coalescing webhook: a retry or a replay of the last change rebuilds the same
-- event from it, and a replay never sends an absorbed change on its own.
ALTER TABLE relay.webhooks ADD COLUMN coalesce_changes boolean NOT NULL DEFAULT false;
ALTER TABLE relay.deliveries ADD COLUMN coalesced_from bigint;
ALTER TABLE relay.outbox ADD COLUMN coalesced_into bigint;

-- The members of a group, from its last change (a retried or replayed one): only the absorbed
-- changes are in it.
CREATE INDEX outbox_coalesced_into ON relay.outbox (coalesced_into)
    WHERE coalesced_into IS NOT NULL;

COMMENT ON COLUMN relay.webhooks.coalesce_changes IS
    'One event per row per transaction: a row''s changes within one transaction are sent as one (0028).';
COMMENT ON COLUMN relay.deliveries.coalesced_from IS
    'The first change of the group this delivery sends as one event (its own change is the last); NULL when not coalesced.';
COMMENT ON COLUMN relay.outbox.coalesced_into IS
    'The last change of the row''s group in its transaction, which coalescing webhooks received instead of this one.';

INSERT INTO relay.migrations (version, name) VALUES (31, 'coalesce');
