"""The cost of the stats (issue 8), two figures from one run:

1. ns per ``Arena.incr()`` (and ``observe()``), measured in-process on a real
   arena, beside an empty loop and a trivial C method call so the counter's
   own share is visible. Target: well under 1 us.
2. Cached-hit throughput (``user(id)`` POST, wrk, 2 workers each) with the
   stats on (default) vs off (``FRAISESHM_STATS_ENABLED=false``: no
   per-request counters from Python; the hit/miss/bytes counts that the C
   ``get()`` keeps in its own slot cannot be switched off and are inside
   both), interleaved rounds. Target: under 3 % difference.

    .venv/bin/python perf/bench_stats.py [--duration 5] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import httpx

import common
from bench_uncached import USER_QUERY, user_ids
from fraiseshm.arena import Arena, Counter

N_CALLS = 2_000_000


def _best_ns_per_call(fn: object, arg: object, repeats: int = 5) -> float:
    """Best of `repeats` timings of N_CALLS calls (the loop's own cost included)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(N_CALLS):
            fn(arg)  # type: ignore[operator]
        best = min(best, (time.perf_counter_ns() - t0) / N_CALLS)
    return best


def _empty_loop_ns(repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(N_CALLS):
            pass
        best = min(best, (time.perf_counter_ns() - t0) / N_CALLS)
    return best


def incr_cost() -> dict[str, float]:
    name = f"/fraiseshm-bench-stats-{os.getpid()}"
    arena = Arena.create(name, size=16 << 20, max_entry=64 << 10, shards=2)
    try:
        arena.register_process()
        before = arena.stats()["totals"]["requests"]
        figures = {
            "empty_loop_ns": _empty_loop_ns(),
            "c_call_baseline_ns": _best_ns_per_call(abs, 1),  # a trivial C function, same loop
            "incr_ns": _best_ns_per_call(arena.incr, Counter.REQUESTS),
            "observe_ns": _best_ns_per_call(arena.observe, 0.0003),
        }
        counted = arena.stats()["totals"]["requests"] - before
        assert counted == 5 * N_CALLS, counted  # every increment landed
        figures["incr_minus_loop_ns"] = figures["incr_ns"] - figures["empty_loop_ns"]
        figures["incr_minus_c_call_ns"] = figures["incr_ns"] - figures["c_call_baseline_ns"]
        return figures
    finally:
        arena.close()
        Arena.unlink(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=str, default="")
    args = parser.parse_args()

    cost = incr_cost()
    print(f"Arena.incr():    {cost['incr_ns']:6.1f} ns per call from Python "
          f"({cost['incr_minus_loop_ns']:.1f} ns over the empty loop, "
          f"{cost['incr_minus_c_call_ns']:.1f} ns over abs(1))  (target << 1000 ns)")
    print(f"Arena.observe(): {cost['observe_ns']:6.1f} ns per call; empty loop {cost['empty_loop_ns']:.1f} ns, "
          f"abs(1) {cost['c_call_baseline_ns']:.1f} ns; best of 5 x {N_CALLS:,} calls")

    with common.database(seed_users=2_000) as cluster:
        ids = user_ids(cluster, 10)
        body = json.dumps({"query": USER_QUERY, "variables": {"id": ids[0]}}).encode()
        env = {"FRAISESHM_DATABASE_DSN": cluster.dsn}
        on, off = [], []
        with common.gunicorn(env=env) as son, common.gunicorn(env={**env, "FRAISESHM_STATS_ENABLED": "false"}) as soff:
            for stack in (son, soff):
                for _ in range(2):  # a miss, then a hit
                    r = httpx.post(stack.url + "/graphql", content=body, headers={"Content-Type": "application/json"})
                assert r.status_code == 200 and r.headers["X-Cache"] == "HIT", r.headers
            before = _requests_total(son.url)
            for i in range(args.rounds):  # interleaved, alternating which goes first
                pair = [(on, son), (off, soff)] if i % 2 == 0 else [(off, soff), (on, son)]
                for results, stack in pair:
                    results.append(common.wrk(stack.url + "/graphql", body, duration=args.duration))
            counted = _requests_total(son.url) - before
            sent = sum(r.requests for r in on)
            off_requests = _requests_total(soff.url)
        a, b = common.median_of(on), common.median_of(off)
        diff = (b.requests_per_s - a.requests_per_s) / b.requests_per_s
        print(f"{'cached user(id) hit':<24}{'req/s':>10}{'spread':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
        for label, r, runs in (("stats on", a, on), ("stats off", b, off)):
            print(f"{label:<24}{r.requests_per_s:>10.0f}{common.spread([x.requests_per_s for x in runs]):>8}"
                  f"{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.non_2xx:>8}")
        ratios = [x.requests_per_s / y.requests_per_s for x, y in zip(on, off, strict=True)]
        paired = 1 - statistics.median(ratios)  # robust to load that drifts between rounds
        print(f"stats cost: {100 * diff:+.2f} % of hit throughput by medians, {100 * paired:+.2f} % by the median "
              f"of per-round on/off ratios (target under 3 %)\nper-round on/off ratios: "
              + " ".join(f"{r:.3f}" for r in ratios))
        print(f"requests counted by the 'on' stack during wrk: {counted:,} (wrk completed {sent:,}); "
              f"'off' stack counted {off_requests:,}")
        print(f"medians of {args.rounds} interleaved rounds of {args.duration:.0f}s, 32 connections, 2 workers each, "
              f"{os.cpu_count()} cores")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"incr": cost, "on": a.__dict__, "off": b.__dict__, "difference": diff,
                           "paired_difference": paired, "ratios": ratios}, f, indent=2)


def _requests_total(url: str) -> int:
    """fraiseshm_requests_total from /metrics (the figure the 'off' build leaves at 0)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name == "fraiseshm_requests":
            return int(family.samples[0].value)
    raise RuntimeError("no fraiseshm_requests_total in /metrics")


if __name__ == "__main__":
    main()
