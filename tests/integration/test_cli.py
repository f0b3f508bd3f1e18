"""The `fraiseshm` console script, run as a subprocess against live arenas (issue 8)."""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fraiseshm.arena import Arena
from fraiseshm.arena.layout import LAYOUT_VERSION
from fraiseshm.db.embedded import EmbeddedCluster
from tests.integration.server import USER_QUERY, Server, graphql

CLI = Path(sys.executable).with_name("fraiseshm")
ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**{k: v for k, v in os.environ.items() if not k.startswith("FRAISESHM_")}, "COLUMNS": "160",
                **(env or {})}
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=60, env=full_env)


@pytest.fixture
def lone_arena() -> Iterator[Arena]:
    name = f"/fraiseshm-cli-{os.getpid()}"
    arena = Arena.create(name, size=8 << 20, max_entry=64 << 10, shards=2)
    yield arena
    arena.close()
    Arena.unlink(name)


def _poke(arena: Arena, offset: int, value: int, width: int) -> None:
    fd = os.open("/dev/shm" + arena.name, os.O_RDWR)
    try:
        with mmap.mmap(fd, offset + width) as m:
            m[offset : offset + width] = value.to_bytes(width, "little")
    finally:
        os.close(fd)


def test_no_arena_is_a_clear_error() -> None:
    r = cli("--arena", "/fraiseshm-nowhere", "stats")
    assert r.returncode == 2 and r.stdout == ""
    assert "no arena /fraiseshm-nowhere in /dev/shm: is the master running?" in r.stderr
    # the default name comes from Settings (FRAISESHM_ARENA_NAME)
    r = cli("check", env={"FRAISESHM_ARENA_NAME": "/fraiseshm-nowhere-env"})
    assert r.returncode == 2 and "/fraiseshm-nowhere-env" in r.stderr


def test_another_layout_version_is_a_clear_error(lone_arena: Arena) -> None:
    _poke(lone_arena, 8, LAYOUT_VERSION + 41, 4)  # header +8: u32 layout version
    r = cli("--arena", lone_arena.name, "stats", "--json")
    assert r.returncode == 2 and r.stdout == ""
    assert f"layout version {LAYOUT_VERSION + 41}" in r.stderr and f"version {LAYOUT_VERSION}" in r.stderr


def test_check_exits_1_on_a_broken_invariant(lone_arena: Arena) -> None:
    r = cli("--arena", lone_arena.name, "check")
    assert r.returncode == 0 and "clean" in r.stdout
    # I2: a tag raised above the global sequence (header +56: u64 off_tags)
    fd = os.open("/dev/shm" + lone_arena.name, os.O_RDONLY)
    try:
        off_tags = int.from_bytes(os.pread(fd, 8, 56), "little")
    finally:
        os.close(fd)
    _poke(lone_arena, off_tags, 1_000, 8)
    r = cli("--arena", lone_arena.name, "check")
    assert r.returncode == 1 and "I2" in r.stdout and "1 problem(s)" in r.stdout


def test_stats_top_invalidate_flush_on_a_live_server(pg_dsn: str, pg_cluster: EmbeddedCluster) -> None:
    uid = pg_cluster.psql("SELECT id FROM tb_user ORDER BY pk_user OFFSET 170 LIMIT 1").strip()
    with Server(pg_dsn, workers=2, tag="cli") as srv, srv.client() as client:
        arena = ["--arena", srv.arena_name]
        pids = {str(p) for p in srv.worker_pids()}
        # The host's change listener flushes the arena once it LISTENs: wait for that
        # flush, or it could land between the MISS and HIT asserted below.
        deadline = time.monotonic() + 20
        while json.loads(cli(*arena, "stats", "--json").stdout)["totals"]["flushes"] < 1:
            assert time.monotonic() < deadline, "the change listener never started"
        assert graphql(client, USER_QUERY, {"id": uid}).headers["X-Cache"] == "MISS"
        assert graphql(client, USER_QUERY, {"id": uid}).headers["X-Cache"] == "HIT"

        before = json.loads(cli(*arena, "stats", "--json").stdout)["totals"]
        r = cli(*arena, "stats")
        assert r.returncode == 0, r.stderr
        assert all(pid in r.stdout for pid in pids) and "total" in r.stdout

        r = cli(*arena, "top", "--interval", "0.2", "--iterations", "2")
        assert r.returncode == 0, r.stderr
        assert all(pid in r.stdout for pid in pids) and "req/s" in r.stdout

        r = cli(*arena, "invalidate", f"r:public.tb_user:{uid}")
        assert r.returncode == 0 and "invalidated 1 tag(s)" in r.stdout, r.stderr
        assert graphql(client, USER_QUERY, {"id": uid}).headers["X-Cache"] == "MISS"
        assert graphql(client, USER_QUERY, {"id": uid}).headers["X-Cache"] == "HIT"

        r = cli(*arena, "flush")
        assert r.returncode == 0 and "flushed" in r.stdout, r.stderr
        assert graphql(client, USER_QUERY, {"id": uid}).headers["X-Cache"] == "MISS"

        figures = json.loads(cli(*arena, "stats", "--json").stdout)
        assert figures["totals"]["invalidations"] == before["invalidations"] + 1
        assert figures["totals"]["flushes"] == before["flushes"] + 1
        assert {str(p["pid"]) for p in figures["processes"]} == pids  # the exited CLI is not a worker
        assert cli(*arena, "check").returncode == 0


def test_audit_says_when_the_table_is_absent_and_lists_failures(pg_cluster: EmbeddedCluster) -> None:
    empty, trail = f"cli_no_audit_{os.getpid()}", f"cli_audit_{os.getpid()}"
    for db in (empty, trail):
        pg_cluster.fresh_database(db)
    try:
        r = cli("audit", "--dsn", pg_cluster.dsn_of(empty))
        assert r.returncode == 2 and "table fraiseshm.audit does not exist" in r.stderr

        pg_cluster.psql((ROOT / "fraiseshm/db/sql/audit.sql").read_text(), database=trail)  # the real table
        pg_cluster.psql(
            "INSERT INTO fraiseshm.audit (mutation, duration_ms, verdict, failure, details) VALUES "
            "('updateUser', 1.0, 'ok', false, '{}'), "
            "('deleteUser', 2.0, 'missing_entity', true, '{\"detail\": \"Post:7 not in cascade\"}')",
            database=trail,
        )
        r = cli("audit", "--dsn", pg_cluster.dsn_of(trail), "--json")
        assert r.returncode == 0, r.stderr
        rows = json.loads(r.stdout)
        assert [(x["mutation"], json.loads(x["details"])) for x in rows] == [
            ("deleteUser", {"detail": "Post:7 not in cascade"})]
        r = cli("audit", "--dsn", pg_cluster.dsn_of(trail))
        assert r.returncode == 0 and "deleteUser" in r.stdout and "updateUser" not in r.stdout

        # issue 19: readable at 80 columns: long tags and details wrap, nothing is cut
        tags = json.dumps([f"r:public.tb_post:{i:08d}" for i in range(12)])
        pg_cluster.psql(
            "INSERT INTO fraiseshm.audit (mutation, transaction_id, duration_ms, verdict, failure, tags, details) "
            f"VALUES ('deleteUserAndEverythingTheyWrote', '987654321', 3.0, 'unlisted', true, '{tags}', "
            "'{\"unlisted\": [\"r:public.tb_comment:123456789\", \"r:public.tb_comment:123456790\"]}')",
            database=trail,
        )
        r = cli("audit", "--dsn", pg_cluster.dsn_of(trail), env={"COLUMNS": "80"})
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert all(len(line) <= 80 for line in lines) and "…" not in r.stdout, r.stdout
        folded = "".join(line.strip() for line in lines)
        assert "deleteUserAndEverythingTheyWrote" in folded.replace(" ", "").replace("│", ""), r.stdout
        header = lines[1].split()
        assert header[:3] == ["at", "mutation", "verdict"], r.stdout  # the highest priorities first
    finally:
        for db in (empty, trail):
            pg_cluster.psql(f"DROP DATABASE IF EXISTS {db}", database="postgres")
