-- 0033 secret rotation: `relay webhook rotate-secret` and the console's rotate form (docs/
-- security.md, "Rotating a secret") put a new secret in `secret` and keep the one it replaces
-- here until `previous_secret_until`. The relay decides at signing time, by its own clock:
-- until then a Standard Webhooks request carries both signatures and a NetBox one is still
-- signed with the previous secret; after it only `secret` signs (relay/render/sign.py). Nothing
-- clears the column when the period ends: past `previous_secret_until` it is never used, and the
-- next rotation, or an edit of the secret or the signature, replaces it.
-- Rights: relay's service role reads the whole table (it signs with both); the console's role
-- is granted columns one by one (sql/console_role.sql) and gets neither.
ALTER TABLE relay.webhooks
    ADD COLUMN previous_secret text NOT NULL DEFAULT '',
    ADD COLUMN previous_secret_until timestamptz;

COMMENT ON COLUMN relay.webhooks.previous_secret IS
    'The secret a rotation replaced, still signing until previous_secret_until (0033).';
COMMENT ON COLUMN relay.webhooks.previous_secret_until IS
    'When previous_secret stops signing; NULL or past: only secret signs (0033).';

INSERT INTO relay.migrations (version, name) VALUES (33, 'secret_rotation');
