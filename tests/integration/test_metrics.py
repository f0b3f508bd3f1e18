"""Figures over real gunicorn workers, real PostgreSQL, real shared memory (issue 8).

- after a known sequence of requests spread over several workers, /metrics,
  `fraiseshm stats --json` (the console script, as a subprocess) and the
  per-worker figures agree exactly with what was sent, worker by worker;
- a SIGKILLed worker's counts survive gunicorn reaping it (totals monotonic);
- /health turns degraded on a forced low hit rate and back to ok on hits,
  failing on a database outage and back to ok.

Uses its own PostgreSQL cluster: the outage test stops it, and the counts
must not see mutations from other tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter as Tally
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fraiseshm.arena import Arena
from fraiseshm.db.embedded import EmbeddedCluster
from tests.integration.server import USER_QUERY, Server, graphql

CLI = Path(sys.executable).with_name("fraiseshm")
UPDATE_USER = "mutation($id: ID!, $name: String) { updateUser(input: {id: $id, name: $name}) { success } }"
FIGURES = ("requests", "hits", "misses", "bypasses", "db_executions", "mutations", "errors")
T = TypeVar("T")


def user_ids(cluster: EmbeddedCluster, n: int) -> list[str]:
    return cluster.psql(f"SELECT id FROM tb_user ORDER BY pk_user LIMIT {n}").split()


def await_condition(probe: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    """Poll an observable condition until it holds, or fail naming it after the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")


def metrics(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):  # raises on anything malformed
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def cli(*args: str, arena: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), "--arena", arena, *args], capture_output=True, text=True, timeout=60)


def cli_stats(arena: str) -> dict[str, Any]:
    r = cli("stats", "--json", arena=arena)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def raw_stats(arena_name: str) -> dict[str, Any]:
    """Arena.stats() as stored: dead-but-unreaped slots still listed."""
    with Arena.attach(arena_name) as arena:
        return arena.stats()


class Traffic:
    """Sends requests on fresh connections (so they spread over workers) and tallies, per worker,
    what each response says happened: the expected counters."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.expected: dict[str, Tally[str]] = {}

    def send(self, query: str, variables: dict[str, Any] | None = None, *, no_cache: bool = False) -> httpx.Response:
        headers = {"Connection": "close"}
        if no_cache:
            headers["Cache-Control"] = "no-cache"
        r = graphql(self.client, query, variables, headers=headers)
        assert r.status_code == 200 and "errors" not in r.json(), r.text
        tally = self.expected.setdefault(r.headers["X-Fraiseshm-Worker"], Tally(dict.fromkeys(FIGURES, 0)))
        tally["requests"] += 1
        outcome = r.headers["X-Cache"]
        if query.startswith("mutation"):
            assert outcome == "BYPASS"
            tally["mutations"] += 1
        elif outcome == "HIT":
            tally["hits"] += 1
        elif outcome == "MISS":  # sequential requests: always the flight's leader, one execution
            tally["misses"] += 1
            tally["db_executions"] += 1
        else:
            assert outcome == "BYPASS"
            tally["bypasses"] += 1
            tally["db_executions"] += 1
        return r

    def total(self, figure: str) -> int:
        return sum(t[figure] for t in self.expected.values())


def test_metrics_cli_and_workers_agree_exactly(own_cluster: EmbeddedCluster) -> None:
    ids = user_ids(own_cluster, 6)
    with Server(own_cluster.dsn, workers=3, tag="metrics") as srv, srv.client() as client:
        traffic = Traffic(client)
        workers = {str(p) for p in srv.worker_pids()}
        rounds = 0
        # The known sequence, repeated until every worker has answered some of it.
        while set(traffic.expected) != workers or rounds < 3:
            for uid in ids:
                traffic.send(USER_QUERY, {"id": uid})  # first time a miss, then hits
            traffic.send(USER_QUERY, {"id": ids[0]}, no_cache=True)
            traffic.send("{ users(limit: 4) { id name } }")
            traffic.send(UPDATE_USER, {"id": ids[5], "name": f"metrics {rounds}"})
            rounds += 1
            assert rounds < 200, f"workers {workers - set(traffic.expected)} never answered"

        m = metrics(client)
        cli_figures = cli_stats(srv.arena_name)
        per_cli = {str(p["pid"]): p["counters"] for p in cli_figures["processes"]}
        assert set(per_cli) == workers  # every live worker, nothing else
        for pid, tally in traffic.expected.items():
            for figure in FIGURES:
                assert per_cli[pid][figure] == tally[figure], (pid, figure)
                assert m[(f"fraiseshm_worker_{figure}_total", (("worker", pid),))] == tally[figure], (pid, figure)
            # one latency observation per database execution
            assert m[("fraiseshm_worker_db_execution_seconds_count", (("worker", pid),))] == tally["db_executions"]
        for figure in FIGURES:
            assert cli_figures["totals"][figure] == traffic.total(figure), figure
            assert m[(f"fraiseshm_{figure}_total", ())] == traffic.total(figure), figure
        assert traffic.total("hits") > 0 and traffic.total("misses") > 0 and traffic.total("mutations") == rounds
        assert m[("fraiseshm_workers", ())] == 3
        assert m[("fraiseshm_arena_entries", ())] >= 1
        assert m[("fraiseshm_hit_ratio", ())] == pytest.approx(cli_figures["hit_rate"])
        # whichever worker answers the scrape, the figures are the host's
        with httpx.Client(base_url=srv.url, headers={"Connection": "close"}) as fresh:
            for _ in range(6):
                assert metrics(fresh)[("fraiseshm_requests_total", ())] == traffic.total("requests")

        assert cli("check", arena=srv.arena_name).returncode == 0


def test_hit_ratio_counts_bypasses_from_the_request_sequence(own_cluster: EmbeddedCluster) -> None:
    """Expected figures come from what was sent, not from the server's X-Cache headers:
    4 keys sent 3 times each (1 miss + 2 hits) and 3 anonymous requests for a private
    type (bypasses)
    give hits 8, misses 4, bypasses 3, so the hit ratio is 8 / 15."""
    ids = user_ids(own_cluster, 4)
    env = {"FRAISESHM_LISTEN_CHANGES": "false"}  # nothing but these requests touches the new arena
    with Server(own_cluster.dsn, workers=2, env=env, tag="ratio") as srv, srv.client() as client:
        for _ in range(3):
            for uid in ids:
                r = graphql(client, USER_QUERY, {"id": uid}, headers={"Connection": "close"})
                assert r.status_code == 200 and r.json()["data"]["user"]["id"] == uid
            # an anonymous request for a private type is never stored: a bypass
            r = graphql(client, "{ drafts(limit: 1) { id } }", headers={"Connection": "close"})
            assert r.status_code == 200 and r.headers["X-Cache"] == "BYPASS"
        hits, misses, bypasses = 8, 4, 3
        totals = cli_stats(srv.arena_name)["totals"]
        assert (totals["hits"], totals["misses"], totals["bypasses"]) == (hits, misses, bypasses)
        expected = hits / (hits + misses + bypasses)
        assert cli_stats(srv.arena_name)["hit_rate"] == pytest.approx(expected)
        assert metrics(client)[("fraiseshm_hit_ratio", ())] == pytest.approx(expected)


def test_sigkilled_worker_counts_are_not_lost(own_cluster: EmbeddedCluster) -> None:
    ids = user_ids(own_cluster, 3)
    with Server(own_cluster.dsn, workers=2, tag="kill") as srv, srv.client() as client:
        traffic = Traffic(client)
        while len(traffic.expected) < 2:
            for uid in ids:
                traffic.send(USER_QUERY, {"id": uid})
        before = cli_stats(srv.arena_name)
        assert before["totals"]["requests"] == traffic.total("requests")
        victim = int(max(traffic.expected, key=lambda pid: traffic.expected[pid]["requests"]))
        victim_requests = traffic.expected[str(victim)]["requests"]

        os.kill(victim, signal.SIGKILL)
        # gunicorn's child_exit reaps the slot: the pid leaves the raw slot table too
        await_condition(lambda: victim not in {p["pid"] for p in raw_stats(srv.arena_name)["processes"]},
                        f"worker {victim} reaped from the arena's stats slots")
        await_condition(lambda: len(srv.worker_pids()) == 2 and victim not in srv.worker_pids(),
                        "gunicorn to replace the killed worker")
        srv.wait_all_workers()

        after = cli_stats(srv.arena_name)
        for figure in FIGURES:
            assert after["totals"][figure] == before["totals"][figure], figure  # nothing lost
        assert after["archived"]["requests"] == before["archived"]["requests"] + victim_requests
        assert victim not in {p["pid"] for p in after["processes"]}
        m = metrics(client)
        assert m[("fraiseshm_requests_total", ())] == before["totals"]["requests"]
        assert ("fraiseshm_worker_requests_total", (("worker", str(victim)),)) not in m

        traffic.send(USER_QUERY, {"id": ids[0]})
        assert cli_stats(srv.arena_name)["totals"]["requests"] == before["totals"]["requests"] + 1
        assert cli("check", arena=srv.arena_name).returncode == 0


def health(srv: Server) -> httpx.Response:
    with httpx.Client(base_url=srv.url, timeout=30.0) as c:
        return c.get("/health", headers={"Connection": "close"})


def test_health_degraded_on_low_hit_rate_failing_on_outage_and_back(own_cluster: EmbeddedCluster) -> None:
    ids = user_ids(own_cluster, 30)
    # 30 queries judge the hit rate here; the default minimum (200) would ignore so few
    with Server(own_cluster.dsn, workers=2, tag="health", env={"FRAISESHM_HEALTH_MIN_QUERIES": "20"}) as srv, \
            srv.client() as client:
        r = health(srv)
        assert r.status_code == 200 and r.json()["status"] == "ok", r.text

        # forced low hit rate: every query bypasses the cache or asks a new key
        traffic = Traffic(client)
        for uid in ids:
            traffic.send(USER_QUERY, {"id": uid}, no_cache=True)
        for _ in range(2):  # both workers (fresh connections) see the host's figures
            r = health(srv)
            body = r.json()
            assert r.status_code == 200 and body["status"] == "degraded", body
            assert any("hit rate 0.0 %" in reason for reason in body["reasons"]), body
            assert any("fraiseshm stats" in a and "low-hit-rate.md" in a for a in body["advice"]), body

        # enough hits to lift the rate over 75 %: ok again
        for _ in range(150):
            traffic.send(USER_QUERY, {"id": ids[0]})
        assert traffic.total("hits") >= 149
        for _ in range(2):
            r = health(srv)
            assert r.status_code == 200 and r.json()["status"] == "ok", r.text
            assert r.json()["figures"]["hit_rate"] > 0.75

        own_cluster.stop()
        try:
            r = health(srv)
            body = r.json()
            assert r.status_code == 503 and body["status"] == "failing", body
            assert body["reasons"][0].startswith("database unreachable"), body
        finally:
            own_cluster.start()

        def back_ok() -> bool:
            # both workers: a fresh connection may land on either
            return all(health(srv).json()["status"] == "ok" for _ in range(4))

        await_condition(back_ok, "/health ok again after PostgreSQL restarted", timeout=30.0)
