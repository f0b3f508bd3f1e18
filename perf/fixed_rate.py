"""The launch criteria as a scenario: "load test at 5K QPS: >= 85 % hit rate, < 50 ms p99".

Open loop: request i is due at t0 + i / rate whatever happened to the ones
before it, and its latency is counted from that due time, so a stalled server
is charged for every request that waited behind it (a closed-loop tool such as
wrk or locust sends less while the server is slow and hides exactly that).
The mix is the Zipf scenario's (perf/locust_zipf.py): 70 % user(id), 25 %
posts(authorId), 5 % updateUser renames, ids drawn from Zipf(1.1) over the
10k seeded users.

The generator is written here (asyncio + uvloop, HTTP/1.1 keep-alive, one
request per connection at a time, connections opened as needed): h2load's
--rate sets how many *connections* start per period, not a request rate, and
it sends one fixed body. It runs in its own process so that its CPU time is
its own; every result states that share.

Stale reads: every read of a renamed user is checked against the renames the
generator had seen acknowledged before the read was sent (a rename never runs
concurrently with another one of the same user, so "newest acknowledged" is
well defined): an older name is a stale read. The acknowledgements are checked
against PostgreSQL at the end: for a sample of renamed users, the database's
name must be the last acknowledged one.

    .venv/bin/python perf/fixed_rate.py [--rate 5000] [--seconds 60] [--step-seconds 10] [--targets fraiseshm,no-cache]
    .venv/bin/python perf/fixed_rate.py drive URL IDS_FILE --rate R --seconds S --op OP   (one run, JSON on stdout)
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import itertools
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PERF = Path(__file__).resolve().parent
sys.path.insert(0, str(PERF))

import queries  # noqa: E402

P99_BUDGET_MS = 50.0
HIT_RATE_MIN = 0.85
MIX = (("user", 70), ("posts", 25), ("rename", 5))
PREOPEN = 64  # connections opened before the clock starts
MAX_CONNECTIONS = 1024  # beyond this, due requests queue in the generator (and their latency counts)
ABORT_BACKLOG_S = 2.0  # a run stops once this many seconds of requests queue in the generator


# --- the generator (runs in its own process: `fixed_rate.py drive ...`) ----------------------


class Zipf:
    """Ranks 0..n-1 with P(k) proportional to 1 / (k+1)^1.1, as perf/scenario.py's (which imports locust,
    whose gevent must stay out of this asyncio process)."""

    def __init__(self, n: int, s: float = 1.1, seed: int = 1) -> None:
        self.cdf = list(itertools.accumulate(1.0 / (k + 1) ** s for k in range(n)))
        self.rng = random.Random(seed)

    def sample(self) -> int:
        return bisect.bisect_left(self.cdf, self.rng.random() * self.cdf[-1])


class _Conn(asyncio.Protocol):
    __slots__ = ("gen", "transport", "buffer", "inflight")

    def __init__(self, gen: _Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.inflight: list[Any] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.gen._all.append(self)

    def send(self, record: list[Any], payload: bytes) -> None:
        self.inflight = record
        record[3] = time.perf_counter()
        assert self.transport is not None
        self.transport.write(payload)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None]) if at >= 0 else 0
        if len(self.buffer) < end + 4 + length:
            return
        body = self.buffer[end + 4:end + 4 + length]
        self.buffer = self.buffer[end + 4 + length:]
        record, self.inflight = self.inflight, None
        self.gen.completed(self, record, int(head[9:12]), head, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.lost(self)


class _Generator:
    def __init__(self, host: str, port: int, ids: list[str], rate: float, seconds: float, op: str, seed: int) -> None:
        self.host, self.port, self.ids, self.rate, self.seconds = host, port, ids, rate, seconds
        self.user_q, self.posts_q, self.rename_q = queries.user_q(op), queries.posts_q(op), queries.rename_q(op)
        self.zipf = Zipf(len(ids), seed=seed)
        self.rng = random.Random(seed + 1)
        self.idle: list[_Conn] = []
        self._all: list[_Conn] = []
        self.connections = 0
        self.backlog: collections.deque[list[Any]] = collections.deque()
        self.latencies: list[float] = []
        self.lags: list[float] = []
        self.hits = self.reads = self.errors = self.stale = self.checked = 0
        self.statuses: collections.Counter[int] = collections.Counter()  # non-200 answers by status
        self.stale_kinds: collections.Counter[str] = collections.Counter()  # stale reads by document
        self.dropped = 0  # connections lost with a request in flight
        self.renames = self.renames_converted = 0
        self.writing: set[int] = set()  # users with a rename in flight
        self.acked: dict[int, list[tuple[float, int]]] = {}  # user -> [(ack time, rename seq)] in ack order
        self.last_name: dict[int, str] = {}
        self.lost_renames: list[list[Any]] = []  # renames whose connection dropped before the answer
        self.outstanding = 0
        self.done_scheduling = False
        self.done = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    # record: [kind, user index, due time, sent time, rename seq]
    def _payload(self, kind: str, user: int, seq: int) -> bytes:
        if kind == "rename":
            body = json.dumps({"query": self.rename_q, "variables": {"id": self.ids[user], "n": f"fr-{seq}"}}).encode()
        else:
            body = json.dumps({"query": self.user_q if kind == "user" else self.posts_q,
                               "variables": {"id": self.ids[user]}}).encode()
        return (b"POST /graphql HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % (self.host.encode(), len(body))) + body

    async def _open(self) -> None:
        try:
            _, conn = await self._loop.create_connection(lambda: _Conn(self), self.host, self.port)
        except OSError:
            self.connections -= 1
            self.errors += 1
            return
        self._ready(conn)

    def _ready(self, conn: _Conn) -> None:
        if self.backlog:
            self._send(conn, self.backlog.popleft())
        else:
            self.idle.append(conn)

    def _send(self, conn: _Conn, record: list[Any]) -> None:
        kind, user = record[0], record[1]
        if kind == "rename":
            if user in self.writing:  # never two renames of one user at once: "newest acknowledged" stays defined
                record[0] = kind = "user"
                self.renames_converted += 1
            else:
                self.writing.add(user)
                self.renames += 1
        conn.send(record, self._payload(kind, user, record[4]))

    def _dispatch(self, record: list[Any]) -> None:
        self.outstanding += 1
        if self.idle:
            self._send(self.idle.pop(), record)
        else:
            self.backlog.append(record)
            if self.connections < MAX_CONNECTIONS:
                self.connections += 1
                self._loop.create_task(self._open())

    def completed(self, conn: _Conn, record: list[Any], status: int, head: bytes, body: bytes) -> None:
        now = time.perf_counter()
        kind, user, due, sent, seq = record
        self.latencies.append(now - due)
        self.lags.append(sent - due)
        if status != 200:
            self.errors += 1
            self.statuses[status] += 1
        elif kind == "rename":
            self.writing.discard(user)
            answer = json.loads(body)
            if answer.get("data", {}).get("updateUser", {}).get("success"):
                self.acked.setdefault(user, []).append((now, seq))
                self.last_name[user] = f"fr-{seq}"
            else:
                self.errors += 1
        else:
            self.reads += 1
            at = head.find(b"x-cache:")
            if at >= 0 and head[at + 8:at + 14].strip() in (b"hit", b"stale"):
                self.hits += 1
            if self.acked.get(user):
                self._check_fresh(kind, user, sent, body)
        if kind == "rename" and status != 200:
            self.writing.discard(user)
        self.outstanding -= 1
        self._ready(conn)
        if self.outstanding == 0 and self.done_scheduling:
            self.done.set()

    def _check_fresh(self, kind: str, user: int, sent: float, body: bytes) -> None:
        """Stale: older than a rename acknowledged before this read was sent."""
        newest = -1
        for acked_at, seq in self.acked[user]:
            if acked_at < sent:
                newest = seq
        if newest < 0:
            return
        data = json.loads(body).get("data") or {}
        if kind == "user":
            names = [(data.get("user") or {}).get("name")]
        else:
            names = [p["author"]["name"] for p in data.get("posts") or []]
        for name in names:
            self.checked += 1
            got = int(name[3:]) if isinstance(name, str) and name.startswith("fr-") else -1
            if got < newest:
                self.stale += 1
                self.stale_kinds[kind] += 1

    def lost(self, conn: _Conn) -> None:
        if conn in self.idle:
            self.idle.remove(conn)
        self.connections -= 1
        if conn.inflight is not None:
            self.errors += 1
            self.dropped += 1
            self.outstanding -= 1
            if conn.inflight[0] == "rename":
                self.writing.discard(conn.inflight[1])
                self.lost_renames.append(conn.inflight)
            conn.inflight = None
        if conn in self._all:
            self._all.remove(conn)

    async def run(self) -> dict[str, Any]:
        n = int(self.rate * self.seconds)
        kinds = [k for k, w in MIX for _ in range(w)]
        plan = [[self.rng.choice(kinds), self.zipf.sample(), 0.0, 0.0, i] for i in range(n)]  # drawn before the clock
        self.connections = PREOPEN
        await asyncio.gather(*(self._open() for _ in range(PREOPEN)))
        self.done_scheduling = False
        cpu0, wall0 = time.process_time(), time.perf_counter()
        t0 = wall0 + 0.01
        i = 0
        aborted = None
        while i < n:
            if len(self.backlog) > self.rate * ABORT_BACKLOG_S:
                # PERF: hopeless (every further request would wait > ABORT_BACKLOG_S): stop here, so
                # an overloaded step ends in seconds and leaves less queued in the server.
                aborted = time.perf_counter() - t0
                n = i
                break
            due = min(n, int((time.perf_counter() - t0) * self.rate) + 1)
            while i < due:
                record = plan[i]
                record[2] = t0 + i / self.rate
                self._dispatch(record)
                i += 1
            await asyncio.sleep(0.0005)
        self.done_scheduling = True
        if self.outstanding:
            try:
                await asyncio.wait_for(self.done.wait(), 10)
            except TimeoutError:
                pass
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        # Never answered (still queued here or in flight): counted as errors, and in the
        # percentiles with the time they had waited so far (a lower bound), never left out.
        now = time.perf_counter()
        unanswered = [r for r in self.backlog] + [c.inflight for c in self._all if c.inflight is not None]
        self.errors += len(unanswered)
        self.latencies += [now - r[2] for r in unanswered]
        for conn in self._all:
            if conn.transport is not None:
                conn.transport.close()
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else None

        lags = sorted(self.lags)
        return {
            "rate": self.rate, "seconds": self.seconds, "scheduled": n, "aborted_after_s": aborted, "completed": len(lat) - len(unanswered),
            "achieved_rate": (len(lat) - len(unanswered)) / wall if wall else 0.0,
            "errors": self.errors, "unanswered": len(unanswered), "connections_dropped": self.dropped,
            "error_statuses": {str(k): v for k, v in self.statuses.items()}, "reads": self.reads, "hit_rate": self.hits / self.reads if self.reads else None,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "p999_ms": pct(0.999), "max_ms": lat[-1] * 1000 if lat else None,
            "send_lag_p99_ms": lags[int(0.99 * len(lags))] * 1000 if lags else None,
            "renames": self.renames, "renames_sent_as_reads": self.renames_converted,
            "stale_reads": self.stale, "reads_checked": self.checked, "stale_by_document": dict(self.stale_kinds),
            "generator_cpu_core_share": cpu / wall if wall else None,  # of one core
            "generator_machine_share": cpu / wall / (os.cpu_count() or 1) if wall else None,
            "connections": self.connections,
            "last_names": {self.ids[u]: name for u, name in self.last_name.items()},
            # renames sent but never acknowledged (run stopped): the database may hold these names instead
            "unacked_names": {self.ids[r[1]]: f"fr-{r[4]}" for r in unanswered + self.lost_renames if r[0] == "rename"},
        }


def drive(url: str, ids: list[str], rate: float, seconds: float, op: str, seed: int = 17) -> dict[str, Any]:
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a fraiseshm dependency
        runner = asyncio.run
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)

    async def main() -> dict[str, Any]:
        return await _Generator(host, int(port), ids, rate, seconds, op, seed).run()

    return runner(main())


# --- the scenario (called by perf/run.py, or by main() below) --------------------------------


def settle(url: str, dsn: str = "", timeout: float = 60.0) -> None:
    """Until the server answers three reads in a row within 100 ms and (with dsn) PostgreSQL runs no
    statement of an earlier run: an overloaded run leaves work queued behind it, and a rename it gave up
    on that commits during the next run would look like a stale read there."""
    import httpx

    deadline = time.monotonic() + timeout
    if dsn:
        import common

        busy = ("SELECT count(*) FROM pg_stat_activity WHERE state <> 'idle' AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend' AND query !~* 'LISTEN|pg_stat_activity'")
        while time.monotonic() < deadline and int(common.psql(dsn, busy).strip() or 0) > 0:
            time.sleep(0.1)  # polling PostgreSQL, not synchronising with it
    quick = 0
    with httpx.Client(timeout=10.0) as client:
        while quick < 3 and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                client.post(url + "/graphql", json={"query": "{ users(limit: 1) { id } }"})
            except httpx.TransportError:
                quick = 0
                continue
            quick = quick + 1 if time.monotonic() - started < 0.1 else 0


def run_once(url: str, ids_file: Path, rate: float, seconds: float, op: str, dsn: str = "") -> dict[str, Any]:
    """One fixed-rate run in a separate generator process; with dsn, the acknowledged renames are checked in PostgreSQL."""
    settle(url, dsn)
    out = subprocess.run([sys.executable, str(PERF / "fixed_rate.py"), "drive", url, str(ids_file),
                          "--rate", str(rate), "--seconds", str(seconds), "--op", op],
                         capture_output=True, text=True, timeout=seconds + 120, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"fixed-rate generator failed ({out.returncode}): {out.stderr[-3000:]}")
    result = json.loads(out.stdout)
    names: dict[str, str] = result.pop("last_names")
    unacked: dict[str, str] = result.pop("unacked_names")
    if dsn and names:
        import common

        sample = sorted(names)[:200]
        rows = common.psql(dsn, "SELECT id, name FROM tb_user WHERE id IN (%s)" % ",".join(f"'{i}'" for i in sample))
        in_db = dict(line.split("|", 1) for line in rows.split("\n") if "|" in line)
        result["db_checked"] = len(sample)
        result["db_disagreements"] = sum(in_db.get(i) not in (names[i], unacked.get(i)) for i in sample)
    return result


def passes(r: dict[str, Any]) -> bool:
    """p99 under budget, (nearly) every request answered at the asked rate."""
    return (r["aborted_after_s"] is None and r["p99_ms"] is not None and r["p99_ms"] < P99_BUDGET_MS
            and r["errors"] <= 0.001 * r["scheduled"] and r["completed"] >= 0.99 * r["scheduled"])


def step_search(url: str, ids_file: Path, op: str, seconds: float, start: float = 5000, lo_floor: float = 50,
                ceiling: float = 40_000, bisections: int = 2, dsn: str = "") -> dict[str, Any]:
    """The highest rate (req/s) whose p99 stays under 50 ms: double (or halve) from start, then bisect."""
    steps: list[dict[str, Any]] = []

    def probe(rate: float) -> bool:
        r = run_once(url, ids_file, rate, seconds, op, dsn)  # the prewarmed documents: steady state, as the main run
        r["pass"] = passes(r)
        steps.append(r)
        return r["pass"]

    rate = start
    if probe(rate):
        good, bad = rate, None
        while bad is None and rate * 2 <= ceiling:
            rate *= 2
            if probe(rate):
                good = rate
            else:
                bad = rate
    else:
        good, bad = None, rate
        while good is None and rate / 2 >= lo_floor:
            rate /= 2
            if probe(rate):
                good = rate
            else:
                bad = rate
    if good is not None and bad is not None:
        for _ in range(bisections):
            mid = round((good + bad) / 2, -1)
            if probe(mid):
                good = mid
            else:
                bad = mid
    return {"max_rate_p99_under_50ms": good, "first_failing_rate": bad, "steps": steps}


def scenario(urls: dict[str, str], ids_file: Path, dsn: str, *, rate: float = 5000, seconds: float = 60,
             step_seconds: float = 10, prewarm: bool = True) -> dict[str, dict[str, Any]]:
    """Every target: one run at `rate` for `seconds`, then the step search. Targets run one after another."""
    import common

    ids = json.loads(ids_file.read_text())
    results: dict[str, dict[str, Any]] = {}
    for target, url in urls.items():
        op = f"fr{list(urls).index(target)}"
        if prewarm:  # steady state: one pass over every user with the scenario's reads, not measured
            common.replay(url, [json.dumps({"query": q, "variables": {"id": i}}).encode()
                                for i in ids for q in (queries.user_q(op), queries.posts_q(op))])
        main_run = run_once(url, ids_file, rate, seconds, op, dsn)
        main_run["pass"] = passes(main_run)
        search = step_search(url, ids_file, op, step_seconds, start=rate, dsn=dsn)
        results[target] = {"at_rate": main_run, **search}
    return results


def print_table(results: dict[str, dict[str, Any]], rate: float, seconds: float) -> None:
    print(f"fixed rate {rate:.0f} req/s open loop, {seconds:.0f}s, Zipf reads + 5 % renames "
          f"(latency from each request's due time):")
    head = (f"  {'target':<11}{'achieved':>9}{'hit %':>7}{'p50 ms':>8}{'p99 ms':>8}{'p999 ms':>9}{'errors':>7}"
            f"{'stale':>6}{'checked':>8}{'db≠':>5}{'gen CPU':>9}  {'max rate p99<50ms':>18}")
    print(head)
    for target, r in results.items():
        a = r["at_rate"]
        hit = a["hit_rate"] * 100 if a["hit_rate"] is not None else float("nan")
        best = r["max_rate_p99_under_50ms"]
        if a.get("aborted_after_s") is not None:
            print(f"  {target:<11}stopped after {a['aborted_after_s']:.1f}s: more than {ABORT_BACKLOG_S:g}s of requests queued "
                  f"(the server kept up with {a['achieved_rate']:.0f} req/s)")
        print(f"  {target:<11}{a['achieved_rate']:>9.0f}{hit:>7.1f}{a['p50_ms']:>8.2f}{a['p99_ms']:>8.1f}{a['p999_ms']:>9.1f}"
              f"{a['errors']:>7}{a['stale_reads']:>6}{a['reads_checked']:>8}{a.get('db_disagreements', '-'):>5}"
              f"{a['generator_cpu_core_share'] * 100:>8.0f}%  {('-' if best is None else f'{best:.0f} req/s'):>18}")
    print("  gen CPU: the generator process's CPU time / wall time, in % of one core "
          f"({os.cpu_count()} cores here); the step search's runs: results.json")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "drive":
        p = argparse.ArgumentParser()
        p.add_argument("cmd")
        p.add_argument("url")
        p.add_argument("ids_file")
        p.add_argument("--rate", type=float, required=True)
        p.add_argument("--seconds", type=float, required=True)
        p.add_argument("--op", default="fr")
        a = p.parse_args()
        print(json.dumps(drive(a.url, json.loads(Path(a.ids_file).read_text()), a.rate, a.seconds, a.op)))
        return 0

    import common

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=5000)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--step-seconds", type=float, default=10)
    p.add_argument("--targets", default="fraiseshm,no-cache,local-lru,redis")
    p.add_argument("--json", default="")
    a = p.parse_args()
    targets = a.targets.split(",")
    with common.database(seed_users=10_000) as cluster, __import__("contextlib").ExitStack() as stack:
        ids = cluster.psql("SELECT id FROM tb_user ORDER BY pk_user").split()
        ids_file = Path(stack.enter_context(__import__("tempfile").TemporaryDirectory())) / "ids.json"
        ids_file.write_text(json.dumps(ids))
        db = {"FRAISESHM_DATABASE_DSN": cluster.dsn}
        urls: dict[str, str] = {}
        for t in targets:
            if t == "fraiseshm":
                urls[t] = stack.enter_context(common.gunicorn(env=db)).url
            elif t == "no-cache":
                urls[t] = stack.enter_context(common.gunicorn(env={**db, "FRAISESHM_CACHE_ENABLED": "false"})).url
            elif t == "local-lru":
                urls[t] = stack.enter_context(common.gunicorn("alt_app:app", env={**db, "FRAISESHM_PERF_STORE": "local"})).url
            elif t == "redis":
                redis_url = stack.enter_context(common.redis_server())
                urls[t] = stack.enter_context(common.gunicorn("alt_app:app", env={
                    **db, "FRAISESHM_PERF_STORE": "redis", "FRAISESHM_PERF_REDIS_URL": redis_url})).url
            else:
                raise SystemExit(f"unknown target {t!r}")
        results = scenario(urls, ids_file, cluster.dsn, rate=a.rate, seconds=a.seconds, step_seconds=a.step_seconds)
    print_table(results, a.rate, a.seconds)
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    fs = results.get("fraiseshm")
    if fs is None:
        return 0
    at = fs["at_rate"]
    ok = (at["hit_rate"] or 0) >= HIT_RATE_MIN and at["pass"] and at["stale_reads"] == 0 and not at.get("db_disagreements")
    print(f"launch criteria at {a.rate:.0f} req/s: hit rate {(at['hit_rate'] or 0):.1%} (>= 85 %), p99 {at['p99_ms']:.1f} ms "
          f"(< 50 ms), stale reads {at['stale_reads']}: {'met' if ok else 'NOT met'}; p99 < 50 ms holds up to "
          f"{fs['max_rate_p99_under_50ms']} req/s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
