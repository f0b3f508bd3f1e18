"""PostgreSQL goes down under a running service and comes back (issue 3).

The service answers 503 with a GraphQL error while the database is down,
keeps serving what needs no database, and recovers by itself, without a
restart, when PostgreSQL is back. Uses its own cluster: it stops it.
"""

from __future__ import annotations

import time

from fraiseshm.db.embedded import EmbeddedCluster
from tests.integration.server import Server, graphql


def _wait_for_status(client, query: str, status: int, timeout: float = 20.0):  # noqa: ANN001, ANN202
    """Retry until the service answers `status` (the pool reconnects on demand)."""
    deadline = time.monotonic() + timeout
    while True:
        r = graphql(client, query, headers={"Cache-Control": "no-cache"})
        if r.status_code == status or time.monotonic() > deadline:
            return r


def test_database_down_then_back(own_cluster: EmbeddedCluster) -> None:
    query = "{ users(limit: 3) { id name } }"
    with Server(own_cluster.dsn, workers=2, tag="outage") as srv, srv.client() as client:
        r = graphql(client, query)
        assert r.status_code == 200 and len(r.json()["data"]["users"]) == 3

        own_cluster.stop()
        for _ in range(4):  # both workers, uncached and cached keys alike
            r = graphql(client, "{ users(limit: 2) { id } }", headers={"Cache-Control": "no-cache"})
            assert r.status_code == 503, r.text
            body = r.json()
            assert "data" not in body
            assert body["errors"][0]["extensions"]["code"] == "DATABASE_UNAVAILABLE"
        r = client.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "failing"

        own_cluster.start()
        r = _wait_for_status(client, "{ users(limit: 2) { id } }", 200)
        assert r.status_code == 200, r.text
        assert len(r.json()["data"]["users"]) == 2
        assert client.get("/health").status_code == 200
