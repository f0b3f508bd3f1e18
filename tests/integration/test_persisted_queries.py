"""Automatic persisted queries (Apollo's APQ protocol) and the allow-list mode, over real gunicorn workers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from fraiseshm.db.embedded import EmbeddedCluster
from tests.integration.server import Server

USERS = "query Users($n: Int) { users(limit: $n) { id name } }"
USER = """query UserPage($id: ID!) {
  user(id: $id) {
    id
    name
    email
    posts {
      id
      title
      body
      author { id name }
      comments { id body author { id name } }
    }
  }
}"""
RENAME = "mutation($id: ID!, $name: String) { updateUser(input: {id: $id, name: $name}) { success } }"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def pq(text: str) -> dict:
    return {"persistedQuery": {"version": 1, "sha256Hash": sha(text)}}


def hashed_get(c: httpx.Client, text: str, variables: dict | None = None, **kw: object) -> httpx.Response:
    params = {"extensions": json.dumps(pq(text), separators=(",", ":"))}
    if variables is not None:
        params["variables"] = json.dumps(variables, separators=(",", ":"))
    return c.get("/graphql?" + urlencode(params), **kw)  # type: ignore[arg-type]


def code(r: httpx.Response) -> str:
    return r.json()["errors"][0]["extensions"]["code"]


@pytest.fixture(scope="module")
def apq(pg_dsn: str) -> Iterator[Server]:
    with Server(pg_dsn, workers=2, tag="apq") as srv:
        yield srv


def test_hash_only_unknown_then_registered_then_served_by_every_worker(apq: Server, pg_cluster: EmbeddedCluster) -> None:
    variables = {"n": 3}
    with apq.client() as c:
        missing = hashed_get(c, USERS, variables)
        assert missing.status_code == 404 and code(missing) == "PERSISTED_QUERY_NOT_FOUND"
        assert missing.json()["errors"][0]["message"] == "PersistedQueryNotFound"  # what Apollo's link looks for
        assert missing.headers["Cache-Control"] == "no-store"
        registered = c.post("/graphql", json={"query": USERS, "variables": variables, "extensions": pq(USERS)})
        assert registered.status_code == 200 and len(registered.json()["data"]["users"]) == 3
        registrar = registered.headers["X-Fraiseshm-Worker"]
    # New connections until the other worker answers: it never registered the text, the arena holds it.
    seen: set[str] = set()
    for _ in range(300):
        with apq.client() as c:
            r = hashed_get(c, USERS, variables, headers={"Connection": "close"})
        assert r.status_code == 200, r.text
        assert r.json() == registered.json()
        assert r.headers["X-Cache"] == "HIT"  # the same cache entry as the full text's
        seen.add(r.headers["X-Fraiseshm-Worker"])
        if seen - {registrar}:
            break
    else:
        pytest.fail("no other worker answered in 300 connections")


def test_hashed_get_is_small_and_cacheable_downstream(apq: Server, pg_cluster: EmbeddedCluster) -> None:
    uid = pg_cluster.psql("SELECT id FROM tb_user ORDER BY pk_user OFFSET 192 LIMIT 1").strip()
    variables = {"id": uid}
    with apq.client() as c:
        c.post("/graphql", json={"query": USER, "variables": variables, "extensions": pq(USER)})
        full = c.get("/graphql", params={"query": USER, "variables": json.dumps(variables)})
        hashed = hashed_get(c, USER, variables)
        assert hashed.status_code == 200 and hashed.content == full.content
        full_len, hashed_len = len(str(full.request.url.raw_path)), len(str(hashed.request.url.raw_path))
        print(f"\nGET /graphql request target: full query {full_len} B, APQ hash {hashed_len} B")
        assert hashed.headers["Cache-Control"] == "no-cache" and hashed.headers["ETag"]
        assert "Accept" in hashed.headers["Vary"]
        again = hashed_get(c, USER, variables, headers={"If-None-Match": hashed.headers["ETag"]})
        assert again.status_code == 304 and again.headers["X-Cache"] == "HIT"


def test_hash_mismatch_is_refused_and_not_registered(apq: Server) -> None:
    other = "{ users(limit: 1) { id } }"
    with apq.client() as c:
        body = {"query": other, "extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha(USERS + " ")}}}
        r = c.post("/graphql", json=body)
        assert r.status_code == 400 and code(r) == "PERSISTED_QUERY_HASH_MISMATCH"
        r = hashed_get(c, USERS + " ")
        assert r.status_code == 404  # the hash named nothing, and still names nothing


def test_an_invalid_document_is_not_registered(apq: Server) -> None:
    bad = "{ users { nope } }"
    with apq.client() as c:
        r = c.post("/graphql", json={"query": bad, "extensions": pq(bad)})
        assert r.json()["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        assert hashed_get(c, bad).status_code == 404


@pytest.mark.parametrize("extensions", [
    {"persistedQuery": {"version": 1, "sha256Hash": "ABC"}},
    {"persistedQuery": {"version": 1, "sha256Hash": "g" * 64}},
    {"persistedQuery": {"version": 1, "sha256Hash": "A" * 64}},
    {"persistedQuery": {"version": 1, "sha256Hash": 12}},
    {"persistedQuery": {"version": 1}},
    {"persistedQuery": {"version": 2, "sha256Hash": "a" * 64}},
    {"persistedQuery": {"version": True, "sha256Hash": "a" * 64}},
    {"persistedQuery": "a" * 64},
    {"persistedQuery": ["a" * 64]},
], ids=["short", "not-hex", "upper", "number", "missing", "version-2", "version-true", "string", "list"])
def test_malformed_extension_is_a_clear_400(apq: Server, extensions: dict) -> None:
    with apq.client() as c:
        for r in (c.post("/graphql", json={"extensions": extensions}),
                  c.get("/graphql", params={"extensions": json.dumps(extensions)})):
            assert r.status_code == 400, r.text
            assert r.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


def test_other_hostile_shapes(apq: Server) -> None:
    with apq.client() as c:
        assert c.post("/graphql", json={"extensions": "x"}).status_code == 400
        assert c.post("/graphql", json={}).status_code == 400
        assert c.get("/graphql", params={"extensions": "[1]"}).status_code == 400
        assert c.get("/graphql", params={"extensions": "{"}).status_code == 400
        deep = '{"a":' * 70 + "1" + "}" * 70  # deeper than max_json_depth (64), inside gunicorn's URL limit
        r = c.get("/graphql", params={"extensions": deep})
        assert r.status_code == 400 and "FRAISESHM_MAX_JSON_DEPTH" in r.text


def test_mutations_over_apq_post_only(apq: Server, pg_cluster: EmbeddedCluster) -> None:
    uid = pg_cluster.psql("SELECT id FROM tb_user ORDER BY pk_user OFFSET 194 LIMIT 1").strip()
    with apq.client() as c:
        r = c.post("/graphql", json={"query": RENAME, "variables": {"id": uid, "name": "apq"}, "extensions": pq(RENAME)})
        assert r.json()["data"]["updateUser"]["success"]
        r = c.post("/graphql", json={"variables": {"id": uid, "name": "apq2"}, "extensions": pq(RENAME)})
        assert r.json()["data"]["updateUser"]["success"] and r.headers["Cache-Control"] == "no-store"
        r = hashed_get(c, RENAME, {"id": uid, "name": "apq3"})
        assert r.status_code == 405
    assert pg_cluster.psql(f"SELECT name FROM tb_user WHERE id = '{uid}'").strip() == "apq2"


def test_apq_switched_off_says_not_supported(pg_dsn: str) -> None:
    with Server(pg_dsn, workers=1, tag="apqoff", env={"FRAISESHM_AUTOMATIC_PERSISTED_QUERIES": "false"}) as srv:
        with srv.client() as c:
            r = c.post("/graphql", json={"query": USERS, "extensions": pq(USERS)})
            assert r.status_code == 400 and code(r) == "PERSISTED_QUERY_NOT_SUPPORTED"
            assert r.json()["errors"][0]["message"] == "PersistedQueryNotSupported"
            assert hashed_get(c, USERS).status_code == 400
            assert c.post("/graphql", json={"query": USERS}).status_code == 200  # plain requests still run


# --- allow-list --------------------------------------------------------------------------------

LISTED_USERS = "query Listed($n: Int) { users(limit: $n) { id name } }"
LISTED_USER = "query One($id: ID!) { user(id: $id) { id name } }"


@pytest.fixture(scope="module")
def allow_list(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    manifest = tmp_path_factory.mktemp("pq") / "manifest.json"
    manifest.write_text(json.dumps({
        "format": "apollo-persisted-query-manifest", "version": 1,
        "operations": [{"id": sha(t), "name": n, "type": "query", "body": t}
                       for n, t in (("Listed", LISTED_USERS), ("One", LISTED_USER))],
    }))
    env = {"FRAISESHM_PERSISTED_QUERIES_FILE": str(manifest), "FRAISESHM_PERSISTED_QUERIES_ONLY": "true"}
    with Server(pg_dsn, workers=2, tag="pqonly", env=env) as srv:
        yield srv


def test_allow_list_runs_registered_operations_by_hash_or_text(allow_list: Server) -> None:
    with allow_list.client() as c:
        by_hash = hashed_get(c, LISTED_USERS, {"n": 2})
        assert by_hash.status_code == 200 and len(by_hash.json()["data"]["users"]) == 2
        by_text = c.post("/graphql", json={"query": LISTED_USERS, "variables": {"n": 2}})
        assert by_text.status_code == 200 and by_text.json() == by_hash.json()
        both = c.post("/graphql", json={"query": LISTED_USERS, "variables": {"n": 2}, "extensions": pq(LISTED_USERS)})
        assert both.status_code == 200


@pytest.mark.parametrize("attempt", [
    {"query": "{ users(limit: 2) { id name email } }"},
    {"query": LISTED_USERS.replace("{ id", "{  id")},  # the same operation, another text: not registered
    {"query": LISTED_USERS + "\nquery Extra { users { email } }", "operationName": "Extra"},
    {"query": "{ __schema { types { name } } }"},
    {"query": RENAME, "variables": {"id": "x", "name": "y"}},
    {"query": "{ users { email } }", "extensions": pq("{ users { email } }")},  # APQ registration
    {"extensions": pq("{ users { email } }")},
], ids=["unlisted", "reformatted", "appended-operation", "introspection", "mutation", "apq-register", "unknown-hash"])
def test_allow_list_refuses_everything_else(allow_list: Server, attempt: dict) -> None:
    with allow_list.client() as c:
        r = c.post("/graphql", json=attempt)
        assert r.status_code == 403, r.text
        assert code(r) == "PERSISTED_QUERY_NOT_IN_LIST" and "FRAISESHM_PERSISTED_QUERIES_ONLY" in r.text
        if "query" in attempt and "extensions" not in attempt:
            r = c.get("/graphql", params={"query": attempt["query"]})
            assert r.status_code == 403
        if "extensions" in attempt:  # a refused registration registered nothing
            assert hashed_get(c, "{ users { email } }").status_code == 403


def test_allow_list_hash_of_a_listed_operation_cannot_carry_another_text(allow_list: Server) -> None:
    with allow_list.client() as c:
        forged = {"query": "{ users(limit: 1000) { email } }", "extensions": pq(LISTED_USERS)}
        r = c.post("/graphql", json=forged)
        assert r.status_code == 400 and code(r) == "PERSISTED_QUERY_HASH_MISMATCH"
        r = c.post("/graphql", json=[{"extensions": pq(LISTED_USERS), "variables": {"n": 1}},
                                      {"query": "{ users { email } }"}])
        items = r.json()
        assert r.status_code == 200 and len(items[0]["data"]["users"]) == 1
        assert items[1]["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_IN_LIST"


def test_a_manifest_with_a_wrong_id_stops_the_start(pg_dsn: str, tmp_path: Path) -> None:
    manifest = tmp_path / "bad.json"
    manifest.write_text(json.dumps({sha("{ users { id } }"): "{ users { id name } }"}))
    env = {"FRAISESHM_PERSISTED_QUERIES_FILE": str(manifest), "FRAISESHM_PERSISTED_QUERIES_ONLY": "true"}
    with pytest.raises(RuntimeError, match="is not the sha256 of its body"):
        Server(pg_dsn, workers=1, tag="pqbad", env=env).start(timeout=30)
