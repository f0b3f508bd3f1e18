-- Test schema for tests/integration/test_fraiseql_compat.py: mutation functions
-- written the FraiseQL way, served by fraiseshm unchanged. Needs the SQL kit.
--
-- FraiseQL conventions followed here (fraiseql/fraiseql: the 13-column
-- mutation_response of crates/fraiseql-cli/sql/helpers/mutation_response.sql,
-- its cascade helpers' JSON, v1 functions' `_cascade`):
--   * tb_<entity> tables with pk_<entity> bigint + id uuid ("trinity"), v_<entity>
--     views (id, data jsonb);
--   * functions RETURNS mutation_response (succeeded, state_changed, error_class,
--     status_detail, http_status, message, entity_id, entity_type, entity,
--     updated_fields, cascade, error_detail, metadata);
--   * the cascade in camelCase with __typename (queryName, affectedCount,
--     deletedAt), timestamps from now();
--   * a v1 function RETURNS jsonb with success, data, _cascade;
--   * an older 8-column composite with a status string ('updated', 'failed:...').
SET search_path = public;
DROP TABLE IF EXISTS tb_article, tb_author CASCADE;
DROP TYPE IF EXISTS mutation_response CASCADE;
DROP TYPE IF EXISTS mutation_result_v1 CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;

CREATE TABLE tb_author (
    pk_author bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    name text NOT NULL
);
CREATE TABLE tb_article (
    pk_article bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    fk_author bigint NOT NULL REFERENCES tb_author (pk_author),
    title text NOT NULL
);
SELECT fraiseshm.track('tb_author');
SELECT fraiseshm.track('tb_article');

CREATE VIEW v_author AS
SELECT a.id, jsonb_build_object('id', a.id, 'name', a.name) AS data FROM tb_author a;

CREATE VIEW v_article AS
SELECT r.id, u.id AS author_id,
       jsonb_build_object('id', r.id, 'title', r.title,
                          'author', jsonb_build_object('id', u.id, 'name', u.name)) AS data
FROM tb_article r JOIN tb_author u ON u.pk_author = r.fk_author;

INSERT INTO tb_author (id, name) VALUES
    ('00000000-0000-0000-0000-00000000000a', 'ada'),
    ('00000000-0000-0000-0000-00000000000b', 'bob');
INSERT INTO tb_article (id, fk_author, title)
SELECT '00000000-0000-0000-0000-0000000000a1', pk_author, 'first' FROM tb_author WHERE name = 'ada';
INSERT INTO tb_article (id, fk_author, title)
SELECT '00000000-0000-0000-0000-0000000000a2', pk_author, 'second' FROM tb_author WHERE name = 'ada';

CREATE TYPE mutation_response AS (
    succeeded boolean, state_changed boolean, error_class text, status_detail text, http_status smallint,
    message text, entity_id uuid, entity_type text, entity jsonb, updated_fields text[], cascade jsonb,
    error_detail jsonb, metadata jsonb
);
CREATE TYPE mutation_result_v1 AS (
    status text, message text, entity_id text, entity_type text, entity jsonb, updated_fields text[],
    cascade jsonb, metadata jsonb
);

-- The JSON FraiseQL's cascade helpers build.
CREATE SCHEMA app;
CREATE FUNCTION app.cascade_entity(p_typename text, p_id uuid, p_operation text, p_view text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE v_data jsonb;
BEGIN
    EXECUTE format('SELECT data FROM %I WHERE id = $1', p_view) INTO v_data USING p_id;
    RETURN jsonb_build_object('__typename', p_typename, 'id', p_id, 'operation', p_operation, 'entity', v_data);
END $$;
CREATE FUNCTION app.cascade_deleted(p_typename text, p_id uuid) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('__typename', p_typename, 'id', p_id, 'deletedAt', now())
$$;
CREATE FUNCTION app.cascade_invalidation(p_query_name text, p_strategy text, p_scope text) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object('queryName', p_query_name, 'strategy', p_strategy, 'scope', p_scope)
$$;
CREATE FUNCTION app.build_cascade(p_updated jsonb DEFAULT '[]', p_deleted jsonb DEFAULT '[]',
                                  p_invalidations jsonb DEFAULT '[]') RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('updated', p_updated, 'deleted', p_deleted, 'invalidations', p_invalidations,
        'metadata', jsonb_build_object('timestamp', now(), 'transactionId', txid_current()::text,
                                       'affectedCount', jsonb_array_length(p_updated) + jsonb_array_length(p_deleted)))
$$;

-- 13 columns, success: rename an author; the cascade lists the author and the articles that embed it.
CREATE FUNCTION fn_update_author(input jsonb) RETURNS mutation_response LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid := (input->>'id')::uuid;
    v_pk bigint;
    v_articles jsonb;
    result mutation_response;
BEGIN
    UPDATE tb_author SET name = input->>'name' WHERE id = v_id RETURNING pk_author INTO v_pk;
    IF v_pk IS NULL THEN
        result.succeeded := false; result.state_changed := false; result.error_class := 'not_found';
        result.message := format('Author %s not found', v_id); result.http_status := 404;
        result.error_detail := jsonb_build_object('field', 'id');
        RETURN result;
    END IF;
    SELECT coalesce(jsonb_agg(app.cascade_entity('Article', r.id, 'UPDATED', 'v_article') ORDER BY r.id), '[]')
    INTO v_articles FROM tb_article r WHERE r.fk_author = v_pk;
    result.succeeded := true; result.state_changed := true;
    result.entity_id := v_id; result.entity_type := 'Author';
    result.entity := (SELECT data FROM v_author WHERE id = v_id);
    result.updated_fields := ARRAY['name'];
    result.cascade := app.build_cascade(
        jsonb_build_array(app.cascade_entity('Author', v_id, 'UPDATED', 'v_author')) || v_articles,
        '[]',
        jsonb_build_array(app.cascade_invalidation('authors', 'INVALIDATE', 'PREFIX')));
    RETURN result;
END $$;

-- 13 columns: a validation error and a created article.
CREATE FUNCTION fn_create_article(input jsonb) RETURNS mutation_response LANGUAGE plpgsql AS $$
DECLARE
    v_author bigint;
    v_author_id uuid;
    v_id uuid;
    result mutation_response;
BEGIN
    IF coalesce(trim(input->>'title'), '') = '' THEN
        result.succeeded := false; result.state_changed := false; result.error_class := 'validation';
        result.message := 'Title is required'; result.http_status := 422;
        result.error_detail := jsonb_build_object('field', 'title', 'reason', 'blank');
        RETURN result;
    END IF;
    SELECT pk_author, id INTO v_author, v_author_id FROM tb_author WHERE id = (input->>'author_id')::uuid;
    IF v_author IS NULL THEN
        result.succeeded := false; result.state_changed := false; result.error_class := 'insufficient_karma';
        result.message := 'No such author';
        RETURN result;
    END IF;
    INSERT INTO tb_article (fk_author, title) VALUES (v_author, input->>'title') RETURNING id INTO v_id;
    result.succeeded := true; result.state_changed := true;
    result.entity_id := v_id; result.entity_type := 'Article';
    result.entity := (SELECT data FROM v_article WHERE id = v_id);
    result.cascade := app.build_cascade(
        jsonb_build_array(app.cascade_entity('Article', v_id, 'CREATED', 'v_article')),
        '[]',
        jsonb_build_array(app.cascade_invalidation('articles', 'INVALIDATE', 'PREFIX')));
    RETURN result;
END $$;

-- 13 columns, a no-op: nothing changed, no cascade (not a cascade failure).
CREATE FUNCTION fn_touch_author(input jsonb) RETURNS mutation_response LANGUAGE plpgsql AS $$
DECLARE result mutation_response;
BEGIN
    result.succeeded := true; result.state_changed := false; result.entity_type := 'Author';
    result.entity := (SELECT data FROM v_author WHERE id = (input->>'id')::uuid);
    RETURN result;
END $$;

-- v1: RETURNS jsonb with _cascade.
CREATE FUNCTION fn_delete_article(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid := (input->>'id')::uuid;
    v_author uuid;
    v_data jsonb := (SELECT data FROM v_article WHERE id = v_id);
BEGIN
    SELECT u.id INTO v_author FROM tb_article r JOIN tb_author u ON u.pk_author = r.fk_author WHERE r.id = v_id;
    DELETE FROM tb_article WHERE id = v_id;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('success', false, 'data', NULL,
            'errors', jsonb_build_array(jsonb_build_object('message', 'Article not found', 'code', 'NOT_FOUND',
                                                           'field', 'id')));
    END IF;
    RETURN jsonb_build_object('success', true, 'data', v_data,
        '_cascade', app.build_cascade('[]', jsonb_build_array(app.cascade_deleted('Article', v_id)),
            jsonb_build_array(app.cascade_invalidation('articles', 'INVALIDATE', 'PREFIX'))));
END $$;

-- The older 8-column composite: status 'updated' / 'failed:<class>'.
CREATE FUNCTION fn_retitle_article(input jsonb) RETURNS mutation_result_v1 LANGUAGE plpgsql AS $$
DECLARE v_id uuid := (input->>'id')::uuid;
BEGIN
    UPDATE tb_article SET title = input->>'title' WHERE id = v_id;
    IF NOT FOUND THEN
        RETURN ROW('failed:not_found', 'Article not found', NULL, NULL, NULL, NULL, NULL, NULL)::mutation_result_v1;
    END IF;
    RETURN ROW('updated', 'ok', v_id::text, 'Article', (SELECT data FROM v_article WHERE id = v_id),
               ARRAY['title'], app.build_cascade(jsonb_build_array(app.cascade_entity('Article', v_id, 'UPDATED',
                                                                                      'v_article'))),
               NULL)::mutation_result_v1;
END $$;

-- A misspelt key on a PREFIX invalidation: must be refused, not read as prefix "".
CREATE FUNCTION fn_misspelt_author(input jsonb) RETURNS mutation_response LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid := (input->>'id')::uuid;
    result mutation_response;
BEGIN
    UPDATE tb_author SET name = input->>'name' WHERE id = v_id;
    result.succeeded := true; result.state_changed := true; result.entity_type := 'Author';
    result.entity := (SELECT data FROM v_author WHERE id = v_id);
    result.cascade := app.build_cascade(
        jsonb_build_array(app.cascade_entity('Author', v_id, 'UPDATED', 'v_author')), '[]',
        jsonb_build_array(jsonb_build_object('queryNme', 'authors', 'strategy', 'INVALIDATE', 'scope', 'PREFIX')));
    RETURN result;
END $$;
