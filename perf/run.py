"""`make perf`: every scenario against fraiseshm AND the alternatives a user would pick, in one run.

    .venv/bin/python perf/run.py [--quick] [--rounds N] [--out perf/results]

Starts one private PostgreSQL (10k seeded users), one redis-server, four
stacks of 2 gunicorn ASGI workers each and the Node peer, all on the same database:

    fraiseshm     the shared-memory arena (gunicorn.conf.py, coalescing on)
    no-cache      FRAISESHM_CACHE_ENABLED=false: every query goes to PostgreSQL
    local-lru     per-worker cachetools LRU+TTL, cascade invalidates its own worker only
    redis         one shared redis-server, same tag invalidation (perf/stores.py)
    yoga          GraphQL Yoga 5 + @envelop/response-cache, one Node process (perf/yoga/)
    yoga-cluster  the same under node:cluster, 2 workers, each with its own in-memory cache
    yoga-redis    node:cluster, 2 workers sharing one Redis cache (@envelop/response-cache-redis)

Raw throughput and the step load to saturation are measured with wrk (one
locust process tops out near 3k req/s on this 2-core machine); hit rate,
database executions, staleness and the herd with locust, which checks every
response (perf/locust_*.py); the launch criteria (5,000 req/s open loop, then
the highest rate whose p99 stays under 50 ms) and updateUser's latency (200/s
open loop, interleaved rounds) with perf/fixed_rate.py's generator (perf/ratedrive). Each measurement is repeated
interleaved (A B C D A B C D) and the median is reported with its spread.
The load generator shares the 2 cores with the servers: pinning it to one
core would halve the servers', so it is not pinned, on every target alike.
Database executions are counted by PostgreSQL (pg_stat_statements).

Prints a table with ratios fraiseshm / each alternative, writes
results.json and PNG plots to --out, with the cost curves of perf/bench_curves.py. Exit code 1 if a fraiseshm target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
import fixed_rate
import queries

PERF = Path(__file__).resolve().parent
TARGETS = ("fraiseshm", "no-cache", "local-lru", "redis", "yoga", "yoga-cluster", "yoga-redis")
ALTERNATIVES = TARGETS[1:]
READ_QUERY = "query W($id: ID!) { user(id: $id) { id name email } }"


@dataclass
class Scenario:
    name: str
    file: str
    users: int
    seconds: int
    warmup: float = 0.0
    prewarm: bool = False  # one pass over every id with the scenario's reads first, not measured
    env: dict[str, str] = field(default_factory=dict)


def scenarios(quick: bool) -> list[Scenario]:
    q = quick
    return [
        Scenario("zipf", "locust_zipf.py", 24, 10 if q else 12, warmup=2, prewarm=True),
        Scenario("herd", "locust_herd.py", 51, 6, env={"PERF_HERD": "50"}),
        Scenario("mixed", "locust_mixed.py", 16, 8 if q else 10, warmup=2),
        Scenario("coldscan", "locust_coldscan.py", 10, 8 if q else 10, warmup=3),
    ]


# --- wrk ------------------------------------------------------------------------


def zipf_lua(ids: list[str], s: float = 1.1, posts_query: str = "", query: str = READ_QUERY) -> str:
    """wrk script: POST user(id) with ids drawn from the same Zipf popularity as the locust scenarios
    (and, with posts_query, one posts(authorId) in four: the Zipf scenario's read mix, to warm it)."""
    table = ",".join(f'"{i}"' for i in ids)

    def fmt_call(q: str) -> str:
        return "wrk.format(nil, nil, nil, '{\"query\":\"" + q + "\",\"variables\":{\"id\":\"' .. ids[pick()] .. '\"}}')"

    posts = f"  n = n + 1; if n % 4 == 0 then return {fmt_call(posts_query)} end\n" if posts_query else ""
    return (
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"local ids = {{{table}}}\n"
        f"local cdf, acc = {{}}, 0\nfor k = 1, #ids do acc = acc + 1 / k ^ {s}; cdf[k] = acc end\n"
        "math.randomseed(7)\nlocal n = 0\n"
        "local function pick()\n"
        "  local r, lo, hi = math.random() * acc, 1, #cdf\n"
        "  while lo < hi do local mid = math.floor((lo + hi) / 2); if cdf[mid] < r then lo = mid + 1 else hi = mid end end\n"
        "  return lo\nend\n"
        f"request = function()\n{posts}  return {fmt_call(query)}\nend\n"
    )


def scan_bodies(ids: list[str], documents: list[str]) -> list[bytes]:
    """One request per id and read document: a pass over the whole key space."""
    return [json.dumps({"query": q, "variables": {"id": i}}).encode() for i in ids for q in documents]


def wrk_run(url: str, lua: str, dsn: str, seconds: float, connections: int = 32) -> dict[str, Any]:
    common.reset_db_executions(dsn)
    r = common.wrk(url + "/graphql", lua=lua, duration=seconds, connections=connections)
    execs = common.db_executions(dsn)
    return {"rps": r.requests_per_s, "p50_ms": r.p50_ms, "p90_ms": r.p90_ms, "p99_ms": r.p99_ms,
            "errors": r.non_2xx, "requests": r.requests, "db_executions": execs,
            "db_per_request": execs / r.requests if r.requests else None}


# --- locust ---------------------------------------------------------------------


def locust_run(sc: Scenario, target: str, url: str, round_no: int, dsn: str, ids_file: Path, out: Path) -> dict[str, Any]:
    tag = f"{sc.name}-{target}-r{round_no}"
    summary_path = out / "runs" / f"{tag}.json"
    summary_path.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PERF_IDS_FILE": str(ids_file),
        # a new operation name per run: every store starts this scenario cold
        "PERF_OP": f"r{round_no}{sc.name}{TARGETS.index(target)}",
        "PERF_WARMUP": str(sc.warmup),
        "PERF_OUT": str(summary_path),
        "PERF_TARGET": target,
        "PERF_DSN": dsn,
        **sc.env,
    }
    cmd = [str(common.BIN / "locust"), "-f", str(PERF / sc.file), "--headless", "-u", str(sc.users),
           "-r", str(sc.users), "-t", f"{sc.seconds}s", "--host", url, "--only-summary",
           "--loglevel", "WARNING", "--stop-timeout", "5"]
    if sc.prewarm:
        # PERF: steady state, not the first minute: one pass of the same reads over
        # every id first (locust alone would need minutes to touch the Zipf tail once).
        common.replay(url, scan_bodies(json.loads(ids_file.read_text()), [queries.user_q(env["PERF_OP"]), queries.posts_q(env["PERF_OP"])]))
    common.reset_db_executions(dsn)
    with open(out / "runs" / f"{tag}.log", "w") as log:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=sc.seconds + 90, check=False)
    if not summary_path.exists():
        raise RuntimeError(f"locust {tag} wrote no summary (exit {proc.returncode}); see {out / 'runs' / (tag + '.log')}")
    summary = json.loads(summary_path.read_text())
    summary["exit_code"] = proc.returncode
    return summary


# --- aggregation ----------------------------------------------------------------


def median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("rps", "p50_ms", "p90_ms", "p99_ms", "hit_rate", "db_executions", "db_per_request", "db_per_herd",
            "stale_reads", "scan_hit_rate")
    agg: dict[str, Any] = {k: median(runs, k) for k in keys}
    agg["rps_spread"] = common.spread([r["rps"] for r in runs])
    agg["stale_reads_total"] = sum(r.get("stale_reads") or 0 for r in runs)
    agg["failures_total"] = sum((r.get("failures") or 0) + (r.get("errors") or 0) for r in runs)
    agg["passed"] = all(r.get("exit_code", 0) == 0 for r in runs)
    agg["missed"] = sorted({m for r in runs for m in r.get("missed", [])})
    agg["rounds"] = len(runs)
    return agg


def step_knee(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Saturation: the fewest connections that reach 90 % of the best throughput of the sweep."""
    best = max(p["rps"] for p in points)
    return next(p for p in points if p["rps"] >= 0.9 * best)


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


# --- output ---------------------------------------------------------------------


def print_table(med: dict[str, dict[str, dict[str, Any]]], knees: dict[str, dict[str, Any]]) -> None:
    head = (f"{'scenario':<21}{'target':<13}{'req/s':>9}{'±':>6}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}"
            f"{'hit %':>7}{'DB exec':>9}{'DB/req':>8}{'stale':>7}{'fail':>6}  pass")
    print(head)
    print("-" * len(head))
    for scen, by_target in med.items():
        for t in TARGETS:
            a = by_target.get(t)
            if a is None:
                continue
            hit = a["hit_rate"] * 100 if a.get("hit_rate") is not None else None
            per = a.get("db_per_herd") if scen == "herd (locust)" else a.get("db_per_request")
            print(f"{scen:<21}{t:<13}{fmt(a['rps'], '.0f'):>9}{a['rps_spread']:>6}{fmt(a['p50_ms'], '.2f'):>8}"
                  f"{fmt(a['p90_ms'], '.2f'):>8}{fmt(a['p99_ms'], '.2f'):>8}{fmt(hit, '.1f'):>7}"
                  f"{fmt(a['db_executions'], '.0f'):>9}{fmt(per, '.3f'):>8}{a['stale_reads_total']:>7}"
                  f"{a['failures_total']:>6}  {'yes' if a['passed'] else 'NO'}")
        fs = by_target.get("fraiseshm")
        if fs:
            for t in ALTERNATIVES:
                a = by_target.get(t)
                if a is None:
                    continue
                per_key = "db_per_herd" if scen == "herd (locust)" else "db_per_request"
                print(f"{'':<21}fraiseshm / {t}: req/s {ratio(fs['rps'], a['rps'])}, p99 {ratio(fs['p99_ms'], a['p99_ms'])}, "
                      f"DB executions {ratio(fs.get(per_key) or fs.get('db_executions'), a.get(per_key) or a.get('db_executions'))}"
                      + (f", hit rate {fs['hit_rate'] * 100:.1f} % vs {a['hit_rate'] * 100:.1f} %"
                         if fs.get("hit_rate") is not None and a.get("hit_rate") is not None else ""))
        print()
    print("step load to saturation (wrk, connections doubled per step, Zipf user(id) reads):")
    for t, k in knees.items():
        print(f"  {t:<13} throughput stops growing at {k['connections']:>4} connections: "
              f"{k['rps']:.0f} req/s, p99 {k['p99_ms']:.2f} ms")


def plots(out: Path, med: dict[str, dict[str, dict[str, Any]]], steps: dict[str, list[dict[str, Any]]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = dict(zip(TARGETS, ("tab:green", "tab:grey", "tab:orange", "tab:red", "tab:purple", "tab:pink",
                                 "tab:brown"), strict=True))
    panels = [
        ("read (wrk)", "rps", "cached reads, wrk: req/s", False),
        ("zipf (locust)", "hit_rate", "Zipf + 5 % writes: hit rate", False),
        ("herd (locust)", "db_per_herd", "herd of 50: DB executions per herd", True),
        ("mixed (locust)", "p99_ms", "80/20 mixed: p99 ms", False),
        ("mixed (locust)", "stale_reads_total", "80/20 mixed: stale reads", False),
        (MUTATION, "p99_ms", "updateUser at 200/s: p99 ms", False),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (scen, key, title, log) in zip(axes.flat, panels, strict=True):
        by_target = med.get(scen, {})
        names = [t for t in TARGETS if t in by_target]
        values = [by_target[t].get(key) or 0 for t in names]
        ax.bar(names, values, color=[colours[t] for t in names])
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=7, labelrotation=30)
        if log and any(values):
            ax.set_yscale("log")
        for i, v in enumerate(values):
            ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=8)
    fig.suptitle("fraiseshm vs alternatives (2 workers each, same database; medians)")
    fig.tight_layout()
    summary = out / "summary.png"
    fig.savefig(summary, dpi=100)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for t, points in steps.items():
        xs = [p["connections"] for p in points]
        a1.plot(xs, [p["rps"] for p in points], marker="o", label=t, color=colours[t])
        a2.plot(xs, [p["p99_ms"] for p in points], marker="o", label=t, color=colours[t])
    for ax, label in ((a1, "req/s"), (a2, "p99 ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("wrk connections")
        ax.set_ylabel(label)
        ax.legend()
    if any(steps.values()):
        a2.set_yscale("log")
    fig.suptitle("step load to saturation (wrk, Zipf user(id) reads)")
    fig.tight_layout()
    step = out / "step_load.png"
    fig.savefig(step, dpi=100)
    plt.close(fig)
    return [summary, step]


def machine() -> dict[str, Any]:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = ""
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": model, "memory": mem, "kernel": platform.release(),
            "python": platform.python_version()}


# --- main -----------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round, shorter runs (~3-4 minutes)")
    parser.add_argument("--rounds", type=int, default=0, help="interleaved rounds (default 2, --quick 1)")
    parser.add_argument("--out", type=Path, default=PERF / "results")
    parser.add_argument("--only", default="", help="comma-separated scenario names (read,step,zipf,herd,...)")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 2)
    read_s = 3.0 if args.quick else 5.0
    step_conns = [1, 4, 16, 64, 256] if args.quick else [1, 2, 4, 8, 16, 32, 64, 128]
    step_s = 2.0 if args.quick else 3.0
    only = set(filter(None, args.only.split(",")))
    out: Path = args.out
    (out / "runs").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    info = machine()
    print(f"machine: {info['cpus']} cpus ({info['cpu']}), {info['memory']}, Linux {info['kernel']}, Python {info['python']}")
    print(f"rounds: {rounds} interleaved; load generator not pinned (2 cores shared with the servers)\n")

    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    fixed: dict[str, dict[str, Any]] = {}
    steps: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
    with common.database(seed_users=10_000) as cluster, ExitStack() as stack:
        dsn = cluster.dsn
        ids = cluster.psql("SELECT id FROM tb_user ORDER BY pk_user").split()
        ids_file = out / "ids.json"
        ids_file.write_text(json.dumps(ids))
        redis_url = stack.enter_context(common.redis_server())
        dsns = common.database_copies(cluster, TARGETS)  # each stack its own copy: no cross-stack NOTIFY
        urls = {
            "fraiseshm": stack.enter_context(common.gunicorn(env=_db(dsns, "fraiseshm"))).url,
            "no-cache": stack.enter_context(common.gunicorn(env={**_db(dsns, "no-cache"),
                                                                "FRAISESHM_CACHE_ENABLED": "false"})).url,
            "local-lru": stack.enter_context(common.gunicorn("alt_app:app", env={
                **_db(dsns, "local-lru"), "FRAISESHM_PERF_STORE": "local"})).url,
            "redis": stack.enter_context(common.gunicorn("alt_app:app", env={
                **_db(dsns, "redis"), "FRAISESHM_PERF_STORE": "redis", "FRAISESHM_PERF_REDIS_URL": redis_url})).url,
            "yoga": stack.enter_context(common.yoga(dsns["yoga"])).url,
            "yoga-cluster": stack.enter_context(common.yoga(dsns["yoga-cluster"], workers=2)).url,
            # its own Redis database: the fraiseshm redis stack flushes and scans db 0
            "yoga-redis": stack.enter_context(common.yoga(dsns["yoga-redis"], workers=2,
                                                          redis_url=redis_url[:-1] + "1")).url,
        }
        print(f"stacks up after {time.monotonic() - started:.0f}s: " + ", ".join(f"{t} {u}" for t, u in urls.items()))
        lua = zipf_lua(ids)

        if not only or "read" in only:
            print("read throughput (wrk) ...", flush=True)
            scan = scan_bodies(ids, [READ_QUERY])
            for t in TARGETS:  # one pass over every id warms every cache, not measured
                common.replay(urls[t], scan)
            raw["read (wrk)"] = {t: [] for t in TARGETS}
            for _ in range(rounds):
                for t in TARGETS:
                    raw["read (wrk)"][t].append(wrk_run(urls[t], lua, dsn, read_s))

        if not only or "step" in only:
            print("step load (wrk) ...", flush=True)
            for c in step_conns:  # interleaved per step
                for t in TARGETS:
                    r = common.wrk(urls[t] + "/graphql", lua=lua, duration=step_s, connections=c)
                    steps[t].append({"connections": c, "rps": r.requests_per_s, "p50_ms": r.p50_ms,
                                     "p99_ms": r.p99_ms, "errors": r.non_2xx})

        if not only or "fixed" in only:
            print("fixed rate (open loop, perf/fixed_rate.py) ...", flush=True)
            fixed = fixed_rate.scenario(urls, ids_file, dsns, rate=FIXED_RATE, seconds=20 if args.quick else 60,
                                        step_seconds=5 if args.quick else 10)

        if not only or "mutation" in only:
            print("updateUser latency (open loop, perf/fixed_rate.py) ...", flush=True)
            raw[MUTATION] = fixed_rate.mutation_latency(urls, ids_file, rounds=3 if args.quick else 6,
                                                        seconds=6 if args.quick else 8)

        for round_no in range(1, rounds + 1):
            for sc in scenarios(args.quick):
                if only and sc.name not in only:
                    continue
                print(f"round {round_no}: {sc.name} (locust, {sc.users} users, {sc.seconds}s) ...", flush=True)
                for t in TARGETS:
                    key = f"{sc.name} (locust)"
                    raw.setdefault(key, {x: [] for x in TARGETS})[t].append(
                        locust_run(sc, t, urls[t], round_no, dsn, ids_file, out))

    curves = None
    if not only or "curves" in only:  # after every stack is stopped: the arena curves run alone
        import bench_curves

        print("cost curves ...", flush=True)
        curves = bench_curves.run(out, args.quick)

    med = {scen: {t: aggregate(runs) for t, runs in by_t.items() if runs} for scen, by_t in raw.items()}
    knees = {t: step_knee(p) for t, p in steps.items() if p}
    print(f"\n=== fraiseshm perf: medians of {rounds} interleaved round(s); 2 gunicorn workers per stack; "
          f"10k users; {time.monotonic() - started:.0f}s ===")
    print("read/step: wrk (raw throughput; locust tops out near 3k req/s here); other rows: locust, every response checked\n")
    print_table(med, knees)
    if fixed:
        print()
        fixed_rate.print_table(fixed, FIXED_RATE, 20 if args.quick else 60)

    targets = check_targets(med, knees) + check_fixed(fixed) + check_mutation(raw)
    print("\ntargets (fraiseshm):")
    for line, ok in targets:
        print(f"  [{'ok' if ok else 'MISSED'}] {line}")
    pngs = plots(out, med, steps) + ([out / "curves.png"] if curves else [])
    (out / "results.json").write_text(json.dumps(
        {"machine": info, "rounds": rounds, "quick": args.quick, "medians": med, "step_load": steps,
         "saturation": knees, "fixed_rate": fixed, "targets": [{"target": line, "met": ok} for line, ok in targets], "runs": raw},
        indent=2))
    print(f"\nwrote {out / 'results.json'}, " + ", ".join(str(p) for p in pngs))
    return 0 if all(ok for _, ok in targets) else 1


def _db(dsns: dict[str, str], target: str) -> dict[str, str]:
    return {"FRAISESHM_DATABASE_DSN": dsns[target]}


FIXED_RATE = 5000  # req/s: the launch criteria's load
MUTATION = "mutation (open loop)"
MUTATION_P99_MAX = 1.10  # fraiseshm / no-cache


def check_mutation(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> list[tuple[str, bool]]:
    """updateUser p99 over no-cache's: the median of the per-round ratios (each round sent the same renames)."""
    runs = raw.get(MUTATION, {})
    if not runs.get("fraiseshm") or not runs.get("no-cache"):
        return []
    ratios = sorted(a["p99_ms"] / b["p99_ms"] for a, b in zip(runs["fraiseshm"], runs["no-cache"], strict=True))
    p50 = sorted(a["p50_ms"] / b["p50_ms"] for a, b in zip(runs["fraiseshm"], runs["no-cache"], strict=True))
    got = statistics.median(ratios)
    return [(f"updateUser p99 {got:.2f}x no-cache, median of {len(ratios)} interleaved rounds "
             f"({', '.join(f'{r:.2f}' for r in ratios)}; p50 {statistics.median(p50):.2f}x) (<= {MUTATION_P99_MAX}x)",
             got <= MUTATION_P99_MAX)]


def check_fixed(fixed: dict[str, dict[str, Any]]) -> list[tuple[str, bool]]:
    fs = fixed.get("fraiseshm")
    if fs is None:
        return []
    at = fs["at_rate"]
    hit = at["hit_rate"] or 0.0
    return [
        (f"at {FIXED_RATE} req/s open loop: hit rate {hit:.1%} (>= 85 %), p99 {at['p99_ms']:.1f} ms (< 50 ms); "
         f"p99 < 50 ms holds up to {fs['max_rate_p99_under_50ms']} req/s", hit >= 0.85 and at["pass"]),
        (f"fixed rate: {at['stale_reads']} stale reads, {at.get('db_disagreements', 0)} renames the database disagrees with (= 0)",
         at["stale_reads"] == 0 and not at.get("db_disagreements")),
    ]


def check_targets(med: dict[str, dict[str, dict[str, Any]]], knees: dict[str, dict[str, Any]]) -> list[tuple[str, bool]]:
    checks: list[tuple[str, bool]] = []
    read = med.get("read (wrk)", {})
    if "fraiseshm" in read:
        fs = read["fraiseshm"]["rps"]
        for alt, want in (("no-cache", 5.0), ("redis", 2.0)):
            got = fs / read[alt]["rps"]
            checks.append((f"cached read throughput {got:.2f}x {alt} (>= {want:.0f}x)", got >= want))
    zipf = med.get("zipf (locust)", {})
    if "fraiseshm" in zipf:
        hr, local = zipf["fraiseshm"]["hit_rate"], zipf["local-lru"]["hit_rate"]
        checks.append((f"Zipf hit rate {hr:.1%} (>= 85 %, and above local-lru's {local:.1%})", hr >= 0.85 and hr > local))
    herd = med.get("herd (locust)", {})
    if "fraiseshm" in herd:
        per = herd["fraiseshm"]["db_per_herd"]
        checks.append((f"herd: {fmt(per, '.2f')} DB executions per herd (= 1 per host)", per is not None and per <= 1.0))
    stale = sum(med.get(s, {}).get("fraiseshm", {}).get("stale_reads_total", 0)
                for s in ("zipf (locust)", "mixed (locust)", "herd (locust)", "coldscan (locust)"))
    checks.append((f"{stale} stale reads over every fraiseshm run (= 0)", stale == 0))
    mixed = med.get("mixed (locust)", {})
    if "fraiseshm" in mixed:
        p99 = mixed["fraiseshm"]["p99_ms"]
        checks.append((f"mixed 80/20 p99 {p99:.0f} ms (< 50 ms)", p99 < 50))
    cold = med.get("coldscan (locust)", {})
    if "fraiseshm" in cold:
        hr = cold["fraiseshm"]["hit_rate"]
        checks.append((f"hot set hit rate during the cold scan {hr:.1%} (>= 95 %)", hr >= 0.95))
    for scen, by_target in med.items():
        fs = by_target.get("fraiseshm")
        if fs and fs["failures_total"]:
            checks.append((f"{scen}: {fs['failures_total']} failed or wrong responses (= 0)", False))
    return checks


if __name__ == "__main__":
    sys.exit(main())
