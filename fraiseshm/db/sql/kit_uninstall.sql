-- Removes the fraiseshm kit: the change triggers from every tracked table,
-- then the schema fraiseshm (functions, notification key, audit trail).
-- The user's tables and rows are not touched. Refuses (and names them) when
-- objects outside the schema still depend on the kit (a view or an SQL
-- function calling fraiseshm.iso8601, say): dropping them would be the
-- user's call. plpgsql functions calling the cascade helpers record no
-- dependency: they fail at their next call.

SET LOCAL client_min_messages = warning;
SELECT pg_advisory_xact_lock(hashtext('fraiseshm kit'));

DO $$
DECLARE
    t regclass;
    dependents text;
BEGIN
    IF to_regnamespace('fraiseshm') IS NULL THEN
        RETURN;
    END IF;
    IF to_regprocedure('fraiseshm.on_change()') IS NOT NULL THEN
        FOR t IN SELECT DISTINCT tgrelid::regclass FROM pg_trigger
                 WHERE tgfoid = 'fraiseshm.on_change()'::regprocedure LOOP
            PERFORM fraiseshm.untrack(t);
        END LOOP;
    END IF;
    SELECT string_agg(format('%s %s', CASE relkind WHEN 'v' THEN 'view' ELSE 'table' END, oid::regclass), ', ')
    INTO dependents
    FROM pg_class
    WHERE relnamespace = 'fraiseshm'::regnamespace AND relkind IN ('r', 'p', 'v', 'm', 'f')
      AND relname NOT IN ('notify_key', 'audit');
    IF dependents IS NOT NULL THEN
        RAISE EXCEPTION 'fraiseshm kit not uninstalled: schema fraiseshm holds % that the kit did not create',
            dependents USING HINT = 'move them to another schema first (ALTER TABLE ... SET SCHEMA)';
    END IF;
    SELECT string_agg(DISTINCT pg_describe_object(d.classid, d.objid, d.objsubid), ', ')
    INTO dependents
    FROM pg_depend d
    JOIN pg_proc p ON d.refclassid = 'pg_proc'::regclass AND d.refobjid = p.oid
    WHERE p.pronamespace = 'fraiseshm'::regnamespace
      AND d.deptype = 'n'
      AND d.classid <> 'pg_event_trigger'::regclass  -- the kit's own, dropped with its function
      AND NOT (d.classid = 'pg_proc'::regclass
               AND (SELECT pronamespace FROM pg_proc WHERE oid = d.objid) = 'fraiseshm'::regnamespace)
      AND NOT (d.classid = 'pg_rewrite'::regclass
               AND (SELECT c.relnamespace FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
                    WHERE r.oid = d.objid) = 'fraiseshm'::regnamespace);
    IF dependents IS NOT NULL THEN
        RAISE EXCEPTION 'fraiseshm kit not uninstalled: % depend on it', dependents
            USING HINT = 'drop or change them first (the change triggers were left in place)';
    END IF;
    DROP SCHEMA fraiseshm CASCADE;
END
$$;
