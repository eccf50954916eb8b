-- 0004 statistics: fresh planner statistics for the delivery tables, on the relay's request.
--
-- A burst of changes (the first backlog after install, a bulk UPDATE) fills relay.outbox and
-- relay.deliveries long before autovacuum's next look. relay run calls this after its first
-- 5,000 changes of a session and again each time that count doubles; the service role does not
-- own the tables, hence SECURITY DEFINER. Measured before the claim query was made robust to
-- missing statistics: 300 ms per claim without them, 3 ms with.
CREATE FUNCTION relay.refresh_statistics() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    ANALYZE relay.deliveries;
    ANALYZE relay.outbox;
END
$$;

REVOKE ALL ON FUNCTION relay.refresh_statistics() FROM PUBLIC;

INSERT INTO relay.migrations (version, name) VALUES (4, 'statistics');
