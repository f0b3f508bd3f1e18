-- The fraiseshm SQL kit, version 1: everything fraiseshm needs inside the
-- user's database, in its own schema `fraiseshm` (never `public`).
--
--   change triggers   fraiseshm.track(table) attaches statement-level
--                     triggers (INSERT/UPDATE/DELETE with transition tables,
--                     TRUNCATE) that tell the server what changed: a signed
--                     NOTIFY on channel fraiseshm_changes (writes from
--                     anywhere) and the transaction-local setting
--                     fraiseshm.changes (read inside a mutation's own
--                     transaction for cascade verification).
--   cascade helpers   fraiseshm.cascade_* build the graphql-cascade response
--                     of a mutation function, whatever the key type.
--   audit table       fraiseshm.audit, written by the server.
--
-- Installed by `fraiseshm db install` (fraiseshm/db/kit.py) or psql:
--     psql -v ON_ERROR_STOP=1 -1 -f kit.sql
-- Idempotent: running it again replaces the functions and keeps the tracked
-- tables, the notification key and the audit rows. The role that runs it owns
-- the kit; the trigger function runs with that role's rights (SECURITY
-- DEFINER), so it must be able to SELECT the tracked tables (their owner, or
-- the database owner, usually is). fraiseshm/db/sql/kit_uninstall.sql removes
-- it all and leaves the user's tables and rows alone.
--
-- Trigger output, one per statement that changed rows (see docs/ARCHITECTURE.md):
--     NOTIFY fraiseshm_changes, '<hmac-sha256 hex> <json>'
--     json = {"v": 1, "tx": "<txid>", "ts": <epoch seconds>, "tags": [...]}
-- tags: t:<schema>.<table> (always), r:<schema>.<table>:<key::text> (each
-- changed row, old and new image), +r:<parent>:<key> (the parent row named by
-- a single-column foreign key, old and new image: derived), +f:<table>:<fk
-- column>=<parent key> (the same parents, naming the lists filtered by that
-- foreign key's value: derived), +v:<table>:<column>=<value> (each filter
-- column named by fraiseshm.track(..., filters), old and new image: derived), w:<table> (rows
-- changed that are not listed: TRUNCATE, no single-column key, a statement
-- too large for one NOTIFY; the FK parents of such a change get w:<parent>).

SET LOCAL client_min_messages = warning;
SELECT pg_advisory_xact_lock(hashtext('fraiseshm kit'));

CREATE SCHEMA IF NOT EXISTS fraiseshm;
DO $$
BEGIN
    IF (current_schemas(false))[1] = 'fraiseshm' THEN
        RAISE WARNING 'schema fraiseshm is first in your search_path (%): tables you create now land in '
                      'the kit''s schema, and uninstalling would refuse to drop them', current_setting('search_path')
            USING HINT = 'a role named fraiseshm sees it as "$user": ALTER ROLE fraiseshm SET search_path = public';
    END IF;
END
$$;
-- SQL-standard function bodies below bind their names now: to pg_catalog's.
SET LOCAL search_path = pg_catalog, pg_temp;
-- Nobody but the owner (and the roles fraiseshm.grant_server names) may use
-- the kit: USAGE is what lets a role call its functions or read its tables.
REVOKE ALL ON SCHEMA fraiseshm FROM PUBLIC;

DO $$
DECLARE
    installed int;
BEGIN
    IF to_regprocedure('fraiseshm.kit_version()') IS NOT NULL THEN
        EXECUTE 'SELECT fraiseshm.kit_version()' INTO installed;
        IF installed > 1 THEN
            RAISE EXCEPTION 'fraiseshm kit version % is installed; this is version 1', installed
                USING HINT = 'use the fraiseshm release that installed it, or uninstall it first';
        END IF;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION fraiseshm.kit_version() RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN 1;

-- ===========================================================================
-- Notification key
-- ===========================================================================

-- The HMAC-SHA256 key of the change notifications. Only the kit owner (the
-- trigger function runs as that owner) and the server roles granted by
-- fraiseshm.grant_server can read it: any role may NOTIFY fraiseshm_changes,
-- none of the others can sign. ikey/okey are the key XOR the HMAC pads,
-- computed once here so that signing costs two sha256() calls.
CREATE TABLE IF NOT EXISTS fraiseshm.notify_key (
    one     boolean PRIMARY KEY DEFAULT true CHECK (one),
    key     text NOT NULL CHECK (key ~ '^[0-9a-f]{64}$'),
    ikey    bytea NOT NULL,
    okey    bytea NOT NULL
);
REVOKE ALL ON fraiseshm.notify_key FROM PUBLIC;

CREATE OR REPLACE FUNCTION fraiseshm._pad(key bytea, pad int) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN (
    SELECT decode(string_agg(lpad(to_hex(
               CASE WHEN i < length(key) THEN get_byte(key, i) ELSE 0 END # pad), 2, '0'), '' ORDER BY i), 'hex')
    FROM generate_series(0, 63) AS i  -- SHA-256's block is 64 bytes; the key is 32
);

-- A new random key (gen_random_uuid() draws from pg_strong_random: 2 x 122
-- random bits). Existing notifications become unverifiable: the server must
-- learn the new key (restart, or reconnect of its listener).
CREATE OR REPLACE FUNCTION fraiseshm.rotate_key() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    k text := replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
BEGIN
    INSERT INTO fraiseshm.notify_key (key, ikey, okey)
    VALUES (k, fraiseshm._pad(decode(k, 'hex'), 54), fraiseshm._pad(decode(k, 'hex'), 92))
    ON CONFLICT (one) DO UPDATE SET key = excluded.key, ikey = excluded.ikey, okey = excluded.okey;
END
$$;
REVOKE ALL ON FUNCTION fraiseshm.rotate_key() FROM PUBLIC;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM fraiseshm.notify_key) THEN
        PERFORM fraiseshm.rotate_key();
    END IF;
END
$$;

-- HMAC-SHA256 (RFC 2104) of msg under the notification key, as 64 hex digits.
-- INVARIANT: nobody but the kit owner may execute it (it would sign forgeries).
CREATE OR REPLACE FUNCTION fraiseshm._sign(msg text) RETURNS text
LANGUAGE sql STABLE
RETURN (
    SELECT encode(sha256(k.okey || sha256(k.ikey || convert_to(msg, 'UTF8'))), 'hex')
    FROM fraiseshm.notify_key k
);
REVOKE ALL ON FUNCTION fraiseshm._sign(text) FROM PUBLIC;

-- ===========================================================================
-- Keys and foreign keys, read from the catalog
-- ===========================================================================

-- Schema-qualified, as pg_namespace/pg_class spell it (tags use this form).
CREATE OR REPLACE FUNCTION fraiseshm.table_name(tbl regclass) RETURNS text
LANGUAGE plpgsql STABLE STRICT AS $$
BEGIN
    RETURN (SELECT n.nspname || '.' || c.relname
            FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid = tbl);
END
$$;

-- ===========================================================================
-- Change triggers
-- ===========================================================================

-- Tags for a change whose rows are not listed: the table's t: and w:, and w:
-- of every table it references (which parent rows changed is unknown).
CREATE OR REPLACE FUNCTION fraiseshm._wide_items(tbl regclass) RETURNS text[]
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN ARRAY['t:' || fraiseshm.table_name(tbl), 'w:' || fraiseshm.table_name(tbl)] || ARRAY(
        SELECT DISTINCT 'w:' || n.nspname || '.' || p.relname
        FROM pg_catalog.pg_constraint c
        JOIN pg_catalog.pg_class p ON p.oid = c.confrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = p.relnamespace
        WHERE c.conrelid = tbl AND c.contype = 'f');
END
$$;

-- Runs under its callers' pinned search_path (on_change, touch); names are
-- qualified anyway. Sends items: one signed NOTIFY (fallback to the wide items when the JSON
-- would not fit in a NOTIFY payload), and appends the same items to the
-- transaction-local setting fraiseshm.changes.
CREATE OR REPLACE FUNCTION fraiseshm._emit(tbl regclass, items text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    max_payload CONSTANT int := 7900;  -- NOTIFY's limit is 8000 bytes
    max_recorded CONSTANT int := 1 << 20;  -- fraiseshm.changes: past this, wide items only
    payload text;
    recorded text := coalesce(current_setting('fraiseshm.changes', true), '');
BEGIN
    payload := jsonb_build_object(
        'v', 1,
        'tx', txid_current()::text,
        'ts', round(extract(epoch FROM clock_timestamp()), 6),
        'tags', to_jsonb(items))::text;
    IF octet_length(payload) > max_payload THEN
        items := fraiseshm._wide_items(tbl);
        payload := jsonb_build_object(
            'v', 1,
            'tx', txid_current()::text,
            'ts', round(extract(epoch FROM clock_timestamp()), 6),
            'tags', to_jsonb(items))::text;
    END IF;
    SELECT encode(sha256(k.okey || sha256(k.ikey || convert_to(payload, 'UTF8'))), 'hex') || ' ' || payload
    INTO payload FROM fraiseshm.notify_key k;  -- HMAC-SHA256, as fraiseshm._sign
    PERFORM pg_notify('fraiseshm_changes', payload);
    IF octet_length(recorded) > max_recorded THEN
        items := fraiseshm._wide_items(tbl);
    END IF;
    PERFORM set_config('fraiseshm.changes', ltrim(recorded || ' ' || array_to_string(items, ' ')), true);
END
$$;
REVOKE ALL ON FUNCTION fraiseshm._emit(regclass, text[]) FROM PUBLIC;

-- The trigger function of every tracked table. TG_ARGV[0]: the attnum of the
-- key column (0: none). SECURITY DEFINER: it runs as the kit owner, who alone
-- reads the notification key; search_path is pinned and every name in
-- dynamic SQL is qualified. Keys, foreign keys and parents' keys are read
-- from the catalog on every statement, so foreign keys added later, parents
-- tracked later and renamed columns are always current.
--
-- PERF: rows are read as jsonb (to_jsonb(row) ->> column is the column's
-- text form for every allowed key type: track refuses timestamps), so every
-- query here is static and planned once per session and table; only a
-- foreign key that references another column than the parent's key (FraiseQL
-- style: tb_post.fk_author -> tb_user.pk_user while tb_user rows are named
-- by id) costs one dynamic, indexed lookup in the parent.
--
-- It never makes the user's statement fail: a problem building the list
-- falls back to the wide items, with a WARNING.
CREATE OR REPLACE FUNCTION fraiseshm.on_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- a statement with more rows than this cannot fit one NOTIFY (an item is
    -- at least ~10 bytes): its rows are not even read.
    max_rows CONSTANT int := 790;
    n int;
    tname text;
    keycol name;
    rows_ jsonb[];
    items text[];
    part text[];
    fk record;
    vcol name;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM fraiseshm._emit(TG_RELID, fraiseshm._wide_items(TG_RELID));
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        SELECT count(*) INTO n FROM (SELECT 1 FROM old_rows LIMIT max_rows + 1) s;
    ELSE
        SELECT count(*) INTO n FROM (SELECT 1 FROM new_rows LIMIT max_rows + 1) s;
    END IF;
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    IF n > max_rows THEN
        PERFORM fraiseshm._emit(TG_RELID, fraiseshm._wide_items(TG_RELID));
        RETURN NULL;
    END IF;
    BEGIN
        tname := TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME;
        IF TG_OP = 'INSERT' THEN
            rows_ := ARRAY(SELECT to_jsonb(r) FROM new_rows r);
        ELSIF TG_OP = 'UPDATE' THEN
            rows_ := ARRAY(SELECT to_jsonb(r) FROM new_rows r UNION ALL SELECT to_jsonb(r) FROM old_rows r);
        ELSE
            rows_ := ARRAY(SELECT to_jsonb(r) FROM old_rows r);
        END IF;
        SELECT attname INTO keycol FROM pg_attribute
        WHERE attrelid = TG_RELID AND attnum = TG_ARGV[0]::int2 AND NOT attisdropped;
        IF keycol IS NULL THEN
            items := ARRAY['t:' || tname, 'w:' || tname];
        ELSE
            items := ARRAY['t:' || tname] || ARRAY(
                SELECT DISTINCT 'r:' || tname || ':' || (j ->> keycol) FROM unnest(rows_) j);
        END IF;
        FOR i IN 1 .. TG_NARGS - 1 LOOP  -- filter columns (fraiseshm.track(..., filters)): both images
            SELECT attname INTO vcol FROM pg_attribute
            WHERE attrelid = TG_RELID AND attnum = TG_ARGV[i]::int2 AND NOT attisdropped;
            CONTINUE WHEN vcol IS NULL;
            items := items || ARRAY(SELECT DISTINCT '+v:' || tname || ':' || vcol || '=' || (j ->> vcol)
                                    FROM unnest(rows_) j
                                    WHERE j ->> vcol IS NOT NULL AND octet_length(j ->> vcol) <= 200);
        END LOOP;
        FOR fk IN
            SELECT c.confrelid::regclass AS parent, ca.attname AS col, pa.attname AS ref,
                   pn.nspname || '.' || pc.relname AS pname,
                   fraiseshm.key_attnum(c.confrelid::regclass) AS pkey, c.confkey[1] AS refatt,
                   format_type(pa.atttypid, pa.atttypmod) AS reftype
            FROM pg_constraint c
            JOIN pg_attribute ca ON ca.attrelid = c.conrelid AND ca.attnum = c.conkey[1]
            JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attnum = c.confkey[1]
            JOIN pg_class pc ON pc.oid = c.confrelid
            JOIN pg_namespace pn ON pn.oid = pc.relnamespace
            WHERE c.conrelid = TG_RELID AND c.contype = 'f' AND cardinality(c.conkey) = 1
        LOOP
            part := ARRAY(SELECT DISTINCT j ->> fk.col FROM unnest(rows_) j WHERE j ->> fk.col IS NOT NULL);
            CONTINUE WHEN cardinality(part) = 0;
            IF fk.pkey IS NULL THEN
                items := items || ('w:' || fk.pname);
                CONTINUE;
            ELSIF fk.pkey <> fk.refatt THEN
                -- A parent deleted in the same statement (ON DELETE CASCADE) is not found: lists asking
                -- for its key depend on its row tag too, which its own deletion bumps (graphql/filters.py).
                EXECUTE format('SELECT ARRAY(SELECT DISTINCT p.%I::text FROM %s p WHERE p.%I = ANY ($1::%s[]))',
                               (SELECT attname FROM pg_attribute WHERE attrelid = fk.parent AND attnum = fk.pkey),
                               fk.parent, fk.ref, fk.reftype)
                    INTO part USING part;
            END IF;
            -- part: the parents' keys (old and new images). The parent rows, and the
            -- lists filtered by this foreign key's value (values over 200 bytes: t: only).
            items := items || ARRAY(SELECT '+r:' || fk.pname || ':' || v FROM unnest(part) v)
                           || ARRAY(SELECT '+f:' || tname || ':' || fk.col || '=' || v FROM unnest(part) v
                                    WHERE octet_length(v) <= 200);
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'fraiseshm: listing the rows changed in % failed (%); sending table-level tags',
            TG_RELID::regclass, SQLERRM;
        items := fraiseshm._wide_items(TG_RELID);
    END;
    PERFORM fraiseshm._emit(TG_RELID, items);
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION fraiseshm.on_change() FROM PUBLIC;

-- This kit's triggers send f:<table>:<fk column>=<parent key> items: the server
-- reads their presence as "lists filtered by a foreign key's value can be
-- invalidated by value" (fraiseshm/graphql/catalog.py).
CREATE OR REPLACE FUNCTION fraiseshm.emits_fk_values() RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN true;

-- The column whose value names a row in tags (r:<table>:<value>): the one
-- the table's triggers were tracked with, else a single-column unique key on
-- a column named id (the GraphQL ID of FraiseQL-style tables, whose primary
-- key is an internal number), else a single-column primary key, else any
-- single-column unique key on NOT NULL column; NULL when there is none.
CREATE OR REPLACE FUNCTION fraiseshm.key_attnum(tbl regclass) RETURNS int2
LANGUAGE plpgsql STABLE STRICT AS $$
BEGIN
    RETURN nullif(coalesce(
        (SELECT nullif(split_part(encode(t.tgargs, 'escape'), '\000', 1), '')::int2
         FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc f ON f.oid = t.tgfoid
         WHERE t.tgrelid = tbl AND t.tgname = 'fraiseshm_update' AND f.proname = 'on_change'
           AND f.pronamespace = 'fraiseshm'::regnamespace),
        (SELECT c.conkey[1]
         FROM pg_catalog.pg_constraint c
         JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
         WHERE c.conrelid = tbl AND c.contype IN ('p', 'u') AND cardinality(c.conkey) = 1
         ORDER BY (a.attname = 'id') DESC, (c.contype = 'p') DESC, a.attnotnull DESC, c.conname
         LIMIT 1)), 0);
END
$$;

-- A view or function definition changed (CREATE OR REPLACE VIEW in a
-- migration, say): entries built by the old definition must not be served.
-- The event trigger sends a signed flush request; the listener flushes its
-- arena and says to restart (the schema version and the dependency rules are
-- read at start). Creating an event trigger needs a superuser: without one
-- the install says so and the user restarts fraiseshm after such a change.
CREATE OR REPLACE FUNCTION fraiseshm.on_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    what text;
    payload text;
BEGIN
    SELECT string_agg(DISTINCT object_type || ' ' || object_identity, ', ') INTO what
    FROM pg_event_trigger_ddl_commands()
    WHERE object_type IN ('view', 'materialized view', 'function') AND schema_name IS DISTINCT FROM 'fraiseshm';
    IF what IS NULL THEN
        RETURN;
    END IF;
    payload := jsonb_build_object(
        'v', 1,
        'tx', txid_current()::text,
        'ts', round(extract(epoch FROM clock_timestamp()), 6),
        'tags', '[]'::jsonb,
        'flush', left(what, 2000))::text;
    SELECT encode(sha256(k.okey || sha256(k.ikey || convert_to(payload, 'UTF8'))), 'hex') || ' ' || payload
    INTO payload FROM fraiseshm.notify_key k;
    PERFORM pg_notify('fraiseshm_changes', payload);
EXCEPTION WHEN OTHERS THEN  -- never fail the user's DDL
    RAISE WARNING 'fraiseshm: could not send the flush request for changed definitions (%)', SQLERRM;
END
$$;
REVOKE ALL ON FUNCTION fraiseshm.on_ddl() FROM PUBLIC;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'fraiseshm_ddl') THEN
        CREATE EVENT TRIGGER fraiseshm_ddl ON ddl_command_end
            WHEN TAG IN ('CREATE VIEW', 'ALTER VIEW', 'CREATE MATERIALIZED VIEW', 'ALTER MATERIALIZED VIEW',
                         'CREATE FUNCTION', 'ALTER FUNCTION')
            EXECUTE FUNCTION fraiseshm.on_ddl();
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'fraiseshm: no event trigger on view changes (creating one needs a superuser): '
                 'workers re-read the served views every schema_recheck_interval (10 s); run '
                 '`fraiseshm flush` right after changing a served view';
END
$$;

-- Attach the change triggers to a table (again: replaces them). key names the
-- column whose value names a row in tags; default: fraiseshm.key_attnum's
-- rule. Touches no row. A table without a single-column key gets table-level
-- items (t: + w:) only, said in a NOTICE. filters names columns whose old and
-- new values every change reports (+v:<table>:<column>=<value>), so that lists
-- filtered by equality on them are invalidated by value (trigger arguments 2..n).
DROP FUNCTION IF EXISTS fraiseshm.track(regclass, name);  -- kit before filters
CREATE OR REPLACE FUNCTION fraiseshm.track(tbl regclass, key name DEFAULT NULL, filters name[] DEFAULT '{}')
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    keyatt int2;
    keycol name;
    args text;
    f name;
    fatt int2;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = tbl) NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'fraiseshm.track: % is not a table', tbl
            USING HINT = 'track the tables a view reads, not the view';
    END IF;
    PERFORM fraiseshm.untrack(tbl);  -- key_attnum must not read the old triggers' argument
    IF key IS NOT NULL THEN
        SELECT attnum INTO keyatt FROM pg_attribute
        WHERE attrelid = tbl AND attname = key AND attnum > 0 AND NOT attisdropped;
        IF keyatt IS NULL THEN
            RAISE EXCEPTION 'fraiseshm.track: table % has no column %', tbl, key;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = tbl AND contype IN ('p', 'u')
                       AND conkey = ARRAY[keyatt]) THEN
            RAISE EXCEPTION 'fraiseshm.track: column % of % is not a primary key or unique by itself', key, tbl
                USING HINT = 'a row tag must name exactly one row';
        END IF;
    ELSE
        keyatt := fraiseshm.key_attnum(tbl);
    END IF;
    IF (SELECT atttypid FROM pg_attribute WHERE attrelid = tbl AND attnum = keyatt)
       IN ('timestamp'::regtype, 'timestamptz'::regtype) THEN
        RAISE EXCEPTION 'fraiseshm.track: the key of % is a timestamp, whose text depends on the session',
            tbl USING HINT = 'name another unique column: fraiseshm.track(table, key => ''id'')';
    END IF;
    keyatt := coalesce(keyatt, 0);
    args := quote_literal(keyatt);
    FOREACH f IN ARRAY coalesce(filters, '{}') LOOP
        SELECT attnum INTO fatt FROM pg_attribute
        WHERE attrelid = tbl AND attname = f AND attnum > 0 AND NOT attisdropped;
        IF fatt IS NULL THEN
            RAISE EXCEPTION 'fraiseshm.track: table % has no column % (filters)', tbl, f;
        END IF;
        args := args || ', ' || quote_literal(fatt);
    END LOOP;
    EXECUTE format('CREATE TRIGGER fraiseshm_insert AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION fraiseshm.on_change(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER fraiseshm_update AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows '
                   'NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION fraiseshm.on_change(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER fraiseshm_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION fraiseshm.on_change(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER fraiseshm_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION fraiseshm.on_change(%s)', tbl, args);
    IF keyatt = 0 THEN
        RAISE NOTICE 'fraiseshm.track: % has no single-column primary or unique key: its changes bump '
                     'only table-level tags (t: and w:), and through its foreign keys the parent rows', tbl;
        RETURN format('%s (no key: table-level tags)', fraiseshm.table_name(tbl));
    END IF;
    SELECT attname INTO keycol FROM pg_attribute WHERE attrelid = tbl AND attnum = keyatt;
    RETURN format('%s (key %s)', fraiseshm.table_name(tbl), keycol);
END
$$;
REVOKE ALL ON FUNCTION fraiseshm.track(regclass, name, name[]) FROM PUBLIC;

CREATE OR REPLACE FUNCTION fraiseshm.untrack(tbl regclass) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t name;
    found boolean := false;
BEGIN
    FOR t IN
        SELECT tgname FROM pg_trigger
        WHERE tgrelid = tbl AND tgfoid = 'fraiseshm.on_change()'::regprocedure
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t, tbl);
        found := true;
    END LOOP;
    RETURN found;
END
$$;
REVOKE ALL ON FUNCTION fraiseshm.untrack(regclass) FROM PUBLIC;

-- Every table carrying the kit's triggers. complete: all four triggers are
-- there and enabled (a table whose writes can escape the cache is not).
CREATE OR REPLACE FUNCTION fraiseshm.tracked_tables()
RETURNS TABLE (tbl regclass, table_name text, key_column name, key_type regtype, complete boolean)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.tgrelid::regclass, fraiseshm.table_name(t.tgrelid::regclass), a.attname, a.atttypid::regtype,
           count(*) FILTER (WHERE t.tgenabled IN ('O', 'A')) = 4
    FROM pg_trigger t
    LEFT JOIN pg_attribute a ON a.attrelid = t.tgrelid
         AND a.attnum = fraiseshm.key_attnum(t.tgrelid::regclass) AND NOT a.attisdropped
    WHERE t.tgfoid = 'fraiseshm.on_change()'::regprocedure
    GROUP BY t.tgrelid, a.attname, a.atttypid
    ORDER BY 2
$$;

-- Table-level tags for tables changed behind the triggers' back (a bulk load
-- with session_replication_role = replica, say): t: and w: of each, signed.
CREATE OR REPLACE FUNCTION fraiseshm.touch(VARIADIC tables regclass[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t regclass;
BEGIN
    FOREACH t IN ARRAY tables LOOP
        PERFORM fraiseshm._emit(t, fraiseshm._wide_items(t));
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION fraiseshm.touch(regclass[]) FROM PUBLIC;

-- ===========================================================================
-- graphql-cascade helpers for mutation functions (any key type)
-- ===========================================================================

CREATE OR REPLACE FUNCTION fraiseshm.iso8601(ts timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');

-- One `updated` entry: typename, id (any type, reported as its text), the
-- operation (CREATED or UPDATED), and the view whose data is the entity
-- (read by cascade_response after the writes, for the entries it keeps).
CREATE OR REPLACE FUNCTION fraiseshm.cascade_updated(
    typename text, id anyelement, view regclass, operation text DEFAULT 'UPDATED'
) RETURNS jsonb
LANGUAGE sql IMMUTABLE
AS $$ SELECT jsonb_build_object('__typename', typename, 'id', id::text, 'operation', operation, 'view', view::oid) $$;

-- One `deleted` entry.
CREATE OR REPLACE FUNCTION fraiseshm.cascade_deleted(typename text, id anyelement) RETURNS jsonb
LANGUAGE sql IMMUTABLE
AS $$ SELECT jsonb_build_object('__typename', typename, 'id', id::text) $$;

-- Query invalidations (strategy INVALIDATE, scope PREFIX) for root fields.
CREATE OR REPLACE FUNCTION fraiseshm.cascade_invalidations(VARIADIC query_names text[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE
RETURN (
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'query_name', q, 'strategy', 'INVALIDATE', 'scope', 'PREFIX') ORDER BY ord), '[]'::jsonb)
    FROM unnest(query_names) WITH ORDINALITY AS t(q, ord)
);

-- The successful response. updated and deleted are arrays of the entries
-- above, in the order to report them, every one of them: the server applies
-- the graphql-cascade size limits (its settings cascade_max_*), after it has
-- invalidated every entry. Entities are read one query per view,
-- `WHERE id = ANY(...)` in the view's id type.
-- type_invalidations: [{"typename": T}] for types the function changed but
-- cannot list (rows it cannot see, e.g. deleted by a foreign key's ON DELETE
-- CASCADE under row-level security).
DROP FUNCTION IF EXISTS fraiseshm.cascade_response(jsonb, jsonb, jsonb, jsonb, int);  -- before 6 arguments
CREATE OR REPLACE FUNCTION fraiseshm.cascade_response(
    data jsonb,
    updated jsonb DEFAULT '[]',
    deleted jsonb DEFAULT '[]',
    invalidations jsonb DEFAULT '[]',
    depth int DEFAULT 1,
    type_invalidations jsonb DEFAULT '[]'
) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    n_updated int := jsonb_array_length(updated);
    n_deleted int := jsonb_array_length(deleted);
    ts text := fraiseshm.iso8601(now());
    entities jsonb := '{}';  -- "<view oid>/<id>": data
    v record;
    id_type text;
    found jsonb;
    kept_updated jsonb;
    kept_deleted jsonb;
BEGIN
    FOR v IN
        SELECT (e->>'view')::oid::regclass AS view, array_agg(e->>'id') AS ids
        FROM jsonb_array_elements(updated) WITH ORDINALITY AS t(e, ord)
        WHERE e ? 'view'
        GROUP BY 1
    LOOP
        SELECT format_type(atttypid, atttypmod) INTO id_type
        FROM pg_attribute WHERE attrelid = v.view AND attname = 'id' AND NOT attisdropped;
        IF id_type IS NULL THEN
            RAISE EXCEPTION 'fraiseshm.cascade_response: view % has no id column', v.view;
        END IF;
        EXECUTE format('SELECT coalesce(jsonb_object_agg(%L || x.id::text, x.data), ''{}'') FROM %s x '
                       'WHERE x.id = ANY ($1::%s[])', v.view::oid || '/', v.view, id_type)
            INTO found USING v.ids;
        entities := entities || found;
    END LOOP;

    SELECT coalesce(jsonb_agg(
               jsonb_build_object(
                   '__typename', e->>'__typename',
                   'id', e->>'id',
                   'operation', e->>'operation',
                   'entity', entities -> ((e->>'view') || '/' || (e->>'id')))
               ORDER BY ord), '[]'::jsonb)
    INTO kept_updated
    FROM jsonb_array_elements(updated) WITH ORDINALITY AS t(e, ord);

    SELECT coalesce(jsonb_agg(
               jsonb_build_object('__typename', e->>'__typename', 'id', e->>'id', 'deleted_at', ts)
               ORDER BY ord), '[]'::jsonb)
    INTO kept_deleted
    FROM jsonb_array_elements(deleted) WITH ORDINALITY AS t(e, ord);

    RETURN jsonb_build_object(
        'success', true,
        'errors', '[]'::jsonb,
        'data', data,
        'cascade', jsonb_build_object(
            'updated', kept_updated,
            'deleted', kept_deleted,
            'invalidations', invalidations,
            'type_invalidations', type_invalidations,
            'metadata', jsonb_build_object(
                'timestamp', ts,
                'transaction_id', txid_current()::text,
                'depth', depth,
                'affected_count', n_updated + n_deleted,
                'truncated', false)));
END
$$;

-- A failed mutation: success false, data null, an empty cascade. Return it
-- before writing anything (or after a caught error rolled the subtransaction
-- back), so a failure changes nothing. transaction_id is NULL when nothing
-- was written (no xid is burnt for a validation error).
CREATE OR REPLACE FUNCTION fraiseshm.cascade_failure(code text, message text, field text DEFAULT NULL)
RETURNS jsonb
LANGUAGE sql STABLE
RETURN jsonb_build_object(
    'success', false,
    'errors', jsonb_build_array(jsonb_build_object('message', message, 'code', code, 'field', field)),
    'data', NULL,
    'cascade', jsonb_build_object(
        'updated', '[]'::jsonb,
        'deleted', '[]'::jsonb,
        'invalidations', '[]'::jsonb,
        'type_invalidations', '[]'::jsonb,
        'metadata', jsonb_build_object(
            'timestamp', fraiseshm.iso8601(now()),
            'transaction_id', txid_current_if_assigned()::text,
            'depth', 0,
            'affected_count', 0,
            'truncated', false)));

-- ===========================================================================
-- The server's role
-- ===========================================================================

-- What the server's login role needs from the kit: the schema, the
-- notification key (to verify notifications), the audit table and the
-- cascade helpers. Its SELECT on the served views and EXECUTE on the mutation
-- functions are granted on those objects (docs/YOUR-DATABASE.md).
CREATE OR REPLACE FUNCTION fraiseshm.grant_server(server regrole) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA fraiseshm TO %s', server);
    EXECUTE format('GRANT SELECT (key) ON fraiseshm.notify_key TO %s', server);
    EXECUTE format('GRANT SELECT, INSERT, DELETE ON fraiseshm.audit TO %s', server);
    EXECUTE format('GRANT EXECUTE ON FUNCTION fraiseshm.kit_version(), fraiseshm.tracked_tables(), '
                   'fraiseshm.key_attnum(regclass), fraiseshm.table_name(regclass) TO %s', server);
END
$$;
REVOKE ALL ON FUNCTION fraiseshm.grant_server(regrole) FROM PUBLIC;
