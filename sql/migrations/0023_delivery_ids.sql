-- 0023 delivery ids: a delivery's id (X-Relay-Delivery, Standard Webhooks' webhook-id) is written
-- when the delivery is made, and never worked out again.
--
-- Until now each relay computed it on every attempt, from relay.installation's id, the change and
-- the webhook (a UUID version 5). 0007 changed that formula (it added the installation id): a
-- change a relay had attempted before that upgrade went out after it under another id, and a
-- receiver that drops ids it has seen processed it twice; a relay of an older release left
-- running kept sending under its own formula. Now relay.deliveries.id holds the id: random for a
-- delivery made from now on, and for one made before this upgrade the id the release that made
-- it sent, worked out here once by that release's formula. relay.installation served only the
-- formula: it goes. A batch's id (batch_delivery_id) is random too, drawn when claim_batch
-- numbers the batch, and kept on every retry of it.
--
-- Relays of an older release are stopped from delivering by relay.refuse_other_releases below:
-- they would send under their formula still.

ALTER TABLE relay.deliveries ADD COLUMN id uuid, ADD COLUMN batch_delivery_id uuid;

-- SHA-1 (FIPS 180-4), for the version 5 UUIDs of the deliveries made before this upgrade:
-- PostgreSQL has no built-in SHA-1. Used by the UPDATE below, then dropped.
CREATE FUNCTION relay.upgrade_sha1(message bytea) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mask   constant bigint := 4294967295;
    h      bigint[] := ARRAY[1732584193, 4023233417, 2562383102, 271733878, 3285377520];
    data   bytea := message || '\x80'::bytea;
    w      bigint[] := array_fill(0::bigint, ARRAY[80]);
    a bigint; b bigint; c bigint; d bigint; e bigint; x bigint;
    block  int;
    i      int;
    digest bytea := '';
BEGIN
    data := data || decode(repeat('00', (120 - octet_length(data) % 64) % 64), 'hex')
                 || int8send(octet_length(message)::bigint * 8);
    FOR block IN 0 .. octet_length(data) / 64 - 1 LOOP
        FOR i IN 0 .. 15 LOOP
            w[i + 1] := (get_byte(data, block * 64 + i * 4)::bigint << 24)
                      | (get_byte(data, block * 64 + i * 4 + 1)::bigint << 16)
                      | (get_byte(data, block * 64 + i * 4 + 2)::bigint << 8)
                      | get_byte(data, block * 64 + i * 4 + 3)::bigint;
        END LOOP;
        FOR i IN 17 .. 80 LOOP
            x := w[i - 3] # w[i - 8] # w[i - 14] # w[i - 16];
            w[i] := ((x << 1) | (x >> 31)) & mask;
        END LOOP;
        a := h[1]; b := h[2]; c := h[3]; d := h[4]; e := h[5];
        -- The 80 rounds five at a time, each variable taking each role in turn (no shuffling).
        FOR i IN 1 .. 20 BY 5 LOOP
            e := ((((a << 5) | (a >> 27)) & mask) + ((b & c) | (~b & d)) + e + 1518500249 + w[i + 0]) & mask;
            b := ((b << 30) | (b >> 2)) & mask;
            d := ((((e << 5) | (e >> 27)) & mask) + ((a & b) | (~a & c)) + d + 1518500249 + w[i + 1]) & mask;
            a := ((a << 30) | (a >> 2)) & mask;
            c := ((((d << 5) | (d >> 27)) & mask) + ((e & a) | (~e & b)) + c + 1518500249 + w[i + 2]) & mask;
            e := ((e << 30) | (e >> 2)) & mask;
            b := ((((c << 5) | (c >> 27)) & mask) + ((d & e) | (~d & a)) + b + 1518500249 + w[i + 3]) & mask;
            d := ((d << 30) | (d >> 2)) & mask;
            a := ((((b << 5) | (b >> 27)) & mask) + ((c & d) | (~c & e)) + a + 1518500249 + w[i + 4]) & mask;
            c := ((c << 30) | (c >> 2)) & mask;
        END LOOP;
        FOR i IN 21 .. 40 BY 5 LOOP
            e := ((((a << 5) | (a >> 27)) & mask) + (b # c # d) + e + 1859775393 + w[i + 0]) & mask;
            b := ((b << 30) | (b >> 2)) & mask;
            d := ((((e << 5) | (e >> 27)) & mask) + (a # b # c) + d + 1859775393 + w[i + 1]) & mask;
            a := ((a << 30) | (a >> 2)) & mask;
            c := ((((d << 5) | (d >> 27)) & mask) + (e # a # b) + c + 1859775393 + w[i + 2]) & mask;
            e := ((e << 30) | (e >> 2)) & mask;
            b := ((((c << 5) | (c >> 27)) & mask) + (d # e # a) + b + 1859775393 + w[i + 3]) & mask;
            d := ((d << 30) | (d >> 2)) & mask;
            a := ((((b << 5) | (b >> 27)) & mask) + (c # d # e) + a + 1859775393 + w[i + 4]) & mask;
            c := ((c << 30) | (c >> 2)) & mask;
        END LOOP;
        FOR i IN 41 .. 60 BY 5 LOOP
            e := ((((a << 5) | (a >> 27)) & mask) + ((b & c) | (b & d) | (c & d)) + e + 2400959708 + w[i + 0]) & mask;
            b := ((b << 30) | (b >> 2)) & mask;
            d := ((((e << 5) | (e >> 27)) & mask) + ((a & b) | (a & c) | (b & c)) + d + 2400959708 + w[i + 1]) & mask;
            a := ((a << 30) | (a >> 2)) & mask;
            c := ((((d << 5) | (d >> 27)) & mask) + ((e & a) | (e & b) | (a & b)) + c + 2400959708 + w[i + 2]) & mask;
            e := ((e << 30) | (e >> 2)) & mask;
            b := ((((c << 5) | (c >> 27)) & mask) + ((d & e) | (d & a) | (e & a)) + b + 2400959708 + w[i + 3]) & mask;
            d := ((d << 30) | (d >> 2)) & mask;
            a := ((((b << 5) | (b >> 27)) & mask) + ((c & d) | (c & e) | (d & e)) + a + 2400959708 + w[i + 4]) & mask;
            c := ((c << 30) | (c >> 2)) & mask;
        END LOOP;
        FOR i IN 61 .. 80 BY 5 LOOP
            e := ((((a << 5) | (a >> 27)) & mask) + (b # c # d) + e + 3395469782 + w[i + 0]) & mask;
            b := ((b << 30) | (b >> 2)) & mask;
            d := ((((e << 5) | (e >> 27)) & mask) + (a # b # c) + d + 3395469782 + w[i + 1]) & mask;
            a := ((a << 30) | (a >> 2)) & mask;
            c := ((((d << 5) | (d >> 27)) & mask) + (e # a # b) + c + 3395469782 + w[i + 2]) & mask;
            e := ((e << 30) | (e >> 2)) & mask;
            b := ((((c << 5) | (c >> 27)) & mask) + (d # e # a) + b + 3395469782 + w[i + 3]) & mask;
            d := ((d << 30) | (d >> 2)) & mask;
            a := ((((b << 5) | (b >> 27)) & mask) + (c # d # e) + a + 3395469782 + w[i + 4]) & mask;
            c := ((c << 30) | (c >> 2)) & mask;
        END LOOP;
        h[1] := (h[1] + a) & mask; h[2] := (h[2] + b) & mask; h[3] := (h[3] + c) & mask;
        h[4] := (h[4] + d) & mask; h[5] := (h[5] + e) & mask;
    END LOOP;
    FOR i IN 1 .. 5 LOOP
        digest := digest || int4send(h[i]::bit(32)::int4);
    END LOOP;
    RETURN digest;
END
$$;

-- The version 5 UUID of `name` in relay's delivery name space (relay/render/request.py had it as
-- DELIVERY_NAMESPACE).
CREATE FUNCTION relay.upgrade_uuid5(name text) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
    SELECT encode(set_byte(set_byte(d, 6, (get_byte(d, 6) & 15) | 80),
                           8, (get_byte(d, 8) & 63) | 128), 'hex')::uuid
    FROM (SELECT substr(relay.upgrade_sha1('\x6f1c4f1e58a94c439d0e2b7f4f1b9a51'::bytea
                                           || convert_to(name, 'UTF8')), 1, 16) AS d) s
$$;

-- The formula of the release that made each delivery: "<installation id>/<change>/<webhook>"
-- since 0007, "/<change>/<webhook>" before it (a database that gets 0007 in this same
-- transaction: its applied_at is this transaction's now()). A batch in flight (pending, numbered)
-- keeps "<installation id>/batch/<batch>/<webhook>" (0020); a finished one is never sent again
-- under its number (a re-armed delivery leaves its batch).
WITH release AS (
    SELECT CASE WHEN m.applied_at = now() THEN '' ELSE i.id::text END AS source,
           i.id::text AS installation
    FROM relay.migrations m, relay.installation i
    WHERE m.version = 7
)
UPDATE relay.deliveries d
SET id = relay.upgrade_uuid5(release.source || '/' || d.outbox_id || '/' || d.webhook_id),
    batch_delivery_id = CASE WHEN d.batch_id IS NOT NULL AND d.status = 'pending' THEN
        relay.upgrade_uuid5(release.installation || '/batch/' || d.batch_id || '/' || d.webhook_id)
    END
FROM release;

DROP FUNCTION relay.upgrade_uuid5(text), relay.upgrade_sha1(bytea);
DROP TABLE relay.installation;

ALTER TABLE relay.deliveries ALTER COLUMN id SET DEFAULT gen_random_uuid(),
                             ALTER COLUMN id SET NOT NULL;

-- The fence: a session of `relay run` (its connections are named 'relay run <relay id>') may
-- write deliveries only if it was built for the schema version installed. Each such session
-- says which in its startup options (relay.schema_version; relay/delivery/worker.py); a relay
-- of a release before this one says nothing. So a relay left running across an upgrade, by
-- mistake or on another host, stops delivering the moment the upgrade commits: its claims fail
-- with this error, and nothing goes out under ids of its own making, until it is restarted on
-- the new release (which then refuses to start on a schema newer than itself). One statement
-- trigger: it costs a statement, not a row.
CREATE FUNCTION relay.refuse_other_releases() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    built     text := coalesce(nullif(current_setting('relay.schema_version', true), ''),
                               'an older one');
    installed text := (SELECT max(version)::text FROM relay.migrations);
BEGIN
    IF built IS DISTINCT FROM installed THEN
        RAISE EXCEPTION 'this relay was built for relay schema version %, the database has %: run the relay of the release that installed it',
            built, installed USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION relay.refuse_other_releases() FROM PUBLIC;

CREATE TRIGGER refuse_other_releases
    BEFORE INSERT OR UPDATE OR DELETE ON relay.deliveries
    FOR EACH STATEMENT
    WHEN (starts_with(current_setting('application_name'), 'relay run '))
    EXECUTE FUNCTION relay.refuse_other_releases();

INSERT INTO relay.migrations (version, name) VALUES (23, 'delivery_ids');
