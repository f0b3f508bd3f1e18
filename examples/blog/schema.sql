-- fraiseshm example blog: tables, read views, mutation functions, change
-- triggers and a seed function, following FraiseQL's database conventions.
--
--   tb_<entity>   base tables: internal pk_<entity> bigint identity (joins, FKs),
--                 public id uuid (the GraphQL ID), created_at.
--   v_<entity>    read views: id, filter columns, created_at, data jsonb. data is
--                 the whole object with its relations already composed, keys in
--                 snake_case (the server camelCases them), so one root field is
--                 one SQL query and never N+1.
--   fn_<verb>_<entity>(input jsonb) RETURNS jsonb
--                 mutations; each builds its graphql-cascade response in
--                 SQL with the kit's fraiseshm.cascade_* helpers, in the
--                 mutation's own transaction. SECURITY DEFINER (search_path
--                 pinned): the server's role needs EXECUTE on them, no table
--                 privileges.
--   triggers      the kit's (fraiseshm.track): statement-level, signed
--                 NOTIFY fraiseshm_changes + the transaction-local record.
--
-- Needs the fraiseshm kit installed first (`fraiseshm db install`; the
-- embedded cluster installs it itself). Loading this file resets the blog
-- objects (it drops and recreates them), so it is idempotent: load it with
-- psql -v ON_ERROR_STOP=1 -1 -f schema.sql.

SET client_min_messages = warning;

-- pg_stat_statements lets tests count database executions. Creating it needs a
-- superuser; on a managed database without that right the schema still loads.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
EXCEPTION WHEN insufficient_privilege OR undefined_file THEN
    RAISE NOTICE 'pg_stat_statements not installed: %', SQLERRM;
END
$$;

DROP FUNCTION IF EXISTS fn_seed(int, int, int);  -- each example has its own
DROP TABLE IF EXISTS tb_comment, tb_post, tb_user CASCADE;  -- views and triggers go with them

-- ===========================================================================
-- Tables
-- ===========================================================================

CREATE TABLE tb_user (
    pk_user     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    name        text NOT NULL CHECK (btrim(name) <> ''),
    email       text NOT NULL UNIQUE CHECK (btrim(email) <> ''),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- ON DELETE CASCADE only matters for plain-SQL deletes (psql, other apps): the
-- mutation functions delete children explicitly so their cascade can list them.
CREATE TABLE tb_post (
    pk_post     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    fk_author   bigint NOT NULL REFERENCES tb_user (pk_user) ON DELETE CASCADE,
    title       text NOT NULL CHECK (btrim(title) <> ''),
    body        text NOT NULL CHECK (btrim(body) <> ''),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tb_comment (
    pk_comment  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    fk_post     bigint NOT NULL REFERENCES tb_post (pk_post) ON DELETE CASCADE,
    fk_author   bigint NOT NULL REFERENCES tb_user (pk_user) ON DELETE CASCADE,
    body        text NOT NULL CHECK (btrim(body) <> ''),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Every FK is the leading column of an index whose tail is the views' order
-- (created_at, id): v_post WHERE author_id = $1 ORDER BY created_at, id and the
-- relation arrays inside data read rows in index order. The (created_at, id)
-- indexes serve the unfiltered list fields (users/posts/comments(limit, offset)).
CREATE INDEX tb_user_created_at_id_idx ON tb_user (created_at, id);
CREATE INDEX tb_post_fk_author_idx ON tb_post (fk_author, created_at, id);
CREATE INDEX tb_post_created_at_id_idx ON tb_post (created_at, id);
CREATE INDEX tb_comment_fk_post_idx ON tb_comment (fk_post, created_at, id);
CREATE INDEX tb_comment_fk_author_idx ON tb_comment (fk_author, created_at, id);
CREATE INDEX tb_comment_created_at_id_idx ON tb_comment (created_at, id);

-- ===========================================================================
-- Helpers
-- ===========================================================================

-- ISO 8601 in UTC, independent of the session's TimeZone: cached bytes must not
-- depend on which pooled connection produced them. STABLE (as to_char is) so
-- that the planner inlines it.
CREATE OR REPLACE FUNCTION fn_iso8601(ts timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');

-- ===========================================================================
-- Read views
-- ===========================================================================

CREATE VIEW v_user AS
SELECT
    u.id,
    u.created_at,
    jsonb_build_object(
        'id', u.id,
        'name', u.name,
        'email', u.email,
        'created_at', fn_iso8601(u.created_at),
        'posts', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                       'id', p.id,
                       'title', p.title,
                       'body', p.body,
                       'created_at', fn_iso8601(p.created_at))
                   ORDER BY p.created_at, p.id)
            FROM tb_post p
            WHERE p.fk_author = u.pk_user), '[]'::jsonb)
    ) AS data
FROM tb_user u;

CREATE VIEW v_post AS
SELECT
    p.id,
    a.id AS author_id,
    p.created_at,
    jsonb_build_object(
        'id', p.id,
        'title', p.title,
        'body', p.body,
        'created_at', fn_iso8601(p.created_at),
        'author', jsonb_build_object(
            'id', a.id,
            'name', a.name,
            'email', a.email,
            'created_at', fn_iso8601(a.created_at)),
        'comments', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                       'id', c.id,
                       'body', c.body,
                       'created_at', fn_iso8601(c.created_at),
                       'author', jsonb_build_object(
                           'id', ca.id,
                           'name', ca.name,
                           'email', ca.email,
                           'created_at', fn_iso8601(ca.created_at)))
                   ORDER BY c.created_at, c.id)
            FROM tb_comment c
            JOIN tb_user ca ON ca.pk_user = c.fk_author
            WHERE c.fk_post = p.pk_post), '[]'::jsonb)
    ) AS data
FROM tb_post p
JOIN tb_user a ON a.pk_user = p.fk_author;

CREATE VIEW v_comment AS
SELECT
    c.id,
    p.id AS post_id,
    a.id AS author_id,
    c.created_at,
    jsonb_build_object(
        'id', c.id,
        'body', c.body,
        'created_at', fn_iso8601(c.created_at),
        'author', jsonb_build_object(
            'id', a.id,
            'name', a.name,
            'email', a.email,
            'created_at', fn_iso8601(a.created_at)),
        'post', jsonb_build_object(
            'id', p.id,
            'title', p.title,
            'body', p.body,
            'created_at', fn_iso8601(p.created_at))
    ) AS data
FROM tb_comment c
JOIN tb_post p ON p.pk_post = c.fk_post
JOIN tb_user a ON a.pk_user = c.fk_author;

-- Error fields name the GraphQL input field (camelCase), as the client wrote it.
-- A missing id is a VALIDATION_ERROR; an id that is not a UUID makes the
-- ::uuid cast raise (invalid_text_representation), which the server reports
-- as a GraphQL error like any other error the function does not expect.

-- ===========================================================================
-- Mutations: users
-- ===========================================================================

CREATE OR REPLACE FUNCTION fn_create_user(input jsonb) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_name text := btrim(input->>'name');
    v_email text := btrim(input->>'email');
    v_id uuid;
BEGIN
    IF coalesce(v_name, '') = '' THEN
        RETURN fraiseshm.cascade_failure('VALIDATION_ERROR', 'name must not be empty', 'name');
    END IF;
    IF coalesce(v_email, '') = '' THEN
        RETURN fraiseshm.cascade_failure('VALIDATION_ERROR', 'email must not be empty', 'email');
    END IF;
    IF v_email !~ '^[^@\s]+@[^@\s]+$' THEN
        RETURN fraiseshm.cascade_failure('VALIDATION_ERROR', format('email %s is not an e-mail address', v_email), 'email');
    END IF;
    BEGIN
        INSERT INTO tb_user (name, email) VALUES (v_name, v_email) RETURNING id INTO v_id;
    EXCEPTION WHEN unique_violation THEN
        RETURN fraiseshm.cascade_failure('CONFLICT', format('email %s is already in use', v_email), 'email');
    END;
    RETURN fraiseshm.cascade_response(
        (SELECT data FROM v_user WHERE id = v_id),
        jsonb_build_array(fraiseshm.cascade_updated('User', v_id, 'v_user', 'CREATED')),
        '[]'::jsonb,
        fraiseshm.cascade_invalidations('users'),
        1);
END
$$;

CREATE OR REPLACE FUNCTION fn_update_user(input jsonb) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_id uuid := (input->>'id')::uuid;
    v_name text := btrim(input->>'name');    -- absent or null: unchanged
    v_email text := btrim(input->>'email');
BEGIN
    IF v_id IS NULL THEN
        RETURN fraiseshm.cascade_failure('VALIDATION_ERROR', 'id is required', 'id');
    END IF;
    IF v_name = '' THEN
        RETURN fraiseshm.cascade_failure('VALIDATION_ERROR', 'name must not be empty', 'name');
    END IF;
    IF v_email = '' THEN
        RETURN fraiseshm.cascade_failure('VALIDATION_ERROR', 'email must not be empty', 'email');
    END IF;
    IF v_email !~ '^[^@\s]+@[^@\s]+$' THEN
        RETURN fraiseshm.cascade_failure('VALIDATION_ERROR', format('email %s is not an e-mail address', v_email), 'email');
    END IF;
    BEGIN
        UPDATE tb_user
        SET name = coalesce(v_name, name), email = coalesce(v_email, email)
        WHERE id = v_id;
    EXCEPTION WHEN unique_violation THEN
        RETURN fraiseshm.cascade_failure('CONFLICT', format('email %s is already in use', v_email), 'email');
    END;
    IF NOT FOUND THEN
        RETURN fraiseshm.cascade_failure('NOT_FOUND', format('user %s not found', v_id), 'id');
    END IF;
    -- Posts and comments embed the user, but the server derives those
    -- dependents from User:id, so the cascade lists the user alone.
    RETURN fraiseshm.cascade_response(
        (SELECT data FROM v_user WHERE id = v_id),
        jsonb_build_array(fraiseshm.cascade_updated('User', v_id, 'v_user', 'UPDATED')),
        '[]'::jsonb,
        '[]'::jsonb,
        1);
END
$$;

-- Deletes the user, the user's posts, every comment on those posts and every
-- comment the user wrote. Posts of other users that lost comments are UPDATED.
CREATE OR REPLACE FUNCTION fn_delete_user(input jsonb) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_id uuid := (input->>'id')::uuid;
    v_pk bigint;
    v_data jsonb;
    v_deleted_comments jsonb;
    v_updated_posts jsonb;
    v_deleted_posts jsonb;
BEGIN
    IF v_id IS NULL THEN
        RETURN fraiseshm.cascade_failure('VALIDATION_ERROR', 'id is required', 'id');
    END IF;
    -- LOCK: the user row, then its posts. A concurrent createPost/createComment
    -- takes KEY SHARE on them for its FK check, so it waits for us and then
    -- fails its FK check instead of slipping a row past this cascade (which
    -- ON DELETE CASCADE would then delete silently).
    SELECT pk_user INTO v_pk FROM tb_user WHERE id = v_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN fraiseshm.cascade_failure('NOT_FOUND', format('user %s not found', v_id), 'id');
    END IF;
    PERFORM 1 FROM tb_post WHERE fk_author = v_pk ORDER BY pk_post FOR UPDATE;
    v_data := (SELECT data FROM v_user WHERE id = v_id);

    WITH gone AS (
        DELETE FROM tb_comment c
        WHERE c.fk_author = v_pk
           OR c.fk_post IN (SELECT p.pk_post FROM tb_post p WHERE p.fk_author = v_pk)
        RETURNING c.id, c.fk_post, c.created_at
    )
    SELECT
        coalesce(jsonb_agg(fraiseshm.cascade_deleted('Comment', g.id)
                           ORDER BY g.created_at, g.id), '[]'::jsonb),
        -- parents of other users (tb_post still has them: posts go next)
        (SELECT coalesce(jsonb_agg(fraiseshm.cascade_updated('Post', p.id, 'v_post', 'UPDATED')
                                   ORDER BY p.created_at, p.id), '[]'::jsonb)
         FROM tb_post p
         WHERE p.pk_post IN (SELECT fk_post FROM gone) AND p.fk_author <> v_pk)
    INTO v_deleted_comments, v_updated_posts
    FROM gone g;

    WITH gone AS (
        DELETE FROM tb_post WHERE fk_author = v_pk RETURNING id, created_at
    )
    SELECT coalesce(jsonb_agg(fraiseshm.cascade_deleted('Post', id)
                              ORDER BY created_at, id), '[]'::jsonb)
    INTO v_deleted_posts
    FROM gone;

    DELETE FROM tb_user WHERE pk_user = v_pk;

    RETURN fraiseshm.cascade_response(
        v_data,
        v_updated_posts,
        jsonb_build_array(fraiseshm.cascade_deleted('User', v_id))
            || v_deleted_posts || v_deleted_comments,
        fraiseshm.cascade_invalidations('users', 'posts', 'comments'),
        CASE WHEN v_deleted_posts = '[]' AND v_deleted_comments = '[]' THEN 1 ELSE 2 END,
        -- The user's private drafts (examples/blog/private.sql) go by ON DELETE CASCADE: row-level
        -- security hides them from this function, so the cascade covers their type instead.
        CASE WHEN to_regclass('tb_draft') IS NULL THEN '[]'::jsonb
             ELSE '[{"typename": "Draft"}]'::jsonb END);
END
$$;

-- ===========================================================================
-- Mutations: posts
-- ===========================================================================

CREATE OR REPLACE FUNCTION fn_create_post(input jsonb) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_author uuid := (input->>'author_id')::uuid;
    v_title text := btrim(input->>'title');
    v_body text := btrim(input->>'body');
    v_pk_author bigint;
    v_id uuid;
BEGIN
    IF v_author IS NULL THEN
        RETURN fraiseshm.cascade_failure('VALIDATION_ERROR', 'authorId is required', 'authorId');
    END IF;
    IF coalesce(v_title, '') = '' THEN
        RETURN fraiseshm.cascade_failure('VALIDATION_ERROR', 'title must not be empty', 'title');
    END IF;
    IF coalesce(v_body, '') = '' THEN
        RETURN fraiseshm.cascade_failure('VALIDATION_ERROR', 'body must not be empty', 'body');
    END IF;
    SELECT pk_user INTO v_pk_author FROM tb_user WHERE id = v_author;
    IF NOT FOUND THEN
        RETURN fraiseshm.cascade_failure('NOT_FOUND', format('user %s not found', v_author), 'authorId');
    END IF;
    BEGIN
        INSERT INTO tb_post (fk_author, title, body) VALUES (v_pk_author, v_title, v_body)
        RETURNING id INTO v_id;
    EXCEPTION WHEN foreign_key_violation THEN  -- the author was deleted meanwhile
        RETURN fraiseshm.cascade_failure('NOT_FOUND', format('user %s not found', v_author), 'authorId');
    END;
    RETURN fraiseshm.cascade_response(
        (SELECT data FROM v_post WHERE id = v_id),
        jsonb_build_array(
            fraiseshm.cascade_updated('Post', v_id, 'v_post', 'CREATED'),
            fraiseshm.cascade_updated('User', v_author, 'v_user', 'UPDATED')),
        '[]'::jsonb,
        fraiseshm.cascade_invalidations('posts'),
        2);
END
$$;

CREATE OR REPLACE FUNCTION fn_update_post(input jsonb) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_id uuid := (input->>'id')::uuid;
    v_title text := btrim(input->>'title');
    v_body text := btrim(input->>'body');
BEGIN
    IF v_id IS NULL THEN
        RETURN fraiseshm.cascade_failure('VALIDATION_ERROR', 'id is required', 'id');
    END IF;
    IF v_title = '' THEN
        RETURN fraiseshm.cascade_failure('VALIDATION_ERROR', 'title must not be empty', 'title');
    END IF;
    IF v_body = '' THEN
        RETURN fraiseshm.cascade_failure('VALIDATION_ERROR', 'body must not be empty', 'body');
    END IF;
    UPDATE tb_post SET title = coalesce(v_title, title), body = coalesce(v_body, body)
    WHERE id = v_id;
    IF NOT FOUND THEN
        RETURN fraiseshm.cascade_failure('NOT_FOUND', format('post %s not found', v_id), 'id');
    END IF;
    RETURN fraiseshm.cascade_response(
        (SELECT data FROM v_post WHERE id = v_id),
        jsonb_build_array(fraiseshm.cascade_updated('Post', v_id, 'v_post', 'UPDATED')),
        '[]'::jsonb,
        '[]'::jsonb,
        1);
END
$$;

-- Deletes the post and its comments; its author's posts list changed (UPDATED).
CREATE OR REPLACE FUNCTION fn_delete_post(input jsonb) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_id uuid := (input->>'id')::uuid;
    v_pk bigint;
    v_author uuid;
    v_data jsonb;
    v_deleted_comments jsonb;
BEGIN
    IF v_id IS NULL THEN
        RETURN fraiseshm.cascade_failure('VALIDATION_ERROR', 'id is required', 'id');
    END IF;
    -- LOCK: a concurrent createComment waits on this row, then fails its FK check.
    SELECT p.pk_post, u.id INTO v_pk, v_author
    FROM tb_post p JOIN tb_user u ON u.pk_user = p.fk_author
    WHERE p.id = v_id
    FOR UPDATE OF p;
    IF NOT FOUND THEN
        RETURN fraiseshm.cascade_failure('NOT_FOUND', format('post %s not found', v_id), 'id');
    END IF;
    v_data := (SELECT data FROM v_post WHERE id = v_id);

    WITH gone AS (
        DELETE FROM tb_comment WHERE fk_post = v_pk RETURNING id, created_at
    )
    SELECT coalesce(jsonb_agg(fraiseshm.cascade_deleted('Comment', id)
                              ORDER BY created_at, id), '[]'::jsonb)
    INTO v_deleted_comments
    FROM gone;

    DELETE FROM tb_post WHERE pk_post = v_pk;

    RETURN fraiseshm.cascade_response(
        v_data,
        jsonb_build_array(fraiseshm.cascade_updated('User', v_author, 'v_user', 'UPDATED')),
        jsonb_build_array(fraiseshm.cascade_deleted('Post', v_id)) || v_deleted_comments,
        fraiseshm.cascade_invalidations('posts', 'comments'),
        2);
END
$$;

-- ===========================================================================
-- Mutations: comments
-- ===========================================================================

CREATE OR REPLACE FUNCTION fn_create_comment(input jsonb) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_post uuid := (input->>'post_id')::uuid;
    v_author uuid := (input->>'author_id')::uuid;
    v_body text := btrim(input->>'body');
    v_pk_post bigint;
    v_pk_author bigint;
    v_id uuid;
BEGIN
    IF v_post IS NULL THEN
        RETURN fraiseshm.cascade_failure('VALIDATION_ERROR', 'postId is required', 'postId');
    END IF;
    IF v_author IS NULL THEN
        RETURN fraiseshm.cascade_failure('VALIDATION_ERROR', 'authorId is required', 'authorId');
    END IF;
    IF coalesce(v_body, '') = '' THEN
        RETURN fraiseshm.cascade_failure('VALIDATION_ERROR', 'body must not be empty', 'body');
    END IF;
    SELECT pk_post INTO v_pk_post FROM tb_post WHERE id = v_post;
    IF NOT FOUND THEN
        RETURN fraiseshm.cascade_failure('NOT_FOUND', format('post %s not found', v_post), 'postId');
    END IF;
    SELECT pk_user INTO v_pk_author FROM tb_user WHERE id = v_author;
    IF NOT FOUND THEN
        RETURN fraiseshm.cascade_failure('NOT_FOUND', format('user %s not found', v_author), 'authorId');
    END IF;
    BEGIN
        INSERT INTO tb_comment (fk_post, fk_author, body) VALUES (v_pk_post, v_pk_author, v_body)
        RETURNING id INTO v_id;
    EXCEPTION WHEN foreign_key_violation THEN  -- post or author deleted meanwhile
        RETURN fraiseshm.cascade_failure('NOT_FOUND', 'post or author was deleted concurrently', NULL);
    END;
    RETURN fraiseshm.cascade_response(
        (SELECT data FROM v_comment WHERE id = v_id),
        jsonb_build_array(
            fraiseshm.cascade_updated('Comment', v_id, 'v_comment', 'CREATED'),
            fraiseshm.cascade_updated('Post', v_post, 'v_post', 'UPDATED')),
        '[]'::jsonb,
        fraiseshm.cascade_invalidations('comments'),
        2);
END
$$;

CREATE OR REPLACE FUNCTION fn_delete_comment(input jsonb) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_id uuid := (input->>'id')::uuid;
    v_data jsonb;
    v_post uuid;
BEGIN
    IF v_id IS NULL THEN
        RETURN fraiseshm.cascade_failure('VALIDATION_ERROR', 'id is required', 'id');
    END IF;
    SELECT data, post_id INTO v_data, v_post FROM v_comment WHERE id = v_id;
    DELETE FROM tb_comment WHERE id = v_id;
    IF NOT FOUND THEN
        RETURN fraiseshm.cascade_failure('NOT_FOUND', format('comment %s not found', v_id), 'id');
    END IF;
    RETURN fraiseshm.cascade_response(
        v_data,
        jsonb_build_array(fraiseshm.cascade_updated('Post', v_post, 'v_post', 'UPDATED')),
        jsonb_build_array(fraiseshm.cascade_deleted('Comment', v_id)),
        fraiseshm.cascade_invalidations('comments'),
        2);
END
$$;

-- ===========================================================================
-- Change notifications (writes from anywhere)
-- ===========================================================================

-- The kit's statement-level triggers (fraiseshm/db/sql/kit.sql): each
-- statement tags its rows by id (r:public.tb_post:<uuid>) and, through the
-- foreign keys, the parent rows (+r:public.tb_user:<uuid>: fk_author
-- references pk_user, the kit looks the parent's id up), signed NOTIFY plus
-- the transaction-local record. id is the row key (unique, named id).
SELECT fraiseshm.track('tb_user');
SELECT fraiseshm.track('tb_post');
SELECT fraiseshm.track('tb_comment');

-- ===========================================================================
-- Seed
-- ===========================================================================

-- Fills n_users users, each with posts_per_user posts, each with
-- comments_per_post comments by other seeded users. Set-based (one INSERT ...
-- SELECT per table), deterministic names ('user 42', user42@example.com,
-- numbered after the rows already there), timestamps spaced one second apart
-- after the newest existing user. Returns the number of users inserted.
CREATE OR REPLACE FUNCTION fn_seed(n_users int, posts_per_user int DEFAULT 5, comments_per_post int DEFAULT 2)
RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    v_first bigint;       -- users after this pk are ours
    v_number bigint;      -- the first user number to use
    v_base timestamptz;
    v_n int;
    v_fast boolean;
BEGIN
    IF n_users < 0 OR posts_per_user < 0 OR comments_per_post < 0 THEN
        RAISE EXCEPTION 'fn_seed: counts must be >= 0, got (%, %, %)', n_users, posts_per_user, comments_per_post;
    END IF;
    SELECT coalesce(max(pk_user), 0), count(*) + 1,
           greatest(timestamptz '2024-01-01 00:00:00+00', max(created_at) + interval '1 second')
    INTO v_first, v_number, v_base
    FROM tb_user;

    -- PERF: the per-row FK checks are most of the cost of a big seed (~9 us a
    -- row and FK); the rows below satisfy every FK by construction, so a
    -- superuser skips them (replica mode also mutes the change triggers:
    -- fraiseshm.touch at the end sends the table-level tags instead).
    v_fast := (SELECT rolsuper FROM pg_roles WHERE rolname = current_user);
    IF v_fast THEN
        PERFORM set_config('session_replication_role', 'replica', true);
    END IF;

    INSERT INTO tb_user (name, email, created_at)
    SELECT 'user ' || (v_number + g), 'user' || (v_number + g) || '@example.com',
           v_base + g * interval '1 second'
    FROM generate_series(0, n_users - 1) AS g;

    GET DIAGNOSTICS v_n = ROW_COUNT;

    INSERT INTO tb_post (fk_author, title, body, created_at)
    SELECT u.pk_user,
           format('%s: post %s', u.name, k),
           format('Post %s of %s. ', k, u.name)
               || repeat('Lorem ipsum dolor sit amet, consectetur adipiscing elit. ', 1 + ((u.pk_user + k) % 4)::int),
           u.created_at + k * interval '1 hour'
    FROM tb_user u, generate_series(1, posts_per_user) AS k
    WHERE u.pk_user > v_first;

    -- Comment j on a post of the user at index i is written by the user at
    -- index (i + 7j) mod n: deterministic, and someone else when n > 1.
    INSERT INTO tb_comment (fk_post, fk_author, body, created_at)
    WITH seeded AS (
        SELECT pk_user, (row_number() OVER (ORDER BY pk_user) - 1)::int AS i
        FROM tb_user WHERE pk_user > v_first
    )
    SELECT p.pk_post,
           commenter.pk_user,
           format('Comment %s on "%s".', j, p.title),
           p.created_at + j * interval '1 minute'
    FROM tb_post p
    JOIN seeded author ON author.pk_user = p.fk_author
    CROSS JOIN generate_series(1, comments_per_post) AS j
    JOIN seeded commenter ON commenter.i = (author.i + 7 * j) % greatest(v_n, 1);

    IF v_fast THEN
        PERFORM set_config('session_replication_role', 'origin', true);
        PERFORM fraiseshm.touch('tb_user', 'tb_post', 'tb_comment');
    END IF;
    ANALYZE tb_user;
    ANALYZE tb_post;
    ANALYZE tb_comment;
    RETURN v_n;
END
$$;
