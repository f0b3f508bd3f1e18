"""Clients cannot bypass or pollute the cache, each coalesced follower gets its own
reply, and a request's deadline cancels its database work (issue 13).

Executions are counted by PostgreSQL (tests/integration/schemas/gated.sql: every
read of v_gated_user bumps a sequence and waits while a test holds advisory
lock 7001), so no timing decides who leads or follows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from fraiseshm.db.embedded import EmbeddedCluster
from tests.integration.server import Server, graphql
from tests.integration.test_coalescing import (  # noqa: F401 - gated is a fixture
    ClosedGate, _await, _calls, _counter_by_pid, _running_in_postgres, _user_id, gated)

SCHEMAS = Path(__file__).parent / "schemas"
QUERY = "query($id: ID!) { user(id: $id) { id name email } }"
GRAPHQL_RESPONSE = "application/graphql-response+json"


@pytest.fixture(scope="module")
def server(gated: EmbeddedCluster) -> Iterator[Server]:
    """One worker (every follower is a same-process follower), client no-cache honoured."""
    env = {"FRAISESHM_SCHEMA_SDL": str(SCHEMAS / "gated.graphql"), "FRAISESHM_HONOUR_NO_CACHE": "true"}
    with Server(gated.dsn, workers=1, env=env, tag="bounds") as srv:
        yield srv


@pytest.fixture(scope="module")
def hurried(gated: EmbeddedCluster) -> Iterator[Server]:
    """A 1.5 s request deadline."""
    env = {"FRAISESHM_SCHEMA_SDL": str(SCHEMAS / "gated.graphql"), "FRAISESHM_REQUEST_TIMEOUT": "1.5",
           "FRAISESHM_STATEMENT_TIMEOUT_MS": "1500"}
    with Server(gated.dsn, workers=1, env=env, tag="deadline") as srv:
        yield srv


def _followed(server: Server) -> int:
    return sum(_counter_by_pid(server, "coalesce_followed").values())


def _send(server: Server, uid: str, headers: dict[str, str]) -> httpx.Response:
    with server.client(timeout=30.0) as c:
        return graphql(c, QUERY, {"id": uid}, headers={"Connection": "close", **headers})


def _herd(server: Server, gated: EmbeddedCluster, uid: str, headers: list[dict[str, str]]) -> list[httpx.Response]:
    before = _followed(server)
    gate = ClosedGate(gated.dsn)
    try:
        with ThreadPoolExecutor(max_workers=len(headers)) as pool:
            futures = [pool.submit(_send, server, uid, h) for h in headers]
            _await(lambda: _followed(server) - before >= len(headers) - 1, 20, "the followers")
            assert _running_in_postgres(gated) == 1
            gate.open()
            return [f.result() for f in futures]
    finally:
        gate.open()


def test_client_no_cache_revalidates_once_however_many_ask(server: Server, gated: EmbeddedCluster) -> None:
    uid = _user_id(gated, 20)
    with server.client() as c:
        assert graphql(c, QUERY, {"id": uid}).headers["X-Cache"] == "MISS"
    before = _calls(gated)
    responses = _herd(server, gated, uid, [{"Cache-Control": "no-cache"}] * 20)
    assert _calls(gated) - before == 1, "20 no-cache requests must revalidate with one execution"
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1


def test_each_coalesced_follower_gets_a_reply_made_for_it(server: Server, gated: EmbeddedCluster) -> None:
    uid = _user_id(gated, 21)
    with server.client() as c:
        etag = graphql(c, QUERY, {"id": uid}).headers["ETag"]
    asks = [
        {"Cache-Control": "no-cache"},
        {"Cache-Control": "no-cache", "Accept": GRAPHQL_RESPONSE},
        {"Cache-Control": "no-cache", "If-None-Match": etag},
        {"Cache-Control": "no-cache", "Accept": GRAPHQL_RESPONSE, "If-None-Match": '"0000000000000000"'},
    ]
    for reverse in (False, True):  # the leader is whichever arrives first
        before = _calls(gated)
        responses = _herd(server, gated, uid, asks[::-1] if reverse else asks)
        plain, typed, revalidated, other = responses[::-1] if reverse else responses
        assert _calls(gated) - before == 1
        assert plain.status_code == 200 and plain.headers["Content-Type"].startswith("application/json")
        assert typed.status_code == 200 and typed.headers["Content-Type"].startswith(GRAPHQL_RESPONSE)
        assert revalidated.status_code == 304 and revalidated.content == b""
        assert other.status_code == 200 and other.headers["Content-Type"].startswith(GRAPHQL_RESPONSE)
        assert plain.content == typed.content == other.content


def test_deadline_cancels_the_database_work(hurried: Server, gated: EmbeddedCluster) -> None:
    server = hurried
    uid = _user_id(gated, 22)
    gate = ClosedGate(gated.dsn)  # the query waits on the gate until cancelled
    try:
        started = time.monotonic()
        r = _send(server, uid, {})
        elapsed = time.monotonic() - started
        assert r.status_code == 504, r.text
        assert r.json()["errors"][0]["extensions"]["code"] == "REQUEST_TIMEOUT"
        assert 1.4 <= elapsed < 4.0
        _await(lambda: _running_in_postgres(gated) == 0, 5, "PostgreSQL to drop the cancelled statement")
    finally:
        gate.open()
    with server.client() as c:  # the worker serves on, the key was never poisoned
        assert graphql(c, QUERY, {"id": uid}).json()["data"]["user"]["id"] == uid
