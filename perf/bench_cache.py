"""Cached reads (issues 5 and 17): a cached `user(id)` POST through fraiseshm beside a
constant-bytes POST (perf/const_app.py, same gunicorn configuration, the same
request body), beside the same hit through falcon's routing (fast_hit = false:
what a hit cost before fraiseshm/http/fast_hit.py) and beside the uncached path
(cache off, same query), one run, driven by wrk (locust tops out near 3k req/s
on this machine, wrk near 20k).

Rounds are interleaved (const, hit, falcon hit, uncached, const, ...); the
ratios are medians of the per-round ratios, so a neighbour's load that comes and
goes hits both sides of a ratio alike. Beside req/s it prints the server
workers' CPU time per request (user + system of the gunicorn workers over the
run / requests served): on a shared machine that figure moves far less than
throughput does.

Targets: hit / constant bytes >= 1.1 (issue 17), hit / uncached >= 5.

    .venv/bin/python perf/bench_cache.py [--duration 5] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess

import httpx
import psutil

import common
from bench_uncached import USER_QUERY, random_ids_lua, user_ids

TARGET_CONST = 1.1
TARGET_UNCACHED = 5.0


def workers_cpu(proc: subprocess.Popen[bytes]) -> float:
    """CPU seconds (user + system) of a gunicorn master's live workers."""
    total = 0.0
    for child in psutil.Process(proc.pid).children():
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def measure(stack: common.Stack, body: bytes | None, lua: str | None, duration: float) -> tuple[common.WrkResult, float]:
    """One wrk run; (its figures, server CPU microseconds per request)."""
    assert stack.proc is not None
    before = workers_cpu(stack.proc)
    result = common.wrk(stack.url + "/graphql", body, lua=lua, duration=duration)
    used = workers_cpu(stack.proc) - before
    return result, used / result.requests * 1e6 if result.requests else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=str, default="")
    args = parser.parse_args()

    names = ("constant bytes POST", "user(id) cached hit", "hit via falcon routing", "user(id) uncached")
    with common.database(seed_users=10_000) as cluster:
        ids = user_ids(cluster, 10_000)
        body = json.dumps({"query": USER_QUERY, "variables": {"id": ids[0]}}).encode()
        env = {"FRAISESHM_DATABASE_DSN": cluster.dsn}
        runs: dict[str, list[tuple[common.WrkResult, float]]] = {n: [] for n in names}
        with common.gunicorn("const_app:app") as cs, common.gunicorn(env=env) as fs, \
                common.gunicorn(env={**env, "FRAISESHM_FAST_HIT": "false"}) as fl, \
                common.gunicorn(env={**env, "FRAISESHM_CACHE_ENABLED": "false"}) as nc:
            for url in (fs.url, fl.url):
                for _ in range(8):  # fills the arena, then each worker's memo (falcon's path fills it)
                    warm = httpx.post(url + "/graphql", content=body, headers={"Content-Type": "application/json"})
                    assert warm.status_code == 200 and warm.json()["data"]["user"]["id"] == ids[0], warm.text
            uncached_lua = random_ids_lua(ids)
            for _ in range(args.rounds):  # interleaved A B C D A B C D ...
                runs[names[0]].append(measure(cs, body, None, args.duration))
                runs[names[1]].append(measure(fs, body, None, args.duration))
                runs[names[2]].append(measure(fl, body, None, args.duration))
                runs[names[3]].append(measure(nc, None, uncached_lua, args.duration))
            for url in (fs.url, fl.url):
                check = httpx.post(url + "/graphql", content=body, headers={"Content-Type": "application/json"})
                assert check.headers["X-Cache"] == "HIT", check.headers

    med = {n: common.median_of([r for r, _ in runs[n]]) for n in names}
    cpu = {n: statistics.median(us for _, us in runs[n]) for n in names}

    def per_round(a: str, b: str) -> float:
        return statistics.median(x[0].requests_per_s / y[0].requests_per_s for x, y in zip(runs[a], runs[b], strict=True))

    def cpu_ratio(a: str, b: str) -> float:
        return statistics.median(y[1] / x[1] for x, y in zip(runs[a], runs[b], strict=True))

    print(f"{'endpoint':<26}{'req/s':>9}{'spread':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'CPU us/req':>12}")
    for n in names:
        r = med[n]
        print(f"{n:<26}{r.requests_per_s:>9.0f}{common.spread([x.requests_per_s for x, _ in runs[n]]):>8}"
              f"{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.non_2xx:>8}{cpu[n]:>12.1f}")
    hit_const = per_round(names[1], names[0])
    hit_uncached = per_round(names[1], names[3])
    print(f"hit / constant bytes:        {hit_const:.3f} req/s, {cpu_ratio(names[1], names[0]):.3f} by CPU per request"
          f"  (target >= {TARGET_CONST}; per-round ratios {', '.join(f'{x[0].requests_per_s / y[0].requests_per_s:.2f}' for x, y in zip(runs[names[1]], runs[names[0]], strict=True))})")
    print(f"hit / hit via falcon:        {per_round(names[1], names[2]):.3f} req/s, {cpu_ratio(names[1], names[2]):.3f} by CPU per request")
    print(f"hit / uncached:              {hit_uncached:.2f}  (target >= {TARGET_UNCACHED:g})")
    print(f"medians of {args.rounds} interleaved rounds of {args.duration:.0f}s, 32 connections, 2 workers each; "
          f"load average {' '.join(f'{x:.1f}' for x in psutil.getloadavg())}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"medians": {n: med[n].__dict__ for n in names}, "cpu_us_per_request": cpu,
                       "hit_over_constant": hit_const, "hit_over_uncached": hit_uncached}, f, indent=2)


if __name__ == "__main__":
    main()
