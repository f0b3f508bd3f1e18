"""/admin/*: refused without the token (401, constant-time compare), absent without one configured (404)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fraiseshm.db.embedded import EmbeddedCluster
from tests.integration.server import USER_QUERY, Server, graphql

TOKEN = "s3cret-admin-token"
ROUTES = [("POST", "/admin/invalidate", {"type": "User"}), ("POST", "/admin/flush", None), ("GET", "/admin/audit", None)]


@pytest.fixture(scope="module")
def server(pg_dsn: str) -> Iterator[Server]:
    with Server(pg_dsn, workers=2, env={"FRAISESHM_ADMIN_TOKEN": TOKEN}, tag="admin") as srv:
        yield srv


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Bearer", f"Basic {TOKEN}", f"Bearer {TOKEN}x"])
def test_refused_without_the_right_token(server: Server, method: str, path: str, body: object, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    with server.client() as http:
        r = http.request(method, path, json=body, headers=headers)
    assert r.status_code == 401, r.text
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert r.json()["errors"][0]["extensions"]["code"] == "UNAUTHORIZED"


def _hit_then(server: Server, user_id: str, action) -> str:  # noqa: ANN001
    with server.client() as http, server.client(headers={"Authorization": f"Bearer {TOKEN}"}) as admin:
        for _ in range(4):
            graphql(http, USER_QUERY, {"id": user_id})
        assert graphql(http, USER_QUERY, {"id": user_id}).headers["X-Cache"] == "HIT"
        r = action(admin)
        assert r.status_code == 200, r.text
        return graphql(http, USER_QUERY, {"id": user_id}).headers["X-Cache"]


def test_invalidate_by_type_key_tags_and_flush(server: Server, pg_cluster: EmbeddedCluster) -> None:
    user_id = pg_cluster.psql("SELECT id FROM tb_user ORDER BY pk_user LIMIT 1").strip()
    assert _hit_then(server, user_id, lambda a: a.post("/admin/invalidate", json={"type": "User"})) == "MISS"
    assert _hit_then(server, user_id, lambda a: a.post("/admin/invalidate", json={"key": f"User:{user_id}"})) == "MISS"
    assert _hit_then(server, user_id, lambda a: a.post("/admin/invalidate", json={"tags": [f"r:public.tb_user:{user_id}"]})) == "MISS"
    assert _hit_then(server, user_id, lambda a: a.post("/admin/invalidate", json={"tags": ["r:public.tb_post:nothing"]})) == "HIT"
    assert _hit_then(server, user_id, lambda a: a.post("/admin/flush")) == "MISS"
    with server.client(headers={"Authorization": f"Bearer {TOKEN}"}) as admin:
        r = admin.post("/admin/invalidate", json={"type": "User"})
        assert r.json()["data"]["invalidated"] == ["t:public.tb_post", "t:public.tb_user", "w:public.tb_post", "w:public.tb_user"]
        for bad in ({}, {"type": "Nope"}, {"key": "User"}, {"tags": []}, {"type": "User", "key": "User:1"}, {"x": 1}):
            r = admin.post("/admin/invalidate", json=bad)
            assert r.status_code == 400 and r.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST", bad


def test_audit_records_readable_with_the_token(server: Server, pg_cluster: EmbeddedCluster) -> None:
    user_id = pg_cluster.psql("SELECT id FROM tb_user ORDER BY pk_user LIMIT 1").strip()
    with server.client() as http:
        r = graphql(http, "mutation($i: UpdateUserInput!) { updateUser(input: $i) { success } }",
                    {"i": {"id": user_id, "name": "audited"}})
        assert r.json()["data"]["updateUser"]["success"]
    with server.client(headers={"Authorization": f"Bearer {TOKEN}"}) as admin:
        # Whichever worker answers, the record (written by either) shows up within the flush interval.
        for _ in range(200):
            records = admin.get("/admin/audit", params={"limit": 50}).json()["data"]["records"]
            mine = [x for x in records if x["mutation"] == "updateUser" and f"r:public.tb_user:{user_id}" in x["tags"]]
            if mine:
                break
        assert mine and mine[0]["verdict"] == "ok" and not mine[0]["failure"]
        assert mine[0]["cascade"]["updated"][0]["id"] == user_id
        assert admin.get("/admin/audit", params={"limit": 0}).status_code == 400
        failures = admin.get("/admin/audit", params={"failures": "true"}).json()["data"]["records"]
        assert all(x["failure"] for x in failures)


def test_admin_routes_absent_without_a_configured_token(pg_dsn: str) -> None:
    with Server(pg_dsn, workers=1, tag="noadmin") as srv, srv.client() as http:
        for method, path, body in ROUTES:
            r = http.request(method, path, json=body, headers={"Authorization": "Bearer x"})
            assert r.status_code == 404, (path, r.text)
