"""PostgreSQL goes down under a running service and comes back (issue 3).

The service answers 503 with a GraphQL error while the database is down,
keeps serving what needs no database (cached keys), and recovers by itself,
without a restart, when PostgreSQL is back. Every check is made on fresh
connections until each worker has answered it. Uses its own cluster: it stops it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import httpx

from fraiseshm.db.embedded import EmbeddedCluster
from tests.integration.server import Server, graphql

CACHED = "{ users(limit: 3) { id name } }"
UNCACHED = "{ users(limit: 2) { id } }"  # never asked before the outage


def _on_every_worker(srv: Server, check: Callable[[httpx.Client], httpx.Response | None], what: str,
                     timeout: float = 30.0) -> None:
    """Fresh connections until every worker has answered check() (which asserts its
    reply; None: ask again, this worker is not there yet)."""
    workers = {str(p) for p in srv.worker_pids()}
    answered: set[str] = set()
    deadline = time.monotonic() + timeout
    while answered != workers:
        assert time.monotonic() < deadline, f"{what}: only workers {answered} of {workers} answered"
        with srv.client(headers={"Connection": "close"}) as client:
            r = check(client)
        if r is not None:
            answered.add(r.headers["X-Fraiseshm-Worker"])


def _unavailable(r: httpx.Response) -> httpx.Response:
    assert r.status_code == 503, r.text
    body = r.json()
    assert "data" not in body
    assert body["errors"][0]["extensions"]["code"] == "DATABASE_UNAVAILABLE"
    return r


def test_database_down_then_back(own_cluster: EmbeddedCluster) -> None:
    with Server(own_cluster.dsn, workers=2, tag="outage") as srv:
        with srv.client() as client:
            filled = graphql(client, CACHED)
            assert filled.status_code == 200 and len(filled.json()["data"]["users"]) == 3

        def cached_hit(c: httpx.Client) -> httpx.Response:
            r = graphql(c, CACHED)
            assert r.status_code == 200 and r.headers["X-Cache"] == "HIT", r.text
            assert r.content == filled.content
            return r

        _on_every_worker(srv, cached_hit, "cached key before the outage")
        own_cluster.stop()
        try:
            _on_every_worker(srv, cached_hit, "cached key while PostgreSQL is down")
            _on_every_worker(srv, lambda c: _unavailable(graphql(c, UNCACHED)), "uncached key while down")
            # A client's no-cache is not honoured by default (FRAISESHM_HONOUR_NO_CACHE): the cached
            # key is still served while the database is down.
            def cached_hit_despite_no_cache(c: httpx.Client) -> httpx.Response:
                r = graphql(c, CACHED, headers={"Cache-Control": "no-cache"})
                assert r.status_code == 200 and r.headers["X-Cache"] == "HIT", r.text
                return r

            _on_every_worker(srv, cached_hit_despite_no_cache, "cached key with a client's no-cache while down")

            def failing(c: httpx.Client) -> httpx.Response:
                r = c.get("/health")
                assert r.status_code == 503 and r.json()["status"] == "failing", r.text
                return r

            _on_every_worker(srv, failing, "/health while down")
        finally:
            own_cluster.start()

        fresh_keys = itertools.count()

        def recovered(c: httpx.Client) -> httpx.Response | None:
            # A key never asked before, every time: a worker answers it only through its own
            # pool (another worker's fill would be a HIT, and a client's no-cache is not honoured).
            r = graphql(c, "query($o: Int!) { users(limit: 1, offset: $o) { id } }", {"o": next(fresh_keys)})
            if r.status_code == 503:  # the pool reconnects on demand: ask again
                return None
            assert r.status_code == 200 and r.headers["X-Cache"] == "MISS" and "errors" not in r.json(), r.text
            return r

        _on_every_worker(srv, recovered, "recovery after PostgreSQL restarted")
        _on_every_worker(srv, lambda c: _ok(c.get("/health")), "/health after the restart")


def _ok(r: httpx.Response) -> httpx.Response:
    assert r.status_code == 200, r.text
    return r
