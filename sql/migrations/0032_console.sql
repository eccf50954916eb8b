-- 0032 console: what people change through `relay console` (docs/console.md), one row per
-- action, written in the action's own transaction by the role that signed in. Who and when are
-- the database's word, not the console's: the columns default to session_user (the role that
-- logged in, whatever SET ROLE it makes later) and now(), and sql/console_role.sql grants
-- INSERT on the other columns only, so a role cannot write an entry in another's name.
CREATE TABLE relay.console_audit (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text        NOT NULL DEFAULT session_user,
    action  text        NOT NULL,
    target  text        NOT NULL,
    detail  text        NOT NULL DEFAULT '',
    address text        NOT NULL
);

COMMENT ON TABLE relay.console_audit IS
    'Every change made through relay console: who (the signed-in role), what, when, from where (0032).';
COMMENT ON COLUMN relay.console_audit.address IS
    'The client''s address as the console saw it (behind a proxy, the address the proxy forwarded when RELAY_CONSOLE_TRUST_FORWARDED is set).';

INSERT INTO relay.migrations (version, name) VALUES (32, 'console');
