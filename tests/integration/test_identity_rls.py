"""Verified identity that PostgreSQL enforces (issue 13).

Drafts (examples/blog/private.sql) sit under row-level security: a policy
shows a user only the drafts whose author id is the verified `sub` that
fraiseshm sets as request.jwt.claims for every statement of the request. The
same answers must come from the cache and from PostgreSQL, for each user;
tokens that do not verify get 401; identities that a concatenated scope would
confuse get distinct cache entries.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest

from fraiseshm.db.embedded import EmbeddedCluster
from tests.integration.server import JWT_SECRET, Server, graphql

DRAFTS = "{ drafts(limit: 100) { id title author { id } } }"
DRAFT = "query($id: ID!) { draft(id: $id) { id title } }"
ENV = {
    "FRAISESHM_JWT_AUDIENCE": "blog",
    "FRAISESHM_DB_ROLE": "blog_web",  # RLS never applies to the superuser the pool logs in as
    "FRAISESHM_SCOPE_CLAIMS": "sub,tenant",
    "FRAISESHM_SCOPE_HEADER": "X-Tenant",
    "FRAISESHM_SCOPE_HEADER_TRUSTED": "true",
}


def token(claims: dict, *, secret: str = JWT_SECRET, lifetime: float = 300, **kw: object) -> str:
    payload = {"aud": "blog", "exp": int(time.time() + lifetime), **claims}
    return jwt.encode(payload, secret, algorithm="HS256", **kw)  # type: ignore[arg-type]


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module", params=[True, False], ids=["cache-on", "cache-off"])
def server(request: pytest.FixtureRequest, pg_cluster: EmbeddedCluster) -> Iterator[Server]:
    env = {**ENV, "FRAISESHM_CACHE_ENABLED": str(request.param).lower()}
    with Server(pg_cluster.dsn, workers=2, env=env, tag="rls") as srv:
        srv.cache_enabled = request.param  # type: ignore[attr-defined]
        yield srv


@pytest.fixture(scope="module")
def people(pg_cluster: EmbeddedCluster) -> dict[str, set[str]]:
    """Two users with drafts: user id -> the ids of their drafts (read as the superuser)."""
    rows = pg_cluster.psql(
        "SELECT u.id, d.id FROM tb_user u JOIN tb_draft d ON d.fk_author = u.pk_user "
        "WHERE u.pk_user IN (SELECT pk_user FROM tb_user ORDER BY pk_user OFFSET 40 LIMIT 2)"
    )
    drafts: dict[str, set[str]] = {}
    for line in rows.split():
        uid, did = line.split("|")
        drafts.setdefault(uid, set()).add(did)
    assert len(drafts) == 2 and all(len(d) == 2 for d in drafts.values())
    return drafts


def test_each_user_sees_only_their_drafts_cached_or_not(server: Server, people: dict[str, set[str]]) -> None:
    (a, a_drafts), (b, b_drafts) = people.items()
    with server.client() as c:
        for _ in range(2):  # interleaved, so a leaked setting or a shared entry would show
            for uid, mine in ((a, a_drafts), (b, b_drafts)):
                seen = []
                for attempt in range(2):
                    r = graphql(c, DRAFTS, headers=bearer(token({"sub": uid})))
                    assert r.status_code == 200, r.text
                    drafts = r.json()["data"]["drafts"]
                    assert {d["id"] for d in drafts} == mine
                    assert {d["author"]["id"] for d in drafts} == {uid}
                    assert r.headers["Cache-Control"] == "private, no-cache"
                    assert r.headers["Vary"] == "Authorization, X-Tenant"
                    seen.append(r.headers["X-Cache"])
                if server.cache_enabled:  # type: ignore[attr-defined]
                    assert seen[1] == "HIT"
                else:
                    assert seen == ["BYPASS", "BYPASS"]
            # anonymous: row-level security hides every draft; never stored
            r = graphql(c, DRAFTS)
            assert r.json()["data"]["drafts"] == [] and r.headers["X-Cache"] == "BYPASS"
        # one user's draft by id, asked by the other: it does not exist for them
        other = next(iter(b_drafts))
        for attempt in range(2):
            r = graphql(c, DRAFT, {"id": other}, headers=bearer(token({"sub": a})))
            assert r.json()["data"]["draft"] is None
            r = graphql(c, DRAFT, {"id": other}, headers=bearer(token({"sub": b})))
            assert r.json()["data"]["draft"]["id"] == other


def test_public_results_stay_shared_between_identities(server: Server, people: dict[str, set[str]]) -> None:
    if not server.cache_enabled:  # type: ignore[attr-defined]
        pytest.skip("needs the cache")
    (a, _), (b, _) = people.items()
    q = "query($id: ID!) { user(id: $id) { id name } }"
    with server.client() as c:
        first = graphql(c, q, {"id": a}, headers=bearer(token({"sub": a})))
        again = graphql(c, q, {"id": a}, headers=bearer(token({"sub": b})))
        assert again.headers["X-Cache"] == "HIT" and again.content == first.content
        assert again.headers["Cache-Control"] == "no-cache" and "Vary" not in again.headers


@pytest.mark.parametrize(
    "case",
    ["forged", "unsigned", "expired", "wrong-audience", "no-exp", "not-yet-valid", "not-a-jwt", "numeric-sub",
     "wrong-scheme", "alg-none-with-a-signature", "algorithm-not-accepted", "role-not-allowed"],
)
def test_tokens_that_do_not_verify_get_401(server: Server, people: dict[str, set[str]], case: str) -> None:
    uid = next(iter(people))
    now = int(time.time())
    header = {
        "forged": lambda: bearer(token({"sub": uid}, secret="another-secret-of-at-least-thirty-two-b")),
        "unsigned": lambda: bearer(_b64(b'{"alg":"none","typ":"JWT"}') + "."
                                   + _b64(b'{"sub":"%s","aud":"blog","exp":%d}' % (uid.encode(), now + 300)) + "."),
        "expired": lambda: bearer(token({"sub": uid}, lifetime=-60)),
        "wrong-audience": lambda: bearer(token({"sub": uid, "aud": "another-service"})),
        "no-exp": lambda: bearer(jwt.encode({"sub": uid, "aud": "blog"}, JWT_SECRET, algorithm="HS256")),
        "not-yet-valid": lambda: bearer(token({"sub": uid, "nbf": now + 600})),
        "not-a-jwt": lambda: bearer("abc.def"),
        "numeric-sub": lambda: bearer(token({"sub": 123})),  # RFC 7519: sub is a string
        "wrong-scheme": lambda: {"Authorization": f"Basic {_b64(b'user:pass')}"},
        "alg-none-with-a-signature": lambda: bearer(
            _b64(b'{"alg":"none","typ":"JWT"}') + "." + token({"sub": uid}).split(".", 1)[1]),
        "algorithm-not-accepted": lambda: bearer(jwt.encode({"sub": uid, "aud": "blog", "exp": now + 300},
                                                            JWT_SECRET, algorithm="HS512")),
        "role-not-allowed": lambda: bearer(token({"sub": uid, "role": "postgres"})),
    }[case]()
    with server.client() as c:
        r = graphql(c, DRAFTS, headers=header)
        if case == "role-not-allowed":
            # no jwt_role_claim configured here: the claim is simply not read
            assert r.status_code == 200
            return
        assert r.status_code == 401, (case, r.text)
        assert r.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert "drafts" not in r.text


def test_identities_a_concatenated_scope_would_confuse_get_distinct_entries(server: Server) -> None:
    if not server.cache_enabled:  # type: ignore[attr-defined]
        pytest.skip("needs the cache")
    pairs = [
        # scope header + claim vs a claim that spells both
        ({"X-Tenant": "t1", **bearer(token({"sub": "u1"}))}, bearer(token({"sub": "t1|u1"}))),
        # a number and the string of its digits
        (bearer(token({"sub": "u2", "tenant": 123})), bearer(token({"sub": "u2", "tenant": "123"}))),
        # an absent claim, and the claim null
        (bearer(token({"sub": "u3"})), bearer(token({"sub": "u3", "tenant": None}))),
        # a token without the scope claims, and no token
        (bearer(token({})), {}),
    ]
    with server.client() as c:
        for left, right in pairs:
            q = DRAFTS.replace("100", str(50 + pairs.index((left, right))))  # fresh keys per pair
            assert graphql(c, q, headers=left).headers["X-Cache"] == "MISS"
            second = graphql(c, q, headers=right).headers["X-Cache"]
            assert second in ("MISS", "BYPASS"), f"{right} was served {left}'s entry"
            assert graphql(c, q, headers=left).headers["X-Cache"] == "HIT"


def test_claims_reach_every_statement_and_never_leak(server: Server, pg_cluster: EmbeddedCluster,
                                                      people: dict[str, set[str]]) -> None:
    """Two root fields (two statements) both see the claims; the next request on a
    pooled connection does not (transaction-local settings)."""
    (a, a_drafts), _ = people.items()
    q = "{ one: drafts(limit: 100) { id } two: drafts(limit: 99) { id } }"
    with server.client() as c:
        r = graphql(c, q, headers=bearer(token({"sub": a})))
        data = r.json()["data"]
        assert {d["id"] for d in data["one"]} == a_drafts == {d["id"] for d in data["two"]}
        for _ in range(10):  # anonymous requests reuse the same pooled connections
            assert graphql(c, "{ drafts(limit: 7) { id } }").json()["data"]["drafts"] == []


def test_start_refuses_private_types_without_identity(pg_cluster: EmbeddedCluster) -> None:
    srv = Server(pg_cluster.dsn, workers=1, env={"FRAISESHM_JWT_SECRET": ""}, tag="noid")
    with pytest.raises(RuntimeError, match="private types"):
        srv.start(timeout=30)
    srv.stop()


def test_claims_with_quotes_and_backslashes_reach_postgresql_intact(server: Server) -> None:
    """The claims travel as an E'' literal: no quoting can break out of it."""
    with server.client() as c:
        for sub in ["x'; SET ROLE postgres; --", "a\\'b", 'q"uote', "$$ $x$", "é\u2028"]:
            r = graphql(c, DRAFTS, headers=bearer(token({"sub": sub})))
            assert r.status_code == 200, (sub, r.text)
            assert r.json()["data"]["drafts"] == []
