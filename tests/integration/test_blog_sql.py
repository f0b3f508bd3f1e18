"""The example blog's SQL on a real PostgreSQL: views, mutation functions and
their graphql-cascade responses, change triggers, seed. No mocks.

Notifications carry the kit's payload ('<hmac> {"v", "tx", "ts", "tags"}');
the listener here checks each MAC with the key read from fraiseshm.notify_key.
Notifications are awaited, never slept for: after the statement under test
commits, a sentinel NOTIFY on another channel is sent from another
transaction; PostgreSQL delivers notifications in commit order, so when the
sentinel arrives every notification of the statement has arrived too.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from fraiseshm.db import kit
from fraiseshm.db.embedded import EmbeddedCluster

CHANNEL = "fraiseshm_changes"
SENTINEL = "fraiseshm_test_sentinel"
TIMEOUT = 10.0  # seconds to wait for a notification before failing

TABLE_TYPES = {"public.tb_user": "User", "public.tb_post": "Post", "public.tb_comment": "Comment"}

USER_KEYS = {"id", "name", "email", "created_at", "posts"}
USER_REF_KEYS = {"id", "name", "email", "created_at"}
POST_KEYS = {"id", "title", "body", "created_at", "author", "comments"}
POST_REF_KEYS = {"id", "title", "body", "created_at"}
COMMENT_KEYS = {"id", "body", "created_at", "author", "post"}


# --- helpers -------------------------------------------------------------------


async def _init(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


@asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    try:
        await _init(conn)
        yield conn
    finally:
        await conn.close()


def run(dsn: str, body: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with connect(dsn) as conn:
            return await body(conn)

    return asyncio.run(main())


async def call(conn: asyncpg.Connection, fn: str, payload: dict[str, Any]) -> dict[str, Any]:
    return await conn.fetchval(f"SELECT {fn}($1::jsonb)", payload)


class Listener:
    """LISTEN fraiseshm_changes; collect the payloads of chosen transactions."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.raw: list[str] = []

    async def __aenter__(self) -> Listener:
        self.conn = await asyncpg.connect(self.dsn)
        self.key = bytes.fromhex(await kit.notify_key(self.conn))
        await self.conn.add_listener(CHANNEL, self._on)
        await self.conn.add_listener(SENTINEL, self._on)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.close()

    def _on(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        self.queue.put_nowait((channel, payload))

    async def drain(self) -> list[dict[str, Any]]:
        """Every change payload committed before now (waits for a sentinel)."""
        token = uuid.uuid4().hex
        await self.conn.execute(f"NOTIFY {SENTINEL}, '{token}'")
        payloads: list[dict[str, Any]] = []
        while True:
            channel, payload = await asyncio.wait_for(self.queue.get(), TIMEOUT)
            if channel == SENTINEL:
                if payload == token:
                    return payloads
                continue
            self.raw.append(payload)
            body = kit.verify(self.key, payload)
            assert body is not None, f"payload not signed by the kit: {payload[:200]!r}"
            payloads.append(json.loads(body))

    async def for_tx(self, tx: str | int) -> list[dict[str, Any]]:
        return [p for p in await self.drain() if p["tx"] == str(tx)]


def cascade_keys(result: dict[str, Any]) -> set[tuple[str, str]]:
    cascade = result["cascade"]
    return {(e["__typename"], e["id"]) for e in cascade["updated"] + cascade["deleted"]}


def notified_keys(payloads: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(Type, id) of the rows the notified statements changed directly (r: items, not +r:)."""
    keys: set[tuple[str, str]] = set()
    for p in payloads:
        assert p["v"] == 1 and not any(t.startswith(("w:", "+w:")) for t in p["tags"]), p
        for tag in p["tags"]:
            kind, table, ident = (tag.split(":", 2) + [""])[:3]
            if kind == "r":
                keys.add((TABLE_TYPES[table], ident))
    return keys


def tags_of(payloads: list[dict[str, Any]]) -> set[str]:
    return {t for p in payloads for t in p["tags"]}


def assert_success(result: dict[str, Any]) -> None:
    assert result["success"] is True, result["errors"]
    assert result["errors"] == []
    meta = result["cascade"]["metadata"]
    assert set(meta) == {"timestamp", "transaction_id", "depth", "affected_count", "truncated"}
    assert meta["truncated"] is False  # the server applies the size limits (fraiseshm/cascade/spec.py)
    assert int(meta["transaction_id"]) > 0
    assert meta["timestamp"].endswith("Z")
    for entry in result["cascade"]["updated"]:
        assert set(entry) == {"__typename", "id", "operation", "entity"}
        assert entry["operation"] in ("CREATED", "UPDATED")
        assert entry["entity"]["id"] == entry["id"]
    for entry in result["cascade"]["deleted"]:
        assert set(entry) == {"__typename", "id", "deleted_at"}
    for inv in result["cascade"]["invalidations"]:
        assert inv["strategy"] == "INVALIDATE" and inv["scope"] in ("EXACT", "PREFIX", "PATTERN", "ALL")


def assert_failure(result: dict[str, Any], code: str, field: str | None) -> None:
    assert result["success"] is False
    assert result["data"] is None
    assert [(e["code"], e["field"]) for e in result["errors"]] == [(code, field)]
    assert result["errors"][0]["message"]
    cascade = result["cascade"]
    assert cascade["updated"] == [] and cascade["deleted"] == [] and cascade["invalidations"] == []
    assert cascade["metadata"]["affected_count"] == 0 and cascade["metadata"]["truncated"] is False


async def counts(conn: asyncpg.Connection) -> tuple[int, int, int]:
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM tb_user), (SELECT count(*) FROM tb_post), (SELECT count(*) FROM tb_comment)"
    )
    return tuple(row)  # type: ignore[return-value]


async def new_user(conn: asyncpg.Connection, name: str | None = None) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:12]
    result = await call(conn, "fn_create_user", {"name": name or f"test {tag}", "email": f"{tag}@test.example"})
    assert_success(result)
    return result["data"]


async def new_post(conn: asyncpg.Connection, author: str, title: str = "a title") -> dict[str, Any]:
    result = await call(conn, "fn_create_post", {"author_id": author, "title": title, "body": "some body"})
    assert_success(result)
    return result["data"]


async def new_comment(conn: asyncpg.Connection, post: str, author: str, body: str = "nice") -> dict[str, Any]:
    result = await call(conn, "fn_create_comment", {"post_id": post, "author_id": author, "body": body})
    assert_success(result)
    return result["data"]


# --- seed ------------------------------------------------------------------------


def test_seed_counts_and_determinism(reset_db: EmbeddedCluster, pg_dsn: str) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        assert await counts(conn) == (200, 1000, 2000)
        names = await conn.fetch("SELECT name, email FROM tb_user ORDER BY pk_user LIMIT 2")
        assert [tuple(r) for r in names] == [("user 1", "user1@example.com"), ("user 2", "user2@example.com")]
        # every seeded comment is written by someone other than the post's author
        assert await conn.fetchval(
            "SELECT count(*) FROM tb_comment c JOIN tb_post p ON p.pk_post = c.fk_post WHERE c.fk_author = p.fk_author"
        ) == 0
        # seeding again appends, numbering after the existing users
        assert await conn.fetchval("SELECT fn_seed(3, 1, 1)") == 3
        assert await counts(conn) == (203, 1003, 2003)
        assert await conn.fetchval("SELECT max(name) FILTER (WHERE pk_user = 203) FROM tb_user") == "user 203"
        assert await conn.fetchval("SELECT fn_seed(0)") == 0

    run(pg_dsn, body)


# --- views ------------------------------------------------------------------------


def test_view_shapes(pg_dsn: str) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        author = await new_user(conn, "shape author")
        other = await new_user(conn, "shape commenter")
        post = await new_post(conn, author["id"], "shape post")
        second = await new_post(conn, author["id"], "second post")
        c1 = await new_comment(conn, post["id"], other["id"], "first")
        c2 = await new_comment(conn, post["id"], author["id"], "second")

        user = await conn.fetchval("SELECT data FROM v_user WHERE id = $1::uuid", author["id"])
        assert set(user) == USER_KEYS
        assert [p["id"] for p in user["posts"]] == [post["id"], second["id"]]  # created_at, id order
        assert all(set(p) == POST_REF_KEYS for p in user["posts"])
        assert user["created_at"].endswith("Z") and "T" in user["created_at"]

        row = await conn.fetchrow("SELECT id::text, author_id::text, data FROM v_post WHERE id = $1::uuid", post["id"])
        assert row["author_id"] == author["id"]
        data = row["data"]
        assert set(data) == POST_KEYS
        assert set(data["author"]) == USER_REF_KEYS and data["author"]["id"] == author["id"]
        assert [c["id"] for c in data["comments"]] == [c1["id"], c2["id"]]
        assert set(data["comments"][0]) == {"id", "body", "created_at", "author"}
        assert data["comments"][0]["author"]["id"] == other["id"]
        assert set(data["comments"][0]["author"]) == USER_REF_KEYS

        row = await conn.fetchrow(
            "SELECT post_id::text, author_id::text, data FROM v_comment WHERE id = $1::uuid", c1["id"]
        )
        assert (row["post_id"], row["author_id"]) == (post["id"], other["id"])
        assert set(row["data"]) == COMMENT_KEYS
        assert set(row["data"]["post"]) == POST_REF_KEYS and row["data"]["post"]["title"] == "shape post"
        assert set(row["data"]["author"]) == USER_REF_KEYS

        # a user without posts has an empty list, not null
        assert (await conn.fetchval("SELECT data FROM v_user WHERE id = $1::uuid", other["id"]))["posts"] == []
        # filters
        ids = await conn.fetch(
            "SELECT id::text FROM v_post WHERE author_id = $1::uuid ORDER BY created_at, id LIMIT $2 OFFSET $3",
            author["id"], 1, 1,
        )
        assert [r[0] for r in ids] == [second["id"]]
        ids = await conn.fetch("SELECT id::text FROM v_comment WHERE post_id = $1::uuid ORDER BY created_at, id", post["id"])
        assert [r[0] for r in ids] == [c1["id"], c2["id"]]

    run(pg_dsn, body)


ROOT_QUERIES = [
    ("SELECT data FROM v_user WHERE id = $1", ("user",)),
    ("SELECT data FROM v_post WHERE id = $1", ("post",)),
    ("SELECT data FROM v_comment WHERE id = $1", ("comment",)),
    ("SELECT data FROM v_post WHERE author_id = $1 ORDER BY created_at, id LIMIT $2 OFFSET $3", ("user", 20, 0)),
    ("SELECT data FROM v_comment WHERE post_id = $1 ORDER BY created_at, id LIMIT $2 OFFSET $3", ("post", 20, 0)),
    ("SELECT data FROM v_comment WHERE author_id = $1 ORDER BY created_at, id LIMIT $2 OFFSET $3", ("user", 20, 0)),
    ("SELECT data FROM v_user ORDER BY created_at, id LIMIT $1 OFFSET $2", (20, 0)),
    ("SELECT data FROM v_post ORDER BY created_at, id LIMIT $1 OFFSET $2", (20, 0)),
    ("SELECT data FROM v_comment ORDER BY created_at, id LIMIT $1 OFFSET $2", (20, 0)),
]


def test_root_queries_use_indexes(pg_dsn: str) -> None:
    """On a realistically sized data set (5,000 more users, seeded and analyzed
    inside a transaction that is rolled back), both the custom and the generic
    plan (what a prepared statement ends up with) of every root query read
    through indexes: no sequential scan anywhere. (On the 200-user test data a
    sequential scan of a few pages is the right plan.)"""

    async def body(conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT fn_seed(5000)")
            ids = await conn.fetchrow(
                "SELECT u.id AS user, p.id AS post, c.id AS comment FROM tb_comment c "
                "JOIN tb_post p ON p.pk_post = c.fk_post JOIN tb_user u ON u.pk_user = p.fk_author "
                "ORDER BY c.pk_comment DESC LIMIT 1"
            )
            for sql, args in ROOT_QUERIES:
                values = [ids[a] if isinstance(a, str) else a for a in args]
                for mode in ("force_custom_plan", "force_generic_plan"):
                    await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
                    plan_text = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *values)  # json: text
                    nodes = set(re.findall(r'"Node Type": "([^"]+)"', plan_text))
                    assert nodes, plan_text
                    assert "Seq Scan" not in nodes, (mode, sql, plan_text)
                    assert nodes & {"Index Scan", "Index Only Scan", "Bitmap Index Scan"}, (mode, sql, plan_text)
            raise _Rollback

    class _Rollback(Exception):
        pass

    with pytest.raises(_Rollback):
        run(pg_dsn, body)


# --- users ---------------------------------------------------------------------------


def test_create_user_cascade_and_notification(pg_dsn: str) -> None:
    async def main() -> None:
        async with connect(pg_dsn) as conn, Listener(pg_dsn) as listener:
            result = await call(conn, "fn_create_user", {"name": "  Ada  ", "email": "ada@lovelace.example"})
            assert_success(result)
            user = result["data"]
            assert (user["name"], user["email"], user["posts"]) == ("Ada", "ada@lovelace.example", [])
            assert await conn.fetchval("SELECT data FROM v_user WHERE id = $1::uuid", user["id"]) == user
            cascade = result["cascade"]
            assert cascade["updated"] == [
                {"__typename": "User", "id": user["id"], "operation": "CREATED", "entity": user}
            ]
            assert cascade["deleted"] == []
            assert cascade["invalidations"] == [{"query_name": "users", "strategy": "INVALIDATE", "scope": "PREFIX"}]
            meta = cascade["metadata"]
            assert (meta["depth"], meta["affected_count"], meta["truncated"]) == (1, 1, False)
            assert cascade["type_invalidations"] == []
            payloads = await listener.for_tx(meta["transaction_id"])
            assert len(payloads) == 1
            assert tags_of(payloads) == {"t:public.tb_user", f"r:public.tb_user:{user['id']}"}

    asyncio.run(main())


def test_create_user_errors_change_nothing(pg_dsn: str) -> None:
    async def main() -> None:
        async with connect(pg_dsn) as conn, Listener(pg_dsn) as listener:
            existing = await new_user(conn)
            await listener.drain()
            before = await counts(conn)
            for payload, code, field in [
                ({"name": "", "email": "x@y.example"}, "VALIDATION_ERROR", "name"),
                ({"name": "   ", "email": "x@y.example"}, "VALIDATION_ERROR", "name"),
                ({"email": "x@y.example"}, "VALIDATION_ERROR", "name"),
                ({"name": "x", "email": ""}, "VALIDATION_ERROR", "email"),
                ({"name": "x", "email": "not-an-address"}, "VALIDATION_ERROR", "email"),
                ({"name": "x", "email": existing["email"]}, "CONFLICT", "email"),
            ]:
                result = await call(conn, "fn_create_user", payload)
                assert_failure(result, code, field)
            assert await counts(conn) == before
            # a validation error writes nothing, so it is not even given a transaction id
            result = await call(conn, "fn_create_user", {"name": "", "email": "x@y.example"})
            assert result["cascade"]["metadata"]["transaction_id"] is None
            assert await listener.drain() == []  # no trigger fired: nothing was written

    asyncio.run(main())


def test_update_user(pg_dsn: str) -> None:
    async def main() -> None:
        async with connect(pg_dsn) as conn, Listener(pg_dsn) as listener:
            user = await new_user(conn)
            other = await new_user(conn)
            post = await new_post(conn, user["id"])
            result = await call(conn, "fn_update_user", {"id": user["id"], "name": "Renamed"})
            assert_success(result)
            assert result["data"]["name"] == "Renamed" and result["data"]["email"] == user["email"]
            assert [p["id"] for p in result["data"]["posts"]] == [post["id"]]
            assert [(e["__typename"], e["id"], e["operation"]) for e in result["cascade"]["updated"]] == [
                ("User", user["id"], "UPDATED")
            ]
            assert result["cascade"]["updated"][0]["entity"] == result["data"]
            # the trigger reports the user only: dependents are the server's business
            tx = result["cascade"]["metadata"]["transaction_id"]
            assert notified_keys(await listener.for_tx(tx)) == {("User", user["id"])}

            assert_failure(await call(conn, "fn_update_user", {"id": user["id"], "email": other["email"]}), "CONFLICT", "email")
            assert_failure(await call(conn, "fn_update_user", {"id": user["id"], "name": ""}), "VALIDATION_ERROR", "name")
            assert_failure(await call(conn, "fn_update_user", {"name": "x"}), "VALIDATION_ERROR", "id")
            assert_failure(await call(conn, "fn_update_user", {"id": str(uuid.uuid4()), "name": "x"}), "NOT_FOUND", "id")
            assert await conn.fetchval("SELECT data FROM v_user WHERE id = $1::uuid", user["id"]) == result["data"]

    asyncio.run(main())


def test_delete_user_lists_everything_it_removed(pg_dsn: str) -> None:
    async def main() -> None:
        async with connect(pg_dsn) as conn, Listener(pg_dsn) as listener:
            victim, friend, stranger = await new_user(conn), await new_user(conn), await new_user(conn)
            own = [await new_post(conn, victim["id"], f"victim post {i}") for i in range(3)]
            friends_post = await new_post(conn, friend["id"], "friend's post")
            strangers_post = await new_post(conn, stranger["id"], "stranger's post")
            on_own = [await new_comment(conn, p["id"], friend["id"]) for p in own]  # friend on victim's posts
            on_own.append(await new_comment(conn, own[0]["id"], victim["id"]))  # victim on own post
            elsewhere = [
                await new_comment(conn, friends_post["id"], victim["id"]),
                await new_comment(conn, friends_post["id"], victim["id"]),
            ]
            survivor = await new_comment(conn, friends_post["id"], stranger["id"])
            untouched = await new_comment(conn, strangers_post["id"], friend["id"])
            before = await counts(conn)

            result = await call(conn, "fn_delete_user", {"id": victim["id"]})
            assert_success(result)
            cascade = result["cascade"]
            assert result["data"]["id"] == victim["id"] and len(result["data"]["posts"]) == 3

            deleted = [(d["__typename"], d["id"]) for d in cascade["deleted"]]
            assert deleted[0] == ("User", victim["id"])
            assert set(deleted) == (
                {("User", victim["id"])}
                | {("Post", p["id"]) for p in own}
                | {("Comment", c["id"]) for c in on_own + elsewhere}
            )
            assert len(deleted) == len(set(deleted)) == 1 + 3 + 6
            # the friend's post lost two comments: UPDATED, with its new state
            assert [(u["__typename"], u["id"], u["operation"]) for u in cascade["updated"]] == [
                ("Post", friends_post["id"], "UPDATED")
            ]
            entity = cascade["updated"][0]["entity"]
            assert [c["id"] for c in entity["comments"]] == [survivor["id"]]
            assert entity == await conn.fetchval("SELECT data FROM v_post WHERE id = $1::uuid", friends_post["id"])
            meta = cascade["metadata"]
            assert (meta["affected_count"], meta["depth"]) == (11, 2)
            assert meta["truncated"] is False
            assert {i["query_name"] for i in cascade["invalidations"]} == {"users", "posts", "comments"}

            assert await counts(conn) == (before[0] - 1, before[1] - 3, before[2] - 6)
            assert await conn.fetchval("SELECT count(*) FROM tb_comment WHERE id = $1::uuid", untouched["id"]) == 1

            # Audit property: everything the triggers saw change is in the cascade.
            payloads = await listener.for_tx(meta["transaction_id"])
            assert notified_keys(payloads) <= cascade_keys(result)
            assert notified_keys(payloads) == set(deleted)

            assert_failure(await call(conn, "fn_delete_user", {"id": victim["id"]}), "NOT_FOUND", "id")

    asyncio.run(main())


def test_delete_user_lists_everything_however_many(pg_dsn: str) -> None:
    """150 posts with a comment each (301 deletions) and comments on 600 other
    posts (600 updates): the function lists every one (the server, not SQL,
    applies the configurable size limits: tests/integration/test_cascade_spec.py)."""

    async def main() -> None:
        async with connect(pg_dsn) as conn:
            big, other = await new_user(conn, "prolific"), await new_user(conn, "other")
            await conn.execute(
                """
                WITH b AS (SELECT pk_user FROM tb_user WHERE id = $1::uuid),
                     o AS (SELECT pk_user FROM tb_user WHERE id = $2::uuid),
                     own AS (
                        INSERT INTO tb_post (fk_author, title, body, created_at)
                        SELECT b.pk_user, 'big ' || g, 'body', now() + g * interval '1 ms' FROM b, generate_series(1, 150) g
                        RETURNING pk_post),
                     theirs AS (
                        INSERT INTO tb_post (fk_author, title, body, created_at)
                        SELECT o.pk_user, 'other ' || g, 'body', now() + g * interval '1 ms' FROM o, generate_series(1, 600) g
                        RETURNING pk_post),
                     c1 AS (INSERT INTO tb_comment (fk_post, fk_author, body) SELECT own.pk_post, o.pk_user, 'hi' FROM own, o),
                     c2 AS (INSERT INTO tb_comment (fk_post, fk_author, body) SELECT theirs.pk_post, b.pk_user, 'hey' FROM theirs, b)
                SELECT 1
                """,
                big["id"], other["id"],
            )
            before = await counts(conn)
            result = await call(conn, "fn_delete_user", {"id": big["id"]})
            assert_success(result)
            cascade = result["cascade"]
            assert len(cascade["deleted"]) == 1 + 150 + 150 + 600
            assert len(cascade["updated"]) == 600
            assert cascade["deleted"][0] == {**cascade["deleted"][0], "__typename": "User", "id": big["id"]}
            assert all(u["entity"] is not None and u["__typename"] == "Post" for u in cascade["updated"])
            meta = cascade["metadata"]
            # deleted: the user, 150 posts, 150 comments on them, 600 comments elsewhere; updated: 600 posts
            assert meta["affected_count"] == (1 + 150 + 150 + 600) + 600
            assert cascade["type_invalidations"] == [{"typename": "Draft"}]  # drafts go by ON DELETE CASCADE
            assert await counts(conn) == (before[0] - 1, before[1] - 150, before[2] - 750)
            # nothing was cut from the database, only from the response
            assert await conn.fetchval(
                "SELECT count(*) FROM tb_post p JOIN tb_user u ON u.pk_user = p.fk_author WHERE u.id = $1::uuid",
                other["id"],
            ) == 600
            await call(conn, "fn_delete_user", {"id": other["id"]})

    asyncio.run(main())


# --- posts --------------------------------------------------------------------------


def test_create_update_delete_post(pg_dsn: str) -> None:
    async def main() -> None:
        async with connect(pg_dsn) as conn, Listener(pg_dsn) as listener:
            author, reader = await new_user(conn), await new_user(conn)

            result = await call(conn, "fn_create_post", {"author_id": author["id"], "title": " Hello ", "body": "World"})
            assert_success(result)
            post = result["data"]
            assert (post["title"], post["body"], post["comments"]) == ("Hello", "World", [])
            assert post["author"]["id"] == author["id"]
            assert [(u["__typename"], u["id"], u["operation"]) for u in result["cascade"]["updated"]] == [
                ("Post", post["id"], "CREATED"),
                ("User", author["id"], "UPDATED"),
            ]
            assert [p["id"] for p in result["cascade"]["updated"][1]["entity"]["posts"]] == [post["id"]]
            tx = result["cascade"]["metadata"]["transaction_id"]
            assert notified_keys(await listener.for_tx(tx)) == {("Post", post["id"])}

            for payload, code, field in [
                ({"author_id": author["id"], "title": "", "body": "b"}, "VALIDATION_ERROR", "title"),
                ({"author_id": author["id"], "title": "t", "body": " "}, "VALIDATION_ERROR", "body"),
                ({"title": "t", "body": "b"}, "VALIDATION_ERROR", "authorId"),
                ({"author_id": str(uuid.uuid4()), "title": "t", "body": "b"}, "NOT_FOUND", "authorId"),
            ]:
                assert_failure(await call(conn, "fn_create_post", payload), code, field)

            result = await call(conn, "fn_update_post", {"id": post["id"], "body": "Edited"})
            assert_success(result)
            assert (result["data"]["title"], result["data"]["body"]) == ("Hello", "Edited")
            assert [(u["__typename"], u["operation"]) for u in result["cascade"]["updated"]] == [("Post", "UPDATED")]
            assert_failure(await call(conn, "fn_update_post", {"id": post["id"], "title": ""}), "VALIDATION_ERROR", "title")
            assert_failure(await call(conn, "fn_update_post", {"id": str(uuid.uuid4()), "title": "x"}), "NOT_FOUND", "id")

            comments = [await new_comment(conn, post["id"], reader["id"], f"c{i}") for i in range(3)]
            result = await call(conn, "fn_delete_post", {"id": post["id"]})
            assert_success(result)
            assert result["data"]["id"] == post["id"] and len(result["data"]["comments"]) == 3
            assert [(d["__typename"], d["id"]) for d in result["cascade"]["deleted"]] == [
                ("Post", post["id"]),
                *[("Comment", c["id"]) for c in comments],
            ]
            assert [(u["__typename"], u["id"]) for u in result["cascade"]["updated"]] == [("User", author["id"])]
            assert result["cascade"]["updated"][0]["entity"]["posts"] == []
            tx = result["cascade"]["metadata"]["transaction_id"]
            assert notified_keys(await listener.for_tx(tx)) <= cascade_keys(result)
            assert await conn.fetchval("SELECT count(*) FROM v_comment WHERE post_id = $1::uuid", post["id"]) == 0
            assert_failure(await call(conn, "fn_delete_post", {"id": post["id"]}), "NOT_FOUND", "id")

    asyncio.run(main())


# --- comments ------------------------------------------------------------------------


def test_create_and_delete_comment(pg_dsn: str) -> None:
    async def main() -> None:
        async with connect(pg_dsn) as conn, Listener(pg_dsn) as listener:
            author, reader = await new_user(conn), await new_user(conn)
            post = await new_post(conn, author["id"])

            result = await call(conn, "fn_create_comment", {"post_id": post["id"], "author_id": reader["id"], "body": "Great"})
            assert_success(result)
            comment = result["data"]
            assert set(comment) == COMMENT_KEYS
            assert (comment["post"]["id"], comment["author"]["id"]) == (post["id"], reader["id"])
            updated = result["cascade"]["updated"]
            assert [(u["__typename"], u["id"], u["operation"]) for u in updated] == [
                ("Comment", comment["id"], "CREATED"),
                ("Post", post["id"], "UPDATED"),
            ]
            assert [c["id"] for c in updated[1]["entity"]["comments"]] == [comment["id"]]
            assert result["cascade"]["metadata"]["depth"] == 2
            tx = result["cascade"]["metadata"]["transaction_id"]
            assert notified_keys(await listener.for_tx(tx)) == {("Comment", comment["id"])}

            for payload, code, field in [
                ({"post_id": post["id"], "author_id": reader["id"], "body": ""}, "VALIDATION_ERROR", "body"),
                ({"author_id": reader["id"], "body": "b"}, "VALIDATION_ERROR", "postId"),
                ({"post_id": post["id"], "body": "b"}, "VALIDATION_ERROR", "authorId"),
                ({"post_id": str(uuid.uuid4()), "author_id": reader["id"], "body": "b"}, "NOT_FOUND", "postId"),
                ({"post_id": post["id"], "author_id": str(uuid.uuid4()), "body": "b"}, "NOT_FOUND", "authorId"),
            ]:
                assert_failure(await call(conn, "fn_create_comment", payload), code, field)

            result = await call(conn, "fn_delete_comment", {"id": comment["id"]})
            assert_success(result)
            assert result["data"] == comment
            assert [(d["__typename"], d["id"]) for d in result["cascade"]["deleted"]] == [("Comment", comment["id"])]
            assert [(u["__typename"], u["id"]) for u in result["cascade"]["updated"]] == [("Post", post["id"])]
            assert result["cascade"]["updated"][0]["entity"]["comments"] == []
            assert_failure(await call(conn, "fn_delete_comment", {"id": comment["id"]}), "NOT_FOUND", "id")

    asyncio.run(main())


def test_malformed_id_raises(pg_dsn: str) -> None:
    """An id that is not a UUID is not an expected failure: the function raises."""

    async def body(conn: asyncpg.Connection) -> None:
        for fn, payload in [
            ("fn_update_user", {"id": "nope", "name": "x"}),
            ("fn_delete_user", {"id": "nope"}),
            ("fn_create_post", {"author_id": "nope", "title": "t", "body": "b"}),
            ("fn_delete_comment", {"id": "12"}),
        ]:
            with pytest.raises(asyncpg.InvalidTextRepresentationError):
                await call(conn, fn, payload)

    run(pg_dsn, body)


# --- triggers ---------------------------------------------------------------------------


def test_plain_sql_update_notifies_with_the_transaction_id(pg_dsn: str) -> None:
    async def main() -> None:
        async with connect(pg_dsn) as conn, Listener(pg_dsn) as listener:
            user = await new_user(conn)
            async with conn.transaction():
                await conn.execute("UPDATE tb_user SET name = 'psql edit' WHERE id = $1::uuid", user["id"])
                tx = await conn.fetchval("SELECT txid_current()")
            payloads = await listener.for_tx(tx)
            assert [p["tx"] for p in payloads] == [str(tx)]
            assert tags_of(payloads) == {"t:public.tb_user", f"r:public.tb_user:{user['id']}"}

            post = await new_post(conn, user["id"])
            async with conn.transaction():
                await conn.execute("DELETE FROM tb_post WHERE id = $1::uuid", post["id"])
                tx = await conn.fetchval("SELECT txid_current()")
            # the post and, through fk_author -> tb_user.pk_user, its author (looked up by id): derived
            assert tags_of(await listener.for_tx(tx)) == {
                "t:public.tb_post", f"r:public.tb_post:{post['id']}", f"+r:public.tb_user:{user['id']}",
                f"+f:public.tb_post:fk_author={user['id']}"}  # the author's lists of posts (graphql/filters.py)

            # a rolled-back write notifies nobody
            tr = conn.transaction()
            await tr.start()
            await conn.execute("UPDATE tb_user SET name = 'never' WHERE id = $1::uuid", user["id"])
            tx = await conn.fetchval("SELECT txid_current()")
            await tr.rollback()
            assert await listener.for_tx(tx) == []

    asyncio.run(main())


def test_plain_sql_delete_of_a_user_reports_cascaded_rows(pg_dsn: str) -> None:
    async def main() -> None:
        async with connect(pg_dsn) as conn, Listener(pg_dsn) as listener:
            user, other = await new_user(conn), await new_user(conn)
            post = await new_post(conn, user["id"])
            comment = await new_comment(conn, post["id"], other["id"])
            async with conn.transaction():
                await conn.execute("DELETE FROM tb_user WHERE id = $1::uuid", user["id"])
                tx = await conn.fetchval("SELECT txid_current()")
            assert notified_keys(await listener.for_tx(tx)) == {
                ("User", user["id"]), ("Post", post["id"]), ("Comment", comment["id"]),
            }

    asyncio.run(main())


@pytest.mark.parametrize("rows", [1, 20, 200, 1000])  # listed, listed, too long for one NOTIFY, over max_rows
def test_large_statements_fall_back_to_table_tags(pg_dsn: str, rows: int) -> None:
    """Every payload fits in a NOTIFY; a statement whose tags do not fit in
    ~7900 bytes sends t: + w: of its table and w: of the tables it references."""

    async def main() -> None:
        async with connect(pg_dsn) as conn, Listener(pg_dsn) as listener:
            async with conn.transaction():
                ids = await conn.fetch(
                    "UPDATE tb_comment SET body = body WHERE pk_comment IN "
                    "(SELECT pk_comment FROM tb_comment ORDER BY pk_comment LIMIT $1) RETURNING id::text",
                    rows,
                )
                tx = await conn.fetchval("SELECT txid_current()")
                recorded = await conn.fetchval("SELECT current_setting('fraiseshm.changes', true)")
            assert len(ids) == rows
            payloads = await listener.for_tx(tx)
            assert len(payloads) == 1
            raw = [r for r in listener.raw if f'"{tx}"' in r]
            assert all(len(r.encode()) <= 8000 for r in raw)
            (payload,) = payloads
            rows_listed = {f"r:public.tb_comment:{i['id']}" for i in ids}
            if any(t.startswith("r:") for t in payload["tags"]):
                assert rows_listed <= set(payload["tags"])
                assert "w:public.tb_comment" not in payload["tags"]
                assert rows <= 20
            else:
                assert rows >= 200
                assert sorted(payload["tags"]) == [
                    "t:public.tb_comment", "w:public.tb_comment", "w:public.tb_post", "w:public.tb_user"]
            assert sorted(recorded.split()) == sorted(payload["tags"])  # the same items, + kept

    asyncio.run(main())


# --- concurrency ------------------------------------------------------------------------


def test_comment_racing_a_delete_user_cannot_escape_the_cascade(pg_dsn: str) -> None:
    """deleteUser locks the user's posts first: a concurrent createComment on
    one of them waits, then fails with NOT_FOUND; it is never deleted silently
    by ON DELETE CASCADE behind the cascade's back."""

    async def main() -> None:
        async with connect(pg_dsn) as deleter, connect(pg_dsn) as writer, Listener(pg_dsn) as listener:
            victim, other = await new_user(deleter), await new_user(deleter)
            post = await new_post(deleter, victim["id"])
            tr = deleter.transaction()
            await tr.start()
            result = await call(deleter, "fn_delete_user", {"id": victim["id"]})
            racing = asyncio.ensure_future(
                call(writer, "fn_create_comment", {"post_id": post["id"], "author_id": other["id"], "body": "late"})
            )
            # the writer must be blocked on our lock before we commit
            waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid = $1"
            while not await deleter.fetchval(waiting, writer.get_server_pid()):
                assert not racing.done(), racing.result()
                await asyncio.sleep(0.01)  # polling a condition, bounded by the test timeout
            await tr.commit()
            late = await asyncio.wait_for(racing, TIMEOUT)
            assert late["success"] is False and late["errors"][0]["code"] == "NOT_FOUND"
            tx = result["cascade"]["metadata"]["transaction_id"]
            assert notified_keys(await listener.for_tx(tx)) <= cascade_keys(result)

    asyncio.run(main())


def test_pg_stat_statements_counts_executions(pg_dsn: str) -> None:
    # Statements that differ only in constants, casts of parameters or comments
    # share one entry (whose text is the first variant seen): count by query id.
    sql = "SELECT data FROM v_user WHERE id = $1"
    count = "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE queryid = $1"

    async def body(conn: asyncpg.Connection) -> None:
        plan = json.loads(await conn.fetchval(f"EXPLAIN (VERBOSE, FORMAT JSON) {sql}", uuid.uuid4()))
        queryid = plan[0]["Query Identifier"]
        before = await conn.fetchval(count, queryid)
        for _ in range(3):
            await conn.fetchval(sql, uuid.uuid4())
        assert await conn.fetchval(count, queryid) - before == 3

    run(pg_dsn, body)
