"""Request coalescing across real gunicorn workers (issue 6).

Executions are counted by PostgreSQL itself: every read of v_gated_user calls
fn_test_gate(), which bumps the sequence test_gate_calls.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from fraiseshm.arena import Arena
from fraiseshm.db.embedded import EmbeddedCluster
from tests.integration.server import Server, graphql

SCHEMAS = Path(__file__).parent / "schemas"
QUERY = "query($id: ID!) { user(id: $id) { id name email } }"


@pytest.fixture(scope="module")
def gated(pg_cluster: EmbeddedCluster) -> Iterator[EmbeddedCluster]:
    pg_cluster.psql((SCHEMAS / "gated.sql").read_text())
    yield pg_cluster
    pg_cluster.psql("UPDATE tb_test_gate SET delay = 0, fail = false")


@pytest.fixture(scope="module")
def server(gated: EmbeddedCluster) -> Iterator[Server]:
    env = {"FRAISESHM_SCHEMA_SDL": str(SCHEMAS / "gated.graphql"), "FRAISESHM_COALESCE_LEASE": "5", "FRAISESHM_COALESCE_WAIT": "8"}
    with Server(gated.dsn, workers=2, env=env, tag="herd") as srv:
        yield srv


def _calls(cluster: EmbeddedCluster) -> int:
    out = cluster.psql("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM test_gate_calls").strip()
    return int(out)


def _gate(cluster: EmbeddedCluster, delay: float, fail: bool = False) -> None:
    cluster.psql(f"UPDATE tb_test_gate SET delay = {delay}, fail = {str(fail).lower()}")


def _user_id(cluster: EmbeddedCluster, offset: int) -> str:
    return cluster.psql(f"SELECT id FROM tb_user ORDER BY pk_user OFFSET {offset} LIMIT 1").strip()


def _request(server: Server, uid: str) -> httpx.Response:
    with server.client(timeout=30.0) as c:
        return graphql(c, QUERY, {"id": uid}, headers={"Connection": "close"})


def _counter_by_pid(server: Server, name: str) -> dict[int, int]:
    arena = Arena.attach(server.arena_name)
    try:
        return {p["pid"]: p["counters"][name] for p in arena.stats()["processes"]}
    finally:
        arena.close()


def _await(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")


def _running_in_postgres(cluster: EmbeddedCluster) -> int:
    return int(cluster.psql(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%v_gated_user%' AND pid <> pg_backend_pid()"
    ).strip())


def test_herd_of_cold_requests_runs_the_query_once(server: Server, gated: EmbeddedCluster) -> None:
    uid = _user_id(gated, 10)
    _gate(gated, delay=0.5)
    before = _calls(gated)
    with ThreadPoolExecutor(max_workers=40) as pool:
        responses = list(pool.map(lambda _: _request(server, uid), range(40)))
    _gate(gated, delay=0)
    assert _calls(gated) - before == 1
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    assert responses[0].json()["data"]["user"]["id"] == uid
    workers = {r.headers["X-Fraiseshm-Worker"] for r in responses}
    assert len(workers) == 2, "the herd should have reached both workers"


def test_leader_error_reaches_every_follower_once_and_is_not_cached(server: Server, gated: EmbeddedCluster) -> None:
    uid = _user_id(gated, 11)
    _gate(gated, delay=0.5, fail=True)
    before = _calls(gated)
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda _: _request(server, uid), range(20)))
    assert _calls(gated) - before == 1
    for r in responses:
        assert r.status_code == 200
        body = r.json()
        assert "failing on purpose" in body["errors"][0]["message"]
        assert not (body.get("data") or {}).get("user")
    _gate(gated, delay=0, fail=False)
    r = _request(server, uid)  # the next request tries again: nothing was cached
    assert r.status_code == 200 and r.json()["data"]["user"]["id"] == uid
    assert r.headers["X-Cache"] == "MISS"
    assert _calls(gated) - before == 2


def test_followers_take_over_from_a_sigkilled_leader(server: Server, gated: EmbeddedCluster) -> None:
    uid = _user_id(gated, 12)
    _gate(gated, delay=2.0)
    led_before = _counter_by_pid(server, "coalesce_led")
    followed_before = _counter_by_pid(server, "coalesce_followed")
    calls_before = _calls(gated)
    results: list[httpx.Response | Exception] = []
    lock = threading.Lock()

    def send() -> None:
        try:
            r = _request(server, uid)
        except httpx.TransportError as exc:  # requests that the killed worker held
            r = exc
        with lock:
            results.append(r)

    leader_thread = threading.Thread(target=send)
    leader_thread.start()
    _await(lambda: _running_in_postgres(gated) >= 1, 10, "the leader's query in PostgreSQL")
    led_now = _counter_by_pid(server, "coalesce_led")
    leaders = [pid for pid, n in led_now.items() if n > led_before.get(pid, 0)]
    assert len(leaders) == 1
    leader = leaders[0]

    followers = [threading.Thread(target=send) for _ in range(16)]
    for t in followers:
        t.start()
    survivor_followed = lambda: any(  # noqa: E731
        n > followed_before.get(pid, 0) for pid, n in _counter_by_pid(server, "coalesce_followed").items() if pid != leader
    )
    _await(survivor_followed, 10, "a follower waiting in another worker")
    started = time.monotonic()
    os.kill(leader, signal.SIGKILL)
    for t in [leader_thread, *followers]:
        t.join(timeout=15)
        assert not t.is_alive(), "a request hung after its leader was killed"
    _gate(gated, delay=0)
    elapsed = time.monotonic() - started

    ok = [r for r in results if isinstance(r, httpx.Response) and r.status_code == 200]
    assert ok, f"no follower finished: {results}"
    for r in ok:
        assert r.json()["data"]["user"]["id"] == uid
        assert r.headers["X-Fraiseshm-Worker"] != str(leader)
    # the dead leader's execution plus exactly one takeover
    assert _calls(gated) - calls_before == 2
    assert elapsed < 5.0 + 2.0 + 1.0  # within lease + query time, nobody waited for the full timeout
    server.wait_all_workers()  # gunicorn replaced the killed worker
