"""The launch criteria as a scenario: "load test at 5K QPS: >= 85 % hit rate, < 50 ms p99".

Open loop: request i is due at t0 + i / rate whatever happened to the ones
before it, and its latency is counted from that due time, so a stalled server
is charged for every request that waited behind it (a closed-loop tool such as
wrk or locust sends less while the server is slow and hides exactly that).
The mix is the Zipf scenario's (perf/locust_zipf.py): 70 % user(id), 25 %
posts(authorId), 5 % updateUser renames, ids drawn from Zipf(1.1) over the
10k seeded users.

The generator is perf/ratedrive/ratedrive.c (epoll, HTTP/1.1 keep-alive, one
request per connection at a time, connections opened as needed), built here
with gcc on first use: h2load's --rate sets how many *connections* start per
period, not a request rate, and it sends one fixed body; the asyncio generator
this replaced used 94 % of a core for 2,100 req/s. Python prepares the plan
(every request's bytes, drawn before the clock starts) and judges the records
afterwards; the driver only sends and records. It runs in its own process so
that its CPU time is its own; every result states that share.

Stale reads: every read of a renamed user is checked against the renames the
generator had seen acknowledged before the read was sent (a rename never runs
concurrently with another one of the same user, so "newest acknowledged" is
well defined): an older name is a stale read. The acknowledgements are checked
against PostgreSQL at the end: for a sample of renamed users, the database's
name must be the last acknowledged one.

    .venv/bin/python perf/fixed_rate.py [--rate 5000] [--seconds 60] [--step-seconds 10] [--targets fraiseshm,no-cache]
"""

from __future__ import annotations

import argparse
import bisect
import collections
import itertools
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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


# --- the generator: a plan for perf/ratedrive, and the judgement of what it recorded ---------


KINDS = {"user": 0, "posts": 1, "rename": 2}
KIND_NAMES = {v: k for k, v in KINDS.items()}
RATEDRIVE_SRC = PERF / "ratedrive" / "ratedrive.c"
RATEDRIVE_BIN = PERF / "results" / ".bin" / "ratedrive"
_RECORD = struct.Struct("<IBBHB3xdddI")  # index, kind sent, outcome, status, cached, due, sent, done, body length
ANSWERED, LOST, UNANSWERED = 0, 1, 2


class Zipf:
    """Ranks 0..n-1 with P(k) proportional to 1 / (k+1)^1.1, as perf/scenario.py's (which imports locust,
    whose gevent must stay out of this process)."""

    def __init__(self, n: int, s: float = 1.1, seed: int = 1) -> None:
        self.cdf = list(itertools.accumulate(1.0 / (k + 1) ** s for k in range(n)))
        self.rng = random.Random(seed)

    def sample(self) -> int:
        return bisect.bisect_left(self.cdf, self.rng.random() * self.cdf[-1])


def ratedrive() -> Path:
    """The driver binary, (re)built with gcc when the source is newer."""
    if not RATEDRIVE_BIN.exists() or RATEDRIVE_BIN.stat().st_mtime < RATEDRIVE_SRC.stat().st_mtime:
        RATEDRIVE_BIN.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(RATEDRIVE_BIN), str(RATEDRIVE_SRC)], check=True)
    return RATEDRIVE_BIN


def run_base() -> int:
    """Where this run's rename numbers start: above every earlier run's (milliseconds since the epoch x 10^7)."""
    return time.time_ns() // 1_000_000 * 10_000_000


def write_plan(path: Path, host: str, ids: list[str], rate: float, seconds: float, op: str,
               seed: int, base: int, mix: tuple[tuple[str, int], ...] = MIX,
               uniform: bool = False) -> list[tuple[str, int]]:
    """Every request of the run, drawn before the clock starts: (kind, user index) by plan index. A rename's
    new name is fr-<base + its plan index>, base growing from run to run (run_base), so a name left by an
    earlier run always reads as older; its fallback (sent if that user's previous rename is in flight) is a
    read. Users are drawn from Zipf(1.1), or uniformly."""
    zipf, rng = Zipf(len(ids), seed=seed), random.Random(seed + 1)
    draw = (lambda: rng.randrange(len(ids))) if uniform else zipf.sample
    kinds = [k for k, w in mix for _ in range(w)]
    plan = [(rng.choice(kinds), draw()) for _ in range(int(rate * seconds))]
    head = b"POST /graphql HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    documents = {"user": queries.user_q(op), "posts": queries.posts_q(op), "rename": queries.rename_q(op)}
    reads: dict[tuple[str, int], bytes] = {}

    def request(kind: str, user: int, seq: int) -> bytes:
        if kind != "rename" and (kind, user) in reads:
            return reads[kind, user]
        variables: dict[str, str] = {"id": ids[user]}
        if kind == "rename":
            variables["n"] = f"fr-{base + seq}"
        body = json.dumps({"query": documents[kind], "variables": variables}).encode()
        payload = head % (host.encode(), len(body)) + body
        if kind != "rename":
            reads[kind, user] = payload
        return payload

    with path.open("wb") as f:
        f.write(b"FRD1" + struct.pack("<II", len(plan), len(ids)))
        for seq, (kind, user) in enumerate(plan):
            a = request(kind, user, seq)
            b = request("user", user, seq) if kind == "rename" else b""
            f.write(struct.pack("<BII", KINDS[kind], user, len(a)) + a + struct.pack("<I", len(b)) + b)
    return plan


def read_records(path: Path) -> list[tuple[int, str, int, int, bool, float, float, float, bytes]]:
    data = path.read_bytes()
    out, at = [], 0
    while at < len(data):
        index, kind, outcome, status, cached, due, sent, done, length = _RECORD.unpack_from(data, at)
        at += _RECORD.size
        out.append((index, KIND_NAMES[kind], outcome, status, bool(cached), due, sent, done, data[at:at + length]))
        at += length
    return out


def _names(kind: str, body: bytes) -> list[Any]:
    data = json.loads(body).get("data") or {}
    if kind == "user":
        return [(data.get("user") or {}).get("name")]
    return [p["author"]["name"] for p in data.get("posts") or []]


def judge(plan: list[tuple[str, int]], records: list[tuple[int, str, int, int, bool, float, float, float, bytes]],
          ids: list[str], base: int) -> dict[str, Any]:
    """Latency from due time, hit rate, and stale reads: a read older than a rename of its user acknowledged
    before the read was sent (renames of one user never overlap, so acknowledgement order is commit order)."""
    acked: dict[int, list[tuple[float, int]]] = collections.defaultdict(list)
    errors, statuses, renames, converted = 0, collections.Counter[int](), 0, 0
    for index, kind, outcome, status, _cached, _due, _sent, done, body in records:
        if plan[index][0] == "rename":
            renames += kind == "rename"
            converted += kind != "rename"
        if kind == "rename" and outcome == ANSWERED and status == 200:
            if ((json.loads(body).get("data") or {}).get("updateUser") or {}).get("success"):
                acked[plan[index][1]].append((done, index))
            else:
                errors += 1
    for history in acked.values():
        history.sort()
    latencies, lags = [], []
    hits = reads = stale = checked = 0
    stale_kinds: collections.Counter[str] = collections.Counter()
    unanswered = dropped = 0
    for index, kind, outcome, status, cached, due, sent, done, body in records:
        latencies.append(done - due)  # never answered: the time it had waited so far (a lower bound)
        if sent >= 0:
            lags.append(sent - due)
        if outcome != ANSWERED:
            errors += 1
            unanswered += outcome == UNANSWERED
            dropped += outcome == LOST
            continue
        if status != 200:
            errors += 1
            statuses[status] += 1
            continue
        if kind == "rename":
            continue
        reads += 1
        hits += cached
        history = acked.get(plan[index][1])
        if not history:
            continue
        before = bisect.bisect_left(history, (sent, -1))
        if before == 0:
            continue
        newest = history[before - 1][1]
        for name in _names(kind, body):
            checked += 1
            got = int(name[3:]) - base if isinstance(name, str) and name.startswith("fr-") else -1
            if got < newest:
                stale += 1
                stale_kinds[kind] += 1
    lat, lags = sorted(latencies), sorted(lags)

    def pct(values: list[float], p: float) -> float | None:
        return values[min(len(values) - 1, int(p * len(values)))] * 1000 if values else None

    last_names = {ids[u]: f"fr-{base + history[-1][1]}" for u, history in acked.items()}
    answered_renames = {index for index, kind, outcome, *_ in records if kind == "rename" and outcome == ANSWERED}
    return {
        "completed": len(lat) - unanswered - dropped, "errors": errors, "unanswered": unanswered,
        "connections_dropped": dropped, "error_statuses": {str(k): v for k, v in statuses.items()},
        "reads": reads, "hit_rate": hits / reads if reads else None,
        "p50_ms": pct(lat, 0.50), "p90_ms": pct(lat, 0.90), "p99_ms": pct(lat, 0.99), "p999_ms": pct(lat, 0.999),
        "max_ms": lat[-1] * 1000 if lat else None, "send_lag_p99_ms": pct(lags, 0.99),
        "renames": renames, "renames_sent_as_reads": converted,
        "stale_reads": stale, "reads_checked": checked, "stale_by_document": dict(stale_kinds),
        "last_names": last_names,
        # renames sent but never answered (run stopped, connection lost): the database may hold these names instead
        "unacked_names": {ids[plan[index][1]]: f"fr-{base + index}" for index, kind, *_ in records
                          if kind == "rename" and index not in answered_renames},
    }


def drive(url: str, ids: list[str], rate: float, seconds: float, op: str, seed: int = 17,
          mix: tuple[tuple[str, int], ...] = MIX, uniform: bool = False) -> dict[str, Any]:
    """One open-loop run: plan, send with ratedrive (its own process), judge."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    with tempfile.TemporaryDirectory() as tmp:
        plan_file, out_file = Path(tmp) / "plan", Path(tmp) / "records"
        base = run_base()
        plan = write_plan(plan_file, host, ids, rate, seconds, op, seed, base, mix, uniform)
        run = subprocess.run([str(ratedrive()), host, port, str(plan_file), str(out_file), str(rate),
                              str(MAX_CONNECTIONS), str(PREOPEN), str(ABORT_BACKLOG_S)],
                             capture_output=True, text=True, timeout=seconds + 120, check=False)
        if run.returncode != 0:
            raise RuntimeError(f"ratedrive failed ({run.returncode}): {run.stderr[-3000:]}")
        summary = json.loads(run.stdout)
        result = judge(plan, read_records(out_file), ids, base)
    wall = summary["wall_s"]
    return {
        "rate": rate, "seconds": seconds, "scheduled": summary["scheduled"], "aborted_after_s": summary["aborted_after_s"],
        "achieved_rate": result["completed"] / wall if wall else 0.0, **result,
        "generator_cpu_core_share": summary["cpu_s"] / wall if wall else None,  # of one core
        "generator_machine_share": summary["cpu_s"] / wall / (os.cpu_count() or 1) if wall else None,
        "connections": summary["connections"], "connect_errors": summary["connect_errors"],
    }


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
    """One fixed-rate run; with dsn, the acknowledged renames are checked in PostgreSQL."""
    settle(url, dsn)
    result = drive(url, json.loads(ids_file.read_text()), rate, seconds, op)
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
                ceiling: float = 40_000, bisections: int = 2, dsn: str = "",
                warm: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """The highest rate (req/s) whose p99 stays under 50 ms: double (or halve) from start, then bisect.
    warm() runs before each step: a step after an overloaded one would otherwise start with the cache
    that overload left (entries invalidated and never refilled), not in the main run's steady state."""
    steps: list[dict[str, Any]] = []

    def probe(rate: float) -> bool:
        warm()
        r = run_once(url, ids_file, rate, seconds, op, dsn)
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


def scenario(urls: dict[str, str], ids_file: Path, dsns: dict[str, str], *, rate: float = 5000, seconds: float = 60,
             step_seconds: float = 10, uncached: tuple[str, ...] = ("no-cache",)) -> dict[str, dict[str, Any]]:
    """Every target: one run at `rate` for `seconds`, then the step search. Targets run one after another,
    each on its own database (dsns: the renames are checked there). Targets with a cache start every run
    warm: one pass over every user with the scenario's reads, not measured (steady state)."""
    import common

    ids = json.loads(ids_file.read_text())
    results: dict[str, dict[str, Any]] = {}
    for target, url in urls.items():
        op, dsn = f"fr{list(urls).index(target)}", dsns[target]
        bodies = [json.dumps({"query": q, "variables": {"id": i}}).encode()
                  for i in ids for q in (queries.user_q(op), queries.posts_q(op))]

        def warm(url: str = url, target: str = target, bodies: list[bytes] = bodies) -> None:
            if target not in uncached:
                settle(url)
                common.replay(url, bodies)

        warm()
        main_run = run_once(url, ids_file, rate, seconds, op, dsn)
        main_run["pass"] = passes(main_run)
        # PERF: an overloaded main run says what the server kept up with: search from just below it,
        # not by halving from `rate` (each failing step costs its length plus the queue it leaves).
        start = rate if main_run["pass"] else max(50.0, round(0.8 * main_run["achieved_rate"], -1))
        search = step_search(url, ids_file, op, step_seconds, start=start, dsn=dsn, warm=warm)
        results[target] = {"at_rate": main_run, **search}
    return results


RENAMES_ONLY = (("rename", 1),)
MUTATION_RATE = 200.0  # updateUser/s offered, as the locust scenario this replaced


def mutation_latency(urls: dict[str, str], ids_file: Path, *, rounds: int, seconds: float,
                     rate: float = MUTATION_RATE) -> dict[str, list[dict[str, Any]]]:
    """updateUser alone at a fixed offered rate, open loop, on uniformly drawn users: what the cache adds
    to a write (cascade verification, invalidation, the listener hearing it). Targets interleaved per
    round (order reversed every other round); each round's runs share a seed, so they send the same
    renames. Returns, per target, one result per round (the shape of a locust run's summary)."""
    ids = json.loads(ids_file.read_text())
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in urls}
    for t, url in urls.items():  # warm: connections, prepared statements, the audit writer
        drive(url, ids, 50, 2, "mw", seed=1, mix=RENAMES_ONLY, uniform=True)
    for r in range(rounds):
        for t in (list(urls) if r % 2 == 0 else list(reversed(urls))):
            settle(urls[t])
            res = drive(urls[t], ids, rate, seconds, "mw", seed=100 + r, mix=RENAMES_ONLY, uniform=True)
            missed = [f"{res['errors']} failed mutations"] if res["errors"] else []
            runs[t].append({"rps": res["achieved_rate"], "p50_ms": res["p50_ms"], "p90_ms": res["p90_ms"],
                            "p99_ms": res["p99_ms"], "errors": res["errors"], "missed": missed,
                            "exit_code": 1 if missed else 0,
                            "generator_cpu_core_share": res["generator_cpu_core_share"]})
    return runs


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
        dsns = common.database_copies(cluster, targets)
        urls: dict[str, str] = {}
        for t in targets:
            db = {"FRAISESHM_DATABASE_DSN": dsns[t]}
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
        results = scenario(urls, ids_file, dsns, rate=a.rate, seconds=a.seconds, step_seconds=a.step_seconds)
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
