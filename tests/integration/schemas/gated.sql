-- Test-only: a view whose every execution passes through fn_test_gate(), which
-- counts itself in a sequence (counted by PostgreSQL, not by fraiseshm), waits
-- while a test holds advisory lock 7001 (a gate the test opens when it has seen
-- what it waits for), can be made slow (delay seconds) and can raise (fail).
CREATE TABLE IF NOT EXISTS tb_test_gate (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    delay double precision NOT NULL DEFAULT 0,
    fail boolean NOT NULL DEFAULT false
);
INSERT INTO tb_test_gate DEFAULT VALUES ON CONFLICT DO NOTHING;
CREATE SEQUENCE IF NOT EXISTS test_gate_calls;

CREATE OR REPLACE FUNCTION fn_test_gate() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    g tb_test_gate;
BEGIN
    PERFORM nextval('test_gate_calls');
    PERFORM pg_advisory_lock_shared(7001);
    PERFORM pg_advisory_unlock_shared(7001);
    SELECT * INTO g FROM tb_test_gate;
    PERFORM pg_sleep(g.delay);
    IF g.fail THEN
        RAISE EXCEPTION 'test gate: failing on purpose';
    END IF;
    RETURN true;
END
$$;

CREATE OR REPLACE VIEW v_gated_user AS
    SELECT id, created_at, data FROM v_user WHERE fn_test_gate();
