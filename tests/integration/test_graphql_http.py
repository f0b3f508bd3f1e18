"""GraphQL over HTTP against real gunicorn workers and a real PostgreSQL (issue 3)."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from tests.integration.server import USER_QUERY, graphql

GRAPHQL_RESPONSE = "application/graphql-response+json"


async def _first_user(dsn: str) -> dict:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT id::text, data::text FROM v_user ORDER BY created_at, id LIMIT 1")
    finally:
        await conn.close()
    import json

    return {"id": row["id"], "data": json.loads(row["data"])}


def _still_serves(http: httpx.Client) -> None:
    r = graphql(http, "{ users(limit: 1) { id } }")
    assert r.status_code == 200 and len(r.json()["data"]["users"]) == 1


def test_users_with_posts(http: httpx.Client) -> None:
    r = graphql(http, "{ users(limit: 2) { id name posts { title } } }")
    assert r.status_code == 200, r.text
    users = r.json()["data"]["users"]
    assert len(users) == 2
    assert all(u["id"] and u["name"] for u in users)
    assert any(u["posts"] for u in users)
    assert r.headers["content-type"].startswith("application/json")


def test_user_by_id_matches_database_with_camel_case(http: httpx.Client, pg_dsn: str) -> None:
    import asyncio

    user = asyncio.run(_first_user(pg_dsn))
    r = graphql(http, "query($id: ID!) { user(id: $id) { id name email createdAt } }", {"id": user["id"]})
    data = r.json()["data"]["user"]
    assert data == {
        "id": user["id"],
        "name": user["data"]["name"],
        "email": user["data"]["email"],
        "createdAt": user["data"]["created_at"],
    }


def test_get_query_and_mutation_over_get_is_405(http: httpx.Client) -> None:
    r = http.get("/graphql", params={"query": "{ users(limit: 1) { id } }"})
    assert r.status_code == 200 and len(r.json()["data"]["users"]) == 1
    r = http.get("/graphql", params={"query": 'mutation { deleteUser(input: {id: "00000000-0000-0000-0000-000000000000"}) { success } }'})
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert "POST" in r.json()["errors"][0]["message"]
    _still_serves(http)


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not a GraphQL request"),
        (b'{"variables": {}}', "not a GraphQL request"),
        (b'{"query": 42}', "not a GraphQL request"),
    ],
)
def test_malformed_bodies_get_400(http: httpx.Client, body: bytes, fragment: str) -> None:
    r = http.post("/graphql", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert fragment in r.json()["errors"][0]["message"]
    _still_serves(http)


@pytest.mark.parametrize(
    "query, variables, fragment",
    [
        ("{ users(limit: 1) { id ", None, "Syntax Error"),
        ("{ users(limit: 1) { nope } }", None, "Cannot query field 'nope'"),
        ("query($id: ID!) { user(id: $id) { id } }", {"id": {"a": 1}}, "Variable '$id'"),
        ("query($n: Int) { users(limit: $n) { id } }", {"n": "many"}, "Variable '$n'"),
    ],
)
def test_graphql_request_errors(http: httpx.Client, query: str, variables: dict | None, fragment: str) -> None:
    # application/graphql-response+json: request errors are 400.
    r = graphql(http, query, variables, headers={"Accept": GRAPHQL_RESPONSE})
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith(GRAPHQL_RESPONSE)
    body = r.json()
    assert "data" not in body and fragment in body["errors"][0]["message"]
    # legacy application/json: 200 with the same errors (GraphQL-over-HTTP spec).
    r = graphql(http, query, variables, headers={"Accept": "application/json"})
    assert r.status_code == 200 and fragment in r.json()["errors"][0]["message"]
    _still_serves(http)


def test_depth_limit(http: httpx.Client) -> None:
    deep = "{ posts(limit: 1) { author { posts { author { posts { author { posts { author { posts { author { posts { author { posts { id } } } } } } } } } } } } } }"
    r = graphql(http, deep, headers={"Accept": GRAPHQL_RESPONSE})
    assert r.status_code == 400
    assert "levels deep" in r.json()["errors"][0]["message"]
    _still_serves(http)


def test_body_over_limit_is_413_without_reading_it(http: httpx.Client, server) -> None:  # noqa: ANN001
    import json
    import socket

    # Announce 2 MiB (the limit is 1 MiB) and send only 1 KiB: the answer must
    # come at once, from the headers alone.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (2 << 20) + b"{" + b" " * 1024
        )
        response = b""
        while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert "limit" in json.loads(body)["errors"][0]["message"]
    _still_serves(http)


def test_wrong_content_type_and_accept(http: httpx.Client) -> None:
    r = http.post("/graphql", content=b"{ users { id } }", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = graphql(http, "{ users(limit: 1) { id } }", headers={"Accept": "text/html"})
    assert r.status_code == 406
    _still_serves(http)


def test_invalid_uuid_is_a_field_error_not_a_crash(http: httpx.Client) -> None:
    r = graphql(http, USER_QUERY, {"id": "not-a-uuid"})
    assert r.status_code == 200
    body = r.json()
    assert body["data"] == {"user": None}
    assert body["errors"][0]["message"] == "user: argument id: 'not-a-uuid' is not a valid uuid"
    _still_serves(http)


DELETE_USER = """
mutation($id: ID!) { deleteUser(input: {id: $id}) {
  success errors { code message }
  cascade {
    updated { typename id operation entity { __typename id } }
    deleted { typename id deletedAt }
    invalidations { queryName strategy scope }
    metadata { transactionId affectedCount truncated }
  } } }
"""


def test_delete_user_cascade_lists_removed_posts_and_comments(http: httpx.Client, pg_dsn: str) -> None:
    import asyncio

    async def setup() -> tuple[str, set[str], set[str]]:
        conn = await asyncpg.connect(pg_dsn)
        try:
            uid = await conn.fetchval(
                "SELECT u.id::text FROM tb_user u JOIN tb_post p ON p.fk_author = u.pk_user "
                "JOIN tb_comment c ON c.fk_post = p.pk_post GROUP BY u.id ORDER BY u.id LIMIT 1"
            )
            posts = {r[0] for r in await conn.fetch(
                "SELECT p.id::text FROM tb_post p JOIN tb_user u ON u.pk_user = p.fk_author WHERE u.id = $1::uuid", uid)}
            comments = {r[0] for r in await conn.fetch(
                "SELECT c.id::text FROM tb_comment c JOIN tb_post p ON p.pk_post = c.fk_post "
                "JOIN tb_user pu ON pu.pk_user = p.fk_author JOIN tb_user cu ON cu.pk_user = c.fk_author "
                "WHERE pu.id = $1::uuid OR cu.id = $1::uuid", uid)}
        finally:
            await conn.close()
        return uid, posts, comments

    uid, posts, comments = asyncio.run(setup())
    assert posts and comments
    r = graphql(http, DELETE_USER, {"id": uid})
    assert r.status_code == 200, r.text
    result = r.json()["data"]["deleteUser"]
    assert result["success"] is True
    deleted = {(d["typename"], d["id"]) for d in result["cascade"]["deleted"]}
    assert ("User", uid) in deleted
    assert {("Post", p) for p in posts} <= deleted
    assert {("Comment", c) for c in comments} <= deleted
    assert int(result["cascade"]["metadata"]["transactionId"]) > 0
    for updated in result["cascade"]["updated"]:
        assert updated["entity"]["__typename"] == updated["typename"]
    # the user is gone for every later read
    r = graphql(http, USER_QUERY, {"id": uid})
    assert r.json()["data"]["user"] is None


def test_mutation_validation_error_is_a_cascade_error_not_http_error(http: httpx.Client) -> None:
    r = graphql(http, 'mutation { createUser(input: {name: "", email: "x@example.com"}) { success errors { code field } } }')
    assert r.status_code == 200
    result = r.json()["data"]["createUser"]
    assert result["success"] is False
    assert result["errors"][0]["code"] == "VALIDATION_ERROR"


def test_mutation_function_that_raises(http: httpx.Client) -> None:
    # An author id that is not a UUID makes the SQL cast raise inside the function.
    r = graphql(http, 'mutation { createPost(input: {authorId: "nope", title: "t", body: "b"}) { success } }')
    assert r.status_code == 200
    body = r.json()
    assert body["data"] is None
    # a stable code and a plain message; what PostgreSQL said is in the server log only
    error = body["errors"][0]
    assert error["extensions"]["code"] == "MUTATION_FAILED"
    assert "Error" not in error["message"] and "nope" not in error["message"]
    _still_serves(http)


GOOD = b'{"query": "{ users(limit: 1) { id } }"}'
BAD_REQUESTS = [  # (method, path, headers, body, status)
    ("POST", "/graphql", {"Content-Type": "application/json"}, b"{not json", 400),
    ("POST", "/graphql", {"Content-Type": "application/json"}, b'{"query": 42}', 400),
    ("POST", "/graphql", {"Content-Type": "application/json", "Accept": GRAPHQL_RESPONSE}, b'{"query": "{ users { nope } }"}', 400),
    ("POST", "/graphql", {"Content-Type": "application/json", "Accept": GRAPHQL_RESPONSE}, b'{"query": "{ users("}', 400),
    ("GET", "/graphql?query=%7B%20users%20%7B%20id", {"Accept": GRAPHQL_RESPONSE}, None, 400),
    ("GET", "/graphql", {}, None, 400),
    ("GET", "/graphql?query=mutation%7BdeleteUser(input%3A%7Bid%3A%22x%22%7D)%7Bsuccess%7D%7D", {}, None, 405),
    ("POST", "/graphql", {"Content-Type": "application/json", "Accept": "text/html"}, GOOD, 406),
    ("POST", "/graphql", {"Content-Type": "text/plain"}, GOOD, 415),
]


def test_bad_requests_leave_the_answering_worker_alive(server) -> None:  # noqa: ANN001
    """Each bad request on a fresh connection; the same connection then carries a good
    request that the same worker must answer; and no worker was replaced meanwhile."""
    import http.client
    import json

    workers = server.worker_pids()
    answered: set[str] = set()
    for round_ in range(3):  # fresh connections spread the cases over the workers
        for method, path, headers, body, status in BAD_REQUESTS:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.auto_open = 0  # a closed connection must fail, not be silently reopened
            conn.connect()
            try:
                conn.request(method, path, body=body, headers=headers)
                r = conn.getresponse()
                payload = json.loads(r.read())
                assert r.status == status, (path, body, r.status, payload)
                assert payload["errors"][0]["message"]
                pid = r.getheader("X-Fraiseshm-Worker")
                conn.request("POST", "/graphql", body=GOOD, headers={"Content-Type": "application/json"})
                again = conn.getresponse()
                assert again.status == 200 and json.loads(again.read())["data"]["users"], (round_, path)
                assert again.getheader("X-Fraiseshm-Worker") == pid, "another worker answered on the same connection"
            finally:
                conn.close()
            answered.add(pid)
            assert server.worker_pids() == workers, f"a worker was replaced after {method} {path} -> {status}"
    assert answered <= {str(p) for p in workers}
