"""Read replicas: a real streaming replica (pg_basebackup -R) that applies every commit
500 ms late, real gunicorn; misses read the replica, and no read is ever older than a
change acknowledged before it started (docs/ARCHITECTURE.md, "Read replicas").

The coherency run here is short (FRAISESHM_REPLICA_READS, default 2,000 checked
reads); scripts/coherency.py --replica runs the 20,000 of the issue.
faults/replica_lsn_check_skipped.patch removes the replay check: then
test_coherent_with_a_lagging_replica counts stale reads (it bites).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fraiseshm.db.embedded import EmbeddedCluster
from fraiseshm.db.replicas import LsnBoard
from tests.coherency.stack import EXAMPLES, VARIANTS, run_variant
from tests.conftest import BLOG_SQL, PRIVATE_SQL
from tests.integration.server import Server, graphql
from tests.replica_harness import StreamingReplica

READS = int(os.environ.get("FRAISESHM_REPLICA_READS", "2000"))
DELAY_MS = 500

pytestmark = pytest.mark.slow

USER = "query($id: ID!) { user(id: $id) { id name } }"
UPDATE = "mutation($id: ID!, $name: String!) { updateUser(input: {id: $id, name: $name}) { success } }"


@pytest.fixture(scope="module")
def primary() -> Iterator[EmbeddedCluster]:
    directory = Path(tempfile.mkdtemp(prefix="fraiseshm-primary-"))
    cluster = EmbeddedCluster(directory, fast=True)
    try:
        cluster.ensure([BLOG_SQL, PRIVATE_SQL], seed_users=0)
        cluster.psql("SELECT fn_seed(16)")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def replica(primary: EmbeddedCluster) -> Iterator[StreamingReplica]:
    r = StreamingReplica(primary, DELAY_MS).create()
    try:
        yield r
    finally:
        r.destroy()


def replica_env(replica: StreamingReplica, **more: str) -> dict[str, str]:
    return {"FRAISESHM_REPLICA_DSNS": replica.dsn, "FRAISESHM_REPLICA_CHECK_INTERVAL": "0.2",
            "FRAISESHM_REPLICA_MAX_LAG": "3", **more}


def totals(server: Server) -> dict[str, int]:
    board = LsnBoard.attach(server.arena_name)
    try:
        return board.totals()
    finally:
        board.close()


def share(t: dict[str, int]) -> float:
    return t["replica"] / max(1, t["replica"] + t["primary"])


def test_coherent_with_a_lagging_replica(primary: EmbeddedCluster, replica: StreamingReplica) -> None:
    """Mutations and plain SQL writes, reads checked against every write acknowledged
    before they started: 0 stale, and the replica served part of the misses."""
    seen: dict[str, int] = {}
    report = run_variant(EXAMPLES["blog"], primary.dsn, VARIANTS["listener"], reads=READS, grace=0.5,
                         env=replica_env(replica), after=lambda server: seen.update(totals(server)))
    print(report.line(), seen, f"replica share of misses {share(seen):.1%}")
    assert report.reads >= READS and report.writes["mutation"] > 0 and report.writes["sql"] > 0
    assert (report.stale, report.wrong, report.errors) == (0, 0, 0), "\n".join([report.line(), *report.examples])
    assert seen["replica"] > 0, seen  # the replica did serve misses
    assert seen["behind"] > 0, seen  # ... and was found behind, 500 ms late: the check ran


def test_read_your_writes(primary: EmbeddedCluster, replica: StreamingReplica) -> None:
    """The mutating client's next read shows its write, though the replica is 500 ms behind.
    Listener off: the mutation's own commit position is what protects the read."""
    user_id = primary.psql("SELECT id FROM tb_user ORDER BY id LIMIT 1").strip()
    env = replica_env(replica, FRAISESHM_LISTEN_CHANGES="false")
    with Server(primary.dsn, workers=2, env=env, tag="ryw") as server, server.client() as c:
        assert graphql(c, USER, {"id": user_id}).status_code == 200  # cached, from the replica or not
        for i in range(20):
            name = f"ryw-{i}-{time.monotonic_ns()}"
            r = graphql(c, UPDATE, {"id": user_id, "name": name})
            assert r.status_code == 200 and r.json()["data"]["updateUser"]["success"], r.text
            got = graphql(c, USER, {"id": user_id})
            assert got.json()["data"]["user"]["name"] == name, (i, got.text)
        t = totals(server)
        assert t["behind"] >= 1, t  # the replica was asked and found behind: the primary answered


def test_misses_read_the_replica_when_nothing_changes(primary: EmbeddedCluster, replica: StreamingReplica) -> None:
    ids = primary.psql("SELECT id FROM tb_user ORDER BY id").split()
    with Server(primary.dsn, workers=2, env=replica_env(replica), tag="rmiss") as server, server.client() as c:
        _wait_replica_up(c)
        _wait_replayed(primary, replica)  # past the server's start-up flush position
        for uid in ids:
            assert graphql(c, USER, {"id": uid}).status_code == 200
        t = totals(server)
        assert t["replica"] >= len(ids) - 2, t
        health = c.get("/health").json()
        rep = health["figures"]["replicas"]
        assert rep["replicas"][0]["state"] == "up" and rep["replicas"][0]["lag_seconds"] is not None, rep


def _wait_replayed(primary: EmbeddedCluster, replica: StreamingReplica, timeout: float = 10.0) -> None:
    target = primary.psql("SELECT pg_current_wal_lsn()").strip()  # written WAL: a position replay reaches
    deadline = time.monotonic() + timeout
    while replica.cluster.psql(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn").strip() != "t":
        assert time.monotonic() < deadline, f"replica did not replay {target} in {timeout}s"
        time.sleep(0.05)  # polling replay progress, bounded by the deadline


def _wait_replica_up(c: httpx.Client, timeout: float = 10.0, want: str = "up") -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rep = c.get("/health").json()["figures"]["replicas"]["replicas"][0]
        if rep["state"] == want or time.monotonic() > deadline:
            return rep
        time.sleep(0.05)  # polling /health for a state change, bounded by the deadline


def test_replica_stopped_and_started_under_load(primary: EmbeddedCluster, replica: StreamingReplica) -> None:
    """Readers keep going while the replica stops and starts: no 5xx beyond the requests
    in flight when it went down, reads move to the primary and come back without a restart."""
    ids = primary.psql("SELECT id FROM tb_user ORDER BY id").split()
    env = replica_env(replica, FRAISESHM_CACHE_ENABLED="true")
    with Server(primary.dsn, workers=2, env=env, tag="rdown") as server:
        statuses: list[int] = []
        stop = threading.Event()

        def reader(k: int) -> None:
            with httpx.Client(base_url=server.url, timeout=10) as c:
                i = k
                while not stop.is_set():
                    i += 1
                    # a new alias, a new key: every read is a miss
                    query = f"query($id: ID!) {{ u{k}x{i}: user(id: $id) {{ id name }} }}"
                    r = c.post("/graphql", json={"query": query, "variables": {"id": ids[i % len(ids)]}})
                    statuses.append(r.status_code)

        with server.client() as c:
            _wait_replica_up(c)
            threads = [threading.Thread(target=reader, args=(k * 100000,)) for k in range(4)]
            for t in threads:
                t.start()
            try:
                time.sleep(1.0)  # load before the stop
                before = totals(server)
                stop_sent = time.monotonic()
                replica.stop()
                down = _wait_replica_up(c, want="down")
                stopped_at = time.monotonic()
                time.sleep(1.0)  # load while it is down
                during = totals(server)
                restarted = time.monotonic()
                replica.start()  # returns once the replica accepts connections
                started = time.monotonic() - restarted
                up = _wait_replica_up(c, timeout=30)
                recovered = time.monotonic() - restarted
                time.sleep(1.5)  # load after it is back (past the apply delay)
                after = totals(server)
            finally:
                stop.set()
                for t in threads:
                    t.join()
        print(f"down: {down['state']} (seen {stopped_at - stop_sent:.2f}s after pg_ctl stop); back: {up['state']} "
              f"{recovered:.2f}s after pg_ctl start (which took {started:.2f}s); "
              f"statuses {sorted(set(statuses))}, {len(statuses)} reads; before {before} during {during} after {after}")
        assert down["state"] == "down" and up["state"] == "up"
        bad = [s for s in statuses if s >= 500]
        assert len(bad) <= 4, bad  # at most the requests in flight at the stop (4 readers, one each)
        assert during["primary"] > before["primary"]  # reads moved to the primary
        assert after["replica"] > during["replica"]  # ... and came back to the replica


def test_a_miss_behind_waits_for_replay_within_the_bound(primary: EmbeddedCluster, replica: StreamingReplica) -> None:
    """replica_wait: the read after a mutation waits for the 500 ms replay and is then
    served by the replica (the commit's position is one the replica reaches)."""
    user_id = primary.psql("SELECT id FROM tb_user ORDER BY id LIMIT 1 OFFSET 1").strip()
    env = replica_env(replica, FRAISESHM_LISTEN_CHANGES="false", FRAISESHM_REPLICA_WAIT="3")
    with Server(primary.dsn, workers=1, env=env, tag="rwait") as server, server.client() as c:
        _wait_replica_up(c)
        for i in range(3):
            name = f"wait-{i}-{time.monotonic_ns()}"
            assert graphql(c, UPDATE, {"id": user_id, "name": name}).json()["data"]["updateUser"]["success"]
            t0 = time.monotonic()
            assert graphql(c, USER, {"id": user_id}).json()["data"]["user"]["name"] == name
            waited = time.monotonic() - t0
            assert waited < 3, waited
        t = totals(server)
        assert t["waited"] == 3 and t["behind"] == 3, t


def test_a_promoted_replica_leaves_rotation(primary: EmbeddedCluster) -> None:
    """A replica promoted to a primary of its own (diverging data) is never read again."""
    r = StreamingReplica(primary, 0).create()
    try:
        ids = primary.psql("SELECT id FROM tb_user ORDER BY id").split()
        with Server(primary.dsn, workers=1, env=replica_env(r), tag="rprom") as server, server.client() as c:
            assert _wait_replica_up(c)["state"] == "up"
            r.promote()
            assert _wait_replica_up(c, want="promoted")["state"] == "promoted"
            before = totals(server)
            for uid in ids[:5]:
                assert graphql(c, USER, {"id": uid}).status_code == 200
            after = totals(server)
            assert after["replica"] == before["replica"] and after["primary"] == before["primary"] + 5
            health = c.get("/health").json()
            assert health["status"] == "degraded" and any("no read replica" in x for x in health["reasons"]), health
    finally:
        r.destroy()


def test_a_replica_lagging_past_the_bound_leaves_rotation_and_comes_back(primary: EmbeddedCluster,
                                                                         replica: StreamingReplica) -> None:
    """Writes keep the 500 ms-late replica ~0.5 s behind: past replica_max_lag = 0.25 s
    it is out of rotation (misses read the primary); writes stop, it catches up, it is back."""
    uid = primary.psql("SELECT id FROM tb_user ORDER BY id LIMIT 1 OFFSET 2").strip()
    env = replica_env(replica, FRAISESHM_REPLICA_MAX_LAG="0.25")
    with Server(primary.dsn, workers=1, env=env, tag="rlag") as server, server.client() as c:
        assert _wait_replica_up(c)["state"] == "up"
        stop = threading.Event()

        def writer() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                primary.psql(f"UPDATE tb_user SET name = 'lag {n}' WHERE id = '{uid}'")

        t = threading.Thread(target=writer)
        t.start()
        try:
            lagging = _wait_replica_up(c, timeout=15, want="lagging")
        finally:
            stop.set()
            t.join()
        assert lagging["state"] == "lagging" and lagging["lag_seconds"] > 0.25, lagging
        before = totals(server)
        for i in range(3):
            assert graphql(c, f"query($id: ID!) {{ l{i}: user(id: $id) {{ id }} }}", {"id": uid}).status_code == 200
        assert totals(server)["replica"] == before["replica"]  # none read on the lagging replica
        assert _wait_replica_up(c, timeout=15)["state"] == "up"  # caught up: back in rotation
