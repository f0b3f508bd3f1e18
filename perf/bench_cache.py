"""Cached reads (issue 5): a cached `user(id)` POST through fraiseshm beside a
constant-bytes POST (perf/const_app.py, same gunicorn configuration, the same
request body) and beside the uncached path (cache off, same query), one run,
driven by wrk (locust tops out near 3k req/s on this machine, wrk near 20k).

Targets: hit throughput >= 0.85 x constant bytes, >= 5 x uncached.

    .venv/bin/python perf/bench_cache.py [--duration 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json

import httpx

import common
from bench_uncached import USER_QUERY, random_ids_lua, user_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=str, default="")
    args = parser.parse_args()

    with common.database(seed_users=10_000) as cluster:
        ids = user_ids(cluster, 10_000)
        body = json.dumps({"query": USER_QUERY, "variables": {"id": ids[0]}}).encode()
        env = {"FRAISESHM_DATABASE_DSN": cluster.dsn}
        const, cached, uncached = [], [], []
        with common.gunicorn(env=env) as fs, \
                common.gunicorn(env={**env, "FRAISESHM_CACHE_ENABLED": "false"}) as nc, \
                common.gunicorn("const_app:app") as cs:
            warm = httpx.post(fs.url + "/graphql", content=body, headers={"Content-Type": "application/json"})
            assert warm.status_code == 200 and warm.json()["data"]["user"]["id"] == ids[0], warm.text
            for _ in range(args.rounds):  # interleaved A B C A B C
                const.append(common.wrk(cs.url + "/graphql", body, duration=args.duration))
                cached.append(common.wrk(fs.url + "/graphql", body, duration=args.duration))
                uncached.append(common.wrk(nc.url + "/graphql", lua=random_ids_lua(ids), duration=args.duration))
            check = httpx.post(fs.url + "/graphql", content=body, headers={"Content-Type": "application/json"})
            assert check.headers["X-Cache"] == "HIT", check.headers
        c, h, u = (common.median_of(x) for x in (const, cached, uncached))
        print(f"{'endpoint':<30}{'req/s':>10}{'spread':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
        for name, r, runs in (("constant bytes POST", c, const), ("user(id) cached hit", h, cached), ("user(id) uncached", u, uncached)):
            print(f"{name:<30}{r.requests_per_s:>10.0f}{common.spread([x.requests_per_s for x in runs]):>8}"
                  f"{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.non_2xx:>8}")
        print(f"hit / constant bytes: {h.requests_per_s / c.requests_per_s:.3f}  (target >= 0.85)")
        print(f"hit / uncached:       {h.requests_per_s / u.requests_per_s:.2f}  (target >= 5)")
        print(f"medians of {args.rounds} interleaved rounds of {args.duration:.0f}s, 32 connections, 2 workers each")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"constant": c.__dict__, "cached": h.__dict__, "uncached": u.__dict__}, f, indent=2)


if __name__ == "__main__":
    main()
