"""Fault campaign (not part of `make test`): real gunicorn, real PostgreSQL, real faults.

Under a mixed load (reads of single users and of a list, GraphQL mutations,
plain SQL UPDATEs from a client that is not fraiseshm), in this order:

1. kills     --kills SIGKILLs of random workers (default 1,000), each at a random moment;
             then `fraiseshm check` on the live arena must be clean.
2. pg        PostgreSQL stopped and started again under the load: time until
             every worker answers uncached reads again, until the change listener
             is back, until a plain write is heard again.
3. listener  the listener's holder SIGSTOPped, a plain write sent meanwhile, the
             holder SIGKILLed: time until the write shows (the successor's flush).
4. shm       the master started with /dev/shm smaller than the arena (a private
             mount namespace, `unshare -m`, with a 16 MiB tmpfs): must refuse at
             start, naming the sizes, instead of dying later on SIGBUS.

The coherency checker: every GraphQL mutation sets a user's name to a
version number, one writer per user, so versions grow in commit order. A
read of a user that *started after* a mutation's response arrived must show
that version or a later one (DESIGN.md requirement 1): any other read is a
stale read, and there must be none. Plain SQL writes are only promised within
the notification latency; for them the campaign reports reads that were still
old 100 ms and 1 s after the commit.

    .venv/bin/python scripts/fault_campaign.py                  # everything, 1,000 kills
    .venv/bin/python scripts/fault_campaign.py --kills 100 --phases kills,shm
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fraiseshm.arena import Arena  # noqa: E402
from fraiseshm.db.embedded import EmbeddedCluster  # noqa: E402
from tests.integration.server import GUNICORN, USER_QUERY, Server, free_port, graphql  # noqa: E402

CLI = Path(sys.executable).with_name("fraiseshm")
UPDATE_USER = "mutation($id: ID!, $name: String) { updateUser(input: {id: $id, name: $name}) { success } }"
LIST_QUERY = "{ users(limit: 20) { id name } }"
API_USERS, SQL_USERS = 10, 10  # the list query covers exactly these 20 (the first users)


def version_of(name: str) -> int:
    head, _, tail = name.partition(" ")
    return int(tail) if head in ("api", "sql") and tail.isdigit() else -1


@dataclass
class Ledger:
    """Acknowledged writes and observed reads, all on time.monotonic()."""

    api: set[str]
    acked: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # uid -> (ack time, version)
    reads: list[tuple[str, float, int]] = field(default_factory=list)  # (uid, read start, version seen)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[tuple[float, float, str]] = field(default_factory=list)  # (seconds, start, what)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ack(self, uid: str, at: float, version: int) -> None:
        with self.lock:
            self.acked.setdefault(uid, []).append((at, version))

    def floor(self, uid: str, before: float) -> int:
        """The newest version acknowledged before `before` (writes are appended in time order)."""
        acks = self.acked.get(uid, [])
        i = bisect.bisect_left(acks, (before, -2))
        return acks[i - 1][1] if i else -1

    def judge(self) -> dict[str, object]:
        stale, sql_100ms, sql_1s, sql_lag = [], 0, 0, []
        with self.lock:
            reads = list(self.reads)
        for uid, started, seen in reads:
            if uid in self.api:
                floor = self.floor(uid, started)
                if seen < floor:
                    stale.append({"user": uid, "seen": seen, "acknowledged": floor})
            else:
                if seen < self.floor(uid, started - 0.1):
                    sql_100ms += 1
                if seen < self.floor(uid, started - 1.0):
                    sql_1s += 1
                if seen < self.floor(uid, started):
                    # how long ago the oldest write this read missed had committed
                    missed = next(t for t, v in self.acked[uid] if v > seen)
                    sql_lag.append(started - missed)
        api_reads = sum(1 for r in reads if r[0] in self.api)
        return {"reads": len(reads), "api_reads": api_reads, "stale_reads": len(stale), "stale_examples": stale[:5],
                "sql_reads": len(reads) - api_reads, "sql_old_after_100ms": sql_100ms, "sql_old_after_1s": sql_1s,
                "sql_missed_write_age_s": {"max": round(max(sql_lag), 3),
                                           "p99_of_old_reads": round(sorted(sql_lag)[int(len(sql_lag) * 0.99)], 3)}
                if sql_lag else None}


class Load:
    """Readers, one GraphQL mutator and one plain-SQL writer, until stop()."""

    def __init__(self, server: Server, dsn: str, api: list[str], sql: list[str], readers: int) -> None:
        self.server, self.dsn, self.api, self.sql = server, dsn, api, sql
        self.ledger = Ledger(set(api))
        self.running = threading.Event()
        self.threads = [threading.Thread(target=self._reader, args=(n,), daemon=True) for n in range(readers)]
        self.threads += [threading.Thread(target=self._mutator, daemon=True),
                         threading.Thread(target=self._sql_writer, daemon=True)]
        self.counts: Counter[str] = Counter()

    def start(self) -> Load:
        self.running.set()
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.running.clear()
        for t in self.threads:
            t.join(timeout=60)

    def _record(self, uid: str, started: float, name: str) -> None:
        with self.ledger.lock:
            self.ledger.reads.append((uid, started, version_of(name)))

    def _reader(self, n: int) -> None:
        rng = random.Random(n)
        users = self.api + self.sql
        client = self.server.client(timeout=30.0)
        i = 0
        while self.running.is_set():
            i += 1
            fresh = {"Connection": "close"} if i % 3 == 0 else {}
            started = time.monotonic()
            try:
                what = "list" if i % 5 == 0 else "user"
                if what == "list":
                    r = graphql(client, LIST_QUERY, headers=fresh)
                    if r.status_code == 200 and "errors" not in r.json():
                        for u in r.json()["data"]["users"]:
                            self._record(u["id"], started, u["name"])
                        self.counts["list reads"] += 1
                    else:
                        self.ledger.errors[f"read {r.status_code}"] += 1
                else:
                    uid = rng.choice(users)
                    r = graphql(client, USER_QUERY, {"id": uid}, headers=fresh)
                    if r.status_code == 200 and "errors" not in r.json():
                        self._record(uid, started, r.json()["data"]["user"]["name"])
                        self.counts["user reads"] += 1
                    else:
                        self.ledger.errors[f"read {r.status_code}"] += 1
                self.ledger.latencies.append((time.monotonic() - started, started, f"{what} {r.status_code}"))
            except (httpx.TransportError, ValueError) as exc:  # the worker died under the request
                self.ledger.errors[f"read {type(exc).__name__}"] += 1
                client.close()
                client = self.server.client(timeout=30.0)
        client.close()

    def _mutator(self) -> None:
        version = dict.fromkeys(self.api, 0)
        client = self.server.client(timeout=30.0)
        while self.running.is_set():
            for uid in self.api:
                version[uid] += 1
                try:
                    r = graphql(client, UPDATE_USER, {"id": uid, "name": f"api {version[uid]}"})
                    ok = r.status_code == 200 and (r.json().get("data") or {}).get("updateUser", {}).get("success")
                except (httpx.TransportError, ValueError) as exc:
                    self.ledger.errors[f"mutation {type(exc).__name__}"] += 1
                    client.close()
                    client = self.server.client(timeout=30.0)
                    continue  # not acknowledged: it may or may not have committed
                if ok:
                    self.ledger.ack(uid, time.monotonic(), version[uid])
                    self.counts["mutations acknowledged"] += 1
                else:
                    self.ledger.errors[f"mutation {r.status_code}"] += 1
        client.close()

    def _sql_writer(self) -> None:
        asyncio.run(self._sql_writes())

    async def _sql_writes(self) -> None:
        version = dict.fromkeys(self.sql, 0)
        conn = None
        while self.running.is_set():
            for uid in self.sql:
                version[uid] += 1
                try:
                    if conn is None or conn.is_closed():
                        conn = await asyncpg.connect(self.dsn, timeout=2)
                    await conn.execute("UPDATE tb_user SET name = $1 WHERE id = $2", f"sql {version[uid]}", uid)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError):
                    self.ledger.errors["sql write failed"] += 1
                    conn = None
                    await asyncio.sleep(0.2)  # PostgreSQL is down (pg phase): pace the retries
                    continue
                self.ledger.ack(uid, time.monotonic(), version[uid])  # committed (autocommit)
                self.counts["plain SQL writes"] += 1
                await asyncio.sleep(0.02)
        if conn is not None:
            await conn.close()


def listener_pid(dsn: str, arena: str) -> int | None:
    async def query() -> list[str]:
        conn = await asyncpg.connect(dsn, timeout=2)
        try:
            rows = await conn.fetch("SELECT application_name FROM pg_stat_activity WHERE application_name LIKE $1",
                                    f"fraiseshm-listener {arena} %")
        finally:
            await conn.close()
        return [r[0] for r in rows]

    try:
        names = asyncio.run(query())
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError):
        return None
    return int(names[0].rsplit(" ", 1)[1]) if len(names) == 1 else None


def until(condition, timeout: float, what: str) -> float:  # noqa: ANN001
    """Seconds until condition() holds (polled; a campaign may pace itself)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - start


def read_name(server: Server, uid: str) -> str | None:
    try:
        with server.client(timeout=5.0) as c:
            r = graphql(c, USER_QUERY, {"id": uid}, headers={"Connection": "close"})
    except httpx.TransportError:
        return None
    return r.json()["data"]["user"]["name"] if r.status_code == 200 else None


def arena_check(server: Server) -> dict[str, object]:
    r = subprocess.run([str(CLI), "--arena", server.arena_name, "check"], capture_output=True, text=True, timeout=300)
    with Arena.attach(server.arena_name) as arena:
        stats = arena.stats()
    return {"fraiseshm_check_exit": r.returncode, "fraiseshm_check_output": (r.stdout + r.stderr).strip()[-2000:],
            "lock_wipes": stats["lock_wipes"], "totals": {k: stats["totals"][k] for k in
                                                         ("requests", "hits", "misses", "db_executions", "mutations",
                                                          "coalesce_takeovers", "lock_wipes", "checksum_failures")}}


# --- phases -----------------------------------------------------------------------------------

def phase_kills(server: Server, kills: int, rng: random.Random) -> dict[str, object]:
    started = time.monotonic()
    killed, replace_times = 0, []
    for k in range(kills):
        until(lambda: len(server.worker_pids()) >= server.workers, 60, "gunicorn to replace killed workers")
        victim = rng.choice(sorted(server.worker_pids()))
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            continue
        killed += 1
        t = time.monotonic()
        until(lambda: victim not in server.worker_pids() and len(server.worker_pids()) >= server.workers, 60,
              f"a replacement for worker {victim}")
        replace_times.append(time.monotonic() - t)
        time.sleep(rng.uniform(0.02, 0.6))  # the next kill at a random moment: booting, idle or mid-request
        if (k + 1) % 100 == 0:
            print(f"  {k + 1} kills, {time.monotonic() - started:.0f} s", flush=True)
    server.wait_all_workers(60)
    return {"kills": killed, "seconds": round(time.monotonic() - started, 1),
            "replacement_median_ms": round(1000 * statistics.median(replace_times), 1) if replace_times else None}


def phase_pg_restart(server: Server, cluster: EmbeddedCluster, probe_uid: str) -> dict[str, object]:
    holder = listener_pid(cluster.dsn, server.arena_name)
    t0 = time.monotonic()
    cluster.stop()
    down = time.monotonic() - t0
    t1 = time.monotonic()
    cluster.start()
    up = time.monotonic()
    workers = {str(p) for p in server.worker_pids()}
    answered: set[str] = set()

    def every_worker_reads() -> bool:
        try:
            with server.client(timeout=5.0) as c:
                r = graphql(c, "{ users(limit: 2) { id } }", headers={"Connection": "close", "Cache-Control": "no-cache"})
        except httpx.TransportError:
            return False
        if r.status_code == 200:
            answered.add(r.headers["X-Fraiseshm-Worker"])
        return answered >= workers

    reads_back = until(every_worker_reads, 60, "uncached reads on every worker after the restart")
    listener_back = until(lambda: listener_pid(cluster.dsn, server.arena_name) is not None, 60, "the listener")
    name = f"restart {time.monotonic_ns()}"
    cluster.psql(f"UPDATE tb_user SET name = '{name}' WHERE id = '{probe_uid}'")
    heard = until(lambda: read_name(server, probe_uid) == name, 30, "a plain write heard after the restart")
    return {"stop_seconds": round(down, 2), "start_seconds": round(up - t1, 2),
            "uncached_reads_on_every_worker_after_start_s": round(reads_back, 2),
            "listener_back_after_start_s": round(reads_back + listener_back, 2),
            "plain_write_heard_after_listener_s": round(heard, 3),
            "recovered_after_start_s": round(reads_back + listener_back + heard, 2),
            "listener_holder_before": holder, "listener_holder_after": listener_pid(cluster.dsn, server.arena_name)}


def phase_listener(server: Server, cluster: EmbeddedCluster, probe_uid: str) -> dict[str, object]:
    holder = listener_pid(cluster.dsn, server.arena_name)
    if holder is None:
        return {"error": "no single listener found"}
    until(lambda: read_name(server, probe_uid) is not None, 10, "probe cached")
    before = read_name(server, probe_uid)
    os.kill(holder, signal.SIGSTOP)
    name = f"unheard {time.monotonic_ns()}"
    try:
        cluster.psql(f"UPDATE tb_user SET name = '{name}' WHERE id = '{probe_uid}'")
        time.sleep(1.0)  # the write stays unheard while the holder is stopped
        while_stopped = read_name(server, probe_uid)
    finally:
        os.kill(holder, signal.SIGKILL)
    visible = until(lambda: read_name(server, probe_uid) == name, 30, "the unheard write after the holder's death")
    successor = listener_pid(cluster.dsn, server.arena_name)
    server.wait_all_workers(60)
    return {"holder": holder, "successor": successor, "name_before": before,
            "old_value_served_while_stopped": while_stopped != name,
            "visible_after_kill_s": round(visible, 3)}


def phase_small_shm(dsn: str) -> dict[str, object]:
    """The master in a private mount namespace whose /dev/shm is 16 MiB; the arena wants 64 MiB."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return {"skipped": "needs root and unshare(1) for a private /dev/shm"}
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("FRAISESHM_")},
           "FRAISESHM_DATABASE_DSN": dsn, "FRAISESHM_BIND": f"127.0.0.1:{port}", "FRAISESHM_WORKERS": "1",
           "FRAISESHM_ARENA_NAME": f"/fraiseshm-campaign-shm-{port}", "FRAISESHM_ARENA_SIZE": str(64 << 20),
           "FRAISESHM_LOG_LEVEL": "warning"}
    script = f"mount -t tmpfs -o size=16m tmpfs /dev/shm && exec {GUNICORN} -c {ROOT / 'gunicorn.conf.py'}"
    t = time.monotonic()
    try:
        r = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return {"refused_at_start": False, "detail": "gunicorn still running after 60 s with a 16 MiB /dev/shm"}
    out = r.stdout + r.stderr
    lines = [line for line in out.splitlines() if "cannot hold an arena" in line or "Error" in line]
    return {"refused_at_start": r.returncode != 0 and "cannot hold an arena" in out, "exit_code": r.returncode,
            "seconds": round(time.monotonic() - t, 2), "message": (lines[-1] if lines else out[-400:]).strip()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--phases", default="kills,pg,listener,shm")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    phases = args.phases.split(",")
    rng = random.Random(args.seed)
    results: dict[str, object] = {"kills_requested": args.kills, "workers": args.workers}

    directory = Path(tempfile.mkdtemp(prefix="fraiseshm-campaign-pg-"))
    os.chmod(directory, 0o755)
    cluster = EmbeddedCluster(directory, fast=True)
    try:
        cluster.ensure([ROOT / "examples/blog/schema.sql"], seed_users=40)
        ids = cluster.psql("SELECT id FROM tb_user ORDER BY created_at, id LIMIT 22").split()
        api, sql, probes = ids[:API_USERS], ids[API_USERS:API_USERS + SQL_USERS], ids[API_USERS + SQL_USERS:]
        if "shm" in phases:
            results["shm"] = phase_small_shm(cluster.dsn)
            print("shm:", json.dumps(results["shm"]), flush=True)
        env = {"FRAISESHM_WORKER_TIMEOUT": "20", "FRAISESHM_COALESCE_LEASE": "5"}
        with Server(cluster.dsn, workers=args.workers, env=env, tag="campaign") as server:
            results["server_log"] = str(server.log_path)
            load = Load(server, cluster.dsn, api, sql, args.readers).start()
            epoch, marks = time.monotonic(), {}
            try:
                if "kills" in phases:
                    marks["kills"] = time.monotonic()
                    results["kills"] = phase_kills(server, args.kills, rng)
                    results["check_after_kills"] = arena_check(server)
                    print("kills:", json.dumps(results["kills"]), "check exit",
                          results["check_after_kills"]["fraiseshm_check_exit"], flush=True)
                if "pg" in phases:
                    marks["pg"] = time.monotonic()
                    results["pg_restart"] = phase_pg_restart(server, cluster, probes[0])
                    print("pg:", json.dumps(results["pg_restart"]), flush=True)
                if "listener" in phases:
                    marks["listener"] = time.monotonic()
                    results["listener"] = phase_listener(server, cluster, probes[1])
                    print("listener:", json.dumps(results["listener"]), flush=True)
            finally:
                load.stop()
            results["check_at_end"] = arena_check(server)
            results["coherency"] = load.ledger.judge()
            results["load"] = dict(load.counts)
            results["errors"] = dict(load.ledger.errors)
            lat = sorted(load.ledger.latencies)
            if lat:
                results["read_latency_ms"] = {"p50": round(1000 * lat[len(lat) // 2][0], 2),
                                              "p99": round(1000 * lat[int(len(lat) * 0.99)][0], 2),
                                              "max": round(1000 * lat[-1][0], 2)}
                results["slowest_reads"] = [{"ms": round(1000 * d, 1), "started_s": round(t - epoch, 2), "what": w}
                                            for d, t, w in lat[-5:]]
                results["phase_started_s"] = {k: round(v - epoch, 2) for k, v in marks.items()}
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)

    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    clean = (results["check_at_end"]["fraiseshm_check_exit"] == 0 and results["coherency"]["stale_reads"] == 0
             and results.get("shm", {}).get("refused_at_start", True) is not False)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
