-- Test-only: fn_update_user with its cascade's updated list emptied, i.e. a
-- mutation function that changes tb_user and "forgets" to say so. The change
-- trigger still records the row: the server must catch the omission.
CREATE OR REPLACE FUNCTION fn_test_update_user_broken(input jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    r jsonb := fn_update_user(input);
BEGIN
    IF (r->>'success')::boolean THEN
        r := jsonb_set(r, '{cascade,updated}', '[]'::jsonb);
    END IF;
    RETURN r;
END
$$;
