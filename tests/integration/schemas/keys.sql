-- Test schema for tests/integration/test_keys_deps.py: integer, bigint, text
-- and uuid keys, a computed total, a count through a foreign key, two GraphQL
-- types over one view. Needs the SQL kit (fraiseshm/db/sql/kit.sql) installed first.
SET search_path = public;
DROP TABLE IF EXISTS order_items, orders, products, customers CASCADE;

CREATE TABLE customers (id integer PRIMARY KEY, name text NOT NULL);
CREATE TABLE products (code text PRIMARY KEY, price numeric(10, 2) NOT NULL);
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id integer NOT NULL REFERENCES customers (id), note text);
CREATE TABLE order_items (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    order_id bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    product_code text NOT NULL REFERENCES products (code),
    qty integer NOT NULL
);

SELECT fraiseshm.track('customers');
SELECT fraiseshm.track('products');
SELECT fraiseshm.track('orders');
SELECT fraiseshm.track('order_items');

CREATE VIEW v_customer AS
SELECT c.id, c.name,
       jsonb_build_object('id', c.id, 'name', c.name,
                          'order_count', (SELECT count(*) FROM orders o WHERE o.customer_id = c.id)) AS data
FROM customers c;

CREATE VIEW v_product AS
SELECT p.code AS id, jsonb_build_object('id', p.code, 'price', p.price) AS data FROM products p;

CREATE VIEW v_order AS
SELECT o.id, o.customer_id,
       jsonb_build_object(
           'id', o.id, 'note', o.note,
           'customer', jsonb_build_object('id', c.id, 'name', c.name),
           'total', (SELECT coalesce(sum(i.qty * p.price), 0) FROM order_items i
                     JOIN products p ON p.code = i.product_code WHERE i.order_id = o.id),
           'items', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                         'id', i.id, 'qty', i.qty,
                         'product', jsonb_build_object('id', p.code, 'price', p.price)) ORDER BY i.id), '[]')
                     FROM order_items i JOIN products p ON p.code = i.product_code WHERE i.order_id = o.id)
       ) AS data
FROM orders o JOIN customers c ON c.id = o.customer_id;

INSERT INTO customers VALUES (1, 'ann'), (2, 'bob');
INSERT INTO products VALUES ('pen', 2.50), ('ink', 4.00);
INSERT INTO orders VALUES (10, 1, 'first'), (11, 1, 'second'), (5000000000, 2, 'big key');
INSERT INTO order_items (order_id, product_code, qty) VALUES (10, 'pen', 2), (10, 'ink', 1), (11, 'pen', 1);

-- Mutations whose cascades name only the row they write: the derived items the
-- triggers record must keep the customer's count and the order's total fresh.
CREATE FUNCTION fn_set_price(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    UPDATE products SET price = (input->>'price')::numeric WHERE code = input->>'code';
    RETURN jsonb_build_object('success', true, 'data', (SELECT data FROM v_product WHERE id = input->>'code'),
        'cascade', jsonb_build_object(
            'updated', jsonb_build_array(jsonb_build_object('__typename', 'Product', 'id', input->>'code',
                                                            'operation', 'UPDATED')),
            'deleted', '[]'::jsonb, 'invalidations', '[]'::jsonb,
            'metadata', jsonb_build_object('transaction_id', txid_current()::text)));
END $$;

CREATE FUNCTION fn_add_order(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO orders VALUES ((input->>'id')::bigint, (input->>'customer_id')::int, input->>'note');
    RETURN jsonb_build_object('success', true, 'data', (SELECT data FROM v_order WHERE id = (input->>'id')::bigint),
        'cascade', jsonb_build_object(
            'updated', jsonb_build_array(jsonb_build_object('__typename', 'Order', 'id', (input->>'id')::bigint,
                                                            'operation', 'CREATED')),
            'deleted', '[]'::jsonb, 'invalidations', '[]'::jsonb,
            'metadata', jsonb_build_object('transaction_id', txid_current()::text)));
END $$;

-- A cascade that forgets the row it changed: verification must catch it.
CREATE FUNCTION fn_rename_silently(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    UPDATE customers SET name = input->>'name' WHERE id = (input->>'id')::int;
    RETURN jsonb_build_object('success', true, 'data', NULL,
        'cascade', jsonb_build_object('updated', '[]'::jsonb, 'deleted', '[]'::jsonb, 'invalidations', '[]'::jsonb,
            'metadata', jsonb_build_object('transaction_id', txid_current()::text)));
END $$;

-- For tests/integration/test_schema_check.py: a table nobody tracked, and a
-- view whose id is of a type no key can be.
CREATE TABLE notes (id integer PRIMARY KEY, customer_id integer REFERENCES customers (id), body text);
CREATE VIEW v_note AS SELECT n.id, jsonb_build_object('id', n.id, 'body', n.body) AS data FROM notes n;
CREATE VIEW v_price AS SELECT p.price AS id, jsonb_build_object('id', p.price) AS data FROM products p;
