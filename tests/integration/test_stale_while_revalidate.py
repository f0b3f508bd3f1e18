"""Stale-while-revalidate (issue 6): a TTL-expired entry is served at once while one
leader refreshes it; an entry invalidated by a mutation is never served stale."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fraiseshm.db.embedded import EmbeddedCluster
from tests.integration.server import Server, graphql

SCHEMAS = Path(__file__).parent / "schemas"
POST = "query($id: ID!) { post(id: $id) { id title } }"
RETITLE = 'mutation($id: ID!, $t: String) { updatePost(input: {id: $id, title: $t}) { success } }'


@pytest.fixture(scope="module")
def swr_server(pg_dsn: str) -> Iterator[Server]:
    # No listener: its NOTIFY would hide a mutation that forgot to invalidate.
    env = {"FRAISESHM_SCHEMA_SDL": str(SCHEMAS / "scoped.graphql"), "FRAISESHM_STALE_WHILE_REVALIDATE": "true",
           "FRAISESHM_LISTEN_CHANGES": "false"}
    with Server(pg_dsn, workers=2, env=env, tag="swr") as srv:
        yield srv


def _posts(cluster: EmbeddedCluster, offset: int, n: int) -> list[str]:
    return cluster.psql(f"SELECT id FROM tb_post ORDER BY pk_post OFFSET {offset} LIMIT {n}").split()


def test_expired_entry_is_served_stale_then_refreshed(swr_server: Server, pg_cluster: EmbeddedCluster) -> None:
    (pid,) = _posts(pg_cluster, 40, 1)
    with swr_server.client() as c:
        t0 = time.monotonic()
        first = graphql(c, POST, {"id": pid})
        assert first.headers["X-Cache"] == "MISS"
        while (r := graphql(c, POST, {"id": pid})).headers["X-Cache"] == "HIT":
            assert time.monotonic() - t0 < 5.0, "entry outlived its 1 s TTL"
        assert r.headers["X-Cache"] == "STALE" and r.content == first.content
        assert time.monotonic() - t0 >= 1.0
        # the background refresh lands: HIT again, with a fresh TTL
        deadline = time.monotonic() + 5.0
        while (r := graphql(c, POST, {"id": pid})).headers["X-Cache"] != "HIT":
            assert r.headers["X-Cache"] == "STALE" and time.monotonic() < deadline, r.headers
        assert r.content == first.content


def test_invalidated_entry_is_never_served_stale(swr_server: Server, pg_cluster: EmbeddedCluster) -> None:
    target, probe = _posts(pg_cluster, 41, 2)
    with swr_server.client() as c:
        graphql(c, POST, {"id": target})
        graphql(c, POST, {"id": probe})
        t0 = time.monotonic()
        # the probe was filled after the target: once it is stale, so is the target
        while graphql(c, POST, {"id": probe}).headers["X-Cache"] != "STALE":
            assert time.monotonic() - t0 < 5.0
        assert graphql(c, RETITLE, {"id": target, "t": "retitled"}).json()["data"]["updatePost"]["success"]
        r = graphql(c, POST, {"id": target})
        assert r.headers["X-Cache"] == "MISS"
        assert r.json()["data"]["post"]["title"] == "retitled"
