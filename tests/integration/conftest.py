from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.server import Server


@pytest.fixture(scope="module")
def server(pg_dsn: str) -> Iterator[Server]:
    """Two real gunicorn workers on the session's PostgreSQL, cache on."""
    with Server(pg_dsn, workers=2, tag="it") as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server: Server):
    with server.client() as client:
        yield client
