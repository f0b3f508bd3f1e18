"""Batched requests: a JSON array in, a JSON array out, each item cached on its own."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import httpx
import pytest

from fraiseshm.db.embedded import EmbeddedCluster
from tests.integration.server import Server

USER = "query($id: ID!) { user(id: $id) { id name } }"
RENAME = "mutation($id: ID!, $name: String) { updateUser(input: {id: $id, name: $name}) { success } }"


@pytest.fixture(scope="module")
def batching(pg_dsn: str) -> Iterator[Server]:
    with Server(pg_dsn, workers=2, tag="batch", env={"FRAISESHM_MAX_BATCH_SIZE": "5"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def c(batching: Server) -> Iterator[httpx.Client]:
    with batching.client() as client:
        yield client


def _uids(cluster: EmbeddedCluster, n: int, offset: int) -> list[str]:
    return cluster.psql(f"SELECT id FROM tb_user ORDER BY pk_user OFFSET {offset} LIMIT {n}").split()


def _post_raw(c: httpx.Client, body: str | bytes, **headers: str) -> httpx.Response:
    return c.post("/graphql", content=body, headers={"Content-Type": "application/json", **headers})


def test_each_item_is_cached_on_its_own(c: httpx.Client, pg_cluster: EmbeddedCluster) -> None:
    a, b, d = _uids(pg_cluster, 3, offset=180)
    first = c.post("/graphql", json=[{"query": USER, "variables": {"id": a}}, {"query": USER, "variables": {"id": b}}])
    assert first.status_code == 200 and first.headers["X-Cache"] == "MISS, MISS"
    assert [item["data"]["user"]["id"] for item in first.json()] == [a, b]
    mixed = c.post("/graphql", json=[{"query": USER, "variables": {"id": b}}, {"query": USER, "variables": {"id": d}},
                                     {"query": USER, "variables": {"id": a}}])
    assert mixed.headers["X-Cache"] == "HIT, MISS, HIT"
    assert [item["data"]["user"]["id"] for item in mixed.json()] == [b, d, a]
    assert mixed.headers["Cache-Control"] == "no-cache"
    # a single request reads the entry a batch item stored, and the other way round
    single = c.post("/graphql", json={"query": USER, "variables": {"id": d}})
    assert single.headers["X-Cache"] == "HIT" and single.json() == mixed.json()[1]


def test_items_fail_alone(c: httpx.Client, pg_cluster: EmbeddedCluster) -> None:
    (a,) = _uids(pg_cluster, 1, offset=184)
    r = c.post("/graphql", json=[
        {"query": USER, "variables": {"id": a}},
        {"query": "{ nope }"},
        {"query": 5},
        {"query": USER, "variables": {"id": "not-a-uuid"}},
        {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "0" * 64}}},
    ])
    assert r.status_code == 200, r.text
    items = r.json()
    assert items[0]["data"]["user"]["id"] == a
    assert items[1]["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert items[2]["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    assert items[3]["errors"][0]["message"].startswith("user: argument id")
    assert items[4]["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"
    assert r.headers["Cache-Control"] == "no-store"  # a batch holding an error is not for shared caches


def test_mutation_in_a_batch_invalidates_before_the_items_after_it(c: httpx.Client, pg_cluster: EmbeddedCluster) -> None:
    (a,) = _uids(pg_cluster, 1, offset=186)
    read = {"query": USER, "variables": {"id": a}}
    before = c.post("/graphql", json=read).json()["data"]["user"]["name"]
    r = c.post("/graphql", json=[read, {"query": RENAME, "variables": {"id": a, "name": "batched rename"}}, read])
    items = r.json()
    assert r.headers["X-Cache"] == "HIT, BYPASS, MISS"
    assert items[0]["data"]["user"]["name"] == before
    assert items[1]["data"]["updateUser"]["success"] is True
    assert items[2]["data"]["user"]["name"] == "batched rename"
    assert r.headers["Cache-Control"] == "no-store"
    assert pg_cluster.psql(f"SELECT name FROM tb_user WHERE id = '{a}'").strip() == "batched rename"


def test_persisted_queries_inside_a_batch(c: httpx.Client, pg_cluster: EmbeddedCluster) -> None:
    (a,) = _uids(pg_cluster, 1, offset=188)
    pq = {"persistedQuery": {"version": 1, "sha256Hash": hashlib.sha256(USER.encode()).hexdigest()}}
    r = c.post("/graphql", json=[{"query": USER, "variables": {"id": a}, "extensions": pq},
                                 {"variables": {"id": a}, "extensions": pq}])
    first, second = r.json()
    assert first == second and first["data"]["user"]["id"] == a
    assert r.headers["X-Cache"] == "MISS, HIT"


def test_size_limit_and_malformed_batches(c: httpx.Client) -> None:
    item = {"query": "{ users(limit: 1) { id } }"}
    assert c.post("/graphql", json=[item] * 5).status_code == 200
    cases = {
        json.dumps([item] * 6): "the batch has 6 requests; the limit is 5 (FRAISESHM_MAX_BATCH_SIZE)",
        json.dumps([{}] * 100_000): "the batch has 100000 requests",
        "[]": "empty array",
        json.dumps([[item]]): "batch item 0 is not a GraphQL request",
        json.dumps([item, [item, item]]): "batch item 1 is not a GraphQL request",
        json.dumps([item, 1]): "batch item 1 is not a GraphQL request",
        json.dumps([item, "query"]): "batch item 1 is not a GraphQL request",
        json.dumps([item, None]): "batch item 1 is not a GraphQL request",
        "[" * 100_000 + "]" * 100_000: "FRAISESHM_MAX_JSON_DEPTH",
        json.dumps([item])[:-1]: "not valid JSON",
        "[{}, ": "not valid JSON",
    }
    for body, message in cases.items():
        r = _post_raw(c, body)
        assert r.status_code == 400, (body[:40], r.status_code, r.text[:200])
        error = r.json()["errors"][0]
        assert message in error["message"], (body[:40], error)
        assert error["extensions"]["code"] == "BAD_REQUEST"


def test_batch_of_mutations_over_the_media_type_of_the_spec(c: httpx.Client, pg_cluster: EmbeddedCluster) -> None:
    a, b = _uids(pg_cluster, 2, offset=190)
    r = c.post("/graphql", json=[{"query": RENAME, "variables": {"id": a, "name": "m1"}},
                                 {"query": RENAME, "variables": {"id": b, "name": "m2"}}],
               headers={"Accept": "application/graphql-response+json"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/graphql-response+json")
    assert [i["data"]["updateUser"]["success"] for i in r.json()] == [True, True]
    assert pg_cluster.psql(f"SELECT string_agg(name, ',' ORDER BY name) FROM tb_user WHERE id IN ('{a}', '{b}')").strip() == "m1,m2"


def test_batching_switched_off(pg_dsn: str) -> None:
    with Server(pg_dsn, workers=1, tag="nobatch", env={"FRAISESHM_MAX_BATCH_SIZE": "0"}) as srv, srv.client() as c:
        r = c.post("/graphql", json=[{"query": "{ users(limit: 1) { id } }"}])
        assert r.status_code == 400 and "switched off" in r.text
        assert c.post("/graphql", json={"query": "{ users(limit: 1) { id } }"}).status_code == 200
