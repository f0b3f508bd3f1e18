-- A stand-in for the SQL kit's change triggers, for tests of the graphql side
-- only (tests/integration/test_keys_deps.py): it appends the contract's items
-- to the transaction-local setting fraiseshm.changes (no NOTIFY: the real kit
-- signs those). Loaded into a database of its own, never next to the kit.
--   r:<table>:<key>   each changed row, old and new image
--   +r:<parent>:<key> through each single-column FK of the table
--   t:<table>         every statement
CREATE SCHEMA IF NOT EXISTS fraiseshm;

CREATE OR REPLACE FUNCTION fraiseshm.stub_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    tbl text := TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME;
    key text := TG_ARGV[0];
    items text[] := ARRAY['t:' || tbl];
    fk record;
    r jsonb;
    images jsonb := '[]'::jsonb;
BEGIN
    -- plpgsql plans a statement when it first runs it: old_rows only exists for UPDATE/DELETE
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        images := images || (SELECT coalesce(jsonb_agg(to_jsonb(o)), '[]') FROM old_rows o);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        images := images || (SELECT coalesce(jsonb_agg(to_jsonb(n)), '[]') FROM new_rows n);
    END IF;
    FOR r IN SELECT * FROM jsonb_array_elements(images)
    LOOP
        items := items || ('r:' || tbl || ':' || (r->>key));
        FOR fk IN
            SELECT a.attname AS col, pn.nspname || '.' || p.relname AS parent
            FROM pg_constraint k
            JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
            JOIN pg_class p ON p.oid = k.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
            WHERE k.conrelid = TG_RELID AND k.contype = 'f' AND cardinality(k.conkey) = 1
        LOOP
            IF r->>fk.col IS NOT NULL THEN
                items := items || ('+r:' || fk.parent || ':' || (r->>fk.col));
            END IF;
        END LOOP;
    END LOOP;
    PERFORM set_config('fraiseshm.changes',
        coalesce(current_setting('fraiseshm.changes', true), '') || ' ' || array_to_string(items, ' '), true);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION fraiseshm.stub_track(t regclass, key text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE TRIGGER fraiseshm_stub_i AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION fraiseshm.stub_changes(%L)', t, key);
    EXECUTE format('CREATE TRIGGER fraiseshm_stub_u AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows '
                   'NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION fraiseshm.stub_changes(%L)', t, key);
    EXECUTE format('CREATE TRIGGER fraiseshm_stub_d AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION fraiseshm.stub_changes(%L)', t, key);
END
$$;
