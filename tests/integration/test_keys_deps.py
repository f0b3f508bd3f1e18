"""Any key type and complete dependencies, end to end on real gunicorn workers.

tests/integration/schemas/keys.sql: integer, bigint, text and uuid keys, an
order total computed from item prices, a customer's order count through a
foreign key, two GraphQL types over one view, in a database of its own with
the SQL kit installed and its tables tracked. Mutations whose cascades name only the row they wrote
must still leave every computed value fresh: the entries depend on what the
database built them from, not on what the query selected.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fraiseshm.db.embedded import EmbeddedCluster
from fraiseshm.db.kit import INSTALL_FILES
from fraiseshm.db.pool import Database
from fraiseshm.graphql.catalog import load_catalog, view_definitions
from tests.integration.server import Server, graphql

SCHEMAS = Path(__file__).parent / "schemas"


def make_database(cluster: EmbeddedCluster, name: str, *files: Path) -> str:
    dsn = cluster.fresh_database(name)
    for path in (*INSTALL_FILES, *files):
        subprocess.run([str(cluster.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", str(path)],
                       check=True, capture_output=True)
    return dsn


@pytest.fixture(scope="module")
def keys_dsn(pg_cluster: EmbeddedCluster) -> str:
    return make_database(pg_cluster, "keys_it", SCHEMAS / "keys.sql")


def _keys_server(keys_dsn: str, *, listen: bool) -> Iterator[httpx.Client]:
    env = {"FRAISESHM_SCHEMA_SDL": str(SCHEMAS / "keys.graphql"), "FRAISESHM_LOG_LEVEL": "info",
           "FRAISESHM_LISTEN_CHANGES": "true" if listen else "false"}
    with Server(keys_dsn, workers=2, env=env, tag="keys") as srv, srv.client() as client:
        client.server = srv  # type: ignore[attr-defined]
        yield client


@pytest.fixture(scope="module")
def keys(keys_dsn: str) -> Iterator[httpx.Client]:
    """Change listener off: what a mutation invalidates before it answers is all there is
    (its NOTIFY would otherwise re-invalidate the same rows and mask a fault)."""
    yield from _keys_server(keys_dsn, listen=False)


@pytest.fixture(scope="module")
def keys_listening(keys_dsn: str) -> Iterator[httpx.Client]:
    """Change listener on: plain SQL writes reach the cache only through it."""
    yield from _keys_server(keys_dsn, listen=True)


def _read(client: httpx.Client, query: str, variables: dict | None = None, misses_first: bool = True) -> dict:
    """The answer, and a check that a second identical read is a HIT."""
    first = graphql(client, query, variables)
    assert first.status_code == 200 and "errors" not in first.json(), first.text
    second = graphql(client, query, variables)
    assert second.headers["X-Cache"] == "HIT", (query, second.headers)
    return first.json()["data"]


def test_integer_bigint_text_keys_and_typed_filters(keys: httpx.Client) -> None:
    assert _read(keys, "{ customer(id: 1) { id name } }") == {"customer": {"id": "1", "name": "ann"}}
    assert _read(keys, '{ order(id: "5000000000") { id note } }')["order"] == {"id": "5000000000", "note": "big key"}
    assert _read(keys, '{ product(id: "ink") { price } }') == {"product": {"price": 4.0}}
    assert [o["id"] for o in _read(keys, "{ orders(customerId: 1) { id } }")["orders"]] == ["10", "11"]
    assert _read(keys, '{ customersByName(name: "bob") { id } }') == {"customersByName": [{"id": "2"}]}
    assert _read(keys, "{ customer(id: 404) { id } }") == {"customer": None}


@pytest.mark.parametrize(("query", "message"), [
    ('{ order(id: "abc") { id } }', "order: argument id: 'abc' is not a valid bigint"),
    ('{ order(id: "99999999999999999999") { id } }', "is not a valid bigint"),
    ('{ customer(id: 1) { id } orders(customerId: 1) { id } product(id: "pen") { id } order(id: "1.5") { id } }',
     "order: argument id: '1.5' is not a valid bigint"),
])
def test_a_malformed_id_is_a_graphql_error_naming_field_and_type(keys: httpx.Client, query: str, message: str) -> None:
    r = graphql(keys, query)
    assert r.status_code == 200, r.text
    body = r.json()
    assert any(message in e["message"] for e in body["errors"]), body
    assert r.headers["X-Cache"] == "MISS" and "None" not in r.text


def test_a_computed_total_is_fresh_after_a_price_change_whatever_was_selected(keys: httpx.Client) -> None:
    # Only `total` is selected: the entry still depends on every product inside the order's data.
    q = "{ order(id: 10) { total } }"
    assert _read(keys, q) == {"order": {"total": 9.0}}  # 2 x 2.50 + 1 x 4.00
    r = graphql(keys, 'mutation { setPrice(input: {code: "pen", price: 3}) { success } }')
    assert r.json()["data"]["setPrice"]["success"], r.text
    after = graphql(keys, q)
    assert after.headers["X-Cache"] == "MISS" and after.json()["data"] == {"order": {"total": 10.0}}


def test_a_count_through_a_foreign_key_is_fresh_on_both_types_over_the_view(keys: httpx.Client) -> None:
    one = "{ customer(id: 2) { orderCount } }"
    listed = "{ customersByName { id orderCount } }"
    assert _read(keys, one) == {"customer": {"orderCount": 1}}
    before = {c["id"]: c["orderCount"] for c in _read(keys, listed)["customersByName"]}
    # The cascade names the new Order only; the trigger's +r:public.customers:2 reaches both entries.
    r = graphql(keys, 'mutation { addOrder(input: {id: "12", customerId: 2, note: "n"}) { success } }')
    assert r.json()["data"]["addOrder"]["success"], r.text
    assert graphql(keys, one).json()["data"] == {"customer": {"orderCount": 2}}
    after = {c["id"]: c["orderCount"] for c in graphql(keys, listed).json()["data"]["customersByName"]}
    assert after == {**before, "2": 2}


def test_a_cascade_that_omits_a_changed_row_is_caught_and_the_read_is_fresh(keys: httpx.Client) -> None:
    q = "{ customer(id: 1) { name } }"
    _read(keys, q)
    r = graphql(keys, 'mutation { renameSilently(input: {id: 1, name: "anna"}) { success } }')
    assert r.json()["data"]["renameSilently"]["success"], r.text
    assert graphql(keys, q).json()["data"] == {"customer": {"name": "anna"}}
    log = keys.server.log()  # type: ignore[attr-defined]
    assert "cascade failure in renameSilently (unlisted)" in log and "r:public.customers:1" in log


def _await(client: httpx.Client, query: str, expected: dict, deadline: float = 5.0) -> None:
    """Polls until the answer is expected: the change travels NOTIFY -> listener -> arena."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if graphql(client, query).json().get("data") == expected:
            return
    raise AssertionError(f"{query} never answered {expected} within {deadline}s: the write did not invalidate")


def test_plain_sql_on_child_rows_reaches_the_parents_computed_values(keys_listening: httpx.Client,
                                                                    pg_cluster: EmbeddedCluster) -> None:
    keys = keys_listening
    total = "{ order(id: 11) { total } }"
    count = "{ customer(id: 1) { orderCount } }"
    before = _read(keys, total)["order"]["total"]
    n = _read(keys, count)["customer"]["orderCount"]
    # A new item of order 11: the kit's +r:public.orders:11 (through order_items.order_id).
    pg_cluster.psql("INSERT INTO order_items (order_id, product_code, qty) VALUES (11, 'ink', 1)", database="keys_it")
    _await(keys, total, {"order": {"total": before + 4.0}})  # ink costs 4.00
    # A plain INSERT INTO orders: +r:public.customers:1 (through orders.customer_id).
    pg_cluster.psql("INSERT INTO orders VALUES (13, 1, 'plain')", database="keys_it")
    _await(keys, count, {"customer": {"orderCount": n + 1}})


async def _catalog(dsn: str, views: list[str]):
    db = Database(dsn, min_size=1, max_size=1)
    try:
        return await load_catalog(db.fetch_column, views, [])
    finally:
        await db.close()


def test_reads_not_joined_on_a_key_or_foreign_key_are_detected(keys_dsn: str, pg_cluster: EmbeddedCluster) -> None:
    pg_cluster.psql(
        # orders: once through the FK (precise), once as a global count (not joined: coarse);
        # products: joined on price, not on a key.
        "CREATE VIEW v_global AS SELECT c.id, jsonb_build_object("
        " 'mine', (SELECT count(*) FROM orders o WHERE o.customer_id = c.id),"
        " 'all', (SELECT count(*) FROM orders),"
        " 'cheap', (SELECT count(*) FROM products p JOIN products q ON q.price = p.price)) AS data FROM customers c;"
        "CREATE VIEW v_fk_only AS SELECT c.id, jsonb_build_object("
        " 'mine', (SELECT count(*) FROM orders o WHERE o.customer_id = c.id AND o.note IS NOT NULL OR false)) AS data "
        "FROM customers c;",
        database="keys_it")
    catalog = asyncio.run(_catalog(keys_dsn, ["v_customer", "v_order", "v_global", "v_fk_only"]))
    assert catalog.views["v_customer"].unjoined == () and catalog.views["v_order"].unjoined == ()
    assert catalog.views["v_global"].unjoined == ("public.orders", "public.products")
    assert catalog.views["v_fk_only"].unjoined == ("public.orders",)  # an OR does not restrict


def test_the_read_set_follows_sql_standard_functions(keys_dsn: str, pg_cluster: EmbeddedCluster) -> None:
    pg_cluster.psql(
        "CREATE TABLE fn_counted (id int PRIMARY KEY, c int);"
        "CREATE FUNCTION fn_count(x int) RETURNS bigint LANGUAGE sql STABLE "
        "BEGIN ATOMIC SELECT count(*) FROM fn_counted WHERE c = x; END;"
        "CREATE VIEW v_counted AS SELECT c.id, jsonb_build_object('n', fn_count(c.id)) AS data FROM customers c;",
        database="keys_it")
    catalog = asyncio.run(_catalog(keys_dsn, ["v_counted"]))
    assert catalog.views["v_counted"].reads == ("public.customers", "public.fn_counted")
    before = catalog.definitions
    pg_cluster.psql("CREATE OR REPLACE FUNCTION fn_count(x int) RETURNS bigint LANGUAGE sql STABLE "
                    "BEGIN ATOMIC SELECT count(*) + 1 FROM fn_counted WHERE c = x; END;", database="keys_it")
    assert asyncio.run(_catalog(keys_dsn, ["v_counted"])).definitions != before


def test_the_schema_version_covers_the_view_definitions(keys_dsn: str, pg_cluster: EmbeddedCluster) -> None:
    async def definitions() -> bytes:
        return (await _catalog(keys_dsn, ["v_product"])).definitions

    before = asyncio.run(definitions())
    assert asyncio.run(definitions()) == before

    async def alone() -> bytes:
        db = Database(keys_dsn, min_size=1, max_size=1)
        try:
            return await view_definitions(db.fetch_column, ["v_product"])
        finally:
            await db.close()

    assert asyncio.run(alone()) == before  # the periodic re-check's cheap hash is the same hash
    pg_cluster.psql("CREATE OR REPLACE VIEW v_product AS SELECT p.code AS id, "
                    "jsonb_build_object('id', p.code, 'price', p.price * 2) AS data FROM products p",
                    database="keys_it")
    assert asyncio.run(definitions()) != before


def test_a_view_replaced_while_running_is_never_served_from_its_old_entries(pg_cluster: EmbeddedCluster) -> None:
    dsn = make_database(pg_cluster, "keys_ddl", SCHEMAS / "keys.sql")
    # No listener: the kit's DDL event trigger would flush the arena at once; this is about the re-check.
    env = {"FRAISESHM_SCHEMA_SDL": str(SCHEMAS / "keys.graphql"), "FRAISESHM_SCHEMA_RECHECK_INTERVAL": "0.2",
           "FRAISESHM_LISTEN_CHANGES": "false"}
    with Server(dsn, workers=2, env=env, tag="ddl") as srv, srv.client() as client:
        q = '{ product(id: "ink") { price } }'
        assert _read(client, q) == {"product": {"price": 4.0}}
        # No row changes: only the definition does. No trigger fires; the re-check must notice.
        pg_cluster.psql("CREATE OR REPLACE VIEW v_product AS SELECT p.code AS id, "
                        "jsonb_build_object('id', p.code, 'price', p.price * 2) AS data FROM products p",
                        database="keys_ddl")
        _await(client, q, {"product": {"price": 8.0}})
        assert "the served views' SQL changed while running" in srv.log()
