"""The SQL kit on a real PostgreSQL, in a database of its own: install,
uninstall, tracked tables of every key type, foreign-key propagation, the
payload-size fallback, signatures and who may use what.

Every statement under test runs in a transaction that also reads the
transaction-local record (fraiseshm.changes); its NOTIFY is awaited with a
sentinel on another channel (delivered in commit order), never slept for.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from fraiseshm.db import kit
from fraiseshm.db.embedded import EmbeddedCluster

CHANNEL = "fraiseshm_changes"
SENTINEL = "fraiseshm_kit_sentinel"
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def kit_dsn(pg_cluster: EmbeddedCluster) -> Iterator[str]:
    """A fresh database with the kit installed by kit.install (not by the embedded loader)."""
    db = f"kit_{os.getpid()}"
    dsn = pg_cluster.fresh_database(db)

    async def install() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            assert await kit.install(conn) == kit.KIT_VERSION
        finally:
            await conn.close()

    asyncio.run(install())
    try:
        yield dsn
    finally:
        pg_cluster.psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", database="postgres")


@asynccontextmanager
async def connect(dsn: str, **kw: Any) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn, **kw)
    try:
        yield conn
    finally:
        await conn.close()


class Heard:
    """LISTEN fraiseshm_changes; the verified payloads committed before drain()."""

    def __init__(self, conn: asyncpg.Connection, key: bytes) -> None:
        self.conn, self.key = conn, key
        self.queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    async def start(self) -> Heard:
        await self.conn.add_listener(CHANNEL, self._on)
        await self.conn.add_listener(SENTINEL, self._on)
        return self

    def _on(self, _c: object, _pid: int, channel: str, payload: str) -> None:
        self.queue.put_nowait((channel, payload))

    async def drain(self) -> list[tuple[str, dict[str, Any]]]:
        token = uuid.uuid4().hex
        await self.conn.execute(f"NOTIFY {SENTINEL}, '{token}'")
        out: list[tuple[str, dict[str, Any]]] = []
        while True:
            channel, payload = await asyncio.wait_for(self.queue.get(), TIMEOUT)
            if channel == SENTINEL:
                if payload == token:
                    return out
                continue
            body = kit.verify(self.key, payload)
            assert body is not None, f"unsigned or wrongly signed payload: {payload[:120]!r}"
            out.append((payload, json.loads(body)))


@asynccontextmanager
async def session(dsn: str) -> AsyncIterator[tuple[asyncpg.Connection, Heard]]:
    async with connect(dsn) as conn, connect(dsn) as lconn:
        heard = await Heard(lconn, bytes.fromhex(await kit.notify_key(conn))).start()
        yield conn, heard


async def changes(conn: asyncpg.Connection, heard: Heard, *sql: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Run sql in one transaction: (its fraiseshm.changes items, its verified NOTIFY payloads)."""
    async with conn.transaction():
        for statement in sql:
            await conn.execute(statement)
        recorded = await conn.fetchval("SELECT current_setting('fraiseshm.changes', true)") or ""
        tx = str(await conn.fetchval("SELECT txid_current()"))
    payloads = [p for _raw, p in await heard.drain() if p["tx"] == tx]
    return recorded.split(), payloads


def tags(payloads: list[dict[str, Any]]) -> set[str]:
    return {t for p in payloads for t in p["tags"]}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- install / uninstall ----------------------------------------------------------------


def test_install_twice_is_idempotent_and_keeps_key_and_tracking(kit_dsn: str) -> None:
    async def main() -> None:
        async with connect(kit_dsn) as conn:
            await conn.execute("CREATE TABLE idem (id int PRIMARY KEY, v text)")
            await kit.track(conn, "idem")
            key = await kit.notify_key(conn)
            assert await kit.install(conn) == 1
            assert await kit.install(conn) == 1
            assert await kit.notify_key(conn) == key
            st = await kit.status(conn)
            assert st.version == 1
            assert [(t.table, t.key_column, t.key_type, t.complete) for t in st.tracked if t.table == "public.idem"] == [
                ("public.idem", "id", "integer", True)]
            await conn.execute("DROP TABLE idem")

    run(main())


def test_uninstall_leaves_the_users_tables_and_rows(pg_cluster: EmbeddedCluster) -> None:
    db = f"kit_un_{os.getpid()}"
    dsn = pg_cluster.fresh_database(db)

    async def main() -> None:
        async with connect(dsn) as conn:
            await kit.install(conn)
            await conn.execute("CREATE TABLE keep (id bigint PRIMARY KEY, v text);"
                               "INSERT INTO keep SELECT g, 'v' || g FROM generate_series(1, 50) g")
            await kit.track(conn, "keep")
            # A view built on a kit function depends on it: uninstall refuses and changes nothing.
            await conn.execute("CREATE VIEW v_keep AS SELECT id, fraiseshm.iso8601(now()) AS at FROM keep")
            with pytest.raises(asyncpg.RaiseError, match="view v_keep depend"):
                await kit.uninstall(conn)
            assert (await kit.status(conn)).tracked[0].table == "public.keep"
            await conn.execute("DROP VIEW v_keep")
            await kit.uninstall(conn)
            await kit.uninstall(conn)  # twice: nothing left to do
            assert (await kit.status(conn)).version is None
            assert await conn.fetchval("SELECT count(*) FROM keep") == 50
            assert await conn.fetchval("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'keep'::regclass") == 0
            await conn.execute("UPDATE keep SET v = 'after' WHERE id = 1")  # writes still work
            await kit.install(conn)  # and it comes back
            assert (await kit.status(conn)).tracked == []

    try:
        run(main())
    finally:
        pg_cluster.psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", database="postgres")


def test_uninstall_refuses_to_drop_a_table_created_in_the_kit_schema(kit_dsn: str) -> None:
    async def main() -> None:
        async with connect(kit_dsn) as conn:
            await conn.execute("CREATE TABLE fraiseshm.stray (id int)")
            try:
                with pytest.raises(asyncpg.RaiseError, match="table fraiseshm.stray"):
                    await kit.uninstall(conn)
                assert (await kit.status(conn)).version == 1
            finally:
                await conn.execute("DROP TABLE fraiseshm.stray")

    run(main())


# --- tracked tables: every key type --------------------------------------------------------


@pytest.mark.parametrize(
    ("key_type", "new_key", "expr"),
    [
        ("int", "7", "7"),
        ("bigint", "9000000000", "9000000000"),
        ("text", "abc-1", "'abc-1'"),
        ("uuid", "3f0c1a9e-7d4b-4c11-9a8e-5b2f6c7d8e9f", "'3f0c1a9e-7d4b-4c11-9a8e-5b2f6c7d8e9f'"),
    ],
)
def test_any_single_column_key_type(kit_dsn: str, key_type: str, new_key: str, expr: str) -> None:
    table = f"k_{key_type}"

    async def main() -> None:
        async with session(kit_dsn) as (conn, heard):
            await conn.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id {key_type} PRIMARY KEY, v int)")
            summary, notices = await kit.track(conn, table)
            assert summary == f"public.{table} (key id)" and notices == []
            t, r = f"t:public.{table}", f"r:public.{table}:{new_key}"

            recorded, payloads = await changes(conn, heard, f"INSERT INTO {table} VALUES ({expr}, 1)")
            assert len(payloads) == 1 and sorted(recorded) == sorted(payloads[0]["tags"]) == sorted([t, r])
            recorded, payloads = await changes(conn, heard, f"UPDATE {table} SET v = 2")
            assert tags(payloads) == set(recorded) == {t, r}
            recorded, payloads = await changes(conn, heard, f"DELETE FROM {table}")
            assert tags(payloads) == set(recorded) == {t, r}
            # A statement that changes no row says nothing.
            recorded, payloads = await changes(conn, heard, f"UPDATE {table} SET v = 3")
            assert (recorded, payloads) == ([], [])

    run(main())


def test_update_of_the_key_reports_old_and_new_row(kit_dsn: str) -> None:
    async def main() -> None:
        async with session(kit_dsn) as (conn, heard):
            await conn.execute("DROP TABLE IF EXISTS rekey; CREATE TABLE rekey (id int PRIMARY KEY);"
                               "INSERT INTO rekey VALUES (1)")
            await kit.track(conn, "rekey")
            recorded, _ = await changes(conn, heard, "UPDATE rekey SET id = 2")
            assert set(recorded) == {"t:public.rekey", "r:public.rekey:1", "r:public.rekey:2"}

    run(main())


def test_keyless_table_sends_table_tags_and_says_so(kit_dsn: str) -> None:
    async def main() -> None:
        async with session(kit_dsn) as (conn, heard):
            await conn.execute("DROP TABLE IF EXISTS nokey; CREATE TABLE nokey (a int, b int)")
            summary, notices = await kit.track(conn, "nokey")
            assert "no key" in summary
            assert any("no single-column primary or unique key" in n for n in notices)
            recorded, payloads = await changes(conn, heard, "INSERT INTO nokey VALUES (1, 2)")
            assert tags(payloads) == set(recorded) == {"t:public.nokey", "w:public.nokey"}

    run(main())


def test_explicit_key_column_and_bad_ones(kit_dsn: str) -> None:
    async def main() -> None:
        async with session(kit_dsn) as (conn, heard):
            await conn.execute("DROP TABLE IF EXISTS twokeys;"
                               "CREATE TABLE twokeys (pk bigint PRIMARY KEY, code text NOT NULL UNIQUE, v int);"
                               "INSERT INTO twokeys VALUES (1, 'x', 0)")
            assert (await kit.track(conn, "twokeys"))[0] == "public.twokeys (key pk)"
            assert (await kit.track(conn, "twokeys", "code"))[0] == "public.twokeys (key code)"
            recorded, _ = await changes(conn, heard, "UPDATE twokeys SET v = 1")
            assert set(recorded) == {"t:public.twokeys", "r:public.twokeys:x"}
            with pytest.raises(asyncpg.RaiseError, match="not a primary key or unique"):
                await kit.track(conn, "twokeys", "v")
            with pytest.raises(asyncpg.RaiseError, match="has no column"):
                await kit.track(conn, "twokeys", "nope")
            await conn.execute("CREATE OR REPLACE VIEW v_twokeys AS SELECT pk AS id FROM twokeys")
            with pytest.raises(asyncpg.RaiseError, match="is not a table"):
                await kit.track(conn, "v_twokeys")
            assert await kit.untrack(conn, "twokeys") is True
            assert await kit.untrack(conn, "twokeys") is False
            recorded, payloads = await changes(conn, heard, "UPDATE twokeys SET v = 2")
            assert (recorded, payloads) == ([], [])

    run(main())


# --- foreign keys -----------------------------------------------------------------------------

SHOPLIKE = """
DROP TABLE IF EXISTS f_item, f_order, f_customer, f_link, f_product, f_tag, f_author, f_post CASCADE;
CREATE TABLE f_customer (id int PRIMARY KEY, name text);
CREATE TABLE f_order (id bigint PRIMARY KEY, customer_id int REFERENCES f_customer, note text);
CREATE TABLE f_product (id int PRIMARY KEY, price numeric);
CREATE TABLE f_item (id bigint PRIMARY KEY, order_id bigint NOT NULL REFERENCES f_order ON DELETE CASCADE,
                     product_id int NOT NULL REFERENCES f_product, qty int);
CREATE TABLE f_tag (id text PRIMARY KEY);
CREATE TABLE f_link (product_id int REFERENCES f_product, tag_id text REFERENCES f_tag,
                     PRIMARY KEY (product_id, tag_id));
-- FraiseQL style: the FK references an internal number, rows are named by a uuid id
CREATE TABLE f_author (pk bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, id uuid NOT NULL UNIQUE);
CREATE TABLE f_post (id uuid PRIMARY KEY, fk_author bigint REFERENCES f_author (pk) ON DELETE CASCADE);
INSERT INTO f_customer VALUES (1, 'a'), (2, 'b');
INSERT INTO f_order VALUES (10, 1, ''), (11, 2, '');
INSERT INTO f_product VALUES (100, 1.5), (101, 2.5);
INSERT INTO f_item VALUES (1000, 10, 100, 1), (1001, 10, 101, 1), (1002, 11, 100, 3);
INSERT INTO f_tag VALUES ('red'), ('blue');
INSERT INTO f_author (id) VALUES ('00000000-0000-4000-8000-00000000000a'), ('00000000-0000-4000-8000-00000000000b');
INSERT INTO f_post VALUES ('00000000-0000-4000-8000-0000000000f1', 1);
"""


@pytest.fixture
def shoplike(kit_dsn: str) -> str:
    async def main() -> None:
        async with connect(kit_dsn) as conn:
            await conn.execute(SHOPLIKE)
            for t in ("f_customer", "f_order", "f_product", "f_item", "f_tag", "f_link", "f_author", "f_post"):
                await kit.track(conn, t)

    run(main())
    return kit_dsn


def test_foreign_keys_bump_parent_rows_old_and_new(shoplike: str) -> None:
    async def main() -> None:
        async with session(shoplike) as (conn, heard):
            # an item moved to another order: both orders, its product (derived, +)
            recorded, payloads = await changes(conn, heard, "UPDATE f_item SET order_id = 11 WHERE id = 1001")
            assert tags(payloads) == set(recorded) == {
                "t:public.f_item", "r:public.f_item:1001",
                "+r:public.f_order:10", "+r:public.f_order:11", "+r:public.f_product:101",
                # the same parents, naming the lists filtered by each foreign key's value
                "+f:public.f_item:order_id=10", "+f:public.f_item:order_id=11", "+f:public.f_item:product_id=101"}
            # a new order bumps its customer (order count)
            recorded, _ = await changes(conn, heard, "INSERT INTO f_order VALUES (12, 1, '')")
            assert set(recorded) == {"t:public.f_order", "r:public.f_order:12", "+r:public.f_customer:1",
                                     "+f:public.f_order:customer_id=1"}
            # a NULL foreign key names no parent
            recorded, _ = await changes(conn, heard, "INSERT INTO f_order VALUES (13, NULL, '')")
            assert set(recorded) == {"t:public.f_order", "r:public.f_order:13"}
            # many-to-many link without a single-column key: its table's tags and both parents
            recorded, _ = await changes(conn, heard, "INSERT INTO f_link VALUES (100, 'red')")
            assert set(recorded) == {"t:public.f_link", "w:public.f_link",
                                     "+r:public.f_product:100", "+r:public.f_tag:red",
                                     "+f:public.f_link:product_id=100", "+f:public.f_link:tag_id=red"}
            # an FK to a non-key column: the parent's key is looked up
            recorded, _ = await changes(conn, heard, "UPDATE f_post SET fk_author = 2")
            assert set(recorded) == {
                "t:public.f_post", "r:public.f_post:00000000-0000-4000-8000-0000000000f1",
                "+r:public.f_author:00000000-0000-4000-8000-00000000000a",
                "+r:public.f_author:00000000-0000-4000-8000-00000000000b",
                # by the parent's naming key, as +r: (the FK references another column)
                "+f:public.f_post:fk_author=00000000-0000-4000-8000-00000000000a",
                "+f:public.f_post:fk_author=00000000-0000-4000-8000-00000000000b"}
            # ON DELETE CASCADE: the children's own triggers report them
            recorded, _ = await changes(conn, heard, "DELETE FROM f_order WHERE id = 10")
            assert {"r:public.f_order:10", "+r:public.f_customer:1", "r:public.f_item:1000",
                    "+r:public.f_product:100"} <= set(recorded)

    run(main())


def test_parent_tracked_later_and_fk_added_later_are_seen(kit_dsn: str) -> None:
    async def main() -> None:
        async with session(kit_dsn) as (conn, heard):
            await conn.execute("DROP TABLE IF EXISTS late_c, late_p;"
                               "CREATE TABLE late_p (n int UNIQUE NOT NULL, code text PRIMARY KEY);"
                               "CREATE TABLE late_c (id int PRIMARY KEY, p int);"
                               "INSERT INTO late_p VALUES (1, 'one')")
            await kit.track(conn, "late_c")
            recorded, _ = await changes(conn, heard, "INSERT INTO late_c VALUES (1, 1)")
            assert set(recorded) == {"t:public.late_c", "r:public.late_c:1"}
            await conn.execute("ALTER TABLE late_c ADD FOREIGN KEY (p) REFERENCES late_p (n)")
            recorded, _ = await changes(conn, heard, "UPDATE late_c SET p = 1")
            assert "+r:public.late_p:one" in recorded  # late_p's default key: its primary key
            await kit.track(conn, "late_p", "n")
            recorded, _ = await changes(conn, heard, "UPDATE late_c SET p = 1")
            assert "+r:public.late_p:1" in recorded

    run(main())


# --- fallbacks ----------------------------------------------------------------------------------


def test_payload_fallback_and_truncate(shoplike: str) -> None:
    async def main() -> None:
        async with session(shoplike) as (conn, heard):
            await conn.execute("INSERT INTO f_item SELECT g, 11, 100, 1 FROM generate_series(2000, 2999) g")
            wide = {"t:public.f_item", "w:public.f_item", "w:public.f_order", "w:public.f_product"}
            for n in (500, 1000):  # too long for one NOTIFY / more rows than max_rows
                recorded, payloads = await changes(conn, heard, f"UPDATE f_item SET qty = qty + 1 WHERE id >= {3000 - n}")
                assert len(payloads) == 1 and set(payloads[0]["tags"]) == set(recorded) == wide
            recorded, payloads = await changes(conn, heard, "UPDATE f_item SET qty = 1 WHERE id >= 2990")
            assert {f"r:public.f_item:{i}" for i in range(2990, 3000)} <= set(recorded)
            recorded, payloads = await changes(conn, heard, "TRUNCATE f_link")
            assert set(recorded) == tags(payloads) == {
                "t:public.f_link", "w:public.f_link", "w:public.f_product", "w:public.f_tag"}

    run(main())


def test_every_payload_is_signed_and_fits(shoplike: str) -> None:
    async def main() -> None:
        async with session(shoplike) as (conn, heard):
            await conn.execute("INSERT INTO f_tag SELECT repeat('x', 200) || g FROM generate_series(1, 38) g")
            async with conn.transaction():
                await conn.execute("UPDATE f_tag SET id = id || 'y' WHERE length(id) > 100")
                await conn.execute("DELETE FROM f_tag WHERE length(id) > 100")
            raw = [r for r, _ in await heard.drain()]
            assert raw and all(len(r.encode()) <= 8000 for r in raw)
            key = await kit.notify_key(conn)
            for r in raw:
                mac, body = r.split(" ", 1)
                assert mac == kit.sign(key, body.encode())
                p = json.loads(body)
                assert set(p) == {"v", "tx", "ts", "tags"} and abs(p["ts"] - time.time()) < 60

    run(main())


def test_trigger_cost_on_a_1000_row_update(shoplike: str) -> None:
    """Measured and printed: the triggers' cost on a 1,000-row UPDATE (FK
    propagation included) and on a one-row UPDATE, against the same statements
    untracked. Loose bound: the kit must not make a write several times slower."""

    async def timed(conn: asyncpg.Connection, sql: str, n: int) -> float:
        best = float("inf")
        for _ in range(n):
            async with conn.transaction():
                t0 = time.perf_counter()
                await conn.execute(sql)
                best = min(best, time.perf_counter() - t0)
        return best * 1000

    async def main() -> None:
        async with connect(shoplike) as conn:
            await conn.execute("DELETE FROM f_item WHERE id >= 2000;"
                               "INSERT INTO f_item SELECT g, 10 + g % 2, 100 + g % 2, 1 FROM generate_series(2000, 2999) g;"
                               "ANALYZE f_item")
            big, small = "UPDATE f_item SET qty = qty + 1 WHERE id >= 2000", "UPDATE f_item SET qty = 2 WHERE id = 2000"
            with_big, with_small = await timed(conn, big, 15), await timed(conn, small, 50)
            # 700 rows: listed one by one (under max_rows), then the size fallback
            mid = "UPDATE f_item SET qty = qty + 1 WHERE id >= 2300"
            with_mid = await timed(conn, mid, 15)
            await kit.untrack(conn, "f_item")
            try:
                without_big, without_small = await timed(conn, big, 15), await timed(conn, small, 50)
                without_mid = await timed(conn, mid, 15)
            finally:
                await kit.track(conn, "f_item")
        print(f"\nkit trigger cost (best of N, ms): 1,000-row UPDATE {with_big:.2f} vs {without_big:.2f} untracked; "
              f"700-row UPDATE (listed, then too long) {with_mid:.2f} vs {without_mid:.2f}; "
              f"1-row UPDATE {with_small:.3f} vs {without_small:.3f}")
        assert with_big < 4 * without_big + 5
        assert with_small < without_small + 5

    run(main())


# --- who may do what --------------------------------------------------------------------------------


def test_a_role_without_grants_can_neither_read_the_key_nor_sign(kit_dsn: str) -> None:
    role = f"nobody_{os.getpid()}"

    async def main() -> None:
        async with connect(kit_dsn) as admin:
            await admin.execute(f"DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN;"
                                f"GRANT CREATE ON SCHEMA public TO {role}")
            try:
                async with connect(kit_dsn, user=role) as conn:
                    for sql in ("SELECT key FROM fraiseshm.notify_key", "SELECT fraiseshm._sign('x')",
                                "SELECT fraiseshm.touch('pg_class')"):
                        with pytest.raises(asyncpg.InsufficientPrivilegeError):
                            await conn.fetchval(sql)
                    # its own table cannot get the kit's (SECURITY DEFINER) trigger function
                    await conn.execute("CREATE TABLE mine (id int PRIMARY KEY)")
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn.execute("CREATE TRIGGER t AFTER INSERT ON mine "
                                           "FOR EACH STATEMENT EXECUTE FUNCTION fraiseshm.on_change('1')")
                    await conn.execute("DROP TABLE mine")
            finally:
                await admin.execute(f"REVOKE CREATE ON SCHEMA public FROM {role}; DROP ROLE {role}")

    run(main())


def test_a_changed_view_definition_sends_a_signed_flush_request(kit_dsn: str) -> None:
    async def main() -> None:
        async with session(kit_dsn) as (conn, heard):
            await conn.execute("CREATE TABLE IF NOT EXISTS ddl_t (id int PRIMARY KEY)")
            await heard.drain()
            await conn.execute("CREATE OR REPLACE VIEW v_ddl AS SELECT id, jsonb_build_object('id', id) AS data FROM ddl_t")
            (payload,) = [p for _raw, p in await heard.drain()]
            assert payload["tags"] == [] and payload["flush"] == "view public.v_ddl"
            await conn.execute("CREATE TEMP TABLE scratch (x int)")  # other DDL: nothing
            assert await heard.drain() == []

    run(main())


def test_db_commands_of_the_cli(pg_cluster: EmbeddedCluster) -> None:
    from tests.integration.test_cli import cli

    db = f"kit_cli_{os.getpid()}"
    dsn = pg_cluster.fresh_database(db)
    try:
        r = cli("db", "--dsn", dsn, "status")
        assert r.returncode == 2 and "not installed" in r.stderr and "fraiseshm db install" in r.stderr
        r = cli("db", "--dsn", dsn, "install")
        assert r.returncode == 0 and "version 1 installed" in r.stdout, r.stderr
        pg_cluster.psql("CREATE TABLE shop_t (id bigint PRIMARY KEY); CREATE TABLE link_t (a int, b int)", database=db)
        r = cli("db", "--dsn", dsn, "track", "shop_t", "link_t")
        assert r.returncode == 0, r.stderr
        assert "tracking public.shop_t (key id)" in r.stdout and "NOTICE: fraiseshm.track: public.link_t" in r.stdout
        r = cli("db", "--dsn", dsn, "track", "no_such_table")
        assert r.returncode == 2 and "no_such_table" in r.stderr and "Traceback" not in r.stderr
        r = cli("db", "--dsn", dsn, "status", "--json", "--show-key")
        status = json.loads(r.stdout)
        assert status["version"] == 1 and len(status["notify_key"]) == 64
        assert {(t["table"], t["key_column"], t["complete"]) for t in status["tracked"]} == {
            ("public.shop_t", "id", True), ("public.link_t", None, True)}
        r = cli("db", "--dsn", dsn, "untrack", "link_t")
        assert r.returncode == 0 and "triggers removed" in r.stdout
        r = cli("db", "--dsn", dsn, "uninstall")
        assert r.returncode == 0 and "untouched" in r.stdout, r.stderr
        assert pg_cluster.psql("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'shop_t'::regclass", database=db).strip() == "0"
    finally:
        pg_cluster.psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", database="postgres")


def test_install_and_track_as_a_database_owner_without_superuser(pg_cluster: EmbeddedCluster) -> None:
    """A managed database: the owner installs the kit; only the event trigger needs more, and says so."""
    owner, db = f"app_owner_{os.getpid()}", f"kit_owned_{os.getpid()}"
    pg_cluster.psql(f"DROP DATABASE IF EXISTS {db}", database="postgres")  # before the role it is owned by
    pg_cluster.psql(f"DROP ROLE IF EXISTS {owner}; CREATE ROLE {owner} LOGIN", database="postgres")
    dsn = pg_cluster.fresh_database(db, owner=owner)

    async def main() -> None:
        messages: list[str] = []
        async with connect(dsn, user=owner) as conn:
            assert await kit.install(conn, on_message=messages.append) == 1
            assert any("no event trigger" in m and m.startswith("WARNING") for m in messages), messages
            await conn.execute("CREATE TABLE owned (id int PRIMARY KEY); INSERT INTO owned VALUES (1)")
            await kit.track(conn, "owned")
        async with session(dsn) as (conn, heard):  # written by a superuser, signed by the owner's trigger
            recorded, payloads = await changes(conn, heard, "UPDATE owned SET id = 2")
            assert tags(payloads) == set(recorded) == {"t:public.owned", "r:public.owned:1", "r:public.owned:2"}

    try:
        run(main())
    finally:
        pg_cluster.psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", database="postgres")
        pg_cluster.psql(f"DROP ROLE IF EXISTS {owner}", database="postgres")
