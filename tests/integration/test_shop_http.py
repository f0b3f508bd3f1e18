"""The example shop served by a real server (2 gunicorn workers) on its own
database: integer keys, and every stale read of issue 12's "Why" turned into a
check. After a mutation's response, the next read is fresh at once; after a
plain SQL write, reads are repeated until fresh (the notification latency),
with a deadline.

- `customer(id: 8)` works on an integer key; a malformed id is a GraphQL
  error naming the field, never a 500.
- `order(id) { total }` after `updateProduct` changed a price in that order.
- `customer(id) { orderCount }` after a plain `INSERT INTO orders`.
- `Order` and `RecentOrder` (two types over v_order) after a plain UPDATE.
- the many-to-many (a plain INSERT into product_categories) and an item's
  quantity changed by plain SQL (the order's total).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fraiseshm.db.embedded import EmbeddedCluster
from tests.integration.server import Server, graphql
from tests.integration.shop_db import shop_database

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 5.0  # seconds for a plain-SQL write to reach the cache


@pytest.fixture(scope="module")
def shop(pg_cluster: EmbeddedCluster) -> Iterator[tuple[str, str]]:
    """(dsn, database) of a fresh shop database: kit, schema, 50 customers."""
    db = f"shop_http_{os.getpid()}"
    with shop_database(pg_cluster, db, 50, 40) as dsn:
        yield dsn, db


@pytest.fixture(scope="module")
def http(shop: tuple[str, str]) -> Iterator[httpx.Client]:
    env = {"FRAISESHM_SCHEMA_SDL": str(ROOT / "examples/shop/schema.graphql")}
    with Server(shop[0], workers=2, tag="shop", env=env) as server, server.client() as client:
        yield client


def sql(cluster: EmbeddedCluster, shop: tuple[str, str], statement: str) -> str:
    return cluster.psql(statement, database=shop[1]).strip()


def read(http: httpx.Client, query: str, variables: dict[str, Any] | None = None) -> tuple[Any, str]:
    r = graphql(http, query, variables)
    assert r.status_code == 200, r.text
    body = r.json()
    assert "errors" not in body, body
    return body["data"], r.headers.get("X-Cache", "")


def cached(http: httpx.Client, query: str, variables: dict[str, Any] | None = None) -> Any:
    """Read until the answer comes from the arena; returns it."""
    for _ in range(5):
        data, state = read(http, query, variables)
        if state == "HIT":
            return data
    raise AssertionError(f"never a HIT: {query}")


def eventually(http: httpx.Client, query: str, variables: dict[str, Any] | None, check: Callable[[Any], bool]) -> Any:
    end = time.monotonic() + DEADLINE
    while True:
        data, _ = read(http, query, variables)
        if check(data):
            return data
        assert time.monotonic() < end, f"still stale after {DEADLINE}s: {data}"


ORDER = "query($id: ID!) { order(id: $id) { id status total items { quantity product { id price } } } }"
RECENT = "query($id: ID!) { recentOrder(id: $id) { id status total } }"
CUSTOMER = "query($id: ID!) { customer(id: $id) { id name orderCount } }"
PRODUCT = "query($id: ID!) { product(id: $id) { id categories { id name } } }"
UPDATE_PRODUCT = "mutation($i: UpdateProductInput!) { updateProduct(input: $i) { success errors { message } } }"


def test_integer_keys_and_a_malformed_id(http: httpx.Client) -> None:
    data, _ = read(http, CUSTOMER, {"id": "8"})
    assert data["customer"]["id"] == "8" and data["customer"]["orderCount"] == 2
    r = graphql(http, CUSTOMER, {"id": "abc"})
    assert r.status_code in (200, 400), r.text
    body = r.json()
    assert body.get("errors") and "customer" in body["errors"][0]["message"], body
    assert "None" not in body["errors"][0]["message"]


def test_order_total_after_update_product(http: httpx.Client, pg_cluster: EmbeddedCluster, shop: tuple[str, str]) -> None:
    order_id = sql(pg_cluster, shop, "SELECT min(order_id) FROM order_items")
    before = cached(http, ORDER, {"id": order_id})["order"]
    item = before["items"][0]
    new_price = round(item["product"]["price"] + 1.25, 2)
    r = graphql(http, UPDATE_PRODUCT, {"i": {"id": item["product"]["id"], "price": f"{new_price:.2f}"}})
    assert r.json()["data"]["updateProduct"]["success"], r.text
    after, _ = read(http, ORDER, {"id": order_id})  # no waiting: the mutation answered
    expected = round(before["total"] + 1.25 * sum(
        i["quantity"] for i in before["items"] if i["product"]["id"] == item["product"]["id"]), 2)
    assert round(after["order"]["total"], 2) == expected


def test_order_count_after_a_plain_insert(http: httpx.Client, pg_cluster: EmbeddedCluster, shop: tuple[str, str]) -> None:
    before = cached(http, CUSTOMER, {"id": "9"})["customer"]["orderCount"]
    sql(pg_cluster, shop, "INSERT INTO orders (customer_id) VALUES (9)")
    eventually(http, CUSTOMER, {"id": "9"}, lambda d: d["customer"]["orderCount"] == before + 1)


def test_two_types_over_one_view_after_a_plain_update(
    http: httpx.Client, pg_cluster: EmbeddedCluster, shop: tuple[str, str]
) -> None:
    order_id = sql(pg_cluster, shop, "SELECT max(id) FROM orders WHERE status <> 'shipped'")
    cached(http, ORDER, {"id": order_id})
    cached(http, RECENT, {"id": order_id})
    sql(pg_cluster, shop, f"UPDATE orders SET status = 'shipped' WHERE id = {order_id}")
    eventually(http, ORDER, {"id": order_id}, lambda d: d["order"]["status"] == "shipped")
    eventually(http, RECENT, {"id": order_id}, lambda d: d["recentOrder"]["status"] == "shipped")


def test_many_to_many_and_item_quantity_by_plain_sql(
    http: httpx.Client, pg_cluster: EmbeddedCluster, shop: tuple[str, str]
) -> None:
    product_id = "7"
    have = {c["id"] for c in cached(http, PRODUCT, {"id": product_id})["product"]["categories"]}
    missing = sql(pg_cluster, shop, f"SELECT min(id) FROM categories WHERE id NOT IN "
                                    f"(SELECT category_id FROM product_categories WHERE product_id = {product_id})")
    sql(pg_cluster, shop, f"INSERT INTO product_categories VALUES ({product_id}, {missing})")
    eventually(http, PRODUCT, {"id": product_id},
               lambda d: {c["id"] for c in d["product"]["categories"]} == have | {missing})

    item_id, order_id = sql(pg_cluster, shop, "SELECT id, order_id FROM order_items ORDER BY id LIMIT 1").split("|")
    before = cached(http, ORDER, {"id": order_id})["order"]["total"]
    price = float(sql(pg_cluster, shop, f"SELECT p.price FROM order_items i JOIN products p ON p.id = i.product_id "
                                        f"WHERE i.id = {item_id}"))
    sql(pg_cluster, shop, f"UPDATE order_items SET quantity = quantity + 1 WHERE id = {item_id}")
    eventually(http, ORDER, {"id": order_id}, lambda d: round(d["order"]["total"], 2) == round(before + price, 2))
