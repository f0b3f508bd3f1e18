"""A fresh database holding the example shop, for the tests that serve it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg

from fraiseshm.db import kit
from fraiseshm.db.embedded import EmbeddedCluster

SHOP_SQL = Path(__file__).resolve().parents[2] / "examples/shop/schema.sql"


@contextmanager
def shop_database(pg_cluster: EmbeddedCluster, db: str, customers: int, products: int) -> Iterator[str]:
    """The kit, the shop's schema and fn_seed(customers, products, 2) in database db; its DSN.
    Dropped afterwards."""
    dsn = pg_cluster.fresh_database(db)

    async def load() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await kit.install(conn)
            async with conn.transaction():
                await conn.execute(SHOP_SQL.read_text())
            await conn.fetchval("SELECT fn_seed($1, $2, 2)", customers, products)
        finally:
            await conn.close()

    try:
        asyncio.run(load())
        yield dsn
    finally:
        pg_cluster.psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", database="postgres")
