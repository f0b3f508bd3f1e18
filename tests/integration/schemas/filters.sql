-- Test schema for tests/integration/test_filters*.py and test_connections*.py:
-- books by authors (FraiseQL-style keys: an internal bigint pk, a uuid id),
-- columns of every filter type, a nullable one. Needs the SQL kit installed first.
SET search_path = public;
DROP TABLE IF EXISTS tb_book, tb_author CASCADE;

CREATE TABLE tb_author (
    pk_author bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id        uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    name      text NOT NULL
);
CREATE TABLE tb_book (
    pk_book    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         integer NOT NULL UNIQUE,
    fk_author  bigint NOT NULL REFERENCES tb_author (pk_author) ON DELETE CASCADE,
    title      text NOT NULL,
    pages      integer NOT NULL,
    price      numeric(8, 2) NOT NULL,
    published  boolean NOT NULL DEFAULT true,
    genre      text,
    created_at timestamptz NOT NULL
);
SELECT fraiseshm.track('tb_author');
SELECT fraiseshm.track('tb_book', filters => ARRAY['genre', 'published']);

CREATE VIEW v_author AS
SELECT a.id, a.name, jsonb_build_object('id', a.id, 'name', a.name) AS data FROM tb_author a;

-- data holds no author: no row tag of the author reaches a book list, so a list
-- filtered by author_id is kept fresh by the f: tags alone (what the tests check).
CREATE VIEW v_book AS
SELECT b.id, a.id AS author_id, b.title, b.pages, b.price, b.published, b.genre, b.created_at,
       jsonb_build_object('id', b.id, 'title', b.title, 'pages', b.pages, 'price', b.price,
                          'published', b.published, 'genre', b.genre) AS data
FROM tb_book b JOIN tb_author a ON a.pk_author = b.fk_author;

-- 3 authors; 30 books: ids 1..30, pages 100 + 10 * id, genre NULL for every 5th.
INSERT INTO tb_author (id, name) VALUES
    ('00000000-0000-0000-0000-00000000000a', 'ada'),
    ('00000000-0000-0000-0000-00000000000b', 'bob'),
    ('00000000-0000-0000-0000-00000000000c', 'cy');
INSERT INTO tb_book (id, fk_author, title, pages, price, published, genre, created_at)
SELECT i, 1 + i % 3, 'book ' || lpad(i::text, 2, '0'), 100 + 10 * i, (i * 1.5)::numeric(8, 2), i % 4 <> 0,
       CASE WHEN i % 5 = 0 THEN NULL WHEN i % 2 = 0 THEN 'poetry' ELSE 'novel' END,
       timestamptz '2024-01-01 00:00:00+00' + i * interval '1 day'
FROM generate_series(1, 30) AS i;

-- Moves a book to another author and/or renames it; its cascade names the book only.
CREATE FUNCTION fn_update_book(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tb_book SET
        fk_author = coalesce((SELECT pk_author FROM tb_author WHERE id = (input->>'author_id')::uuid), fk_author),
        title = coalesce(input->>'title', title),
        genre = CASE WHEN input ? 'genre' THEN input->>'genre' ELSE genre END
    WHERE id = (input->>'id')::int;
    RETURN fraiseshm.cascade_response(
        (SELECT data FROM v_book WHERE id = (input->>'id')::int),
        jsonb_build_array(fraiseshm.cascade_updated('Book', (input->>'id')::int, 'v_book')));
END $$;

-- Inserts a book.
CREATE FUNCTION fn_add_book(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tb_book (id, fk_author, title, pages, price, genre, created_at)
    VALUES ((input->>'id')::int, (SELECT pk_author FROM tb_author WHERE id = (input->>'author_id')::uuid),
            input->>'title', 100, 1, input->>'genre', (input->>'created_at')::timestamptz);
    RETURN fraiseshm.cascade_response(
        (SELECT data FROM v_book WHERE id = (input->>'id')::int),
        jsonb_build_array(fraiseshm.cascade_updated('Book', (input->>'id')::int, 'v_book', 'CREATED')));
END $$;

-- Writes behind the triggers' back (session_replication_role = replica fires no
-- ordinary trigger): the transaction records no change item, so its cascade,
-- which names the book only, is all the server knows.
CREATE FUNCTION fn_move_book_quietly(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    SET LOCAL session_replication_role = replica;
    UPDATE tb_book SET fk_author = (SELECT pk_author FROM tb_author WHERE id = (input->>'author_id')::uuid)
    WHERE id = (input->>'id')::int;
    SET LOCAL session_replication_role = origin;
    RETURN fraiseshm.cascade_response(
        (SELECT data FROM v_book WHERE id = (input->>'id')::int),
        jsonb_build_array(fraiseshm.cascade_updated('Book', (input->>'id')::int, 'v_book')));
END $$;
