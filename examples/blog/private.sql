-- fraiseshm example blog, private part: drafts that only their author can read.
-- Loaded after schema.sql (settings.schema_sql). It shows the security model
-- (docs/ARCHITECTURE.md, "Identity and row-level security"):
--
--   * fraiseshm verifies the bearer JWT and sets, for every statement of the
--     request and transaction-local, request.jwt.claims = {"sub": ...} (the
--     configured scope_claims) and, with db_role / a role claim, SET LOCAL ROLE;
--   * the row-level security policy on tb_draft decides which rows exist;
--   * v_draft is security_invoker, so the policy applies to whoever reads the
--     view (a plain view runs with its owner's rights and would bypass it);
--   * the GraphQL type Draft is @cache(private: true): its results are cached
--     per verified identity, never shared.
--
-- Row-level security never applies to superusers (nor to a table owner without
-- FORCE): requests must run as a plain role. blog_web is that role; serve with
-- FRAISESHM_DB_ROLE=blog_web (the pool's login user must be a member of it,
-- or a superuser as in the embedded development cluster).

SET client_min_messages = warning;

DROP TABLE IF EXISTS tb_draft CASCADE;  -- its view and triggers go with it

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'blog_web') THEN
        CREATE ROLE blog_web NOLOGIN NOSUPERUSER NOBYPASSRLS;
    END IF;
END
$$;

CREATE TABLE tb_draft (
    pk_draft    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    fk_author   bigint NOT NULL REFERENCES tb_user (pk_user) ON DELETE CASCADE,
    title       text NOT NULL CHECK (btrim(title) <> ''),
    body        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tb_draft_fk_author_idx ON tb_draft (fk_author, created_at, id);
CREATE INDEX tb_draft_created_at_id_idx ON tb_draft (created_at, id);

-- The verified subject of the request, or NULL (anonymous). After a
-- transaction-local set_config the setting exists but is '' in later
-- transactions of the session: nullif keeps that from being cast.
CREATE OR REPLACE FUNCTION fn_request_sub() RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub';

ALTER TABLE tb_draft ENABLE ROW LEVEL SECURITY;
ALTER TABLE tb_draft FORCE ROW LEVEL SECURITY;  -- the owner too (superusers still bypass)
CREATE POLICY tb_draft_author ON tb_draft
    USING (fk_author = (SELECT u.pk_user FROM tb_user u WHERE u.id::text = fn_request_sub()))
    WITH CHECK (fk_author = (SELECT u.pk_user FROM tb_user u WHERE u.id::text = fn_request_sub()));

CREATE VIEW v_draft WITH (security_invoker = true) AS
SELECT
    d.id,
    a.id AS author_id,
    d.created_at,
    jsonb_build_object(
        'id', d.id,
        'title', d.title,
        'body', d.body,
        'created_at', fn_iso8601(d.created_at),
        'author', jsonb_build_object(
            'id', a.id,
            'name', a.name,
            'email', a.email,
            'created_at', fn_iso8601(a.created_at))
    ) AS data
FROM tb_draft d
JOIN tb_user a ON a.pk_user = d.fk_author;

-- Writes from anywhere reach the cache like the other tables' (schema.sql):
-- the kit's signed change triggers.
SELECT fraiseshm.track('tb_draft');

-- Two drafts per user that has none yet. Called after fn_seed (the embedded
-- cluster's seeding and the tests' reseed).
CREATE OR REPLACE FUNCTION fn_seed_drafts() RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    v_n int;
BEGIN
    INSERT INTO tb_draft (fk_author, title, body, created_at)
    SELECT u.pk_user, format('%s: draft %s', u.name, k), format('Unpublished draft %s of %s.', k, u.name),
           u.created_at + k * interval '1 minute'
    FROM tb_user u, generate_series(1, 2) AS k
    WHERE NOT EXISTS (SELECT 1 FROM tb_draft d WHERE d.fk_author = u.pk_user);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;

-- What blog_web may do: read the served views, and the two tables the
-- security_invoker view and the policy read as the requester. Mutation functions
-- are SECURITY DEFINER (schema.sql) and EXECUTE is granted to PUBLIC by default;
-- the kit's schema needs nothing (its triggers are SECURITY DEFINER).
GRANT USAGE ON SCHEMA public TO blog_web;
GRANT SELECT ON v_user, v_post, v_comment, v_draft, tb_draft, tb_user TO blog_web;
