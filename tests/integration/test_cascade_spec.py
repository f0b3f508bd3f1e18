"""Every example mutation's LIVE response checked against graphql-cascade 1.8.0.

Real gunicorn workers over the blog (session database) and the shop (a fresh
database), each mutation asked with every field of every cascade type
selected, its payload checked by tests/integration/cascade_spec_rules.py
(a JSON Schema from the specification's normative schema plus the rules of
its chapters 04 and 05). Cases: successes, validation errors, conflicts, not
found, deletes with nested entities (checked complete against the database),
and truncation with small configured limits (REQ-050), after which the
server's own cache is still fresh for what was cut from the response.
The query invalidation hints are the server's: updateUser names user(id: X).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from fraiseshm.cascade import spec
from fraiseshm.db.embedded import EmbeddedCluster
from tests.integration.cascade_spec_rules import SPEC_VERSION, assert_conforms, check, mutation
from tests.integration.server import Server, graphql
from tests.integration.shop_db import shop_database

ROOT = Path(__file__).resolve().parents[2]

def _with_generated(roots: set[str], lists: set[str]) -> set[str]:
    """Each list field's generated siblings (graphql/surface.py) are root query fields too."""
    return roots | lists | {f"{name}{suffix}" for name in lists for suffix in ("Connection", "Count")}


BLOG_ROOTS = _with_generated({"user", "post", "comment", "draft", "cascadeInfo"}, {"users", "posts", "comments", "drafts"})
SHOP_ROOTS = _with_generated({"customer", "product", "category", "order", "recentOrder", "cascadeInfo"},
                             {"customers", "products", "categories", "orders", "recentOrders"})
VALIDATED: list[str] = []  # the mutation cases whose live payload conformed


def _fetch(dsn: str, sql: str, *args: Any) -> list[Any]:
    async def run() -> list[Any]:
        conn = await asyncpg.connect(dsn)
        try:
            return [tuple(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()
    return asyncio.run(run())


def _mutate(client: httpx.Client, case: str, field: str, input_type: str, input: dict[str, Any],
            roots: set[str], limits: tuple[int, int] | None = None) -> dict[str, Any]:
    r = graphql(client, mutation(field, input_type), {"input": input})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "errors" not in body, body
    payload = body["data"][field]
    assert_conforms(payload, root_fields=roots, limits=limits)
    VALIDATED.append(case)
    return payload


def _hints(payload: dict[str, Any]) -> list[tuple[str | None, Any, str]]:
    return [(i["queryName"], i["arguments"], i["strategy"]) for i in payload["cascade"]["invalidations"]]


@pytest.fixture(scope="module")
def blog(pg_dsn: str) -> Iterator[httpx.Client]:
    with Server(pg_dsn, workers=2, tag="spec") as server, server.client() as client:
        yield client


# --- version discovery -----------------------------------------------------------------


def test_the_server_names_the_version_it_conforms_to(blog: httpx.Client) -> None:
    assert spec.SPEC_VERSION == SPEC_VERSION
    r = graphql(blog, "{ cascadeInfo { version supportedVersions experimentalFeatures deprecatedFeatures } }")
    assert r.json() == {"data": {"cascadeInfo": {"version": SPEC_VERSION, "supportedVersions": [SPEC_VERSION],
                                                 "experimentalFeatures": [], "deprecatedFeatures": []}}}
    schema = graphql(blog, '{ __type(name: "UpdatedEntity") { fields { name } } }').json()
    assert {f["name"] for f in schema["data"]["__type"]["fields"]} == {
        "typename", "id", "operation", "entity", "updatedFields"}
    payload = graphql(blog, '{ __type(name: "UpdateUserCascade") { interfaces { name } } }').json()
    assert payload["data"]["__type"]["interfaces"] == [{"name": "CascadeResponse"}]


# --- blog ------------------------------------------------------------------------------------


def test_blog_create_user_and_its_refusals(blog: httpx.Client) -> None:
    email = f"spec-{os.getpid()}@example.com"
    created = _mutate(blog, "blog createUser", "createUser", "CreateUserInput", {"name": "Spec", "email": email},
                      BLOG_ROOTS)
    uid = created["data"]["id"]
    assert [(u["typename"], u["id"], u["operation"], u["updatedFields"]) for u in created["cascade"]["updated"]] == [
        ("User", uid, "CREATED", None)]
    # The function's own PREFIX users (covering the server's EXACT users), and the new id's own query
    # (a null result for it may be cached); no single post or comment can hold a user created now.
    assert [(i["queryName"], i["scope"], i["arguments"]) for i in created["cascade"]["invalidations"]] == [
        ("users", "PREFIX", None), ("user", "EXACT", {"id": uid}),
        *((f"{name}{suffix}", "EXACT", None) for name in ("posts", "comments", "drafts")
          for suffix in ("", "Connection", "Count"))]
    assert created["cascade"]["metadata"]["truncated"] is False and created["cascade"]["typeInvalidations"] == []

    invalid = _mutate(blog, "blog createUser validation error", "createUser", "CreateUserInput",
                      {"name": "", "email": "x@example.com"}, BLOG_ROOTS)
    assert invalid["success"] is False and invalid["data"] is None
    assert [(e["code"], e["field"], e["path"]) for e in invalid["errors"]] == [
        ("VALIDATION_ERROR", "name", ["input", "name"])]
    assert invalid["cascade"]["invalidations"] == []
    conflict = _mutate(blog, "blog createUser conflict", "createUser", "CreateUserInput",
                       {"name": "Again", "email": email}, BLOG_ROOTS)
    assert [e["code"] for e in conflict["errors"]] == ["CONFLICT"]


def test_blog_update_user_names_the_queries_it_affects(blog: httpx.Client, pg_dsn: str) -> None:
    [(uid,)] = _fetch(pg_dsn, "SELECT id::text FROM tb_user ORDER BY id LIMIT 1 OFFSET 3")
    payload = _mutate(blog, "blog updateUser", "updateUser", "UpdateUserInput", {"id": uid, "name": "Renamed"},
                      BLOG_ROOTS)
    hints = _hints(payload)
    # Its own row: user(id: uid) exactly; lists over tb_user; types whose data nest a user, all arguments.
    assert ("user", {"id": uid}, "INVALIDATE") in hints
    assert {"users", "posts", "post", "comments", "comment"} <= {name for name, args, _ in hints if args is None}
    assert ("user", None, "INVALIDATE") not in hints
    assert all(i["scope"] == "EXACT" for i in payload["cascade"]["invalidations"] if i["arguments"])
    missing = _mutate(blog, "blog updateUser not found", "updateUser", "UpdateUserInput",
                      {"id": "00000000-0000-0000-0000-000000000000", "name": "x"}, BLOG_ROOTS)
    assert [e["code"] for e in missing["errors"]] == ["NOT_FOUND"] and missing["cascade"]["updated"] == []


def test_blog_posts_and_comments(blog: httpx.Client, pg_dsn: str) -> None:
    [(author,)] = _fetch(pg_dsn, "SELECT id::text FROM tb_user ORDER BY id LIMIT 1 OFFSET 5")
    post = _mutate(blog, "blog createPost", "createPost", "CreatePostInput",
                   {"authorId": author, "title": "t", "body": "b"}, BLOG_ROOTS)
    pid = post["data"]["id"]
    assert {(u["typename"], u["operation"]) for u in post["cascade"]["updated"]} == {("Post", "CREATED"),
                                                                                    ("User", "UPDATED")}
    _mutate(blog, "blog updatePost", "updatePost", "UpdatePostInput", {"id": pid, "title": "t2"}, BLOG_ROOTS)
    comment = _mutate(blog, "blog createComment", "createComment", "CreateCommentInput",
                      {"postId": pid, "authorId": author, "body": "c"}, BLOG_ROOTS)
    _mutate(blog, "blog deleteComment", "deleteComment", "DeleteCommentInput", {"id": comment["data"]["id"]},
            BLOG_ROOTS)
    _mutate(blog, "blog createComment (2)", "createComment", "CreateCommentInput",
            {"postId": pid, "authorId": author, "body": "c2"}, BLOG_ROOTS)
    gone = _mutate(blog, "blog deletePost with comments", "deletePost", "DeletePostInput", {"id": pid}, BLOG_ROOTS)
    assert {d["typename"] for d in gone["cascade"]["deleted"]} == {"Post", "Comment"}
    assert ("post", {"id": pid}, "REMOVE") in _hints(gone)
    _mutate(blog, "blog createPost not found", "createPost", "CreatePostInput",
            {"authorId": "00000000-0000-0000-0000-000000000000", "title": "t", "body": "b"}, BLOG_ROOTS)


def _user_with_children(dsn: str, offset: int) -> tuple[str, set[tuple[str, str]]]:
    """A user with posts that have comments, and every entity deleting it must delete."""
    [(uid,)] = _fetch(dsn, "SELECT u.id::text FROM tb_user u JOIN tb_post p ON p.fk_author = u.pk_user "
                           "JOIN tb_comment c ON c.fk_post = p.pk_post GROUP BY u.id ORDER BY u.id "
                           f"LIMIT 1 OFFSET {offset}")
    rows = _fetch(dsn, """
        SELECT 'Post', p.id::text FROM tb_post p JOIN tb_user u ON u.pk_user = p.fk_author WHERE u.id = $1::uuid
        UNION ALL
        SELECT 'Comment', c.id::text FROM tb_comment c JOIN tb_post p ON p.pk_post = c.fk_post
          JOIN tb_user pu ON pu.pk_user = p.fk_author JOIN tb_user cu ON cu.pk_user = c.fk_author
        WHERE pu.id = $1::uuid OR cu.id = $1::uuid""", uid)
    return uid, {("User", uid), *rows}


def test_blog_delete_user_lists_every_nested_entity(blog: httpx.Client, pg_dsn: str) -> None:
    uid, expected = _user_with_children(pg_dsn, 0)
    payload = _mutate(blog, "blog deleteUser nested", "deleteUser", "DeleteUserInput", {"id": uid}, BLOG_ROOTS)
    deleted = {(d["typename"], d["id"]) for d in payload["cascade"]["deleted"]}
    assert deleted == expected  # completeness: nothing omitted, nothing covered by type only
    assert payload["cascade"]["metadata"]["affectedCount"] == len(expected) + len(payload["cascade"]["updated"])
    assert ("user", {"id": uid}, "REMOVE") in _hints(payload)
    missing = _mutate(blog, "blog deleteUser not found", "deleteUser", "DeleteUserInput", {"id": uid}, BLOG_ROOTS)
    assert [e["code"] for e in missing["errors"]] == ["NOT_FOUND"]


def test_truncation_removes_whole_types_and_the_server_cache_stays_fresh(pg_dsn: str) -> None:
    limits = (3, 2)
    env = {"FRAISESHM_CASCADE_MAX_UPDATED": str(limits[0]), "FRAISESHM_CASCADE_MAX_DELETED": str(limits[1])}
    uid, expected = _user_with_children(pg_dsn, 1)
    post_id = next(i for t, i in sorted(expected) if t == "Post")
    post_query = "query($id: ID!) { post(id: $id) { id title } }"
    with Server(pg_dsn, workers=1, tag="trunc", env=env) as server, server.client() as client:
        assert graphql(client, post_query, {"id": post_id}).json()["data"]["post"]["id"] == post_id
        assert graphql(client, post_query, {"id": post_id}).headers["X-Cache"] == "HIT"
        payload = _mutate(client, "blog deleteUser truncated", "deleteUser", "DeleteUserInput", {"id": uid},
                          BLOG_ROOTS, limits=limits)
        cascade = payload["cascade"]
        assert cascade["metadata"]["truncated"] is True
        types = {t["typename"]: t["affectedCount"] for t in cascade["typeInvalidations"]}
        # Deleted: 1 User, the posts, the comments; the comments go first (most entries), then the posts.
        assert {"Comment", "Post"} <= set(types)
        assert types["Comment"] == sum(1 for t, _ in expected if t == "Comment")
        assert [(d["typename"], d["id"]) for d in cascade["deleted"]] == [("User", uid)]
        assert cascade["metadata"]["affectedCount"] >= len(expected)
        # What was cut from the response was still invalidated on the server.
        fresh = graphql(client, post_query, {"id": post_id})
        assert fresh.headers["X-Cache"] != "HIT" and fresh.json()["data"]["post"] is None


# --- shop ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop(pg_cluster: EmbeddedCluster) -> Iterator[tuple[httpx.Client, str]]:
    env = {"FRAISESHM_SCHEMA_SDL": str(ROOT / "examples/shop/schema.graphql")}
    with (shop_database(pg_cluster, f"shop_spec_{os.getpid()}", 20, 10) as dsn,
          Server(dsn, workers=2, tag="shopspec", env=env) as server, server.client() as client):
        yield client, dsn


def test_shop_mutations(shop: tuple[httpx.Client, str]) -> None:
    client, dsn = shop
    customer = _mutate(client, "shop createCustomer", "createCustomer", "CreateCustomerInput",
                       {"name": "Spec", "email": f"spec-{os.getpid()}@example.com"}, SHOP_ROOTS)
    cid = customer["data"]["id"]
    _mutate(client, "shop createCustomer validation error", "createCustomer", "CreateCustomerInput",
            {"name": "", "email": "x@example.com"}, SHOP_ROOTS)
    [(product,)] = _fetch(dsn, "SELECT id::text FROM products ORDER BY id LIMIT 1")
    order = _mutate(client, "shop createOrder", "createOrder", "CreateOrderInput",
                    {"customerId": cid, "items": [{"productId": product, "quantity": 2}]}, SHOP_ROOTS)
    oid = order["data"]["id"]
    assert ("customer", cid, "INVALIDATE") in [(n, (a or {}).get("id"), s) for n, a, s in _hints(order)]
    _mutate(client, "shop addOrderItem", "addOrderItem", "AddOrderItemInput",
            {"orderId": oid, "productId": product, "quantity": 1}, SHOP_ROOTS)
    updated = _mutate(client, "shop updateCustomer (lists its orders)", "updateCustomer", "UpdateCustomerInput",
                      {"id": cid, "name": "Renamed"}, SHOP_ROOTS)
    assert ("Order", oid) in {(u["typename"], u["id"]) for u in updated["cascade"]["updated"]}
    _mutate(client, "shop updateProduct", "updateProduct", "UpdateProductInput", {"id": product, "price": "9.99"},
            SHOP_ROOTS)
    _mutate(client, "shop updateCustomer not found", "updateCustomer", "UpdateCustomerInput",
            {"id": "999999", "name": "x"}, SHOP_ROOTS)
    _mutate(client, "shop createOrder not found", "createOrder", "CreateOrderInput",
            {"customerId": "999999", "items": [{"productId": product, "quantity": 1}]}, SHOP_ROOTS)
    gone = _mutate(client, "shop deleteOrder", "deleteOrder", "DeleteOrderInput", {"id": oid}, SHOP_ROOTS)
    assert ("Order", oid) in {(d["typename"], d["id"]) for d in gone["cascade"]["deleted"]}


# --- the checker bites ----------------------------------------------------------------------


def test_the_rules_catch_what_the_old_dialect_and_bad_cascades_did(blog: httpx.Client, pg_dsn: str) -> None:
    """The checker itself must bite: each broken payload is refused."""
    [(uid,)] = _fetch(pg_dsn, "SELECT id::text FROM tb_user ORDER BY id LIMIT 1 OFFSET 7")
    good = _mutate(blog, "blog updateUser (2)", "updateUser", "UpdateUserInput", {"id": uid, "email": f"r{uid[:8]}@e.com"},
                   BLOG_ROOTS)

    def broken(change: Any) -> list[str]:
        import copy
        payload = copy.deepcopy(good)
        change(payload)
        return check(payload, root_fields=BLOG_ROOTS, limits=(500, 100))

    assert not check(good, root_fields=BLOG_ROOTS)
    u = lambda p: p["cascade"]["updated"][0]  # noqa: E731
    assert broken(lambda p: u(p).__setitem__("typeName", u(p).pop("typename")))  # the v0.1 field name
    assert broken(lambda p: p["cascade"].pop("typeInvalidations"))
    assert broken(lambda p: p["cascade"]["metadata"].__setitem__("originalCount", 1))
    assert broken(lambda p: p["cascade"]["metadata"].__setitem__("truncated", True))
    assert broken(lambda p: p["cascade"]["metadata"].__setitem__("timestamp", "yesterday"))
    assert broken(lambda p: p["cascade"]["invalidations"].append({"queryName": None, "queryHash": None,
                                                                  "arguments": None, "queryPattern": None,
                                                                  "strategy": "INVALIDATE", "scope": "PREFIX"}))
    assert broken(lambda p: p.__setitem__("errors", [{"message": "m", "code": "NOPE"}]))
    assert broken(lambda p: p.__setitem__("success", False))
    assert broken(lambda p: u(p)["entity"].__setitem__("id", "other"))


def test_zz_cases_validated() -> None:
    """The figure for the report: every case above ran and conformed."""
    print(f"\ngraphql-cascade {SPEC_VERSION}: {len(VALIDATED)} live mutation payloads validated: {VALIDATED}")
    assert len(VALIDATED) >= 25, VALIDATED
