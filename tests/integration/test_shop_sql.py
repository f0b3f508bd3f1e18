"""The example shop's SQL on a real PostgreSQL, in a database of its own with
the kit: integer keys, computed values, the many-to-many, mutation functions
built on the kit's cascade helpers, and what the kit's triggers record for
each write (rows changed directly, and the parents reached through foreign
keys: a new order bumps its customer, an item bumps its order and product, a
link row bumps its product and category).

Every mutation's directly changed rows of a table that roots a view must be
named by its cascade (items and link rows have no view of their own).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from fraiseshm.db import kit
from fraiseshm.db.embedded import EmbeddedCluster

ROOT = Path(__file__).resolve().parents[2]
SHOP_SQL = ROOT / "examples" / "shop" / "schema.sql"
TYPES = {"public.customers": "Customer", "public.products": "Product", "public.orders": "Order",
         "public.categories": "Category"}


@pytest.fixture(scope="module")
def shop_dsn(pg_cluster: EmbeddedCluster) -> Iterator[str]:
    db = f"shop_{os.getpid()}"
    dsn = pg_cluster.fresh_database(db)

    async def load() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await kit.install(conn)
            async with conn.transaction():
                await conn.execute(SHOP_SQL.read_text())
            assert await conn.fetchval("SELECT fn_seed(20, 30, 2)") == 20
        finally:
            await conn.close()

    asyncio.run(load())
    try:
        yield dsn
    finally:
        pg_cluster.psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", database="postgres")


@asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    try:
        yield conn
    finally:
        await conn.close()


async def mutate(conn: asyncpg.Connection, fn: str, payload: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """(the function's response, the items the kit recorded in its transaction)."""
    async with conn.transaction():
        result = await conn.fetchval(f"SELECT {fn}($1::jsonb)", payload)
        recorded = await conn.fetchval("SELECT current_setting('fraiseshm.changes', true)") or ""
    return result, set(recorded.split())


async def recorded_by(conn: asyncpg.Connection, sql: str) -> set[str]:
    async with conn.transaction():
        await conn.execute(sql)
        return set((await conn.fetchval("SELECT current_setting('fraiseshm.changes', true)") or "").split())


def named(result: dict[str, Any]) -> set[tuple[str, str]]:
    c = result["cascade"]
    return {(e["__typename"], e["id"]) for e in c["updated"] + c["deleted"]}


def direct_view_rows(recorded: set[str]) -> set[tuple[str, str]]:
    out = set()
    for item in recorded:
        kind, table, ident = (item.split(":", 2) + [""])[:3]
        if kind == "r" and table in TYPES:
            out.add((TYPES[table], ident))
    return out


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_views_compute_totals_and_counts(shop_dsn: str) -> None:
    async def main() -> None:
        async with connect(shop_dsn) as conn:
            for row in await conn.fetch("SELECT id, data FROM v_order ORDER BY id LIMIT 10"):
                data = row["data"]
                assert data["id"] == row["id"] and data["items"]
                expected = sum(Decimal(str(i["quantity"])) * Decimal(str(i["product"]["price"])) for i in data["items"])
                assert Decimal(str(data["total"])) == expected
            count = await conn.fetchval("SELECT count(*) FROM orders WHERE customer_id = 3")
            assert (await conn.fetchval("SELECT data FROM v_customer WHERE id = 3"))["order_count"] == count == 2
            product = await conn.fetchval("SELECT data FROM v_product WHERE id = 1")
            links = await conn.fetchval("SELECT count(*) FROM product_categories WHERE product_id = 1")
            assert len(product["categories"]) == links >= 1
            assert await conn.fetchval("SELECT count(*) FROM fraiseshm.tracked_tables() WHERE complete") == 6

    run(main())


def test_plain_sql_writes_tag_their_parents(shop_dsn: str) -> None:
    async def main() -> None:
        async with connect(shop_dsn) as conn:
            assert await recorded_by(conn, "INSERT INTO orders (id, customer_id) VALUES (90001, 4)") == {
                "t:public.orders", "r:public.orders:90001", "+r:public.customers:4",
                "+f:public.orders:customer_id=4"}
            assert await recorded_by(conn, "INSERT INTO order_items (id, order_id, product_id, quantity) "
                                           "VALUES (90001, 90001, 5, 1)") == {
                "t:public.order_items", "r:public.order_items:90001", "+r:public.orders:90001", "+r:public.products:5",
                "+f:public.order_items:order_id=90001", "+f:public.order_items:product_id=5"}
            assert await recorded_by(conn, "UPDATE products SET price = price + 1 WHERE id = 5") == {
                "t:public.products", "r:public.products:5"}
            got = await recorded_by(conn, "DELETE FROM product_categories WHERE product_id = 5")
            assert {"t:public.product_categories", "w:public.product_categories", "+r:public.products:5"} <= got
            assert any(i.startswith("+r:public.categories:") for i in got)
            got = await recorded_by(conn, "DELETE FROM orders WHERE id = 90001")
            assert {"r:public.orders:90001", "+r:public.customers:4", "r:public.order_items:90001",
                    "+r:public.orders:90001", "+r:public.products:5"} <= got

    run(main())


def test_mutations_name_what_they_change(shop_dsn: str) -> None:
    async def main() -> None:
        async with connect(shop_dsn) as conn:
            result, recorded = await mutate(conn, "fn_create_customer", {"name": "Ann", "email": "ann@shop.example"})
            assert result["success"], result
            cid = result["data"]["id"]
            assert isinstance(cid, int)
            assert direct_view_rows(recorded) <= named(result) == {("Customer", str(cid))}
            assert result["cascade"]["updated"][0]["entity"] == result["data"]

            result, recorded = await mutate(conn, "fn_create_order", {
                "customer_id": str(cid), "items": [{"product_id": "3", "quantity": 2}, {"product_id": "4", "quantity": 1}]})
            assert result["success"], result
            order = result["data"]
            price = {r["id"]: r["price"] for r in await conn.fetch("SELECT id, price FROM products WHERE id IN (3, 4)")}
            assert Decimal(str(order["total"])) == 2 * price[3] + price[4]
            assert named(result) == {("Order", str(order["id"])), ("Customer", str(cid))}
            assert direct_view_rows(recorded) <= named(result)
            assert f"+r:public.customers:{cid}" in recorded and f"+r:public.orders:{order['id']}" in recorded
            customer = next(e for e in result["cascade"]["updated"] if e["__typename"] == "Customer")
            assert customer["entity"]["order_count"] == 1

            result, recorded = await mutate(conn, "fn_update_product", {"id": "3", "price": "12.50"})
            assert result["success"], result
            holding = {str(r[0]) for r in await conn.fetch("SELECT DISTINCT order_id FROM order_items WHERE product_id = 3")}
            assert {("Order", o) for o in holding} <= named(result) and str(order["id"]) in holding
            assert direct_view_rows(recorded) <= named(result)
            new_total = next(e for e in result["cascade"]["updated"] if e["id"] == str(order["id"]))["entity"]["total"]
            assert Decimal(str(new_total)) == Decimal("25.00") + price[4]

            result, recorded = await mutate(conn, "fn_set_product_categories", {"product_id": "3", "category_ids": ["1", "2"]})
            assert result["success"], result
            assert [c["id"] for c in result["data"]["categories"]] == [1, 2] or \
                sorted(c["id"] for c in result["data"]["categories"]) == [1, 2]
            assert direct_view_rows(recorded) <= named(result)
            assert {i for i in recorded if i.startswith("+r:public.categories:")} <= {
                f"+r:public.categories:{i}" for t, i in named(result) if t == "Category"}

            result, recorded = await mutate(conn, "fn_add_order_item",
                                            {"order_id": str(order["id"]), "product_id": "4", "quantity": 3})
            assert result["success"] and len(result["data"]["items"]) == 3, result
            assert direct_view_rows(recorded) <= named(result)

            result, recorded = await mutate(conn, "fn_delete_order", {"id": str(order["id"])})
            assert result["success"], result
            assert result["cascade"]["deleted"][0]["id"] == str(order["id"])
            assert direct_view_rows(recorded) <= named(result)

    run(main())


@pytest.mark.parametrize(("fn", "payload", "field"), [
    ("fn_update_customer", {"id": "abc"}, "id"),
    ("fn_update_product", {"id": "1", "price": "-3"}, "price"),
    ("fn_create_order", {"customer_id": "1", "items": []}, "items"),
    ("fn_create_order", {"customer_id": "999999", "items": [{"product_id": "1", "quantity": 1}]}, "customerId"),
    ("fn_add_order_item", {"order_id": "1", "product_id": "x", "quantity": 1}, "productId"),
    ("fn_delete_order", {"id": "999999"}, "id"),
])
def test_bad_input_is_a_failure_naming_the_field_and_changes_nothing(
    shop_dsn: str, fn: str, payload: dict[str, Any], field: str
) -> None:
    async def main() -> None:
        async with connect(shop_dsn) as conn:
            result, recorded = await mutate(conn, fn, payload)
            assert result["success"] is False and result["errors"][0]["field"] == field, result
            assert recorded == set()

    run(main())
