"""Writes from anywhere: a plain UPDATE (psql, another app) invalidates the cached read.

Real PostgreSQL, real gunicorn. Latency = from the UPDATE's COMMIT returning to
the first read that shows the new value (reads are sent back to back: each
one is an observable check, nothing sleeps). One listener per host: the
worker holding it is found in pg_stat_activity (application_name), SIGKILLed,
and another worker takes over.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from fraiseshm.db.embedded import EmbeddedCluster
from tests.integration.server import USER_QUERY, Server, graphql

ROUNDS = 200


@pytest.fixture(scope="module")
def server(pg_dsn: str) -> Iterator[Server]:
    with Server(pg_dsn, workers=2, tag="listen") as srv:
        yield srv


def _user_ids(cluster: EmbeddedCluster, n: int) -> list[str]:
    return cluster.psql(f"SELECT id FROM tb_user ORDER BY pk_user LIMIT {n}").split()


def _read(http: httpx.Client, user_id: str) -> tuple[str, str]:
    r = graphql(http, USER_QUERY, {"id": user_id})
    assert r.status_code == 200, r.text
    return r.json()["data"]["user"]["name"], r.headers.get("X-Cache", "")


def _cache(http: httpx.Client, user_id: str, deadline: float = 5.0) -> str:
    """Until a read of user_id is a HIT; returns the cached name."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        name, state = _read(http, user_id)
        if state == "HIT":
            return name
    raise AssertionError(f"user {user_id} never became a cache hit")


def _await_name(http: httpx.Client, user_id: str, name: str, deadline: float = 5.0) -> float:
    """Seconds until a read shows name (reads back to back, each a check)."""
    start = time.perf_counter()
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if _read(http, user_id)[0] == name:
            return time.perf_counter() - start
    raise AssertionError(f"user {user_id} still not {name!r} after {deadline}s: the change was not heard")


async def _listeners(dsn: str, arena: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE $1",
            f"fraiseshm-listener {arena} %",
        )
    finally:
        await conn.close()
    return [int(r[0].rsplit(" ", 1)[1]) for r in rows]


async def _await_listener(dsn: str, arena: str, exclude: set[int], deadline: float = 15.0) -> int:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        pids = [p for p in await _listeners(dsn, arena) if p not in exclude]
        if pids:
            assert len(pids) == 1, f"several listeners on one host: {pids}"
            return pids[0]
    raise AssertionError(f"no listener for {arena} within {deadline}s")


def test_plain_update_invalidates_within_100ms(server: Server, reset_db: EmbeddedCluster, pg_dsn: str) -> None:
    user_id = _user_ids(reset_db, 1)[0]
    latencies: list[float] = []

    async def run() -> None:
        conn = await asyncpg.connect(pg_dsn)  # a client that is not fraiseshm
        try:
            with server.client() as http:
                for i in range(ROUNDS):
                    _cache(http, user_id)
                    name = f"plain sql {i}"
                    await conn.execute("UPDATE tb_user SET name = $1 WHERE id = $2", name, user_id)  # autocommit
                    latencies.append(_await_name(http, user_id, name))
        finally:
            await conn.close()

    asyncio.run(run())
    # And once through psql itself.
    with server.client() as http:
        _cache(http, user_id)
        reset_db.psql(f"UPDATE tb_user SET name = 'from psql' WHERE id = '{user_id}'")
        latencies.append(_await_name(http, user_id, "from psql"))
    ms = sorted(x * 1000 for x in latencies)
    p50, p99 = statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"\nlistener latency over {len(ms)} plain UPDATEs: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {ms[-1]:.2f} ms")
    assert p99 < 100, f"p99 {p99:.1f} ms >= 100 ms"


def test_one_listener_per_host_and_takeover_after_sigkill(server: Server, reset_db: EmbeddedCluster, pg_dsn: str) -> None:
    holder = asyncio.run(_await_listener(pg_dsn, server.arena_name, set()))
    assert asyncio.run(_listeners(pg_dsn, server.arena_name)) == [holder]
    assert holder in server.worker_pids()
    os.kill(holder, signal.SIGKILL)
    successor = asyncio.run(_await_listener(pg_dsn, server.arena_name, {holder}))
    assert successor != holder
    server.wait_all_workers()
    user_id = _user_ids(reset_db, 2)[1]
    with server.client() as http:
        _cache(http, user_id)
        reset_db.psql(f"UPDATE tb_user SET name = 'after takeover' WHERE id = '{user_id}'")
        _await_name(http, user_id, "after takeover")


def test_listener_reconnects_after_postgres_restart(server: Server, reset_db: EmbeddedCluster, pg_dsn: str) -> None:
    user_id = _user_ids(reset_db, 3)[2]
    holder = asyncio.run(_await_listener(pg_dsn, server.arena_name, set()))
    reset_db.stop()
    reset_db.start()
    assert reset_db.dsn == pg_dsn
    again = asyncio.run(_await_listener(pg_dsn, server.arena_name, set()))
    assert again == holder  # same worker, new connection
    with server.client() as http:
        end = time.monotonic() + 15
        while True:  # the request pools reconnect too (503 until then)
            r = graphql(http, USER_QUERY, {"id": user_id})
            if r.status_code == 200:
                break
            assert time.monotonic() < end, r.text
        _cache(http, user_id)
        reset_db.psql(f"UPDATE tb_user SET name = 'after restart' WHERE id = '{user_id}'")
        _await_name(http, user_id, "after restart")


def test_the_next_listener_flushes_what_nobody_heard(server: Server, reset_db: EmbeddedCluster, pg_dsn: str) -> None:
    """A plain write while the listener is stopped is never heard (its NOTIFY goes to
    the stopped holder's connection). Its successor must flush the arena after LISTEN,
    before it hears anything; so once it has heard a later write, the earlier one shows."""
    unheard_id, heard_id = _user_ids(reset_db, 5)[3:5]
    holder = asyncio.run(_await_listener(pg_dsn, server.arena_name, set()))
    with server.client() as http:
        _cache(http, unheard_id)
        _cache(http, heard_id)
    os.kill(holder, signal.SIGSTOP)
    try:
        reset_db.psql(f"UPDATE tb_user SET name = 'while nobody listened' WHERE id = '{unheard_id}'")
    finally:
        os.kill(holder, signal.SIGKILL)
    asyncio.run(_await_listener(pg_dsn, server.arena_name, {holder}))
    reset_db.psql(f"UPDATE tb_user SET name = 'heard' WHERE id = '{heard_id}'")
    with server.client() as http:
        _await_name(http, heard_id, "heard")  # the successor listens: its flush came before this
        name, state = _read(http, unheard_id)
    assert name == "while nobody listened", f"stale read ({state}) of a write sent while nobody listened"
    server.wait_all_workers()
